//! Control-map preprocessors for the FLUX.1 Canny and Depth models (engine-facts §7): vision
//! code that turns a user's image into the control image those models are conditioned on.
//! Not FLUX itself; the pipelines call these.
//!
//! - [`canny`]: OpenCV's `cv2.Canny`, ported exactly, and BFL's `CannyImageEncoder` around it.
//! - [`depth`]: Depth Anything (DINOv2 + DPT, transformers layout) and BFL's `DepthImageEncoder`.

pub mod canny;
pub mod depth;

pub use canny::{bfl_canny, bfl_level_round_trip, canny_gray, canny_rgb, CannyThresholds};
