//! Reading a JSON request body the way FastAPI + pydantic v2 do: decode it, then validate one
//! field at a time, collecting every problem in field order (pydantic reports them all at once).
//!
//! [`Body`] holds the decoded object and the errors so far; each request module calls it once
//! per field of its model, in the model's field order, and [`Body::finish`] turns the collected
//! errors into the 422. The [`field`] functions are the field types the reference's models share.

use serde_json::{Map, Value};

use crate::error::{LocItem, RequestError, ValidationError, ValidationErrors};
use crate::json::{self, DecodeError, Json};
use crate::lax::{self, Bound, Fault, Range};

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
        detail: vec![not_an_object(Value::String(
            String::from_utf8_lossy(body).into_owned(),
        ))],
    })
}

fn not_an_object(input: Value) -> ValidationError {
    ValidationError {
        kind: "model_attributes_type".into(),
        loc: vec!["body".into()],
        msg: "Input should be a valid dictionary or object to extract fields from".into(),
        input,
        ctx: None,
    }
}

/// A JSON object body being validated, collecting errors field by field.
///
/// The field methods return the validated value, or a stand-in (the default, `None`, or
/// `T::default()`) once the field's error is recorded, so validation goes on and reports every bad
/// field at once as FastAPI does; [`Body::finish`] fails whenever any error was recorded, so a
/// stand-in never leaves a parser.
pub(crate) struct Body {
    fields: Vec<(String, Json)>,
    errors: Vec<ValidationError>,
}

impl Body {
    /// Decodes the body; failures that stop validation before any field is looked at.
    pub(crate) fn read(body: &[u8]) -> Result<Body, RequestError> {
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
            Ok(other) => Err(invalid(not_an_object(other.to_value()))),
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
    pub(crate) fn required<T: Default>(
        &mut self,
        name: &str,
        f: impl FnOnce(&Json) -> Result<T, Fault>,
    ) -> T {
        if self.get(name).is_none() {
            let whole = Json::Object(self.fields.clone()).to_value();
            self.errors.push(ValidationError {
                kind: "missing".into(),
                loc: vec!["body".into(), name.into()],
                msg: "Field required".into(),
                input: whole,
                ctx: None,
            });
            return T::default();
        }
        self.check(name, f).unwrap_or_default()
    }

    /// `name: T = default`: absent takes the default; `null` is validated (and refused).
    pub(crate) fn optional<T>(
        &mut self,
        name: &str,
        default: T,
        f: impl FnOnce(&Json) -> Result<T, Fault>,
    ) -> T {
        if self.get(name).is_none() {
            return default;
        }
        self.check(name, f).unwrap_or(default)
    }

    /// `name: Optional[T] = None`: absent or `null` is `None`.
    pub(crate) fn nullable<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&Json) -> Result<T, Fault>,
    ) -> Option<T> {
        self.nullable_or(name, None, f)
    }

    /// `name: Optional[T] = default`: absent takes the default, `null` is `None`.
    pub(crate) fn nullable_or<T>(
        &mut self,
        name: &str,
        default: Option<T>,
        f: impl FnOnce(&Json) -> Result<T, Fault>,
    ) -> Option<T> {
        match self.get(name) {
            None => default,
            Some(Json::Null) => None,
            Some(_) => self.check(name, f),
        }
    }

    /// Every problem found, or `Ok` when the body validated.
    pub(crate) fn finish(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                detail: self.errors,
            })
        }
    }
}

/// The field types the reference's request models share, each with its constraints.
pub(crate) mod field {
    use super::*;
    use crate::request::limits::*;
    use crate::request::OutputFormat;

    /// An `int` field with inclusive bounds (and a step), narrowed to the field's Rust type.
    fn int_as<T: TryFrom<i128>>(
        v: &Json,
        ge: i128,
        le: i128,
        step: Option<i128>,
    ) -> Result<T, Fault> {
        let range = Range {
            ge: Some(Bound::Int(ge)),
            le: Some(Bound::Int(le)),
            multiple_of: step,
        };
        let i = lax::int(v, range)?;
        // The range is inside T's, so this cannot fail; keep a pydantic-shaped error regardless.
        T::try_from(i).map_err(|_| Fault {
            kind: "int_type",
            msg: "Input should be a valid integer".into(),
            ctx: None,
        })
    }

    /// A `float` field with inclusive bounds.
    pub(crate) fn float_in(v: &Json, ge: f64, le: f64) -> Result<f64, Fault> {
        lax::float(
            v,
            Range {
                ge: Some(Bound::Float(ge)),
                le: Some(Bound::Float(le)),
                multiple_of: None,
            },
        )
    }

    /// `str`.
    pub(crate) fn string(v: &Json) -> Result<String, Fault> {
        lax::string(v)
    }

    /// `bool`.
    pub(crate) fn boolean(v: &Json) -> Result<bool, Fault> {
        lax::boolean(v)
    }

    /// `width` / `height`: 256..=1440, a multiple of 32.
    pub(crate) fn side(v: &Json) -> Result<u32, Fault> {
        int_as(
            v,
            SIDE_MIN.into(),
            SIDE_MAX.into(),
            Some(SIDE_MULTIPLE.into()),
        )
    }

    /// `steps`: 1..=50.
    pub(crate) fn steps(v: &Json) -> Result<u32, Fault> {
        int_as(v, STEPS_MIN.into(), STEPS_MAX.into(), None)
    }

    /// `guidance`: 1.5..=5.
    pub(crate) fn guidance(v: &Json) -> Result<f64, Fault> {
        float_in(v, GUIDANCE_MIN, GUIDANCE_MAX)
    }

    /// `finetune_strength`: 0..=2.
    pub(crate) fn finetune_strength(v: &Json) -> Result<f64, Fault> {
        float_in(v, 0.0, FINETUNE_STRENGTH_MAX)
    }

    /// `seed`. Ours: the reference says only "integer"; seeds are u64, so out-of-range ones get
    /// pydantic's range errors rather than being wrapped.
    pub(crate) fn seed(v: &Json) -> Result<u64, Fault> {
        int_as(v, 0, u64::MAX.into(), None)
    }

    /// `safety_tolerance`: 0..=6.
    pub(crate) fn safety_tolerance(v: &Json) -> Result<u8, Fault> {
        int_as(v, 0, SAFETY_TOLERANCE_MAX.into(), None)
    }

    /// `output_format`: `jpeg` or `png` (the reference's enum for these endpoints).
    pub(crate) fn output_format(v: &Json) -> Result<OutputFormat, Fault> {
        lax::one_of(v, &["jpeg", "png"]).map(|s| {
            if s == "png" {
                OutputFormat::Png
            } else {
                OutputFormat::Jpeg
            }
        })
    }

    /// `webhook_url`: pydantic's `HttpUrl`, kept normalised.
    pub(crate) fn http_url(v: &Json) -> Result<String, Fault> {
        lax::http_url(v)
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

    #[test]
    fn nullable_with_a_default() {
        let mut b = Body::read(br#"{"a": null, "c": "x"}"#).unwrap();
        assert_eq!(b.nullable_or("a", Some(28), field::steps), None);
        assert_eq!(b.nullable_or("b", Some(28), field::steps), Some(28));
        assert_eq!(b.nullable_or("c", Some(28), field::steps), None);
        let errors = b.finish().unwrap_err();
        assert_eq!(errors.detail.len(), 1);
        assert_eq!(errors.detail[0].kind, "int_parsing");
    }
}
