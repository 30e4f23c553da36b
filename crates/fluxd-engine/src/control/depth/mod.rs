//! Depth Anything (transformers `DepthAnythingForDepthEstimation`, the format of
//! `LiheYoung/depth-anything-large-hf` that BFL's reference code loads) and the control image
//! the FLUX.1 Depth model is conditioned on.
//!
//! - [`DepthEstimator`] loads a folder (`config.json`, `preprocessor_config.json`,
//!   `model.safetensors`), preprocesses like the (PIL) `DPTImageProcessor` (resize keeping the
//!   aspect ratio to multiples of 14 with Pillow's filter, rescale, normalise) and predicts
//!   relative depth: DINOv2 backbone ([`dinov2`]), DPT neck and head ([`dpt`]).
//! - [`bfl_depth_control`] is BFL's `DepthImageEncoder` (flux `modules/image_embedders.py`):
//!   the image's levels through the reference's float round trip, the prediction resized to the
//!   image size with PyTorch's antialiased bicubic, on 3 channels, scaled by `1/127.5 − 1` (no
//!   normalisation: the raw prediction is the 0..255 map).
//! - [`DepthMap::to_image`] makes the 8-bit map a person looks at: the reference's levels
//!   (clamped to 0..255), or stretched from min..max to 0..255 as the preprocessor in diffusers'
//!   Flux Depth docs (`image_gen_aux.DepthPreprocessor`) does.
//! - [`write_tiny_depth_anything`] writes a tiny random model in the real layout.

mod config;
mod dinov2;
mod dpt;
mod interp;
mod write;

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{GrayImage, RgbImage};

pub use config::{DepthAnythingConfig, DepthKind, DepthProcessorConfig, Dinov2Config};
pub use write::write_tiny_depth_anything;

use crate::control::canny::bfl_level_round_trip;
use crate::error::{EngineError, Result};
use crate::safety::pil_resize;
use crate::vit::processor::pixel_values;
use crate::weights::WeightFiles;

/// A loaded Depth Anything model with its image processor.
pub struct DepthEstimator {
    cfg: DepthAnythingConfig,
    processor: DepthProcessorConfig,
    backbone: dinov2::Dinov2,
    head: dpt::DptHead,
    device: Device,
}

/// Every stage of one forward pass, for comparisons with the reference.
pub struct DepthStages {
    /// The backbone's embeddings (`[CLS]` + patches + positions), (B, 1 + patches, hidden).
    pub embeddings: Tensor,
    /// The selected backbone states after the final LayerNorm.
    pub backbone: Vec<Tensor>,
    /// The neck's reassembled maps after `neck.convs`, finest first.
    pub reassembled: Vec<Tensor>,
    /// The fusion stage's outputs, coarsest first.
    pub fused: Vec<Tensor>,
    /// `predicted_depth`, (B, h, w).
    pub depth: Tensor,
}

impl DepthEstimator {
    /// Loads a Depth Anything folder in the transformers layout onto `device` (float32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = DepthAnythingConfig::from_dir(dir)?;
        let processor = DepthProcessorConfig::from_dir(dir)?;
        let w = WeightFiles::open_dir(dir, &["model"])?;
        let backbone = dinov2::Dinov2::load(cfg.backbone.clone(), "backbone", &w, device)?;
        let head = dpt::DptHead::load(&cfg, &w, device)?;
        if cfg.reassemble_hidden_size != cfg.backbone.hidden_size {
            return Err(EngineError::config(
                dir.join("config.json"),
                format!(
                    "reassemble_hidden_size {} differs from the backbone's hidden_size {}",
                    cfg.reassemble_hidden_size, cfg.backbone.hidden_size
                ),
            ));
        }
        Ok(Self {
            cfg,
            processor,
            backbone,
            head,
            device: device.clone(),
        })
    }

    /// The model's config.
    pub fn config(&self) -> &DepthAnythingConfig {
        &self.cfg
    }

    /// The processor's settings.
    pub fn processor(&self) -> &DepthProcessorConfig {
        &self.processor
    }

    /// The image resized as the processor does (unchanged without `do_resize`).
    pub fn resize(&self, img: &RgbImage) -> Result<RgbImage> {
        let p = &self.processor;
        if !p.do_resize {
            return Ok(img.clone());
        }
        let (h, w) = p.output_size((img.height() as usize, img.width() as usize));
        if h == 0 || w == 0 {
            return Err(EngineError::InvalidInput(format!(
                "a {}x{} image resizes to nothing for Depth Anything",
                img.width(),
                img.height()
            )));
        }
        pil_resize(img, w as u32, h as u32, p.resample)
    }

    /// `pixel_values` (1, 3, h, w) for an RGB image, as the processor makes them.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        let resized = self.resize(img)?;
        pixel_values(
            &resized,
            self.processor.rescale,
            self.processor.normalize,
            &self.device,
        )
    }

    /// Every stage of the model on `pixel_values` (B, 3, H, W).
    pub fn stages(&self, pixel_values: &Tensor) -> Result<DepthStages> {
        let (_, _, h, w) = pixel_values.dims4()?;
        let grid = self.backbone.grid((h, w));
        let embeddings = self.backbone.embed(pixel_values)?;
        let backbone = self.backbone.forward(pixel_values)?;
        let reassembled = self.head.reassemble(&backbone, grid)?;
        let fused = self.head.fuse(&reassembled)?;
        let depth = self.head.head(&fused, grid)?;
        Ok(DepthStages {
            embeddings,
            backbone,
            reassembled,
            fused,
            depth,
        })
    }

    /// `predicted_depth` (B, h, w) for `pixel_values` (B, 3, H, W).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = pixel_values.dims4()?;
        let grid = self.backbone.grid((h, w));
        let states = self.backbone.forward(pixel_values)?;
        let maps = self.head.reassemble(&states, grid)?;
        self.head.head(&self.head.fuse(&maps)?, grid)
    }

    /// The predicted depth of an RGB image, at the model's resolution.
    pub fn predict(&self, img: &RgbImage) -> Result<DepthMap> {
        let depth = self.forward(&self.preprocess(img)?)?;
        let (_, h, w) = depth.dims3()?;
        Ok(DepthMap {
            values: depth.flatten_all()?.to_vec1()?,
            height: h,
            width: w,
        })
    }
}

/// A predicted depth map (relative inverse depth for Depth Anything V1), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthMap {
    /// `height × width` values.
    pub values: Vec<f32>,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// How [`DepthMap::to_image`] maps depth values to 8-bit levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthLevels {
    /// The values themselves, rounded and clamped to 0..255: what BFL's encoder feeds the model
    /// (its `depth / 127.5 − 1` reads the prediction as 0..255 levels).
    Reference,
    /// Stretched so the map's minimum is 0 and its maximum 255 (`image_gen_aux`'s
    /// `(d − min) / (max − min)`, then `round(· 255)`); a flat map is all 0.
    MinMax,
}

impl DepthMap {
    /// The map resized to (height, width) with PyTorch's antialiased bicubic, as BFL's encoder
    /// resizes it to the image size.
    pub fn resized(&self, (h, w): (usize, usize)) -> DepthMap {
        let values = interp::bicubic_antialiased(&self.values, (self.height, self.width), (h, w));
        DepthMap {
            values,
            height: h,
            width: w,
        }
    }

    /// The 3-channel control tensor (1, 3, H, W) of BFL's `DepthImageEncoder`: `value / 127.5
    /// − 1` on every channel (the map should already be resized to the image).
    pub fn control_tensor(&self, device: &Device) -> Result<Tensor> {
        crate::control::control_tensor(&self.values, self.height, self.width, device)
    }

    /// The map as an 8-bit image.
    pub fn to_image(&self, levels: DepthLevels) -> GrayImage {
        let to_u8 = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        let data: Vec<u8> = match levels {
            DepthLevels::Reference => self.values.iter().map(|&v| to_u8(v)).collect(),
            DepthLevels::MinMax => {
                let lo = self.values.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = self
                    .values
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max);
                let span = hi - lo;
                self.values
                    .iter()
                    .map(|&v| {
                        if span > 0.0 {
                            to_u8((v - lo) / span * 255.0)
                        } else {
                            0
                        }
                    })
                    .collect()
            }
        };
        GrayImage::from_raw(self.width as u32, self.height as u32, data)
            .unwrap_or_else(|| GrayImage::new(self.width as u32, self.height as u32))
    }
}

/// BFL's `DepthImageEncoder` on an RGB control image: the reference's level round trip
/// ([`bfl_level_round_trip`]), the processor and the model, then the prediction resized to the
/// image's size (antialiased bicubic). [`DepthMap::control_tensor`] of the result is the
/// encoder's output.
pub fn bfl_depth_map(est: &DepthEstimator, img: &RgbImage) -> Result<DepthMap> {
    let lut = bfl_level_round_trip();
    let mut levels = img.clone();
    for v in levels.iter_mut() {
        *v = lut[usize::from(*v)];
    }
    let map = est.predict(&levels)?;
    Ok(map.resized((img.height() as usize, img.width() as usize)))
}

/// [`bfl_depth_map`] as the encoder's (1, 3, H, W) tensor in the model's control scale.
pub fn bfl_depth_control(est: &DepthEstimator, img: &RgbImage) -> Result<Tensor> {
    bfl_depth_map(est, img)?.control_tensor(&est.device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_reference_clamps_and_min_max_stretches() {
        let m = DepthMap {
            values: vec![-3.0, 10.4, 10.6, 300.0],
            height: 2,
            width: 2,
        };
        assert_eq!(
            m.to_image(DepthLevels::Reference).into_raw(),
            vec![0, 10, 11, 255]
        );
        let mm = m.to_image(DepthLevels::MinMax).into_raw();
        assert_eq!((mm[0], mm[3]), (0, 255));
        let flat = DepthMap {
            values: vec![2.0; 6],
            height: 2,
            width: 3,
        };
        assert_eq!(flat.to_image(DepthLevels::MinMax).into_raw(), vec![0; 6]);
    }

    #[test]
    fn tiny_model_loads_and_predicts_at_the_patch_resolution() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-depth-unit-{}", std::process::id()));
        write_tiny_depth_anything(&dir, 3)?;
        let est = DepthEstimator::load(&dir, &Device::Cpu)?;
        // 40×90 (w×h): the height's scale (56/90) is closer to 1 → 56 × round(24.9/14)·14 = 28.
        let img = RgbImage::from_fn(40, 90, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 2) as u8, 90])
        });
        let map = est.predict(&img)?;
        assert_eq!((map.height, map.width), (56, 28));
        assert!(map.values.iter().all(|v| v.is_finite() && *v >= 0.0));
        let ctl = bfl_depth_control(&est, &img)?;
        assert_eq!(ctl.dims(), &[1, 3, 90, 40]);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
