//! A ViT image classifier (transformers `models/vit/modeling_vit.py`,
//! `ViTForImageClassification`), the architecture of the reference NSFW detector
//! Falconsai/nsfw_image_detection: patch embedding, `[CLS]` token and learned positions,
//! pre-LayerNorm encoder layers, final LayerNorm (the vision transformer shared with SigLIP,
//! `crate::vit`), then a linear head on the `[CLS]` state, softmax.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Deserialize;

use super::preprocess::{ImageProcessor, ImageProcessorConfig};
use crate::error::{EngineError, Result};
use crate::text_encoders::{check_model_type, linear, parse_config, read_config, Act, Linear};
use crate::vit::{LayerNames, SizePair, VitEncoder, VitNames, VitSpec};
use crate::weights::WeightFiles;

#[derive(Deserialize)]
struct RawVitConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    image_size: Option<SizePair>,
    patch_size: Option<SizePair>,
    num_channels: Option<usize>,
    qkv_bias: Option<bool>,
    id2label: Option<BTreeMap<String, String>>,
}

/// The parts of a transformers `ViTConfig` the classifier uses. Defaults are transformers' own
/// (`models/vit/configuration_vit.py`, google/vit-base-patch16-224).
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of each head (`hidden_size / num_attention_heads` unless the config says).
    pub head_dim: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// MLP activation name (`gelu`, the exact erf form).
    pub hidden_act: String,
    /// LayerNorm epsilon (1e-12 in ViT).
    pub layer_norm_eps: f64,
    /// Input (height, width) the position embeddings were trained for.
    pub image_size: (usize, usize),
    /// Patch (height, width).
    pub patch_size: (usize, usize),
    /// Input channels (3).
    pub num_channels: usize,
    /// Whether q/k/v projections have biases.
    pub qkv_bias: bool,
    /// Class names by class index (`id2label`).
    pub labels: Vec<String>,
}

impl VitConfig {
    /// Reads `config.json` from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (path, value) = read_config(dir)?;
        Self::from_value(value, &path)
    }

    /// Parses a config already read from `path`.
    pub fn from_value(value: serde_json::Value, path: &Path) -> Result<Self> {
        let raw: RawVitConfig = parse_config(value, path)?;
        let bad = |msg: String| EngineError::config(path, msg);
        check_model_type(
            raw.model_type.as_deref(),
            "vit",
            path,
            "ViTForImageClassification",
        )?;
        let hidden_size = raw.hidden_size.unwrap_or(768);
        let heads = raw.num_attention_heads.unwrap_or(12);
        if heads == 0 || (raw.head_dim.is_none() && !hidden_size.is_multiple_of(heads)) {
            return Err(bad(format!(
                "hidden_size {hidden_size} is not a positive multiple of num_attention_heads {heads}"
            )));
        }
        let hidden_act = raw.hidden_act.unwrap_or_else(|| "gelu".into());
        Act::parse(&hidden_act, path)?;
        // transformers' default for a config without id2label is two classes LABEL_0, LABEL_1.
        let labels = match raw.id2label {
            None => vec!["LABEL_0".to_string(), "LABEL_1".to_string()],
            Some(map) => {
                let mut by_id: Vec<(usize, String)> = Vec::with_capacity(map.len());
                for (k, v) in map {
                    let id = k
                        .parse::<usize>()
                        .map_err(|_| bad(format!("id2label key `{k}` is not an integer")))?;
                    by_id.push((id, v));
                }
                by_id.sort();
                if by_id.iter().enumerate().any(|(i, (id, _))| *id != i) {
                    return Err(bad("id2label keys are not 0..n".into()));
                }
                by_id.into_iter().map(|(_, v)| v).collect()
            }
        };
        if labels.is_empty() {
            return Err(bad("id2label is empty".into()));
        }
        let cfg = Self {
            hidden_size,
            num_hidden_layers: raw.num_hidden_layers.unwrap_or(12),
            num_attention_heads: heads,
            head_dim: raw.head_dim.unwrap_or(hidden_size / heads),
            intermediate_size: raw.intermediate_size.unwrap_or(3072),
            hidden_act,
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-12),
            image_size: raw.image_size.unwrap_or(SizePair::One(224)).hw(),
            patch_size: raw.patch_size.unwrap_or(SizePair::One(16)).hw(),
            num_channels: raw.num_channels.unwrap_or(3),
            qkv_bias: raw.qkv_bias.unwrap_or(true),
            labels,
        };
        let (ph, pw) = cfg.patch_size;
        if ph == 0 || pw == 0 || cfg.image_size.0 < ph || cfg.image_size.1 < pw {
            return Err(bad(format!(
                "patch_size {:?} does not fit image_size {:?}",
                cfg.patch_size, cfg.image_size
            )));
        }
        if cfg.num_channels != 3 {
            return Err(bad(format!(
                "num_channels {} (only RGB classifiers are supported)",
                cfg.num_channels
            )));
        }
        Ok(cfg)
    }

    /// Patches per column and row.
    pub fn grid(&self) -> (usize, usize) {
        (
            self.image_size.0 / self.patch_size.0,
            self.image_size.1 / self.patch_size.1,
        )
    }
}

/// One class and its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    /// The class name from `id2label`.
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// Tensor names of encoder layer `i`, in the hub's layout (transformers ≤ 4, the files
/// Falconsai ships) or in transformers 5's module names (`conversion_mapping.py`, "ViTModel").
fn layer_names(w: &WeightFiles, i: usize) -> LayerNames {
    let legacy = format!("vit.encoder.layer.{i}");
    if w.contains(&format!("{legacy}.layernorm_before.weight")) {
        LayerNames::under(
            &legacy,
            [
                "layernorm_before",
                "attention.attention.query",
                "attention.attention.key",
                "attention.attention.value",
                "attention.output.dense",
                "layernorm_after",
                "intermediate.dense",
                "output.dense",
            ],
        )
    } else {
        LayerNames::under(
            &format!("vit.layers.{i}"),
            [
                "layernorm_before",
                "attention.q_proj",
                "attention.k_proj",
                "attention.v_proj",
                "attention.o_proj",
                "layernorm_after",
                "mlp.fc1",
                "mlp.fc2",
            ],
        )
    }
}

/// A ViT image classifier with its preprocessing, loaded once and run on RGB images.
pub struct ImageClassifier {
    cfg: VitConfig,
    processor: ImageProcessor,
    encoder: VitEncoder,
    classifier: Linear,
    config_path: PathBuf,
    device: Device,
}

impl ImageClassifier {
    /// Loads a transformers `ViTForImageClassification` folder: `config.json`,
    /// `preprocessor_config.json` and `model.safetensors` (or a sharded index; PyTorch `.bin`
    /// files are not read).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = VitConfig::from_dir(dir)?;
        let config_path = dir.join("config.json");
        let act = Act::parse(&cfg.hidden_act, &config_path)?;
        let pp_path = dir.join("preprocessor_config.json");
        let pp = ImageProcessorConfig::from_file(&pp_path)?;
        if pp.do_resize && pp.size != cfg.image_size {
            // transformers would fail at the forward ("Input image size ... doesn't match model").
            return Err(EngineError::config(
                &pp_path,
                format!(
                    "size {:?} differs from the model's image_size {:?} in {}",
                    pp.size,
                    cfg.image_size,
                    config_path.display()
                ),
            ));
        }
        if !dir.join("model.safetensors").is_file()
            && !dir.join("model.safetensors.index.json").is_file()
            && dir.join("pytorch_model.bin").is_file()
        {
            return Err(EngineError::UnknownLayout {
                path: dir.to_path_buf(),
                msg: "only pytorch_model.bin found; convert it to model.safetensors".into(),
            });
        }
        let w = WeightFiles::open_dir(dir, &["model"])?;
        let spec = VitSpec {
            hidden_size: cfg.hidden_size,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim,
            intermediate_size: cfg.intermediate_size,
            num_channels: cfg.num_channels,
            patch_size: cfg.patch_size,
            grid: cfg.grid(),
            layer_norm_eps: cfg.layer_norm_eps,
            act,
            qkv_bias: cfg.qkv_bias,
        };
        // `ViTEmbeddings`: a [CLS] token before the patches; positions a (1, tokens, hidden)
        // parameter.
        let names = VitNames {
            patch: "vit.embeddings.patch_embeddings.projection".into(),
            cls_token: Some("vit.embeddings.cls_token".into()),
            positions: "vit.embeddings.position_embeddings".into(),
            positions_batched: true,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| layer_names(&w, i))
                .collect(),
            final_norm: "vit.layernorm".into(),
        };
        let encoder = VitEncoder::load(spec, &names, &w, dtype, device)?;
        let h = cfg.hidden_size;
        let classifier = linear(&w, "classifier", cfg.labels.len(), h, true, dtype, device)?;
        Ok(Self {
            processor: ImageProcessor::new(pp, pp_path),
            encoder,
            classifier,
            config_path,
            cfg,
            device: device.clone(),
        })
    }

    /// The model config.
    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Class names in class-index order.
    pub fn labels(&self) -> &[String] {
        &self.cfg.labels
    }

    /// The preprocessing.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// `pixel_values` (1, 3, H, W) for an image, as the slow `ViTImageProcessor` makes them.
    pub fn preprocess(&self, img: &image::RgbImage) -> Result<Tensor> {
        self.processor.preprocess(img, &self.device)
    }

    /// Class logits (B, num_labels) for `pixel_values` (B, 3, H, W) at the model's image size.
    pub fn logits(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, c, ih, iw) = pixel_values.dims4().map_err(|_| {
            EngineError::InvalidInput(format!(
                "pixel_values must be (batch, channels, height, width), got {:?}",
                pixel_values.dims()
            ))
        })?;
        if c != self.cfg.num_channels || (ih, iw) != self.cfg.image_size {
            // `ViTEmbeddings.forward` without interpolate_pos_encoding.
            return Err(EngineError::InvalidInput(format!(
                "pixel_values {:?} do not match the model's {} channels at {:?}",
                pixel_values.dims(),
                self.cfg.num_channels,
                self.cfg.image_size
            )));
        }
        let x = self.encoder.forward(pixel_values)?;
        // `ViTForImageClassification`: the head sees the [CLS] position only.
        self.classifier.forward(&x.i((.., 0, ..))?.contiguous()?)
    }

    /// Class probabilities for one image, in class-index order (the transformers pipeline
    /// sorts them by score instead).
    pub fn classify(&self, img: &image::RgbImage) -> Result<Vec<LabelScore>> {
        let logits = self.logits(&self.preprocess(img)?)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        let probs: Vec<f32> = probs.i(0)?.to_vec1()?;
        Ok(self
            .cfg
            .labels
            .iter()
            .zip(probs)
            .map(|(label, score)| LabelScore {
                label: label.clone(),
                score,
            })
            .collect())
    }

    /// Index of the class named `name` (ASCII case-insensitive), or a config error naming the
    /// labels there are.
    pub fn label_index(&self, name: &str) -> Result<usize> {
        self.cfg
            .labels
            .iter()
            .position(|l| l.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                EngineError::config(
                    &self.config_path,
                    format!(
                        "no class named `{name}` in id2label (classes: {})",
                        self.cfg.labels.join(", ")
                    ),
                )
            })
    }

    /// Probability of the class named "nsfw" (Falconsai/nsfw_image_detection's unsafe class);
    /// an error if the model has no such class.
    pub fn nsfw_score(&self, img: &image::RgbImage) -> Result<f32> {
        let idx = self.label_index("nsfw")?;
        let scores = self.classify(img)?;
        scores.get(idx).map(|s| s.score).ok_or_else(|| {
            EngineError::config(
                &self.config_path,
                "the head has fewer outputs than id2label",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety::{red_probe, write_tiny_classifier};
    use crate::tiny_init::{write_safetensors, TensorMap};

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fluxd-vit-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        dir
    }

    /// Rewrites `model.safetensors` with every name passed through `rename` (None drops it).
    fn rewrite(dir: &Path, rename: impl Fn(&str) -> Option<String>) -> Result<()> {
        let file = dir.join("model.safetensors");
        let w = WeightFiles::open(std::slice::from_ref(&file))?;
        let mut t = TensorMap::new();
        for name in w.names() {
            if let Some(new) = rename(name) {
                t.insert(new, w.get(name, DType::F32, &Device::Cpu)?);
            }
        }
        drop(w);
        write_safetensors(&file, &t)
    }

    #[test]
    fn transformers_5_tensor_names_load_to_the_same_model() -> Result<()> {
        let dir = temp_dir("names");
        write_tiny_classifier(&dir, 3)?;
        let img = red_probe(40, 30, 140);
        let want = ImageClassifier::load(&dir, DType::F32, &Device::Cpu)?.classify(&img)?;
        // transformers 5's module names (`conversion_mapping.py`, "ViTModel").
        rewrite(&dir, |n| {
            Some(
                n.replace("encoder.layer.", "layers.")
                    .replace("attention.attention.query", "attention.q_proj")
                    .replace("attention.attention.key", "attention.k_proj")
                    .replace("attention.attention.value", "attention.v_proj")
                    .replace("attention.output.dense", "attention.o_proj")
                    .replace("intermediate.dense", "mlp.fc1")
                    .replace("output.dense", "mlp.fc2"),
            )
        })?;
        let got = ImageClassifier::load(&dir, DType::F32, &Device::Cpu)?.classify(&img)?;
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn missing_tensors_labels_and_sizes_are_errors_naming_them() -> Result<()> {
        let dir = temp_dir("bad");
        write_tiny_classifier(&dir, 3)?;
        rewrite(&dir, |n| {
            (n != "vit.encoder.layer.1.output.dense.weight").then(|| n.to_string())
        })?;
        let msg = ImageClassifier::load(&dir, DType::F32, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("vit.encoder.layer.1.output.dense.weight")
                && msg.contains("model.safetensors"),
            "{msg}"
        );

        write_tiny_classifier(&dir, 3)?;
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::io(&cfg_path, e))?;
        let cfg = text.replace("\"nsfw\"", "\"unsafe\"");
        std::fs::write(&cfg_path, cfg).map_err(|e| EngineError::io(&cfg_path, e))?;
        let c = ImageClassifier::load(&dir, DType::F32, &Device::Cpu)?;
        let msg = c
            .nsfw_score(&red_probe(8, 8, 0))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("nsfw") && msg.contains("unsafe"), "{msg}");
        assert!(c
            .logits(&Tensor::zeros((1, 3, 16, 32), DType::F32, &Device::Cpu)?)
            .is_err());

        let pp = dir.join("preprocessor_config.json");
        std::fs::write(&pp, r#"{"size": {"height": 64, "width": 64}}"#)
            .map_err(|e| EngineError::io(&pp, e))?;
        let msg = ImageClassifier::load(&dir, DType::F32, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("preprocessor_config.json") && msg.contains("image_size"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn configs_without_labels_or_of_other_models_are_handled() {
        let p = Path::new("config.json");
        let cfg = VitConfig::from_value(
            serde_json::json!({"hidden_size": 64, "num_attention_heads": 4}),
            p,
        );
        assert_eq!(
            cfg.map(|c| c.labels).ok(),
            Some(vec!["LABEL_0".into(), "LABEL_1".into()])
        );
        let clip = VitConfig::from_value(serde_json::json!({"model_type": "clip"}), p);
        assert!(clip.is_err());
        let gaps = VitConfig::from_value(serde_json::json!({"id2label": {"0": "a", "2": "b"}}), p);
        assert!(gaps.is_err());
    }
}
