//! The CLIP text transformer (transformers `models/clip/modeling_clip.py`, `CLIPTextModel`), of
//! which FLUX uses `pooler_output`: the final-layer-normed hidden state at the end-of-text token.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Deserialize;

use super::encoder_layer::{EncoderLayer, LayerDims, LayerNames, Scale, CLIP_LAYER_SUFFIXES};
use super::{apply, check_ids, layer_norm, read_config, Act};
use crate::error::{EngineError, Result};
use crate::model_dir::{clip_weights_file, BundledWeights, CLIP_KEY};
use crate::quant::LinearWeight;
use crate::tensor_source::{FileTensors, Renamed, TensorSource};
use crate::tiny_init::{write_json, write_safetensors, InitRng, TensorMap};
use crate::weights::WeightFiles;

/// The text part of a CLIP config, as transformers' `CLIPTextConfig` writes it. Defaults are
/// transformers' own (`models/clip/configuration_clip.py`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Learned positions (77 for CLIP-L).
    pub max_position_embeddings: usize,
    /// MLP activation (`quick_gelu` for CLIP-L).
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// End-of-text token id; 2 selects transformers' legacy argmax pooling.
    pub eos_token_id: i64,
    /// Padding token id.
    pub pad_token_id: Option<i64>,
    /// Beginning-of-text token id.
    pub bos_token_id: Option<i64>,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
        }
    }
}

impl ClipConfig {
    /// Reads `config.json` from a component folder, accepting both the `CLIPTextModel` form and
    /// a full `CLIPModel` config with the text part nested under `text_config`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (path, value) = read_config(dir)?;
        let text = match value.get("text_config") {
            Some(t) if t.is_object() => t.clone(),
            _ => value,
        };
        let cfg: Self =
            serde_json::from_value(text).map_err(|e| EngineError::config(&path, e.to_string()))?;
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
        Act::parse(&cfg.hidden_act, &path)?;
        Ok(cfg)
    }
}

/// The CLIP text encoder, loaded once and run on token ids.
pub struct ClipTextEncoder {
    cfg: ClipConfig,
    act: Act,
    /// The token embedding table (quantized in GGUF files: rows are dequantized as looked up,
    /// as T5's are).
    token_embedding: LinearWeight,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_ln: candle_nn::LayerNorm,
    dtype: DType,
    device: Device,
}

impl ClipTextEncoder {
    /// Loads `config.json` and `model.safetensors` (or a sharded index) from `dir`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_weights(dir, &WeightFiles::open_dir(dir, &["model"])?, dtype, device)
    }

    /// Loads CLIP's weights from a single file or a checkpoint (`--clip`, a ComfyUI checkpoint):
    /// transformers names under `b.prefix`, in safetensors or GGUF (told apart by content),
    /// configured by `dir/config.json` (FLUX.1's `text_encoder/`).
    pub fn load_bundled(
        dir: &Path,
        b: &BundledWeights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let file = FileTensors::open(&b.file)?;
        let rename = |n: &str| format!("{}{n}", b.prefix);
        let src = Renamed {
            inner: file.source(),
            rename: &rename,
        };
        if !src.contains(CLIP_KEY) {
            return Err(EngineError::UnknownLayout {
                path: b.file.clone(),
                msg: format!("no `{CLIP_KEY}` under any prefix: not a CLIP text model"),
            });
        }
        Self::load_weights(dir, &src, dtype, device)
    }

    /// [`Self::load_bundled`] on a file of CLIP's tensors under any prefix
    /// ([`clip_weights_file`]).
    pub fn load_file(file: &Path, dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_bundled(dir, &clip_weights_file(file)?, dtype, device)
    }

    /// Loads with the `config.json` of `dir` and transformers `CLIPTextModel` tensor names from
    /// `w` (e.g. a checkpoint's CLIP seen through its prefix).
    pub(crate) fn load_weights(
        dir: &Path,
        w: &dyn TensorSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let cfg = ClipConfig::from_dir(dir)?;
        let act = Act::parse(&cfg.hidden_act, &dir.join("config.json"))?;
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let p = "text_model";
        let token_embedding = w
            .get_weight(
                &format!("{p}.embeddings.token_embedding.weight"),
                &[cfg.vocab_size, h],
                dtype,
                device,
            )?
            .upcast_fp8(dtype)?;
        let position_embedding = w.get(
            &format!("{p}.embeddings.position_embedding.weight"),
            &[cfg.max_position_embeddings, h],
            dtype,
            device,
        )?;
        let eps = cfg.layer_norm_eps;
        let dims = LayerDims {
            hidden: h,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            intermediate: f,
            eps,
            qkv_bias: true,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let names =
                    LayerNames::under(&format!("{p}.encoder.layers.{i}"), CLIP_LAYER_SUFFIXES);
                EncoderLayer::load(w, &names, &dims, dtype, device)
            })
            .collect::<Result<Vec<_>>>()?;
        let final_ln = layer_norm(w, &format!("{p}.final_layer_norm"), h, eps, dtype, device)?;
        Ok(Self {
            cfg,
            act,
            token_embedding,
            position_embedding,
            layers,
            final_ln,
            dtype,
            device: device.clone(),
        })
    }

    /// The config the encoder was loaded with.
    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    /// Width of the pooled output (768 for CLIP-L).
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// `last_hidden_state` after the final LayerNorm: (B, L, hidden).
    pub fn last_hidden_state(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, l) = check_ids(input_ids, Some(self.cfg.max_position_embeddings))?;
        let ids = ids_u32(input_ids, self.cfg.vocab_size)?.to_device(&self.device)?;
        let tok = self
            .token_embedding
            .rows(&ids.flatten_all()?, self.dtype)?
            .reshape((b, l, self.cfg.hidden_size))?;
        let mut x = tok.broadcast_add(&self.position_embedding.i(..l)?)?;
        let mask = causal_mask(l, self.dtype, &self.device)?;
        for layer in &self.layers {
            // transformers scales the queries by head_dim^-0.5 (`CLIPAttention.scale`).
            x = layer.forward(&x, self.act, Scale::Queries, Some(&mask))?;
        }
        apply(&self.final_ln, &x)
    }

    /// `pooler_output`: the final hidden state at the end-of-text position of each row, (B, hidden).
    ///
    /// transformers (`CLIPTextTransformer.forward`) picks `input_ids.argmax(-1)` when the config's
    /// `eos_token_id` is 2 (configs written before transformers PR #24773, FLUX.1's included), and
    /// otherwise the first position holding `eos_token_id` (position 0 if there is none).
    pub fn pooled(&self, input_ids: &Tensor) -> Result<Tensor> {
        let hidden = self.last_hidden_state(input_ids)?;
        let rows: Vec<Vec<i64>> = input_ids.to_dtype(DType::I64)?.to_vec2()?;
        let mut picked = Vec::with_capacity(rows.len());
        for (b, row) in rows.iter().enumerate() {
            let pos = if self.cfg.eos_token_id == 2 {
                first_argmax(row)
            } else {
                row.iter()
                    .position(|&t| t == self.cfg.eos_token_id)
                    .unwrap_or(0)
            };
            picked.push(hidden.i((b, pos))?.unsqueeze(0)?);
        }
        Ok(Tensor::cat(&picked, 0)?)
    }
}

/// Index of the first maximum, as `torch.argmax` returns it.
fn first_argmax(row: &[i64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Token ids as u32 on the CPU, checked against the vocabulary.
pub(crate) fn ids_u32(input_ids: &Tensor, vocab: usize) -> Result<Tensor> {
    let ids = input_ids.to_device(&Device::Cpu)?.to_dtype(DType::I64)?;
    let flat: Vec<i64> = ids.flatten_all()?.to_vec1()?;
    if let Some(bad) = flat.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        return Err(EngineError::InvalidInput(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(ids.to_dtype(DType::U32)?)
}

/// Additive causal mask (L, L): 0 on and below the diagonal, -inf above.
fn causal_mask(l: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(data, (l, l), device)?.to_dtype(dtype)?)
}

/// The tiny CLIP config of `fluxd model init-tiny` (see the engine brief), as JSON.
fn tiny_config_json(vocab_size: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dtype": "float32",
        "torch_dtype": "float32",
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 32,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": 1,
        "projection_dim": 32,
        "transformers_version": "5.23.0",
        "vocab_size": vocab_size,
    })
}

/// The linear layers of one CLIP encoder layer (transformers names under
/// `text_model.encoder.layers.{i}`), as (name, out, in) for width `h` and MLP width `f`.
pub(crate) fn layer_linears(h: usize, f: usize) -> [(&'static str, usize, usize); 6] {
    [
        ("self_attn.q_proj", h, h),
        ("self_attn.k_proj", h, h),
        ("self_attn.v_proj", h, h),
        ("self_attn.out_proj", h, h),
        ("mlp.fc1", f, h),
        ("mlp.fc2", h, f),
    ]
}

/// Writes a tiny random `CLIPTextModel` (`config.json` + `model.safetensors`) into `dir`, in the
/// layout transformers saves, so that transformers loads it with no missing or unexpected keys.
pub fn write_tiny_clip(dir: &Path, vocab_size: usize, seed: u64) -> Result<()> {
    let cfg_json = tiny_config_json(vocab_size);
    let cfg: ClipConfig = serde_json::from_value(cfg_json.clone())
        .map_err(|e| EngineError::config(dir.join("config.json"), e.to_string()))?;
    let mut rng = InitRng::new(seed, "text_encoder");
    let mut t = TensorMap::new();
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let p = "text_model";
    t.insert(
        format!("{p}.embeddings.token_embedding.weight"),
        rng.normal_tensor(&[vocab_size, h], 0.0, 0.5)?,
    );
    t.insert(
        format!("{p}.embeddings.position_embedding.weight"),
        rng.normal_tensor(&[cfg.max_position_embeddings, h], 0.0, 0.5)?,
    );
    for i in 0..cfg.num_hidden_layers {
        let l = format!("{p}.encoder.layers.{i}");
        for (name, o, inp) in layer_linears(h, f) {
            t.insert(format!("{l}.{name}.weight"), rng.linear_weight(o, inp)?);
            t.insert(
                format!("{l}.{name}.bias"),
                rng.normal_tensor(&[o], 0.0, 0.02)?,
            );
        }
        for name in ["layer_norm1", "layer_norm2"] {
            t.insert(
                format!("{l}.{name}.weight"),
                rng.normal_tensor(&[h], 1.0, 0.1)?,
            );
            t.insert(
                format!("{l}.{name}.bias"),
                rng.normal_tensor(&[h], 0.0, 0.02)?,
            );
        }
    }
    t.insert(
        format!("{p}.final_layer_norm.weight"),
        rng.normal_tensor(&[h], 1.0, 0.1)?,
    );
    t.insert(
        format!("{p}.final_layer_norm.bias"),
        rng.normal_tensor(&[h], 0.0, 0.02)?,
    );
    write_json(&dir.join("config.json"), &cfg_json)?;
    write_safetensors(&dir.join("model.safetensors"), &t)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    fn ids_tensor(v: &serde_json::Value) -> Result<Tensor> {
        let rows = fixtures::ids(v);
        let l = rows[0].len();
        Ok(Tensor::from_vec(
            rows.concat(),
            (rows.len(), l),
            &Device::Cpu,
        )?)
    }

    #[test]
    fn matches_transformers_clip_text_model() -> Result<()> {
        let fx = fixtures::load("clip.json");
        let dir = fixtures::temp_dir("clip");
        let vocab = fx["vocab"].as_u64().unwrap_or(0) as usize;
        write_tiny_clip(&dir, vocab, fx["seed"].as_u64().unwrap_or(0))?;
        let enc = ClipTextEncoder::load(&dir, DType::F32, &Device::Cpu)?;
        assert_eq!(enc.hidden_size(), 32);
        let ids = ids_tensor(&fx["input_ids"])?;
        let pooled = enc.pooled(&ids)?;
        assert_eq!(pooled.dims(), &[2, 32]);
        let got: Vec<f32> = pooled.flatten_all()?.to_vec1()?;
        let err = fixtures::max_abs_diff(&got, &fixtures::floats(&fx["pooled"]));
        // Measured 7.5e-7 (pooled 6.6e-7, eos rule 7.2e-7) on values up to 3.6.
        assert!(err < 2e-5, "pooled max abs error {err}");
        let hidden = enc.last_hidden_state(&ids)?;
        let first8: Vec<f32> = hidden.narrow(1, 0, 8)?.flatten_all()?.to_vec1()?;
        let err = fixtures::max_abs_diff(&first8, &fixtures::floats(&fx["hidden_first8"]));
        assert!(err < 2e-5, "hidden max abs error {err}");
        let sum = hidden.abs()?.sum_all()?.to_scalar::<f32>()? as f64;
        let want = fx["hidden_abs_sum"].as_f64().unwrap_or(f64::NAN);
        assert!((sum - want).abs() < 1e-5 * want, "abs sum {sum} vs {want}");

        // The other pooling rule: first position of a configured eos_token_id.
        let path = dir.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?,
        )
        .map_err(|e| EngineError::config(&path, e.to_string()))?;
        cfg["eos_token_id"] = fx["eos_token_id"].clone();
        write_json(&path, &cfg)?;
        let enc = ClipTextEncoder::load(&dir, DType::F32, &Device::Cpu)?;
        let got: Vec<f32> = enc
            .pooled(&ids_tensor(&fx["eos_input_ids"])?)?
            .flatten_all()?
            .to_vec1()?;
        let err = fixtures::max_abs_diff(&got, &fixtures::floats(&fx["eos_pooled"]));
        assert!(err < 2e-5, "eos pooled max abs error {err}");
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn missing_or_misshapen_tensor_is_an_error_naming_it() -> Result<()> {
        let dir = fixtures::temp_dir("clip-bad");
        write_tiny_clip(&dir, 50, 3)?;
        let file = dir.join("model.safetensors");
        let w = WeightFiles::open(std::slice::from_ref(&file))?;
        let mut t = TensorMap::new();
        for name in w.names() {
            if name != "text_model.encoder.layers.1.mlp.fc2.weight" {
                t.insert(name.to_string(), w.get(name, DType::F32, &Device::Cpu)?);
            }
        }
        drop(w);
        write_safetensors(&file, &t)?;
        let msg = ClipTextEncoder::load(&dir, DType::F32, &Device::Cpu)
            .err()
            .map(|e| e.to_string());
        let msg = msg.unwrap_or_default();
        assert!(
            msg.contains("text_model.encoder.layers.1.mlp.fc2.weight"),
            "{msg}"
        );
        assert!(msg.contains("model.safetensors"), "{msg}");
        t.insert(
            "text_model.encoder.layers.1.mlp.fc2.weight".into(),
            Tensor::zeros((32, 65), DType::F32, &Device::Cpu)?,
        );
        write_safetensors(&file, &t)?;
        let msg = ClipTextEncoder::load(&dir, DType::F32, &Device::Cpu)
            .err()
            .map(|e| e.to_string());
        let msg = msg.unwrap_or_default();
        assert!(
            msg.contains("fc2.weight") && msg.contains("[32, 65]"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn out_of_vocabulary_ids_are_rejected() -> Result<()> {
        let dir = fixtures::temp_dir("clip-oov");
        write_tiny_clip(&dir, 50, 3)?;
        let enc = ClipTextEncoder::load(&dir, DType::F32, &Device::Cpu)?;
        let ids = Tensor::from_vec(vec![0u32, 50, 2], (1, 3), &Device::Cpu)?;
        assert!(matches!(
            enc.pooled(&ids),
            Err(EngineError::InvalidInput(_))
        ));
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(first_argmax(&[0, 5, 3, 5]), 1);
        assert_eq!(first_argmax(&[7]), 0);
    }

    #[test]
    fn nested_text_config_is_accepted() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-clipcfg-{}", std::process::id()));
        let mut inner = tiny_config_json(100);
        inner["eos_token_id"] = serde_json::json!(99);
        write_json(
            &dir.join("config.json"),
            &serde_json::json!({"model_type": "clip", "text_config": inner}),
        )?;
        let cfg = ClipConfig::from_dir(&dir)?;
        assert_eq!(
            (cfg.vocab_size, cfg.hidden_size, cfg.eos_token_id),
            (100, 32, 99)
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
