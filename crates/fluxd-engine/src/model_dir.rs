//! Finding a model's components on disk.
//!
//! Two layouts are understood, and may be mixed:
//! - the Hugging Face diffusers layout of `black-forest-labs/FLUX.1-dev` (`model_index.json`,
//!   `scheduler/`, `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`,
//!   `transformer/`, `vae/`);
//! - BFL single files: the transformer as `flux1-dev.safetensors` (or any single file with BFL or
//!   ComfyUI key names) and the VAE as `ae.safetensors`, as the same repository also ships them at
//!   its root. They are used when the diffusers folder for that component is absent, or when the
//!   caller names them explicitly.
//!
//! A transformer file may be a ComfyUI checkpoint that bundles the text encoders and the VAE
//! under ComfyUI's key prefixes (`comfy/sd.py` saving, `supported_models.py` Flux:
//! `model.diffusion_model.`, `text_encoders.clip_l.transformer.`,
//! `text_encoders.t5xxl.transformer.`, `vae.`). The weights of every component it holds then
//! come from it; tokenizers, the scheduler and the encoders' `config.json` still come from the
//! folder (checkpoints carry no configs).

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// Where the transformer weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformerSource {
    /// A diffusers `transformer/` folder.
    Diffusers(PathBuf),
    /// A BFL/ComfyUI single file.
    BflFile(PathBuf),
}

/// Where the VAE weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeSource {
    /// A diffusers `vae/` folder.
    Diffusers(PathBuf),
    /// A BFL `ae.safetensors`.
    BflFile(PathBuf),
    /// The LDM-named VAE inside a checkpoint that bundles several components.
    Bundled(BundledWeights),
}

/// One component's tensors inside a checkpoint that bundles several, under a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundledWeights {
    /// The checkpoint.
    pub file: PathBuf,
    /// The component's key prefix, e.g. `text_encoders.t5xxl.transformer.`.
    pub prefix: String,
}

/// ComfyUI's key prefix of CLIP-L in a FLUX checkpoint (transformers `CLIPTextModel` names
/// follow it).
pub const COMFY_CLIP_L_PREFIX: &str = "text_encoders.clip_l.transformer.";
/// ComfyUI's key prefix of T5-XXL in a FLUX checkpoint (transformers `T5EncoderModel` names).
pub const COMFY_T5XXL_PREFIX: &str = "text_encoders.t5xxl.transformer.";
/// ComfyUI's key prefix of the VAE in a checkpoint (LDM names, as BFL's `ae.safetensors`).
pub const COMFY_VAE_PREFIX: &str = "vae.";

/// The components a ComfyUI checkpoint holds besides the transformer, found by the tensor each
/// must have. A file that is not safetensors (or not readable) bundles nothing.
pub fn bundled_components(file: &Path) -> Bundled {
    let Ok(files) = crate::weights::WeightFiles::open(&[file.to_path_buf()]) else {
        return Bundled::default();
    };
    let found = |prefix: &str, key: &str| {
        files
            .contains(&format!("{prefix}{key}"))
            .then(|| BundledWeights {
                file: file.to_path_buf(),
                prefix: prefix.to_string(),
            })
    };
    Bundled {
        clip: found(
            COMFY_CLIP_L_PREFIX,
            "text_model.embeddings.token_embedding.weight",
        ),
        t5: found(COMFY_T5XXL_PREFIX, "encoder.final_layer_norm.weight"),
        vae: found(COMFY_VAE_PREFIX, "decoder.conv_in.weight"),
    }
}

/// T5 weights from a single file (`--t5`): a ComfyUI checkpoint's T5 under its prefix, or a
/// file of T5 tensors alone (transformers names; ComfyUI's `t5xxl_fp8_e4m3fn*.safetensors`).
pub fn t5_weights_file(file: &Path) -> BundledWeights {
    let prefix = bundled_components(file)
        .t5
        .map(|b| b.prefix)
        .unwrap_or_default();
    BundledWeights {
        file: file.to_path_buf(),
        prefix,
    }
}

/// What a checkpoint bundles besides the transformer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundled {
    /// CLIP-L's weights.
    pub clip: Option<BundledWeights>,
    /// T5-XXL's weights.
    pub t5: Option<BundledWeights>,
    /// The VAE's weights.
    pub vae: Option<BundledWeights>,
}

/// The resolved locations of every component of a FLUX.1 model.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    /// The model folder.
    pub root: PathBuf,
    /// `scheduler/scheduler_config.json`, if present (FLUX.1-dev's values are used otherwise).
    pub scheduler_config: Option<PathBuf>,
    /// CLIP tokenizer folder.
    pub tokenizer: PathBuf,
    /// T5 tokenizer folder.
    pub tokenizer_2: PathBuf,
    /// CLIP text encoder folder (its `config.json`, and its weights unless `clip_weights`).
    pub text_encoder: PathBuf,
    /// T5 encoder folder (its `config.json`, and its weights unless `t5_weights`).
    pub text_encoder_2: PathBuf,
    /// CLIP's weights from a checkpoint instead of `text_encoder/`.
    pub clip_weights: Option<BundledWeights>,
    /// T5's weights from a checkpoint instead of `text_encoder_2/`.
    pub t5_weights: Option<BundledWeights>,
    /// The transformer.
    pub transformer: TransformerSource,
    /// The VAE.
    pub vae: VaeSource,
}

/// Names under which BFL publishes its single-file transformers, tried in order.
pub const BFL_TRANSFORMER_FILES: &[&str] = &[
    "flux1-dev.safetensors",
    "flux1-schnell.safetensors",
    "flux1-krea-dev.safetensors",
];

impl ModelPaths {
    /// Resolves the components of the model in `root`. `transformer` and `vae` override the
    /// defaults with explicit single files.
    pub fn resolve(root: &Path, transformer: Option<&Path>, vae: Option<&Path>) -> Result<Self> {
        if !root.is_dir() {
            return Err(EngineError::MissingFile {
                path: root.to_path_buf(),
                what: "model folder".into(),
            });
        }
        let sub = |name: &str, what: &str| -> Result<PathBuf> {
            let p = root.join(name);
            if p.is_dir() {
                Ok(p)
            } else {
                Err(EngineError::MissingFile {
                    path: p,
                    what: what.into(),
                })
            }
        };
        let transformer = match transformer {
            Some(file) => {
                source_file(file, "transformer weights").map(TransformerSource::BflFile)?
            }
            None if root.join("transformer").is_dir() => {
                TransformerSource::Diffusers(root.join("transformer"))
            }
            None => BFL_TRANSFORMER_FILES
                .iter()
                .map(|f| root.join(f))
                .find(|p| p.is_file())
                .map(TransformerSource::BflFile)
                .ok_or_else(|| EngineError::UnknownLayout {
                    path: root.to_path_buf(),
                    msg: format!(
                        "no transformer/ folder and none of {} (pass the file explicitly)",
                        BFL_TRANSFORMER_FILES.join(", ")
                    ),
                })?,
        };
        let bundled = match &transformer {
            TransformerSource::BflFile(file) => bundled_components(file),
            TransformerSource::Diffusers(_) => Bundled::default(),
        };
        let vae = match (vae, bundled.vae.clone()) {
            (Some(file), _) => source_file(file, "VAE weights").map(VaeSource::BflFile)?,
            (None, Some(inside)) => VaeSource::Bundled(inside),
            (None, None) if root.join("vae").is_dir() => VaeSource::Diffusers(root.join("vae")),
            (None, None) if root.join("ae.safetensors").is_file() => {
                VaeSource::BflFile(root.join("ae.safetensors"))
            }
            (None, None) => {
                return Err(EngineError::UnknownLayout {
                    path: root.to_path_buf(),
                    msg: "no vae/ folder and no ae.safetensors".into(),
                })
            }
        };
        let scheduler = root.join("scheduler").join("scheduler_config.json");
        Ok(Self {
            root: root.to_path_buf(),
            scheduler_config: scheduler.is_file().then_some(scheduler),
            tokenizer: sub("tokenizer", "CLIP tokenizer folder")?,
            tokenizer_2: sub("tokenizer_2", "T5 tokenizer folder")?,
            text_encoder: sub("text_encoder", "CLIP text encoder folder")?,
            text_encoder_2: sub("text_encoder_2", "T5 text encoder folder")?,
            clip_weights: bundled.clip,
            t5_weights: bundled.t5,
            transformer,
            vae,
        })
    }

    /// Total size in bytes of the weight files (for memory reports).
    pub fn weight_bytes(&self) -> u64 {
        let mut dirs = Vec::new();
        let mut files = std::collections::BTreeSet::new();
        for (dir, bundled) in [
            (&self.text_encoder, &self.clip_weights),
            (&self.text_encoder_2, &self.t5_weights),
        ] {
            match bundled {
                Some(b) => {
                    files.insert(b.file.clone());
                }
                None => dirs.push(dir.clone()),
            }
        }
        match &self.transformer {
            TransformerSource::Diffusers(d) => dirs.push(d.clone()),
            TransformerSource::BflFile(f) => {
                files.insert(f.clone());
            }
        }
        match &self.vae {
            VaeSource::Diffusers(d) => dirs.push(d.clone()),
            VaeSource::BflFile(f) => {
                files.insert(f.clone());
            }
            VaeSource::Bundled(b) => {
                files.insert(b.file.clone());
            }
        }
        for d in dirs {
            if let Ok(rd) = std::fs::read_dir(&d) {
                files.extend(
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "safetensors")),
                );
            }
        }
        files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }
}

fn source_file(file: &Path, what: &str) -> Result<PathBuf> {
    if file.is_file() {
        Ok(file.to_path_buf())
    } else {
        Err(EngineError::MissingFile {
            path: file.to_path_buf(),
            what: what.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_component_names_the_folder() {
        let dir = std::env::temp_dir().join(format!("fluxd-layout-{}", std::process::id()));
        for d in [
            "tokenizer",
            "tokenizer_2",
            "text_encoder",
            "transformer",
            "vae",
        ] {
            std::fs::create_dir_all(dir.join(d)).ok();
        }
        let err = ModelPaths::resolve(&dir, None, None)
            .err()
            .map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(msg.contains("text_encoder_2"), "{msg}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bfl_files_are_used_when_folders_are_absent() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-layout-bfl-{}", std::process::id()));
        for d in ["tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| EngineError::io(&dir, e))?;
        }
        std::fs::write(dir.join("flux1-dev.safetensors"), b"x")
            .map_err(|e| EngineError::io(&dir, e))?;
        std::fs::write(dir.join("ae.safetensors"), b"x").map_err(|e| EngineError::io(&dir, e))?;
        let p = ModelPaths::resolve(&dir, None, None)?;
        assert_eq!(
            p.transformer,
            TransformerSource::BflFile(dir.join("flux1-dev.safetensors"))
        );
        assert_eq!(p.vae, VaeSource::BflFile(dir.join("ae.safetensors")));
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
