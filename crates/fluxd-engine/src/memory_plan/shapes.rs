//! The tensor lists of the real FLUX.1-dev, T5-XXL (v1.1), CLIP-L and FLUX VAE, and writers of
//! *header-only* files holding them: a safetensors JSON header or a GGUF tensor table with no
//! data behind it. A plan reads nothing else, so tests can plan the full-size model from a few
//! hundred kilobytes; loading such a file fails, as it should.

use std::io::Write;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use safetensors::Dtype as StDtype;

use super::inventory::{Stored, TensorEntry};
use crate::error::{EngineError, Result};
use crate::tiny_init::write_json;
use crate::transformer::names::{diffusers_source, linear_specs, norm_names, DiffusersSource};
use crate::transformer::FluxConfig;

fn entry(name: String, stored: Stored, shape: &[usize]) -> TensorEntry {
    TensorEntry {
        name,
        stored,
        shape: shape.to_vec(),
    }
}

/// The modules city96's FLUX GGUF files (and sd.cpp's `tensor_should_be_converted`) keep
/// unquantized: the input embedders and the final layer.
const UNQUANTIZED_MODULES: &[&str] = &[
    "img_in",
    "txt_in",
    "time_in.",
    "vector_in.",
    "guidance_in.",
    "final_layer.",
];

/// FLUX's transformer in BFL names: block linear weights stored as `blocks`, the embedders'
/// and final layer's weights as `small`, biases and norm scales as `vectors`.
pub fn flux_transformer(
    cfg: &FluxConfig,
    blocks: Stored,
    small: Stored,
    vectors: Stored,
) -> Vec<TensorEntry> {
    let mut out = Vec::new();
    for s in linear_specs(cfg) {
        let kind = if UNQUANTIZED_MODULES.iter().any(|m| s.name.starts_with(m)) {
            small
        } else {
            blocks
        };
        out.push(entry(format!("{}.weight", s.name), kind, &[s.out, s.inp]));
        out.push(entry(format!("{}.bias", s.name), vectors, &[s.out]));
    }
    for n in norm_names(cfg) {
        out.push(entry(n, vectors, &[cfg.attention_head_dim]));
    }
    out
}

/// The same tensors in diffusers' `FluxTransformer2DModel` names (fused projections split,
/// as in `black-forest-labs/FLUX.1-dev/transformer/`).
pub fn to_diffusers(cfg: &FluxConfig, bfl: Vec<TensorEntry>) -> Vec<TensorEntry> {
    let mut out = Vec::new();
    for t in bfl {
        let (module, suffix) = match t.name.rsplit_once('.') {
            Some((m, s @ ("weight" | "bias"))) => (m.to_string(), format!(".{s}")),
            _ => (t.name.clone(), String::new()),
        };
        match diffusers_source(cfg, &module) {
            Some(DiffusersSource::Renamed(m) | DiffusersSource::Swapped(m)) => {
                out.push(entry(format!("{m}{suffix}"), t.stored, &t.shape));
            }
            Some(DiffusersSource::Fused(parts)) => {
                for (m, rows) in parts {
                    let mut shape = t.shape.clone();
                    shape[0] = rows;
                    out.push(entry(format!("{m}{suffix}"), t.stored, &shape));
                }
            }
            None => out.push(t),
        }
    }
    out
}

/// T5-XXL v1.1's encoder config (`google/t5-v1_1-xxl`, as FLUX.1-dev's `text_encoder_2`).
pub fn t5_xxl_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["T5EncoderModel"], "d_ff": 10240, "d_kv": 64, "d_model": 4096,
        "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu", "is_gated_act": true,
        "layer_norm_epsilon": 1e-6, "model_type": "t5", "num_heads": 64, "num_layers": 24,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
        "vocab_size": 32128
    })
}

/// T5-XXL's encoder in transformers names: linear weights and the embedding as `linear`,
/// norms and the position bias as `vectors`.
pub fn t5_xxl(linear: Stored, vectors: Stored) -> Vec<TensorEntry> {
    let (d, ff, inner) = (4096, 10240, 4096);
    let mut out = vec![
        entry("shared.weight".into(), linear, &[32128, d]),
        entry(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".into(),
            vectors,
            &[32, 64],
        ),
        entry("encoder.final_layer_norm.weight".into(), vectors, &[d]),
    ];
    for i in 0..24 {
        let b = format!("encoder.block.{i}.layer");
        for p in ["q", "k", "v"] {
            out.push(entry(
                format!("{b}.0.SelfAttention.{p}.weight"),
                linear,
                &[inner, d],
            ));
        }
        out.push(entry(
            format!("{b}.0.SelfAttention.o.weight"),
            linear,
            &[d, inner],
        ));
        out.push(entry(format!("{b}.0.layer_norm.weight"), vectors, &[d]));
        out.push(entry(
            format!("{b}.1.DenseReluDense.wi_0.weight"),
            linear,
            &[ff, d],
        ));
        out.push(entry(
            format!("{b}.1.DenseReluDense.wi_1.weight"),
            linear,
            &[ff, d],
        ));
        out.push(entry(
            format!("{b}.1.DenseReluDense.wo.weight"),
            linear,
            &[d, ff],
        ));
        out.push(entry(format!("{b}.1.layer_norm.weight"), vectors, &[d]));
    }
    out
}

/// CLIP-L's text model config (`openai/clip-vit-large-patch14`, FLUX.1-dev's `text_encoder`).
pub fn clip_l_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
        "intermediate_size": 3072, "layer_norm_eps": 1e-5, "max_position_embeddings": 77,
        "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12,
        "projection_dim": 768, "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 1
    })
}

/// CLIP-L's text model, every tensor stored as `kind`.
pub fn clip_l(kind: Stored) -> Vec<TensorEntry> {
    let (h, f) = (768, 3072);
    let p = "text_model";
    let mut out = vec![
        entry(
            format!("{p}.embeddings.token_embedding.weight"),
            kind,
            &[49408, h],
        ),
        entry(
            format!("{p}.embeddings.position_embedding.weight"),
            kind,
            &[77, h],
        ),
        entry(format!("{p}.final_layer_norm.weight"), kind, &[h]),
        entry(format!("{p}.final_layer_norm.bias"), kind, &[h]),
    ];
    for i in 0..12 {
        let l = format!("{p}.encoder.layers.{i}");
        for (m, o, inp) in crate::text_encoders::clip_layer_linears(h, f) {
            out.push(entry(format!("{l}.{m}.weight"), kind, &[o, inp]));
            out.push(entry(format!("{l}.{m}.bias"), kind, &[o]));
        }
        for n in ["layer_norm1", "layer_norm2"] {
            out.push(entry(format!("{l}.{n}.weight"), kind, &[h]));
            out.push(entry(format!("{l}.{n}.bias"), kind, &[h]));
        }
    }
    out
}

/// The decoder of FLUX's VAE in LDM names (`ae.safetensors`): channels (128, 256, 512, 512),
/// two resnets per level plus one, 16 latent channels.
pub fn flux_vae_decoder(kind: Stored) -> Vec<TensorEntry> {
    let boc = [128usize, 256, 512, 512];
    let mut out = Vec::new();
    let mut conv = |name: String, o: usize, i: usize, k: usize| {
        out.push(entry(format!("{name}.weight"), kind, &[o, i, k, k]));
        out.push(entry(format!("{name}.bias"), kind, &[o]));
    };
    let top = boc[3];
    conv("decoder.conv_in".into(), top, 16, 3);
    for m in ["block_1", "block_2"] {
        conv(format!("decoder.mid.{m}.conv1"), top, top, 3);
        conv(format!("decoder.mid.{m}.conv2"), top, top, 3);
    }
    for p in ["q", "k", "v", "proj_out"] {
        conv(format!("decoder.mid.attn_1.{p}"), top, top, 1);
    }
    for level in (0..4).rev() {
        let c = boc[level];
        let mut inp = if level == 3 { top } else { boc[level + 1] };
        for j in 0..3 {
            let b = format!("decoder.up.{level}.block.{j}");
            conv(format!("{b}.conv1"), c, inp, 3);
            conv(format!("{b}.conv2"), c, c, 3);
            if inp != c {
                conv(format!("{b}.nin_shortcut"), c, inp, 1);
            }
            inp = c;
        }
        if level > 0 {
            conv(format!("decoder.up.{level}.upsample.conv"), c, c, 3);
        }
    }
    conv("decoder.conv_out".into(), 3, boc[0], 3);
    // GroupNorm affine pairs: 2 per resnet, 1 in the attention, the output norm.
    let mut norms = vec![
        ("decoder.mid.attn_1.norm".to_string(), top),
        ("decoder.norm_out".into(), boc[0]),
    ];
    for m in ["block_1", "block_2"] {
        norms.push((format!("decoder.mid.{m}.norm1"), top));
        norms.push((format!("decoder.mid.{m}.norm2"), top));
    }
    for level in 0..4 {
        let inp0 = if level == 3 { top } else { boc[level + 1] };
        for j in 0..3 {
            let b = format!("decoder.up.{level}.block.{j}");
            norms.push((format!("{b}.norm1"), if j == 0 { inp0 } else { boc[level] }));
            norms.push((format!("{b}.norm2"), boc[level]));
        }
    }
    for (n, c) in norms {
        out.push(entry(format!("{n}.weight"), kind, &[c]));
        out.push(entry(format!("{n}.bias"), kind, &[c]));
    }
    out
}

/// Writes a header-only file: a safetensors header if every tensor has a safetensors dtype,
/// else a GGUF (v3) tensor table with `general.architecture` = `arch`.
pub fn write_header_only(path: &Path, tensors: &[TensorEntry], arch: &str) -> Result<()> {
    let bytes = if tensors
        .iter()
        .all(|t| matches!(t.stored, Stored::Safetensors(_)))
    {
        safetensors_header(tensors)
    } else {
        gguf_header(tensors, arch)?
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    }
    let mut f = std::fs::File::create(path).map_err(|e| EngineError::io(path, e))?;
    f.write_all(&bytes).map_err(|e| EngineError::io(path, e))
}

fn safetensors_header(tensors: &[TensorEntry]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for t in tensors {
        let len = t.file_bytes();
        let dtype = match t.stored {
            Stored::Safetensors(d) => format!("{d:?}"),
            Stored::Gguf(_) => String::new(),
        };
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let text = serde_json::Value::Object(header).to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// GGUF's type ids (ggml.h `ggml_type`).
fn ggml_type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn gguf_header(tensors: &[TensorEntry], arch: &str) -> Result<Vec<u8>> {
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    string(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes()); // GGUF_TYPE_STRING
    string(&mut out, arch);
    let mut offset = 0u64;
    for t in tensors {
        let Stored::Gguf(kind) = t.stored else {
            return Err(EngineError::InvalidInput(format!(
                "tensor `{}`: a GGUF file holds only GGUF types",
                t.name
            )));
        };
        string(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        // GGUF lists dimensions innermost first.
        for d in t.shape.iter().rev() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&ggml_type_id(kind).to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += t.file_bytes().div_ceil(32) * 32;
    }
    Ok(out)
}

/// Writes a header-only FLUX.1-dev model folder in `dir`, laid out as
/// `black-forest-labs/FLUX.1-dev`: empty tokenizer folders, `transformer/` (diffusers names),
/// `text_encoder/` (CLIP-L) and `text_encoder_2/` (T5-XXL) with their configs, and the BFL
/// single files `flux1-dev.safetensors` and `ae.safetensors` (the VAE), all bf16.
pub fn write_flux1_dev_headers(dir: &Path) -> Result<()> {
    let cfg = FluxConfig::dev();
    let bf16 = Stored::Safetensors(StDtype::BF16);
    for d in ["tokenizer", "tokenizer_2"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| EngineError::io(dir, e))?;
    }
    write_json(
        &dir.join("transformer/config.json"),
        &cfg.to_diffusers_json(),
    )?;
    let bfl = flux_transformer(&cfg, bf16, bf16, bf16);
    write_header_only(
        &dir.join("transformer/diffusion_pytorch_model.safetensors"),
        &to_diffusers(&cfg, bfl.clone()),
        "",
    )?;
    write_header_only(&dir.join("flux1-dev.safetensors"), &bfl, "flux")?;
    write_header_only(&dir.join("ae.safetensors"), &flux_vae_decoder(bf16), "")?;
    write_json(&dir.join("text_encoder/config.json"), &clip_l_config())?;
    write_header_only(
        &dir.join("text_encoder/model.safetensors"),
        &clip_l(bf16),
        "",
    )?;
    write_json(&dir.join("text_encoder_2/config.json"), &t5_xxl_config())?;
    write_header_only(
        &dir.join("text_encoder_2/model.safetensors"),
        &t5_xxl(bf16, bf16),
        "",
    )
}
