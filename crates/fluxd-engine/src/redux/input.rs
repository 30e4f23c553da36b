//! The `image_prompt` a user sends: bytes in, an 8-bit RGB image out, refusing what we cannot or
//! should not decode before spending memory on it.
//!
//! Only PNG, JPEG and WebP are accepted, recognised by their magic bytes (never by a file name or
//! a content type). The pixel count is read from the header and checked against the caller's
//! limit before any pixel is decoded, and the decoder itself runs under `image::Limits` sized for
//! that header, so a file that lies in its header cannot allocate more (decompression bombs).
//!
//! Images with transparency are composited onto white as transformers' `convert_to_rgb` does
//! (transformers 5.23 `image_transforms.py`, which SiglipImageProcessor runs with
//! `do_convert_rgb=True` from diffusers `pipeline_flux_prior_redux.py`), with Pillow's integer
//! `alpha_composite` arithmetic so the 8-bit result is the one the reference feeds its resize.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::EngineError;

/// Why an `image_prompt` was refused. Every variant is the user's input at fault (a server
/// answers 422 naming `image_prompt`); none is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum ImagePromptError {
    /// The bytes are empty.
    #[error("image_prompt is empty")]
    Empty,
    /// The bytes are not a PNG, JPEG or WebP image.
    #[error("image_prompt must be a PNG, JPEG or WebP image, got {found}")]
    UnsupportedFormat {
        /// What the bytes looked like (`unknown` when nothing matched).
        found: String,
    },
    /// The header announces more pixels than allowed.
    #[error("image_prompt is {width}x{height} ({} pixels), more than the {max_pixels} allowed", u64::from(*width) * u64::from(*height))]
    TooLarge {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The limit.
        max_pixels: u64,
    },
    /// The header announces an empty image.
    #[error("image_prompt has no pixels ({width}x{height})")]
    NoPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },
    /// The file is truncated or corrupt, or the decoder hit its memory limit.
    #[error("image_prompt could not be decoded as {format}: {msg}")]
    Decode {
        /// The format the bytes claimed.
        format: &'static str,
        /// The decoder's message.
        msg: String,
    },
}

impl From<ImagePromptError> for EngineError {
    fn from(e: ImagePromptError) -> Self {
        EngineError::InvalidInput(e.to_string())
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        _ => "image",
    }
}

/// Decodes an `image_prompt` (PNG, JPEG or WebP) to 8-bit RGB, refusing images of more than
/// `max_pixels` pixels before decoding them.
pub fn decode_image_prompt(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImagePromptError> {
    if bytes.is_empty() {
        return Err(ImagePromptError::Empty);
    }
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => f,
        Ok(other) => {
            return Err(ImagePromptError::UnsupportedFormat {
                found: format!("{other:?}"),
            })
        }
        Err(_) => {
            return Err(ImagePromptError::UnsupportedFormat {
                found: "unknown".into(),
            })
        }
    };
    let name = format_name(format);
    let decode_err = |e: image::ImageError| ImagePromptError::Decode {
        format: name,
        msg: e.to_string(),
    };
    // Header only: no pixel data is read here.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(decode_err)?;
    if width == 0 || height == 0 {
        return Err(ImagePromptError::NoPixels { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ImagePromptError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // The output at its widest (RGBA, 16 bits a channel) plus room for decoder state.
    limits.max_alloc = Some(pixels * 8 + (32 << 20));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let img = reader.decode().map_err(decode_err)?;
    Ok(to_rgb_over_white(&img))
}

/// 8-bit RGB, with any transparency composited onto opaque white (transformers `convert_to_rgb`).
pub fn to_rgb_over_white(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            dst[c] = composite_over_white(u32::from(src[c]), a);
        }
    }
    out
}

/// One channel of Pillow's `alpha_composite(white, src)` (libImaging `AlphaComposite.c`, 7 bits
/// of extra precision and rounded divisions by 255). Over opaque white the output alpha is 255,
/// so Pillow's `coef1 = a·255²·128 / (255·255)` is exactly `a·128`. Checked against Pillow 13
/// for all 65536 (value, alpha) pairs.
fn composite_over_white(c: u32, a: u32) -> u8 {
    const PRECISION_BITS: u32 = 7;
    let coef1 = a << PRECISION_BITS;
    let coef2 = (255 << PRECISION_BITS) - coef1;
    let t = c * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    let div255 = ((t >> 8) + t) >> 8;
    (div255 >> PRECISION_BITS).min(255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgba, RgbaImage};

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .expect("encode png");
        out
    }

    #[test]
    fn png_jpeg_and_webp_decode_to_rgb() {
        let rgb = RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 77]));
        let dynimg = DynamicImage::ImageRgb8(rgb.clone());
        let got = decode_image_prompt(&png(&dynimg), 1000).expect("png");
        assert_eq!(got, rgb);

        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .write_image(rgb.as_raw(), 9, 7, image::ExtendedColorType::Rgb8)
            .expect("jpeg");
        assert_eq!(
            decode_image_prompt(&jpeg, 1000).expect("jpeg").dimensions(),
            (9, 7)
        );

        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .write_image(rgb.as_raw(), 9, 7, image::ExtendedColorType::Rgb8)
            .expect("webp");
        assert_eq!(decode_image_prompt(&webp, 1000).expect("webp"), rgb);
    }

    #[test]
    fn refuses_other_formats_empty_input_and_garbage() {
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        let err = decode_image_prompt(gif, 1000).err();
        assert!(
            matches!(&err, Some(ImagePromptError::UnsupportedFormat { found }) if found == "Gif"),
            "{err:?}"
        );
        assert!(matches!(
            decode_image_prompt(b"hello world", 1000),
            Err(ImagePromptError::UnsupportedFormat { .. })
        ));
        assert!(matches!(
            decode_image_prompt(b"", 1000),
            Err(ImagePromptError::Empty)
        ));
        // A PNG signature followed by nothing: a decode error, not a panic.
        let truncated = b"\x89PNG\r\n\x1a\n\x00\x00";
        let err = decode_image_prompt(truncated, 1000).err();
        assert!(
            matches!(err, Some(ImagePromptError::Decode { format: "PNG", .. })),
            "{err:?}"
        );
        let msg = EngineError::from(ImagePromptError::Empty).to_string();
        assert!(msg.contains("image_prompt"), "{msg}");
    }

    /// A PNG header claiming 100000×100000 pixels with no data behind it is refused from the
    /// header, before any allocation.
    #[test]
    fn refuses_too_many_pixels_from_the_header() {
        let small = DynamicImage::ImageRgb8(RgbImage::new(40, 30));
        let err = decode_image_prompt(&png(&small), 40 * 30 - 1).err();
        assert!(
            matches!(
                err,
                Some(ImagePromptError::TooLarge {
                    width: 40,
                    height: 30,
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(decode_image_prompt(&png(&small), 40 * 30).is_ok());

        // A 1×1 PNG whose header claims 100000×100000 (IHDR width and height at bytes 16..24,
        // its CRC fixed up): refused from the header, before any allocation.
        let mut bomb = png(&DynamicImage::ImageRgb8(RgbImage::new(1, 1)));
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_image_prompt(&bomb, 4_000_000).err();
        assert!(
            matches!(
                err,
                Some(ImagePromptError::TooLarge {
                    width: 100_000,
                    height: 100_000,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    /// The PNG chunk CRC (ISO 3309, reflected 0xEDB88320).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn transparency_is_composited_onto_white() {
        let mut rgba = RgbaImage::new(3, 1);
        rgba.put_pixel(0, 0, Rgba([10, 20, 30, 255]));
        rgba.put_pixel(1, 0, Rgba([10, 20, 30, 0]));
        rgba.put_pixel(2, 0, Rgba([0, 100, 200, 128]));
        let got = decode_image_prompt(&png(&DynamicImage::ImageRgba8(rgba)), 10).expect("png");
        assert_eq!(got.get_pixel(0, 0).0, [10, 20, 30]);
        assert_eq!(got.get_pixel(1, 0).0, [255, 255, 255]);
        // Pillow 13: alpha_composite(white, (0, 100, 200, 128)) = (127, 177, 227).
        assert_eq!(got.get_pixel(2, 0).0, [127, 177, 227]);
    }
}
