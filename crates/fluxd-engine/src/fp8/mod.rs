//! fp8 (`float8_e4m3fn`) weights: what the files people hold look like, and how fluxd keeps and
//! computes with them.
//!
//! Kijai's `flux1-dev-fp8-e4m3fn.safetensors` is a plain cast of every tensor to `F8_E4M3`.
//! ComfyUI's "scaled fp8" files (`comfy/ops.py` `scaled_fp8_ops`, detected in
//! `comfy/model_detection.py` by a `scaled_fp8` marker tensor) store each linear weight as
//! `W / scale_weight` in fp8 with a per-tensor f32 `scale_weight` beside it, and ComfyUI computes
//! `x · (W₈ · scale_weight)ᵀ` in the compute dtype. Their `scale_input` only matters to ComfyUI's
//! fp8 GEMM (`fp8_linear`: `x / scale_input` cast to fp8, then `torch._scaled_mm`), which runs
//! only on GPUs with fp8 tensor cores; everywhere else ComfyUI ignores it, and so do we: candle
//! has no fp8 GEMM, so a weight is upcast to the compute dtype one layer at a time. Newer ComfyUI
//! files name the same scale `weight_scale` (and `input_scale`); both names are read.

mod write;

use candle_core::{DType, Tensor};

pub use write::{
    fp8_transformer_tensors, write_comfy_checkpoint, write_fp8_reference_models,
    write_fp8_transformer, Fp8Layout, REFERENCE_CHECKPOINT, REFERENCE_MODEL_DIR,
    REFERENCE_ORIGINAL,
};

use crate::error::{EngineError, Result};

/// Largest finite `float8_e4m3fn` value.
pub const E4M3_MAX: f32 = 448.0;

/// Names under which ComfyUI stores the per-tensor scale of an fp8 weight `{module}.weight`:
/// `scale_weight` (its "scaled fp8" files) and `weight_scale` (its newer quantized layout).
pub fn weight_scale_names(weight_name: &str) -> Vec<String> {
    let module = weight_name.strip_suffix(".weight").unwrap_or(weight_name);
    vec![
        format!("{module}.scale_weight"),
        format!("{module}.weight_scale"),
    ]
}

/// Names of the input scales ComfyUI's fp8 GEMM uses (ignored here, see the module docs).
pub fn input_scale_names(weight_name: &str) -> Vec<String> {
    let module = weight_name.strip_suffix(".weight").unwrap_or(weight_name);
    vec![
        format!("{module}.scale_input"),
        format!("{module}.input_scale"),
    ]
}

/// The marker tensor ComfyUI writes into scaled-fp8 files (under the model's key prefix).
pub const SCALED_FP8_MARKER: &str = "scaled_fp8";

/// A weight stored as fp8 with the per-tensor scale that restores it: `W ≈ weight · scale`.
#[derive(Debug, Clone)]
pub struct Fp8Weight {
    /// The `F8E4M3` tensor.
    pub weight: Tensor,
    /// What each stored value is multiplied by (1 for plain casts).
    pub scale: f32,
}

impl Fp8Weight {
    /// Stores `w` in fp8 with a per-tensor scale `amax / 448`, so the largest weight maps to the
    /// largest fp8 value and small weights keep the normal range's relative precision instead of
    /// falling into fp8's subnormals (a plain cast of FLUX's ~0.02-sized weights would).
    pub fn quantize(w: &Tensor) -> Result<Self> {
        let amax = w
            .to_dtype(DType::F32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        if !amax.is_finite() {
            return Err(EngineError::InvalidInput(
                "cannot store a weight holding NaN or infinity in fp8".into(),
            ));
        }
        let scale = if amax > 0.0 { amax / E4M3_MAX } else { 1.0 };
        let weight = w
            .to_dtype(DType::F32)?
            .affine(1.0 / f64::from(scale), 0.0)?
            .to_dtype(DType::F8E4M3)?;
        Ok(Self { weight, scale })
    }

    /// The weight in `dtype`: `f32(W₈)` (exact in bf16, f16 and f32) times the scale, rounded once
    /// to `dtype` — what ComfyUI's `weight.to(dtype) * scale_weight.to(dtype)` computes.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        let w = self.weight.to_dtype(dtype)?;
        if self.scale == 1.0 {
            return Ok(w);
        }
        Ok(w.affine(f64::from(self.scale), 0.0)?)
    }

    /// Bytes the stored weight occupies.
    pub fn bytes(&self) -> usize {
        self.weight.elem_count()
    }
}

/// `F8_E5M2` bytes as f16: e5m2 is the upper byte of an IEEE half (same sign, exponent width
/// and bias), so widening is exact. candle has no e5m2 dtype; such files are upcast at load.
pub fn e5m2_to_f16(bytes: &[u8]) -> Vec<half::f16> {
    bytes
        .iter()
        .map(|b| half::f16::from_bits(u16::from(*b) << 8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny_init::InitRng;
    use candle_core::Device;

    #[test]
    fn quantize_keeps_relative_error_at_fp8_precision() -> Result<()> {
        let mut rng = InitRng::new(5, "fp8");
        // FLUX-sized weights (std ~0.02): a plain cast would put many in the subnormal range.
        let w = rng.normal_tensor(&[64, 96], 0.0, 0.02)?;
        let q = Fp8Weight::quantize(&w)?;
        assert_eq!(q.weight.dtype(), DType::F8E4M3);
        let back = q.dequantize(DType::F32)?;
        let err = (&back - &w)?.abs()?;
        let rel = (err.sum_all()?.to_scalar::<f32>()?) / w.abs()?.sum_all()?.to_scalar::<f32>()?;
        // 3 mantissa bits: round-to-nearest error ≤ 2^-4 of each value, ~2^-5 on average.
        assert!(rel < 0.04, "mean relative error {rel}");
        let plain = w.to_dtype(DType::F8E4M3)?.to_dtype(DType::F32)?;
        let rel_plain = ((&plain - &w)?.abs()?.sum_all()?.to_scalar::<f32>()?)
            / w.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert!(rel < rel_plain, "scaled {rel} vs plain cast {rel_plain}");
        Ok(())
    }

    #[test]
    fn e5m2_widens_exactly() -> Result<()> {
        // 0x3C = 1.0, 0xC0 = -2.0, 0x01 = smallest subnormal 2^-16, 0x7B = 57344 (max).
        let got: Vec<f32> = e5m2_to_f16(&[0x3C, 0xC0, 0x01, 0x7B])
            .into_iter()
            .map(f32::from)
            .collect();
        assert_eq!(got, vec![1.0, -2.0, 2f32.powi(-16), 57344.0]);
        let t = Tensor::new(&[0.5f32], &Device::Cpu)?;
        assert_eq!(
            Fp8Weight::quantize(&t)?
                .dequantize(DType::F32)?
                .to_vec1::<f32>()?,
            [0.5]
        );
        Ok(())
    }
}
