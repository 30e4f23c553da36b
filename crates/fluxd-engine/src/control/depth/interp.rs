//! The two bicubic resizes of float maps that Depth Anything's reference code uses, ported from
//! PyTorch's CPU kernels (`aten/src/ATen/native/UpSample.h`, `cpu/UpSampleKernel.cpp`):
//!
//! - [`bicubic`]: `F.interpolate(x, size, mode="bicubic", align_corners=False)`, Keys' cubic
//!   with `A = −0.75` on the four nearest samples, indices clamped at the borders. DINOv2 resizes
//!   its position table with it (transformers `Dinov2Embeddings.interpolate_pos_encoding`).
//! - [`bicubic_antialiased`]: the same call with `antialias=True`, PIL-style: `a = −0.5`, the
//!   filter widened by the scale when shrinking, taps cut at the borders and renormalised. BFL's
//!   `DepthImageEncoder` resizes the predicted depth to the image size with it.
//!
//! Maps are row-major `f32` planes; both resizes are separable (width, then height), computed
//! in `f32` like PyTorch's float kernels with weights in `f64` (differences ~1e-7 relative).

/// Keys' cubic convolution for |x| ≤ 1.
fn cubic1(x: f64, a: f64) -> f64 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

/// Keys' cubic convolution for 1 < |x| < 2.
fn cubic2(x: f64, a: f64) -> f64 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// One axis of a resize: for each output index, the input indices and their weights.
struct Taps {
    idx: Vec<usize>,
    w: Vec<f32>,
    per_out: usize,
}

/// `F.interpolate(..., mode="bicubic", align_corners=False)` along one axis.
fn bicubic_taps(input: usize, output: usize) -> Taps {
    const A: f64 = -0.75;
    let scale = input as f64 / output as f64;
    let (mut idx, mut w) = (
        Vec::with_capacity(4 * output),
        Vec::with_capacity(4 * output),
    );
    for o in 0..output {
        // `area_pixel_compute_source_index(..., cubic=true)`: not clamped at 0.
        let src = scale * (o as f64 + 0.5) - 0.5;
        let base = src.floor();
        let t = src - base;
        let coeffs = [
            cubic2(t + 1.0, A),
            cubic1(t, A),
            cubic1(1.0 - t, A),
            cubic2(2.0 - t, A),
        ];
        for (k, c) in coeffs.iter().enumerate() {
            let i = (base as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            idx.push(i);
            w.push(*c as f32);
        }
    }
    Taps { idx, w, per_out: 4 }
}

/// `F.interpolate(..., mode="bicubic", antialias=True, align_corners=False)` along one axis
/// (`_compute_indices_min_size_weights_aa` with `HelperInterpCubic::aa_filter`).
fn antialiased_taps(input: usize, output: usize) -> Taps {
    const A: f64 = -0.5;
    let filter = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            cubic1(x, A)
        } else if x < 2.0 {
            cubic2(x, A)
        } else {
            0.0
        }
    };
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let per_out = (support.ceil() as usize) * 2 + 1;
    let (mut idx, mut w) = (vec![0; per_out * output], vec![0f32; per_out * output]);
    for o in 0..output {
        let center = scale * (o as f64 + 0.5);
        // Truncation toward zero, as the kernel's `static_cast<int64_t>`.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(per_out);
        let ws: Vec<f64> = (0..n)
            .map(|j| filter((j as f64 + xmin as f64 - center + 0.5) * invscale))
            .collect();
        let total: f64 = ws.iter().sum();
        for (j, wj) in ws.iter().enumerate() {
            idx[o * per_out + j] = xmin + j;
            // Unused taps keep weight 0 (and index 0).
            w[o * per_out + j] = if total != 0.0 {
                (wj / total) as f32
            } else {
                0.0
            };
        }
    }
    Taps { idx, w, per_out }
}

/// Resizes each of `planes` (each `h × w`) with `taps_x` across and `taps_y` down.
fn separable(
    plane: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    tx: &Taps,
    ty: &Taps,
) -> Vec<f32> {
    // Width first (PyTorch resizes the contiguous dimension first).
    let mut mid = vec![0f32; h * ow];
    for y in 0..h {
        let row = &plane[y * w..(y + 1) * w];
        for x in 0..ow {
            let mut acc = 0f32;
            for k in 0..tx.per_out {
                acc += tx.w[x * tx.per_out + k] * row[tx.idx[x * tx.per_out + k]];
            }
            mid[y * ow + x] = acc;
        }
    }
    let mut out = vec![0f32; oh * ow];
    for y in 0..oh {
        for k in 0..ty.per_out {
            let (wk, src) = (ty.w[y * ty.per_out + k], ty.idx[y * ty.per_out + k]);
            let (o, m) = (
                &mut out[y * ow..(y + 1) * ow],
                &mid[src * ow..(src + 1) * ow],
            );
            for (o, m) in o.iter_mut().zip(m) {
                *o += wk * m;
            }
        }
    }
    out
}

/// `F.interpolate(x, (oh, ow), mode="bicubic", align_corners=False)` of one `h × w` plane.
pub(crate) fn bicubic(plane: &[f32], hw: (usize, usize), out: (usize, usize)) -> Vec<f32> {
    let (tx, ty) = (bicubic_taps(hw.1, out.1), bicubic_taps(hw.0, out.0));
    separable(plane, hw, out, &tx, &ty)
}

/// `F.interpolate(x, (oh, ow), mode="bicubic", antialias=True)` of one `h × w` plane.
pub(crate) fn bicubic_antialiased(
    plane: &[f32],
    hw: (usize, usize),
    out: (usize, usize),
) -> Vec<f32> {
    let (tx, ty) = (antialiased_taps(hw.1, out.1), antialiased_taps(hw.0, out.0));
    separable(plane, hw, out, &tx, &ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity() {
        let p: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        assert_eq!(bicubic(&p, (3, 4), (3, 4)), p);
        let aa = bicubic_antialiased(&p, (3, 4), (3, 4));
        assert!(
            aa.iter().zip(&p).all(|(a, b)| (a - b).abs() < 1e-6),
            "{aa:?}"
        );
    }

    #[test]
    fn constants_stay_constant_and_weights_sum_to_one() {
        let p = vec![3.25f32; 5 * 7];
        for out in [(2, 3), (11, 13), (5, 1)] {
            for r in [
                bicubic(&p, (5, 7), out),
                bicubic_antialiased(&p, (5, 7), out),
            ] {
                assert_eq!(r.len(), out.0 * out.1);
                assert!(r.iter().all(|v| (v - 3.25).abs() < 1e-5), "{out:?} {r:?}");
            }
        }
    }

    #[test]
    fn shrinking_by_two_with_antialias_averages_neighbours() {
        // A 1-D alternating signal shrunk 2× with the widened filter loses its oscillation;
        // plain bicubic keeps sampling it.
        let p: Vec<f32> = (0..16)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let aa = bicubic_antialiased(&p, (1, 16), (1, 8));
        assert!(aa[2..6].iter().all(|v| v.abs() < 0.2), "{aa:?}");
    }
}
