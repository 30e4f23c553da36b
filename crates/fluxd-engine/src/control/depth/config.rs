//! `config.json` and `preprocessor_config.json` of a Depth Anything folder in the transformers
//! layout (`LiheYoung/depth-anything-large-hf`): `DepthAnythingConfig` with its DINOv2
//! `backbone_config` (transformers `models/depth_anything/configuration_depth_anything.py`,
//! `models/dinov2/configuration_dinov2.py`) and the `DPTImageProcessor` keys
//! (`models/dpt/image_processing_pil_dpt.py`). Missing keys take transformers' defaults.

use std::path::Path;

use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::safety::Resample;
use crate::text_encoders::{check_model_type, parse_config, read_config, read_json_text, Act};
use crate::vit::processor::ProcessorJson;
use crate::vit::SizePair;

/// A square side from `image_size` / `patch_size` (the DPT head needs one patch size).
fn square(p: SizePair, path: &Path, key: &str) -> Result<usize> {
    match p.hw() {
        (h, w) if h == w => Ok(h),
        (h, w) => Err(EngineError::config(
            path,
            format!(
                "`{key}` [{h}, {w}] is not square (Depth Anything's DPT head needs one patch size)"
            ),
        )),
    }
}

#[derive(Deserialize, Default)]
struct RawBackbone {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    mlp_ratio: Option<f64>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    image_size: Option<SizePair>,
    patch_size: Option<SizePair>,
    num_channels: Option<usize>,
    qkv_bias: Option<bool>,
    use_swiglu_ffn: Option<bool>,
    apply_layernorm: Option<bool>,
    out_indices: Option<Vec<i64>>,
    out_features: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    backbone_config: Option<RawBackbone>,
    patch_size: Option<SizePair>,
    reassemble_hidden_size: Option<usize>,
    reassemble_factors: Option<Vec<f64>>,
    neck_hidden_sizes: Option<Vec<usize>>,
    fusion_hidden_size: Option<usize>,
    head_in_index: Option<i64>,
    head_hidden_size: Option<usize>,
    depth_estimation_type: Option<String>,
    max_depth: Option<f64>,
}

/// The DINOv2 backbone's sizes (`Dinov2Config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Dinov2Config {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the MLP (`hidden_size · mlp_ratio`).
    pub intermediate_size: usize,
    /// MLP activation.
    pub(crate) act: Act,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Side of the square image the position table was trained for.
    pub image_size: usize,
    /// Side of a square patch.
    pub patch_size: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Whether q/k/v have biases.
    pub qkv_bias: bool,
    /// Whether the selected hidden states go through the final LayerNorm.
    pub apply_layernorm: bool,
    /// The hidden states handed to the neck: 0 is the embeddings, `i` the output of layer `i`.
    pub out_indices: Vec<usize>,
}

/// How the head's last activation reads (`depth_estimation_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthKind {
    /// `relative`: ReLU (relative inverse depth, Depth Anything V1).
    Relative,
    /// `metric`: sigmoid, times `max_depth`.
    Metric,
}

/// `DepthAnythingConfig`: backbone, DPT neck and head.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthAnythingConfig {
    /// The DINOv2 backbone.
    pub backbone: Dinov2Config,
    /// Patch size the neck and head reshape with.
    pub patch_size: usize,
    /// Channels of the backbone's hidden states entering the neck.
    pub reassemble_hidden_size: usize,
    /// Up (4, 2), identity (1) or down (0.5) sampling per neck level.
    pub reassemble_factors: Vec<f64>,
    /// Channels of each neck level after its projection.
    pub neck_hidden_sizes: Vec<usize>,
    /// Channels of the fusion stage.
    pub fusion_hidden_size: usize,
    /// Which fused map the head reads (−1: the last, finest one).
    pub head_in_index: i64,
    /// Channels of the head's second convolution.
    pub head_hidden_size: usize,
    /// Relative or metric head.
    pub kind: DepthKind,
    /// Factor on the head's output.
    pub max_depth: f64,
}

impl DepthAnythingConfig {
    /// Each neck level: (index, channels, reassemble factor).
    pub fn levels(&self) -> impl Iterator<Item = (usize, usize, f64)> + '_ {
        self.neck_hidden_sizes
            .iter()
            .zip(&self.reassemble_factors)
            .enumerate()
            .map(|(i, (&c, &f))| (i, c, f))
    }

    /// Reads `config.json` from a Depth Anything folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (path, value) = read_config(dir)?;
        Self::from_value(value, &path)
    }

    /// Parses a config already read from `path`.
    pub fn from_value(value: serde_json::Value, path: &Path) -> Result<Self> {
        let raw: RawConfig = parse_config(value, path)?;
        let bad = |msg: String| EngineError::config(path, msg);
        check_model_type(
            raw.model_type.as_deref(),
            "depth_anything",
            path,
            "DepthAnythingForDepthEstimation",
        )?;
        // `backbone_config: null` means transformers' default small backbone.
        let b = raw.backbone_config.unwrap_or_else(|| RawBackbone {
            image_size: Some(SizePair::One(518)),
            hidden_size: Some(384),
            num_attention_heads: Some(6),
            out_indices: Some(vec![9, 10, 11, 12]),
            ..Default::default()
        });
        check_model_type(b.model_type.as_deref(), "dinov2", path, "a DINOv2 backbone")?;
        if b.use_swiglu_ffn == Some(true) {
            return Err(bad(
                "backbone use_swiglu_ffn is not supported (Depth Anything uses the GELU MLP)"
                    .into(),
            ));
        }
        let hidden = b.hidden_size.unwrap_or(768);
        let heads = b.num_attention_heads.unwrap_or(12);
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(bad(format!(
                "backbone hidden_size {hidden} is not a positive multiple of num_attention_heads {heads}"
            )));
        }
        let layers = b.num_hidden_layers.unwrap_or(12);
        let act_name = b.hidden_act.unwrap_or_else(|| "gelu".into());
        let out_indices = out_indices(b.out_indices, b.out_features, layers).map_err(bad)?;
        let backbone = Dinov2Config {
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: (hidden as f64 * b.mlp_ratio.unwrap_or(4.0)) as usize,
            act: Act::parse(&act_name, path)?,
            layer_norm_eps: b.layer_norm_eps.unwrap_or(1e-6),
            image_size: square(
                b.image_size.unwrap_or(SizePair::One(224)),
                path,
                "image_size",
            )?,
            patch_size: square(
                b.patch_size.unwrap_or(SizePair::One(14)),
                path,
                "patch_size",
            )?,
            num_channels: b.num_channels.unwrap_or(3),
            qkv_bias: b.qkv_bias.unwrap_or(true),
            apply_layernorm: b.apply_layernorm.unwrap_or(true),
            out_indices,
        };
        let neck_hidden_sizes = raw
            .neck_hidden_sizes
            .unwrap_or_else(|| vec![48, 96, 192, 384]);
        let reassemble_factors = raw
            .reassemble_factors
            .unwrap_or_else(|| vec![4.0, 2.0, 1.0, 0.5]);
        if neck_hidden_sizes.len() != reassemble_factors.len()
            || neck_hidden_sizes.len() != backbone.out_indices.len()
            || neck_hidden_sizes.is_empty()
        {
            return Err(bad(format!(
                "neck_hidden_sizes ({}), reassemble_factors ({}) and the backbone's out_indices ({}) \
                 must have the same, non-zero length",
                neck_hidden_sizes.len(),
                reassemble_factors.len(),
                backbone.out_indices.len()
            )));
        }
        for f in &reassemble_factors {
            let ok = if *f >= 1.0 {
                f.fract() == 0.0
            } else {
                *f > 0.0 && (1.0 / f).fract() == 0.0
            };
            if !ok {
                return Err(bad(format!(
                    "reassemble factor {f} is neither a whole number nor 1/n"
                )));
            }
        }
        let kind = match raw.depth_estimation_type.as_deref().unwrap_or("relative") {
            "relative" => DepthKind::Relative,
            "metric" => DepthKind::Metric,
            other => {
                return Err(bad(format!(
                    "depth_estimation_type `{other}` is not relative or metric"
                )))
            }
        };
        let head_in_index = raw.head_in_index.unwrap_or(-1);
        let levels = neck_hidden_sizes.len() as i64;
        if head_in_index >= levels || head_in_index < -levels {
            return Err(bad(format!(
                "head_in_index {head_in_index} is outside the {levels} fused maps"
            )));
        }
        Ok(Self {
            patch_size: square(
                raw.patch_size.unwrap_or(SizePair::One(14)),
                path,
                "patch_size",
            )?,
            reassemble_hidden_size: raw.reassemble_hidden_size.unwrap_or(384),
            reassemble_factors,
            neck_hidden_sizes,
            fusion_hidden_size: raw.fusion_hidden_size.unwrap_or(64),
            head_in_index,
            head_hidden_size: raw.head_hidden_size.unwrap_or(32),
            kind,
            max_depth: raw.max_depth.unwrap_or(1.0),
            backbone,
        })
    }
}

/// `out_indices` (negative ones count from the end) or `out_features` (`stageN`), checked
/// against the layer count; transformers' default is the last stage.
fn out_indices(
    indices: Option<Vec<i64>>,
    features: Option<Vec<String>>,
    layers: usize,
) -> std::result::Result<Vec<usize>, String> {
    let stages = layers as i64 + 1;
    match (indices, features) {
        (Some(idx), _) => idx
            .into_iter()
            .map(|i| {
                let j = if i < 0 { i + stages } else { i };
                if (0..stages).contains(&j) {
                    Ok(j as usize)
                } else {
                    Err(format!(
                        "backbone out_index {i} is outside the {stages} stages"
                    ))
                }
            })
            .collect(),
        (None, Some(names)) => names
            .iter()
            .map(|n| match n.as_str() {
                "stem" => Ok(0),
                s => s
                    .strip_prefix("stage")
                    .and_then(|k| k.parse::<usize>().ok())
                    .filter(|k| (1..=layers).contains(k))
                    .ok_or_else(|| {
                        format!("backbone out_feature `{n}` is not stem or stage1..stage{layers}")
                    }),
            })
            .collect(),
        (None, None) => Ok(vec![layers]),
    }
}

/// `DPTImageProcessor` settings of `preprocessor_config.json`. Defaults are the processor's own
/// (384×384, bicubic, no aspect kept, multiple of 1, mean = std = 0.5).
#[derive(Debug, Clone, PartialEq)]
pub struct DepthProcessorConfig {
    /// Whether to resize.
    pub do_resize: bool,
    /// Target (height, width) before the aspect and multiple rules.
    pub size: (usize, usize),
    /// Pillow filter of the resize.
    pub resample: Resample,
    /// Keep the aspect ratio (scale both sides by the factor closer to 1).
    pub keep_aspect_ratio: bool,
    /// Round each side to a multiple of this.
    pub ensure_multiple_of: usize,
    /// `rescale_factor` if `do_rescale`.
    pub rescale: Option<f64>,
    /// (mean, std) if `do_normalize`.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

#[derive(Deserialize)]
struct RawDpt {
    keep_aspect_ratio: Option<bool>,
    ensure_multiple_of: Option<usize>,
    do_pad: Option<bool>,
    size_divisor: Option<usize>,
}

/// `DPTImageProcessor`'s default mean and std (transformers `IMAGENET_STANDARD_MEAN/STD`);
/// Depth Anything's file sets ImageNet's own statistics instead.
const STANDARD_MEAN_STD: [f32; 3] = [0.5; 3];

impl DepthProcessorConfig {
    /// Reads `preprocessor_config.json` from a Depth Anything folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let text = read_json_text(&path, "Depth Anything image processor config")?;
        Self::parse(&text, &path)
    }

    /// Parses the JSON text of the file at `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let j = ProcessorJson::parse(text, path)?;
        let raw: RawDpt =
            serde_json::from_str(text).map_err(|e| EngineError::config(path, e.to_string()))?;
        let bad = |msg: String| EngineError::config(path, msg);
        if raw.do_pad == Some(true) && raw.size_divisor.is_some() {
            return Err(bad(
                "do_pad with size_divisor is not supported (Depth Anything does not pad)".into(),
            ));
        }
        let resample = match j.resample {
            None => Resample::Bicubic,
            Some(code) => Resample::from_pil_code(code)
                .ok_or_else(|| bad(format!("`resample` {code} is not a Pillow filter code")))?,
        };
        let ensure_multiple_of = raw.ensure_multiple_of.unwrap_or(1);
        if ensure_multiple_of == 0 {
            return Err(bad("`ensure_multiple_of` is 0".into()));
        }
        Ok(Self {
            do_resize: j.do_resize.unwrap_or(true),
            size: j.size.unwrap_or((384, 384)),
            resample,
            keep_aspect_ratio: raw.keep_aspect_ratio.unwrap_or(false),
            ensure_multiple_of,
            rescale: j
                .do_rescale
                .unwrap_or(true)
                .then_some(j.rescale_factor.unwrap_or(1.0 / 255.0)),
            normalize: j.do_normalize.unwrap_or(true).then_some((
                j.image_mean.unwrap_or(STANDARD_MEAN_STD),
                j.image_std.unwrap_or(STANDARD_MEAN_STD),
            )),
        })
    }

    /// The resized (height, width) for an input of (height, width): `get_resize_output_image_size`
    /// of the DPT processor. With `keep_aspect_ratio` both sides take the scale closer to 1;
    /// each side is then rounded to a multiple (Python's round, ties to even).
    pub fn output_size(&self, (h, w): (usize, usize)) -> (usize, usize) {
        let (mut sh, mut sw) = (self.size.0 as f64 / h as f64, self.size.1 as f64 / w as f64);
        if self.keep_aspect_ratio {
            if (1.0 - sw).abs() < (1.0 - sh).abs() {
                sh = sw;
            } else {
                sw = sh;
            }
        }
        let m = self.ensure_multiple_of as f64;
        // constrain_to_multiple_of without max_val; min_val 0 only lifts negatives.
        let fit = |v: f64| ((v / m).round_ties_even() * m) as usize;
        (fit(sh * h as f64), fit(sw * w as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn large_processor() -> DepthProcessorConfig {
        let text = r#"{"do_normalize": true, "do_pad": false, "do_rescale": true, "do_resize": true,
            "ensure_multiple_of": 14, "image_mean": [0.485, 0.456, 0.406],
            "image_processor_type": "DPTImageProcessor", "image_std": [0.229, 0.224, 0.225],
            "keep_aspect_ratio": true, "resample": 3, "rescale_factor": 0.00392156862745098,
            "size": {"height": 518, "width": 518}, "size_divisor": null}"#;
        DepthProcessorConfig::parse(text, Path::new("pp.json")).expect("parses")
    }

    #[test]
    fn resize_keeps_aspect_and_rounds_to_multiples_of_14() {
        let p = large_processor();
        assert_eq!(p.resample, Resample::Bicubic);
        // 768×1024 (h×w): the height's scale is closer to 1 → 518 × round(690.67/14)·14.
        assert_eq!(p.output_size((768, 1024)), (518, 686));
        assert_eq!(p.output_size((518, 518)), (518, 518));
        // Upscaling a small image: 100×50 → scale 5.18 on both (the width's is farther from 1).
        assert_eq!(p.output_size((100, 50)), (518, 252));
        // Python rounds halves to even: 35/14 = 2.5 → 2 multiples.
        let q = DepthProcessorConfig {
            size: (35, 35),
            ..p
        };
        assert_eq!(q.output_size((35, 35)), (28, 28));
    }

    #[test]
    fn large_config_parses_with_backbone_stages() {
        let cfg = serde_json::json!({
            "architectures": ["DepthAnythingForDepthEstimation"],
            "backbone_config": {"hidden_size": 1024, "image_size": 518, "model_type": "dinov2",
                "num_attention_heads": 16, "num_hidden_layers": 24,
                "out_indices": [5, 12, 18, 24], "patch_size": 14, "reshape_hidden_states": false},
            "fusion_hidden_size": 256, "head_hidden_size": 32, "head_in_index": -1,
            "model_type": "depth_anything", "neck_hidden_sizes": [256, 512, 1024, 1024],
            "patch_size": 14, "reassemble_factors": [4, 2, 1, 0.5], "reassemble_hidden_size": 1024
        });
        let c = DepthAnythingConfig::from_value(cfg, Path::new("config.json")).expect("parses");
        assert_eq!(c.backbone.out_indices, vec![5, 12, 18, 24]);
        assert_eq!(c.backbone.intermediate_size, 4096);
        assert_eq!((c.kind, c.max_depth), (DepthKind::Relative, 1.0));
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (cfg, key) in [
            (serde_json::json!({"model_type": "dpt"}), "model_type"),
            (
                serde_json::json!({"backbone_config": {"num_hidden_layers": 4, "out_indices": [7]}}),
                "out_index",
            ),
            (
                serde_json::json!({"neck_hidden_sizes": [8, 8]}),
                "neck_hidden_sizes",
            ),
            (
                serde_json::json!({"reassemble_factors": [3, 2, 1, 0.4]}),
                "reassemble factor",
            ),
            (
                serde_json::json!({"backbone_config": {"use_swiglu_ffn": true}}),
                "swiglu",
            ),
        ] {
            let msg = DepthAnythingConfig::from_value(cfg, Path::new("config.json"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains(key) && msg.contains("config.json"), "{msg}");
        }
    }
}
