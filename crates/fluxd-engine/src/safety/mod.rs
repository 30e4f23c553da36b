//! Moderation: the image safety classifier and the `safety_tolerance` policy for prompts and
//! images (engine-facts §6).
//!
//! - [`ImageClassifier`] runs a transformers `ViTForImageClassification` folder, the format of
//!   the reference NSFW detector Falconsai/nsfw_image_detection that BFL's CLI and Replicate's
//!   cog-flux use, with the slow `ViTImageProcessor`'s preprocessing.
//! - [`SafetyTolerance`] maps the API's 0..=6 to an image threshold ([`NSFW_THRESHOLDS`]);
//!   [`PromptPolicy`] blocks prompts by a term list whose terms carry the tolerance from which
//!   they are allowed.
//! - [`write_tiny_classifier`] writes a tiny classifier in the real format whose verdict tests
//!   can steer (its "nsfw" score follows the image's red channel, see [`red_probe`]).
//!
//! Both checks return `Option<Vec<String>>`: `None` to serve, or the reasons for the API's
//! `{"Moderation Reasons": [...]}`; the server picks `Request Moderated` (prompt, input image)
//! or `Content Moderated` (generated image).

mod classifier;
mod policy;
mod preprocess;
mod prompt;
mod resample;
mod tiny;

pub use classifier::{ImageClassifier, LabelScore, VitConfig};
pub use policy::{moderate_nsfw_score, SafetyTolerance, IMAGE_REASON, NSFW_THRESHOLDS};
pub use preprocess::{pil_resize, ImageProcessor, ImageProcessorConfig, Resample};
pub use prompt::{normalize, PromptPolicy, BUILTIN_TERMS, PROMPT_REASON};
pub use tiny::{red_probe, write_tiny_classifier, write_tiny_classifier_with, TINY_HIDDEN};

/// Moderates an image with `classifier` at `tolerance`: `None` to serve it, or the reasons.
pub fn moderate_image(
    classifier: &ImageClassifier,
    img: &image::RgbImage,
    tolerance: SafetyTolerance,
) -> crate::Result<Option<Vec<String>>> {
    Ok(moderate_nsfw_score(classifier.nsfw_score(img)?, tolerance))
}
