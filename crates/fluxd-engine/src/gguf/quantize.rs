//! `fluxd model quantize`: a FLUX.1 transformer or a T5 encoder written as a GGUF file in the
//! layout people download (city96's FLUX GGUFs: BFL names, `general.architecture` "flux";
//! llama.cpp's `t5encoder` for T5), every matrix in the type asked for except what those
//! conversions keep at full precision ([`QuantPolicy`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use super::write::{encode, write_gguf, GgufTensor, MetaValue, QuantPolicy};
use super::{is_gguf, type_name, GgufFile};
use crate::error::{EngineError, Result};
use crate::tensor_source::{Renamed, TensorSource};
use crate::text_encoders::T5Config;
use crate::tiny_init::InitRng;
use crate::transformer::load::{detect_bfl_prefix, DiffusersDirSource};
use crate::transformer::names::{linear_specs, norm_names};
use crate::transformer::FluxConfig;
use crate::weights::WeightFiles;

/// What `quantize_model` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    /// `FLUX transformer` or `T5 encoder`.
    pub model: &'static str,
    /// How many tensors of each type the file holds.
    pub types: BTreeMap<String, usize>,
    /// Size of the written file.
    pub bytes: u64,
}

/// `general.quantization_version` of ggml's current block formats.
const QUANTIZATION_VERSION: u32 = 2;

/// Converts the model at `input` to a GGUF file at `output` with matrices of type `target`.
/// `input`: a diffusers `transformer/` folder, a BFL single file (safetensors or GGUF), a
/// transformers T5 encoder folder (`text_encoder_2/`) or a `t5encoder` GGUF file.
/// `on_tensor(done, total)` reports progress.
pub fn quantize_model(
    input: &Path,
    output: &Path,
    target: GgmlDType,
    on_tensor: &mut dyn FnMut(usize, usize),
) -> Result<QuantizeReport> {
    let unknown = |msg: &str| EngineError::UnknownLayout {
        path: input.to_path_buf(),
        msg: msg.to_string(),
    };
    if input.is_dir() {
        let (cfg_path, cfg) = crate::text_encoders::read_config(input)?;
        if cfg["_class_name"] == "FluxTransformer2DModel" {
            let flux = FluxConfig::from_file(&cfg_path)?;
            let weights = WeightFiles::open_dir(input, &["diffusion_pytorch_model"])?;
            let src = DiffusersDirSource {
                weights: &weights,
                cfg: &flux,
                dir: input.to_path_buf(),
            };
            return write_flux(&flux, &src, output, target, on_tensor);
        }
        if cfg["model_type"] == "t5" {
            let t5 = T5Config::from_dir(input)?;
            let weights = WeightFiles::open_dir(input, &["model"])?;
            return write_t5(&t5, &weights, output, target, on_tensor);
        }
        return Err(unknown(
            "neither a diffusers FluxTransformer2DModel nor a transformers T5 folder",
        ));
    }
    if is_gguf(input)? {
        let g = GgufFile::open(input)?;
        if g.architecture() == Some(super::t5::ARCH) {
            let t5 = T5Config::from_gguf(&g)?;
            let rename = |n: &str| super::t5::llama_name(n).unwrap_or_else(|| n.to_string());
            let src = Renamed {
                inner: &g,
                rename: &rename,
            };
            return write_t5(&t5, &src, output, target, on_tensor);
        }
        let prefix = detect_bfl_prefix(&g, input)?;
        let name = |k: &str| format!("{prefix}{k}");
        let cfg = FluxConfig::infer_bfl_shapes(&g.shapes(), input, &name)?;
        let src = Renamed {
            inner: &g,
            rename: &name,
        };
        return write_flux(&cfg, &src, output, target, on_tensor);
    }
    let weights = WeightFiles::open(&[input.to_path_buf()])?;
    let prefix = detect_bfl_prefix(&weights, input)?;
    let name = |k: &str| format!("{prefix}{k}");
    let cfg = FluxConfig::infer_bfl(&weights, input, &name)?;
    let src = Renamed {
        inner: &weights,
        rename: &name,
    };
    write_flux(&cfg, &src, output, target, on_tensor)
}

/// One tensor to convert: its name in the source, its name in the file, its shape.
struct Entry {
    source: String,
    tensor: GgufTensor,
}

fn convert(
    model: &'static str,
    meta: Vec<(String, MetaValue)>,
    mut entries: Vec<Entry>,
    src: &dyn TensorSource,
    output: &Path,
    on_tensor: &mut dyn FnMut(usize, usize),
) -> Result<QuantizeReport> {
    entries.sort_by(|a, b| a.tensor.name.cmp(&b.tensor.name));
    let by_name: BTreeMap<String, String> = entries
        .iter()
        .map(|e| (e.tensor.name.clone(), e.source.clone()))
        .collect();
    let tensors: Vec<GgufTensor> = entries.into_iter().map(|e| e.tensor).collect();
    let total = tensors.len();
    let mut done = 0;
    write_gguf(output, &meta, &tensors, &mut |t| {
        let source = by_name.get(&t.name).map_or(t.name.as_str(), String::as_str);
        let data = src.get(source, &t.shape, DType::F32, &Device::Cpu)?;
        let bytes = encode(&data, t.ty)?;
        done += 1;
        on_tensor(done, total);
        Ok(bytes)
    })?;
    let mut types = BTreeMap::new();
    for t in &tensors {
        *types.entry(type_name(t.ty).to_string()).or_default() += 1;
    }
    let bytes = std::fs::metadata(output)
        .map_err(|e| EngineError::io(output, e))?
        .len();
    Ok(QuantizeReport {
        model,
        types,
        bytes,
    })
}

/// The `general.*` keys every file gets.
fn general_meta(arch: &str) -> Vec<(String, MetaValue)> {
    vec![
        ("general.architecture".into(), MetaValue::Str(arch.into())),
        (
            "general.quantization_version".into(),
            MetaValue::U32(QUANTIZATION_VERSION),
        ),
    ]
}

fn write_flux(
    cfg: &FluxConfig,
    src: &dyn TensorSource,
    output: &Path,
    target: GgmlDType,
    on_tensor: &mut dyn FnMut(usize, usize),
) -> Result<QuantizeReport> {
    let policy = QuantPolicy::flux(target);
    let mut entries = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let ty = policy.choose(&name, &shape);
        entries.push(Entry {
            source: name.clone(),
            tensor: GgufTensor { name, shape, ty },
        });
    };
    for spec in linear_specs(cfg) {
        add(format!("{}.weight", spec.name), vec![spec.out, spec.inp]);
        add(format!("{}.bias", spec.name), vec![spec.out]);
    }
    for name in norm_names(cfg) {
        add(name, vec![cfg.attention_head_dim]);
    }
    convert(
        "FLUX transformer",
        general_meta("flux"),
        entries,
        src,
        output,
        on_tensor,
    )
}

fn write_t5(
    cfg: &T5Config,
    src: &dyn TensorSource,
    output: &Path,
    target: GgmlDType,
    on_tensor: &mut dyn FnMut(usize, usize),
) -> Result<QuantizeReport> {
    // llama.cpp keeps the relative position bias unquantized (`llama-quant.cpp`).
    let policy = QuantPolicy {
        keep_f32: &["attn_rel_b"],
        ..QuantPolicy::text_encoder(target)
    };
    let (d, inner, ff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
    let mut hf: Vec<(String, Vec<usize>)> = vec![
        ("shared.weight".into(), vec![cfg.vocab_size, d]),
        (
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".into(),
            vec![cfg.relative_attention_num_buckets, cfg.num_heads],
        ),
        ("encoder.final_layer_norm.weight".into(), vec![d]),
    ];
    let gated = cfg.feed_forward_proj.starts_with("gated-");
    for i in 0..cfg.num_layers {
        let b = format!("encoder.block.{i}.layer");
        for (n, shape) in [
            ("0.SelfAttention.q.weight", vec![inner, d]),
            ("0.SelfAttention.k.weight", vec![inner, d]),
            ("0.SelfAttention.v.weight", vec![inner, d]),
            ("0.SelfAttention.o.weight", vec![d, inner]),
            ("0.layer_norm.weight", vec![d]),
            ("1.DenseReluDense.wo.weight", vec![d, ff]),
            ("1.layer_norm.weight", vec![d]),
        ] {
            hf.push((format!("{b}.{n}"), shape));
        }
        let wi: &[&str] = if gated {
            &[
                "1.DenseReluDense.wi_0.weight",
                "1.DenseReluDense.wi_1.weight",
            ]
        } else {
            &["1.DenseReluDense.wi.weight"]
        };
        for n in wi {
            hf.push((format!("{b}.{n}"), vec![ff, d]));
        }
    }
    let mut entries = Vec::with_capacity(hf.len());
    for (source, shape) in hf {
        let name = super::t5::llama_name(&source).ok_or_else(|| {
            EngineError::InvalidInput(format!("no llama.cpp name for `{source}`"))
        })?;
        let ty = policy.choose(&name, &shape);
        entries.push(Entry {
            source,
            tensor: GgufTensor { name, shape, ty },
        });
    }
    let mut meta = general_meta(super::t5::ARCH);
    meta.extend(cfg.gguf_metadata());
    // Files hold `shared.weight`, `encoder.embed_tokens.weight` or both (the same table).
    let embed = if src.contains("shared.weight") {
        "shared.weight"
    } else {
        "encoder.embed_tokens.weight"
    };
    let renamed = |n: &str| {
        if n == "shared.weight" {
            embed.to_string()
        } else {
            n.to_string()
        }
    };
    let src = Renamed {
        inner: src,
        rename: &renamed,
    };
    convert("T5 encoder", meta, entries, &src, output, on_tensor)
}

/// Random weights for a model of any size, drawn one tensor at a time (each from its own stream
/// of `InitRng::new(seed, "<model>/<name>")`; for the transformer the same distributions as
/// `transformer::random_canonical_weights`), so that full-size files for benchmarks and memory
/// checks are written without holding the model in memory.
struct RandomWeights {
    seed: u64,
    model: &'static str,
}

impl TensorSource for RandomWeights {
    fn get(
        &self,
        name: &str,
        shape: &[usize],
        _: DType,
        _: &Device,
    ) -> Result<candle_core::Tensor> {
        let mut rng = InitRng::new(self.seed, &format!("{}/{name}", self.model));
        match shape {
            [out, inp] => rng.linear_weight(*out, *inp),
            // Norm scales near 1: FLUX's RMSNorm `.scale`, T5's `layer_norm.weight`.
            _ if name.ends_with(".scale") || name.ends_with("norm.weight") => {
                rng.normal_tensor(shape, 1.0, 0.1)
            }
            _ => rng.normal_tensor(shape, 0.0, 0.02),
        }
    }

    fn contains(&self, _: &str) -> bool {
        true
    }
}

/// Writes a random FLUX transformer of config `cfg` as a GGUF file in city96's layout, matrices
/// in `target`, without ever holding more than one tensor (benchmarks, full-size checks).
pub fn write_random_flux(
    output: &Path,
    cfg: &FluxConfig,
    seed: u64,
    target: GgmlDType,
    on_tensor: &mut dyn FnMut(usize, usize),
) -> Result<QuantizeReport> {
    cfg.validate().map_err(EngineError::InvalidInput)?;
    let src = RandomWeights {
        seed,
        model: "transformer",
    };
    write_flux(cfg, &src, output, target, on_tensor)
}

/// Writes a random T5 encoder of config `cfg` as a llama.cpp `t5encoder` GGUF file (city96's
/// T5-XXL layout), matrices in `target`, one tensor at a time (full-size checks).
pub fn write_random_t5(
    output: &Path,
    cfg: &T5Config,
    seed: u64,
    target: GgmlDType,
    on_tensor: &mut dyn FnMut(usize, usize),
) -> Result<QuantizeReport> {
    let src = RandomWeights { seed, model: "t5" };
    write_t5(cfg, &src, output, target, on_tensor)
}

/// The default output name next to `input`: `<stem>-<TYPE>.gguf`.
pub fn default_output(input: &Path, target: GgmlDType) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    input.with_file_name(format!("{stem}-{}.gguf", type_name(target)))
}
