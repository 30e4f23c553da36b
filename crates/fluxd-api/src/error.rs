//! Error bodies of the contract: FastAPI/pydantic v2 validation lists and `{"detail": "..."}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// One segment of an error's `loc`: a field name, or a character offset for `json_invalid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LocItem {
    /// `"body"`, `"query"` or a field name.
    Key(String),
    /// A position (FastAPI's `json_invalid` puts the decoder's character offset here).
    Index(u64),
}

impl From<&str> for LocItem {
    fn from(s: &str) -> Self {
        LocItem::Key(s.to_owned())
    }
}

/// One problem with a request, in pydantic v2's shape (`errors(include_url=False)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ValidationError {
    /// pydantic's error type, e.g. `missing`, `greater_than_equal`, `int_parsing`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where: `["body", "<field>"]`, `["body"]`, `["body", <offset>]` or `["query", "<name>"]`.
    pub loc: Vec<LocItem>,
    /// pydantic's message, e.g. "Input should be less than or equal to 50".
    pub msg: String,
    /// The offending input as received (any JSON value; for `missing`, the whole body object).
    pub input: Value,
    /// The error's parameters (`ge`, `le`, `multiple_of`, `expected`, `max_length`, `error`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub ctx: Option<Map<String, Value>>,
}

impl ValidationError {
    /// A required query parameter that was not given, as FastAPI reports it (checked against
    /// FastAPI 0.165: `?id=` is an empty string, not missing; a repeated parameter's last value
    /// wins).
    pub fn missing_query(name: &str) -> Self {
        ValidationError {
            kind: "missing".into(),
            loc: vec!["query".into(), name.into()],
            msg: "Field required".into(),
            input: Value::Null,
            ctx: None,
        }
    }
}

/// Every problem found in one request: the `422` body `{"detail": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{} validation error(s), first: {}", .detail.len(), .detail.first().map_or("", |e| e.msg.as_str()))]
pub struct ValidationErrors {
    /// One entry per problem, in the order pydantic reports them (model field order).
    pub detail: Vec<ValidationError>,
}

impl From<ValidationError> for ValidationErrors {
    fn from(error: ValidationError) -> Self {
        ValidationErrors {
            detail: vec![error],
        }
    }
}

/// The `{"detail": "..."}` body of every non-validation error (403, 404, 429...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, in words for the caller.
    pub detail: String,
}

impl ErrorDetail {
    /// A body with this message.
    pub fn new(detail: impl Into<String>) -> Self {
        ErrorDetail {
            detail: detail.into(),
        }
    }
}

/// Why a request body was refused: the crate's one error type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The body was JSON (or not) but did not validate: `422` with [`ValidationErrors`].
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// Not UTF-8 or nested too deep to read: FastAPI answers
    /// `400 {"detail":"There was an error parsing the body"}`.
    #[error("There was an error parsing the body")]
    Unreadable,
}

impl RequestError {
    /// The HTTP status the reference answers with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Invalid(_) => 422,
            RequestError::Unreadable => 400,
        }
    }

    /// The JSON body to send.
    pub fn body(&self) -> Value {
        let body = match self {
            RequestError::Invalid(errors) => serde_json::to_value(errors),
            RequestError::Unreadable => serde_json::to_value(ErrorDetail::new(self.to_string())),
        };
        // Serialising these plain structs cannot fail; keep a detail body regardless.
        body.unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes() {
        let errors = ValidationErrors {
            detail: vec![ValidationError::missing_query("id")],
        };
        assert_eq!(
            serde_json::to_value(&errors).unwrap(),
            json!({"detail":[{"type":"missing","loc":["query","id"],"msg":"Field required","input":null}]})
        );
        let err = RequestError::from(errors);
        assert_eq!(err.status(), 422);
        assert_eq!(RequestError::Unreadable.status(), 400);
        assert_eq!(
            RequestError::Unreadable.body(),
            json!({"detail":"There was an error parsing the body"})
        );
        assert_eq!(
            serde_json::to_value(ErrorDetail::new("Not authenticated")).unwrap(),
            json!({"detail":"Not authenticated"})
        );
    }
}
