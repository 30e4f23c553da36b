//! Writers of small fp8 models in the layouts people download, for tests and fixtures: the same
//! random weights as the other tiny writers, stored the way Kijai's and ComfyUI's files store
//! FLUX.1-dev.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{Fp8Weight, SCALED_FP8_MARKER};
use crate::error::{EngineError, Result};
use crate::model_dir::{COMFY_CLIP_L_PREFIX, COMFY_T5XXL_PREFIX, COMFY_VAE_PREFIX};
use crate::tiny_init::{write_json, TensorMap};
use crate::transformer::names::linear_specs;
use crate::transformer::{random_canonical_weights, FluxConfig, COMFY_PREFIX};
use crate::weights::WeightFiles;

/// The fp8 layouts of a FLUX.1 transformer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Layout {
    /// Kijai's `flux1-dev-fp8-e4m3fn.safetensors`: BFL names, every tensor a plain fp8 cast.
    Kijai,
    /// ComfyUI "scaled fp8": `model.diffusion_model.` prefix, each linear weight stored as
    /// `W / scale` in fp8 with its f32 `scale_weight`, the other tensors in bf16, and a
    /// two-element `scaled_fp8` marker (ComfyUI: no fp8 GEMM for this file).
    ComfyScaled,
    /// [`Self::ComfyScaled`] with a `scale_input` per linear layer and an empty marker (ComfyUI
    /// then runs fp8 GEMMs on GPUs that have them).
    ComfyScaledInput,
}

impl Fp8Layout {
    /// Every layout, for tests.
    pub const ALL: [Self; 3] = [Self::Kijai, Self::ComfyScaled, Self::ComfyScaledInput];

    /// A short name (file stems, fixture keys).
    pub fn name(self) -> &'static str {
        match self {
            Self::Kijai => "kijai",
            Self::ComfyScaled => "comfy_scaled",
            Self::ComfyScaledInput => "comfy_scaled_input",
        }
    }
}

/// The canonical (BFL-named) weights of `cfg`/`seed` stored in `layout`.
pub fn fp8_transformer_tensors(
    cfg: &FluxConfig,
    canonical: &TensorMap,
    layout: Fp8Layout,
) -> Result<TensorMap> {
    let linear_weights: Vec<String> = linear_specs(cfg)
        .into_iter()
        .map(|s| format!("{}.weight", s.name))
        .collect();
    let mut out = TensorMap::new();
    match layout {
        Fp8Layout::Kijai => {
            for (name, t) in canonical {
                out.insert(name.clone(), t.to_dtype(DType::F8E4M3)?);
            }
        }
        Fp8Layout::ComfyScaled | Fp8Layout::ComfyScaledInput => {
            let p = COMFY_PREFIX;
            for (name, t) in canonical {
                if linear_weights.contains(name) {
                    let w = Fp8Weight::quantize(t)?;
                    let module = name.trim_end_matches(".weight");
                    out.insert(format!("{p}{name}"), w.weight);
                    out.insert(
                        format!("{p}{module}.scale_weight"),
                        Tensor::new(w.scale, &Device::Cpu)?,
                    );
                    if layout == Fp8Layout::ComfyScaledInput {
                        // A calibrated activation scale in real files; only fp8 GEMMs read it.
                        out.insert(
                            format!("{p}{module}.scale_input"),
                            Tensor::new(1.0f32, &Device::Cpu)?,
                        );
                    }
                } else {
                    out.insert(format!("{p}{name}"), t.to_dtype(DType::BF16)?);
                }
            }
            let marker_len = if layout == Fp8Layout::ComfyScaled {
                2
            } else {
                0
            };
            out.insert(
                format!("{p}{SCALED_FP8_MARKER}"),
                Tensor::zeros(marker_len, DType::F8E4M3, &Device::Cpu)?,
            );
        }
    }
    Ok(out)
}

/// Writes the random transformer of `cfg`/`seed` (the weights of
/// [`crate::transformer::write_bfl_single_file`]) as an fp8 file in `layout`, with a diffusers
/// `config.json` beside it when the head size is not FLUX's 128 (as that writer does).
pub fn write_fp8_transformer(
    file: &Path,
    cfg: &FluxConfig,
    seed: u64,
    layout: Fp8Layout,
) -> Result<()> {
    let canonical = random_canonical_weights(cfg, seed)?;
    write_file(
        file,
        &fp8_transformer_tensors(cfg, &canonical, layout)?,
        None,
    )?;
    write_config_beside(file, cfg)
}

/// Writes a ComfyUI-style full checkpoint of the tiny model in `model_dir` (as
/// `fluxd model init-tiny` wrote it, transformer seed `seed`): the transformer under
/// `model.diffusion_model.` with fp8 linear weights (plain casts, as ComfyUI's
/// `flux1-dev-fp8.safetensors`) and bf16 biases and norms, CLIP-L in f16, T5 with fp8 linear
/// weights, the VAE in LDM names, each under ComfyUI's prefix.
pub fn write_comfy_checkpoint(
    model_dir: &Path,
    file: &Path,
    cfg: &FluxConfig,
    seed: u64,
) -> Result<()> {
    let canonical = random_canonical_weights(cfg, seed)?;
    let linear_weights: Vec<String> = linear_specs(cfg)
        .into_iter()
        .map(|s| format!("{}.weight", s.name))
        .collect();
    let mut out = TensorMap::new();
    for (name, t) in &canonical {
        let dtype = if linear_weights.contains(name) {
            DType::F8E4M3
        } else {
            DType::BF16
        };
        out.insert(format!("{COMFY_PREFIX}{name}"), t.to_dtype(dtype)?);
    }
    for (name, t) in read_all(&model_dir.join("text_encoder"))? {
        out.insert(
            format!("{COMFY_CLIP_L_PREFIX}{name}"),
            t.to_dtype(DType::F16)?,
        );
    }
    for (name, t) in read_all(&model_dir.join("text_encoder_2"))? {
        let linear = t.rank() == 2
            && (name.contains(".SelfAttention.") || name.contains(".DenseReluDense."))
            && !name.contains("relative_attention_bias");
        let dtype = if linear { DType::F8E4M3 } else { DType::F32 };
        out.insert(format!("{COMFY_T5XXL_PREFIX}{name}"), t.to_dtype(dtype)?);
    }
    let vae_dir = model_dir.join("vae");
    let vae = crate::vae::diffusers_vae_to_ldm(read_all(&vae_dir)?)?;
    for (name, t) in vae {
        out.insert(format!("{COMFY_VAE_PREFIX}{name}"), t);
    }
    // The LDM loader reads the GroupNorm group count from the file's metadata (32 if absent).
    let (_, vae_cfg) = crate::text_encoders::read_config(&vae_dir)?;
    let groups = vae_cfg["norm_num_groups"]
        .as_u64()
        .unwrap_or(32)
        .to_string();
    let meta = HashMap::from([("norm_num_groups".to_string(), groups)]);
    write_file(file, &out, Some(meta))?;
    write_config_beside(file, cfg)
}

/// Every tensor of a component folder's weights, as f32.
fn read_all(dir: &Path) -> Result<TensorMap> {
    let files = WeightFiles::open_dir(dir, &["model", "diffusion_pytorch_model"])?;
    files
        .names()
        .map(|n| Ok((n.to_string(), files.get(n, DType::F32, &Device::Cpu)?)))
        .collect()
}

fn write_file(
    file: &Path,
    tensors: &TensorMap,
    meta: Option<HashMap<String, String>>,
) -> Result<()> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    }
    safetensors::serialize_to_file(tensors.iter().map(|(k, v)| (k.as_str(), v)), meta, file)
        .map_err(|e| EngineError::Io {
            path: file.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
}

fn write_config_beside(file: &Path, cfg: &FluxConfig) -> Result<()> {
    if cfg.attention_head_dim != 128 {
        let dir = file.parent().unwrap_or(Path::new("."));
        write_json(&dir.join("config.json"), &cfg.to_diffusers_json())?;
    }
    Ok(())
}

/// The model folder [`write_fp8_reference_models`] writes, under its output folder.
pub const REFERENCE_MODEL_DIR: &str = "tiny";
/// The full checkpoint [`write_fp8_reference_models`] writes.
pub const REFERENCE_CHECKPOINT: &str = "checkpoint.safetensors";
/// The f32 BFL file of the same transformer (the weights before fp8).
pub const REFERENCE_ORIGINAL: &str = "bfl.safetensors";

/// Writes what the fp8 reference fixtures are made from, into `dir`: the tiny model
/// (`init-tiny --seed seed`) in `tiny/`, its transformer as an f32 BFL file
/// (`bfl.safetensors`) and in every [`Fp8Layout`] (`<layout>.safetensors`), a ComfyUI full
/// checkpoint of the whole model (`checkpoint.safetensors`), and the transformer's
/// `config.json` beside them.
pub fn write_fp8_reference_models(dir: &Path, seed: u64) -> Result<()> {
    let model = dir.join(REFERENCE_MODEL_DIR);
    crate::tiny_model::write_tiny_model(&model, seed, crate::tiny_model::TinyPreset::Tiny)?;
    let cfg = crate::tiny_model::TinyPreset::Tiny.transformer_config();
    crate::transformer::write_bfl_single_file(&dir.join(REFERENCE_ORIGINAL), &cfg, seed, false)?;
    for layout in Fp8Layout::ALL {
        let file = dir.join(format!("{}.safetensors", layout.name()));
        write_fp8_transformer(&file, &cfg, seed, layout)?;
    }
    write_comfy_checkpoint(&model, &dir.join(REFERENCE_CHECKPOINT), &cfg, seed)
}
