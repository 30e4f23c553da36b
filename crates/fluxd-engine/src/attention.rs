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
    let rows = block_rows(budget, batch, s_q, s_k);
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

/// Query rows per block: as many as keep `batch × rows × s_k` f32 scores within `budget`, but at
/// least one and at most `s_q`.
pub(crate) fn block_rows(budget: usize, batch: usize, s_q: usize, s_k: usize) -> usize {
    (budget / (batch * s_k).max(1)).clamp(1, s_q.max(1))
}

/// The shape of one [`sdpa`] call: `batch` is the product of the leading dimensions (batch ×
/// heads), `d` the width of q and k, `dv` that of v.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdpaShape {
    /// Product of the leading dimensions.
    pub batch: usize,
    /// Query rows.
    pub s_q: usize,
    /// Key rows.
    pub s_k: usize,
    /// Width of q and k.
    pub d: usize,
    /// Width of v and of the output.
    pub dv: usize,
}

/// The most bytes [`sdpa`] allocates at once during a call (its output included, its inputs
/// not), for contiguous q, k in `qk` and v in `v` (the output's dtype), as the code runs: the f32
/// copies of q and of kᵀ live through the call (no copy for an f32 q; k's f32 copy only until its
/// transpose is made contiguous); each block holds its scores, their scaled copy or their
/// softmax (f32), the probabilities in v's dtype (the softmax itself when that is f32) and its
/// `P·V` rows, beside the rows of the blocks before it; the blocks are then concatenated.
/// `cpu`: candle's CPU backend has no bf16 GEMM and widens both operands of `P·V` (v's whole
/// storage) and the product to f32 (`cpu_backend/mod.rs`, `matmul`).
pub(crate) fn working_bytes(
    shape: SdpaShape,
    qk: DType,
    v: DType,
    budget: usize,
    cpu: bool,
) -> u64 {
    let SdpaShape {
        batch,
        s_q,
        s_k,
        d,
        dv,
    } = shape;
    let (batch, s_k, d, dv) = (batch as u64, s_k as u64, d as u64, dv as u64);
    let f32_copy = |elems: u64| if qk == DType::F32 { 0 } else { elems * 4 };
    let (q32, k32, k_t) = (
        f32_copy(batch * s_q as u64 * d),
        f32_copy(batch * s_k * d),
        batch * s_k * d * 4,
    );
    let bv = v.size_in_bytes() as u64;
    // Bytes per score while the softmax is converted to v's dtype, and once it has been (the
    // f32 softmax is the probabilities when v is f32).
    let (converting, converted) = if v == DType::F32 {
        (8, 8)
    } else {
        (8 + bv, 4 + bv)
    };
    let widen = cpu && v == DType::BF16;
    let out_row = batch * dv * bv;
    // P·V's f32 copies of the probabilities (per score) and of v, and its f32 rows.
    let (p32, v32, out32_row) = if widen {
        (4, batch * s_k * dv * 4, batch * dv * 4)
    } else {
        (0, 0, 0)
    };
    let rows = block_rows(budget, batch as usize, s_q, s_k as usize);
    let mut peak = k32;
    let mut start = 0;
    while start < s_q {
        let len = rows.min(s_q - start) as u64;
        let scores = batch * len * s_k;
        let product = scores * (converted + p32) + v32 + len * (out32_row + out_row);
        peak = peak.max(start as u64 * out_row + (scores * converting).max(product));
        start += rows;
    }
    if s_q > rows {
        // Tensor::cat: the blocks' rows and the output.
        peak = peak.max(2 * s_q as u64 * out_row);
    }
    q32 + k_t + peak
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

    /// [`working_bytes`] is what `sdpa` allocates, measured on the CPU: several blocks with a
    /// short last one, a single block, f32 inputs, one-row blocks over budget, unscaled.
    #[test]
    fn working_bytes_is_what_sdpa_allocates() -> Result<()> {
        let mut rng = InitRng::new(6, "sdpa-memory");
        let (b, h, s, d) = (2, 3, 512, 64);
        let f32s: Vec<Tensor> = (0..3)
            .map(|_| rng.normal_tensor(&[b, h, s, d], 0.0, 1.0))
            .collect::<Result<_>>()?;
        let bf16s: Vec<Tensor> = f32s
            .iter()
            .map(|t| Ok(t.to_dtype(DType::BF16)?))
            .collect::<Result<_>>()?;
        // 16 queries, in one-row blocks (the budget is less than one row's scores).
        let few = bf16s[0].narrow(2, 0, 16)?.contiguous()?;
        let cases = [
            (&bf16s[0], &bf16s, Some(0.125), b * h * s * 100),
            (&bf16s[0], &bf16s, Some(0.125), usize::MAX),
            (&f32s[0], &f32s, Some(0.125), b * h * s * 100),
            (&few, &bf16s, None, 1000),
        ];
        for (q, inputs, scale, budget) in cases {
            let (k, v) = (&inputs[1], &inputs[2]);
            let shape = SdpaShape {
                batch: b * h,
                s_q: q.dim(2)?,
                s_k: s,
                d,
                dv: d,
            };
            // The first call on this thread also sets up the matmul's packing buffers.
            sdpa(q, k, v, scale, budget)?;
            let (out, measured) = crate::alloc_meter::peak_of(|| sdpa(q, k, v, scale, budget));
            drop(out?);
            let estimate = working_bytes(shape, q.dtype(), v.dtype(), budget, true);
            eprintln!(
                "{:?} budget {budget}: measured {measured}, estimate {estimate}",
                q.dtype()
            );
            // Tensor headers, shapes and layouts: a few hundred bytes per op.
            let slack = 64 * 1024;
            assert!(
                measured <= estimate + slack && estimate <= measured + slack,
                "{:?} scale {scale:?} budget {budget}: measured {measured}, estimate {estimate}",
                q.dtype()
            );
        }
        Ok(())
    }
}
