//! SigLIP's image preprocessing, as transformers' `SiglipImageProcessor` runs it on a PIL image
//! (transformers 5.23 `image_processing_backends.py` `PilBackend._preprocess`, the backend used
//! without torchvision and the one FLUX.1-Redux was released with): resize to the model's square
//! input with PIL's bicubic filter (no crop, the aspect ratio is not kept), multiply by
//! `rescale_factor` in f64 and cast to f32, then `(x - mean) / std` per channel in f32. Reading
//! the JSON and the rescale/normalise step are shared with the safety classifier's ViT processor
//! (`vit::processor`); SigLIP's defaults and rules (bicubic only, no centre crop) are here.
//!
//! The resize is Pillow's own algorithm (`safety::pil_resize`, shared with the safety
//! classifier); `tests/redux_reference.rs` compares it with Pillow's output level for level.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{EngineError, Result};
use crate::safety::{pil_resize, Resample};
use crate::vit::processor::{pixel_values, ProcessorJson};

/// `preprocessor_config.json` of a SigLIP image processor. Defaults are FLUX.1-Redux-dev's
/// (`feature_extractor/preprocessor_config.json`: 384×384, bicubic, mean = std = 0.5).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Output height and width.
    pub size: (usize, usize),
    /// PIL resampling filter (3 = bicubic, the only one supported).
    pub resample: u32,
    /// Whether to resize at all.
    pub do_resize: bool,
    /// Whether to multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Whether to normalise with `image_mean` / `image_std`.
    pub do_normalize: bool,
    /// Per-channel mean.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    pub image_std: [f32; 3],
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            size: (384, 384),
            resample: 3,
            do_resize: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        }
    }
}

impl PreprocessConfig {
    /// Reads a `preprocessor_config.json`; absent keys take transformers' SigLIP defaults, except
    /// `size`, which takes `default_size` (the vision model's `image_size`).
    pub fn load(path: &Path, default_size: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let raw = ProcessorJson::parse(&text, path)?;
        let d = Self::default();
        let resample = raw.resample.unwrap_or(u64::from(d.resample));
        if resample != 3 {
            return Err(EngineError::config(
                path,
                format!("resample {resample} is not supported (only 3, bicubic)"),
            ));
        }
        let cfg = Self {
            size: raw.size.unwrap_or((default_size, default_size)),
            resample: 3,
            do_resize: raw.do_resize.unwrap_or(d.do_resize),
            do_rescale: raw.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: raw.do_normalize.unwrap_or(d.do_normalize),
            image_mean: raw.image_mean.unwrap_or(d.image_mean),
            image_std: raw.image_std.unwrap_or(d.image_std),
        };
        if raw.do_center_crop == Some(true) {
            return Err(EngineError::config(path, "do_center_crop is not supported"));
        }
        if cfg.image_std.contains(&0.0) {
            return Err(EngineError::config(path, "image_std has a zero"));
        }
        if cfg.size.0 == 0 || cfg.size.1 == 0 {
            return Err(EngineError::config(path, "size is zero"));
        }
        Ok(cfg)
    }

    /// Resizes as Pillow's `Image.resize(size, BICUBIC)` does (a copy if already that size, as
    /// Pillow returns).
    pub fn resize(&self, img: &RgbImage) -> Result<RgbImage> {
        let (h, w) = self.size;
        if !self.do_resize || (img.width() as usize, img.height() as usize) == (w, h) {
            return Ok(img.clone());
        }
        let side = |v: usize| {
            u32::try_from(v).map_err(|_| EngineError::InvalidInput(format!("size {v} too large")))
        };
        pil_resize(img, side(w)?, side(h)?, Resample::Bicubic)
    }

    /// The model input for one image: (1, 3, height, width) f32 on `device`.
    pub fn pixel_values(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        let resized = self.resize(img)?;
        pixel_values(
            &resized,
            self.do_rescale.then_some(self.rescale_factor),
            self.do_normalize
                .then_some((self.image_mean, self.image_std)),
            device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_flux_redux_values_and_refuses_other_filters() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-redux-pp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        let path = dir.join("preprocessor_config.json");
        let write = |v: serde_json::Value| std::fs::write(&path, v.to_string());
        write(serde_json::json!({
            "do_convert_rgb": null, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor", "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384}
        }))
        .map_err(|e| EngineError::io(&path, e))?;
        assert_eq!(
            PreprocessConfig::load(&path, 1)?,
            PreprocessConfig::default()
        );
        write(serde_json::json!({"resample": 2, "image_mean": 0.25}))
            .map_err(|e| EngineError::io(&path, e))?;
        let msg = PreprocessConfig::load(&path, 8)
            .err()
            .map(|e| e.to_string());
        assert!(msg.unwrap_or_default().contains("resample 2"));
        // One integer is a square size (`get_size_dict(size, default_to_square=True)`).
        write(serde_json::json!({"size": 64})).map_err(|e| EngineError::io(&path, e))?;
        assert_eq!(PreprocessConfig::load(&path, 8)?.size, (64, 64));
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn pixel_values_are_normalised_planes() -> Result<()> {
        let cfg = PreprocessConfig {
            size: (2, 3),
            ..Default::default()
        };
        let img = RgbImage::from_fn(3, 2, |x, _| {
            image::Rgb([0, 255, if x == 0 { 51 } else { 0 }])
        });
        let t = cfg.pixel_values(&img, &Device::Cpu)?;
        assert_eq!(t.dims(), &[1, 3, 2, 3]);
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        assert_eq!(&v[..6], &[-1.0; 6]);
        assert_eq!(&v[6..12], &[1.0; 6]);
        assert!((v[12] - (-0.6)).abs() < 1e-6 && v[13] == -1.0);
        Ok(())
    }

    #[test]
    fn a_flat_image_stays_flat_through_the_resize() -> Result<()> {
        let cfg = PreprocessConfig {
            size: (20, 30),
            ..Default::default()
        };
        let img = RgbImage::from_pixel(7, 5, image::Rgb([12, 200, 99]));
        let out = cfg.resize(&img)?;
        assert_eq!(out.dimensions(), (30, 20));
        assert!(out.pixels().all(|p| p.0 == [12, 200, 99]));
        Ok(())
    }
}
