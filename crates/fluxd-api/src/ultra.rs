//! The ultra endpoints, sized by an aspect ratio instead of width and height:
//! `POST /v1/flux-pro-1.1-ultra` and `/v1/flux-pro-1.1-ultra-finetuned`.
//!
//! `aspect_ratio` is a string `"W:H"`; the reference documents "between 21:9 and 9:21" without
//! saying how other values fail, so the rule and its messages are ours (a pydantic
//! `field_validator`, replayed in `tests/pydantic_reference.py`): W and H whole numbers from 1 to
//! 9999, W/H from 9/21 to 21/9. The output is about 4 MP ([`ultra_size`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::body::{field, Body};
use crate::error::RequestError;
use crate::generation::{output_format, prompt, safety_tolerance};
use crate::json::Json;
use crate::lax::Fault;
use crate::request::limits::*;
use crate::request::OutputFormat;

/// Default output size of the ultra endpoints, in units of 2²⁰ pixels: 4 gives 2048×2048 for
/// 1:1 and 2752×1536 for 16:9, the reference's sizes.
pub const ULTRA_MEGAPIXELS_DEFAULT: f64 = 4.0;
/// Ultra output sides are multiples of this (the reference's 2752×1536 is 43×64 by 24×64).
pub const ULTRA_SIDE_MULTIPLE: u32 = 64;
/// Largest number in `aspect_ratio`.
const ASPECT_PART_MAX: u32 = 9999;

/// A validated `POST /v1/flux-pro-1.1-ultra` body (FLUX 1.1 [pro] ultra).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(
    description = "Generate an image of about 4 megapixels at an aspect ratio.",
    example = json!({"prompt": "A beautiful landscape with mountains and a lake", "seed": 42,
        "aspect_ratio": "16:9", "output_format": "jpeg", "raw": false})
)]
pub struct UltraRequest {
    /// The prompt to use for image generation.
    #[schema(
        default = "",
        example = "A beautiful landscape with mountains and a lake"
    )]
    pub prompt: Option<String>,
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
    /// Aspect ratio of the image between 21:9 and 9:21, as `W:H` (W and H from 1 to 9999).
    #[schema(
        required = false,
        default = "16:9",
        pattern = "^[0-9]{1,4}:[0-9]{1,4}$",
        example = "16:9"
    )]
    pub aspect_ratio: String,
    /// Tolerance level for input and output moderation. Between 0 and 6, 0 being most strict, 6
    /// being least strict.
    #[schema(required = false, default = 2, minimum = 0, maximum = 6, example = 2)]
    pub safety_tolerance: u8,
    /// Output format for the generated image (null: jpeg).
    #[schema(default = "jpeg")]
    pub output_format: Option<OutputFormat>,
    /// Generate less processed, more natural-looking images: here, a lower distilled guidance
    /// (see the endpoint table).
    #[schema(required = false, default = false)]
    pub raw: bool,
    /// Optional image to remix in base64 format (Flux Redux).
    pub image_prompt: Option<String>,
    /// Blend between the prompt and the image prompt: the image prompt's Redux tokens are scaled
    /// by this (0 leaves the image prompt out, 1 is full Redux conditioning).
    #[schema(required = false, default = 0.1, minimum = 0.0, maximum = 1.0)]
    pub image_prompt_strength: f64,
    /// URL to receive webhook notifications
    #[schema(format = "uri", min_length = 1, max_length = 2083)]
    pub webhook_url: Option<String>,
    /// Optional secret for webhook signature verification
    pub webhook_secret: Option<String>,
}

/// A validated `POST /v1/flux-pro-1.1-ultra-finetuned` body: ultra with a fine-tune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(
    description = "Generate an image of about 4 megapixels with a fine-tune. Only `finetune_id` is required.",
    example = json!({"finetune_id": "my-finetune", "finetune_strength": 1.2,
        "prompt": "A beautiful landscape with mountains and a lake", "seed": 42, "aspect_ratio": "16:9"})
)]
pub struct UltraFinetunedRequest {
    /// ID of the fine-tuned model you want to use.
    #[schema(example = "my-finetune")]
    pub finetune_id: String,
    /// Strength of the fine-tuned model. 0.0 means no influence, 1.0 means full influence.
    /// Allowed values up to 2.0
    #[schema(required = false, default = 1.2, minimum = 0.0, maximum = 2.0)]
    pub finetune_strength: f64,
    /// The prompt to use for image generation.
    #[schema(
        default = "",
        example = "A beautiful landscape with mountains and a lake"
    )]
    pub prompt: Option<String>,
    /// Optional seed for reproducibility (random when absent).
    #[schema(
        example = 42,
        minimum = 0,
        maximum = 18446744073709551615_u64,
        format = "uint64"
    )]
    pub seed: Option<u64>,
    /// Aspect ratio of the image between 21:9 and 9:21, as `W:H` (W and H from 1 to 9999).
    #[schema(
        required = false,
        default = "16:9",
        pattern = "^[0-9]{1,4}:[0-9]{1,4}$",
        example = "16:9"
    )]
    pub aspect_ratio: String,
    /// Tolerance level for input and output moderation. Between 0 and 6, 0 being most strict, 6
    /// being least strict.
    #[schema(required = false, default = 2, minimum = 0, maximum = 6, example = 2)]
    pub safety_tolerance: u8,
    /// Output format for the generated image (null: jpeg).
    #[schema(default = "jpeg")]
    pub output_format: Option<OutputFormat>,
    /// Optional image to remix in base64 format (Flux Redux).
    pub image_prompt: Option<String>,
    /// Blend between the prompt and the image prompt: the image prompt's Redux tokens are scaled
    /// by this (0 leaves the image prompt out, 1 is full Redux conditioning).
    #[schema(required = false, default = 0.1, minimum = 0.0, maximum = 1.0)]
    pub image_prompt_strength: f64,
    /// Whether to perform upsampling on the prompt.
    #[schema(required = false, default = false)]
    pub prompt_upsampling: bool,
    /// URL to receive webhook notifications
    #[schema(format = "uri", min_length = 1, max_length = 2083)]
    pub webhook_url: Option<String>,
    /// Optional secret for webhook signature verification
    pub webhook_secret: Option<String>,
}

/// `"W:H"` as two numbers, or why not (ours; see the module docs).
pub fn parse_aspect_ratio(text: &str) -> Result<(u32, u32), &'static str> {
    const FORMAT: &str = "aspect_ratio must be W:H with whole numbers from 1 to 9999, like 16:9";
    const RANGE: &str = "aspect_ratio must be between 21:9 and 9:21";
    let part = |s: &str| -> Option<u32> {
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().filter(|n| (1..=ASPECT_PART_MAX).contains(n))
    };
    let (w, h) = text.split_once(':').ok_or(FORMAT)?;
    let (w, h) = (part(w).ok_or(FORMAT)?, part(h).ok_or(FORMAT)?);
    // 9/21 <= w/h <= 21/9, in integers.
    let (w64, h64) = (u64::from(w), u64::from(h));
    if 9 * w64 > 21 * h64 || 9 * h64 > 21 * w64 {
        return Err(RANGE);
    }
    Ok((w, h))
}

/// pydantic's error for a `field_validator` that raises `ValueError(msg)`, as FastAPI sends it
/// (the exception itself serialises to `{}` in `ctx`).
fn value_error(msg: &str) -> Fault {
    let mut ctx = Map::new();
    ctx.insert("error".into(), Value::Object(Map::new()));
    Fault {
        kind: "value_error",
        msg: format!("Value error, {msg}"),
        ctx: Some(ctx),
    }
}

fn aspect_ratio(b: &mut Body) -> String {
    b.optional(
        "aspect_ratio",
        ASPECT_RATIO_DEFAULT.to_owned(),
        |v: &Json| {
            let text = field::string(v)?;
            parse_aspect_ratio(&text).map_err(value_error)?;
            Ok(text)
        },
    )
}

fn image_prompt_strength(b: &mut Body) -> f64 {
    b.optional(
        "image_prompt_strength",
        IMAGE_PROMPT_STRENGTH_DEFAULT,
        |v| field::float_in(v, 0.0, 1.0),
    )
}

/// The output size for an aspect ratio: `megapixels` × 2²⁰ pixels at ratio `w:h`, each side
/// rounded to the nearest multiple of 64 (at least 64). At the default 4 this gives the
/// reference's sizes: 2752×1536 for 16:9, 2048×2048 for 1:1, 3136×1344 for 21:9.
pub fn ultra_size((w, h): (u32, u32), megapixels: f64) -> (u32, u32) {
    let pixels = megapixels * f64::from(1u32 << 20);
    let ratio = f64::from(w) / f64::from(h);
    let height = (pixels / ratio).sqrt();
    let width = height * ratio;
    let step = f64::from(ULTRA_SIDE_MULTIPLE);
    // Far below u32::MAX for any megapixel count the server accepts.
    let round = |x: f64| ((x / step).round().max(1.0) as u32) * ULTRA_SIDE_MULTIPLE;
    (round(width), round(height))
}

/// Validates a `POST /v1/flux-pro-1.1-ultra` body.
pub fn parse_ultra_request(body: &[u8]) -> Result<UltraRequest, RequestError> {
    let mut b = Body::read(body)?;
    let request = UltraRequest {
        prompt: prompt(&mut b),
        prompt_upsampling: b.optional("prompt_upsampling", false, field::boolean),
        seed: b.nullable("seed", field::seed),
        aspect_ratio: aspect_ratio(&mut b),
        safety_tolerance: safety_tolerance(&mut b),
        output_format: output_format(&mut b),
        raw: b.optional("raw", false, field::boolean),
        image_prompt: b.nullable("image_prompt", field::string),
        image_prompt_strength: image_prompt_strength(&mut b),
        webhook_url: b.nullable("webhook_url", field::http_url),
        webhook_secret: b.nullable("webhook_secret", field::string),
    };
    b.finish()?;
    Ok(request)
}

/// Validates a `POST /v1/flux-pro-1.1-ultra-finetuned` body.
pub fn parse_ultra_finetuned_request(body: &[u8]) -> Result<UltraFinetunedRequest, RequestError> {
    let mut b = Body::read(body)?;
    let request = UltraFinetunedRequest {
        finetune_id: b.required("finetune_id", field::string),
        finetune_strength: b.optional(
            "finetune_strength",
            ULTRA_FINETUNE_STRENGTH_DEFAULT,
            field::finetune_strength,
        ),
        prompt: prompt(&mut b),
        seed: b.nullable("seed", field::seed),
        aspect_ratio: aspect_ratio(&mut b),
        safety_tolerance: safety_tolerance(&mut b),
        output_format: output_format(&mut b),
        image_prompt: b.nullable("image_prompt", field::string),
        image_prompt_strength: image_prompt_strength(&mut b),
        prompt_upsampling: b.optional("prompt_upsampling", false, field::boolean),
        webhook_url: b.nullable("webhook_url", field::http_url),
        webhook_secret: b.nullable("webhook_secret", field::string),
    };
    b.finish()?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_the_references_at_4_megapixels() {
        let at4 = |w, h| ultra_size((w, h), ULTRA_MEGAPIXELS_DEFAULT);
        assert_eq!(at4(16, 9), (2752, 1536));
        assert_eq!(at4(9, 16), (1536, 2752));
        assert_eq!(at4(1, 1), (2048, 2048));
        assert_eq!(at4(21, 9), (3136, 1344));
        assert_eq!(at4(4, 3), (2368, 1792));
        assert_eq!(at4(3, 2), (2496, 1664));
        for (w, h) in [(21, 9), (16, 9), (1, 1), (9, 21), (5, 4), (7, 3)] {
            let (a, b) = ultra_size((w, h), 0.0625);
            assert!(
                a % 32 == 0 && b % 32 == 0 && a >= 64 && b >= 64,
                "{w}:{h} {a}x{b}"
            );
        }
        assert_eq!(ultra_size((1, 1), 0.0625), (256, 256));
        assert_eq!(ultra_size((1, 1), 0.0001), (64, 64));
    }

    #[test]
    fn aspect_ratios() {
        assert_eq!(parse_aspect_ratio("16:9"), Ok((16, 9)));
        assert_eq!(parse_aspect_ratio("21:9"), Ok((21, 9)));
        assert_eq!(parse_aspect_ratio("9:21"), Ok((9, 21)));
        assert_eq!(parse_aspect_ratio("0007:3"), Ok((7, 3)));
        for bad in [
            "",
            "16",
            "16:",
            ":9",
            "16:9:1",
            " 16:9",
            "16/9",
            "0:1",
            "a:b",
            "1.5:1",
            "10000:9999",
            "+1:1",
            "١:١",
        ] {
            assert!(
                parse_aspect_ratio(bad).unwrap_err().contains("W:H"),
                "{bad}"
            );
        }
        for far in ["22:9", "9:22", "3:1", "1:3"] {
            assert!(
                parse_aspect_ratio(far).unwrap_err().contains("between"),
                "{far}"
            );
        }
    }
}
