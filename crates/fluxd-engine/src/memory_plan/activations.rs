//! Working memory of each component at a given request size, from the shapes of the tensors its
//! forward pass keeps alive at its peak. The counts follow the code that runs: the fused f32 CPU
//! path (`transformer/cpu.rs`: one set of work buffers, attention by blocks of query rows) or the
//! candle-ops path (`transformer/blocks.rs`: per-op tensors, and `attention::sdpa`, which keeps
//! at most `SCORE_BUDGET` f32 scores alive), and the VAE's convolutions a strip of rows at a time
//! (`vae/blocks.rs`: the fused CPU im2col, or candle's `conv2d` on strips elsewhere).

use candle_core::DType;

use crate::transformer::FluxConfig;

/// The largest request a loaded model must be able to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// T5 tokens.
    pub t5_tokens: usize,
    /// Image-prompt (Redux) tokens appended to the text.
    pub image_prompt_tokens: usize,
}

impl Workload {
    /// Image tokens after 8× VAE downsampling and 2×2 packing.
    pub fn image_tokens(&self) -> usize {
        self.width.div_ceil(16) * self.height.div_ceil(16)
    }

    /// The transformer's joint sequence length.
    pub fn seq(&self) -> usize {
        self.image_tokens() + self.t5_tokens + self.image_prompt_tokens
    }

    /// The same workload at another image size.
    pub fn with_side(self, side: usize) -> Self {
        Self {
            width: side,
            height: side,
            ..self
        }
    }
}

/// How the transformer's attention holds its scores on the candle-ops path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// The whole `heads × S × S` f32 score matrix at once.
    FullScores,
    /// Blocks of query rows with at most this many f32 scores alive (`attention::sdpa`;
    /// flash-style kernels hold less still).
    ScoreBudget(usize),
}

/// Which implementation runs a component, as far as its memory is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The fused f32 CPU kernels.
    FusedCpu,
    /// candle ops in any dtype, on the CPU (`cpu`: candle widens bf16 matrix products to f32
    /// there) or a GPU.
    CandleOps {
        /// How the attention holds its scores.
        attention: Attention,
        /// On the CPU.
        cpu: bool,
    },
}

impl Attention {
    /// The most f32 scores `attention::sdpa` may keep alive.
    fn budget(self) -> usize {
        match self {
            Self::FullScores => usize::MAX,
            Self::ScoreBudget(n) => n,
        }
    }
}

/// Peak working memory of one transformer forward. `fp8_layers`: some linear weights are held
/// in fp8 and upcast one layer at a time (the largest such copy is counted).
pub fn transformer(cfg: &FluxConfig, w: Workload, dtype: DType, path: Path, fp8: bool) -> u64 {
    let s = w.seq() as u64;
    let (h, m, heads) = (
        cfg.hidden() as u64,
        cfg.mlp_hidden() as u64,
        cfg.num_attention_heads as u64,
    );
    let largest_layer = (3 * h + m) * h;
    match path {
        Path::FusedCpu => {
            // cpu.rs `Work` (xm, qkv, cat, out, heads) plus the residual stream, all f32; each
            // rayon worker keeps one 1 MiB score block (`SCORE_BUDGET`).
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
            let upcast = if fp8 { largest_layer * 4 } else { 0 };
            s * (8 * h + 2 * m) * 4 + threads * (1 << 20) + upcast
        }
        Path::CandleOps { attention, cpu } => {
            let b = dtype.size_in_bytes() as u64;
            // A single block (`blocks.rs`, larger than a double block's joint attention) during
            // its attention: the residual, the modulated input, linear1's output, q/k/v and the
            // roped q and k, beside what `sdpa` allocates (its output included) for
            // `heads × S` rows of `head_dim`.
            let shape = crate::attention::SdpaShape {
                batch: heads as usize,
                s_q: s as usize,
                s_k: s as usize,
                d: cfg.attention_head_dim,
                dv: cfg.attention_head_dim,
            };
            let sdpa =
                crate::attention::working_bytes(shape, dtype, dtype, attention.budget(), cpu);
            let during = s * b * (10 * h + m) + sdpa;
            // After it: the residual, the modulated input, linear1's output, q/k/v, the
            // attention output, GELU(mlp), their concatenation and linear2's output.
            let after = s * b * (11 * h + 4 * m);
            let upcast = if fp8 { largest_layer * b } else { 0 };
            during.max(after) + upcast
        }
    }
}

/// Peak working memory of the VAE decoder at the workload's image size: the top level's
/// feature maps (`block_out_channels[1]` channels coming in, a few `[0]`-channel ones) beside
/// the larger of the convolution's unfolded input — a 64 MiB f32 strip on the CPU, a strip of
/// `DEVICE_STRIP_ELEMS` values in the model's dtype elsewhere, beside the strips' outputs that wait
/// to be joined — and the mid block's attention over the lowest level's pixels (its normalized
/// input, q, k, v and what `attention::sdpa` allocates in chunks of `ATTN_CHUNK_ELEMS` scores). On
/// the CPU the convolutions run in f32 whatever the dtype.
pub fn vae(block_out_channels: &[usize], w: Workload, dtype: DType, cpu: bool) -> u64 {
    let hw = (w.width * w.height) as u64;
    let c0 = block_out_channels.first().copied().unwrap_or(128) as u64;
    let c1 = block_out_channels.get(1).copied().unwrap_or(c0 as usize) as u64;
    let b = if cpu { 4 } else { dtype.size_in_bytes() as u64 };
    let maps = (c1 + 4 * c0) * hw * b;
    let mid = block_out_channels.last().copied().unwrap_or(512);
    let scale = 1usize << block_out_channels.len().saturating_sub(1);
    let pixels = w.width.div_ceil(scale) * w.height.div_ceil(scale);
    let shape = crate::attention::SdpaShape {
        batch: 1,
        s_q: pixels,
        s_k: pixels,
        d: mid,
        dv: mid,
    };
    let attention = 4 * (pixels * mid) as u64 * dtype.size_in_bytes() as u64
        + crate::attention::working_bytes(
            shape,
            dtype,
            dtype,
            crate::vae::blocks::ATTN_CHUNK_ELEMS,
            cpu,
        );
    let unfold = if cpu {
        crate::vae::blocks::IM2COL_STRIP_ELEMS as u64 * 4
    } else {
        crate::vae::blocks::DEVICE_STRIP_ELEMS as u64 * b + hw * c0 * b
    };
    maps + unfold.max(attention)
}

/// Peak working memory of a transformer encoder (T5, CLIP, SigLIP, ViT) over `tokens` tokens
/// of width `width`, feed-forward width `ff`, `heads` heads: its hidden states and the f32
/// attention scores of one layer.
pub fn encoder(tokens: usize, width: usize, ff: usize, heads: usize, dtype: DType) -> u64 {
    let (l, b) = (tokens as u64, dtype.size_in_bytes() as u64);
    l * b * (6 * width as u64 + 2 * ff as u64) + heads as u64 * l * l * (8 + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The candle-ops estimate for FLUX.1-dev at the API's largest request, worked out by hand
    /// from the model's sizes and `attention::sdpa`'s budget (`attention.rs` checks that
    /// `working_bytes` is what `sdpa` allocates).
    #[test]
    fn transformer_estimate_from_the_model_and_the_score_budget() {
        let w = Workload {
            width: 1440,
            height: 1440,
            t5_tokens: 512,
            image_prompt_tokens: 0,
        };
        let gpu = |attention| Path::CandleOps {
            attention,
            cpu: false,
        };
        let plan =
            |attention| transformer(&FluxConfig::dev(), w, DType::BF16, gpu(attention), false);
        // 24 heads of 128, hidden 3072, MLP 12288; 90² image tokens and 512 T5 tokens; bf16.
        let (heads, d, h, m, b) = (24u64, 128u64, 3072u64, 12288u64, 2u64);
        let s = 90 * 90 + 512;
        assert_eq!(w.seq() as u64, s);
        // At the single block's attention: residual, modulated input, linear1 (3h + m), q/k/v
        // and the roped q and k.
        let block = s * b * (10 * h + m);
        // sdpa: f32 copies of q and kᵀ; per block the scores, their softmax (f32) and the
        // probabilities (bf16), beside the earlier blocks' output rows.
        let qk32 = 2 * heads * s * d * 4;
        let per_score = 4 + 4 + b;

        let budget = 1usize << 26;
        let rows = budget as u64 / (heads * s);
        assert_eq!(rows, 324);
        // The peak is the last full block's: 26 full blocks of 324 rows, then 188.
        let earlier = (s / rows - 1) * rows * heads * d * b;
        let blocked = block + qk32 + earlier + heads * rows * s * per_score;
        assert_eq!(plan(Attention::ScoreBudget(budget)), blocked);
        // One block of every row: the whole 24 × 8612² score matrix, 17.8 GB of it.
        let full = block + qk32 + heads * s * s * per_score;
        assert_eq!(plan(Attention::FullScores), full);
        assert!(
            full > 18_000_000_000 && blocked < 2_000_000_000,
            "{full} {blocked}"
        );
    }
}
