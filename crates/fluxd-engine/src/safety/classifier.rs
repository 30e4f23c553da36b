//! A ViT image classifier (transformers `models/vit/modeling_vit.py`,
//! `ViTForImageClassification`), the architecture of the reference NSFW detector
//! Falconsai/nsfw_image_detection: patch embedding, `[CLS]` token and learned positions,
//! pre-LayerNorm encoder layers, final LayerNorm, a linear head on the `[CLS]` state, softmax.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Deserialize;

use super::preprocess::{ImageProcessor, ImageProcessorConfig};
use crate::error::{EngineError, Result};
use crate::text_encoders::{apply, layer_norm, linear, read_config, softmax_f32, Act, Linear};
use crate::weights::WeightFiles;

/// An int or an `[h, w]` pair, as ViT configs write `image_size` and `patch_size`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum Pair {
    One(usize),
    Two([usize; 2]),
}

impl Pair {
    fn hw(self) -> (usize, usize) {
        match self {
            Self::One(n) => (n, n),
            Self::Two([h, w]) => (h, w),
        }
    }
}

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
    image_size: Option<Pair>,
    patch_size: Option<Pair>,
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
        let raw: RawVitConfig =
            serde_json::from_value(value).map_err(|e| EngineError::config(path, e.to_string()))?;
        let bad = |msg: String| EngineError::config(path, msg);
        if let Some(t) = raw.model_type.as_deref() {
            if t != "vit" {
                return Err(bad(format!(
                    "model_type `{t}` is not `vit` (only ViTForImageClassification is supported)"
                )));
            }
        }
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
            image_size: raw.image_size.unwrap_or(Pair::One(224)).hw(),
            patch_size: raw.patch_size.unwrap_or(Pair::One(16)).hw(),
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

/// Tensor names of one encoder layer, in the hub's layout (transformers ≤ 4, the files
/// Falconsai ships) or in transformers 5's module names (`conversion_mapping.py`, "ViTModel").
struct LayerNames {
    ln_before: String,
    q: String,
    k: String,
    v: String,
    o: String,
    ln_after: String,
    fc1: String,
    fc2: String,
}

impl LayerNames {
    fn new(w: &WeightFiles, i: usize) -> Self {
        let legacy = format!("vit.encoder.layer.{i}");
        if w.contains(&format!("{legacy}.layernorm_before.weight")) {
            Self {
                ln_before: format!("{legacy}.layernorm_before"),
                q: format!("{legacy}.attention.attention.query"),
                k: format!("{legacy}.attention.attention.key"),
                v: format!("{legacy}.attention.attention.value"),
                o: format!("{legacy}.attention.output.dense"),
                ln_after: format!("{legacy}.layernorm_after"),
                fc1: format!("{legacy}.intermediate.dense"),
                fc2: format!("{legacy}.output.dense"),
            }
        } else {
            let l = format!("vit.layers.{i}");
            Self {
                ln_before: format!("{l}.layernorm_before"),
                q: format!("{l}.attention.q_proj"),
                k: format!("{l}.attention.k_proj"),
                v: format!("{l}.attention.v_proj"),
                o: format!("{l}.attention.o_proj"),
                ln_after: format!("{l}.layernorm_after"),
                fc1: format!("{l}.mlp.fc1"),
                fc2: format!("{l}.mlp.fc2"),
            }
        }
    }
}

struct Layer {
    ln_before: candle_nn::LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln_after: candle_nn::LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// A ViT image classifier with its preprocessing, loaded once and run on RGB images.
pub struct ImageClassifier {
    cfg: VitConfig,
    act: Act,
    processor: ImageProcessor,
    /// Patch projection as a matrix (C·ph·pw, hidden): the stride-`patch` convolution of
    /// `ViTPatchEmbeddings` is one matmul over non-overlapping patches.
    patch_w_t: Tensor,
    patch_b: Tensor,
    cls_token: Tensor,
    position_embeddings: Tensor,
    layers: Vec<Layer>,
    final_ln: candle_nn::LayerNorm,
    classifier: Linear,
    config_path: PathBuf,
    dtype: DType,
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
        let (h, inter, hd, heads) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.head_dim,
            cfg.num_attention_heads,
        );
        let (ph, pw) = cfg.patch_size;
        let (gh, gw) = cfg.grid();
        let c = cfg.num_channels;
        let emb = "vit.embeddings";
        let patch_w = w.get_shaped(
            &format!("{emb}.patch_embeddings.projection.weight"),
            (h, c, ph, pw),
            dtype,
            device,
        )?;
        let patch_w_t = patch_w.reshape((h, c * ph * pw))?.t()?.contiguous()?;
        let patch_b = w.get_shaped(
            &format!("{emb}.patch_embeddings.projection.bias"),
            h,
            dtype,
            device,
        )?;
        let cls_token = w.get_shaped(&format!("{emb}.cls_token"), (1, 1, h), dtype, device)?;
        let position_embeddings = w.get_shaped(
            &format!("{emb}.position_embeddings"),
            (1, gh * gw + 1, h),
            dtype,
            device,
        )?;
        let eps = cfg.layer_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let n = LayerNames::new(&w, i);
            let lin = |name: &str, o, i, bias| linear(&w, name, o, i, bias, dtype, device);
            layers.push(Layer {
                ln_before: layer_norm(&w, &n.ln_before, h, eps, dtype, device)?,
                q: lin(&n.q, heads * hd, h, cfg.qkv_bias)?,
                k: lin(&n.k, heads * hd, h, cfg.qkv_bias)?,
                v: lin(&n.v, heads * hd, h, cfg.qkv_bias)?,
                o: lin(&n.o, h, heads * hd, true)?,
                ln_after: layer_norm(&w, &n.ln_after, h, eps, dtype, device)?,
                fc1: lin(&n.fc1, inter, h, true)?,
                fc2: lin(&n.fc2, h, inter, true)?,
            });
        }
        let final_ln = layer_norm(&w, "vit.layernorm", h, eps, dtype, device)?;
        let classifier = linear(&w, "classifier", cfg.labels.len(), h, true, dtype, device)?;
        Ok(Self {
            act,
            processor: ImageProcessor::new(pp, pp_path),
            patch_w_t,
            patch_b,
            cls_token,
            position_embeddings,
            layers,
            final_ln,
            classifier,
            config_path,
            cfg,
            dtype,
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
        let (b, c, ih, iw) = pixel_values.dims4().map_err(|_| {
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
        let x = pixel_values.to_dtype(self.dtype)?.to_device(&self.device)?;
        let h = self.cfg.hidden_size;
        let (ph, pw) = self.cfg.patch_size;
        let (gh, gw) = self.cfg.grid();
        // A stride-`patch` convolution drops trailing rows/columns that make no whole patch.
        let x = x.narrow(2, 0, gh * ph)?.narrow(3, 0, gw * pw)?;
        // (B, C, gh, ph, gw, pw) → (B, gh, gw, C, ph, pw): rows of one patch in the kernel's
        // (c, kh, kw) order, patches in the conv output's row-major (flatten(2)) order.
        let patches = x
            .reshape((b, c, gh, ph, gw, pw))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * ph * pw))?;
        let emb = patches
            .matmul(&self.patch_w_t)?
            .broadcast_add(&self.patch_b)?
            .reshape((b, gh * gw, h))?;
        let cls = self.cls_token.broadcast_as((b, 1, h))?;
        let mut x = Tensor::cat(&[&cls, &emb], 1)?.broadcast_add(&self.position_embeddings)?;
        for layer in &self.layers {
            // `ViTLayer.forward`: pre-LayerNorm attention and MLP, each with a residual.
            let r = x.clone();
            x = (r + self.attention(layer, &apply(&layer.ln_before, &x)?)?)?;
            let r = x.clone();
            let m = layer.fc1.forward(&apply(&layer.ln_after, &x)?)?;
            x = (r + layer.fc2.forward(&self.act.apply(&m)?)?)?;
        }
        let x = apply(&self.final_ln, &x)?;
        // `ViTForImageClassification`: the head sees the [CLS] position only.
        self.classifier.forward(&x.i((.., 0, ..))?.contiguous()?)
    }

    fn attention(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let heads = self.cfg.num_attention_heads;
        let hd = self.cfg.head_dim;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(layer.q.forward(x)?)?;
        let k = split(layer.k.forward(x)?)?;
        let v = split(layer.v.forward(x)?)?;
        // `eager_attention_forward`: scores · head_dim^-0.5, softmax in f32, no mask.
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let probs = softmax_f32(&scores)?;
        let o = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, heads * hd))?;
        layer.o.forward(&o)
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
