//! Request bodies: raw bytes → validated types, every problem reported at once.
//!
//! The reference is a FastAPI app with a pydantic v2 model per body (`tests/pydantic_reference.py`
//! holds the equivalent model). Parsing happens here by hand, not with a derived `Deserialize`,
//! because pydantic reports all fields' problems together, in field order, with its own vocabulary.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::body::{field, Body};
use crate::error::RequestError;

/// Image encoding of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// JPEG (the default).
    #[default]
    Jpeg,
    /// PNG.
    Png,
}

impl OutputFormat {
    /// The wire name, also the file extension: `jpeg` or `png`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
        }
    }
}

/// Limits and defaults of the generation endpoints, as the reference's pages state them. The
/// fields every endpoint shares (sides, seed, safety tolerance...) have one set; the defaults that
/// differ per endpoint are named for it (the endpoint table, [`crate::ENDPOINTS`], uses them).
pub mod limits {
    /// Default LoRA scale.
    pub const FINETUNE_STRENGTH_DEFAULT: f64 = 1.1;
    /// Largest LoRA scale (smallest is 0).
    pub const FINETUNE_STRENGTH_MAX: f64 = 2.0;
    /// Default sampling steps.
    pub const STEPS_DEFAULT: u32 = 40;
    /// Fewest sampling steps.
    pub const STEPS_MIN: u32 = 1;
    /// Most sampling steps.
    pub const STEPS_MAX: u32 = 50;
    /// Default distilled guidance.
    pub const GUIDANCE_DEFAULT: f64 = 2.5;
    /// Smallest guidance.
    pub const GUIDANCE_MIN: f64 = 1.5;
    /// Largest guidance.
    pub const GUIDANCE_MAX: f64 = 5.0;
    /// Default width in pixels.
    pub const WIDTH_DEFAULT: u32 = 1024;
    /// Default height in pixels.
    pub const HEIGHT_DEFAULT: u32 = 768;
    /// Smallest width or height.
    pub const SIDE_MIN: u32 = 256;
    /// Largest width or height.
    pub const SIDE_MAX: u32 = 1440;
    /// Width and height must be multiples of this.
    pub const SIDE_MULTIPLE: u32 = 32;
    /// Default moderation tolerance.
    pub const SAFETY_TOLERANCE_DEFAULT: u8 = 2;
    /// Least strict moderation tolerance (strictest is 0).
    pub const SAFETY_TOLERANCE_MAX: u8 = 6;
    /// Longest webhook URL (pydantic's `HttpUrl` limit).
    pub const WEBHOOK_URL_MAX_CHARS: usize = 2083;
    /// `flux-dev`'s default sampling steps.
    pub const FLUX_DEV_STEPS_DEFAULT: u32 = 28;
    /// `flux-dev`'s default guidance.
    pub const FLUX_DEV_GUIDANCE_DEFAULT: f64 = 3.0;
    /// `flux-pro`'s default `interval`.
    pub const INTERVAL_DEFAULT: f64 = 2.0;
    /// Smallest `interval`.
    pub const INTERVAL_MIN: f64 = 1.0;
    /// Largest `interval`.
    pub const INTERVAL_MAX: f64 = 4.0;
    /// Default `aspect_ratio` of the ultra endpoints.
    pub const ASPECT_RATIO_DEFAULT: &str = "16:9";
    /// Default `image_prompt_strength` of the ultra endpoints (0..=1).
    pub const IMAGE_PROMPT_STRENGTH_DEFAULT: f64 = 0.1;
    /// `flux-pro-1.1-ultra-finetuned`'s default LoRA scale.
    pub const ULTRA_FINETUNE_STRENGTH_DEFAULT: f64 = 1.2;
}
use limits::*;

/// Serde defaults, so that a stored request reads back with the same defaults.
mod defaults {
    use super::limits::*;
    pub(super) fn finetune_strength() -> f64 {
        FINETUNE_STRENGTH_DEFAULT
    }
    pub(super) fn steps() -> u32 {
        STEPS_DEFAULT
    }
    pub(super) fn guidance() -> f64 {
        GUIDANCE_DEFAULT
    }
    pub(super) fn width() -> u32 {
        WIDTH_DEFAULT
    }
    pub(super) fn height() -> u32 {
        HEIGHT_DEFAULT
    }
    pub(super) fn safety_tolerance() -> u8 {
        SAFETY_TOLERANCE_DEFAULT
    }
}

/// A validated `POST /v1/flux-pro-finetuned` body.
///
/// Build it with [`parse_finetuned_request`]. Serialises as pydantic's `model_dump(mode="json")`
/// of the reference model (defaults filled in, `webhook_url` normalised), so it can be stored and
/// read back with `serde_json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(
    description = "Generate an image with a fine-tune. Only `finetune_id` is required.",
    example = json!({
    "finetune_id": "my-finetune", "finetune_strength": 1.1, "steps": 40, "guidance": 2.5,
    "prompt": "ein fantastisches bild", "width": 1024, "height": 768, "prompt_upsampling": false,
    "seed": 42, "safety_tolerance": 2, "output_format": "jpeg"
    })
)]
pub struct FinetunedRequest {
    /// ID of the fine-tuned model you want to use.
    #[schema(example = "my-finetune")]
    pub finetune_id: String,
    /// Strength of the fine-tuned model. 0.0 means no influence, 1.0 means full influence.
    /// Allowed values up to 2.0
    #[serde(default = "defaults::finetune_strength")]
    #[schema(default = 1.1, minimum = 0.0, maximum = 2.0)]
    pub finetune_strength: f64,
    /// Number of steps for the fine-tuning process (sampling steps).
    #[serde(default = "defaults::steps")]
    #[schema(default = 40, minimum = 1, maximum = 50, example = 40)]
    pub steps: u32,
    /// Guidance scale for image generation. High guidance scales improve prompt adherence at the
    /// cost of reduced realism.
    #[serde(default = "defaults::guidance")]
    #[schema(default = 2.5, minimum = 1.5, maximum = 5.0, example = 2.5)]
    pub guidance: f64,
    /// Text prompt for image generation.
    #[serde(default)]
    #[schema(default = "", example = "ein fantastisches bild")]
    pub prompt: String,
    /// Optional base64 encoded image to use with Flux Redux.
    #[serde(default)]
    pub image_prompt: Option<String>,
    /// Width of the generated image in pixels. Must be a multiple of 32.
    #[serde(default = "defaults::width")]
    #[schema(default = 1024, minimum = 256, maximum = 1440, multiple_of = 32)]
    pub width: u32,
    /// Height of the generated image in pixels. Must be a multiple of 32.
    #[serde(default = "defaults::height")]
    #[schema(default = 768, minimum = 256, maximum = 1440, multiple_of = 32)]
    pub height: u32,
    /// Whether to perform upsampling on the prompt. If active, automatically modifies the prompt
    /// for more creative generation.
    #[serde(default)]
    #[schema(default = false)]
    pub prompt_upsampling: bool,
    /// Optional seed for reproducibility (random when absent).
    #[serde(default)]
    #[schema(
        example = 42,
        minimum = 0,
        maximum = 18446744073709551615_u64,
        format = "uint64"
    )]
    pub seed: Option<u64>,
    /// Tolerance level for input and output moderation. Between 0 and 6, 0 being most strict, 6
    /// being least strict.
    #[serde(default = "defaults::safety_tolerance")]
    #[schema(default = 2, minimum = 0, maximum = 6, example = 2)]
    pub safety_tolerance: u8,
    /// Output format for the generated image. Can be 'jpeg' or 'png'.
    #[serde(default)]
    #[schema(default = "jpeg")]
    pub output_format: OutputFormat,
    /// URL to receive webhook notifications
    #[serde(default)]
    #[schema(format = "uri", min_length = 1, max_length = 2083)]
    pub webhook_url: Option<String>,
    /// Optional secret for webhook signature verification
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

/// A validated `POST /v1/delete_finetune` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeleteFinetuneRequest {
    /// The fine-tune to delete.
    #[schema(example = "my-finetune")]
    pub finetune_id: String,
}

/// Validates a `POST /v1/flux-pro-finetuned` body.
///
/// Errors are those FastAPI + pydantic v2 give for the reference model: malformed JSON is one
/// `json_invalid`; an empty body is `missing` at `["body"]`; a non-object is
/// `model_attributes_type`; otherwise one entry per bad field, in field order. Unknown fields are
/// ignored. Invalid UTF-8 is [`RequestError::Unreadable`] (FastAPI's 400).
pub fn parse_finetuned_request(body: &[u8]) -> Result<FinetunedRequest, RequestError> {
    let mut b = Body::read(body)?;
    let request = FinetunedRequest {
        finetune_id: b.required("finetune_id", field::string),
        finetune_strength: b.optional(
            "finetune_strength",
            FINETUNE_STRENGTH_DEFAULT,
            field::finetune_strength,
        ),
        steps: b.optional("steps", STEPS_DEFAULT, field::steps),
        guidance: b.optional("guidance", GUIDANCE_DEFAULT, field::guidance),
        prompt: b.optional("prompt", String::new(), field::string),
        image_prompt: b.nullable("image_prompt", field::string),
        width: b.optional("width", WIDTH_DEFAULT, field::side),
        height: b.optional("height", HEIGHT_DEFAULT, field::side),
        prompt_upsampling: b.optional("prompt_upsampling", false, field::boolean),
        seed: b.nullable("seed", field::seed),
        safety_tolerance: b.optional(
            "safety_tolerance",
            SAFETY_TOLERANCE_DEFAULT,
            field::safety_tolerance,
        ),
        output_format: b.optional("output_format", OutputFormat::Jpeg, field::output_format),
        webhook_url: b.nullable("webhook_url", field::http_url),
        webhook_secret: b.nullable("webhook_secret", field::string),
    };
    b.finish()?;
    Ok(request)
}

/// Validates a `POST /v1/delete_finetune` body, with the same rules as
/// [`parse_finetuned_request`].
pub fn parse_delete_finetune_request(body: &[u8]) -> Result<DeleteFinetuneRequest, RequestError> {
    let mut b = Body::read(body)?;
    let request = DeleteFinetuneRequest {
        finetune_id: b.required("finetune_id", field::string),
    };
    b.finish()?;
    Ok(request)
}
