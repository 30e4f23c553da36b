//! The T5 encoder stack (transformers `models/t5/modeling_t5.py`, `T5EncoderModel`), of which
//! FLUX uses `last_hidden_state`. T5 v1.1 (FLUX's T5-XXL) uses the gated-GELU feed-forward,
//! RMS layer norms without bias, unscaled attention scores and a relative position bias that
//! only the first block holds and every block reuses.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::clip::ids_u32;
use super::{check_ids, linear, read_config, softmax_f32, Act, Linear};
use crate::error::{EngineError, Result};
use crate::gguf::{self, GgufFile};
use crate::model_dir::{t5_weights_file, BundledWeights, T5_KEY};
use crate::quant::LinearWeight;
use crate::tensor_source::{FileTensors, Renamed, TensorSource};
use crate::tiny_init::{write_json, write_sharded, InitRng, TensorMap};
use crate::weights::WeightFiles;

/// A T5 config as transformers' `T5Config` writes it (only what the encoder needs; defaults are
/// transformers' `models/t5/configuration_t5.py`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct T5Config {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Width of the feed-forward layer.
    pub d_ff: usize,
    /// Number of encoder blocks.
    pub num_layers: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share a bucket.
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon.
    pub layer_norm_epsilon: f64,
    /// `gated-gelu` (T5 v1.1) or `relu` (original T5), or `gated-<act>` / `<act>`.
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
        }
    }
}

impl T5Config {
    /// Google's T5 v1.1 XXL encoder, FLUX.1's `text_encoder_2` (its `config.json`).
    pub fn xxl() -> Self {
        Self {
            d_model: 4096,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            feed_forward_proj: "gated-gelu".into(),
            ..Self::default()
        }
    }

    /// Reads `config.json` from a component folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (path, value) = read_config(dir)?;
        let cfg: Self =
            serde_json::from_value(value).map_err(|e| EngineError::config(&path, e.to_string()))?;
        if cfg.num_heads == 0 || cfg.d_kv == 0 || cfg.relative_attention_num_buckets < 4 {
            return Err(EngineError::config(
                &path,
                "num_heads, d_kv and buckets must be positive",
            ));
        }
        cfg.ff_kind(&path)?;
        Ok(cfg)
    }

    /// The config a llama.cpp `t5encoder` GGUF file states in its metadata (gguf-py's
    /// `T5EncoderModel` conversion writes it from the same config.json), the vocabulary and the
    /// feed-forward kind read from the tensors.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        use gguf::t5::keys;
        let need = |key: &str| {
            g.metadata_usize(key).ok_or_else(|| {
                EngineError::config(g.path(), format!("no `{key}` in the GGUF metadata"))
            })
        };
        let vocab_size = g
            .shape("token_embd.weight")
            .and_then(|s| s.first().copied())
            .ok_or_else(|| g.missing("token_embd.weight"))?;
        let eps = g
            .metadata(keys::RMS_EPS)
            .and_then(|v| v.to_f32().ok())
            .map_or(1e-6, f64::from);
        let gated = g.contains("enc.blk.0.ffn_gate.weight");
        let cfg = Self {
            vocab_size,
            d_model: need(keys::EMBEDDING_LENGTH)?,
            d_kv: need(keys::KEY_LENGTH)?,
            d_ff: need(keys::FEED_FORWARD_LENGTH)?,
            num_layers: need(keys::BLOCK_COUNT)?,
            num_heads: need(keys::HEAD_COUNT)?,
            relative_attention_num_buckets: g.metadata_usize(keys::REL_BUCKETS).unwrap_or(32),
            // Not in the metadata; every T5 (v1.0, v1.1, XXL) uses 128.
            relative_attention_max_distance: 128,
            layer_norm_epsilon: eps,
            feed_forward_proj: if gated { "gated-gelu" } else { "relu" }.into(),
        };
        if cfg.num_heads == 0 || cfg.d_kv == 0 || cfg.relative_attention_num_buckets < 4 {
            return Err(EngineError::config(
                g.path(),
                "num_heads, d_kv and buckets must be positive",
            ));
        }
        Ok(cfg)
    }

    /// The metadata a llama.cpp `t5encoder` GGUF file states (see [`Self::from_gguf`]).
    pub fn gguf_metadata(&self) -> Vec<(String, gguf::write::MetaValue)> {
        use gguf::t5::keys;
        use gguf::write::MetaValue::U32;
        let u = |v: usize| U32(u32::try_from(v).unwrap_or(u32::MAX));
        vec![
            (keys::CONTEXT_LENGTH.into(), u(512)),
            (keys::EMBEDDING_LENGTH.into(), u(self.d_model)),
            (keys::FEED_FORWARD_LENGTH.into(), u(self.d_ff)),
            (keys::BLOCK_COUNT.into(), u(self.num_layers)),
            (keys::HEAD_COUNT.into(), u(self.num_heads)),
            (keys::KEY_LENGTH.into(), u(self.d_kv)),
            (keys::VALUE_LENGTH.into(), u(self.d_kv)),
            (
                keys::RMS_EPS.into(),
                gguf::write::MetaValue::F32(self.layer_norm_epsilon as f32),
            ),
            (
                keys::REL_BUCKETS.into(),
                u(self.relative_attention_num_buckets),
            ),
        ]
    }

    /// (gated, activation), following `T5Config.__init__`: `gated-gelu` means `gelu_new`.
    fn ff_kind(&self, path: &Path) -> Result<(bool, Act)> {
        let s = self.feed_forward_proj.as_str();
        let (gated, act) = match s.strip_prefix("gated-") {
            Some(a) => (true, a),
            None => (false, s),
        };
        let act = if gated && act == "gelu" {
            "gelu_new"
        } else {
            act
        };
        Ok((gated, Act::parse(act, path)?))
    }
}

struct Block {
    ln_attn: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln_ff: Tensor,
    wi_0: Linear,
    wi_1: Option<Linear>,
    wo: Linear,
}

/// The T5 encoder, loaded once and run on token ids.
pub struct T5TextEncoder {
    cfg: T5Config,
    act: Act,
    /// The token embedding table (quantized in GGUF files: rows are dequantized as looked up).
    embed: LinearWeight,
    /// (buckets, heads), from block 0.
    rel_bias: Tensor,
    blocks: Vec<Block>,
    final_ln: Tensor,
    dtype: DType,
    device: Device,
}

impl T5TextEncoder {
    /// Loads `config.json` and the weights (`model.safetensors` or sharded with
    /// `model.safetensors.index.json`) from `dir`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_weights(dir, &WeightFiles::open_dir(dir, &["model"])?, dtype, device)
    }

    /// Loads with the `config.json` of `dir` and transformers `T5EncoderModel` tensor names from
    /// `w` (e.g. a checkpoint's T5 seen through its prefix).
    pub(crate) fn load_weights(
        dir: &Path,
        w: &dyn TensorSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let cfg = T5Config::from_dir(dir)?;
        Self::load_from(cfg, &dir.join("config.json"), w, dtype, device)
    }

    /// Loads T5's weights from a single file or a checkpoint (`--t5`, a ComfyUI checkpoint),
    /// told apart by content: a GGUF file with llama.cpp's `t5encoder` names (city96's
    /// `t5-v1_1-xxl-encoder-gguf`), or transformers names under `b.prefix` in GGUF or
    /// safetensors (ComfyUI's `t5xxl_fp16.safetensors`). The config is `config_dir/config.json`
    /// when given (FLUX.1's `text_encoder_2/`), else a GGUF file's own metadata.
    pub fn load_bundled(
        b: &BundledWeights,
        config_dir: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let folder = config_dir.filter(|d| d.join("config.json").is_file());
        let file = FileTensors::open(&b.file)?;
        if let FileTensors::Gguf(g) = &file {
            tracing::info!(
                file = %b.file.display(),
                types = %g.type_summary(),
                "loading a GGUF T5 encoder"
            );
            if g.contains("enc.blk.0.attn_q.weight") {
                let (cfg, cfg_path) = match folder {
                    Some(d) => (T5Config::from_dir(d)?, d.join("config.json")),
                    None => (T5Config::from_gguf(g)?, b.file.clone()),
                };
                let rename = |n: &str| gguf::t5::llama_name(n).unwrap_or_else(|| n.to_string());
                let src = Renamed {
                    inner: g,
                    rename: &rename,
                };
                return Self::load_from(cfg, &cfg_path, &src, dtype, device);
            }
        }
        let rename = |n: &str| format!("{}{n}", b.prefix);
        let src = Renamed {
            inner: file.source(),
            rename: &rename,
        };
        if !src.contains(T5_KEY) {
            return Err(EngineError::UnknownLayout {
                path: b.file.clone(),
                msg: format!(
                    "not a T5 encoder: no `{T5_KEY}` (transformers names) under any prefix, nor \
                     llama.cpp's `t5encoder` names (`enc.blk.0.attn_q.weight`, `token_embd.weight`)"
                ),
            });
        }
        let dir = folder.ok_or_else(|| EngineError::MissingFile {
            path: b.file.with_file_name("config.json"),
            what: "T5 config (the model folder's text_encoder_2/config.json)".into(),
        })?;
        Self::load_weights(dir, &src, dtype, device)
    }

    /// [`Self::load_bundled`] on a file of T5's tensors ([`t5_weights_file`]).
    pub fn load_file(
        file: &Path,
        config_dir: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load_bundled(&t5_weights_file(file)?, config_dir, dtype, device)
    }

    /// Loads transformers-named tensors from `w` for the encoder `cfg` (read from `cfg_path`).
    fn load_from(
        cfg: T5Config,
        cfg_path: &Path,
        w: &dyn TensorSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (gated, act) = cfg.ff_kind(cfg_path)?;
        let (d, inner, ff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
        let extra = format!("encoder.block.{}.layer.0.layer_norm.weight", cfg.num_layers);
        if w.contains(&extra) {
            return Err(EngineError::UnknownLayout {
                path: cfg_path.to_path_buf(),
                msg: format!(
                    "the weights hold more than the config's {} blocks",
                    cfg.num_layers
                ),
            });
        }
        // The encoder's embedding is tied to `shared`; files hold both or only `shared`.
        let embed_name = if w.contains("encoder.embed_tokens.weight") {
            "encoder.embed_tokens.weight"
        } else {
            "shared.weight"
        };
        let embed = w
            .get_weight(embed_name, &[cfg.vocab_size, d], dtype, device)?
            .upcast_fp8(dtype)?;
        let rel_bias = w.get(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[cfg.relative_attention_num_buckets, cfg.num_heads],
            dtype,
            device,
        )?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let b = format!("encoder.block.{i}.layer");
            let lin =
                |name: &str, o, i| linear(w, &format!("{b}.{name}"), o, i, false, dtype, device);
            let (wi_0, wi_1) = if gated {
                (
                    lin("1.DenseReluDense.wi_0", ff, d)?,
                    Some(lin("1.DenseReluDense.wi_1", ff, d)?),
                )
            } else {
                (lin("1.DenseReluDense.wi", ff, d)?, None)
            };
            blocks.push(Block {
                ln_attn: w.get(&format!("{b}.0.layer_norm.weight"), &[d], dtype, device)?,
                q: lin("0.SelfAttention.q", inner, d)?,
                k: lin("0.SelfAttention.k", inner, d)?,
                v: lin("0.SelfAttention.v", inner, d)?,
                o: lin("0.SelfAttention.o", d, inner)?,
                ln_ff: w.get(&format!("{b}.1.layer_norm.weight"), &[d], dtype, device)?,
                wi_0,
                wi_1,
                wo: lin("1.DenseReluDense.wo", d, ff)?,
            });
        }
        let final_ln = w.get("encoder.final_layer_norm.weight", &[d], dtype, device)?;
        Ok(Self {
            cfg,
            act,
            embed,
            rel_bias,
            blocks,
            final_ln,
            dtype,
            device: device.clone(),
        })
    }

    /// The config the encoder was loaded with.
    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// Width of the output (4096 for T5-XXL).
    pub fn d_model(&self) -> usize {
        self.cfg.d_model
    }

    /// `last_hidden_state` (B, L, d_model), every token attending every token.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, l) = check_ids(input_ids, None)?;
        let ids = ids_u32(input_ids, self.cfg.vocab_size)?.to_device(&self.device)?;
        let mut x =
            self.embed
                .rows(&ids.flatten_all()?, self.dtype)?
                .reshape((b, l, self.cfg.d_model))?;
        let bias = self.position_bias(l)?;
        for blk in &self.blocks {
            let h = self.rms_norm(&x, &blk.ln_attn)?;
            x = (x + self.attention(blk, &h, &bias)?)?;
            let h = self.rms_norm(&x, &blk.ln_ff)?;
            let a = self.act.apply(&blk.wi_0.forward(&h)?)?;
            let a = match &blk.wi_1 {
                Some(wi_1) => (a * wi_1.forward(&h)?)?,
                None => a,
            };
            x = (x + blk.wo.forward(&a)?)?;
        }
        self.rms_norm(&x, &self.final_ln)
    }

    fn attention(&self, blk: &Block, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (heads, hd) = (self.cfg.num_heads, self.cfg.d_kv);
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(blk.q.forward(x)?)?;
        let k = split(blk.k.forward(x)?)?;
        let v = split(blk.v.forward(x)?)?;
        // T5 does not scale the scores (the 1/sqrt(d) is folded into its initialisation).
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let probs = softmax_f32(&scores)?;
        let o = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, heads * hd))?;
        blk.o.forward(&o)
    }

    /// `T5LayerNorm`: x / sqrt(mean(x²) + eps) · w, the statistics in f32.
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = x32.broadcast_div(&(var + self.cfg.layer_norm_epsilon)?.sqrt()?)?;
        Ok(normed.to_dtype(dtype)?.broadcast_mul(w)?)
    }

    /// The (1, heads, L, L) additive bias for a sequence of `l` tokens.
    fn position_bias(&self, l: usize) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..l)
            .flat_map(|q| (0..l).map(move |k| (k as i64 - q as i64, q)))
            .map(|(rel, _)| {
                relative_position_bucket(
                    rel,
                    self.cfg.relative_attention_num_buckets,
                    self.cfg.relative_attention_max_distance,
                ) as u32
            })
            .collect();
        let idx = Tensor::from_vec(buckets, l * l, &self.device)?;
        let bias = self.rel_bias.index_select(&idx, 0)?; // (L·L, heads)
        Ok(bias
            .reshape((l, l, self.cfg.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()?)
    }
}

/// The bidirectional bucket of `relative_position` (= key position − query position), as
/// transformers' `T5Attention._relative_position_bucket` computes it: half the buckets per sign,
/// exact below `num_buckets/4`, logarithmic up to `max_distance`. The logarithm is taken in f32,
/// as torch does, so that boundary positions land in the same bucket.
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let half = num_buckets / 2;
    let mut bucket = if relative_position > 0 { half } else { 0 };
    let n = relative_position.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let ratio = n as f32 / max_exact as f32;
        let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
        let large = max_exact + (ratio.ln() / denom * (half - max_exact) as f32) as usize;
        bucket += large.min(half - 1);
    }
    bucket
}

/// The tiny T5 config of `fluxd model init-tiny` (see the engine brief), as transformers writes
/// it for a `T5EncoderModel`.
fn tiny_config_json(vocab_size: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": 64,
        "d_kv": 8,
        "d_model": 32,
        "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1,
        "dtype": "float32",
        "torch_dtype": "float32",
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_decoder": false,
        "is_encoder_decoder": false,
        "is_gated_act": true,
        "layer_norm_epsilon": 1e-06,
        "model_type": "t5",
        "num_decoder_layers": 2,
        "num_heads": 4,
        "num_layers": 2,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "scale_decoder_outputs": false,
        "tie_word_embeddings": false,
        "transformers_version": "5.23.0",
        "use_cache": false,
        "vocab_size": vocab_size,
    })
}

/// Writes a tiny random `T5EncoderModel` into `dir`: `config.json`, two safetensors shards and
/// `model.safetensors.index.json`, with the key names transformers saves.
pub fn write_tiny_t5(dir: &Path, vocab_size: usize, seed: u64) -> Result<()> {
    let cfg_json = tiny_config_json(vocab_size);
    let cfg: T5Config = serde_json::from_value(cfg_json.clone())
        .map_err(|e| EngineError::config(dir.join("config.json"), e.to_string()))?;
    let mut rng = InitRng::new(seed, "text_encoder_2");
    let mut t = TensorMap::new();
    let (d, inner, ff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
    let embed = rng.normal_tensor(&[vocab_size, d], 0.0, 1.0)?;
    t.insert("shared.weight".into(), embed.clone());
    t.insert("encoder.embed_tokens.weight".into(), embed);
    t.insert(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".into(),
        rng.normal_tensor(
            &[cfg.relative_attention_num_buckets, cfg.num_heads],
            0.0,
            0.5,
        )?,
    );
    for i in 0..cfg.num_layers {
        let b = format!("encoder.block.{i}.layer");
        for (name, o, inp) in [
            ("0.SelfAttention.q", inner, d),
            ("0.SelfAttention.k", inner, d),
            ("0.SelfAttention.v", inner, d),
            ("0.SelfAttention.o", d, inner),
            ("1.DenseReluDense.wi_0", ff, d),
            ("1.DenseReluDense.wi_1", ff, d),
            ("1.DenseReluDense.wo", d, ff),
        ] {
            t.insert(format!("{b}.{name}.weight"), rng.linear_weight(o, inp)?);
        }
        t.insert(
            format!("{b}.0.layer_norm.weight"),
            rng.normal_tensor(&[d], 1.0, 0.1)?,
        );
        t.insert(
            format!("{b}.1.layer_norm.weight"),
            rng.normal_tensor(&[d], 1.0, 0.1)?,
        );
    }
    t.insert(
        "encoder.final_layer_norm.weight".into(),
        rng.normal_tensor(&[d], 1.0, 0.1)?,
    );
    write_json(&dir.join("config.json"), &cfg_json)?;
    write_sharded(dir, "model", &t, 2)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    #[test]
    fn buckets_match_transformers() {
        let fx = fixtures::load("t5.json");
        let from = fx["bucket_rel_from"].as_i64().unwrap_or(0);
        let want: Vec<u64> = fx["buckets_32_128"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64())
            .collect();
        assert_eq!(want.len(), 1201);
        for (i, w) in want.iter().enumerate() {
            let rel = from + i as i64;
            assert_eq!(
                relative_position_bucket(rel, 32, 128) as u64,
                *w,
                "relative position {rel}"
            );
        }
    }

    #[test]
    fn matches_transformers_t5_encoder() -> Result<()> {
        let fx = fixtures::load("t5.json");
        let dir = fixtures::temp_dir("t5");
        write_tiny_t5(
            &dir,
            fx["vocab"].as_u64().unwrap_or(0) as usize,
            fx["seed"].as_u64().unwrap_or(0),
        )?;
        let enc = T5TextEncoder::load(&dir, DType::F32, &Device::Cpu)?;
        assert_eq!(enc.d_model(), 32);
        let rows = fixtures::ids(&fx["input_ids"]);
        let l = rows[0].len();
        let ids = Tensor::from_vec(rows.concat(), (rows.len(), l), &Device::Cpu)?;
        let out = enc.forward(&ids)?;
        assert_eq!(out.dims(), &[2, l, 32]);
        let idx = Tensor::from_vec(
            (0..l as u32).step_by(5).collect::<Vec<_>>(),
            l.div_ceil(5),
            &Device::Cpu,
        )?;
        let got: Vec<f32> = out.index_select(&idx, 1)?.flatten_all()?.to_vec1()?;
        let err = fixtures::max_abs_diff(&got, &fixtures::floats(&fx["hidden_every5"]));
        // Measured 1.4e-6 on values up to 3.1.
        assert!(err < 2e-5, "max abs error {err}");
        let sum = out.abs()?.sum_all()?.to_scalar::<f32>()? as f64;
        let want = fx["hidden_abs_sum"].as_f64().unwrap_or(f64::NAN);
        assert!((sum - want).abs() < 1e-5 * want, "abs sum {sum} vs {want}");
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn missing_shard_tensor_is_an_error_naming_it() -> Result<()> {
        let dir = fixtures::temp_dir("t5-bad");
        write_tiny_t5(&dir, 40, 1)?;
        let path = dir.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?,
        )
        .map_err(|e| EngineError::config(&path, e.to_string()))?;
        cfg["d_ff"] = serde_json::json!(48);
        write_json(&path, &cfg)?;
        let msg = T5TextEncoder::load(&dir, DType::F32, &Device::Cpu)
            .err()
            .map(|e| e.to_string());
        let msg = msg.unwrap_or_default();
        assert!(
            msg.contains("DenseReluDense.wi_0.weight") && msg.contains("model-0000"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn buckets_follow_t5_layout() {
        // Exact region, sign split and saturation for the FLUX/T5 settings (32 buckets, 128).
        assert_eq!(relative_position_bucket(0, 32, 128), 0);
        assert_eq!(relative_position_bucket(-3, 32, 128), 3);
        assert_eq!(relative_position_bucket(3, 32, 128), 19);
        assert_eq!(relative_position_bucket(-1000, 32, 128), 15);
        assert_eq!(relative_position_bucket(1000, 32, 128), 31);
    }
}
