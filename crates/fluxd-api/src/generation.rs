//! The text-to-image endpoints sized by `width`/`height`: `POST /v1/flux-dev`, `/v1/flux-pro`
//! and `/v1/flux-pro-1.1`, each with exactly the reference's schema (field order, defaults,
//! ranges, which fields may be `null`), validated like the seed endpoint
//! ([`crate::parse_finetuned_request`]).
//!
//! Unlike the seed endpoint, these models type `prompt`, `steps`, `guidance`, `interval` and
//! `output_format` as optional with a default (`Optional[int] = 28`): absent takes the default,
//! an explicit `null` is accepted and stored as `null`, and the endpoint table
//! ([`crate::ENDPOINTS`]) then runs the default.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::body::{field, Body};
use crate::error::RequestError;
use crate::request::limits::*;
use crate::request::OutputFormat;

/// A validated `POST /v1/flux-dev` body (FLUX.1 [dev]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(
    description = "Generate an image with FLUX.1 [dev].",
    example = json!({"prompt": "ein fantastisches bild", "width": 1024, "height": 768, "steps": 28,
        "guidance": 3.0, "seed": 42, "output_format": "jpeg"})
)]
pub struct FluxDevRequest {
    /// Text prompt for image generation.
    #[schema(default = "", example = "ein fantastisches bild")]
    pub prompt: Option<String>,
    /// Optional base64 encoded image to use as a prompt for generation (Flux Redux).
    pub image_prompt: Option<String>,
    /// Width of the generated image in pixels. Must be a multiple of 32.
    #[schema(
        required = false,
        default = 1024,
        minimum = 256,
        maximum = 1440,
        multiple_of = 32
    )]
    pub width: u32,
    /// Height of the generated image in pixels. Must be a multiple of 32.
    #[schema(
        required = false,
        default = 768,
        minimum = 256,
        maximum = 1440,
        multiple_of = 32
    )]
    pub height: u32,
    /// Number of steps for the image generation process (null: the default).
    #[schema(default = 28, minimum = 1, maximum = 50, example = 28)]
    pub steps: Option<u32>,
    /// Whether to perform upsampling on the prompt.
    #[schema(required = false, default = false)]
    pub prompt_upsampling: bool,
    /// Optional seed for reproducibility (random when absent).
    #[schema(
        example = 42,
        minimum = 0,
        maximum = 18446744073709551615_u64,
        format = "uint64"
    )]
    pub seed: Option<u64>,
    /// Guidance scale for image generation (null: the default). High guidance scales improve
    /// prompt adherence at the cost of reduced realism.
    #[schema(default = 3.0, minimum = 1.5, maximum = 5.0, example = 3.0)]
    pub guidance: Option<f64>,
    /// Tolerance level for input and output moderation. Between 0 and 6, 0 being most strict, 6
    /// being least strict.
    #[schema(required = false, default = 2, minimum = 0, maximum = 6, example = 2)]
    pub safety_tolerance: u8,
    /// Output format for the generated image (null: jpeg).
    #[schema(default = "jpeg")]
    pub output_format: Option<OutputFormat>,
    /// URL to receive webhook notifications
    #[schema(format = "uri", min_length = 1, max_length = 2083)]
    pub webhook_url: Option<String>,
    /// Optional secret for webhook signature verification
    pub webhook_secret: Option<String>,
}

/// A validated `POST /v1/flux-pro` body (FLUX.1 [pro]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(
    description = "Generate an image with FLUX.1 [pro] (served by the FLUX.1-dev model here).",
    example = json!({"prompt": "ein fantastisches bild", "width": 1024, "height": 768, "steps": 40,
        "guidance": 2.5, "interval": 2.0, "seed": 42, "output_format": "jpeg"})
)]
pub struct FluxProRequest {
    /// Text prompt for image generation.
    #[schema(default = "", example = "ein fantastisches bild")]
    pub prompt: Option<String>,
    /// Optional base64 encoded image to use as a prompt for generation (Flux Redux).
    pub image_prompt: Option<String>,
    /// Width of the generated image in pixels. Must be a multiple of 32.
    #[schema(
        required = false,
        default = 1024,
        minimum = 256,
        maximum = 1440,
        multiple_of = 32
    )]
    pub width: u32,
    /// Height of the generated image in pixels. Must be a multiple of 32.
    #[schema(
        required = false,
        default = 768,
        minimum = 256,
        maximum = 1440,
        multiple_of = 32
    )]
    pub height: u32,
    /// Number of steps for the image generation process (null: the default).
    #[schema(default = 40, minimum = 1, maximum = 50, example = 40)]
    pub steps: Option<u32>,
    /// Whether to perform upsampling on the prompt.
    #[schema(required = false, default = false)]
    pub prompt_upsampling: bool,
    /// Optional seed for reproducibility (random when absent).
    #[schema(
        example = 42,
        minimum = 0,
        maximum = 18446744073709551615_u64,
        format = "uint64"
    )]
    pub seed: Option<u64>,
    /// Guidance scale for image generation (null: the default).
    #[schema(default = 2.5, minimum = 1.5, maximum = 5.0, example = 2.5)]
    pub guidance: Option<f64>,
    /// Tolerance level for input and output moderation. Between 0 and 6, 0 being most strict, 6
    /// being least strict.
    #[schema(required = false, default = 2, minimum = 0, maximum = 6, example = 2)]
    pub safety_tolerance: u8,
    /// Interval parameter for guidance control. Accepted and validated for compatibility; the
    /// open FLUX.1-dev model has no counterpart, so it does not change the image here.
    #[schema(default = 2.0, minimum = 1.0, maximum = 4.0, example = 2.0)]
    pub interval: Option<f64>,
    /// Output format for the generated image (null: jpeg).
    #[schema(default = "jpeg")]
    pub output_format: Option<OutputFormat>,
    /// URL to receive webhook notifications
    #[schema(format = "uri", min_length = 1, max_length = 2083)]
    pub webhook_url: Option<String>,
    /// Optional secret for webhook signature verification
    pub webhook_secret: Option<String>,
}

/// A validated `POST /v1/flux-pro-1.1` body (FLUX 1.1 [pro]): no steps or guidance, the server
/// chooses them (see the endpoint table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(
    description = "Generate an image with FLUX 1.1 [pro]; steps and guidance are the server's (see the endpoint table).",
    example = json!({"prompt": "ein fantastisches bild", "width": 1024, "height": 768, "seed": 42})
)]
pub struct FluxPro11Request {
    /// Text prompt for image generation.
    #[schema(default = "", example = "ein fantastisches bild")]
    pub prompt: Option<String>,
    /// Optional base64 encoded image to use as a prompt for generation (Flux Redux).
    pub image_prompt: Option<String>,
    /// Width of the generated image in pixels. Must be a multiple of 32.
    #[schema(
        required = false,
        default = 1024,
        minimum = 256,
        maximum = 1440,
        multiple_of = 32
    )]
    pub width: u32,
    /// Height of the generated image in pixels. Must be a multiple of 32.
    #[schema(
        required = false,
        default = 768,
        minimum = 256,
        maximum = 1440,
        multiple_of = 32
    )]
    pub height: u32,
    /// Whether to perform upsampling on the prompt.
    #[schema(required = false, default = false)]
    pub prompt_upsampling: bool,
    /// Optional seed for reproducibility (random when absent).
    #[schema(
        example = 42,
        minimum = 0,
        maximum = 18446744073709551615_u64,
        format = "uint64"
    )]
    pub seed: Option<u64>,
    /// Tolerance level for input and output moderation. Between 0 and 6, 0 being most strict, 6
    /// being least strict.
    #[schema(required = false, default = 2, minimum = 0, maximum = 6, example = 2)]
    pub safety_tolerance: u8,
    /// Output format for the generated image (null: jpeg).
    #[schema(default = "jpeg")]
    pub output_format: Option<OutputFormat>,
    /// URL to receive webhook notifications
    #[schema(format = "uri", min_length = 1, max_length = 2083)]
    pub webhook_url: Option<String>,
    /// Optional secret for webhook signature verification
    pub webhook_secret: Option<String>,
}

/// The optional-with-default text prompt of the newer models: `Optional[str] = ""`.
pub(crate) fn prompt(b: &mut Body) -> Option<String> {
    b.nullable_or("prompt", Some(String::new()), field::string)
}

/// `output_format: Optional[OutputFormat] = "jpeg"`.
pub(crate) fn output_format(b: &mut Body) -> Option<OutputFormat> {
    b.nullable_or(
        "output_format",
        Some(OutputFormat::Jpeg),
        field::output_format,
    )
}

/// `safety_tolerance: int = 2`.
pub(crate) fn safety_tolerance(b: &mut Body) -> u8 {
    b.optional(
        "safety_tolerance",
        SAFETY_TOLERANCE_DEFAULT,
        field::safety_tolerance,
    )
}

/// Validates a `POST /v1/flux-dev` body (same rules as [`crate::parse_finetuned_request`]).
pub fn parse_flux_dev_request(body: &[u8]) -> Result<FluxDevRequest, RequestError> {
    let mut b = Body::read(body)?;
    let request = FluxDevRequest {
        prompt: prompt(&mut b),
        image_prompt: b.nullable("image_prompt", field::string),
        width: b.optional("width", WIDTH_DEFAULT, field::side),
        height: b.optional("height", HEIGHT_DEFAULT, field::side),
        steps: b.nullable_or("steps", Some(FLUX_DEV_STEPS_DEFAULT), field::steps),
        prompt_upsampling: b.optional("prompt_upsampling", false, field::boolean),
        seed: b.nullable("seed", field::seed),
        guidance: b.nullable_or("guidance", Some(FLUX_DEV_GUIDANCE_DEFAULT), field::guidance),
        safety_tolerance: safety_tolerance(&mut b),
        output_format: output_format(&mut b),
        webhook_url: b.nullable("webhook_url", field::http_url),
        webhook_secret: b.nullable("webhook_secret", field::string),
    };
    b.finish()?;
    Ok(request)
}

/// Validates a `POST /v1/flux-pro` body.
pub fn parse_flux_pro_request(body: &[u8]) -> Result<FluxProRequest, RequestError> {
    let mut b = Body::read(body)?;
    let request = FluxProRequest {
        prompt: prompt(&mut b),
        image_prompt: b.nullable("image_prompt", field::string),
        width: b.optional("width", WIDTH_DEFAULT, field::side),
        height: b.optional("height", HEIGHT_DEFAULT, field::side),
        steps: b.nullable_or("steps", Some(STEPS_DEFAULT), field::steps),
        prompt_upsampling: b.optional("prompt_upsampling", false, field::boolean),
        seed: b.nullable("seed", field::seed),
        guidance: b.nullable_or("guidance", Some(GUIDANCE_DEFAULT), field::guidance),
        safety_tolerance: safety_tolerance(&mut b),
        interval: b.nullable_or("interval", Some(INTERVAL_DEFAULT), |v| {
            field::float_in(v, INTERVAL_MIN, INTERVAL_MAX)
        }),
        output_format: output_format(&mut b),
        webhook_url: b.nullable("webhook_url", field::http_url),
        webhook_secret: b.nullable("webhook_secret", field::string),
    };
    b.finish()?;
    Ok(request)
}

/// Validates a `POST /v1/flux-pro-1.1` body.
pub fn parse_flux_pro_1_1_request(body: &[u8]) -> Result<FluxPro11Request, RequestError> {
    let mut b = Body::read(body)?;
    let request = FluxPro11Request {
        prompt: prompt(&mut b),
        image_prompt: b.nullable("image_prompt", field::string),
        width: b.optional("width", WIDTH_DEFAULT, field::side),
        height: b.optional("height", HEIGHT_DEFAULT, field::side),
        prompt_upsampling: b.optional("prompt_upsampling", false, field::boolean),
        seed: b.nullable("seed", field::seed),
        safety_tolerance: safety_tolerance(&mut b),
        output_format: output_format(&mut b),
        webhook_url: b.nullable("webhook_url", field::http_url),
        webhook_secret: b.nullable("webhook_secret", field::string),
    };
    b.finish()?;
    Ok(request)
}
