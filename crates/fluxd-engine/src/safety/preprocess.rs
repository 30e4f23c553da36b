//! The classifier's image preprocessing, exactly as transformers' slow (PIL) `ViTImageProcessor`
//! does it (`models/vit/image_processing_pil_vit.py` over `image_processing_backends.PilBackend`):
//! resize the 8-bit RGB image with Pillow's resampling filter, rescale by `rescale_factor` (in
//! f64, then cast to f32, `image_transforms.rescale`), normalize `(x - mean) / std` in f32
//! (`image_transforms.normalize`), channels first. Reading the JSON and the rescale/normalise
//! step are shared with Redux's SigLIP processor (`vit::processor`); ViT's defaults and rules
//! are here.
//!
//! The resize is Pillow's own arithmetic (`safety::resample`), so the resized pixels are
//! Pillow's (checked by `tests/safety_reference.rs` against PIL itself).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::vit::processor::{pixel_values, ProcessorJson};

/// Pillow's resampling filters by the integer code transformers stores in `resample`
/// (`PIL.Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// 0, `NEAREST`.
    Nearest,
    /// 1, `LANCZOS`.
    Lanczos,
    /// 2, `BILINEAR` (the ViT default; the only one checked against Pillow by our tests).
    Bilinear,
    /// 3, `BICUBIC`.
    Bicubic,
    /// 4, `BOX`.
    Box,
    /// 5, `HAMMING`.
    Hamming,
}

impl Resample {
    /// Parses Pillow's integer code.
    pub fn from_pil_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }
}

/// `preprocessor_config.json` of a ViT image classifier. Missing fields take
/// `ViTImageProcessor`'s defaults (224×224, bilinear, rescale 1/255, mean = std = 0.5).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// Whether to resize to `size`.
    pub do_resize: bool,
    /// Output (height, width).
    pub size: (usize, usize),
    /// Resampling filter of the resize.
    pub resample: Resample,
    /// Whether to multiply the 0..255 levels by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Whether to apply `(x - mean) / std`.
    pub do_normalize: bool,
    /// Per-channel mean (R, G, B).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B).
    pub image_std: [f32; 3],
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: (224, 224),
            resample: Resample::Bilinear,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        }
    }
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(EngineError::MissingFile {
                path: path.to_path_buf(),
                what: "image processor config".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses the JSON text; `path` is named in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw = ProcessorJson::parse(text, path)?;
        let d = Self::default();
        let resample = match raw.resample {
            None => d.resample,
            Some(c) => Resample::from_pil_code(c).ok_or_else(|| {
                EngineError::config(
                    path,
                    format!("`resample` {c} is not a Pillow filter (0..=5)"),
                )
            })?,
        };
        // `ViTImageProcessor` has no centre crop, so `do_center_crop` is not read.
        let cfg = Self {
            do_resize: raw.do_resize.unwrap_or(d.do_resize),
            size: raw.size.unwrap_or(d.size),
            resample,
            do_rescale: raw.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: raw.do_normalize.unwrap_or(d.do_normalize),
            image_mean: raw.image_mean.unwrap_or(d.image_mean),
            image_std: raw.image_std.unwrap_or(d.image_std),
        };
        let bad = |msg: &str| EngineError::config(path, msg);
        if cfg.size.0 == 0 || cfg.size.1 == 0 {
            return Err(bad("`size` must be positive"));
        }
        if cfg.do_normalize && cfg.image_std.contains(&0.0) {
            return Err(bad("`image_std` has a zero"));
        }
        Ok(cfg)
    }

    /// The JSON transformers writes for this config (`ViTImageProcessor.to_json_string`).
    pub fn to_json(&self) -> serde_json::Value {
        let code = match self.resample {
            Resample::Nearest => 0,
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
            Resample::Box => 4,
            Resample::Hamming => 5,
        };
        serde_json::json!({
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": self.image_mean,
            "image_processor_type": "ViTImageProcessor",
            "image_std": self.image_std,
            "resample": code,
            "rescale_factor": self.rescale_factor,
            "size": { "height": self.size.0, "width": self.size.1 },
        })
    }
}

/// Turns RGB images into the classifier's `pixel_values`.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    cfg: ImageProcessorConfig,
    path: PathBuf,
}

impl ImageProcessor {
    /// A processor for `cfg`; `path` (its file) is named in errors.
    pub fn new(cfg: ImageProcessorConfig, path: impl Into<PathBuf>) -> Self {
        Self {
            cfg,
            path: path.into(),
        }
    }

    /// The config.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.cfg
    }

    /// Resizes as Pillow's `Image.resize(size, resample)` does (no `reducing_gap`), or returns
    /// the image unchanged when resizing is off or the size already matches (Pillow copies).
    pub fn resize(&self, img: &image::RgbImage) -> Result<image::RgbImage> {
        let (h, w) = self.cfg.size;
        if !self.cfg.do_resize || (img.height() as usize, img.width() as usize) == (h, w) {
            return Ok(img.clone());
        }
        if img.width() == 0 || img.height() == 0 {
            return Err(EngineError::InvalidInput("the image is empty".into()));
        }
        pil_resize(img, w as u32, h as u32, self.cfg.resample)
    }

    /// `pixel_values` (1, 3, height, width) in f32 on `device`.
    pub fn preprocess(&self, img: &image::RgbImage, device: &Device) -> Result<Tensor> {
        let img = self.resize(img)?;
        // With `do_resize` off the size may differ; the model checks it (as transformers does).
        pixel_values(
            &img,
            self.cfg.do_rescale.then_some(self.cfg.rescale_factor),
            self.cfg
                .do_normalize
                .then_some((self.cfg.image_mean, self.cfg.image_std)),
            device,
        )
    }

    /// The config file, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Resizes an RGB image to `w`×`h` exactly as Pillow's `Image.resize((w, h), filter)` does.
pub fn pil_resize(
    img: &image::RgbImage,
    w: u32,
    h: u32,
    filter: Resample,
) -> Result<image::RgbImage> {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    let out =
        super::resample::resize_rgb8(img.as_raw(), (sw, sh), (w as usize, h as usize), filter)?;
    image::RgbImage::from_raw(w, h, out)
        .ok_or_else(|| EngineError::Image(format!("resize to {w}x{h}: buffer size mismatch")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_falconsai_config_parse() -> Result<()> {
        // The preprocessor config of Falconsai/nsfw_image_detection.
        let text = r#"{"do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "ViTImageProcessor",
            "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 0.00392156862745098,
            "size": {"height": 224, "width": 224}}"#;
        let cfg = ImageProcessorConfig::from_json(text, Path::new("p.json"))?;
        assert_eq!(cfg, ImageProcessorConfig::default());
        let round = ImageProcessorConfig::from_json(&cfg.to_json().to_string(), Path::new("p"))?;
        assert_eq!(round, cfg);
        let legacy =
            ImageProcessorConfig::from_json(r#"{"size": 32, "image_mean": 0.25}"#, Path::new("p"))?;
        assert_eq!((legacy.size, legacy.image_mean), ((32, 32), [0.25; 3]));
        Ok(())
    }

    #[test]
    fn bad_configs_name_the_file_and_field() {
        for (text, field) in [
            (r#"{"size": {"shortest_edge": 224}}"#, "size"),
            (r#"{"resample": 9}"#, "resample"),
            (r#"{"image_std": [1, 0, 1]}"#, "image_std"),
            (r#"{"image_mean": [1, 2]}"#, "image_mean"),
        ] {
            let msg = ImageProcessorConfig::from_json(text, Path::new("pp.json"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains("pp.json") && msg.contains(field), "{msg}");
        }
    }

    #[test]
    fn pixel_values_are_rescaled_and_normalized_channels_first() -> Result<()> {
        let cfg = ImageProcessorConfig {
            size: (2, 3),
            ..Default::default()
        };
        let p = ImageProcessor::new(cfg, "p.json");
        let img = image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([255, (x * 50) as u8, y as u8]));
        let t = p.preprocess(&img, &Device::Cpu)?;
        assert_eq!(t.dims(), &[1, 3, 2, 3]);
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        assert_eq!(&v[..6], &[1.0; 6]);
        // G at (x=1, y=0): 50/255 → (0.196.. - 0.5) / 0.5.
        assert_eq!(v[7], ((50.0f64 / 255.0) as f32 - 0.5) / 0.5);
        assert_eq!(v[12], -1.0);
        Ok(())
    }

    #[test]
    fn a_uniform_image_stays_uniform_through_resize() -> Result<()> {
        let img = image::RgbImage::from_pixel(37, 21, image::Rgb([10, 200, 77]));
        for f in [
            Resample::Bilinear,
            Resample::Bicubic,
            Resample::Lanczos,
            Resample::Nearest,
        ] {
            let out = pil_resize(&img, 16, 16, f)?;
            assert!(out.pixels().all(|p| p.0 == [10, 200, 77]), "{f:?}");
        }
        Ok(())
    }
}
