//! The one linear layer type of the transformer, with a hook for low-rank adapters (LoRA).
//!
//! Adapters are applied on the fly, `y = x·Wᵀ + b + Σ scale·(x·downᵀ)·upᵀ` (the LoRA forward of
//! BFL `modules/lora.py` and kohya `networks/lora_flux.py`), so a fine-tune can be set and
//! cleared per request without touching, copying or re-rounding the base weights.
//!
//! The base weight is held in one of several storage kinds ([`LinearWeight`]): dense in the
//! compute dtype, or fp8 with a per-tensor scale, upcast to the compute dtype for each product
//! (candle has no fp8 GEMM). Adapters always run in the compute dtype beside it.

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};
use crate::fp8::Fp8Weight;

/// How a linear layer's `(out, in)` base weight is held in memory.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// In the compute dtype.
    Dense(Tensor),
    /// `float8_e4m3fn` with a per-tensor scale (fp8 checkpoints, `--weights-dtype fp8`).
    Fp8(Fp8Weight),
}

impl LinearWeight {
    /// `(out, in)`.
    pub fn dims(&self) -> &[usize] {
        match self {
            Self::Dense(w) => w.dims(),
            Self::Fp8(w) => w.weight.dims(),
        }
    }

    /// Bytes the weight occupies in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Self::Fp8(w) => w.bytes(),
        }
    }
}

/// A low-rank update `scale · up · down` of a linear layer's weight.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// `(rank, in_features)`.
    pub down: Tensor,
    /// `(out_features, rank)`.
    pub up: Tensor,
    /// Optional `(out_features,)` bias added with the update (the reference provider's LoRA
    /// layout stores `lora_B.bias`; BFL `modules/lora.py` adds it inside the scaled branch).
    pub bias: Option<Tensor>,
    /// Multiplier (e.g. strength · alpha / rank for kohya files).
    pub scale: f32,
}

/// A linear layer `y = x·Wᵀ + b` with optional low-rank adapters.
#[derive(Debug, Clone)]
pub struct FluxLinear {
    weight: LinearWeight,
    /// The dtype products are computed in (the dense weight's, the bias's).
    dtype: DType,
    bias: Option<Tensor>,
    adapters: Vec<LowRank>,
}

impl FluxLinear {
    /// A layer from a dense `(out, in)` weight and an optional `(out,)` bias; it computes in the
    /// weight's dtype.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let dtype = weight.dtype();
        Self::with_weight(LinearWeight::Dense(weight), bias, dtype)
    }

    /// A layer from a weight in any storage kind, computing in `dtype` (the bias's dtype).
    pub fn with_weight(weight: LinearWeight, bias: Option<Tensor>, dtype: DType) -> Result<Self> {
        let (out, inp) = match weight.dims() {
            [o, i] => (*o, *i),
            other => {
                return Err(EngineError::InvalidInput(format!(
                    "a linear weight must be 2-D, got shape {other:?}"
                )))
            }
        };
        if let Some(b) = &bias {
            if b.dims() != [out] {
                return Err(EngineError::InvalidInput(format!(
                    "bias of shape {:?} for a weight of shape {:?}",
                    b.dims(),
                    [out, inp]
                )));
            }
        }
        Ok(Self {
            weight,
            dtype,
            bias,
            adapters: Vec::new(),
        })
    }

    /// The base weight as held.
    pub fn stored_weight(&self) -> &LinearWeight {
        &self.weight
    }

    /// The `(out, in)` weight in the compute dtype: the held tensor when dense, a fresh upcast
    /// of this one layer when fp8.
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => Ok(w.clone()),
            LinearWeight::Fp8(w) => w.dequantize(self.dtype),
        }
    }

    /// Stores the weight in fp8 (per-tensor scale) if it is dense; see [`Fp8Weight::quantize`].
    pub fn store_fp8(&mut self) -> Result<()> {
        if let LinearWeight::Dense(w) = &self.weight {
            self.weight = LinearWeight::Fp8(Fp8Weight::quantize(w)?);
        }
        Ok(())
    }

    /// The dtype products are computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The adapters currently applied.
    pub fn adapters(&self) -> &[LowRank] {
        &self.adapters
    }

    /// Adds an adapter after checking its shapes; it is converted to the layer's dtype/device.
    pub fn add_adapter(&mut self, adapter: LowRank) -> Result<()> {
        let (r, inp) = adapter.down.dims2()?;
        let (out, r2) = adapter.up.dims2()?;
        let bias_ok = adapter.bias.as_ref().is_none_or(|b| b.dims() == [out]);
        if inp != self.in_features() || out != self.out_features() || r != r2 || !bias_ok {
            return Err(EngineError::InvalidInput(format!(
                "adapter down {:?} / up {:?} does not fit a linear layer {:?}",
                adapter.down.dims(),
                adapter.up.dims(),
                self.weight.dims()
            )));
        }
        let dtype = self.dtype;
        let device = match &self.weight {
            LinearWeight::Dense(w) => w.device(),
            LinearWeight::Fp8(w) => w.weight.device(),
        };
        self.adapters.push(LowRank {
            down: adapter
                .down
                .to_dtype(dtype)?
                .to_device(device)?
                .contiguous()?,
            up: adapter
                .up
                .to_dtype(dtype)?
                .to_device(device)?
                .contiguous()?,
            bias: adapter
                .bias
                .map(|b| b.to_dtype(dtype)?.to_device(device))
                .transpose()?,
            scale: adapter.scale,
        });
        Ok(())
    }

    /// Removes all adapters; the layer computes exactly what it computed before they were added.
    pub fn clear_adapters(&mut self) {
        self.adapters.clear();
    }

    /// `x·Wᵀ + b (+ adapters)` on the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.broadcast_matmul(&self.weight()?.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        for a in &self.adapters {
            let low = x
                .broadcast_matmul(&a.down.t()?)?
                .broadcast_matmul(&a.up.t()?)?;
            y = (y + low.affine(f64::from(a.scale), 0.0)?)?;
            if let Some(b) = &a.bias {
                y = y.broadcast_add(&b.affine(f64::from(a.scale), 0.0)?)?;
            }
        }
        Ok(y)
    }

    /// The bias the layer adds in all, `b + Σ scale·adapter_bias`, as f32 (`out_features`).
    pub fn total_bias_f32(&self) -> Result<Vec<f32>> {
        let mut total = match &self.bias {
            Some(b) => b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
            None => vec![0f32; self.out_features()],
        };
        for a in &self.adapters {
            if let Some(b) = &a.bias {
                let b = b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                for (t, v) in total.iter_mut().zip(b) {
                    *t += a.scale * v;
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny_init::InitRng;

    #[test]
    fn adapter_changes_output_and_clearing_restores_it() -> Result<()> {
        let mut rng = InitRng::new(3, "linear-test");
        let mut lin = FluxLinear::new(
            rng.linear_weight(5, 4)?,
            Some(rng.normal_tensor(&[5], 0.0, 0.1)?),
        )?;
        let x = rng.normal_tensor(&[2, 3, 4], 0.0, 1.0)?;
        let base = lin.forward(&x)?;
        let down = rng.normal_tensor(&[2, 4], 0.0, 1.0)?;
        let up = rng.normal_tensor(&[5, 2], 0.0, 1.0)?;
        let lora_bias = rng.normal_tensor(&[5], 0.0, 1.0)?;
        lin.add_adapter(LowRank {
            bias: Some(lora_bias.clone()),
            down: down.clone(),
            up: up.clone(),
            scale: 0.5,
        })?;
        let adapted = lin.forward(&x)?;
        let update = x.broadcast_matmul(&down.t()?)?.broadcast_matmul(&up.t()?)?;
        let expected = (&base + update.broadcast_add(&lora_bias)? * 0.5)?;
        let err = (&adapted - &expected)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");
        let moved = (&adapted - &base)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(moved > 1e-2, "{moved}");
        lin.clear_adapters();
        let back = lin.forward(&x)?;
        let same = (&back - &base)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(same, 0.0);
        let bad = LowRank {
            bias: None,
            down: up,
            up: down,
            scale: 1.0,
        };
        assert!(lin.add_adapter(bad).is_err());
        Ok(())
    }
}
