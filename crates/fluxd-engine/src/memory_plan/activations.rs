//! Working memory of each component at a given request size, from the shapes of the tensors its
//! forward pass keeps alive at its peak. The counts follow the code that runs: the fused f32 CPU
//! path (`transformer/cpu.rs`: one set of work buffers, attention by blocks of query rows) or the
//! candle-ops path (`transformer/blocks.rs`: per-op tensors, and an attention that holds the
//! whole `heads × S × S` score matrix in f32 — the term that dominates at large sizes until a
//! blocked or flash attention replaces it), the VAE's strip-wise im2col on the CPU
//! (`vae/blocks.rs`) or candle's whole-image im2col `conv2d` elsewhere.

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
    /// The whole `heads × S × S` f32 score matrix at once (today's `blocks.rs::attention`).
    FullScores,
    /// Blocks of this many query rows at a time (flash-style kernels hold less still).
    Blocked {
        /// Query rows per block.
        rows: usize,
    },
}

/// Which implementation runs a component, as far as its memory is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The fused f32 CPU kernels.
    FusedCpu,
    /// candle ops on any device and dtype.
    CandleOps(Attention),
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
        Path::CandleOps(attention) => {
            let b = dtype.size_in_bytes() as u64;
            // A single block after its attention: residual, modulated input, linear1's output,
            // q/k/v, the attention output, GELU(mlp), their concatenation and linear2's output.
            let tensors = s * b * (11 * h + 4 * m);
            // Scores in f32, their softmax in f32 and the probabilities in the model dtype.
            let rows = match attention {
                Attention::FullScores => s,
                Attention::Blocked { rows } => (rows as u64).min(s),
            };
            let scores = heads * rows * s * (8 + b);
            let upcast = if fp8 { largest_layer * b } else { 0 };
            tensors + scores + upcast
        }
    }
}

/// Peak working memory of the VAE decoder at the workload's image size: the top level's
/// feature maps (`block_out_channels[1]` channels coming in, a few `[0]`-channel ones) and the
/// convolution's unfolded input — a 64 MiB strip on the CPU, the whole image elsewhere.
pub fn vae(block_out_channels: &[usize], w: Workload, dtype: DType, cpu: bool) -> u64 {
    let hw = (w.width * w.height) as u64;
    let c0 = block_out_channels.first().copied().unwrap_or(128) as u64;
    let c1 = block_out_channels.get(1).copied().unwrap_or(c0 as usize) as u64;
    // The CPU path converts to f32 for its convolutions whatever the model dtype.
    let b = if cpu { 4 } else { dtype.size_in_bytes() as u64 };
    let maps = (c1 + 4 * c0) * hw * b;
    // The mid block's attention holds at most 2^25 score elements (`ATTN_CHUNK_ELEMS`).
    let attention = (1u64 << 25) * 4;
    let unfold = if cpu {
        (1u64 << 24) * 4
    } else {
        hw * 9 * c1 * b + hw * c0 * b
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

    #[test]
    fn attention_dominates_only_without_blocks() {
        let cfg = FluxConfig::dev();
        let w = Workload {
            width: 1440,
            height: 1440,
            t5_tokens: 512,
            image_prompt_tokens: 0,
        };
        assert_eq!(w.seq(), 90 * 90 + 512);
        let full = transformer(
            &cfg,
            w,
            DType::BF16,
            Path::CandleOps(Attention::FullScores),
            false,
        );
        let blocked = transformer(
            &cfg,
            w,
            DType::BF16,
            Path::CandleOps(Attention::Blocked { rows: 1024 }),
            false,
        );
        // 24 heads × 8612² scores × 10 bytes ≈ 17.8 GB against ~1.4 GB of other tensors.
        assert!(full > 18_000_000_000 && full < 20_000_000_000, "{full}");
        assert!(blocked < 4_000_000_000, "{blocked}");
    }
}
