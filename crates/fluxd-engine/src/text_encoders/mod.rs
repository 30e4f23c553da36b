//! The two text encoders of FLUX.1: CLIP-L (its pooled output conditions the transformer's
//! vector input) and T5-XXL (its last hidden state is the transformer's text sequence).
//!
//! Both load the transformers on-disk layout (`config.json` plus one or several safetensors
//! files) with every size read from the config, so the same code runs the real models and the
//! tiny random ones the writers here produce. FLUX calls both with `attention_mask=None`
//! (diffusers `pipelines/flux/pipeline_flux.py`), so pad tokens are attended and no mask is taken.

mod clip;
pub(crate) mod encoder_layer;
mod t5;

pub(crate) use clip::layer_linears as clip_layer_linears;
pub use clip::{write_tiny_clip, ClipConfig, ClipTextEncoder};
pub use t5::{write_tiny_t5, T5Config, T5TextEncoder};

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::Module;

use crate::error::{EngineError, Result};
use crate::weights::WeightFiles;

/// The activations transformers names in `hidden_act` / `dense_act_fn`
/// (transformers `activations.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// `quick_gelu`: x·σ(1.702x).
    QuickGelu,
    /// `gelu`: the exact erf form.
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Act {
    /// Parses a transformers activation name; `path` is the config, for the error.
    pub(crate) fn parse(name: &str, path: &Path) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            other => {
                return Err(EngineError::config(
                    path,
                    format!("unsupported activation `{other}`"),
                ))
            }
        })
    }

    pub(crate) fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
            Self::GeluErf => x.gelu_erf()?,
            Self::GeluTanh => x.gelu()?,
            Self::Relu => x.relu()?,
            Self::Silu => x.silu()?,
        })
    }
}

/// Reads and parses a component's `config.json`.
pub(crate) fn read_config(dir: &Path) -> Result<(std::path::PathBuf, serde_json::Value)> {
    let path = dir.join("config.json");
    let text = read_json_text(&path, "model config")?;
    let value =
        serde_json::from_str(&text).map_err(|e| EngineError::config(&path, e.to_string()))?;
    Ok((path, value))
}

/// The text of a JSON file a model folder must have (`what` says what it is for when missing).
pub(crate) fn read_json_text(path: &Path, what: &str) -> Result<String> {
    if !path.is_file() {
        return Err(EngineError::MissingFile {
            path: path.to_path_buf(),
            what: what.into(),
        });
    }
    std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))
}

/// A config's JSON value as `T`, errors naming the file at `path`.
pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    path: &Path,
) -> Result<T> {
    serde_json::from_value(value).map_err(|e| EngineError::config(path, e.to_string()))
}

/// Refuses a config whose `model_type` is present and not `expected`; `supported` says what
/// is, for the error.
pub(crate) fn check_model_type(
    found: Option<&str>,
    expected: &str,
    path: &Path,
    supported: &str,
) -> Result<()> {
    match found {
        Some(t) if t != expected => Err(EngineError::config(
            path,
            format!("model_type `{t}` is not `{expected}` (only {supported} is supported)"),
        )),
        _ => Ok(()),
    }
}

/// A linear layer `out × in` (with bias if `bias`) read from `{prefix}.weight` / `{prefix}.bias`.
pub(crate) fn linear(
    w: &WeightFiles,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
    dtype: DType,
    dev: &Device,
) -> Result<Linear> {
    let weight = w.get_shaped(&format!("{prefix}.weight"), (out, inp), dtype, dev)?;
    let bias = if bias {
        Some(w.get_shaped(&format!("{prefix}.bias"), out, dtype, dev)?)
    } else {
        None
    };
    Ok(Linear {
        weight_t: weight.t()?,
        bias,
    })
}

/// `y = x·Wᵀ + b` on inputs of any rank, flattened to one matmul (candle-nn's `Linear` does a
/// broadcast batched matmul for rank 3, which is slower on CPU).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let last = dims.last().copied().unwrap_or(1);
        let rows = x.elem_count() / last.max(1);
        let y = x.reshape((rows, last))?.matmul(&self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        if let Some(l) = out_dims.last_mut() {
            *l = self.weight_t.dim(1)?;
        }
        Ok(y.reshape(out_dims)?)
    }
}

/// Softmax over the last dimension, computed in f32 whatever the model dtype (transformers T5
/// does `softmax(scores.float())`; for CLIP in f32 it changes nothing).
pub(crate) fn softmax_f32(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    Ok(candle_nn::ops::softmax_last_dim(&x32)?.to_dtype(dtype)?)
}

/// LayerNorm with affine weight and bias, over the last dimension.
pub(crate) fn layer_norm(
    w: &WeightFiles,
    prefix: &str,
    dim: usize,
    eps: f64,
    dtype: DType,
    dev: &Device,
) -> Result<candle_nn::LayerNorm> {
    let weight = w.get_shaped(&format!("{prefix}.weight"), dim, dtype, dev)?;
    let bias = w.get_shaped(&format!("{prefix}.bias"), dim, dtype, dev)?;
    Ok(candle_nn::LayerNorm::new(weight, bias, eps))
}

/// Applies a candle module, mapping its error.
pub(crate) fn apply<M: Module>(m: &M, x: &Tensor) -> Result<Tensor> {
    Ok(m.forward(x)?)
}

/// Checks that `input_ids` is a (B, L) integer tensor.
pub(crate) fn check_ids(input_ids: &Tensor, max_len: Option<usize>) -> Result<(usize, usize)> {
    let (b, l) = input_ids.dims2().map_err(|_| {
        EngineError::InvalidInput(format!(
            "input_ids must be (batch, length), got {:?}",
            input_ids.dims()
        ))
    })?;
    if !matches!(input_ids.dtype(), DType::U32 | DType::I64 | DType::U8) {
        return Err(EngineError::InvalidInput(format!(
            "input_ids must be integers, got {:?}",
            input_ids.dtype()
        )));
    }
    if let Some(max) = max_len {
        if l > max {
            return Err(EngineError::InvalidInput(format!(
                "sequence of {l} tokens exceeds the model's {max} positions"
            )));
        }
    }
    Ok((b, l))
}

#[cfg(test)]
mod tests {
    use super::fixtures;
    use super::*;

    /// FLUX runs the encoders in bf16: the same code must run in bf16 and stay near f32.
    #[test]
    fn bf16_runs_close_to_f32() -> Result<()> {
        let dir = fixtures::temp_dir("enc-bf16");
        write_tiny_clip(&dir.join("clip"), 64, 4)?;
        write_tiny_t5(&dir.join("t5"), 64, 4)?;
        let ids = Tensor::from_vec(
            (0..20u32).map(|i| (i * 7) % 64).collect::<Vec<_>>(),
            (2, 10),
            &Device::Cpu,
        )?;
        let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
            let a = a.to_dtype(DType::F32)?;
            let b = b.to_dtype(DType::F32)?;
            let err = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            Ok(err / b.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        let clip32 = ClipTextEncoder::load(&dir.join("clip"), DType::F32, &Device::Cpu)?;
        let clip16 = ClipTextEncoder::load(&dir.join("clip"), DType::BF16, &Device::Cpu)?;
        let e = rel(&clip16.pooled(&ids)?, &clip32.pooled(&ids)?)?;
        assert!(e < 0.05, "clip bf16 relative error {e}");
        let t32 = T5TextEncoder::load(&dir.join("t5"), DType::F32, &Device::Cpu)?;
        let t16 = T5TextEncoder::load(&dir.join("t5"), DType::BF16, &Device::Cpu)?;
        let out16 = t16.forward(&ids)?;
        assert_eq!(out16.dtype(), DType::BF16);
        let e = rel(&out16, &t32.forward(&ids)?)?;
        assert!(e < 0.05, "t5 bf16 relative error {e}");
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}

/// Helpers for the tests that compare against the reference fixtures written by
/// `scripts/reference/encoder_fixtures.py`.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::PathBuf;

    /// Parses `tests/fixtures/encoders/{name}`.
    pub(crate) fn load(name: &str) -> serde_json::Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/encoders")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
    }

    /// A JSON array of numbers, flattened.
    pub(crate) fn floats(v: &serde_json::Value) -> Vec<f32> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_f64())
            .map(|x| x as f32)
            .collect()
    }

    /// A JSON (B, L) array of token ids.
    pub(crate) fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                row.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect()
            })
            .collect()
    }

    /// The largest absolute difference, asserting equal lengths.
    pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "lengths differ");
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// A fresh temporary folder for one test.
    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fluxd-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        dir
    }
}
