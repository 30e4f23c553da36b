//! Rotary position embedding over (txt; img) token ids.
//!
//! Tables follow diffusers `FluxPosEmbed` + `get_1d_rotary_pos_embed(repeat_interleave_real=True,
//! freqs_dtype=float64)` (`models/embeddings.py`): ids cast to f32, frequencies
//! `1/θ^(2j/d)` and angles computed in f64, cos/sin rounded to f32 once. Applying them follows
//! `apply_rotary_emb(use_real_unbind_dim=-1)`: pairs (x₂ᵢ, x₂ᵢ₊₁) rotate by the pair's angle, in
//! f32 whatever the model dtype (never bf16 angles: candle-transformers' flux does that and loses
//! the phase of large positions).

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

/// RoPE base (`FluxPosEmbed(theta=10000)`).
pub const THETA: f64 = 10_000.0;

/// Per-request rotary tables, computed once and reused at every denoising step.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `(txt_len + img_len, head_dim / 2)` f32 cosines.
    pub(crate) cos: Tensor,
    /// `(txt_len + img_len, head_dim / 2)` f32 sines.
    pub(crate) sin: Tensor,
    pub(crate) txt_len: usize,
    pub(crate) img_len: usize,
}

impl Rope {
    /// Builds the tables for `txt_ids` `(L, 3)` followed by `img_ids` `(N, 3)` (any float dtype).
    pub fn new(
        axes: &[usize],
        img_ids: &Tensor,
        txt_ids: &Tensor,
        device: &Device,
    ) -> Result<Self> {
        let img = ids_rows(img_ids, axes.len(), "img_ids")?;
        let txt = ids_rows(txt_ids, axes.len(), "txt_ids")?;
        let half: usize = axes.iter().sum::<usize>() / 2;
        let rows = txt.len() + img.len();
        let mut cos = Vec::with_capacity(rows * half);
        let mut sin = Vec::with_capacity(rows * half);
        for pos in txt.iter().chain(img.iter()) {
            for (axis, &dim) in axes.iter().enumerate() {
                // `pos = ids.float()` then `torch.outer(pos, freqs_f64)`.
                let p = f64::from(pos[axis]);
                for j in 0..dim / 2 {
                    let freq = 1.0 / THETA.powf((2 * j) as f64 / dim as f64);
                    let angle = p * freq;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let cos_t = Tensor::from_slice(&cos, (rows, half), device)?;
        let sin_t = Tensor::from_slice(&sin, (rows, half), device)?;
        Ok(Self {
            cos: cos_t,
            sin: sin_t,
            txt_len: txt.len(),
            img_len: img.len(),
        })
    }

    /// Number of text tokens the tables were built for.
    pub fn txt_len(&self) -> usize {
        self.txt_len
    }

    /// Number of image tokens the tables were built for.
    pub fn img_len(&self) -> usize {
        self.img_len
    }

    /// Rotates `x` `(B, H, S, D)` (contiguous). Computed in f32 and cast back to `x`'s dtype.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?.contiguous()?;
        let out = candle_nn::rotary_emb::rope_i(&xf, &self.cos, &self.sin)?;
        Ok(out.to_dtype(dtype)?)
    }
}

/// Reads an `(n, axes)` id tensor as f32 rows (diffusers drops a leading batch dim of 3-d ids).
fn ids_rows(ids: &Tensor, axes: usize, what: &str) -> Result<Vec<Vec<f32>>> {
    let ids = if ids.rank() == 3 {
        ids.get(0)?
    } else {
        ids.clone()
    };
    let (_, cols) = ids.dims2().map_err(|_| {
        EngineError::InvalidInput(format!(
            "{what} must be (tokens, {axes}), got {:?}",
            ids.dims()
        ))
    })?;
    if cols != axes {
        return Err(EngineError::InvalidInput(format!(
            "{what} has {cols} position axes, the model has {axes}"
        )));
    }
    Ok(ids
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_the_formula_and_rotation_keeps_norms() -> Result<()> {
        let dev = Device::Cpu;
        let img_ids = Tensor::new(&[[0f32, 2.0, 3.0], [0.0, 40.0, 127.0]], &dev)?;
        let txt_ids = Tensor::zeros((1, 3), DType::F32, &dev)?;
        let rope = Rope::new(&[4, 6, 6], &img_ids, &txt_ids, &dev)?;
        assert_eq!((rope.txt_len(), rope.img_len()), (1, 2));
        let cos = rope.cos.to_vec2::<f32>()?;
        let sin = rope.sin.to_vec2::<f32>()?;
        // Text token: all angles zero.
        assert!(cos[0].iter().all(|&c| c == 1.0) && sin[0].iter().all(|&s| s == 0.0));
        // Last image token, axis 2 (col 127), j = 1: angle 127 / 10000^(2/6).
        let angle = 127.0f64 / 10_000f64.powf(2.0 / 6.0);
        assert_eq!(cos[2][2 + 3 + 1], angle.cos() as f32);
        assert_eq!(sin[2][2 + 3 + 1], angle.sin() as f32);
        // Rotation preserves the norm of each pair.
        let x = Tensor::arange(0f32, 48.0, &dev)?.reshape((1, 1, 3, 16))?;
        let y = rope.apply(&x)?;
        let n0 = x.sqr()?.sum_all()?.to_scalar::<f32>()?;
        let n1 = y.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!((n0 - n1).abs() / n0 < 1e-6);
        Ok(())
    }
}
