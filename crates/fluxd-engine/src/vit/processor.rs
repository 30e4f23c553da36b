//! What the SigLIP (Redux) and ViT (safety) image processors share: reading the keys of
//! `preprocessor_config.json`, and turning a resized 8-bit RGB image into channels-first
//! `pixel_values` the way transformers' PIL backend does (`image_processing_backends.py`
//! `PilBackend._preprocess`: `image_transforms.rescale` multiplies in f64 and casts to f32,
//! `image_transforms.normalize` computes `(x - mean) / std` in f32).
//!
//! Defaults and the rules on which values are supported differ between the two models (SigLIP:
//! bicubic only, no centre crop; ViT: any Pillow filter), so each applies its own on top of
//! [`ProcessorJson`].

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The keys of a `preprocessor_config.json` the two processors read, as the file has them
/// (`None` where absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ProcessorJson {
    /// `do_resize`.
    pub do_resize: Option<bool>,
    /// `size` as (height, width): `{"height": h, "width": w}`, or one integer for both
    /// (`get_size_dict` with `default_to_square`).
    pub size: Option<(usize, usize)>,
    /// `resample`: a Pillow filter code.
    pub resample: Option<u64>,
    /// `do_rescale`.
    pub do_rescale: Option<bool>,
    /// `rescale_factor`.
    pub rescale_factor: Option<f64>,
    /// `do_normalize`.
    pub do_normalize: Option<bool>,
    /// `image_mean`: one number for all channels, or three.
    pub image_mean: Option<[f32; 3]>,
    /// `image_std`: one number for all channels, or three.
    pub image_std: Option<[f32; 3]>,
    /// `do_center_crop`.
    pub do_center_crop: Option<bool>,
}

/// The raw JSON, before the shapes of `size`, `image_mean` and `image_std` are checked.
#[derive(Deserialize)]
struct Raw {
    do_resize: Option<bool>,
    size: Option<serde_json::Value>,
    resample: Option<u64>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<serde_json::Value>,
    image_std: Option<serde_json::Value>,
    do_center_crop: Option<bool>,
}

impl ProcessorJson {
    /// Parses the JSON text of the file at `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let raw: Raw =
            serde_json::from_str(text).map_err(|e| EngineError::config(path, e.to_string()))?;
        let bad = |msg: String| EngineError::config(path, msg);
        let size = match &raw.size {
            None => None,
            Some(v) => Some(parse_size(v).ok_or_else(|| {
                bad(format!(
                    "`size` {v} is not {{\"height\": h, \"width\": w}} or an integer (the model \
                     resizes to a fixed size)"
                ))
            })?),
        };
        let triple = |v: &Option<serde_json::Value>, name: &str| {
            v.as_ref()
                .map(|v| {
                    parse_triple(v)
                        .ok_or_else(|| bad(format!("`{name}` {v} is not 1 or 3 numbers")))
                })
                .transpose()
        };
        Ok(Self {
            do_resize: raw.do_resize,
            size,
            resample: raw.resample,
            do_rescale: raw.do_rescale,
            rescale_factor: raw.rescale_factor,
            do_normalize: raw.do_normalize,
            image_mean: triple(&raw.image_mean, "image_mean")?,
            image_std: triple(&raw.image_std, "image_std")?,
            do_center_crop: raw.do_center_crop,
        })
    }
}

fn parse_size(v: &serde_json::Value) -> Option<(usize, usize)> {
    if let Some(n) = v.as_u64() {
        return Some((n as usize, n as usize));
    }
    let h = v.get("height")?.as_u64()?;
    let w = v.get("width")?.as_u64()?;
    Some((h as usize, w as usize))
}

fn parse_triple(v: &serde_json::Value) -> Option<[f32; 3]> {
    if let Some(x) = v.as_f64() {
        return Some([x as f32; 3]);
    }
    let a = v.as_array()?;
    if a.len() != 3 {
        return None;
    }
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x.as_f64()? as f32;
    }
    Some(out)
}

/// `pixel_values` (1, 3, height, width) in f32 on `device` for an already resized image:
/// each level times `rescale` (if given) in f64, cast to f32, then `(x - mean) / std` per
/// channel in f32 (if `normalize` gives (mean, std)).
pub(crate) fn pixel_values(
    img: &RgbImage,
    rescale: Option<f64>,
    normalize: Option<([f32; 3], [f32; 3])>,
    device: &Device,
) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    // Every input level maps to one output value per channel: a table, computed in the
    // reference's order.
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (level, out) in table.iter_mut().enumerate() {
            let mut x = match rescale {
                Some(factor) => (level as f64 * factor) as f32,
                None => level as f32,
            };
            if let Some((mean, std)) = normalize {
                x = (x - mean[c]) / std[c];
            }
            *out = x;
        }
    }
    let plane = h * w;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = lut[c][usize::from(px[c])];
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h, w), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_per_channel_values_take_both_forms() -> Result<()> {
        let p = Path::new("pp.json");
        let j = ProcessorJson::parse(
            r#"{"size": {"height": 3, "width": 5}, "image_mean": 0.25,
                "image_std": [1, 2, 4], "resample": 2, "do_center_crop": false}"#,
            p,
        )?;
        assert_eq!(j.size, Some((3, 5)));
        assert_eq!(j.image_mean, Some([0.25; 3]));
        assert_eq!(j.image_std, Some([1.0, 2.0, 4.0]));
        assert_eq!((j.resample, j.do_center_crop), (Some(2), Some(false)));
        let j = ProcessorJson::parse(r#"{"size": 7}"#, p)?;
        assert_eq!(
            j,
            ProcessorJson {
                size: Some((7, 7)),
                ..Default::default()
            }
        );
        Ok(())
    }

    #[test]
    fn malformed_values_name_the_file_and_key() {
        for (text, key) in [
            (r#"{"size": {"shortest_edge": 224}}"#, "size"),
            (r#"{"image_mean": [1, 2]}"#, "image_mean"),
            (r#"{"image_std": "x"}"#, "image_std"),
        ] {
            let msg = ProcessorJson::parse(text, Path::new("pp.json"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains("pp.json") && msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn pixel_values_rescale_in_f64_then_normalise_channels_first() -> Result<()> {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([255, (x * 50) as u8, y as u8]));
        let norm = Some(([0.5; 3], [0.5; 3]));
        let t = pixel_values(&img, Some(1.0 / 255.0), norm, &Device::Cpu)?;
        assert_eq!(t.dims(), &[1, 3, 2, 3]);
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        assert_eq!(&v[..6], &[1.0; 6]);
        // G at (x=1, y=0): 50/255 in f64, cast, then (x - 0.5) / 0.5 in f32.
        assert_eq!(v[7], ((50.0f64 / 255.0) as f32 - 0.5) / 0.5);
        assert_eq!(v[12], -1.0);
        let raw: Vec<f32> = pixel_values(&img, None, None, &Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(&raw[6..9], &[0.0, 50.0, 100.0]);
        Ok(())
    }
}
