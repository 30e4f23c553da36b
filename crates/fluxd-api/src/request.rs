//! Request bodies: raw bytes → validated types, every problem reported at once.
//!
//! The reference is a FastAPI app with a pydantic v2 model per body (`tests/pydantic_reference.py`
//! holds the equivalent model). Parsing happens here by hand, not with a derived `Deserialize`,
//! because pydantic reports all fields' problems together, in field order, with its own vocabulary.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::{LocItem, RequestError, ValidationError, ValidationErrors};
use crate::json::{self, DecodeError, Json};
use crate::lax::{self, Bound, Fault, Range};

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

/// Limits of `POST /v1/flux-pro-finetuned`, as the reference page states them.
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
    #[schema(example = 42, minimum = 0)]
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
    let finetune_id = b.required("finetune_id", lax::string);
    let finetune_strength = b.optional("finetune_strength", FINETUNE_STRENGTH_DEFAULT, |v| {
        lax::float(v, float_range(0.0, FINETUNE_STRENGTH_MAX))
    });
    let steps = b.optional("steps", STEPS_DEFAULT, |v| {
        int_as(v, int_range(STEPS_MIN.into(), STEPS_MAX.into(), None))
    });
    let guidance = b.optional("guidance", GUIDANCE_DEFAULT, |v| {
        lax::float(v, float_range(GUIDANCE_MIN, GUIDANCE_MAX))
    });
    let prompt = b.optional("prompt", String::new(), lax::string);
    let image_prompt = b.nullable("image_prompt", lax::string);
    let side = |v: &Json| {
        int_as::<u32>(
            v,
            int_range(SIDE_MIN.into(), SIDE_MAX.into(), Some(SIDE_MULTIPLE.into())),
        )
    };
    let width = b.optional("width", WIDTH_DEFAULT, side);
    let height = b.optional("height", HEIGHT_DEFAULT, side);
    let prompt_upsampling = b.optional("prompt_upsampling", false, lax::boolean);
    // Ours: the page says only "integer"; seeds are u64, so out-of-range ones get pydantic's range
    // errors rather than being wrapped.
    let seed = b.nullable("seed", |v| {
        int_as::<u64>(v, int_range(0, u64::MAX.into(), None))
    });
    let safety_tolerance = b.optional("safety_tolerance", SAFETY_TOLERANCE_DEFAULT, |v| {
        int_as::<u8>(v, int_range(0, SAFETY_TOLERANCE_MAX.into(), None))
    });
    let output_format = b.optional("output_format", OutputFormat::Jpeg, |v| {
        lax::one_of(v, &["jpeg", "png"]).map(|s| {
            if s == "png" {
                OutputFormat::Png
            } else {
                OutputFormat::Jpeg
            }
        })
    });
    let webhook_url = b.nullable("webhook_url", lax::http_url);
    let webhook_secret = b.nullable("webhook_secret", lax::string);
    b.finish()?;
    // `finish` returned Ok, so every field validated; the pattern below cannot fail then.
    let (
        Some(finetune_id),
        Some(finetune_strength),
        Some(steps),
        Some(guidance),
        Some(prompt),
        Some(image_prompt),
        Some(width),
        Some(height),
        Some(prompt_upsampling),
        Some(seed),
        Some(safety_tolerance),
        Some(output_format),
        Some(webhook_url),
        Some(webhook_secret),
    ) = (
        finetune_id,
        finetune_strength,
        steps,
        guidance,
        prompt,
        image_prompt,
        width,
        height,
        prompt_upsampling,
        seed,
        safety_tolerance,
        output_format,
        webhook_url,
        webhook_secret,
    )
    else {
        return Err(RequestError::Unreadable);
    };
    Ok(FinetunedRequest {
        finetune_id,
        finetune_strength,
        steps,
        guidance,
        prompt,
        image_prompt,
        width,
        height,
        prompt_upsampling,
        seed,
        safety_tolerance,
        output_format,
        webhook_url,
        webhook_secret,
    })
}

/// Validates a `POST /v1/delete_finetune` body, with the same rules as
/// [`parse_finetuned_request`].
pub fn parse_delete_finetune_request(body: &[u8]) -> Result<DeleteFinetuneRequest, RequestError> {
    let mut b = Body::read(body)?;
    let finetune_id = b.required("finetune_id", lax::string);
    b.finish()?;
    match finetune_id {
        Some(finetune_id) => Ok(DeleteFinetuneRequest { finetune_id }),
        None => Err(RequestError::Unreadable),
    }
}

fn int_range(ge: i128, le: i128, multiple_of: Option<i128>) -> Range {
    Range {
        ge: Some(Bound::Int(ge)),
        le: Some(Bound::Int(le)),
        multiple_of,
    }
}

fn float_range(ge: f64, le: f64) -> Range {
    Range {
        ge: Some(Bound::Float(ge)),
        le: Some(Bound::Float(le)),
        multiple_of: None,
    }
}

/// A lax int, narrowed to the field's Rust type (the range has already been enforced).
fn int_as<T: TryFrom<i128>>(v: &Json, range: Range) -> Result<T, Fault> {
    let i = lax::int(v, range)?;
    T::try_from(i).map_err(|_| Fault {
        kind: "int_type",
        msg: "Input should be a valid integer".into(),
        ctx: None,
    })
}

/// A JSON object body being validated, collecting errors field by field.
struct Body {
    fields: Vec<(String, Json)>,
    errors: Vec<ValidationError>,
}

/// Whether FastAPI decodes a body sent with this `Content-Type` as JSON: `application/json` and
/// every `application/*+json`, parameters ignored. A request without the header is decoded too.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// The reference's answer to a non-empty body sent with a non-JSON `Content-Type` (a form, plain
/// text): FastAPI hands the raw text to the model, which is not an object.
pub fn not_json_error(body: &[u8]) -> RequestError {
    RequestError::Invalid(ValidationErrors {
        detail: vec![ValidationError {
            kind: "model_attributes_type".into(),
            loc: vec!["body".into()],
            msg: "Input should be a valid dictionary or object to extract fields from".into(),
            input: Value::String(String::from_utf8_lossy(body).into_owned()),
            ctx: None,
        }],
    })
}

impl Body {
    /// Decodes the body; failures that stop validation before any field is looked at.
    fn read(body: &[u8]) -> Result<Body, RequestError> {
        let invalid =
            |e: ValidationError| RequestError::Invalid(ValidationErrors { detail: vec![e] });
        // FastAPI skips decoding an empty body and reports the body itself as missing.
        if body.is_empty() {
            return Err(invalid(ValidationError {
                kind: "missing".into(),
                loc: vec!["body".into()],
                msg: "Field required".into(),
                input: Value::Null,
                ctx: None,
            }));
        }
        match json::decode(body) {
            Ok(Json::Object(fields)) => Ok(Body {
                fields,
                errors: Vec::new(),
            }),
            Ok(other) => Err(invalid(ValidationError {
                kind: "model_attributes_type".into(),
                loc: vec!["body".into()],
                msg: "Input should be a valid dictionary or object to extract fields from".into(),
                input: other.to_value(),
                ctx: None,
            })),
            Err(DecodeError::Syntax { msg, pos }) => {
                let mut ctx = Map::new();
                ctx.insert("error".into(), Value::String(msg.into()));
                Err(invalid(ValidationError {
                    kind: "json_invalid".into(),
                    loc: vec!["body".into(), LocItem::Index(pos as u64)],
                    msg: "JSON decode error".into(),
                    input: Value::Object(Map::new()),
                    ctx: Some(ctx),
                }))
            }
            Err(DecodeError::Unreadable) => Err(RequestError::Unreadable),
        }
    }

    fn get(&self, name: &str) -> Option<&Json> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn check<T>(&mut self, name: &str, f: impl FnOnce(&Json) -> Result<T, Fault>) -> Option<T> {
        let input = self.get(name)?;
        match f(input) {
            Ok(v) => Some(v),
            Err(fault) => {
                let input = input.to_value();
                self.errors.push(ValidationError {
                    kind: fault.kind.into(),
                    loc: vec!["body".into(), name.into()],
                    msg: fault.msg,
                    input,
                    ctx: fault.ctx,
                });
                None
            }
        }
    }

    /// A field without a default: absent is `missing`, with the whole body as `input`.
    fn required<T>(&mut self, name: &str, f: impl FnOnce(&Json) -> Result<T, Fault>) -> Option<T> {
        if self.get(name).is_none() {
            let whole = Json::Object(self.fields.clone()).to_value();
            self.errors.push(ValidationError {
                kind: "missing".into(),
                loc: vec!["body".into(), name.into()],
                msg: "Field required".into(),
                input: whole,
                ctx: None,
            });
            return None;
        }
        self.check(name, f)
    }

    /// A field with a default: absent takes the default; `null` is validated (and refused).
    fn optional<T>(
        &mut self,
        name: &str,
        default: T,
        f: impl FnOnce(&Json) -> Result<T, Fault>,
    ) -> Option<T> {
        if self.get(name).is_none() {
            return Some(default);
        }
        self.check(name, f)
    }

    /// An `Optional[...] = None` field: absent or `null` is `None`.
    fn nullable<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&Json) -> Result<T, Fault>,
    ) -> Option<Option<T>> {
        match self.get(name) {
            None | Some(Json::Null) => Some(None),
            Some(_) => self.check(name, f).map(Some),
        }
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                detail: self.errors,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_those_fastapi_decodes() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.api+json",
            " application/merge-patch+json ;q=1",
        ] {
            assert!(is_json_content_type(ct), "{ct}");
        }
        for ct in [
            "application/x-www-form-urlencoded",
            "text/plain",
            "text/json",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "json",
            "",
        ] {
            assert!(!is_json_content_type(ct), "{ct}");
        }
    }

    #[test]
    fn a_form_body_is_not_an_object() {
        let RequestError::Invalid(errors) = not_json_error(b"prompt=fox&finetune_id=x") else {
            panic!("not a validation error");
        };
        assert_eq!(errors.detail.len(), 1);
        assert_eq!(errors.detail[0].kind, "model_attributes_type");
        assert_eq!(
            errors.detail[0].input,
            Value::String("prompt=fox&finetune_id=x".into())
        );
    }
}
