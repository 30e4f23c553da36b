//! Control-map preprocessors for the FLUX.1 Canny and Depth models (engine-facts §7): vision
//! code that turns a user's image into the control image those models are conditioned on.
//! Not FLUX itself; the pipelines call these.
//!
//! - [`canny`]: OpenCV's `cv2.Canny`, ported exactly, and BFL's `CannyImageEncoder` around it.
//! - [`depth`]: Depth Anything (DINOv2 + DPT, transformers layout) and BFL's `DepthImageEncoder`.

pub mod canny;
pub mod depth;

pub use canny::{bfl_canny, bfl_level_round_trip, canny_gray, canny_rgb, CannyThresholds};

use candle_core::{Device, Tensor};

/// The (1, 3, H, W) control tensor the FLUX.1 Canny and Depth models take from a one-channel
/// map of 0..255 levels: `level / 127.5 − 1` on all three channels, as BFL's `CannyImageEncoder`
/// and `DepthImageEncoder` compute it in float32 (`plane` is row-major, `height × width`).
pub fn control_tensor(
    plane: &[f32],
    height: usize,
    width: usize,
    device: &Device,
) -> crate::Result<Tensor> {
    let scaled: Vec<f32> = plane.iter().map(|v| v / 127.5 - 1.0).collect();
    let t = Tensor::from_vec(scaled, (1, 1, height, width), device)?;
    Ok(t.repeat((1, 3, 1, 1))?)
}

/// [`control_tensor`] of an 8-bit map such as a Canny edge map.
pub fn gray_control_tensor(map: &image::GrayImage, device: &Device) -> crate::Result<Tensor> {
    let plane: Vec<f32> = map.iter().map(|&v| f32::from(v)).collect();
    control_tensor(&plane, map.height() as usize, map.width() as usize, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_tensor_scales_levels_to_minus_one_one_on_three_channels() -> crate::Result<()> {
        let map = image::GrayImage::from_raw(2, 1, vec![0, 255])
            .ok_or(crate::EngineError::Image("raw".into()))?;
        let t = gray_control_tensor(&map, &Device::Cpu)?;
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        assert_eq!(v, vec![-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]);
        Ok(())
    }
}
