//! Fine-tunes as LoRA files, in the formats people publish for FLUX.1, turned into low-rank
//! updates of our transformer's (fused, BFL-named) linear layers.
//!
//! A file is read once into [`LoraFile`]: per canonical module, a down matrix (rank × in), an up
//! matrix (out × rank) with the format's alpha/rank already folded in, and an optional bias. The
//! transformer applies `strength · up · (down · x)` next to the base weight on the fly, so that
//! switching fine-tune or strength never touches the base weights.
//!
//! Strength semantics follow diffusers: the effective scale is `strength × alpha / rank` when the
//! file carries an alpha (kohya), `strength` otherwise (`_convert_kohya_flux_lora_to_diffusers`).

mod apply;
mod keys;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::transformer::swap_halves;
use crate::weights::WeightFiles;

pub use apply::{inspect, set_loras, BaseGuess, LoraSummary};
pub use keys::{parse_key, Part, Role, Target};
pub use write::{kohya_reference_safe, write_random_lora, write_reference_loras, REFERENCE_LORAS};

/// The file layout a LoRA was published in, detected from its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraFormat {
    /// diffusers / PEFT (`transformer.…lora_A/lora_B`), split q/k/v.
    Diffusers,
    /// kohya sd-scripts (`lora_unet_…lora_down/lora_up` + `alpha`), fused qkv.
    Kohya,
    /// ai-toolkit's internal names (`lora_transformer_<diffusers path>`).
    AiToolkit,
    /// The reference provider's own layout: BFL module names, `lora_A`/`lora_B` (+ `lora_B.bias`).
    Bfl,
    /// XLabs (`…processor.qkv_lora1…`).
    XLabs,
}

/// One module's low-rank update, ready to apply.
#[derive(Debug, Clone)]
pub struct ModuleUpdate {
    /// rank × in.
    pub down: Tensor,
    /// out × rank, alpha/rank folded in.
    pub up: Tensor,
    /// Optional bias (out), added with the update (BFL `lora_B.bias`).
    pub bias: Option<Tensor>,
}

/// The output rows of a fused module and where each part sits, for assembling split updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusedDims {
    /// The transformer's hidden size (q, k and v are each this wide).
    pub hidden: usize,
    /// The single blocks' MLP width (linear1's last part).
    pub mlp_hidden: usize,
}

/// A LoRA file parsed into per-module updates.
#[derive(Debug, Clone)]
pub struct LoraFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The detected format.
    pub format: LoraFormat,
    /// Updates per canonical module name.
    pub modules: BTreeMap<String, ModuleUpdate>,
    /// Text-encoder modules the file also trains (not applied by fluxd; reported).
    pub text_encoder_modules: Vec<String>,
    /// Largest rank found.
    pub rank: usize,
    /// The alpha values found (kohya), if any.
    pub alphas: Vec<f32>,
}

#[derive(Default)]
struct PartTensors {
    down: Option<Tensor>,
    up: Option<Tensor>,
    bias: Option<Tensor>,
    alpha: Option<f32>,
    swap: bool,
    keys: Vec<String>,
}

pub(crate) fn detect_format(names: &[&str]) -> LoraFormat {
    let any = |f: &dyn Fn(&str) -> bool| names.iter().any(|n| f(n));
    if any(&|n| n.contains(".processor.")) {
        LoraFormat::XLabs
    } else if any(&|n| n.starts_with("lora_transformer_")) {
        LoraFormat::AiToolkit
    } else if any(&|n| n.contains(".lora_down.") || n.ends_with(".alpha")) {
        LoraFormat::Kohya
    } else if any(&|n| n.contains("double_blocks") || n.contains("single_blocks")) {
        LoraFormat::Bfl
    } else {
        LoraFormat::Diffusers
    }
}

fn part_rows(part: Part, module: &str, out: usize, dims: FusedDims) -> Result<(usize, usize)> {
    let h = dims.hidden;
    let rows = match part {
        Part::Whole => (0, out),
        Part::Q => (0, h),
        Part::K => (h, 2 * h),
        Part::V => (2 * h, 3 * h),
        Part::Qkv => (0, 3 * h),
        Part::Mlp => (3 * h, 3 * h + dims.mlp_hidden),
    };
    if rows.1 > out {
        return Err(EngineError::InvalidInput(format!(
            "LoRA module `{module}`: part {part:?} needs rows {}..{} but the module has {out}",
            rows.0, rows.1
        )));
    }
    Ok(rows)
}

impl LoraFile {
    /// Reads and checks a LoRA safetensors file. `module_shape` gives (out, in) of each of the
    /// transformer's linear modules by canonical name (`None` for a module the model lacks), so
    /// that a LoRA made for another base fails here, naming the module.
    pub fn load(
        path: &Path,
        dims: FusedDims,
        module_shape: &dyn Fn(&str) -> Option<(usize, usize)>,
    ) -> Result<Self> {
        let files = WeightFiles::open(&[path.to_path_buf()])?;
        let mut names: Vec<&str> = files.names().collect();
        names.sort_unstable();
        if names.is_empty() {
            return Err(EngineError::InvalidInput(format!(
                "{}: the file holds no tensors",
                path.display()
            )));
        }
        let format = detect_format(&names);
        let mut parts: BTreeMap<(String, Part), PartTensors> = BTreeMap::new();
        let mut text_encoder_modules = Vec::new();
        let mut unknown = Vec::new();
        for &name in &names {
            let Some(parsed) = parse_key(name) else {
                unknown.push(name.to_string());
                continue;
            };
            let (module, part, swap) = match parsed.target {
                Target::TextEncoder(m) => {
                    if !text_encoder_modules.contains(&m) {
                        text_encoder_modules.push(m);
                    }
                    continue;
                }
                Target::Transformer {
                    module,
                    part,
                    swap_halves,
                } => (module, part, swap_halves),
            };
            let t = files.get(name, DType::F32, &Device::Cpu)?;
            check_finite(&t, path, name)?;
            let entry = parts.entry((module, part)).or_default();
            entry.swap |= swap;
            entry.keys.push(name.to_string());
            match parsed.role {
                Role::Down => entry.down = Some(t),
                Role::Up => entry.up = Some(t),
                Role::UpBias => entry.bias = Some(t),
                Role::Alpha => entry.alpha = Some(t.flatten_all()?.get(0)?.to_scalar::<f32>()?),
            }
        }
        if !unknown.is_empty() {
            let shown: Vec<_> = unknown.iter().take(5).cloned().collect();
            return Err(EngineError::InvalidInput(format!(
                "{}: {} keys match no FLUX module we know (e.g. {}); is this a FLUX.1 LoRA?",
                path.display(),
                unknown.len(),
                shown.join(", ")
            )));
        }
        let mut rank = 0;
        let mut alphas = Vec::new();
        // Group parts by module, then assemble one (down, up) pair per module.
        let mut by_module: BTreeMap<String, Vec<(Part, PartTensors)>> = BTreeMap::new();
        for ((module, part), pt) in parts {
            by_module.entry(module).or_default().push((part, pt));
        }
        let mut modules = BTreeMap::new();
        for (module, mut group) in by_module {
            let Some((out, inp)) = module_shape(&module) else {
                return Err(EngineError::InvalidInput(format!(
                    "{}: LoRA module `{module}` does not exist in this model",
                    path.display()
                )));
            };
            group.sort_by_key(|(p, _)| *p);
            let mut downs = Vec::new();
            let mut ups = Vec::new();
            let mut bias: Option<Tensor> = None;
            let mut rank_offset = 0;
            let total_rank: usize = group
                .iter()
                .map(|(_, pt)| {
                    pt.down
                        .as_ref()
                        .map_or(0, |d| d.dims().first().copied().unwrap_or(0))
                })
                .sum();
            for (part, pt) in &group {
                let (Some(down), Some(up)) = (&pt.down, &pt.up) else {
                    return Err(EngineError::InvalidInput(format!(
                        "{}: LoRA module `{module}` ({part:?}) lacks its {} matrix (keys: {})",
                        path.display(),
                        if pt.down.is_none() {
                            "down/lora_A"
                        } else {
                            "up/lora_B"
                        },
                        pt.keys.join(", ")
                    )));
                };
                let (r, d_in) = down.dims2()?;
                let (d_out, r2) = up.dims2()?;
                let (row0, row1) = part_rows(*part, &module, out, dims)?;
                if d_in != inp || r2 != r || d_out != row1 - row0 {
                    return Err(EngineError::InvalidInput(format!(
                        "{}: LoRA module `{module}` ({part:?}) has down {:?} and up {:?}, but the \
                         model needs in={inp}, out={} — a LoRA for another base model?",
                        path.display(),
                        down.dims(),
                        up.dims(),
                        row1 - row0
                    )));
                }
                rank = rank.max(r);
                let scale = match pt.alpha {
                    Some(a) if a != 0.0 => {
                        alphas.push(a);
                        a / r as f32
                    }
                    _ => 1.0,
                };
                let mut up = (up * f64::from(scale))?;
                let mut part_bias = pt.bias.clone();
                if pt.swap {
                    up = swap_halves(&up)?;
                    part_bias = part_bias.map(|b| swap_halves(&b)).transpose()?;
                }
                // Place this part's rows and rank columns inside the fused module's update.
                let up = up.pad_with_zeros(0, row0, out - row1)?;
                let up = up.pad_with_zeros(1, rank_offset, total_rank - rank_offset - r)?;
                rank_offset += r;
                downs.push(down.clone());
                ups.push(up);
                if let Some(b) = part_bias {
                    let b = b.pad_with_zeros(0, row0, out - row1)?;
                    bias = Some(match bias {
                        Some(acc) => (acc + b)?,
                        None => b,
                    });
                }
            }
            let down = Tensor::cat(&downs, 0)?;
            let up = ups
                .into_iter()
                .try_fold(None::<Tensor>, |acc, u| -> Result<_> {
                    Ok(Some(match acc {
                        Some(a) => (a + u)?,
                        None => u,
                    }))
                })?;
            let Some(up) = up else { continue };
            modules.insert(module, ModuleUpdate { down, up, bias });
        }
        if modules.is_empty() {
            return Err(EngineError::InvalidInput(format!(
                "{}: no transformer modules in this LoRA{}",
                path.display(),
                if text_encoder_modules.is_empty() {
                    ""
                } else {
                    " (text encoder only)"
                }
            )));
        }
        alphas.dedup();
        Ok(Self {
            path: path.to_path_buf(),
            format,
            modules,
            text_encoder_modules,
            rank,
            alphas,
        })
    }
}

fn check_finite(t: &Tensor, path: &Path, name: &str) -> Result<()> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(EngineError::InvalidInput(format!(
            "{}: tensor `{name}` contains {bad} (NaN or infinite); the file is corrupt",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny_init::{write_safetensors, InitRng, TensorMap};
    use crate::transformer::FluxConfig;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fluxd-lora-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        dir.join(name)
    }

    #[test]
    fn xlabs_files_land_on_fused_modules_and_single_block_qkv_rows() -> Result<()> {
        let cfg = FluxConfig::tiny();
        let (h, r) = (cfg.hidden(), 2);
        let mut rng = InitRng::new(1, "xlabs");
        let mut map = TensorMap::new();
        let p = "double_blocks.1.processor";
        map.insert(
            format!("{p}.qkv_lora1.down.weight"),
            rng.normal_tensor(&[r, h], 0.0, 1.0)?,
        );
        map.insert(
            format!("{p}.qkv_lora1.up.weight"),
            rng.normal_tensor(&[3 * h, r], 0.0, 1.0)?,
        );
        map.insert(
            format!("{p}.proj_lora2.down.weight"),
            rng.normal_tensor(&[r, h], 0.0, 1.0)?,
        );
        map.insert(
            format!("{p}.proj_lora2.up.weight"),
            rng.normal_tensor(&[h, r], 0.0, 1.0)?,
        );
        let s = "single_blocks.0.processor";
        let single_up = rng.normal_tensor(&[3 * h, r], 0.0, 1.0)?;
        map.insert(
            format!("{s}.qkv_lora.down.weight"),
            rng.normal_tensor(&[r, h], 0.0, 1.0)?,
        );
        map.insert(format!("{s}.qkv_lora.up.weight"), single_up.clone());
        let path = scratch("xlabs.safetensors");
        write_safetensors(&path, &map)?;
        let lora = LoraFile::load_for(&path, &cfg)?;
        assert_eq!(lora.format, LoraFormat::XLabs);
        let names: Vec<&str> = lora.modules.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "double_blocks.1.img_attn.qkv",
                "double_blocks.1.txt_attn.proj",
                "single_blocks.0.linear1"
            ]
        );
        // The single block's qkv update fills linear1's first 3h rows; the mlp rows stay zero.
        let up = &lora.modules["single_blocks.0.linear1"].up;
        assert_eq!(up.dims(), [3 * h + cfg.mlp_hidden(), r]);
        let head = up.narrow(0, 0, 3 * h)?;
        assert_eq!(
            (head - &single_up)?.abs()?.sum_all()?.to_scalar::<f32>()?,
            0.0
        );
        let tail = up.narrow(0, 3 * h, cfg.mlp_hidden())?;
        assert_eq!(tail.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn split_parts_assemble_block_diagonally_and_a_missing_half_is_named() -> Result<()> {
        let cfg = FluxConfig::tiny();
        let (h, r) = (cfg.hidden(), 2);
        let mut rng = InitRng::new(2, "split");
        let mut map = TensorMap::new();
        let b = "transformer.transformer_blocks.0.attn";
        for q in ["to_q", "to_v"] {
            map.insert(
                format!("{b}.{q}.lora_A.weight"),
                rng.normal_tensor(&[r, h], 0.0, 1.0)?,
            );
            map.insert(
                format!("{b}.{q}.lora_B.weight"),
                rng.normal_tensor(&[h, r], 0.0, 1.0)?,
            );
        }
        let path = scratch("split.safetensors");
        write_safetensors(&path, &map)?;
        let lora = LoraFile::load_for(&path, &cfg)?;
        let m = &lora.modules["double_blocks.0.img_attn.qkv"];
        assert_eq!(m.down.dims(), [2 * r, h]);
        assert_eq!(m.up.dims(), [3 * h, 2 * r]);
        // k rows get nothing; q rows use only q's rank columns.
        let k_rows = m.up.narrow(0, h, h)?;
        assert_eq!(k_rows.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        let q_rows_v_cols = m.up.narrow(0, 0, h)?.narrow(1, r, r)?;
        assert_eq!(q_rows_v_cols.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);

        map.remove(&format!("{b}.to_v.lora_B.weight"));
        write_safetensors(&path, &map)?;
        let err = LoraFile::load_for(&path, &cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("double_blocks.0.img_attn.qkv") && err.contains("lora_B"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn bfl_lora_b_bias_is_kept_and_applied_at_strength() -> Result<()> {
        use crate::transformer::write::random_canonical_weights;
        use crate::transformer::FluxTransformer;
        let cfg = FluxConfig::tiny();
        let (h, r) = (cfg.hidden(), 2);
        let mut rng = InitRng::new(3, "bias");
        let m = "double_blocks.0.img_attn.proj";
        let mut map = TensorMap::new();
        map.insert(
            format!("{m}.lora_A.weight"),
            rng.normal_tensor(&[r, h], 0.0, 1.0)?,
        );
        map.insert(
            format!("{m}.lora_B.weight"),
            rng.normal_tensor(&[h, r], 0.0, 1.0)?,
        );
        map.insert(
            format!("{m}.lora_B.bias"),
            rng.normal_tensor(&[h], 0.0, 1.0)?,
        );
        let path = scratch("bias.safetensors");
        write_safetensors(&path, &map)?;
        let lora = LoraFile::load_for(&path, &cfg)?;
        assert_eq!(lora.format, LoraFormat::Bfl);
        assert!(lora.modules[m].bias.is_some());
        let weights = random_canonical_weights(&cfg, 1)?;
        let mut t = FluxTransformer::from_canonical(cfg, &weights, DType::F32, &Device::Cpu)?;
        set_loras(&mut t, &[(&lora, 0.5)])?;
        let lin = t
            .linear_mut(m)
            .ok_or_else(|| EngineError::InvalidInput(m.into()))?;
        let base = lin
            .bias()
            .map(|b| b.to_vec1::<f32>())
            .transpose()?
            .unwrap_or_default();
        let total = lin.total_bias_f32()?;
        let lora_bias = map[&format!("{m}.lora_B.bias")].to_vec1::<f32>()?;
        for ((t, b), l) in total.iter().zip(&base).zip(&lora_bias) {
            assert!((t - (b + 0.5 * l)).abs() < 1e-6);
        }
        Ok(())
    }
}
