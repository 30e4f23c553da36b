//! Fused f32 row kernels for the CPU fast path: LayerNorm + modulation, bias + QK-RMSNorm +
//! RoPE, bias + GELU(tanh), gated residual, and a fast `exp`.
//!
//! Each kernel is written as plain loops over fixed-width lane arrays that LLVM vectorises, and
//! compiled twice: for the baseline target and with AVX-512 enabled (picked at run time). They
//! keep the rounding structure of the torch ops they replace (same products and sums, no fused
//! multiply-add contraction) so results stay within a few ulp of diffusers.

/// Vector width the reductions are split into (one AVX-512 register of f32).
const LANES: usize = 16;

/// Runs `$body` compiled with AVX-512 when the CPU has it, else for the baseline target.
macro_rules! dispatch {
    ($name:ident, ($($arg:ident: $ty:ty),*), $body:block) => {
        #[inline(always)]
        fn body($($arg: $ty),*) $body

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn fast($($arg: $ty),*) {
            body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        let use_fast = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let use_fast = false;
        if use_fast {
            // SAFETY: the CPU supports the features `fast` was compiled for.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                fast($($arg),*)
            };
        } else {
            body($($arg),*)
        }
    };
}

/// `e^x` for f32 with Cephes `expf`'s reduction and polynomial (≈1 ulp), branch-free so it
/// vectorises. Inputs are clamped to [-87.3, 88]: below, the result is ~1e-38 instead of 0;
/// above, it is e^88 instead of overflowing (both harmless where it is used).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits, which avoids a
    // saturating float→int conversion in the vector code.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // ln 2 split in a part exact in f32 and a remainder (Cephes C1, C2).
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * (r * r) + r + 1.0;
    let bits = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
    e * f32::from_bits(bits)
}

/// Sum with `LANES` independent accumulators (vectorisable, and more accurate than one chain).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[inline(always)]
fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - mean;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

/// `out = LN(x)·ops + shift` for one row (`ops` = `1 + scale` precomputed, as torch forms
/// `1 + scale` once per block). LayerNorm without affine, eps `eps` (diffusers `AdaLayerNormZero`).
pub(crate) fn ln_modulate(x: &[f32], ops: &[f32], shift: &[f32], eps: f32, out: &mut [f32]) {
    dispatch!(ln_modulate, (x: &[f32], ops: &[f32], shift: &[f32], eps: f32, out: &mut [f32]), {
        let n = x.len() as f32;
        let mean = sum(x) / n;
        let var = sum_sq_dev(x, mean) / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((o, &v), &s), &b) in out.iter_mut().zip(x).zip(ops).zip(shift) {
            *o = ((v - mean) * rstd) * s + b;
        }
    });
}

/// For one token's `q` or `k` head vector: add the projection bias, RMSNorm (eps, weight `w`),
/// then rotate pairs by the token's RoPE angles (`cos`, `sin` of length head_dim/2), in place.
/// Follows torch `RMSNorm` (`x·rsqrt(mean(x²)+eps)·w`) and diffusers `apply_rotary_emb`.
pub(crate) fn bias_rms_rope(
    x: &mut [f32],
    bias: &[f32],
    w: &[f32],
    cos: &[f32],
    sin: &[f32],
    eps: f32,
) {
    dispatch!(bias_rms_rope, (x: &mut [f32], bias: &[f32], w: &[f32], cos: &[f32], sin: &[f32], eps: f32), {
        for (v, &b) in x.iter_mut().zip(bias) {
            *v += b;
        }
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for c in chunks {
            for l in 0..LANES {
                acc[l] += c[l] * c[l];
            }
        }
        let ms = (acc.iter().sum::<f32>() + tail) / x.len() as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for (v, &wj) in x.iter_mut().zip(w) {
            *v = (*v * r) * wj;
        }
        for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = b * c + a * s;
        }
    });
}

/// `out = gelu_tanh(x + bias)`, computed as `x·σ(2u)` with `u = √(2/π)(x + 0.044715x³)`: equal to
/// `0.5x(1 + tanh u)` and accurate to a few ulp everywhere (no cancellation for negative x).
pub(crate) fn bias_gelu(x: &[f32], bias: &[f32], out: &mut [f32]) {
    dispatch!(bias_gelu, (x: &[f32], bias: &[f32], out: &mut [f32]), {
        const K0: f32 = 0.797_884_6; // sqrt(2/pi)
        const K1: f32 = 0.044_715;
        for ((o, &v), &b) in out.iter_mut().zip(x).zip(bias) {
            let v = v + b;
            let u = K0 * (v + K1 * (v * v * v));
            *o = v / (1.0 + exp(-2.0 * u));
        }
    });
}

/// In-place `gelu_tanh(x + bias)`.
pub(crate) fn bias_gelu_inplace(x: &mut [f32], bias: &[f32]) {
    dispatch!(bias_gelu_inplace, (x: &mut [f32], bias: &[f32]), {
        const K0: f32 = 0.797_884_6;
        const K1: f32 = 0.044_715;
        for (o, &b) in x.iter_mut().zip(bias) {
            let v = *o + b;
            let u = K0 * (v + K1 * (v * v * v));
            *o = v / (1.0 + exp(-2.0 * u));
        }
    });
}

/// `x += gate · (y + bias)` (diffusers: `hidden_states + gate.unsqueeze(1) * proj(...)`).
pub(crate) fn gated_residual(x: &mut [f32], y: &[f32], bias: &[f32], gate: &[f32]) {
    dispatch!(gated_residual, (x: &mut [f32], y: &[f32], bias: &[f32], gate: &[f32]), {
        for (((o, &v), &b), &g) in x.iter_mut().zip(y).zip(bias).zip(gate) {
            *o += g * (v + b);
        }
    });
}

/// `x += bias`.
pub(crate) fn add_bias(x: &mut [f32], bias: &[f32]) {
    dispatch!(add_bias, (x: &mut [f32], bias: &[f32]), {
        for (o, &b) in x.iter_mut().zip(bias) {
            *o += b;
        }
    });
}

/// Row softmax numerator in place: `x ← exp(scale·x − max(scale·x))`; returns the row sum.
pub(crate) fn softmax_exp(x: &mut [f32], scale: f32) -> f32 {
    let mut total = 0f32;
    {
        let total = &mut total;
        dispatch!(softmax_exp, (x: &mut [f32], scale: f32, total: &mut f32), {
            let mut mx = [f32::NEG_INFINITY; LANES];
            let chunks = x.chunks_exact(LANES);
            let mut m_tail = f32::NEG_INFINITY;
            for v in chunks.remainder() {
                m_tail = m_tail.max(*v);
            }
            for c in chunks {
                for l in 0..LANES {
                    mx[l] = mx[l].max(c[l]);
                }
            }
            let m = mx.iter().fold(m_tail, |a, &b| a.max(b)) * scale;
            let mut acc = [0f32; LANES];
            let mut chunks = x.chunks_exact_mut(LANES);
            for c in &mut chunks {
                for l in 0..LANES {
                    let e = exp(c[l] * scale - m);
                    c[l] = e;
                    acc[l] += e;
                }
            }
            let mut t = 0f32;
            for v in chunks.into_remainder() {
                *v = exp(*v * scale - m);
                t += *v;
            }
            *total = acc.iter().sum::<f32>() + t;
        });
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        for i in -8000..=8000 {
            let x = i as f32 * 0.01;
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "{worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
    }

    #[test]
    fn gelu_matches_tanh_form() {
        let xs: Vec<f32> = (-600..600).map(|i| i as f32 * 0.013).collect();
        let bias = vec![0.25f32; xs.len()];
        let mut out = vec![0f32; xs.len()];
        bias_gelu(&xs, &bias, &mut out);
        for (&x, &o) in xs.iter().zip(&out) {
            let v = f64::from(x + 0.25);
            let want = 0.5
                * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
            assert!(
                (f64::from(o) - want).abs() <= 1e-6 * want.abs().max(1e-2),
                "{x}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn row_kernels_match_definitions() {
        let x: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.37).sin() * 3.0 + 0.5)
            .collect();
        let ops: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 0.01).collect();
        let shift: Vec<f32> = (0..37).map(|i| i as f32 * -0.02).collect();
        let mut out = vec![0f32; 37];
        ln_modulate(&x, &ops, &shift, 1e-6, &mut out);
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / 37.0;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / 37.0;
        for j in 0..37 {
            let want = (f64::from(x[j]) - mean) / (var + 1e-6).sqrt() * f64::from(ops[j])
                + f64::from(shift[j]);
            assert!((f64::from(out[j]) - want).abs() < 1e-5, "{j}");
        }
        let mut row = x.clone();
        let total = softmax_exp(&mut row, 0.5);
        let m = x.iter().fold(f32::MIN, |a, &b| a.max(b));
        let want: f64 = x.iter().map(|&v| (0.5 * f64::from(v - m)).exp()).sum();
        assert!((f64::from(total) - want).abs() < 1e-5 * want);
    }
}
