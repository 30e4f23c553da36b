//! The request's `image_prompt`: base64 (standard or URL-safe alphabet, padding optional, an
//! optional `data:image/...;base64,` prefix, line breaks ignored) of a PNG, JPEG or WebP no larger
//! than the configured pixel count. Checked in full at submit, so a bad image is a 422 naming
//! `image_prompt`, and decoded again by the worker for the engine.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{alphabet, Engine as _};
use fluxd_engine::redux::decode_image_prompt;
use image::RgbImage;

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// The image's bytes, or why the text is not base64.
pub fn image_bytes(text: &str) -> Result<Vec<u8>, String> {
    let payload = match text.trim_start().strip_prefix("data:") {
        Some(rest) => {
            let (media, data) = rest
                .split_once(',')
                .ok_or("image_prompt is a data URL without data")?;
            if !media.ends_with(";base64") {
                return Err("image_prompt data URLs must be base64 (`;base64,`)".into());
            }
            data
        }
        None => text,
    };
    let compact: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err("image_prompt is empty".into());
    }
    STANDARD
        .decode(&compact)
        .or_else(|_| URL_SAFE.decode(&compact))
        .map_err(|e| format!("image_prompt is not valid base64: {e}"))
}

/// Decodes the image prompt into RGB pixels, refusing other formats, images over `max_pixels`
/// and decompression bombs.
pub fn decode(text: &str, max_pixels: u64) -> Result<RgbImage, String> {
    let bytes = image_bytes(text)?;
    decode_image_prompt(&bytes, max_pixels).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_pixel(width, height, image::Rgb([10, 200, 30]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn every_common_base64_spelling_decodes() {
        let bytes = png(3, 2);
        let standard = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let unpadded = standard.trim_end_matches('=').to_owned();
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let wrapped: String = standard
            .as_bytes()
            .chunks(16)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        let data_url = format!("data:image/png;base64,{standard}");
        for text in [standard, unpadded, url_safe, wrapped, data_url] {
            let img = decode(&text, 100).unwrap();
            assert_eq!(img.dimensions(), (3, 2));
            assert_eq!(img.get_pixel(1, 1).0, [10, 200, 30]);
        }
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        assert!(decode("", 100).unwrap_err().contains("empty"));
        assert!(decode("***", 100).unwrap_err().contains("base64"));
        assert!(decode("data:image/png,abc", 100)
            .unwrap_err()
            .contains("base64"));
        let gif = base64::engine::general_purpose::STANDARD.encode(b"GIF89a\x01\x00\x01\x00");
        assert!(decode(&gif, 100).unwrap_err().contains("image_prompt"));
        let big = base64::engine::general_purpose::STANDARD.encode(png(20, 20));
        let err = decode(&big, 399).unwrap_err();
        assert!(err.contains("image_prompt"), "{err}");
    }
}
