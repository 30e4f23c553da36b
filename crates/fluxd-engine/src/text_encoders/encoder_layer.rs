//! The pre-LayerNorm encoder layer that CLIP's text model, SigLIP and ViT share (transformers
//! `CLIPEncoderLayer`, `SiglipEncoderLayer`, `ViTLayer`): LayerNorm → multi-head attention →
//! residual → LayerNorm → MLP → residual. The models differ in tensor names, sizes, the MLP
//! activation, whether q/k/v have biases, CLIP's causal mask, and where the 1/√head_dim factor is
//! applied ([`Scale`]).

use candle_core::{DType, Device, Tensor};

use super::{apply, layer_norm, linear, softmax_f32, Act, Linear};
use crate::error::Result;
use crate::weights::WeightFiles;

/// Tensor names of one encoder layer (each a prefix of `.weight` / `.bias`).
pub(crate) struct LayerNames {
    /// LayerNorm before attention (`layer_norm1`, `layernorm_before`).
    pub ln1: String,
    /// Query projection.
    pub q: String,
    /// Key projection.
    pub k: String,
    /// Value projection.
    pub v: String,
    /// Attention output projection.
    pub out: String,
    /// LayerNorm before the MLP (`layer_norm2`, `layernorm_after`).
    pub ln2: String,
    /// MLP up projection.
    pub fc1: String,
    /// MLP down projection.
    pub fc2: String,
    /// Per-channel scales of the attention and MLP branches (`layer_scale1.lambda1`,
    /// `layer_scale2.lambda1`, DINOv2 only).
    pub layer_scale: Option<[String; 2]>,
}

impl LayerNames {
    /// `{prefix}.{suffix}` for the suffixes in the field order (ln1, q, k, v, out, ln2, fc1,
    /// fc2).
    pub fn under(prefix: &str, suffixes: [&str; 8]) -> Self {
        let [ln1, q, k, v, out, ln2, fc1, fc2] = suffixes.map(|s| format!("{prefix}.{s}"));
        Self {
            ln1,
            q,
            k,
            v,
            out,
            ln2,
            fc1,
            fc2,
            layer_scale: None,
        }
    }

    /// The same names with DINOv2's two layer-scale tensors (full names).
    pub fn with_layer_scale(self, attention: String, mlp: String) -> Self {
        Self {
            layer_scale: Some([attention, mlp]),
            ..self
        }
    }
}

/// A layer's tensor names in [`LayerNames`] order, as CLIP's and SigLIP's checkpoints spell them
/// under `…encoder.layers.{i}`.
pub(crate) const CLIP_LAYER_SUFFIXES: [&str; 8] = [
    "layer_norm1",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "layer_norm2",
    "mlp.fc1",
    "mlp.fc2",
];

/// The sizes of one layer, from its model's config.
pub(crate) struct LayerDims {
    /// Width of the residual stream.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head (q/k/v project to `heads · head_dim`).
    pub head_dim: usize,
    /// Width of the MLP.
    pub intermediate: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Whether q/k/v have biases (the output projection and the MLP always do).
    pub qkv_bias: bool,
}

/// Where attention applies 1/√head_dim: the same factor, rounded differently, so each model
/// does what its reference does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scale {
    /// On the queries before `q·kᵀ` (`CLIPAttention`).
    Queries,
    /// On the scores after `q·kᵀ` (`eager_attention_forward` of SigLIP and ViT).
    Scores,
}

/// One loaded encoder layer.
pub(crate) struct EncoderLayer {
    ln1: candle_nn::LayerNorm,
    q: Linear,
    k: Linear,
    pub(crate) v: Linear,
    pub(crate) out: Linear,
    ln2: candle_nn::LayerNorm,
    fc1: Linear,
    fc2: Linear,
    /// DINOv2's per-channel branch scales (attention, MLP).
    layer_scale: Option<[Tensor; 2]>,
    heads: usize,
    head_dim: usize,
}

impl EncoderLayer {
    /// Loads the weights `names` lists from `w`, checking every shape against `dims`.
    pub fn load(
        w: &WeightFiles,
        names: &LayerNames,
        dims: &LayerDims,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (h, f, eps) = (dims.hidden, dims.intermediate, dims.eps);
        let inner = dims.heads * dims.head_dim;
        let lin = |name: &str, o, i, bias| linear(w, name, o, i, bias, dtype, device);
        let layer_scale = match &names.layer_scale {
            Some([a, m]) => Some([
                w.get_shaped(a, h, dtype, device)?,
                w.get_shaped(m, h, dtype, device)?,
            ]),
            None => None,
        };
        Ok(Self {
            ln1: layer_norm(w, &names.ln1, h, eps, dtype, device)?,
            q: lin(&names.q, inner, h, dims.qkv_bias)?,
            k: lin(&names.k, inner, h, dims.qkv_bias)?,
            v: lin(&names.v, inner, h, dims.qkv_bias)?,
            out: lin(&names.out, h, inner, true)?,
            ln2: layer_norm(w, &names.ln2, h, eps, dtype, device)?,
            fc1: lin(&names.fc1, f, h, true)?,
            fc2: lin(&names.fc2, h, f, true)?,
            layer_scale,
            heads: dims.heads,
            head_dim: dims.head_dim,
        })
    }

    /// The layer on `x` (B, L, hidden); `mask` is added to the attention scores.
    pub fn forward(
        &self,
        x: &Tensor,
        act: Act,
        scale: Scale,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self.attention(&apply(&self.ln1, x)?, scale, mask)?;
        let x = (x + self.scaled(h, 0)?)?;
        let m = self.fc1.forward(&apply(&self.ln2, &x)?)?;
        let m = self.fc2.forward(&act.apply(&m)?)?;
        Ok((&x + self.scaled(m, 1)?)?)
    }

    /// A branch's output times its layer scale `which` (0 attention, 1 MLP), if the model has one.
    fn scaled(&self, branch: Tensor, which: usize) -> Result<Tensor> {
        Ok(match &self.layer_scale {
            Some(scales) => branch.broadcast_mul(&scales[which])?,
            None => branch,
        })
    }

    /// Multi-head attention with the softmax in f32.
    pub(crate) fn attention(
        &self,
        x: &Tensor,
        scale: Scale,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (heads, hd) = (self.heads, self.head_dim);
        let factor = (hd as f64).powf(-0.5);
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = self.q.forward(x)?;
        let q = split(match scale {
            Scale::Queries => (q * factor)?,
            Scale::Scores => q,
        })?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match scale {
            Scale::Queries => scores,
            Scale::Scores => (scores * factor)?,
        };
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let o = softmax_f32(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, heads * hd))?;
        self.out.forward(&o)
    }
}
