//! Latent layout and image output: FLUX's 2×2 latent packing and its inverse, the position ids
//! of the image tokens, the VAE output → RGB8 conversion, and JPEG/PNG encoding.
//!
//! Each follows diffusers 0.42.1: `pipelines/flux/pipeline_flux.py` (`_pack_latents`,
//! `_unpack_latents`, `_prepare_latent_image_ids`) and `image_processor.py`
//! (`VaeImageProcessor.postprocess(output_type="pil")`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use image::{ImageEncoder, RgbImage};

use crate::error::{EngineError, Result};

/// JPEG quality used when the caller does not choose one.
pub const DEFAULT_JPEG_QUALITY: u8 = 95;

/// Latent height and width (in latent pixels, each even) for an image of `height`×`width`
/// pixels: `2 * (px // 16)`, as `prepare_latents` and `_unpack_latents` compute them.
fn latent_hw(height: usize, width: usize) -> (usize, usize) {
    (2 * (height / 16), 2 * (width / 16))
}

/// Packs latents `(B, C, h, w)` into FLUX tokens `(B, (h/2)·(w/2), C·4)`: each 2×2 patch becomes
/// one token whose channel index is `c·4 + dy·2 + dx` (`_pack_latents`).
pub fn pack_latents(latents: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(EngineError::InvalidInput(format!(
            "latents of shape {:?} cannot be packed: height and width must be even",
            latents.dims()
        )));
    }
    Ok(latents
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, (h / 2) * (w / 2), c * 4))?)
}

/// Unpacks FLUX tokens `(B, (h/2)·(w/2), C·4)` back to latents `(B, C, h, w)` for an image of
/// `height`×`width` pixels, with `h = 2·(height/16)` and `w = 2·(width/16)` (`_unpack_latents`).
pub fn unpack_latents(packed: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (b, seq, channels) = packed.dims3()?;
    let (h, w) = latent_hw(height, width);
    if seq != (h / 2) * (w / 2) || channels % 4 != 0 || seq == 0 {
        return Err(EngineError::InvalidInput(format!(
            "packed latents of shape {:?} do not fit a {width}x{height} px image \
             (expected (B, {}, 4·C))",
            packed.dims(),
            (h / 2) * (w / 2)
        )));
    }
    Ok(packed
        .reshape((b, h / 2, w / 2, channels / 4, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((b, channels / 4, h, w))?)
}

/// Position ids of the image tokens for an image of `height`×`width` **pixels**: f32
/// `(seq, 3)` with rows `[0, row, col]` over the `(height/16)`×`(width/16)` token grid in
/// row-major order (`_prepare_latent_image_ids(batch, h // 2, w // 2)`).
pub fn latent_image_ids(height: usize, width: usize) -> Result<Tensor> {
    let (rows, cols) = (height / 16, width / 16);
    let mut ids = Vec::with_capacity(rows * cols * 3);
    for r in 0..rows {
        for c in 0..cols {
            ids.extend_from_slice(&[0.0, r as f32, c as f32]);
        }
    }
    Ok(Tensor::from_vec(ids, (rows * cols, 3), &Device::Cpu)?)
}

/// Converts VAE output `(B, 3, H, W)` in [-1, 1] into 8-bit RGB images exactly as
/// `VaeImageProcessor.postprocess(output_type="pil")`: `(x * 0.5 + 0.5).clamp(0, 1)` in the
/// tensor's dtype, then float32 `(v * 255).round()` (numpy rounds half to even) cast to u8.
pub fn to_rgb8(decoded: &Tensor) -> Result<Vec<RgbImage>> {
    let (b, c, h, w) = decoded.dims4()?;
    if c != 3 {
        return Err(EngineError::InvalidInput(format!(
            "decoded image has shape {:?}, expected 3 channels",
            decoded.dims()
        )));
    }
    // torch evaluates `images * 0.5 + 0.5` in the tensor's dtype: for bf16/f16 each of the two
    // ops is computed in f32 and rounded to that dtype (`x * 0.5` is exact, so only `+ 0.5`
    // needs it).
    let round_to_dtype: fn(f32) -> f32 = match decoded.dtype() {
        DType::BF16 => |v| bf16::from_f32(v).to_f32(),
        DType::F16 => |v| f16::from_f32(v).to_f32(),
        DType::F32 | DType::F64 => |v| v,
        other => {
            return Err(EngineError::InvalidInput(format!(
                "decoded image has dtype {other:?}, expected a float dtype"
            )))
        }
    };
    // f64 output is converted to f32 by `.float()` before the numpy part; we do the whole
    // denormalisation in f32 for it, a deviation of at most one rounding that no VAE here hits.
    let values = decoded
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (width, height) = match (u32::try_from(w), u32::try_from(h)) {
        (Ok(wu), Ok(hu)) => (wu, hu),
        _ => {
            return Err(EngineError::InvalidInput(format!(
                "image {w}x{h} is too large"
            )))
        }
    };
    let plane = h * w;
    let mut images = Vec::with_capacity(b);
    for image in values.chunks_exact(3 * plane) {
        let mut rgb = vec![0u8; 3 * plane];
        for (ch, channel) in image.chunks_exact(plane).enumerate() {
            for (i, &x) in channel.iter().enumerate() {
                rgb[i * 3 + ch] = denormalize_to_u8(x, round_to_dtype);
            }
        }
        let img = RgbImage::from_raw(width, height, rgb).ok_or_else(|| {
            EngineError::Image(format!("buffer does not fit a {width}x{height} RGB image"))
        })?;
        images.push(img);
    }
    Ok(images)
}

/// One value: `(x * 0.5 + 0.5).clamp(0, 1)` (with the tensor dtype's rounding), then
/// `(v * 255).round().astype("uint8")` in float32; NaN becomes 0.
fn denormalize_to_u8(x: f32, round_to_dtype: fn(f32) -> f32) -> u8 {
    let v = round_to_dtype(round_to_dtype(x * 0.5) + 0.5).clamp(0.0, 1.0);
    // The value is in [0, 255] (or NaN, which `as` maps to 0).
    (v * 255.0).round_ties_even() as u8
}

/// The file formats the engine writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Baseline JPEG.
    Jpeg,
    /// PNG, 8-bit RGB.
    Png,
}

impl OutputFormat {
    /// The format a file name asks for: `.jpg`/`.jpeg` or `.png`, in any letter case.
    pub fn from_path_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jpg" | "jpeg" => Some(Self::Jpeg),
            "png" => Some(Self::Png),
            _ => None,
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
        }
    }

    /// The MIME type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
        }
    }
}

/// Encodes `img` as `format`; `jpeg_quality` (1–100, see [`DEFAULT_JPEG_QUALITY`]) only
/// matters for JPEG.
pub fn encode_image(img: &RgbImage, format: OutputFormat, jpeg_quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        OutputFormat::Jpeg => {
            if !(1..=100).contains(&jpeg_quality) {
                return Err(EngineError::InvalidInput(format!(
                    "JPEG quality {jpeg_quality} is outside 1..=100"
                )));
            }
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, jpeg_quality)
                .encode_image(img)
                .map_err(|e| EngineError::Image(e.to_string()))?;
        }
        OutputFormat::Png => {
            image::codecs::png::PngEncoder::new(&mut out)
                .write_image(
                    img.as_raw(),
                    img.width(),
                    img.height(),
                    image::ExtendedColorType::Rgb8,
                )
                .map_err(|e| EngineError::Image(e.to_string()))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Written by `scripts/reference/noise_fixtures.py` from diffusers' `VaeImageProcessor`.
    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/noise/postprocess.json"
    ));

    fn ints(v: &Value) -> Vec<u64> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }

    fn ramp(shape: (usize, usize, usize, usize)) -> Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        Ok(Tensor::arange(0u32, n as u32, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape(shape)?)
    }

    #[test]
    fn pack_unpack_round_trip() -> Result<()> {
        // 200x120 px: latents 2*(200/16)=24 by 2*(120/16)=14.
        let latents = ramp((2, 16, 24, 14))?;
        let packed = pack_latents(&latents)?;
        assert_eq!(packed.dims(), &[2, 12 * 7, 64]);
        // Token (y/2)*(w/2) + x/2, channel c*4 + dy*2 + dx holds latents[b, c, y, x].
        let (b, c, y, x) = (1, 5, 7, 10);
        let token = (y / 2) * 7 + x / 2;
        let channel = c * 4 + (y % 2) * 2 + x % 2;
        let want = latents.get(b)?.get(c)?.get(y)?.get(x)?.to_scalar::<f32>()?;
        assert_eq!(
            packed
                .get(b)?
                .get(token)?
                .get(channel)?
                .to_scalar::<f32>()?,
            want
        );

        let back = unpack_latents(&packed, 200, 120)?;
        assert_eq!(back.dims(), latents.dims());
        let diff = (back - &latents)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        assert!(unpack_latents(&packed, 256, 120).is_err());
        assert!(pack_latents(&ramp((1, 16, 3, 4))?).is_err());
        Ok(())
    }

    #[test]
    fn image_ids_are_rows_and_columns() -> Result<()> {
        let ids = latent_image_ids(48, 80)?;
        assert_eq!(ids.dims(), &[15, 3]);
        let rows = ids.to_vec2::<f32>()?;
        assert_eq!(rows[0], [0.0, 0.0, 0.0]);
        assert_eq!(rows[4], [0.0, 0.0, 4.0]);
        assert_eq!(rows[7], [0.0, 1.0, 2.0]);
        assert_eq!(rows[14], [0.0, 2.0, 4.0]);
        Ok(())
    }

    #[test]
    fn rgb8_matches_vae_image_processor() -> Result<()> {
        let fx: Value = serde_json::from_str(FIXTURE).expect("fixture parses");
        for (label, dtype) in [("f32", DType::F32), ("bf16", DType::BF16)] {
            let input: Vec<f32> = ints(&fx[label]["input"])
                .into_iter()
                .map(|b| f32::from_bits(b as u32))
                .collect();
            let x = Tensor::from_vec(input, (1, 3, 8, 10), &Device::Cpu)?.to_dtype(dtype)?;
            let images = to_rgb8(&x)?;
            assert_eq!(images.len(), 1);
            assert_eq!((images[0].width(), images[0].height()), (10, 8));
            let want: Vec<u8> = ints(&fx[label]["rgb"])
                .into_iter()
                .map(|v| v as u8)
                .collect();
            assert_eq!(images[0].as_raw(), &want, "{label}");
        }
        Ok(())
    }

    #[test]
    fn rounding_is_half_to_even() -> Result<()> {
        // Inputs whose `(x/2 + 0.5) * 255` is exactly 127.5, 76.5 and 134.5 in f32 (found by the
        // fixture script): numpy rounds them to 128, 76 and 134, not 128, 77, 135.
        let xs = [
            0.0f32,
            f32::from_bits(3_201_092_813),
            f32::from_bits(1_029_759_211),
        ];
        for (x, want) in xs.iter().zip([128u8, 76, 134]) {
            assert_eq!(denormalize_to_u8(*x, |v| v), want, "x = {x}");
        }
        assert_eq!(denormalize_to_u8(-3.0, |v| v), 0);
        assert_eq!(denormalize_to_u8(2.0, |v| v), 255);
        assert_eq!(denormalize_to_u8(f32::NAN, |v| v), 0);
        // Planar → interleaved, batch split.
        let mut data = vec![0.0f32; 2 * 3 * 2 * 2];
        data[3 * 4 + 2 * 4 + 3] = 1.0; // image 1, blue, pixel (1, 1)
        let t = Tensor::from_vec(data, (2, 3, 2, 2), &Device::Cpu)?;
        let images = to_rgb8(&t)?;
        assert_eq!(images[1].get_pixel(1, 1).0, [128, 128, 255]);
        assert_eq!(images[0].get_pixel(1, 1).0, [128, 128, 128]);
        assert!(to_rgb8(&Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu)?).is_err());
        Ok(())
    }

    #[test]
    fn output_formats_from_extension() {
        let f = |p: &str| OutputFormat::from_path_extension(Path::new(p));
        assert_eq!(f("out.jpg"), Some(OutputFormat::Jpeg));
        assert_eq!(f("a/b.JPEG"), Some(OutputFormat::Jpeg));
        assert_eq!(f("x.Png"), Some(OutputFormat::Png));
        assert_eq!(f("x.webp"), None);
        assert_eq!(f("png"), None);
        assert_eq!(OutputFormat::Jpeg.content_type(), "image/jpeg");
        assert_eq!(OutputFormat::Png.extension(), "png");
    }

    #[test]
    fn encodes_png_losslessly_and_jpeg() -> Result<()> {
        let img = RgbImage::from_fn(24, 16, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 15) as u8, 77])
        });
        let png = encode_image(&img, OutputFormat::Png, DEFAULT_JPEG_QUALITY)?;
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoded =
            image::load_from_memory(&png).map_err(|e| EngineError::Image(e.to_string()))?;
        assert_eq!(decoded.to_rgb8(), img);

        let jpeg = encode_image(&img, OutputFormat::Jpeg, DEFAULT_JPEG_QUALITY)?;
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let decoded =
            image::load_from_memory(&jpeg).map_err(|e| EngineError::Image(e.to_string()))?;
        assert_eq!((decoded.width(), decoded.height()), (24, 16));
        let low = encode_image(&img, OutputFormat::Jpeg, 10)?;
        assert!(low.len() < jpeg.len());
        assert!(encode_image(&img, OutputFormat::Jpeg, 0).is_err());
        assert!(encode_image(&img, OutputFormat::Jpeg, 101).is_err());
        Ok(())
    }
}
