//! The SigLIP vision tower (transformers 5.23 `models/siglip/modeling_siglip.py`,
//! `SiglipVisionModel`), of which Redux uses `last_hidden_state`: patch embedding, learned
//! positions, pre-norm encoder layers and the post-LayerNorm, run by the vision transformer
//! shared with the safety classifier (`crate::vit`); this file holds SigLIP's config and tensor
//! names. The attention-pooling head (`vision_model.head.*`) is in the checkpoints but unused by
//! Redux, so it is not loaded.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::text_encoders::{read_config, Act};
use crate::vit::{LayerNames, VitEncoder, VitNames, VitSpec, CLIP_LAYER_SUFFIXES};
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
        cfg.check(&path)?;
        Ok(cfg)
    }

    /// Refuses sizes the encoder cannot be built with; `path` is named in the error.
    fn check(&self, path: &Path) -> Result<()> {
        let cfg = self;
        if cfg.hidden_size == 0
            || cfg.num_attention_heads == 0
            || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(EngineError::config(
                path,
                format!(
                    "hidden_size {} is not a positive multiple of num_attention_heads {}",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        if cfg.patch_size == 0 || cfg.image_size < cfg.patch_size {
            return Err(EngineError::config(
                path,
                format!(
                    "image_size {} holds no {}-pixel patch",
                    cfg.image_size, cfg.patch_size
                ),
            ));
        }
        Act::parse(&cfg.hidden_act, path)?;
        Ok(())
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

/// The SigLIP vision encoder, loaded once.
pub struct SiglipVisionEncoder {
    cfg: SiglipVisionConfig,
    encoder: VitEncoder,
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
        // A config built in code has not been through `from_dir`'s checks.
        let file = w
            .paths()
            .first()
            .map(PathBuf::as_path)
            .unwrap_or(Path::new(""));
        cfg.check(file)?;
        let act = Act::parse(&cfg.hidden_act, file)?;
        let p = if w.contains("embeddings.patch_embedding.weight")
            && !w.contains("vision_model.embeddings.patch_embedding.weight")
        {
            String::new()
        } else {
            "vision_model.".to_string()
        };
        let spec = VitSpec {
            hidden_size: cfg.hidden_size,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.hidden_size / cfg.num_attention_heads,
            intermediate_size: cfg.intermediate_size,
            num_channels: cfg.num_channels,
            patch_size: (cfg.patch_size, cfg.patch_size),
            grid: (cfg.grid(), cfg.grid()),
            layer_norm_eps: cfg.layer_norm_eps,
            act,
            qkv_bias: true,
        };
        // `SiglipVisionEmbeddings`: no class token; positions are an `nn.Embedding` table.
        let names = VitNames {
            patch: format!("{p}embeddings.patch_embedding"),
            cls_token: None,
            positions: format!("{p}embeddings.position_embedding.weight"),
            positions_batched: false,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| LayerNames::under(&format!("{p}encoder.layers.{i}"), CLIP_LAYER_SUFFIXES))
                .collect(),
            final_norm: format!("{p}post_layernorm"),
        };
        let encoder = VitEncoder::load(spec, &names, w, dtype, device)?;
        Ok(Self { cfg, encoder })
    }

    /// The config the encoder was loaded with.
    pub fn config(&self) -> &SiglipVisionConfig {
        &self.cfg
    }

    /// `last_hidden_state` (after `post_layernorm`) for `pixel_values` (B, C, S, S) with S the
    /// config's `image_size`: (B, num_patches, hidden).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (_, c, hh, ww) = pixel_values.dims4()?;
        if c != cfg.num_channels || hh != cfg.image_size || ww != cfg.image_size {
            return Err(EngineError::InvalidInput(format!(
                "SigLIP expects pixel values (B, {}, {s}, {s}), got {:?}",
                cfg.num_channels,
                pixel_values.dims(),
                s = cfg.image_size
            )));
        }
        self.encoder.forward(pixel_values)
    }
}
