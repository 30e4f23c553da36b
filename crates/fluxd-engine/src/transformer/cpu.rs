//! The f32 CPU fast path of the forward pass.
//!
//! Same math as `blocks.rs` (diffusers `FluxTransformer2DModel`), laid out for a 2-core CPU:
//! - one residual buffer `(txt; img)` for the whole pass, so no concatenation or split copies;
//! - fused projections (BFL qkv / linear1) as single `gemm` calls (AVX-512 microkernels),
//!   biases folded into the row kernel that follows each matmul;
//! - q/k RMSNorm + RoPE in place on the projection output, attention reading q/k/v through
//!   strides (no transposes), per block of query rows: scores for all keys, fused exp/sum,
//!   `P·V`, then division by the row sum (never the full `S×S` matrix of all heads);
//! - buffers allocated once per forward and reused by every block.

use candle_core::{Storage, Tensor};
use rayon::prelude::*;

use super::blocks::{DoubleBlock, SingleBlock, EPS};
use super::kernels;
use super::linear::FluxLinear;
use crate::error::{EngineError, Result};

/// Score-matrix floats one attention task may hold (1 MiB: stays in a core's L2).
const SCORE_BUDGET: usize = 1 << 18;

/// Query rows per attention task: as many as fit the score budget (each task repacks K and V,
/// so bigger blocks repack less), at most 256, split evenly over the sequence.
fn q_block(s: usize) -> usize {
    let max_rows = (SCORE_BUDGET / s.max(1)).clamp(16, 256);
    let blocks = s.div_ceil(max_rows).max(1);
    s.div_ceil(blocks)
}

thread_local! {
    /// Attention score scratch of the current rayon worker.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A strided read-only matrix over a slice, bounds-checked at construction.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        let last = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        };
        if last > data.len() {
            return Err(EngineError::InvalidInput(format!(
                "matrix view {rows}x{cols} (strides {rs},{cs}) exceeds a buffer of {}",
                data.len()
            )));
        }
        Ok(Self {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// Row-major `rows × cols`.
    pub fn rm(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst (m×n, row stride dst_rs) = [dst +] beta · lhs · rhs`.
pub(crate) fn gemm(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    accumulate: bool,
    beta: f32,
    parallel: bool,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k {
        return Err(EngineError::InvalidInput(format!(
            "matmul {m}x{k} by {}x{n}",
            rhs.rows
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if (m - 1) * dst_rs + n > dst.len() || dst_rs < n {
        return Err(EngineError::InvalidInput(format!(
            "matmul output {m}x{n} (row stride {dst_rs}) exceeds a buffer of {}",
            dst.len()
        )));
    }
    let par = if parallel && m * n * k > 1 << 18 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: all three matrices were bounds-checked against their slices above / in
    // `View::new`; `dst` is borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// The f32 data of a contiguous CPU tensor.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(EngineError::InvalidInput(
            "CPU fast path on a non-CPU tensor".into(),
        ));
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| EngineError::InvalidInput("CPU fast path on a strided tensor".into()))?;
    f(&data[start..end])
}

/// `dst = x · Wᵀ + Σ scale·(x·downᵀ)·upᵀ` (no bias: callers fold it into the next kernel).
fn matmul_wt(lin: &FluxLinear, x: View<'_>, dst: &mut [f32], dst_rs: usize) -> Result<()> {
    let (out, inp) = (lin.out_features(), lin.in_features());
    // Dense weights are borrowed; an fp8 weight is upcast here, one layer at a time.
    with_data(&lin.weight()?, |w| {
        gemm(dst, dst_rs, x, View::rm(w, out, inp)?.t(), false, 1.0, true)
    })?;
    for a in lin.adapters() {
        let r = a.down.dims()[0];
        let mut low = vec![0f32; x.rows * r];
        with_data(&a.down, |d| {
            gemm(&mut low, r, x, View::rm(d, r, inp)?.t(), false, 1.0, true)
        })?;
        let low_v = View::rm(&low, x.rows, r)?;
        with_data(&a.up, |u| {
            gemm(
                dst,
                dst_rs,
                low_v,
                View::rm(u, out, r)?.t(),
                true,
                a.scale,
                true,
            )
        })?;
    }
    Ok(())
}

fn bias_of(lin: &FluxLinear) -> Result<Vec<f32>> {
    lin.total_bias_f32()
}

/// `x · Wᵀ + b` for a single row (modulation vectors).
fn linear_row(lin: &FluxLinear, x: &[f32]) -> Result<Vec<f32>> {
    let mut out = vec![0f32; lin.out_features()];
    matmul_wt(lin, View::rm(x, 1, x.len())?, &mut out, lin.out_features())?;
    kernels::add_bias(&mut out, &bias_of(lin)?);
    Ok(out)
}

/// `dst = x · Wᵀ + b` on `rows` rows of width `in`, row-major.
pub(crate) fn linear_into(lin: &FluxLinear, x: &[f32], rows: usize, dst: &mut [f32]) -> Result<()> {
    let out = lin.out_features();
    let len = dst.len();
    let dst = dst.get_mut(..rows * out).ok_or_else(|| {
        EngineError::InvalidInput(format!("{rows}x{out} output in a buffer of {len}"))
    })?;
    matmul_wt(lin, View::rm(x, rows, lin.in_features())?, dst, out)?;
    let b = bias_of(lin)?;
    dst.par_chunks_mut(out)
        .for_each(|r| kernels::add_bias(r, &b));
    Ok(())
}

/// Modulation chunks from `lin(silu(vec))`: `(shift, 1 + scale, gate)` triples.
struct Mod {
    shift: Vec<f32>,
    one_plus_scale: Vec<f32>,
    gate: Vec<f32>,
}

fn mods(lin: &FluxLinear, vec_silu: &[f32], h: usize, n: usize) -> Result<Vec<Mod>> {
    let v = linear_row(lin, vec_silu)?;
    Ok((0..n / 3)
        .map(|i| {
            let c = |j: usize| v[(3 * i + j) * h..(3 * i + j + 1) * h].to_vec();
            Mod {
                shift: c(0),
                one_plus_scale: c(1).iter().map(|s| 1.0 + s).collect(),
                gate: c(2),
            }
        })
        .collect())
}

/// Geometry of one forward.
#[derive(Clone, Copy)]
pub(crate) struct Geo {
    pub txt: usize,
    pub img: usize,
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp: usize,
}

impl Geo {
    fn seq(&self) -> usize {
        self.txt + self.img
    }
}

/// Work buffers shared by all blocks of one forward.
#[derive(Default)]
pub(crate) struct Work {
    xm: Vec<f32>,
    qkv: Vec<f32>,
    cat: Vec<f32>,
    out: Vec<f32>,
    heads: Vec<f32>,
}

impl Work {
    /// Grows the buffers to fit `g` (they are reused across forwards: a fresh 60 MB per
    /// forward costs page faults and zeroing).
    pub fn fit(&mut self, g: Geo) {
        let (s, h) = (g.seq(), g.hidden);
        let grow = |v: &mut Vec<f32>, n: usize| {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        };
        grow(&mut self.xm, s * h);
        grow(&mut self.qkv, s * (3 * h + g.mlp));
        grow(&mut self.cat, s * (h + g.mlp));
        grow(&mut self.out, s * h);
        grow(&mut self.heads, s * h);
    }
}

/// A [`Work`] kept between forwards of one model. Concurrent forwards do not wait: a second
/// caller allocates its own buffers.
#[derive(Default)]
pub(crate) struct WorkCache(std::sync::Mutex<Work>);

impl WorkCache {
    /// Runs `f` with cached buffers if free, else with fresh ones.
    pub fn with<R>(&self, f: impl FnOnce(&mut Work) -> R) -> R {
        match self.0.try_lock() {
            Ok(mut w) => f(&mut w),
            Err(_) => f(&mut Work::default()),
        }
    }
}

impl Clone for WorkCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for WorkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkCache")
    }
}

/// `out[rows] = LN(x[rows])·(1+scale)+shift`, rows of width h.
fn ln_mod_rows(x: &[f32], m: &Mod, out: &mut [f32], h: usize) {
    out.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .for_each(|(o, r)| kernels::ln_modulate(r, &m.one_plus_scale, &m.shift, EPS, o));
}

/// q/k: bias + RMSNorm + RoPE in place; v: bias. `qkv` rows (stride `rs`) start with
/// `[q | k | v]` of width `3h`; `first_token` is the RoPE row of the first row.
#[allow(clippy::too_many_arguments)]
fn prep_qkv(
    qkv: &mut [f32],
    rs: usize,
    bias: &[f32],
    qn: &[f32],
    kn: &[f32],
    rope: (&[f32], &[f32]),
    first_token: usize,
    g: Geo,
) {
    let (h, d) = (g.hidden, g.head_dim);
    let half = d / 2;
    qkv.par_chunks_mut(rs).enumerate().for_each(|(i, row)| {
        let t = first_token + i;
        let (cos, sin) = (
            &rope.0[t * half..(t + 1) * half],
            &rope.1[t * half..(t + 1) * half],
        );
        for hh in 0..g.heads {
            let q = hh * d..(hh + 1) * d;
            kernels::bias_rms_rope(&mut row[q.clone()], &bias[q], qn, cos, sin, EPS);
            let k = h + hh * d..h + (hh + 1) * d;
            kernels::bias_rms_rope(&mut row[k.clone()], &bias[k], kn, cos, sin, EPS);
        }
        kernels::add_bias(&mut row[2 * h..3 * h], &bias[2 * h..3 * h]);
    });
}

/// Attention over all `S` tokens: q/k/v read from `qkv` (row stride `rs`, `[q | k | v]`),
/// output `(S, h)` written into `out` with row stride `out_rs`. Tasks are (head, block of
/// [`q_block`] query rows); each writes its rows of a head-major scratch `(H, S, D)`, which is
/// then scattered to token-major order.
fn attention(
    qkv: &[f32],
    rs: usize,
    scratch: &mut [f32],
    out: &mut [f32],
    out_rs: usize,
    g: Geo,
) -> Result<()> {
    let (s, h, d) = (g.seq(), g.hidden, g.head_dim);
    let qb = q_block(s);
    let scratch = &mut scratch[..g.heads * s * d];
    // Split per head first, then per block, so a block never straddles two heads.
    scratch
        .par_chunks_mut(s * d)
        .enumerate()
        .try_for_each(|(hh, head_out)| {
            head_out
                .par_chunks_mut(qb * d)
                .enumerate()
                .try_for_each(|(blk, acc)| {
                    let q0 = blk * qb;
                    let q = View::new(&qkv[q0 * rs + hh * d..], qb.min(s - q0), d, rs, 1)?;
                    let k = View::new(&qkv[h + hh * d..], s, d, rs, 1)?;
                    let v = View::new(&qkv[2 * h + hh * d..], s, d, rs, 1)?;
                    // A per-thread score buffer: a fresh ~1 MB allocation per task would be mmapped and
                    // page-faulted every time. `gemm` runs single-threaded here, so the worker cannot
                    // start another task (and borrow the cell again) while it is borrowed.
                    SCORES.with(|cell| attention_block(&mut cell.borrow_mut(), q, k, v, acc))
                })
        })?;
    let scratch = &*scratch;
    out.par_chunks_mut(out_rs).enumerate().for_each(|(t, row)| {
        for hh in 0..g.heads {
            let src = &scratch[(hh * s + t) * d..(hh * s + t + 1) * d];
            row[hh * d..(hh + 1) * d].copy_from_slice(src);
        }
    });
    Ok(())
}

/// `acc = softmax(q·kᵀ/√d)·v` for one block of query rows of one head.
fn attention_block(
    scores: &mut Vec<f32>,
    q: View<'_>,
    k: View<'_>,
    v: View<'_>,
    acc: &mut [f32],
) -> Result<()> {
    let (rows, d, s) = (q.rows, q.cols, k.rows);
    if scores.len() < rows * s {
        scores.resize(rows * s, 0.0);
    }
    let scores = &mut scores[..rows * s];
    gemm(scores, s, q, k.t(), false, 1.0, false)?;
    let scale = 1.0 / (d as f32).sqrt();
    let mut sums = [0f32; 256];
    let sums = &mut sums[..rows.min(256)];
    for (row, sum) in scores.chunks_exact_mut(s).zip(sums.iter_mut()) {
        *sum = kernels::softmax_exp(row, scale);
    }
    gemm(acc, d, View::rm(scores, rows, s)?, v, false, 1.0, false)?;
    // Normalise after `P·V` (d values per row instead of s).
    for (r, sum) in acc.chunks_exact_mut(d).zip(sums.iter()) {
        let inv = 1.0 / sum;
        r.iter_mut().for_each(|a| *a *= inv);
    }
    Ok(())
}

/// `x[rows] += gate · (y[rows] + bias)`.
fn residual_rows(x: &mut [f32], y: &[f32], bias: &[f32], gate: &[f32], h: usize) {
    x.par_chunks_mut(h)
        .zip(y.par_chunks(h))
        .for_each(|(r, yr)| kernels::gated_residual(r, yr, bias, gate));
}

/// `dst[rows] = gelu(src[rows, cols] + bias)` (src row stride `src_rs`, dst `dst_rs`).
fn gelu_rows(
    src: &[f32],
    src_rs: usize,
    col0: usize,
    bias: &[f32],
    dst: &mut [f32],
    dst_rs: usize,
    dcol0: usize,
) {
    let w = bias.len();
    dst.par_chunks_mut(dst_rs)
        .zip(src.par_chunks(src_rs))
        .for_each(|(o, r)| {
            kernels::bias_gelu(&r[col0..col0 + w], bias, &mut o[dcol0..dcol0 + w]);
        });
}

/// One double-stream block on the residual buffer `x` = (txt; img) rows.
pub(crate) fn double_block(
    b: &DoubleBlock,
    x: &mut [f32],
    vec_silu: &[f32],
    rope: (&[f32], &[f32]),
    w: &mut Work,
    g: Geo,
) -> Result<()> {
    let (h, l, s) = (g.hidden, g.txt, g.seq());
    let im = mods(&b.img_mod, vec_silu, h, 6)?;
    let tm = mods(&b.txt_mod, vec_silu, h, 6)?;
    let (x_txt, x_img) = x.split_at_mut(l * h);
    let (xm_txt, xm_img) = w.xm[..s * h].split_at_mut(l * h);
    ln_mod_rows(x_txt, &tm[0], xm_txt, h);
    ln_mod_rows(x_img, &im[0], xm_img, h);
    // q/k/v of both streams in one (S, 3h) buffer, txt rows first (joint attention order).
    let rs = 3 * h;
    let qkv = &mut w.qkv[..s * rs];
    {
        let (q_txt, q_img) = qkv.split_at_mut(l * rs);
        matmul_wt(&b.txt_qkv, View::rm(xm_txt, l, h)?, q_txt, rs)?;
        matmul_wt(&b.img_qkv, View::rm(xm_img, g.img, h)?, q_img, rs)?;
        with_norms(&b.txt_norm, |qn, kn| {
            prep_qkv(q_txt, rs, &bias_of(&b.txt_qkv)?, qn, kn, rope, 0, g);
            Ok(())
        })?;
        with_norms(&b.img_norm, |qn, kn| {
            prep_qkv(q_img, rs, &bias_of(&b.img_qkv)?, qn, kn, rope, l, g);
            Ok(())
        })?;
    }
    let attn = &mut w.cat[..s * h];
    attention(qkv, rs, &mut w.heads, attn, h, g)?;
    let (a_txt, a_img) = attn.split_at(l * h);
    let (o_txt, o_img) = w.out[..s * h].split_at_mut(l * h);
    matmul_wt(&b.txt_proj, View::rm(a_txt, l, h)?, o_txt, h)?;
    matmul_wt(&b.img_proj, View::rm(a_img, g.img, h)?, o_img, h)?;
    residual_rows(x_txt, o_txt, &bias_of(&b.txt_proj)?, &tm[0].gate, h);
    residual_rows(x_img, o_img, &bias_of(&b.img_proj)?, &im[0].gate, h);

    // MLPs (the hidden activations reuse the q/k/v buffer).
    for (xs, xm, mlp0, mlp2, m, rows) in [
        (
            &mut *x_txt,
            &mut *xm_txt,
            &b.txt_mlp0,
            &b.txt_mlp2,
            &tm[1],
            l,
        ),
        (
            &mut *x_img,
            &mut *xm_img,
            &b.img_mlp0,
            &b.img_mlp2,
            &im[1],
            g.img,
        ),
    ] {
        if rows == 0 {
            continue;
        }
        ln_mod_rows(xs, m, xm, h);
        let hid = &mut w.qkv[..rows * g.mlp];
        matmul_wt(mlp0, View::rm(xm, rows, h)?, hid, g.mlp)?;
        let b0 = bias_of(mlp0)?;
        hid.par_chunks_mut(g.mlp)
            .for_each(|r| kernels::bias_gelu_inplace(r, &b0));
        let o = &mut w.out[..rows * h];
        matmul_wt(mlp2, View::rm(hid, rows, g.mlp)?, o, h)?;
        residual_rows(xs, o, &bias_of(mlp2)?, &m.gate, h);
    }
    Ok(())
}

/// One single-stream block on the residual buffer `x` = (txt; img) rows.
pub(crate) fn single_block(
    b: &SingleBlock,
    x: &mut [f32],
    vec_silu: &[f32],
    rope: (&[f32], &[f32]),
    w: &mut Work,
    g: Geo,
) -> Result<()> {
    let (h, s, mlp) = (g.hidden, g.seq(), g.mlp);
    let m = mods(&b.modulation, vec_silu, h, 3)?;
    let xm = &mut w.xm[..s * h];
    ln_mod_rows(x, &m[0], xm, h);
    let rs = 3 * h + mlp;
    let lin1 = &mut w.qkv[..s * rs];
    matmul_wt(&b.linear1, View::rm(xm, s, h)?, lin1, rs)?;
    let b1 = bias_of(&b.linear1)?;
    with_norms(&b.norm, |qn, kn| {
        prep_qkv(lin1, rs, &b1, qn, kn, rope, 0, g);
        Ok(())
    })?;
    // cat = [attention | gelu(mlp)], the input of linear2.
    let cat_rs = h + mlp;
    let cat = &mut w.cat[..s * cat_rs];
    attention(lin1, rs, &mut w.heads, cat, cat_rs, g)?;
    gelu_rows(lin1, rs, 3 * h, &b1[3 * h..], cat, cat_rs, h);
    let o = &mut w.out[..s * h];
    matmul_wt(&b.linear2, View::rm(cat, s, cat_rs)?, o, h)?;
    residual_rows(x, o, &bias_of(&b.linear2)?, &m[0].gate, h);
    Ok(())
}

fn with_norms<R>(
    n: &super::blocks::QkNorm,
    f: impl FnOnce(&[f32], &[f32]) -> Result<R>,
) -> Result<R> {
    with_data(&n.query, |q| with_data(&n.key, |k| f(q, k)))
}

/// Final layer on image rows: `linear(LN(x)·(1+scale)+shift)`, BFL (shift, scale) order.
pub(crate) fn final_layer(
    final_mod: &FluxLinear,
    final_linear: &FluxLinear,
    x_img: &[f32],
    vec_silu: &[f32],
    w: &mut Work,
    g: Geo,
) -> Result<Vec<f32>> {
    let h = g.hidden;
    let v = linear_row(final_mod, vec_silu)?;
    let m = Mod {
        shift: v[..h].to_vec(),
        one_plus_scale: v[h..2 * h].iter().map(|s| 1.0 + s).collect(),
        gate: Vec::new(),
    };
    let xm = &mut w.xm[..g.img * h];
    ln_mod_rows(x_img, &m, xm, h);
    let mut y = vec![0f32; g.img * final_linear.out_features()];
    linear_into(final_linear, xm, g.img, &mut y)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_blocks_cover_the_sequence_evenly() {
        for s in [1usize, 7, 300, 1152, 4608, 5000] {
            let qb = q_block(s);
            assert!((1..=256).contains(&qb), "{s}: {qb}");
            let blocks = s.div_ceil(qb);
            // Blocks are near-equal: the last one is not a sliver.
            assert!(s - (blocks - 1) * qb + blocks > qb, "{s}: {qb}");
        }
        assert_eq!(q_block(1152), 192);
    }

    #[test]
    fn gemm_rejects_views_outside_their_buffers() {
        let a = [1f32; 6];
        assert!(View::new(&a, 2, 3, 3, 1).is_ok());
        assert!(View::new(&a, 3, 3, 3, 1).is_err());
        let lhs = View::rm(&a, 2, 3).ok();
        let rhs = View::rm(&a, 3, 2).ok();
        let (Some(lhs), Some(rhs)) = (lhs, rhs) else {
            panic!("views")
        };
        let mut small = [0f32; 3];
        assert!(gemm(&mut small, 2, lhs, rhs, false, 1.0, false).is_err());
        let mut dst = [0f32; 4];
        assert!(gemm(&mut dst, 2, lhs, rhs, false, 1.0, false).is_ok());
        assert_eq!(dst, [3.0; 4]);
    }
}
