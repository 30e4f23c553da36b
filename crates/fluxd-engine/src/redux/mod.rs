//! FLUX.1 Redux: an image as a prompt. SigLIP encodes the image, a two-layer projection maps
//! its tokens to the transformer's text width, and the pipeline appends them after the T5 tokens
//! (BFL `flux/sampling.py` `prepare_redux`; diffusers `pipelines/flux/pipeline_flux_prior_redux.py`
//! and `modeling_flux.py` `ReduxImageEncoder`).
//!
//! Two layouts load:
//! - `black-forest-labs/FLUX.1-Redux-dev` as the hub has it: `feature_extractor/`,
//!   `image_encoder/` (transformers `SiglipVisionModel`), `image_embedder/` (diffusers
//!   `ReduxImageEncoder`), `model_index.json`;
//! - the BFL single file `flux1-redux-dev.safetensors` (keys `redux_up.*`, `redux_down.*`), given
//!   as a file or found in a folder without `image_embedder/`, with the SigLIP model from a
//!   separate folder (`google/siglip-so400m-patch14-384`, or an `image_encoder/` folder).

mod input;
mod preprocess;
mod siglip;
mod write;

pub use input::{decode_image_prompt, to_rgb_over_white, ImagePromptError};
pub use preprocess::PreprocessConfig;
pub use siglip::{SiglipVisionConfig, SiglipVisionEncoder};
pub use write::{write_tiny_redux_model, BFL_REDUX_FILE};

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::error::{EngineError, Result};
use crate::text_encoders::{linear, Linear};
use crate::weights::WeightFiles;

/// Where the parts of a Redux model are on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReduxPaths {
    /// The SigLIP folder (`config.json` + `model.safetensors`).
    pub image_encoder: PathBuf,
    /// `preprocessor_config.json`, if one was found (FLUX.1-Redux-dev's values otherwise, at the
    /// encoder's `image_size`).
    pub preprocessor_config: Option<PathBuf>,
    /// The projection weights: the diffusers `image_embedder/` weight file(s) or the BFL file.
    pub embedder: Vec<PathBuf>,
}

impl ReduxPaths {
    /// Resolves a Redux model. `redux` is a FLUX.1-Redux-dev folder or a BFL
    /// `flux1-redux-dev.safetensors` file; `siglip` names the SigLIP folder when `redux` has no
    /// `image_encoder/` (it takes precedence when given).
    pub fn resolve(redux: &Path, siglip: Option<&Path>) -> Result<Self> {
        let redux_dir = redux.is_dir().then_some(redux);
        let embedder = if redux.is_file() {
            vec![redux.to_path_buf()]
        } else if let Some(dir) = redux_dir {
            let emb = dir.join("image_embedder");
            if emb.is_dir() {
                WeightFiles::open_dir(&emb, &["diffusion_pytorch_model", "model"])?
                    .paths()
                    .to_vec()
            } else if dir.join(BFL_REDUX_FILE).is_file() {
                vec![dir.join(BFL_REDUX_FILE)]
            } else {
                return Err(EngineError::UnknownLayout {
                    path: dir.to_path_buf(),
                    msg: format!("no image_embedder/ folder and no {BFL_REDUX_FILE}"),
                });
            }
        } else {
            return Err(EngineError::MissingFile {
                path: redux.to_path_buf(),
                what: "Redux model (folder or flux1-redux-dev.safetensors)".into(),
            });
        };
        let image_encoder = match (siglip, redux_dir) {
            (Some(s), _) if s.is_dir() => s.to_path_buf(),
            (Some(s), _) => {
                return Err(EngineError::MissingFile {
                    path: s.to_path_buf(),
                    what: "SigLIP vision model folder".into(),
                })
            }
            (None, Some(dir)) if dir.join("image_encoder").is_dir() => dir.join("image_encoder"),
            (None, _) => {
                return Err(EngineError::MissingFile {
                    path: redux_dir.unwrap_or(redux).join("image_encoder"),
                    what: "SigLIP vision model folder (or name one explicitly)".into(),
                })
            }
        };
        // The processor settings of FLUX.1-Redux-dev's `feature_extractor/`, also when the BFL
        // file is named inside that folder.
        let mut candidates = Vec::new();
        if let Some(dir) = redux_dir.or_else(|| redux.parent()) {
            candidates.push(
                dir.join("feature_extractor")
                    .join("preprocessor_config.json"),
            );
        }
        candidates.push(image_encoder.join("preprocessor_config.json"));
        let preprocessor_config = candidates.into_iter().find(|p| p.is_file());
        Ok(Self {
            image_encoder,
            preprocessor_config,
            embedder,
        })
    }
}

/// A loaded Redux model: image in, conditioning tokens out.
pub struct ReduxModel {
    preprocess: PreprocessConfig,
    encoder: SiglipVisionEncoder,
    up: Linear,
    down: Linear,
    joint_dim: usize,
    dtype: DType,
    device: Device,
}

impl ReduxModel {
    /// Loads a Redux model (see [`ReduxPaths::resolve`] for what `redux` and `siglip` may be)
    /// in `dtype` on `device`.
    pub fn load(
        redux: &Path,
        siglip: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load_paths(&ReduxPaths::resolve(redux, siglip)?, dtype, device)
    }

    /// Loads from resolved paths.
    pub fn load_paths(paths: &ReduxPaths, dtype: DType, device: &Device) -> Result<Self> {
        let encoder = SiglipVisionEncoder::load(&paths.image_encoder, dtype, device)?;
        let cfg = encoder.config();
        let preprocess = match &paths.preprocessor_config {
            Some(p) => PreprocessConfig::load(p, cfg.image_size)?,
            None => PreprocessConfig {
                size: (cfg.image_size, cfg.image_size),
                ..PreprocessConfig::default()
            },
        };
        if preprocess.size != (cfg.image_size, cfg.image_size) {
            return Err(EngineError::UnknownLayout {
                path: paths
                    .preprocessor_config
                    .clone()
                    .unwrap_or_else(|| paths.image_encoder.clone()),
                msg: format!(
                    "the image processor resizes to {}x{} but the SigLIP encoder takes {s}x{s}",
                    preprocess.size.1,
                    preprocess.size.0,
                    s = cfg.image_size
                ),
            });
        }
        let w = WeightFiles::open(&paths.embedder)?;
        // Sizes come from the file (the BFL file has no config): redux_up is
        // (3·joint, redux_dim), redux_down (joint, 3·joint).
        let up_shape = w
            .shape("redux_up.weight")
            .ok_or_else(|| w.missing("redux_up.weight"))?
            .to_vec();
        let down_shape = w
            .shape("redux_down.weight")
            .ok_or_else(|| w.missing("redux_down.weight"))?
            .to_vec();
        let (hidden3, redux_dim) = match up_shape.as_slice() {
            [a, b] => (*a, *b),
            _ => {
                return Err(EngineError::ShapeMismatch {
                    path: w
                        .file_of("redux_up.weight")
                        .unwrap_or(Path::new(""))
                        .to_path_buf(),
                    name: "redux_up.weight".into(),
                    expected: vec![0, cfg.hidden_size],
                    actual: up_shape,
                })
            }
        };
        if redux_dim != cfg.hidden_size {
            return Err(EngineError::ShapeMismatch {
                path: w
                    .file_of("redux_up.weight")
                    .unwrap_or(Path::new(""))
                    .to_path_buf(),
                name: "redux_up.weight".into(),
                expected: vec![hidden3, cfg.hidden_size],
                actual: up_shape,
            });
        }
        let joint_dim = down_shape.first().copied().unwrap_or(0);
        let up = linear(&w, "redux_up", hidden3, redux_dim, true, dtype, device)?;
        let down = linear(&w, "redux_down", joint_dim, hidden3, true, dtype, device)?;
        Ok(Self {
            preprocess,
            encoder,
            up,
            down,
            joint_dim,
            dtype,
            device: device.clone(),
        })
    }

    /// Width of the tokens produced: the FLUX transformer's `joint_attention_dim` (4096).
    pub fn joint_dim(&self) -> usize {
        self.joint_dim
    }

    /// Tokens per image (729 for FLUX.1-Redux-dev).
    pub fn num_tokens(&self) -> usize {
        self.encoder.config().num_patches()
    }

    /// The image preprocessing settings.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// The SigLIP encoder.
    pub fn siglip(&self) -> &SiglipVisionEncoder {
        &self.encoder
    }

    /// The SigLIP input for `image`: (1, 3, S, S) f32.
    pub fn pixel_values(&self, image: &RgbImage) -> Result<Tensor> {
        self.preprocess.pixel_values(image, &self.device)
    }

    /// `redux_down(silu(redux_up(x)))` on SigLIP hidden states (B, N, redux_dim), taken to the
    /// model's device and dtype first.
    pub fn project(&self, hidden: &Tensor) -> Result<Tensor> {
        let hidden = hidden.to_device(&self.device)?.to_dtype(self.dtype)?;
        let h = self.up.forward(&hidden)?.silu()?;
        self.down.forward(&h)
    }

    /// The image's conditioning tokens, (1, num_tokens, joint_dim) in the model dtype: what
    /// `FluxPriorReduxPipeline` appends to the T5 embeddings.
    pub fn encode(&self, image: &RgbImage) -> Result<Tensor> {
        if image.width() == 0 || image.height() == 0 {
            return Err(EngineError::InvalidInput(
                "image_prompt has no pixels".into(),
            ));
        }
        let hidden = self.encoder.forward(&self.pixel_values(image)?)?;
        self.project(&hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fluxd-redux-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        dir
    }

    #[test]
    fn both_layouts_load_and_agree() -> Result<()> {
        let dir = temp("layouts");
        write_tiny_redux_model(&dir, &SiglipVisionConfig::tiny(), 24, 3)?;
        let hf = ReduxModel::load(&dir, None, DType::F32, &Device::Cpu)?;
        assert_eq!((hf.joint_dim(), hf.num_tokens()), (24, 16));
        let img = RgbImage::from_fn(50, 37, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 128]));
        let a = hf.encode(&img)?;
        assert_eq!(a.dims(), &[1, 16, 24]);
        // The BFL file with the SigLIP folder named explicitly.
        let bfl = ReduxModel::load(
            &dir.join(BFL_REDUX_FILE),
            Some(&dir.join("image_encoder")),
            DType::F32,
            &Device::Cpu,
        )?;
        let b = bfl.encode(&img)?;
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn missing_parts_are_named() -> Result<()> {
        let dir = temp("missing");
        write_tiny_redux_model(&dir, &SiglipVisionConfig::tiny(), 8, 1)?;
        let msg = |r: Result<ReduxModel>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let m = msg(ReduxModel::load(
            &dir.join(BFL_REDUX_FILE),
            None,
            DType::F32,
            &Device::Cpu,
        ));
        assert!(m.contains("image_encoder") && m.contains("SigLIP"), "{m}");
        std::fs::remove_dir_all(dir.join("image_embedder")).ok();
        std::fs::remove_file(dir.join(BFL_REDUX_FILE)).ok();
        let m = msg(ReduxModel::load(&dir, None, DType::F32, &Device::Cpu));
        assert!(
            m.contains("image_embedder") && m.contains(BFL_REDUX_FILE),
            "{m}"
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn bf16_stays_close_to_f32() -> Result<()> {
        let dir = temp("bf16");
        write_tiny_redux_model(&dir, &SiglipVisionConfig::tiny(), 16, 2)?;
        let img = RgbImage::from_fn(80, 64, |x, y| image::Rgb([(x * 3) as u8, (y * 4) as u8, 9]));
        let f = ReduxModel::load(&dir, None, DType::F32, &Device::Cpu)?.encode(&img)?;
        let h = ReduxModel::load(&dir, None, DType::BF16, &Device::Cpu)?.encode(&img)?;
        assert_eq!(h.dtype(), DType::BF16);
        let err = (h.to_dtype(DType::F32)? - &f)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let scale = f.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err / scale < 0.05, "bf16 relative error {}", err / scale);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
