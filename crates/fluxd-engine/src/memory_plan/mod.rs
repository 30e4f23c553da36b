//! The memory plan: per component and device, the bytes its weights take in memory (from the
//! files' headers and the dtype each is held in, without loading anything) and the working
//! memory its forward needs at the largest request, so that a model that cannot fit is refused
//! before loading starts.
//!
//! Components run one after another (text encoders, the denoising steps, the VAE, the safety
//! classifier), all weights staying loaded, so a device's peak is the sum of the weights on it
//! plus the largest working memory among its components (plus the CUDA runtime's own reserve).

pub mod activations;
mod components;
pub mod inventory;
pub mod shapes;

use std::fmt;

use candle_core::{DType, Device, DeviceLocation};

pub use activations::{Attention, Path as ComputePath, Workload};
pub use components::{image_prompt_tokens, plan_model, ExtraComponents};
pub use inventory::{Inventory, Stored, TensorEntry};

use crate::error::{EngineError, Result};
use crate::transformer::WeightsDtype;

/// A device in a plan (no handle needed: a plan can be made for a GPU this machine lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlanDevice {
    /// Main memory.
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl PlanDevice {
    /// The plan device of a candle device (Metal is planned as the CPU: unified memory).
    pub fn of(device: &Device) -> Self {
        match device.location() {
            DeviceLocation::Cuda { gpu_id } => Self::Cuda(gpu_id),
            _ => Self::Cpu,
        }
    }

    /// Memory the device's runtime takes before any tensor: on the CPU the process itself
    /// (code, allocator, tokenizers, image buffers: a 768-wide model's peak RSS was within
    /// ±10 % of its plan with 128 MiB here), on a GPU the CUDA context and cuBLAS' workspaces
    /// (~0.5 GiB on recent drivers).
    pub fn runtime_reserve(self) -> u64 {
        match self {
            Self::Cpu => 128 << 20,
            Self::Cuda(_) => 512 << 20,
        }
    }
}

impl fmt::Display for PlanDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where and how the components run, and the largest request to plan for.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The transformer's and VAE's device.
    pub device: PlanDevice,
    /// Their dtype.
    pub dtype: DType,
    /// CLIP's and T5's device and dtype.
    pub text_encoders: (PlanDevice, DType),
    /// How the transformer's linear weights are held.
    pub weights: WeightsDtype,
    /// The largest request.
    pub workload: Workload,
    /// How the transformer's attention holds its scores on the candle-ops path (the engine's
    /// blocked attention, at most `SCORE_BUDGET` f32 scores).
    pub attention: Attention,
}

impl PlanOptions {
    /// The engine as it runs today on `device` in `dtype`, everything on one device.
    pub fn new(device: PlanDevice, dtype: DType, workload: Workload) -> Self {
        Self {
            device,
            dtype,
            text_encoders: (device, dtype),
            weights: WeightsDtype::Auto,
            workload,
            attention: Attention::ScoreBudget(crate::attention::SCORE_BUDGET),
        }
    }

    /// The transformer's implementation on `device` in `dtype` (the choice
    /// `FluxTransformer::build` makes: fused kernels for f32 on the CPU).
    pub fn transformer_path(&self) -> ComputePath {
        if self.device == PlanDevice::Cpu && self.dtype == DType::F32 {
            ComputePath::FusedCpu
        } else {
            ComputePath::CandleOps {
                attention: self.attention,
                cpu: self.device == PlanDevice::Cpu,
            }
        }
    }
}

/// One component's line of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentPlan {
    /// What it is (`transformer`, `T5`, ...).
    pub name: &'static str,
    /// Where it runs.
    pub device: PlanDevice,
    /// Its files' types, most bytes first (`F8_E4M3+BF16`).
    pub format: String,
    /// Bytes of its tensors in the files.
    pub file_bytes: u64,
    /// Bytes its weights take in memory.
    pub weight_bytes: u64,
    /// Working memory of its forward at the largest request.
    pub working_bytes: u64,
}

/// The plan of a whole model.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    /// The largest request planned for.
    pub workload: Workload,
    /// One line per component.
    pub components: Vec<ComponentPlan>,
}

/// One device's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTotal {
    /// The device.
    pub device: PlanDevice,
    /// Weights of all its components.
    pub weights: u64,
    /// The largest working memory among them.
    pub working: u64,
    /// The runtime's own reserve.
    pub reserve: u64,
}

impl DeviceTotal {
    /// What the device must hold at its peak.
    pub fn peak(&self) -> u64 {
        self.weights + self.working + self.reserve
    }
}

impl MemoryPlan {
    /// Per-device totals, in device order.
    pub fn totals(&self) -> Vec<DeviceTotal> {
        let mut devices: Vec<PlanDevice> = self.components.iter().map(|c| c.device).collect();
        devices.sort();
        devices.dedup();
        devices
            .into_iter()
            .map(|device| {
                let on = || self.components.iter().filter(move |c| c.device == device);
                DeviceTotal {
                    device,
                    weights: on().map(|c| c.weight_bytes).sum(),
                    working: on().map(|c| c.working_bytes).max().unwrap_or(0),
                    reserve: device.runtime_reserve(),
                }
            })
            .collect()
    }

    /// The total for one device (zero if nothing runs there).
    pub fn total(&self, device: PlanDevice) -> DeviceTotal {
        self.totals()
            .into_iter()
            .find(|t| t.device == device)
            .unwrap_or(DeviceTotal {
                device,
                weights: 0,
                working: 0,
                reserve: 0,
            })
    }

    /// Checks every device with a budget; the error shows the plan and says what would fit.
    /// `replan` makes the same plan for another workload (to find the largest square size
    /// that fits).
    pub fn check(
        &self,
        budgets: &[(PlanDevice, Budget)],
        replan: &dyn Fn(Workload) -> Result<MemoryPlan>,
    ) -> Result<()> {
        let mut problems = Vec::new();
        for (device, budget) in budgets {
            let total = self.total(*device);
            if total.peak() <= budget.bytes {
                continue;
            }
            let mut msg = format!(
                "{device} needs {} (weights {} + working memory {} at {}x{} + runtime {}) but has \
                 {} ({})",
                gib(total.peak()),
                gib(total.weights),
                gib(total.working),
                self.workload.width,
                self.workload.height,
                gib(total.reserve),
                gib(budget.bytes),
                budget.source
            );
            if total.weights + total.reserve > budget.bytes {
                msg.push_str(": the weights alone do not fit");
            } else if let Some(side) = self.largest_side(*device, budget.bytes, replan)? {
                msg.push_str(&format!("; requests up to {side}x{side} would fit"));
            }
            problems.push(msg);
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(EngineError::InsufficientMemory(format!(
            "{}\n{self}",
            problems.join("\n")
        )))
    }

    /// The largest square side (a multiple of 64, at least 256) whose plan fits `budget` on
    /// `device`.
    fn largest_side(
        &self,
        device: PlanDevice,
        budget: u64,
        replan: &dyn Fn(Workload) -> Result<MemoryPlan>,
    ) -> Result<Option<usize>> {
        let mut side = self.workload.width.max(self.workload.height) / 64 * 64;
        while side >= 256 {
            if replan(self.workload.with_side(side))?.total(device).peak() <= budget {
                return Ok(Some(side));
            }
            side -= 64;
        }
        Ok(None)
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.workload;
        writeln!(
            f,
            "memory plan (largest request {}x{}, {} T5 tokens{}):",
            w.width,
            w.height,
            w.t5_tokens,
            if w.image_prompt_tokens > 0 {
                format!(" + {} image-prompt tokens", w.image_prompt_tokens)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "  {:<18} {:<7} {:<22} {:>10} {:>10} {:>10}",
            "component", "device", "stored as", "files", "weights", "working"
        )?;
        for c in &self.components {
            writeln!(
                f,
                "  {:<18} {:<7} {:<22} {:>10} {:>10} {:>10}",
                c.name,
                c.device.to_string(),
                c.format,
                gib(c.file_bytes),
                gib(c.weight_bytes),
                gib(c.working_bytes)
            )?;
        }
        for t in self.totals() {
            writeln!(
                f,
                "  {}: {} weights + {} working + {} runtime = {} at peak",
                t.device,
                gib(t.weights),
                gib(t.working),
                gib(t.reserve),
                gib(t.peak())
            )?;
        }
        Ok(())
    }
}

/// How much memory a device may use, and where the figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Bytes.
    pub bytes: u64,
    /// `--memory`, `free GPU memory`, `MemAvailable`...
    pub source: String,
}

/// Bytes as GiB with two decimals (`23.84 GiB`), as GPU tools report memory.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Parses a memory size: `24GB`, `24 GiB`, `800MiB`, `1.5TB`, or plain bytes. `GB`/`MB` are
/// decimal, `GiB`/`MiB` binary, as on GPU spec sheets and in `nvidia-smi` respectively.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| {
        EngineError::InvalidInput(format!("`{s}` is not a memory size (e.g. 24GB)"))
    })?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(EngineError::InvalidInput(format!(
                "unknown unit `{other}` in `{s}` (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )))
        }
    };
    Ok((num * mult) as u64)
}

/// What a device can give the model: free GPU memory (CUDA, asked of the driver) or the
/// kernel's `MemAvailable` (CPU, Linux). `None` where neither can be read.
pub fn available(device: &Device) -> Result<Option<Budget>> {
    match PlanDevice::of(device) {
        PlanDevice::Cpu => Ok(mem_available().map(|bytes| Budget {
            bytes,
            source: "MemAvailable".into(),
        })),
        PlanDevice::Cuda(_) => cuda_free(device),
    }
}

fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(feature = "cuda")]
fn cuda_free(device: &Device) -> Result<Option<Budget>> {
    let cuda = device.as_cuda_device()?;
    let (free, _total) = cuda.cuda_stream().context().mem_get_info().map_err(|e| {
        EngineError::InvalidInput(format!("asking the driver for free memory: {e}"))
    })?;
    Ok(Some(Budget {
        bytes: free as u64,
        source: "free GPU memory".into(),
    }))
}

#[cfg(not(feature = "cuda"))]
fn cuda_free(_device: &Device) -> Result<Option<Budget>> {
    Ok(None)
}

#[cfg(test)]
mod tests;
