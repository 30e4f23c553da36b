//! Writers of small random transformers in the real on-disk layouts (diffusers folder, BFL single
//! file), for tests, benchmarks and `fluxd model init-tiny`.
//!
//! Both writers draw the same canonical weights for the same seed, so a model loaded from either
//! layout computes the same function.

use std::path::Path;

use candle_core::Tensor;

use super::config::FluxConfig;
use super::load::{swap_halves, COMFY_PREFIX};
use super::names::{diffusers_source, linear_specs, norm_names, DiffusersSource};
use crate::error::{EngineError, Result};
use crate::tiny_init::{write_json, write_safetensors, write_sharded, InitRng, TensorMap};

/// Random canonical (BFL-named) f32 weights: linear weights normal with std 1/√fan_in, biases
/// normal with std 0.02, QK-norm scales 1 + 0.1·normal. Drawn from `InitRng::new(seed,
/// "transformer")` in [`linear_specs`] then [`norm_names`] order.
pub fn random_canonical_weights(cfg: &FluxConfig, seed: u64) -> Result<TensorMap> {
    cfg.validate().map_err(EngineError::InvalidInput)?;
    let mut rng = InitRng::new(seed, "transformer");
    let mut map = TensorMap::new();
    for spec in linear_specs(cfg) {
        map.insert(
            format!("{}.weight", spec.name),
            rng.linear_weight(spec.out, spec.inp)?,
        );
        map.insert(
            format!("{}.bias", spec.name),
            rng.normal_tensor(&[spec.out], 0.0, 0.02)?,
        );
    }
    for name in norm_names(cfg) {
        map.insert(
            name,
            rng.normal_tensor(&[cfg.attention_head_dim], 1.0, 0.1)?,
        );
    }
    Ok(map)
}

/// Converts canonical tensors to diffusers names (splitting fused projections, swapping the
/// final modulation's halves), as diffusers' single-file conversion would.
pub fn canonical_to_diffusers(cfg: &FluxConfig, canonical: &TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (name, t) in canonical {
        let (module, suffix) = match name.rsplit_once('.') {
            Some((m, s @ ("weight" | "bias"))) => (m, format!(".{s}")),
            _ => (name.as_str(), String::new()),
        };
        let source = diffusers_source(cfg, module).ok_or_else(|| {
            EngineError::InvalidInput(format!("no diffusers name for canonical tensor `{name}`"))
        })?;
        match source {
            DiffusersSource::Renamed(m) => {
                out.insert(format!("{m}{suffix}"), t.clone());
            }
            DiffusersSource::Swapped(m) => {
                out.insert(format!("{m}{suffix}"), swap_halves(t)?);
            }
            DiffusersSource::Fused(parts) => {
                let mut start = 0;
                for (m, rows) in parts {
                    out.insert(
                        format!("{m}{suffix}"),
                        t.narrow(0, start, rows)?.contiguous()?,
                    );
                    start += rows;
                }
            }
        }
    }
    Ok(out)
}

/// Writes a diffusers `transformer/` folder: `config.json` as diffusers writes it and the
/// weights in `shards` files (`diffusion_pytorch_model-0000N-of-0000M.safetensors` + index;
/// one plain file when `shards` ≤ 1).
pub fn write_tiny_diffusers(dir: &Path, cfg: &FluxConfig, seed: u64, shards: usize) -> Result<()> {
    let canonical = random_canonical_weights(cfg, seed)?;
    let tensors = canonical_to_diffusers(cfg, &canonical)?;
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    write_json(&dir.join("config.json"), &cfg.to_diffusers_json())?;
    write_sharded(dir, "diffusion_pytorch_model", &tensors, shards)
}

/// Writes the same weights as [`write_tiny_diffusers`] (same seed) as a BFL single file,
/// optionally with ComfyUI's `model.diffusion_model.` prefix. When the head size is not 128 the
/// RoPE axes cannot be inferred from the file, so a diffusers `config.json` is written next to it.
pub fn write_bfl_single_file(
    file: &Path,
    cfg: &FluxConfig,
    seed: u64,
    comfy_prefix: bool,
) -> Result<()> {
    let canonical = random_canonical_weights(cfg, seed)?;
    let prefix = if comfy_prefix { COMFY_PREFIX } else { "" };
    let tensors: TensorMap = canonical
        .into_iter()
        .map(|(k, v): (String, Tensor)| (format!("{prefix}{k}"), v))
        .collect();
    write_safetensors(file, &tensors)?;
    if cfg.attention_head_dim != 128 {
        let dir = file.parent().unwrap_or(Path::new("."));
        write_json(&dir.join("config.json"), &cfg.to_diffusers_json())?;
    }
    Ok(())
}
