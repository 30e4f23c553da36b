//! Writing one random adapter in each published layout, for tests and the reference fixtures:
//! the same low-rank update must give the same image whichever way it was stored.

use std::path::Path;

use candle_core::Tensor;

use crate::error::Result;
use crate::tiny_init::{write_safetensors, InitRng, TensorMap};
use crate::transformer::{swap_halves, FluxConfig};

use super::LoraFormat;

/// One canonical module's update: (module, down (r × in), up (out × r)).
type Canonical = Vec<(String, Tensor, Tensor)>;

/// How a fused BFL module splits into diffusers modules: (diffusers path, first row, rows).
fn diffusers_parts(module: &str, h: usize, mlp: usize, out: usize) -> Vec<(String, usize, usize)> {
    let parts = |i: &str, names: &[(&str, usize, usize)]| -> Vec<(String, usize, usize)> {
        names
            .iter()
            .map(|(n, r0, len)| (n.replace("{i}", i), *r0, *len))
            .collect()
    };
    let seg: Vec<&str> = module.split('.').collect();
    match seg.as_slice() {
        ["double_blocks", i, "img_attn", "qkv"] => parts(
            i,
            &[
                ("transformer_blocks.{i}.attn.to_q", 0, h),
                ("transformer_blocks.{i}.attn.to_k", h, h),
                ("transformer_blocks.{i}.attn.to_v", 2 * h, h),
            ],
        ),
        ["double_blocks", i, "txt_attn", "qkv"] => parts(
            i,
            &[
                ("transformer_blocks.{i}.attn.add_q_proj", 0, h),
                ("transformer_blocks.{i}.attn.add_k_proj", h, h),
                ("transformer_blocks.{i}.attn.add_v_proj", 2 * h, h),
            ],
        ),
        ["double_blocks", i, "img_attn", "proj"] => {
            parts(i, &[("transformer_blocks.{i}.attn.to_out.0", 0, out)])
        }
        ["double_blocks", i, "txt_attn", "proj"] => {
            parts(i, &[("transformer_blocks.{i}.attn.to_add_out", 0, out)])
        }
        ["double_blocks", i, "img_mlp", "0"] => {
            parts(i, &[("transformer_blocks.{i}.ff.net.0.proj", 0, out)])
        }
        ["double_blocks", i, "img_mlp", "2"] => {
            parts(i, &[("transformer_blocks.{i}.ff.net.2", 0, out)])
        }
        ["double_blocks", i, "txt_mlp", "0"] => parts(
            i,
            &[("transformer_blocks.{i}.ff_context.net.0.proj", 0, out)],
        ),
        ["double_blocks", i, "txt_mlp", "2"] => {
            parts(i, &[("transformer_blocks.{i}.ff_context.net.2", 0, out)])
        }
        ["double_blocks", i, "img_mod", "lin"] => {
            parts(i, &[("transformer_blocks.{i}.norm1.linear", 0, out)])
        }
        ["double_blocks", i, "txt_mod", "lin"] => parts(
            i,
            &[("transformer_blocks.{i}.norm1_context.linear", 0, out)],
        ),
        ["single_blocks", i, "linear1"] => parts(
            i,
            &[
                ("single_transformer_blocks.{i}.attn.to_q", 0, h),
                ("single_transformer_blocks.{i}.attn.to_k", h, h),
                ("single_transformer_blocks.{i}.attn.to_v", 2 * h, h),
                ("single_transformer_blocks.{i}.proj_mlp", 3 * h, mlp),
            ],
        ),
        ["single_blocks", i, "linear2"] => {
            parts(i, &[("single_transformer_blocks.{i}.proj_out", 0, out)])
        }
        ["single_blocks", i, "modulation", "lin"] => {
            parts(i, &[("single_transformer_blocks.{i}.norm.linear", 0, out)])
        }
        ["final_layer", "linear"] => vec![("proj_out".to_string(), 0, out)],
        ["final_layer", "adaLN_modulation", "1"] => vec![("norm_out.linear".to_string(), 0, out)],
        _ => Vec::new(),
    }
}

/// A random adapter over most of the transformer's linear modules.
fn random_canonical(cfg: &FluxConfig, rank: usize, seed: u64) -> Result<Canonical> {
    let h = cfg.attention_head_dim * cfg.num_attention_heads;
    let mlp = 4 * h;
    let mut modules: Vec<(String, usize, usize)> = Vec::new();
    for i in 0..cfg.num_layers {
        for s in ["img", "txt"] {
            modules.push((format!("double_blocks.{i}.{s}_attn.qkv"), 3 * h, h));
            modules.push((format!("double_blocks.{i}.{s}_attn.proj"), h, h));
            modules.push((format!("double_blocks.{i}.{s}_mlp.0"), mlp, h));
            modules.push((format!("double_blocks.{i}.{s}_mlp.2"), h, mlp));
            modules.push((format!("double_blocks.{i}.{s}_mod.lin"), 6 * h, h));
        }
    }
    for i in 0..cfg.num_single_layers {
        modules.push((format!("single_blocks.{i}.linear1"), 3 * h + mlp, h));
        modules.push((format!("single_blocks.{i}.linear2"), h, h + mlp));
        modules.push((format!("single_blocks.{i}.modulation.lin"), 3 * h, h));
    }
    modules.push(("final_layer.adaLN_modulation.1".to_string(), 2 * h, h));
    modules.push(("final_layer.linear".to_string(), cfg.in_channels, h));
    let mut rng = InitRng::new(seed, "lora");
    modules
        .into_iter()
        .map(|(name, out, inp)| {
            let down = rng.linear_weight(rank, inp)?;
            // Large enough that the fine-tune visibly changes a tiny model's image.
            let up = rng.normal_tensor(&[out, rank], 0.0, 0.5 / (rank as f32).sqrt())?;
            Ok((name, down, up))
        })
        .collect()
}

/// Writes the random adapter for `cfg` (same `seed` ⇒ same adapter) in `format`, keeping the
/// canonical modules for which `keep` is true. For kohya the file stores `alpha` and an up matrix
/// scaled by rank/alpha, so the effective update is equal.
pub fn write_random_lora(
    path: &Path,
    format: LoraFormat,
    cfg: &FluxConfig,
    rank: usize,
    seed: u64,
    keep: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let h = cfg.attention_head_dim * cfg.num_attention_heads;
    let mlp = 4 * h;
    let mut map = TensorMap::new();
    for (module, down, up) in random_canonical(cfg, rank, seed)? {
        if !keep(&module) {
            continue;
        }
        match format {
            LoraFormat::Bfl => {
                map.insert(format!("{module}.lora_A.weight"), down);
                map.insert(format!("{module}.lora_B.weight"), up);
            }
            LoraFormat::Kohya => {
                let alpha = rank as f32 / 2.0;
                let key = format!("lora_unet_{}", module.replace('.', "_"));
                map.insert(format!("{key}.lora_down.weight"), down);
                map.insert(
                    format!("{key}.lora_up.weight"),
                    (up * f64::from(rank as f32 / alpha))?,
                );
                map.insert(
                    format!("{key}.alpha"),
                    Tensor::new(alpha, &candle_core::Device::Cpu)?,
                );
            }
            LoraFormat::XLabs => {
                // XLabs files cover only attention modules, so they cannot hold this adapter.
                return Err(crate::EngineError::InvalidInput(
                    "the random-adapter writer does not write the XLabs layout".into(),
                ));
            }
            LoraFormat::Diffusers | LoraFormat::AiToolkit => {
                let out = up.dim(0)?;
                let up = if module == "final_layer.adaLN_modulation.1" {
                    swap_halves(&up)?
                } else {
                    up
                };
                for (name, row0, rows) in diffusers_parts(&module, h, mlp, out) {
                    let prefix = if format == LoraFormat::AiToolkit {
                        format!("lora_transformer_{}", name.replace('.', "_"))
                    } else {
                        format!("transformer.{name}")
                    };
                    let (a, b) = if format == LoraFormat::AiToolkit {
                        (".lora_down.weight", ".lora_up.weight")
                    } else {
                        (".lora_A.weight", ".lora_B.weight")
                    };
                    map.insert(format!("{prefix}{a}"), down.clone());
                    map.insert(
                        format!("{prefix}{b}"),
                        up.narrow(0, row0, rows)?.contiguous()?,
                    );
                }
            }
        }
    }
    write_safetensors(path, &map)
}

/// Whether a canonical module survives diffusers' kohya converter for a non-FLUX.1-sized model:
/// it splits single-block linear1 with FLUX.1's hard-coded widths ([3072]*3 + [12288]) and
/// ignores alpha on the final layer (a "TODO: alphas" in `_convert_kohya_flux_lora_to_diffusers`;
/// kohya's trainer applies it, and so do we).
pub fn kohya_reference_safe(module: &str) -> bool {
    !module.ends_with(".linear1") && !module.starts_with("final_layer.")
}

/// The adapter files the LoRA reference fixtures are made from: (file stem, layout, whether
/// only [`kohya_reference_safe`] modules are kept).
pub const REFERENCE_LORAS: [(&str, LoraFormat, bool); 5] = [
    ("peft", LoraFormat::Diffusers, false),
    ("bfl", LoraFormat::Bfl, false),
    ("aitoolkit", LoraFormat::AiToolkit, false),
    ("kohya", LoraFormat::Kohya, true),
    ("bfl_kohya_safe", LoraFormat::Bfl, true),
];

/// Writes every [`REFERENCE_LORAS`] file for `cfg` into `dir`.
pub fn write_reference_loras(dir: &Path, cfg: &FluxConfig, rank: usize, seed: u64) -> Result<()> {
    for (stem, format, kohya_safe) in REFERENCE_LORAS {
        let keep = |m: &str| !kohya_safe || kohya_reference_safe(m);
        write_random_lora(
            &dir.join(format!("{stem}.safetensors")),
            format,
            cfg,
            rank,
            seed,
            &keep,
        )?;
    }
    Ok(())
}
