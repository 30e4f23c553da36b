//! Products with quantized weights on the CPU, f32 activations: `dst = x · Wᵀ`.
//!
//! Two ways (README "GGUF" has the measurements behind them):
//! - [`Plan::DequantTiles`], the default: tiles of a few hundred weight rows expanded to f32 in a
//!   reused buffer and fed to the AVX-512 GEMM. The activations stay exact, so the result is the
//!   dequantized model's up to summation order; candle's per-row block dot products are 3×
//!   (Q4_K) to 50× (Q5_0, Q4_1: no SIMD dot product) slower on a denoising step's batches.
//! - [`Plan::Candle`], with [`CpuKernels::Int8`] only: candle's repacked integer tiles (AVX-512
//!   VNNI / AVX2 `vpdpbusd`) for the types it repacks. Faster, but they round the activations to
//!   8 bits in blocks of 256 (`BlockQ8K`), an error larger than Q8_0's own.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::blocks::dequantize_rows;
use super::CpuKernels;
use crate::cpu_gemm::{gemm, View};
use crate::error::{EngineError, Result};

/// f32 values of one dequantized tile of weight rows (6 MiB: a few hundred rows of a
/// 3072-wide layer, so the activations are re-packed by the GEMM only a dozen times per layer).
const TILE_FLOATS: usize = 3 << 19;

/// How one product is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// candle's kernels on the blocks (repacked integer tiles, or per-row dot products).
    Candle,
    /// Weight tiles expanded to f32, then the dense GEMM.
    DequantTiles,
}

/// The way to compute a product with `(n × k)` weights of `dtype`.
pub(crate) fn plan(dtype: GgmlDType, n: usize, k: usize, kernels: CpuKernels) -> Plan {
    if kernels == CpuKernels::Int8 && repacked_int8(dtype, n, k) {
        Plan::Candle
    } else {
        Plan::DequantTiles
    }
}

/// Whether candle 0.11.1 runs this product on its repacked x86 integer tiles
/// (`quantized/repack_x86.rs` `select`): Q4_K always, Q8_0 only with VNNI (`vpdpbusd`), with
/// `n` a multiple of 16 and `k` of 256. Q6_K is left out on purpose: its tiles hold 10 bits a
/// weight, 1.5× the file, for a third more speed (measured).
pub(crate) fn repacked_int8(dtype: GgmlDType, n: usize, k: usize) -> bool {
    if !n.is_multiple_of(16) || k == 0 || !k.is_multiple_of(256) {
        return false;
    }
    match dtype {
        GgmlDType::Q4K => avx2(),
        GgmlDType::Q8_0 => vnni(),
        _ => false,
    }
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || (is_x86_feature_detected!("avxvnni") && avx2())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[i, 0..n] = x[i] · Wᵀ` for the `m` rows of `x` (row-major `m × k`), `dst` rows `dst_rs`
/// apart. `q` is an `(n, k)` CPU tensor.
pub(crate) fn matmul(
    q: &QTensor,
    kernels: CpuKernels,
    x: &[f32],
    m: usize,
    dst: &mut [f32],
    dst_rs: usize,
) -> Result<()> {
    let (n, k) = q.shape().dims2()?;
    if x.len() != m * k || dst_rs < n || (m > 0 && dst.len() < (m - 1) * dst_rs + n) {
        return Err(EngineError::InvalidInput(format!(
            "quantized product: {m}x{k} input ({} values) into {m}x{n} (row stride {dst_rs}, {} values)",
            x.len(),
            dst.len()
        )));
    }
    if m == 0 {
        return Ok(());
    }
    match plan(q.dtype(), n, k, kernels) {
        Plan::Candle => {
            let xt = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
            let y = xt.apply_op1_no_bwd(q)?.flatten_all()?.to_vec1::<f32>()?;
            for (d, s) in dst.chunks_mut(dst_rs).zip(y.chunks_exact(n)) {
                d[..n].copy_from_slice(s);
            }
            Ok(())
        }
        Plan::DequantTiles => dequant_tiles(q, x, m, dst, dst_rs),
    }
}

thread_local! {
    /// The dequantized tile of the calling thread, reused across products.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows of weights per tile: a multiple of 16 that fills [`TILE_FLOATS`], at most `n`.
fn tile_rows(n: usize, k: usize) -> usize {
    let rows = (TILE_FLOATS / k.max(1)) / 16 * 16;
    rows.clamp(16, n.max(16)).min(n)
}

fn dequant_tiles(q: &QTensor, x: &[f32], m: usize, dst: &mut [f32], dst_rs: usize) -> Result<()> {
    let (n, k) = q.shape().dims2()?;
    let dtype = q.dtype();
    let data = q.data()?;
    let rows = tile_rows(n, k);
    let lhs = View::rm(x, m, k)?;
    TILE.with(|cell| -> Result<()> {
        let mut tile = cell.borrow_mut();
        if tile.len() < rows * k {
            tile.resize(rows * k, 0.0);
        }
        for r0 in (0..n).step_by(rows) {
            let r = rows.min(n - r0);
            let t = &mut tile[..r * k];
            // 16 rows per task: enough work per task, a dozen tasks per tile.
            t.par_chunks_mut(16 * k)
                .enumerate()
                .try_for_each(|(i, part)| dequantize_rows(dtype, &data, k, r0 + 16 * i, part))?;
            gemm(
                &mut dst[r0..],
                dst_rs,
                lhs,
                View::rm(t, r, k)?.t(),
                false,
                1.0,
                true,
            )?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny_init::InitRng;

    /// Both plans give x·Wᵀ of the dequantized weights, the integer kernels up to their
    /// activation rounding.
    #[test]
    fn plans_agree_with_the_dequantized_product() -> Result<()> {
        let mut rng = InitRng::new(5, "quant-cpu");
        let (n, k) = (48, 512);
        let w = rng.normal_tensor(&[n, k], 0.0, 0.05)?;
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dtype)?;
            let wd = q.dequantize(&Device::Cpu)?;
            for (m, kernels) in [1usize, 3, 37]
                .into_iter()
                .flat_map(|m| [(m, CpuKernels::Exact), (m, CpuKernels::Int8)])
            {
                let x = rng.normal_tensor(&[m, k], 0.0, 1.0)?;
                let want = x.matmul(&wd.t()?)?.flatten_all()?.to_vec1::<f32>()?;
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let rs = n + 5;
                let mut dst = vec![f32::NAN; (m - 1) * rs + n];
                matmul(&q, kernels, &xs, m, &mut dst, rs)?;
                let exact = plan(dtype, n, k, kernels) == Plan::DequantTiles;
                assert_eq!(
                    exact,
                    kernels == CpuKernels::Exact || !repacked_int8(dtype, n, k)
                );
                let tol = if exact { 1e-4 } else { 0.05 };
                for i in 0..m {
                    for j in 0..n {
                        let (g, e) = (dst[i * rs + j], want[i * n + j]);
                        assert!((g - e).abs() <= tol, "{dtype:?} m={m} [{i},{j}] {g} vs {e}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn tiles_cover_the_rows() {
        assert_eq!(tile_rows(9216, 3072), 512);
        assert_eq!(tile_rows(10, 3072), 10);
        assert_eq!(tile_rows(100_000, 1 << 22), 16);
    }
}
