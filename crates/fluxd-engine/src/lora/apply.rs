//! Putting parsed LoRA files onto a loaded transformer, and reading what a file contains.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::error::{EngineError, Result};
use crate::transformer::linear::LowRank;
use crate::transformer::names::linear_specs;
use crate::transformer::{FluxConfig, FluxTransformer};
use crate::weights::WeightFiles;

use super::{detect_format, parse_key, FusedDims, LoraFile, LoraFormat, Role, Target};

impl LoraFile {
    /// Reads a LoRA file and checks every module against the transformer `cfg` describes.
    pub fn load_for(path: &Path, cfg: &FluxConfig) -> Result<Self> {
        let shapes: HashMap<String, (usize, usize)> = linear_specs(cfg)
            .into_iter()
            .map(|s| (s.name, (s.out, s.inp)))
            .collect();
        let dims = FusedDims {
            hidden: cfg.hidden(),
            mlp_hidden: cfg.mlp_hidden(),
        };
        Self::load(path, dims, &|m| shapes.get(m).copied())
    }
}

/// Replaces the transformer's adapters with `loras`, each at its own strength. The base weights
/// are never touched: switching fine-tune or strength costs only this call. A strength of 0 adds
/// nothing, so the output is exactly the base model's.
pub fn set_loras(transformer: &mut FluxTransformer, loras: &[(&LoraFile, f32)]) -> Result<()> {
    transformer.clear_adapters();
    for (lora, strength) in loras {
        if !strength.is_finite() {
            return Err(EngineError::InvalidInput(format!(
                "LoRA strength {strength} is not finite"
            )));
        }
        if *strength == 0.0 {
            continue;
        }
        for (module, update) in &lora.modules {
            let Some(linear) = transformer.linear_mut(module) else {
                transformer.clear_adapters();
                return Err(EngineError::InvalidInput(format!(
                    "{}: LoRA module `{module}` does not exist in this model",
                    lora.path.display()
                )));
            };
            let adapter = LowRank {
                down: update.down.clone(),
                up: update.up.clone(),
                bias: update.bias.clone(),
                scale: *strength,
            };
            if let Err(e) = linear.add_adapter(adapter) {
                transformer.clear_adapters();
                return Err(EngineError::InvalidInput(format!(
                    "{}: LoRA module `{module}`: {e}",
                    lora.path.display()
                )));
            }
        }
    }
    Ok(())
}

/// What a LoRA file holds, read from its keys and shapes alone (no model needed).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoraSummary {
    /// The detected layout.
    pub format: LoraFormat,
    /// Tensors in the file.
    pub tensors: usize,
    /// Ranks found (sorted, distinct).
    pub ranks: Vec<usize>,
    /// Alpha values found (kohya), sorted, distinct.
    pub alphas: Vec<f32>,
    /// Effective scale per unit of strength (alpha/rank) when the file has alphas.
    pub scale_per_strength: Option<f32>,
    /// Canonical transformer modules targeted (BFL names).
    pub transformer_modules: Vec<String>,
    /// Text-encoder modules (not applied by fluxd).
    pub text_encoder_modules: Vec<String>,
    /// Keys that match nothing we know (a file with any cannot be imported).
    pub unknown_keys: Vec<String>,
    /// The base it fits, as far as the shapes tell.
    pub base: BaseGuess,
}

/// What the shapes say about the base model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BaseGuess {
    /// The transformer hidden size (3072 for FLUX.1), from a down matrix of a hidden-wide input.
    pub hidden: Option<usize>,
    /// Highest double-block index targeted, plus one.
    pub double_blocks_seen: usize,
    /// Highest single-block index targeted, plus one.
    pub single_blocks_seen: usize,
    /// A human reading of the above.
    pub description: String,
}

/// Summarises a LoRA file without a model.
pub fn inspect(path: &Path) -> Result<LoraSummary> {
    let files = WeightFiles::open(&[path.to_path_buf()])?;
    let mut names: Vec<&str> = files.names().collect();
    names.sort_unstable();
    let format = detect_format(&names);
    let mut ranks = BTreeSet::new();
    let mut alphas: Vec<f32> = Vec::new();
    let mut modules = BTreeSet::new();
    let mut te = BTreeSet::new();
    let mut unknown = Vec::new();
    let mut hidden = None;
    let (mut doubles, mut singles) = (0usize, 0usize);
    for &name in &names {
        let Some(parsed) = parse_key(name) else {
            unknown.push(name.to_string());
            continue;
        };
        match parsed.target {
            Target::TextEncoder(m) => {
                te.insert(m);
            }
            Target::Transformer { module, .. } => {
                let index = |prefix: &str| {
                    module
                        .strip_prefix(prefix)
                        .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
                };
                if let Some(i) = index("double_blocks.") {
                    doubles = doubles.max(i + 1);
                }
                if let Some(i) = index("single_blocks.") {
                    singles = singles.max(i + 1);
                }
                if parsed.role == Role::Down {
                    if let Some(shape) = files.shape(name) {
                        ranks.insert(shape[0]);
                        let hidden_input = module.ends_with("attn.qkv")
                            || module.ends_with("linear1")
                            || module.ends_with("attn.proj");
                        if hidden_input && shape.len() == 2 {
                            hidden = Some(shape[1]);
                        }
                    }
                }
                if parsed.role == Role::Alpha {
                    let a = files
                        .get(name, candle_core::DType::F32, &candle_core::Device::Cpu)?
                        .flatten_all()?
                        .get(0)?
                        .to_scalar::<f32>()?;
                    if !alphas.contains(&a) {
                        alphas.push(a);
                    }
                }
                modules.insert(module);
            }
        }
    }
    alphas.sort_by(f32::total_cmp);
    let ranks: Vec<usize> = ranks.into_iter().collect();
    let scale_per_strength = match (alphas.as_slice(), ranks.as_slice()) {
        ([a], [r]) => Some(a / *r as f32),
        _ => None,
    };
    let description = match hidden {
        Some(3072) => format!(
            "FLUX.1 (hidden 3072; blocks seen: {doubles} double, {singles} single of 19/38)"
        ),
        Some(h) => format!("a FLUX-architecture model with hidden size {h} (not FLUX.1's 3072)"),
        None => "unknown (no attention module to read the hidden size from)".to_string(),
    };
    Ok(LoraSummary {
        format,
        tensors: names.len(),
        ranks,
        alphas,
        scale_per_strength,
        transformer_modules: modules.into_iter().collect(),
        text_encoder_modules: te.into_iter().collect(),
        unknown_keys: unknown,
        base: BaseGuess {
            hidden,
            double_blocks_seen: doubles,
            single_blocks_seen: singles,
            description,
        },
    })
}
