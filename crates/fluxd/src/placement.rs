//! Where the model runs, how its weights are held and how much memory it may use — the flags
//! `generate`, `serve` and `model plan` share — and the memory plan made from them before any
//! weight is loaded.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::ValueEnum;
use fluxd_engine::memory_plan::{
    self, parse_size, plan_model, Budget, ExtraComponents, MemoryPlan, PlanDevice, PlanOptions,
    Workload,
};
use fluxd_engine::model_dir::ModelPaths;
use fluxd_engine::pipeline::LoadOptions;
use fluxd_engine::transformer::WeightsDtype;

use crate::device::{parse_device, parse_dtype};

/// How the transformer's linear weights are held (`--weights-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightsDtypeArg {
    /// fp8 files stay fp8 (upcast per layer); everything else in `--dtype`.
    Auto,
    /// Every linear weight of the transformer in fp8 (per-tensor scale), whatever the file
    /// holds: half of bf16's memory.
    Fp8,
}

/// The placement flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementArgs {
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu", env = "FLUXD_DEVICE")]
    pub device: String,
    /// `f32`, `bf16` or `f16` (f32 is the default on CPU; bf16 is for GPUs).
    #[arg(long, default_value = "f32", env = "FLUXD_DTYPE")]
    pub dtype: String,
    /// Run CLIP and T5 on this device instead of `--device` (e.g. `cpu` beside a 24 GB GPU):
    /// they stay there between requests and only their embeddings move to `--device`.
    #[arg(long, env = "FLUXD_TEXT_ENCODERS_DEVICE")]
    pub text_encoders_device: Option<String>,
    /// CLIP's and T5's dtype when they run on another device (default: f32 on the CPU, where
    /// it is faster than bf16, else `--dtype`; bf16 halves T5-XXL's 19 GB).
    #[arg(
        long,
        env = "FLUXD_TEXT_ENCODERS_DTYPE",
        requires = "text_encoders_device"
    )]
    pub text_encoders_dtype: Option<String>,
    /// How the transformer's linear weights are held in memory.
    #[arg(long, value_enum, default_value_t = WeightsDtypeArg::Auto, env = "FLUXD_WEIGHTS_DTYPE")]
    pub weights_dtype: WeightsDtypeArg,
    /// Memory the model may use on `--device`, e.g. `24GB` or `22GiB` (default: the GPU's free
    /// memory, or the machine's available memory on the CPU). A model whose memory plan does
    /// not fit is refused before loading.
    #[arg(long, env = "FLUXD_MEMORY")]
    pub memory: Option<String>,
    /// Memory the CPU may use when the text encoders run there beside a GPU (default: the
    /// machine's available memory; state it to plan for another machine).
    #[arg(long, env = "FLUXD_CPU_MEMORY", requires = "text_encoders_device")]
    pub cpu_memory: Option<String>,
}

/// `cpu`, `cuda`, `cuda:N` as a plan device, without opening it.
pub fn parse_plan_device(s: &str) -> Result<PlanDevice> {
    match s {
        "cpu" => Ok(PlanDevice::Cpu),
        "cuda" => Ok(PlanDevice::Cuda(0)),
        s => match s.strip_prefix("cuda:") {
            Some(n) => Ok(PlanDevice::Cuda(
                n.parse()
                    .with_context(|| format!("bad CUDA ordinal in `{s}`"))?,
            )),
            None => bail!("unknown device `{s}` (expected cpu, cuda or cuda:N)"),
        },
    }
}

impl PlacementArgs {
    fn weights(&self) -> WeightsDtype {
        match self.weights_dtype {
            WeightsDtypeArg::Auto => WeightsDtype::Auto,
            WeightsDtypeArg::Fp8 => WeightsDtype::Fp8,
        }
    }

    /// The text encoders' device string and dtype.
    fn text_encoders(&self, dtype: DType) -> Result<Option<(&str, DType)>> {
        let Some(dev) = self.text_encoders_device.as_deref() else {
            return Ok(None);
        };
        let te_dtype = match &self.text_encoders_dtype {
            Some(d) => parse_dtype(d)?,
            None if dev == "cpu" => DType::F32,
            None => dtype,
        };
        Ok(Some((dev, te_dtype)))
    }

    /// Opens the devices and returns how the pipeline is to be loaded.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let device = parse_device(&self.device)?;
        let dtype = parse_dtype(&self.dtype)?;
        let text_encoders = match self.text_encoders(dtype)? {
            Some((dev, te_dtype)) => Some((parse_device(dev)?, te_dtype)),
            None => None,
        };
        Ok(LoadOptions {
            device,
            dtype,
            text_encoders,
            weights: self.weights(),
        })
    }

    /// The plan's view of the same flags (no device is opened).
    pub fn plan_options(&self, workload: Workload) -> Result<PlanOptions> {
        let device = parse_plan_device(&self.device)?;
        let dtype = parse_dtype(&self.dtype)?;
        let mut opts = PlanOptions::new(device, dtype, workload);
        if let Some((dev, te_dtype)) = self.text_encoders(dtype)? {
            opts.text_encoders = (parse_plan_device(dev)?, te_dtype);
        }
        opts.weights = self.weights();
        Ok(opts)
    }

    /// The budgets to check: `--memory` (or, with `open`, what the device has free) for the
    /// model's device, and the machine's available memory for the CPU when the text encoders
    /// run there beside a GPU. Devices whose free memory cannot be read are not checked.
    pub fn budgets(&self, open: Option<&LoadOptions>) -> Result<Vec<(PlanDevice, Budget)>> {
        let device = parse_plan_device(&self.device)?;
        let mut out = Vec::new();
        match (&self.memory, open) {
            (Some(m), _) => out.push((
                device,
                Budget {
                    bytes: parse_size(m)?,
                    source: format!("--memory {m}"),
                },
            )),
            (None, Some(opts)) => {
                if let Some(b) = memory_plan::available(&opts.device)? {
                    out.push((device, b));
                } else {
                    tracing::warn!(
                        device = %device,
                        "cannot read the device's free memory: the memory plan is not checked \
                         (pass --memory)"
                    );
                }
            }
            (None, None) => {}
        }
        let te_cpu = self.text_encoders_device.as_deref() == Some("cpu");
        if device != PlanDevice::Cpu && te_cpu {
            let cpu = match &self.cpu_memory {
                Some(m) => Some(Budget {
                    bytes: parse_size(m)?,
                    source: format!("--cpu-memory {m}"),
                }),
                None => memory_plan::available(&Device::Cpu)?,
            };
            out.extend(cpu.map(|b| (PlanDevice::Cpu, b)));
        }
        Ok(out)
    }
}

/// Makes the plan, logs it, and refuses (before anything is loaded) when a device's budget is
/// too small.
pub fn plan_and_check(
    paths: &ModelPaths,
    placement: &PlacementArgs,
    opts: &LoadOptions,
    workload: Workload,
    extra: &ExtraComponents,
) -> Result<MemoryPlan> {
    let plan_opts = placement.plan_options(workload)?;
    let plan = plan_model(paths, &plan_opts, extra).context("making the memory plan")?;
    tracing::info!("{plan}");
    let replan = |w: Workload| {
        let mut o = plan_opts.clone();
        o.workload = w;
        plan_model(paths, &o, extra)
    };
    plan.check(&placement.budgets(Some(opts))?, &replan)?;
    Ok(plan)
}
