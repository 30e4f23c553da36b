//! Scaled dot-product attention as torch's `scaled_dot_product_attention` computes it on bf16
//! inputs on a GPU (the flash and memory-efficient kernels diffusers ends up in): scores and
//! softmax in f32 whatever the dtype of q, k and v, the probabilities rounded to that dtype
//! before `P·V`, and never the whole score matrix at once.
//!
//! Queries are taken a block of rows at a time so that at most `budget` f32 scores are alive:
//! FLUX at 1024² has 24 heads × 4608² scores per attention, 2 GiB in f32, which a GPU can hold
//! but should not write, read and rewrite 57 times a step. On CUDA the f32 score product runs
//! as TF32 on the tensor cores when q and k are bf16/f16: their values have at most 11
//! significant bits, which TF32 holds exactly, so it is the same product as a bf16 GEMM with f32
//! accumulation, at twice the f32 speed. An f32 model keeps full f32 products.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// f32 score elements alive at once by default: 2²⁶ (256 MiB); a FLUX 1024² attention then runs
/// in 8 blocks of ~580 query rows.
pub(crate) const SCORE_BUDGET: usize = 1 << 26;

/// `softmax(q·kᵀ·scale)·v` over the last two dimensions of `q` `(…, Sq, D)`, `k` `(…, Sk, D)`
/// and `v` `(…, Sk, Dv)` (any leading batch dimensions, the same for all three); `scale` `None`
/// when q is already scaled. Returns `(…, Sq, Dv)` in v's dtype.
pub(crate) fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Option<f64>,
    budget: usize,
) -> Result<Tensor> {
    let rank = q.rank();
    let row_dim = rank.saturating_sub(2);
    let (s_q, s_k) = (q.dim(row_dim)?, k.dim(row_dim)?);
    let batch: usize = q.dims()[..row_dim].iter().product();
    let dtype = v.dtype();
    if q.device().is_cuda() {
        candle_core::cuda::set_gemm_reduced_precision_f32(q.dtype() != DType::F32);
    }
    let q = q.to_dtype(DType::F32)?;
    let k_t = k.to_dtype(DType::F32)?.t()?.contiguous()?;
    let v = v.contiguous()?;
    let rows = (budget / (batch * s_k).max(1)).clamp(1, s_q.max(1));
    let mut outs = Vec::with_capacity(s_q.div_ceil(rows));
    let mut start = 0;
    while start < s_q {
        let len = rows.min(s_q - start);
        let mut scores = q.narrow(row_dim, start, len)?.matmul(&k_t)?;
        if let Some(s) = scale {
            scores = scores.affine(s, 0.0)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    Ok(if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(&outs, row_dim)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny_init::InitRng;

    /// Blocks of any size give the one-block result, and bf16 inputs get f32 scores: the bf16
    /// result is the f32 one rounded, not a product of rounded scores.
    #[test]
    fn blocks_change_nothing_and_bf16_keeps_f32_scores() -> Result<()> {
        let mut rng = InitRng::new(5, "sdpa-test");
        let q = rng.normal_tensor(&[2, 3, 37, 8], 0.0, 2.0)?;
        let k = rng.normal_tensor(&[2, 3, 37, 8], 0.0, 2.0)?;
        let v = rng.normal_tensor(&[2, 3, 37, 8], 0.0, 1.0)?;
        let whole = sdpa(&q, &k, &v, Some(0.3), usize::MAX)?;
        for budget in [1, 2 * 3 * 37 * 5, 2 * 3 * 37 * 36] {
            let blocked = sdpa(&q, &k, &v, Some(0.3), budget)?;
            let d = (&blocked - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(d, 0.0, "budget {budget}");
        }
        let bf = |t: &Tensor| t.to_dtype(DType::BF16);
        let (qb, kb, vb) = (bf(&q)?, bf(&k)?, bf(&v)?);
        let ours = sdpa(&qb, &kb, &vb, Some(0.3), 200)?;
        assert_eq!(ours.dtype(), DType::BF16);
        let up = |t: &Tensor| t.to_dtype(DType::F32);
        let exact = sdpa(&up(&qb)?, &up(&kb)?, &up(&vb)?, Some(0.3), usize::MAX)?;
        let err = (ours.to_dtype(DType::F32)? - &exact)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        // Only P and the output are rounded to bf16 (8 significant bits): a few 2⁻⁸ of |v|.
        assert!(err < 0.05, "{err}");
        Ok(())
    }
}
