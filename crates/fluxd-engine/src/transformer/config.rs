//! The transformer's hyperparameters: diffusers' `transformer/config.json` for
//! `FluxTransformer2DModel`, or inferred from tensor shapes for a BFL single file.
//!
//! Defaults follow `FluxTransformer2DModel.__init__` (diffusers
//! `models/transformers/transformer_flux.py`), so the short config shipped with FLUX.1-dev (no
//! `axes_dims_rope`, no `out_channels`) reads the way diffusers reads it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::weights::WeightFiles;

/// Hyperparameters of a FLUX.1 transformer, field names as in diffusers' config.json.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FluxConfig {
    /// Patch size (1 for FLUX.1: the pipeline packs 2×2 latent patches itself).
    #[serde(default = "one")]
    pub patch_size: usize,
    /// Channels of a packed latent token (64 = 16 latent channels × 2 × 2).
    #[serde(default = "sixty_four")]
    pub in_channels: usize,
    /// Output channels; `None` means `in_channels`.
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Number of double-stream (MMDiT) blocks.
    #[serde(default = "nineteen")]
    pub num_layers: usize,
    /// Number of single-stream blocks.
    #[serde(default = "thirty_eight")]
    pub num_single_layers: usize,
    /// Size of one attention head.
    #[serde(default = "one_twenty_eight")]
    pub attention_head_dim: usize,
    /// Number of attention heads; hidden size = heads × head size.
    #[serde(default = "twenty_four")]
    pub num_attention_heads: usize,
    /// Width of the text-encoder (T5) states.
    #[serde(default = "four_thousand_ninety_six")]
    pub joint_attention_dim: usize,
    /// Width of the pooled (CLIP) vector.
    #[serde(default = "seven_sixty_eight")]
    pub pooled_projection_dim: usize,
    /// Whether the model embeds the guidance scale (FLUX.1-dev: yes, schnell: no).
    #[serde(default)]
    pub guidance_embeds: bool,
    /// RoPE sizes per position axis; they sum to `attention_head_dim`.
    #[serde(default = "default_axes")]
    pub axes_dims_rope: Vec<usize>,
}

fn one() -> usize {
    1
}
fn sixty_four() -> usize {
    64
}
fn nineteen() -> usize {
    19
}
fn thirty_eight() -> usize {
    38
}
fn one_twenty_eight() -> usize {
    128
}
fn twenty_four() -> usize {
    24
}
fn four_thousand_ninety_six() -> usize {
    4096
}
fn seven_sixty_eight() -> usize {
    768
}
fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}

/// The MLP of every block is 4× the hidden size (`mlp_ratio` 4 in BFL `util.py`, hard-coded in
/// diffusers' `FluxSingleTransformerBlock` and `FeedForward`).
pub const MLP_RATIO: usize = 4;

/// Width of the sinusoidal timestep/guidance embedding (`Timesteps(num_channels=256)` in
/// diffusers `CombinedTimestepGuidanceTextProjEmbeddings`).
pub const TIME_EMBED_DIM: usize = 256;

impl FluxConfig {
    /// FLUX.1-dev.
    pub fn dev() -> Self {
        Self {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: true,
            axes_dims_rope: default_axes(),
        }
    }

    /// The tiny model `fluxd model init-tiny` writes (see the project's common brief).
    pub fn tiny() -> Self {
        Self {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 2,
            num_single_layers: 2,
            attention_head_dim: 16,
            num_attention_heads: 2,
            joint_attention_dim: 32,
            pooled_projection_dim: 32,
            guidance_embeds: true,
            axes_dims_rope: vec![4, 6, 6],
        }
    }

    /// A benchmark-sized model with FLUX.1's real head size and RoPE axes (hidden 768).
    pub fn medium() -> Self {
        Self {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 2,
            num_single_layers: 4,
            attention_head_dim: 128,
            num_attention_heads: 6,
            joint_attention_dim: 96,
            pooled_projection_dim: 64,
            guidance_embeds: true,
            axes_dims_rope: default_axes(),
        }
    }

    /// Hidden size (heads × head size).
    pub fn hidden(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Hidden size of the MLPs.
    pub fn mlp_hidden(&self) -> usize {
        self.hidden() * MLP_RATIO
    }

    /// Output channels per token of the final projection.
    pub fn out_features(&self) -> usize {
        self.patch_size * self.patch_size * self.out_channels.unwrap_or(self.in_channels)
    }

    /// Reads and checks a diffusers `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let cfg: Self =
            serde_json::from_str(&text).map_err(|e| EngineError::config(path, e.to_string()))?;
        cfg.validate()
            .map_err(|msg| EngineError::config(path, msg))?;
        Ok(cfg)
    }

    /// Checks the relations between fields that the model relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.patch_size == 0 || self.num_attention_heads == 0 || self.attention_head_dim == 0 {
            return Err(
                "patch_size, num_attention_heads and attention_head_dim must be > 0".into(),
            );
        }
        if !self.attention_head_dim.is_multiple_of(2) {
            return Err(format!(
                "attention_head_dim {} must be even",
                self.attention_head_dim
            ));
        }
        let axes: usize = self.axes_dims_rope.iter().sum();
        if axes != self.attention_head_dim
            || self.axes_dims_rope.iter().any(|a| !a.is_multiple_of(2))
        {
            return Err(format!(
                "axes_dims_rope {:?} must be even and sum to attention_head_dim {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        Ok(())
    }

    /// The config.json diffusers' `save_config` writes for `FluxTransformer2DModel` (all
    /// `__init__` arguments, sorted, plus `_class_name` and `_diffusers_version`).
    pub fn to_diffusers_json(&self) -> serde_json::Value {
        serde_json::json!({
            "_class_name": "FluxTransformer2DModel",
            "_diffusers_version": "0.42.1",
            "attention_head_dim": self.attention_head_dim,
            "axes_dims_rope": self.axes_dims_rope,
            "guidance_embeds": self.guidance_embeds,
            "in_channels": self.in_channels,
            "joint_attention_dim": self.joint_attention_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_layers": self.num_layers,
            "num_single_layers": self.num_single_layers,
            "out_channels": self.out_channels,
            "patch_size": self.patch_size,
            "pooled_projection_dim": self.pooled_projection_dim,
        })
    }

    /// Infers the config of a BFL single file (BFL names, prefix already stripped by `name`)
    /// from its tensor shapes. RoPE axes are not stored in the file: FLUX.1's [16, 56, 56] is
    /// used when the head size is 128, otherwise `config.json` next to the file must say.
    pub fn infer_bfl(
        weights: &WeightFiles,
        file: &Path,
        name: &dyn Fn(&str) -> String,
    ) -> Result<Self> {
        let shapes = weights
            .names()
            .filter_map(|n| Some((n.to_string(), weights.shape(n)?.to_vec())))
            .collect();
        Self::infer_bfl_shapes(&shapes, file, name)
    }

    /// [`Self::infer_bfl`] from the file's tensor shapes (torch order), by name.
    pub fn infer_bfl_shapes(
        shapes: &BTreeMap<String, Vec<usize>>,
        file: &Path,
        name: &dyn Fn(&str) -> String,
    ) -> Result<Self> {
        let shape = |key: &str| -> Result<Vec<usize>> {
            let full = name(key);
            shapes
                .get(&full)
                .cloned()
                .ok_or_else(|| EngineError::MissingTensor {
                    name: full,
                    files: file.display().to_string(),
                })
        };
        let img_in = shape("img_in.weight")?;
        let txt_in = shape("txt_in.weight")?;
        let vector_in = shape("vector_in.in_layer.weight")?;
        let final_linear = shape("final_layer.linear.weight")?;
        if img_in.len() != 2 || txt_in.len() != 2 || vector_in.len() != 2 {
            return Err(EngineError::UnknownLayout {
                path: file.to_path_buf(),
                msg: "img_in/txt_in/vector_in weights are not matrices".into(),
            });
        }
        let count = |prefix: &str| -> usize {
            let full = name(prefix);
            let mut max = None;
            for n in shapes.keys() {
                if let Some(rest) = n.strip_prefix(&full) {
                    if let Some(idx) = rest.split('.').next().and_then(|s| s.parse::<usize>().ok())
                    {
                        max = Some(max.map_or(idx, |m: usize| m.max(idx)));
                    }
                }
            }
            max.map_or(0, |m| m + 1)
        };
        let num_layers = count("double_blocks.");
        let num_single_layers = count("single_blocks.");
        let norm_key = if num_layers > 0 {
            "double_blocks.0.img_attn.norm.query_norm.scale"
        } else {
            "single_blocks.0.norm.query_norm.scale"
        };
        let head_dim = shape(norm_key)?.first().copied().unwrap_or(0);
        let hidden = img_in[0];
        if head_dim == 0 || hidden % head_dim != 0 {
            return Err(EngineError::UnknownLayout {
                path: file.to_path_buf(),
                msg: format!("hidden size {hidden} is not a multiple of head size {head_dim}"),
            });
        }
        let sidecar = file.parent().map(|d| d.join("config.json"));
        let axes_dims_rope = if head_dim == 128 {
            default_axes()
        } else if let Some(side) = sidecar.filter(|p| p.is_file()) {
            FluxConfig::from_file(&side)?.axes_dims_rope
        } else {
            return Err(EngineError::UnknownLayout {
                path: file.to_path_buf(),
                msg: format!(
                    "head size {head_dim} is not FLUX.1's 128, so the RoPE axes cannot be \
                     inferred; put a diffusers config.json with `axes_dims_rope` next to the file"
                ),
            });
        };
        let cfg = Self {
            patch_size: 1,
            in_channels: img_in[1],
            // `None` when equal to in_channels, as diffusers configs say it.
            out_channels: Some(final_linear[0]).filter(|&o| o != img_in[1]),
            num_layers,
            num_single_layers,
            attention_head_dim: head_dim,
            num_attention_heads: hidden / head_dim,
            joint_attention_dim: txt_in[1],
            pooled_projection_dim: vector_in[1],
            guidance_embeds: shapes.contains_key(&name("guidance_in.in_layer.weight")),
            axes_dims_rope,
        };
        cfg.validate().map_err(|msg| EngineError::UnknownLayout {
            path: file.to_path_buf(),
            msg,
        })?;
        Ok(cfg)
    }

    /// Checks that a config read from a weight file's shapes (`self`) describes the same model
    /// as the model folder's `config.json` (`folder`, read from `folder_path`): block counts and
    /// widths must agree; the folder's config is the one to use (it alone holds the RoPE axes).
    pub fn check_agrees(&self, folder: &Self, file: &Path, folder_path: &Path) -> Result<()> {
        // What the weights' shapes fix, as (name, value) of a config.
        let facts = |c: &Self| {
            [
                ("num_layers", c.num_layers),
                ("num_single_layers", c.num_single_layers),
                ("hidden size", c.hidden()),
                ("attention_head_dim", c.attention_head_dim),
                ("in_channels", c.in_channels),
                ("out channels", c.out_features()),
                ("joint_attention_dim", c.joint_attention_dim),
                ("pooled_projection_dim", c.pooled_projection_dim),
            ]
            .map(|(what, v)| (what, v.to_string()))
            .into_iter()
            .chain([("guidance_embeds", c.guidance_embeds.to_string())])
        };
        let diffs: Vec<String> = facts(self)
            .zip(facts(folder))
            .filter(|((_, a), (_, b))| a != b)
            .map(|((what, a), (_, b))| format!("{what}: file {a}, config {b}"))
            .collect();
        if diffs.is_empty() {
            return Ok(());
        }
        Err(EngineError::UnknownLayout {
            path: file.to_path_buf(),
            msg: format!(
                "the weights do not fit the model folder's {}: {}",
                folder_path.display(),
                diffs.join("; ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_dev_config_gets_diffusers_defaults() -> Result<()> {
        // The config.json shipped in black-forest-labs/FLUX.1-dev/transformer.
        let text = r#"{"_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.30.0.dev0",
            "attention_head_dim": 128, "guidance_embeds": true, "in_channels": 64,
            "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768}"#;
        let cfg: FluxConfig =
            serde_json::from_str(text).map_err(|e| EngineError::config("t", e.to_string()))?;
        assert_eq!(cfg, FluxConfig::dev());
        assert_eq!(cfg.out_features(), 64);
        assert_eq!(cfg.hidden(), 3072);
        Ok(())
    }

    #[test]
    fn written_json_reads_back() -> Result<()> {
        for cfg in [FluxConfig::tiny(), FluxConfig::medium(), FluxConfig::dev()] {
            let back: FluxConfig = serde_json::from_value(cfg.to_diffusers_json())
                .map_err(|e| EngineError::config("t", e.to_string()))?;
            assert_eq!(back, cfg);
            assert!(cfg.validate().is_ok());
        }
        let mut bad = FluxConfig::tiny();
        bad.axes_dims_rope = vec![4, 4, 4];
        assert!(bad.validate().is_err());
        Ok(())
    }
}
