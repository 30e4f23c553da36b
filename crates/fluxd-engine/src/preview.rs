//! Live previews: a fast latent → RGB projection of the sampler's current estimate of the clean
//! image, shown while a generation runs, without the VAE.
//!
//! Each latent pixel's 16 channels are mapped to RGB by one linear map, ComfyUI's latent preview
//! for FLUX (`comfy/latent_formats.py`, class `Flux`: `latent_rgb_factors`, a 16×3 matrix, and
//! `latent_rgb_factors_bias`; `latent_preview.py`'s `Latent2RGBPreviewer` applies it to the
//! denoised estimate and maps [-1, 1] to 0..255). The factors are fitted to FLUX.1's VAE latent
//! space as the sampler sees it (shifted and scaled, before the VAE's `shift_factor` and
//! `scaling_factor` are undone), which is the space of the packed latents here. The result has
//! one pixel per latent pixel: an eighth of the image's width and height.

use candle_core::{DType, Tensor};
use image::RgbImage;

use crate::error::{EngineError, Result};
use crate::postprocess::unpack_latents;

/// Latent channels the factors are made for (FLUX.1's VAE).
pub const PREVIEW_CHANNELS: usize = 16;

/// RGB weight of each latent channel (ComfyUI's `Flux.latent_rgb_factors`, rows by channel).
const FACTORS: [[f32; 3]; PREVIEW_CHANNELS] = [
    [-0.0346, 0.0244, 0.0681],
    [0.0034, 0.0210, 0.0687],
    [0.0275, -0.0668, -0.0433],
    [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329],
    [0.0004, 0.0383, 0.0115],
    [0.0405, 0.0861, 0.0915],
    [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180],
    [0.1008, 0.0755, -0.0421],
    [-0.0515, 0.0201, 0.0011],
    [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749],
    [-0.1264, -0.0522, -0.1103],
    [-0.0280, -0.0881, -0.0499],
    [-0.1262, -0.0982, -0.0778],
];

/// RGB offset (ComfyUI's `Flux.latent_rgb_factors_bias`).
const BIAS: [f32; 3] = [-0.0329, -0.0718, -0.0851];

/// One preview: the image after `step` of `steps` denoising steps.
#[derive(Debug, Clone)]
pub struct PreviewFrame {
    /// Steps finished.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// The projection, an eighth of the output's width and height.
    pub image: RgbImage,
}

/// What a caller wants previews for: one every `every` steps (never after the last step, which
/// the real image follows), each handed to `sink` on the generating thread.
pub struct Previews<'a> {
    /// Steps between two previews (at least 1).
    pub every: usize,
    /// Receives each preview; keep it quick (encode and send on).
    pub sink: &'a mut dyn FnMut(PreviewFrame),
}

impl Previews<'_> {
    /// Whether a preview is due after `done` of `total` steps.
    pub fn due(&self, done: usize, total: usize) -> bool {
        done < total && done.is_multiple_of(self.every.max(1))
    }
}

/// The preview of packed latents `(1, seq, 64)` for an image of `height`×`width` pixels; an
/// error when the model's latents do not have [`PREVIEW_CHANNELS`] channels.
pub fn latent_rgb(packed: &Tensor, height: usize, width: usize) -> Result<RgbImage> {
    let latents = unpack_latents(packed, height, width)?.to_dtype(DType::F32)?;
    let (_, channels, h, w) = latents.dims4()?;
    if channels != PREVIEW_CHANNELS {
        return Err(EngineError::InvalidInput(format!(
            "previews need {PREVIEW_CHANNELS} latent channels, the model has {channels}"
        )));
    }
    // (16, h·w) on the CPU: a few thousand pixels, a matrix too small to be worth a kernel.
    let planes: Vec<Vec<f32>> = latents
        .squeeze(0)?
        .reshape((channels, h * w))?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec2()?;
    let mut rgb = Vec::with_capacity(h * w * 3);
    for pixel in 0..h * w {
        for (k, bias) in BIAS.iter().enumerate() {
            let v = planes
                .iter()
                .zip(FACTORS.iter())
                .fold(*bias, |acc, (plane, f)| acc + plane[pixel] * f[k]);
            // Latent2RGBPreviewer: ((v + 1) / 2).clamp(0, 1) · 255.
            rgb.push((((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    let (w, h) = (u32::try_from(w), u32::try_from(h));
    match (w, h) {
        (Ok(w), Ok(h)) => RgbImage::from_raw(w, h, rgb)
            .ok_or_else(|| EngineError::InvalidInput("preview buffer size".into())),
        _ => Err(EngineError::InvalidInput("preview too large".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_latent_pixel_is_the_linear_map_of_its_channels() -> Result<()> {
        // A 16×16 px image: one packed token (2×2 latent pixels), channel c·4 + dy·2 + dx.
        let mut packed = vec![0f32; 64];
        // Latent pixel (0, 0): channel 4 at 2.0, channel 13 at -1.0.
        packed[4 * 4] = 2.0;
        packed[13 * 4] = -1.0;
        let packed = Tensor::from_vec(packed, (1, 1, 64), &Device::Cpu)?;
        let image = latent_rgb(&packed, 16, 16)?;
        assert_eq!(image.dimensions(), (2, 2));
        for k in 0..3 {
            let v = BIAS[k] + 2.0 * FACTORS[4][k] - FACTORS[13][k];
            let expected = (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
            assert_eq!(image.get_pixel(0, 0)[k], expected);
            // Zero latents: the bias alone.
            let zero = (((BIAS[k] + 1.0) / 2.0) * 255.0).round() as u8;
            assert_eq!(image.get_pixel(1, 1)[k], zero);
        }
        Ok(())
    }

    #[test]
    fn previews_fall_on_every_nth_step_but_never_the_last() {
        let mut sink = |_: PreviewFrame| {};
        let previews = Previews {
            every: 3,
            sink: &mut sink,
        };
        let due: Vec<usize> = (1..=9).filter(|&d| previews.due(d, 9)).collect();
        assert_eq!(due, [3, 6]);
    }
}
