//! The SigLIP vision tower (transformers 5.23 `models/siglip/modeling_siglip.py`,
//! `SiglipVisionModel`), of which Redux uses `last_hidden_state`: patch embedding, learned
//! positions, pre-norm encoder layers and the post-LayerNorm. The attention-pooling head
//! (`vision_model.head.*`) is in the checkpoints but unused by Redux, so it is not loaded.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::text_encoders::{apply, layer_norm, linear, read_config, softmax_f32, Act, Linear};
use crate::weights::WeightFiles;

/// A `SiglipVisionConfig` as transformers writes it (defaults are transformers' own).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct SiglipVisionConfig {
    /// Width of the residual stream (1152 for so400m).
    pub hidden_size: usize,
    /// Width of the MLP (4304 for so400m).
    pub intermediate_size: usize,
    /// Encoder layers (27 for so400m).
    pub num_hidden_layers: usize,
    /// Attention heads (16 for so400m).
    pub num_attention_heads: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Square input side in pixels (384 for so400m-patch14-384).
    pub image_size: usize,
    /// Patch side in pixels (14).
    pub patch_size: usize,
    /// MLP activation (`gelu_pytorch_tanh`).
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
        }
    }
}

impl SiglipVisionConfig {
    /// Reads `config.json` from `dir`: a `SiglipVisionModel` config, or a full `SiglipModel`
    /// one with the vision part under `vision_config` (as `google/siglip-so400m-patch14-384`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (path, value) = read_config(dir)?;
        let vision = match value.get("vision_config") {
            Some(v) if v.is_object() => v.clone(),
            _ => value,
        };
        let cfg: Self = serde_json::from_value(vision)
            .map_err(|e| EngineError::config(&path, e.to_string()))?;
        if cfg.hidden_size == 0
            || cfg.num_attention_heads == 0
            || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(EngineError::config(
                &path,
                format!(
                    "hidden_size {} is not a positive multiple of num_attention_heads {}",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        if cfg.patch_size == 0 || cfg.image_size < cfg.patch_size {
            return Err(EngineError::config(
                &path,
                format!(
                    "image_size {} holds no {}-pixel patch",
                    cfg.image_size, cfg.patch_size
                ),
            ));
        }
        Act::parse(&cfg.hidden_act, &path)?;
        Ok(cfg)
    }

    /// Patches per side: the convolution is `padding="valid"`, so a remainder (384 = 27·14 + 6)
    /// is dropped.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Output tokens: 729 for so400m-patch14-384.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

struct Layer {
    ln1: candle_nn::LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: candle_nn::LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The SigLIP vision encoder, loaded once.
pub struct SiglipVisionEncoder {
    cfg: SiglipVisionConfig,
    act: Act,
    /// Patch convolution as a matrix: (channels·patch², hidden), rows in (c, y, x) order.
    patch_weight_t: Tensor,
    patch_bias: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    post_ln: candle_nn::LayerNorm,
    dtype: DType,
    device: Device,
}

impl SiglipVisionEncoder {
    /// Loads `config.json` and `model.safetensors` (or a sharded index) from `dir`, with
    /// transformers' key names (`vision_model.*`; the unprefixed form is accepted too).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = SiglipVisionConfig::from_dir(dir)?;
        let w = WeightFiles::open_dir(dir, &["model"])?;
        Self::from_weights(cfg, &w, dtype, device)
    }

    /// Builds the encoder from already opened weights.
    pub fn from_weights(
        cfg: SiglipVisionConfig,
        w: &WeightFiles,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let act = Act::parse(&cfg.hidden_act, &w.paths()[0])?;
        let p = if w.contains("embeddings.patch_embedding.weight")
            && !w.contains("vision_model.embeddings.patch_embedding.weight")
        {
            String::new()
        } else {
            "vision_model.".to_string()
        };
        let (h, f, ps, c) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.patch_size,
            cfg.num_channels,
        );
        let patch = w.get_shaped(
            &format!("{p}embeddings.patch_embedding.weight"),
            (h, c, ps, ps),
            dtype,
            device,
        )?;
        let patch_weight_t = patch.reshape((h, c * ps * ps))?.t()?.contiguous()?;
        let patch_bias = w.get_shaped(
            &format!("{p}embeddings.patch_embedding.bias"),
            h,
            dtype,
            device,
        )?;
        let position_embedding = w.get_shaped(
            &format!("{p}embeddings.position_embedding.weight"),
            (cfg.num_patches(), h),
            dtype,
            device,
        )?;
        let eps = cfg.layer_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("{p}encoder.layers.{i}");
            let lin =
                |name: &str, o, i| linear(w, &format!("{l}.{name}"), o, i, true, dtype, device);
            layers.push(Layer {
                ln1: layer_norm(w, &format!("{l}.layer_norm1"), h, eps, dtype, device)?,
                q: lin("self_attn.q_proj", h, h)?,
                k: lin("self_attn.k_proj", h, h)?,
                v: lin("self_attn.v_proj", h, h)?,
                out: lin("self_attn.out_proj", h, h)?,
                ln2: layer_norm(w, &format!("{l}.layer_norm2"), h, eps, dtype, device)?,
                fc1: lin("mlp.fc1", f, h)?,
                fc2: lin("mlp.fc2", h, f)?,
            });
        }
        let post_ln = layer_norm(w, &format!("{p}post_layernorm"), h, eps, dtype, device)?;
        Ok(Self {
            cfg,
            act,
            patch_weight_t,
            patch_bias,
            position_embedding,
            layers,
            post_ln,
            dtype,
            device: device.clone(),
        })
    }

    /// The config the encoder was loaded with.
    pub fn config(&self) -> &SiglipVisionConfig {
        &self.cfg
    }

    /// `last_hidden_state` (after `post_layernorm`) for `pixel_values` (B, C, S, S) with S the
    /// config's `image_size`: (B, num_patches, hidden).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, c, hh, ww) = pixel_values.dims4()?;
        if c != cfg.num_channels || hh != cfg.image_size || ww != cfg.image_size {
            return Err(EngineError::InvalidInput(format!(
                "SigLIP expects pixel values (B, {}, {s}, {s}), got {:?}",
                cfg.num_channels,
                pixel_values.dims(),
                s = cfg.image_size
            )));
        }
        let (g, ps) = (cfg.grid(), cfg.patch_size);
        // Conv2d(kernel = stride = patch, valid) as one matmul over non-overlapping patches;
        // `flatten(2).transpose(1, 2)` orders the patches row-major, as here.
        let x = pixel_values
            .to_device(&self.device)?
            .to_dtype(self.dtype)?
            .narrow(2, 0, g * ps)?
            .narrow(3, 0, g * ps)?
            .reshape((b, c, g, ps, g, ps))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * g * g, c * ps * ps))?;
        let x = x
            .matmul(&self.patch_weight_t)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, g * g, cfg.hidden_size))?;
        let mut x = x.broadcast_add(&self.position_embedding)?;
        for layer in &self.layers {
            let r = x.clone();
            let h = self.attention(layer, &apply(&layer.ln1, &x)?)?;
            x = (r + h)?;
            let r = x.clone();
            let h = layer.fc1.forward(&apply(&layer.ln2, &x)?)?;
            let h = layer.fc2.forward(&self.act.apply(&h)?)?;
            x = (r + h)?;
        }
        apply(&self.post_ln, &x)
    }

    /// Bidirectional multi-head attention with no mask (`SiglipAttention`, eager path).
    fn attention(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let heads = self.cfg.num_attention_heads;
        let hd = h / heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(layer.q.forward(x)?)?;
        let k = split(layer.k.forward(x)?)?;
        let v = split(layer.v.forward(x)?)?;
        // transformers scales the scores (not the queries) by head_dim^-0.5.
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let probs = softmax_f32(&scores)?;
        let o = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))?;
        layer.out.forward(&o)
    }
}
