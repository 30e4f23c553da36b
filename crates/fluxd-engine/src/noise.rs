//! Bit-exact `torch.randn` on the CPU (float32), so that a seed gives the same initial latents as
//! diffusers' `FluxPipeline` run with `generator=torch.Generator("cpu").manual_seed(seed)`.
//!
//! The algorithm is PyTorch 2.15's (x86-64 wheel, AVX2 kernel, which AVX512 machines run too):
//! MT19937 seeded from the low 32 bits of the seed (`ATen/core/MT19937RNGEngine.h`); tensors of at
//! least 16 elements take the vectorised Box–Muller "fill" path with Cephes float32 ln/sincos
//! (`ATen/native/cpu/DistributionTemplates.h` `normal_fill_AVX2`, `ATen/native/cpu/avx_mathfun.h`),
//! smaller ones the scalar double path (`ATen/core/DistributionsHelper.h` `normal_distribution`).
//! The full derivation, including which multiply-adds GCC fused in the shipped binary (we use
//! `f32::mul_add` exactly there), is in `spec/torch-randn.md`.

use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::postprocess::pack_latents;

/// MT19937 state size and shift (`MERSENNE_STATE_N`, `MERSENNE_STATE_M`).
const MT_N: usize = 624;
const MT_M: usize = 397;
const MT_MATRIX_A: u32 = 0x9908_b0df;

/// The 32-bit Mersenne Twister exactly as torch's `at::mt19937`.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    /// Index of the next word; `MT_N` means "twist before the next draw".
    next: usize,
}

impl Mt19937 {
    /// `init_with_uint32`: torch keeps only the low 32 bits of the 64-bit seed.
    fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed as u32;
        for i in 1..MT_N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, next: MT_N }
    }

    /// `next_state`: the reference twist, in place, in increasing index order.
    fn twist(&mut self) {
        for i in 0..MT_N {
            let cur = self.state[i];
            let nxt = self.state[(i + 1) % MT_N];
            let y = (cur & 0x8000_0000) | (nxt & 0x7fff_ffff);
            let mag = if nxt & 1 == 1 { MT_MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// The CPU generator of torch (`CPUGeneratorImpl`): an MT19937 engine plus the cached second
/// sample of the double-precision Box–Muller. State carries across calls as in torch, so a
/// sequence of `randn_f32` calls gives what the same sequence of `torch.randn` calls gives.
#[derive(Clone)]
pub struct TorchGenerator {
    mt: Mt19937,
    /// `next_double_normal_sample_`: filled by the scalar path, read by the next scalar draw.
    next_double_normal: Option<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("next", &self.mt.next)
            .field("next_double_normal", &self.next_double_normal)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    /// A generator seeded like `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        Self {
            mt: Mt19937::new(seed),
            next_double_normal: None,
        }
    }

    /// Re-seeds like `manual_seed`: only the low 32 bits count (so `2^32 + 7` acts as `7`), and
    /// the cached normal sample is dropped. torch also accepts negative seeds, which wrap to
    /// `2^64 + s`; pass `s as u64` for those.
    pub fn manual_seed(&mut self, seed: u64) {
        *self = Self::new(seed);
    }

    /// `random64()`: two consecutive words, the first one is the high half.
    fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.mt.next_u32());
        let lo = u64::from(self.mt.next_u32());
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one word, exact in f32.
    fn uniform_f32(&mut self) -> f32 {
        (self.mt.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: the low 53 bits of a 64-bit draw.
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `normal_distribution<double>` (mean 0, std 1) with torch's one-sample cache. Note the
    /// roles: u1 sets the angle, u2 the radius (`DistributionsHelper.h`).
    fn normal_f64(&mut self) -> f64 {
        // `transformation::normal` is `v * std + mean`: exact for (1, 0) except that it turns
        // -0.0 into +0.0, which `+ 0.0` reproduces.
        if let Some(cached) = self.next_double_normal.take() {
            return cached + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        // `ln_1p`, `sin` and `cos` call the C library, as torch does (`::log1p`, `::sin`, `::cos`).
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos() + 0.0
    }

    /// `torch.randn(n, generator=self, dtype=torch.float32)` for a contiguous tensor of `n`
    /// elements (any shape with `n` elements gives the same values in memory order).
    pub fn randn_f32(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            // `normal_kernel`: small tensors take the scalar double path, element by element.
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        // `normal_fill_AVX2`: all n uniforms first, then Box–Muller on each full block of 16.
        let mut out: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in out.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            // The tail: 16 fresh uniforms, transformed as one block, written over the last 16
            // positions (overwriting the end of the last full block).
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        out
    }
}

/// `torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))` in float32.
pub fn torch_randn(seed: u64, n: usize) -> Vec<f32> {
    TorchGenerator::new(seed).randn_f32(n)
}

/// The initial latents of diffusers' `FluxPipeline` for a CPU generator seeded with `seed`,
/// already packed: shape `(batch, (h/2)·(w/2), latent_channels·4)` with
/// `h = 2·(height/16)`, `w = 2·(width/16)` for pixel `height`/`width`
/// (`pipeline_flux.py` `prepare_latents` + `_pack_latents`). One `randn` covers the whole batch
/// in NCHW order, as `randn_tensor` does with a single generator.
///
/// The result is f32 on the CPU. torch ≥ 2.13 draws `randn(dtype=bfloat16)` as the float32
/// draw rounded to nearest, so `.to_dtype(BF16)` of this tensor is what a bf16 pipeline gets
/// (the element count is a multiple of 16, where that equivalence holds).
pub fn flux_initial_latents(
    seed: u64,
    batch: usize,
    height: usize,
    width: usize,
    latent_channels: usize,
) -> Result<Tensor> {
    let (h, w) = (2 * (height / 16), 2 * (width / 16));
    if batch == 0 || h == 0 || w == 0 || latent_channels == 0 {
        return Err(EngineError::InvalidInput(format!(
            "cannot draw latents for batch {batch}, {width}x{height} px, {latent_channels} channels \
             (the image must be at least 16 px on each side)"
        )));
    }
    let noise = torch_randn(seed, batch * latent_channels * h * w);
    let latents = Tensor::from_vec(noise, (batch, latent_channels, h, w), &Device::Cpu)?;
    pack_latents(&latents)
}

// Cephes constants of `avx_mathfun.h`. They are double literals converted to float there, so we
// convert the same way (`as f32` from f64) rather than parse the decimal straight to f32.
const LOG_P: [f32; 9] = [
    7.0376836292E-2_f64 as f32,
    -1.1514610310E-1_f64 as f32,
    1.1676998740E-1_f64 as f32,
    -1.2420140846E-1_f64 as f32,
    1.4249322787E-1_f64 as f32,
    -1.6668057665E-1_f64 as f32,
    2.0000714765E-1_f64 as f32,
    -2.4999993993E-1_f64 as f32,
    3.3333331174E-1_f64 as f32,
];
const LOG_Q1: f32 = -2.12194440e-4_f64 as f32;
const LOG_Q2: f32 = 0.693359375_f64 as f32;
/// `cephes_SQRTHF` 0.707106781186547524, which is √½ as a double.
const SQRT_HALF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const FOUR_OVER_PI: f32 = 1.27323954473516_f64 as f32;
const DP1: f32 = -0.78515625_f64 as f32;
// Spelled as in the header (more digits than a double holds) so they can be compared with it.
#[allow(clippy::excessive_precision)]
const DP2: f32 = -2.4187564849853515625e-4_f64 as f32;
#[allow(clippy::excessive_precision)]
const DP3: f32 = -3.77489497744594108e-8_f64 as f32;
const SIN_P: [f32; 3] = [
    -1.9515295891E-4_f64 as f32,
    8.3321608736E-3_f64 as f32,
    -1.6666654611E-1_f64 as f32,
];
const COS_P: [f32; 3] = [
    2.443315711809948E-005_f64 as f32,
    -1.388731625493765E-003_f64 as f32,
    4.166664568298827E-002_f64 as f32,
];
/// `2.0f * c10::pi<double>` rounded to float (`normal_fill_16_AVX2`).
const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;

/// `normal_fill_16_AVX2` on one block of 16 uniforms (mean 0, std 1).
fn box_muller_16(block: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0 * ln_avx2(u1)).sqrt();
        let (sin, cos) = sincos_avx2(TWO_PI * u2);
        // The kernel ends with `fmadd(x, std, mean)`: exact for (1, 0) except -0.0 → +0.0.
        block[j] = radius * cos + 0.0;
        block[j + 8] = radius * sin + 0.0;
    }
}

/// `log256_ps` for x in (0, 1], with the FMA contractions of the shipped binary.
fn ln_avx2(x: f32) -> f32 {
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let k = (bits >> 23) as i32 - 127;
    // Mantissa scaled into [0.5, 1).
    let m = f32::from_bits((bits & !0x7f80_0000) | 0x3f00_0000);
    let mut e = k as f32 + 1.0;
    let f = if m < SQRT_HALF {
        e -= 1.0;
        (m - 1.0) + m
    } else {
        m - 1.0
    };
    let z = f * f;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(f, p);
    }
    y *= f;
    y = y.mul_add(z, e * LOG_Q1);
    y -= z * 0.5;
    let f = f + y;
    e.mul_add(LOG_Q2, f)
}

/// `sincos256_ps` for x in [0, 2π): returns (sin, cos).
fn sincos_avx2(x: f32) -> (f32, f32) {
    // Octant: truncate, then round up to even (`(j + 1) & ~1`).
    let j = (((x * FOUR_OVER_PI) as i32) + 1) & !1;
    let y = j as f32;
    // Extended-precision range reduction x - y·π/4 in three parts.
    let mut r = y.mul_add(DP1, x);
    r = y.mul_add(DP2, r);
    r = y.mul_add(DP3, r);
    let z = r * r;

    let mut c = COS_P[0].mul_add(z, COS_P[1]);
    c = c.mul_add(z, COS_P[2]);
    c *= z;
    c = c.mul_add(z, -(z * 0.5));
    c += 1.0;

    let mut s = SIN_P[0].mul_add(z, SIN_P[1]);
    s = s.mul_add(z, SIN_P[2]);
    s *= z;
    s = s.mul_add(r, r);

    let (mut sin, mut cos) = if j & 2 == 0 { (s, c) } else { (c, s) };
    if j & 4 != 0 {
        sin = -sin;
    }
    if (j - 2) & 4 == 0 {
        cos = -cos;
    }
    (sin, cos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postprocess::{latent_image_ids, unpack_latents};
    use serde_json::Value;

    /// Written by `scripts/reference/noise_fixtures.py` from torch 2.15.0.
    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/noise/noise.json"
    ));

    /// FNV-1a 64 over the f32 bit patterns as u32 words (the script's `fnv1a32w`).
    fn fnv1a32w(values: &[f32]) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for v in values {
            h = (h ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3);
        }
        format!("{h:016x}")
    }

    fn bits(values: &[f32]) -> Vec<u64> {
        values.iter().map(|v| u64::from(v.to_bits())).collect()
    }

    fn json_bits(v: &Value) -> Vec<u64> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).expect("fixture parses")
    }

    #[test]
    fn mt19937_matches_reference_sequence() {
        // The reference implementation's first outputs for its default seed 5489.
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3_499_211_612);
        assert_eq!(mt.next_u32(), 581_869_302);
        // The 10000th output of std::mt19937 (C++ standard, [rand.predef]).
        let mut mt = Mt19937::new(5489);
        let last = (0..10_000).map(|_| mt.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    #[test]
    fn randn_matches_torch_bit_for_bit() {
        let fx = fixture();
        let cases = fx["cases"].as_array().expect("cases");
        assert!(cases.len() >= 80);
        let mut above_2_32 = 0;
        for case in cases {
            let seed: u64 = case["seed"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("seed");
            let n = case["n"].as_u64().expect("n") as usize;
            above_2_32 += usize::from(seed > u64::from(u32::MAX));
            let x = torch_randn(seed, n);
            assert_eq!(x.len(), n);
            assert_eq!(
                bits(&x[..n.min(8)]),
                json_bits(&case["head"]),
                "head seed {seed} n {n}"
            );
            assert_eq!(
                bits(&x[n.saturating_sub(8)..]),
                json_bits(&case["tail"]),
                "seed {seed} n {n}"
            );
            assert_eq!(
                fnv1a32w(&x),
                case["hash"].as_str().expect("hash"),
                "seed {seed} n {n}"
            );
        }
        assert!(above_2_32 > 0, "fixture covers seeds above 2^32");
    }

    #[test]
    fn generator_state_carries_across_calls() {
        let fx = fixture();
        let mut g = TorchGenerator::new(42);
        for call in fx["sequence"].as_array().expect("sequence") {
            if let Some(seed) = call["reseed"].as_u64() {
                g.manual_seed(seed);
            }
            let n = call["n"].as_u64().expect("n") as usize;
            assert_eq!(
                bits(&g.randn_f32(n)),
                json_bits(&call["values"]),
                "call {call}"
            );
        }
    }

    #[test]
    fn only_low_32_seed_bits_count() {
        assert_eq!(torch_randn((1 << 32) + 7, 40), torch_randn(7, 40));
        assert_eq!(
            torch_randn(u64::MAX, 5),
            torch_randn(u64::from(u32::MAX), 5)
        );
        assert_ne!(torch_randn(7, 40), torch_randn(8, 40));
    }

    #[test]
    fn flux_latents_match_prepare_latents() -> Result<()> {
        let fx = fixture();
        for case in fx["flux_latents"].as_array().expect("flux_latents") {
            let seed: u64 = case["seed"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("seed");
            let get = |k: &str| case[k].as_u64().expect("size") as usize;
            let (batch, height, width) = (get("batch"), get("height"), get("width"));
            let shape = |k: &str| {
                json_bits(&case[k])
                    .into_iter()
                    .map(|v| v as usize)
                    .collect::<Vec<_>>()
            };
            let packed = flux_initial_latents(seed, batch, height, width, 16)?;
            assert_eq!(packed.dims(), shape("shape").as_slice());
            let flat = packed.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(fnv1a32w(&flat), case["hash"].as_str().expect("hash"));
            assert_eq!(bits(&flat[..8]), json_bits(&case["head"]));

            let unpacked = unpack_latents(&packed, height, width)?;
            assert_eq!(unpacked.dims(), shape("unpacked_shape").as_slice());
            let flat = unpacked.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(
                fnv1a32w(&flat),
                case["unpacked_hash"].as_str().expect("hash")
            );

            let ids = latent_image_ids(height, width)?;
            assert_eq!(ids.dims(), shape("ids_shape").as_slice());
            let flat = ids.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(fnv1a32w(&flat), case["ids_hash"].as_str().expect("hash"));
        }
        Ok(())
    }

    #[test]
    fn flux_latents_reject_empty_images() {
        assert!(flux_initial_latents(0, 1, 8, 512, 16).is_err());
        assert!(flux_initial_latents(0, 0, 64, 64, 16).is_err());
    }

    #[test]
    fn cephes_kernels_stay_close_to_libm() {
        // Sanity of the ported polynomials (exactness is checked against torch above).
        for i in 1..=4096u32 {
            let x = i as f32 / 4096.0;
            assert!(
                (ln_avx2(x) - x.ln()).abs() <= 2e-7 * (1.0 + x.ln().abs()),
                "ln {x}"
            );
            let t = TWO_PI * (i - 1) as f32 / 4096.0;
            let (s, c) = sincos_avx2(t);
            assert!(
                (s - t.sin()).abs() < 1e-6 && (c - t.cos()).abs() < 1e-6,
                "sincos {t}"
            );
        }
    }
}
