//! Choosing where and in which precision the engine runs.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use fluxd_engine::quant::CpuKernels;

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .with_context(|| format!("bad CUDA ordinal in `{s}`"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("`{s}` asked for, but this fluxd was built without the `cuda` feature");
            }
            Device::new_cuda(ordinal).with_context(|| format!("opening {s}"))
        }
        other => bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
    }
}

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => bail!("unknown dtype `{other}` (expected f32, bf16 or f16)"),
    }
}

/// Parses `exact` or `int8`: the CPU kernels of quantized (GGUF) layers.
pub fn parse_cpu_kernels(s: &str) -> Result<CpuKernels> {
    match s {
        "exact" => Ok(CpuKernels::Exact),
        "int8" => Ok(CpuKernels::Int8),
        other => bail!("unknown CPU kernels `{other}` (expected exact or int8)"),
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
