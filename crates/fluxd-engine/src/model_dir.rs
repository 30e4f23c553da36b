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
//! Single files named explicitly (`--transformer`, `--t5`, `--clip`) may be safetensors or GGUF,
//! told apart by their first bytes, not their extension. The folder still gives the configs
//! (`transformer/config.json`, `text_encoder_2/config.json`, ...), tokenizers, scheduler and VAE.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// Where the transformer weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformerSource {
    /// A diffusers `transformer/` folder.
    Diffusers(PathBuf),
    /// A BFL/ComfyUI single file.
    BflFile(PathBuf),
    /// A GGUF file in city96's FLUX layout (BFL names, quantized blocks).
    Gguf(PathBuf),
}

impl TransformerSource {
    /// A single transformer file, GGUF or safetensors by its content.
    pub fn file(path: &Path) -> Result<Self> {
        let path = source_file(path, "transformer weights")?;
        Ok(if crate::gguf::is_gguf(&path)? {
            Self::Gguf(path)
        } else {
            Self::BflFile(path)
        })
    }
}

/// Where the VAE weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeSource {
    /// A diffusers `vae/` folder.
    Diffusers(PathBuf),
    /// A BFL `ae.safetensors`.
    BflFile(PathBuf),
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
    /// CLIP text encoder folder.
    pub text_encoder: PathBuf,
    /// T5 encoder folder.
    pub text_encoder_2: PathBuf,
    /// The transformer.
    pub transformer: TransformerSource,
    /// `transformer/config.json`, if the folder has it (it gives a single file's RoPE axes and
    /// is checked against its shapes).
    pub transformer_config: Option<PathBuf>,
    /// The T5 encoder from a single file (GGUF or safetensors) instead of `text_encoder_2/`'s
    /// weights; `text_encoder_2/config.json` still gives its config when present.
    pub t5_file: Option<PathBuf>,
    /// The CLIP text encoder from a single file instead of `text_encoder/`'s weights.
    pub clip_file: Option<PathBuf>,
    /// The VAE.
    pub vae: VaeSource,
}

/// Names under which BFL publishes its single-file transformers, tried in order.
const BFL_TRANSFORMER_FILES: &[&str] = &[
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
            Some(file) => TransformerSource::file(file)?,
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
        let vae = match vae {
            Some(file) => source_file(file, "VAE weights").map(VaeSource::BflFile)?,
            None if root.join("vae").is_dir() => VaeSource::Diffusers(root.join("vae")),
            None if root.join("ae.safetensors").is_file() => {
                VaeSource::BflFile(root.join("ae.safetensors"))
            }
            None => {
                return Err(EngineError::UnknownLayout {
                    path: root.to_path_buf(),
                    msg: "no vae/ folder and no ae.safetensors".into(),
                })
            }
        };
        let scheduler = root.join("scheduler").join("scheduler_config.json");
        let transformer_config = root.join("transformer").join("config.json");
        Ok(Self {
            root: root.to_path_buf(),
            scheduler_config: scheduler.is_file().then_some(scheduler),
            tokenizer: sub("tokenizer", "CLIP tokenizer folder")?,
            tokenizer_2: sub("tokenizer_2", "T5 tokenizer folder")?,
            text_encoder: sub("text_encoder", "CLIP text encoder folder")?,
            text_encoder_2: sub("text_encoder_2", "T5 text encoder folder")?,
            transformer,
            transformer_config: transformer_config.is_file().then_some(transformer_config),
            t5_file: None,
            clip_file: None,
            vae,
        })
    }

    /// Takes the T5 and/or CLIP encoder from single files (GGUF or safetensors) instead of the
    /// folder's weights.
    pub fn with_text_encoder_files(
        mut self,
        t5: Option<&Path>,
        clip: Option<&Path>,
    ) -> Result<Self> {
        if let Some(f) = t5 {
            self.t5_file = Some(source_file(f, "T5 encoder weights")?);
        }
        if let Some(f) = clip {
            self.clip_file = Some(source_file(f, "CLIP text encoder weights")?);
        }
        Ok(self)
    }

    /// Total size in bytes of the weight files (for memory reports).
    pub fn weight_bytes(&self) -> u64 {
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for (file, dir) in [
            (&self.clip_file, &self.text_encoder),
            (&self.t5_file, &self.text_encoder_2),
        ] {
            match file {
                Some(f) => files.push(f.clone()),
                None => dirs.push(dir.clone()),
            }
        }
        match &self.transformer {
            TransformerSource::Diffusers(d) => dirs.push(d.clone()),
            TransformerSource::BflFile(f) | TransformerSource::Gguf(f) => files.push(f.clone()),
        }
        match &self.vae {
            VaeSource::Diffusers(d) => dirs.push(d.clone()),
            VaeSource::BflFile(f) => files.push(f.clone()),
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
