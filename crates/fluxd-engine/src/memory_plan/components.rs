//! Each component's line of the plan: its tensors from the files' headers, the bytes the loader
//! keeps of each (fp8 and GGUF quantized weights as stored where the component keeps them,
//! everything else in the component's dtype), and its working memory.

use std::path::{Path, PathBuf};

use candle_core::DType;

use super::activations::{self, Workload};
use super::inventory::{read_dir, read_file, Inventory, Stored, TensorEntry};
use super::{ComponentPlan, MemoryPlan, PlanDevice, PlanOptions};
use crate::error::Result;
use crate::model_dir::{BundledWeights, ModelPaths, TransformerSource, VaeSource};
use crate::redux::{ReduxPaths, SiglipVisionConfig};
use crate::safety::VitConfig;
use crate::text_encoders::{ClipConfig, T5Config};
use crate::transformer::{FluxConfig, FluxTransformer, WeightsDtype};

/// Components beyond the pipeline's own that a server may load.
#[derive(Debug, Clone, Default)]
pub struct ExtraComponents {
    /// The Redux model for image prompts (on the model's device, in its dtype).
    pub redux: Option<ReduxPaths>,
    /// The NSFW classifier folder (on the model's device, in f32).
    pub safety_checker: Option<PathBuf>,
}

impl ExtraComponents {
    /// The workload of a `width`×`height` request with `t5_tokens` T5 tokens, plus the tokens an
    /// image prompt adds when a Redux model is loaded.
    pub fn workload(&self, width: usize, height: usize, t5_tokens: usize) -> Result<Workload> {
        Ok(Workload {
            width,
            height,
            t5_tokens,
            image_prompt_tokens: self
                .redux
                .as_ref()
                .map(image_prompt_tokens)
                .transpose()?
                .unwrap_or(0),
        })
    }
}

/// CLIP-L's sequence length.
const CLIP_TOKENS: usize = 77;

/// The plan of the model at `paths` (plus `extra`) as `opts` would load it.
pub fn plan_model(
    paths: &ModelPaths,
    opts: &PlanOptions,
    extra: &ExtraComponents,
) -> Result<MemoryPlan> {
    let mut components = vec![
        transformer(paths, opts)?,
        clip(paths, opts)?,
        t5(paths, opts)?,
        vae(paths, opts)?,
    ];
    if let Some(r) = &extra.redux {
        components.push(redux(r, opts)?);
    }
    if let Some(dir) = &extra.safety_checker {
        components.push(safety(dir, opts)?);
    }
    Ok(MemoryPlan {
        workload: opts.workload,
        components,
    })
}

/// Bytes `t` takes once loaded: as stored where the component keeps that type (`keeps`),
/// in fp8 where `to_fp8` says so, else in `dtype`.
fn held(t: &TensorEntry, dtype: DType, keeps: &dyn Fn(Stored) -> bool, to_fp8: bool) -> u64 {
    if keeps(t.stored) {
        t.file_bytes()
    } else if to_fp8 {
        t.elems()
    } else {
        t.elems() * dtype.size_in_bytes() as u64
    }
}

/// GGUF's quantized types: every component multiplies with them as stored.
fn gguf_quantized(s: Stored) -> bool {
    matches!(s, Stored::Gguf(_)) && s.kept_as_stored()
}

fn line(
    name: &'static str,
    device: PlanDevice,
    inv: &Inventory,
    weight_bytes: u64,
    working_bytes: u64,
) -> ComponentPlan {
    ComponentPlan {
        name,
        device,
        format: inv.format(),
        file_bytes: inv.file_bytes(),
        weight_bytes,
        working_bytes,
    }
}

fn bundled(b: &BundledWeights) -> Result<Inventory> {
    read_file(&b.file, &b.prefix)
}

fn transformer(paths: &ModelPaths, opts: &PlanOptions) -> Result<ComponentPlan> {
    let inv = match &paths.transformer {
        TransformerSource::Diffusers(dir) => read_dir(dir, &["diffusion_pytorch_model"])?,
        TransformerSource::BflFile(file) | TransformerSource::Gguf { file, .. } => {
            let all = read_file(file, "")?;
            let comfy = crate::transformer::COMFY_PREFIX;
            if all.tensors.iter().any(|t| t.name.starts_with(comfy)) {
                read_file(file, comfy)?
            } else {
                all
            }
        }
    };
    // A GGUF file carries no config; the folder's config.json says what the header cannot.
    let cfg = FluxTransformer::config_of(&paths.transformer).or_else(|e| {
        let side = paths.root.join("transformer").join("config.json");
        if side.is_file() {
            FluxConfig::from_file(&side)
        } else {
            Err(e)
        }
    })?;
    let to_fp8 = opts.weights == WeightsDtype::Fp8;
    let mut fp8 = to_fp8;
    let weights = inv
        .tensors
        .iter()
        .map(|t| {
            let linear = t.shape.len() == 2 && t.name.ends_with(".weight");
            fp8 |= linear && t.stored == Stored::Safetensors(safetensors::Dtype::F8_E4M3);
            held(t, opts.dtype, &|s| s.kept_as_stored(), to_fp8 && linear)
        })
        .sum();
    let working = activations::transformer(
        &cfg,
        opts.workload,
        opts.dtype,
        opts.transformer_path(),
        fp8,
    );
    Ok(line("transformer", opts.device, &inv, weights, working))
}

fn encoder_weights(inv: &Inventory, dtype: DType) -> u64 {
    inv.tensors
        .iter()
        .map(|t| held(t, dtype, &gguf_quantized, false))
        .sum()
}

fn clip(paths: &ModelPaths, opts: &PlanOptions) -> Result<ComponentPlan> {
    let inv = match &paths.clip_weights {
        Some(b) => bundled(b)?,
        None => read_dir(&paths.text_encoder, &["model"])?,
    };
    let cfg = ClipConfig::from_dir(&paths.text_encoder)?;
    let (device, dtype) = opts.text_encoders;
    let working = activations::encoder(
        CLIP_TOKENS.min(cfg.max_position_embeddings),
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        dtype,
    );
    Ok(line(
        "CLIP",
        device,
        &inv,
        encoder_weights(&inv, dtype),
        working,
    ))
}

fn t5(paths: &ModelPaths, opts: &PlanOptions) -> Result<ComponentPlan> {
    let inv = match &paths.t5_weights {
        Some(b) => bundled(b)?,
        None => read_dir(&paths.text_encoder_2, &["model"])?,
    };
    let cfg = T5Config::from_dir(&paths.text_encoder_2)?;
    let (device, dtype) = opts.text_encoders;
    let working = t5_working(&cfg, opts.workload, dtype);
    Ok(line(
        "T5",
        device,
        &inv,
        encoder_weights(&inv, dtype),
        working,
    ))
}

/// T5's working memory for the workload's token count.
pub(crate) fn t5_working(cfg: &T5Config, w: Workload, dtype: DType) -> u64 {
    activations::encoder(
        w.t5_tokens,
        cfg.d_model.max(cfg.num_heads * cfg.d_kv),
        cfg.d_ff,
        cfg.num_heads,
        dtype,
    )
}

fn vae(paths: &ModelPaths, opts: &PlanOptions) -> Result<ComponentPlan> {
    let (inv, boc) = match &paths.vae {
        VaeSource::Diffusers(dir) => {
            let (_, cfg) = crate::text_encoders::read_config(dir)?;
            let boc = cfg["block_out_channels"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64().map(|n| n as usize))
                        .collect()
                })
                .unwrap_or_default();
            (read_dir(dir, &["diffusion_pytorch_model", "model"])?, boc)
        }
        VaeSource::BflFile(file) => ldm_vae(read_file(file, "")?),
        VaeSource::Bundled(b) => ldm_vae(bundled(b)?),
    };
    // Only the decoder is loaded.
    let inv = inv.only(&["decoder.", "post_quant_conv."]);
    let cpu = opts.device == PlanDevice::Cpu;
    let working = activations::vae(&boc, opts.workload, opts.dtype, cpu);
    let weights = encoder_weights(&inv, opts.dtype);
    Ok(line("VAE decoder", opts.device, &inv, weights, working))
}

/// An LDM-named VAE and its channel counts per level (`decoder.up.{i}` is level `i`).
fn ldm_vae(inv: Inventory) -> (Inventory, Vec<usize>) {
    let boc = (0..)
        .map_while(|i| {
            let name = format!("decoder.up.{i}.block.0.conv2.weight");
            inv.tensors
                .iter()
                .find(|t| t.name == name)
                .and_then(|t| t.shape.first().copied())
        })
        .collect();
    (inv, boc)
}

/// Tokens an image prompt adds to the text: one per SigLIP patch (729 for FLUX.1-Redux-dev's
/// 384² input with 14² patches).
pub fn image_prompt_tokens(r: &ReduxPaths) -> Result<usize> {
    let cfg = SiglipVisionConfig::from_dir(&r.image_encoder)?;
    Ok((cfg.image_size / cfg.patch_size.max(1)).pow(2))
}

fn redux(r: &ReduxPaths, opts: &PlanOptions) -> Result<ComponentPlan> {
    let mut inv = read_dir(&r.image_encoder, &["model"])?;
    for f in &r.embedder {
        let part = read_file(f, "")?;
        inv.files.extend(part.files);
        inv.tensors.extend(part.tensors);
    }
    let cfg = SiglipVisionConfig::from_dir(&r.image_encoder)?;
    let tokens = image_prompt_tokens(r)?;
    let working = activations::encoder(
        tokens,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        opts.dtype,
    );
    Ok(line(
        "Redux (SigLIP)",
        opts.device,
        &inv,
        encoder_weights(&inv, opts.dtype),
        working,
    ))
}

fn safety(dir: &Path, opts: &PlanOptions) -> Result<ComponentPlan> {
    let inv = read_dir(dir, &["model"])?;
    let cfg = VitConfig::from_dir(dir)?;
    let patches =
        (cfg.image_size.0 / cfg.patch_size.0.max(1)) * (cfg.image_size.1 / cfg.patch_size.1.max(1));
    // The classifier always runs in f32 (fluxd-server's engine thread loads it so).
    let working = activations::encoder(
        patches + 1,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        DType::F32,
    );
    Ok(line(
        "safety classifier",
        opts.device,
        &inv,
        encoder_weights(&inv, DType::F32),
        working,
    ))
}
