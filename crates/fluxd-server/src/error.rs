//! Errors: [`ServerError`] at the crate boundary (startup, imports) and [`ApiError`], the one type
//! every handler fails with, mapped exhaustively onto the contract's status codes and
//! `{"detail": ...}` bodies.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fluxd_api::{ErrorDetail, RequestError, ValidationError, ValidationErrors};
use fluxd_store::StoreError;
use serde_json::Value;

/// Failures of the service outside a request: opening the data directory, loading the model,
/// importing a fine-tune from the CLI.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file or socket could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine failed (loading the model, writing the tiny model).
    #[error(transparent)]
    Engine(#[from] fluxd_engine::EngineError),
    /// A fine-tune name breaks the naming rule.
    #[error("invalid fine-tune id {0:?}: use 1 to 128 characters from A-Z a-z 0-9 . _ -")]
    InvalidFinetuneId(String),
    /// The LoRA file does not fit this server's model.
    #[error("not a LoRA this model can use: {0}")]
    InvalidLora(String),
    /// The tenant already has a fine-tune of that name.
    #[error("fine-tune {0:?} already exists")]
    FinetuneExists(String),
    /// The URL signing key in the data directory is unreadable.
    #[error("{0}")]
    Corrupt(String),
    /// A setting cannot be used.
    #[error("{0}")]
    Config(String),
}

impl ServerError {
    /// Wraps an I/O failure with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Every way a request can fail, each with exactly one status code and body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `x-key` header: `403 Not authenticated` (FastAPI's `APIKeyHeader`).
    #[error("Not authenticated")]
    NotAuthenticated,
    /// Unknown or revoked key.
    #[error("Invalid API key")]
    InvalidApiKey,
    /// The fine-tune is not visible to the caller.
    #[error("Finetune not found")]
    FinetuneNotFound,
    /// The task to cancel is not the caller's (unknown, expired, or another tenant's).
    #[error("Task not found")]
    TaskNotFound,
    /// The task to cancel has already reached this final status.
    #[error("The task is already final ({0}); only a Pending task can be cancelled")]
    TaskFinal(&'static str),
    /// The body is larger than the route accepts.
    #[error("Request body too large (limit {limit} bytes)")]
    PayloadTooLarge {
        /// The route's limit.
        limit: u64,
    },
    /// The body did not parse or validate: the api crate's status and body, unchanged.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Query parameters (or a rule of this server) failed validation: 422 in pydantic's shape.
    #[error(transparent)]
    Validation(#[from] ValidationErrors),
    /// A 422 with a plain message (an uploaded file that is no usable LoRA, a bad name).
    #[error("{0}")]
    Unprocessable(String),
    /// The tenant already has a fine-tune of that name.
    #[error("Finetune {0:?} already exists")]
    FinetuneExists(String),
    /// The key has as many unfinished tasks as it may have.
    #[error("Too many active tasks ({active} of {limit}); wait for one to finish")]
    TooManyActiveTasks {
        /// Unfinished tasks of the key.
        active: u32,
        /// The key's limit.
        limit: u32,
    },
    /// The tenant's balance cannot pay the task (`402`, the contract's "out of credits").
    #[error("Insufficient credits: this task costs {cost} credits and the balance is {balance}")]
    InsufficientCredits {
        /// What the task costs.
        cost: f64,
        /// The tenant's balance.
        balance: f64,
    },
    /// A delivery URL whose signature is wrong or expired.
    #[error("Invalid or expired signature")]
    BadSignature,
    /// A path that names nothing (e.g. a deleted image), or an endpoint this server has no
    /// model for.
    #[error("Not Found")]
    NotFound,
    /// A known path with another method.
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    /// The model is still loading.
    #[error("The model is not loaded yet; retry shortly")]
    NotReady,
    /// A dependency failed in a way that retrying may fix (busy database, full disk). Logged.
    #[error("Service temporarily unavailable")]
    Unavailable(String),
    /// A bug or an unexpected failure. Logged, never shown.
    #[error("Internal Server Error")]
    Internal(String),
}

/// Seconds a client should wait before submitting again after a 429: one tiny task's worth; real
/// models take longer, but clients back off further on repeated 429s anyway.
const RETRY_AFTER_SECS: &str = "5";

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotAuthenticated | Self::InvalidApiKey | Self::BadSignature => {
                StatusCode::FORBIDDEN
            }
            Self::FinetuneNotFound | Self::TaskNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Request(err) => {
                StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::Validation(_) | Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::FinetuneExists(_) | Self::TaskFinal(_) => StatusCode::CONFLICT,
            Self::TooManyActiveTasks { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::InsufficientCredits { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::NotReady | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Value {
        match self {
            Self::Request(err) => err.body(),
            Self::Validation(errors) => {
                serde_json::to_value(errors).unwrap_or_else(|_| detail("Unprocessable Entity"))
            }
            other => detail(&other.to_string()),
        }
    }

    /// A 422 in pydantic's shape for one field of the body, for rules of this server that the
    /// contract's validation does not know (e.g. no Redux model configured).
    pub fn body_field(field: &str, input: Value, msg: &str) -> Self {
        let mut ctx = serde_json::Map::new();
        ctx.insert("error".into(), Value::String(msg.to_owned()));
        Self::Validation(ValidationErrors::from(ValidationError {
            kind: "value_error".into(),
            loc: vec!["body".into(), field.into()],
            msg: format!("Value error, {msg}"),
            input,
            ctx: Some(ctx),
        }))
    }
}

fn detail(message: &str) -> Value {
    serde_json::to_value(ErrorDetail::new(message)).unwrap_or(Value::Null)
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if err.is_retryable() {
            Self::Unavailable(err.to_string())
        } else {
            Self::Internal(format!("store: {err}"))
        }
    }
}

impl From<ServerError> for ApiError {
    fn from(err: ServerError) -> Self {
        match err {
            ServerError::InvalidFinetuneId(_) | ServerError::InvalidLora(_) => {
                Self::Unprocessable(err.to_string())
            }
            ServerError::FinetuneExists(id) => Self::FinetuneExists(id),
            ServerError::Store(err) => err.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(why) => tracing::error!(%why, "request failed"),
            Self::Unavailable(why) => tracing::warn!(%why, "request failed, retryable"),
            _ => {}
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Self::TooManyActiveTasks { .. } = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_detail_objects_and_5xx_hide_their_cause() {
        assert_eq!(
            ApiError::NotAuthenticated.body(),
            json!({"detail": "Not authenticated"})
        );
        assert_eq!(
            ApiError::FinetuneNotFound.body(),
            json!({"detail": "Finetune not found"})
        );
        let internal = ApiError::Internal("disk on fire at /secret/path".into());
        assert_eq!(internal.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(internal.body(), json!({"detail": "Internal Server Error"}));
        let busy = ApiError::Unavailable("sqlite busy".into());
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!busy.body().to_string().contains("sqlite"));
    }

    #[test]
    fn too_many_tasks_carries_retry_after() {
        let response = ApiError::TooManyActiveTasks {
            active: 2,
            limit: 2,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static(RETRY_AFTER_SECS))
        );
    }

    #[test]
    fn request_errors_keep_the_api_crate_status_and_body() {
        let err = fluxd_api::parse_finetuned_request(b"{").expect_err("malformed");
        let body = err.body();
        let api = ApiError::from(err);
        assert_eq!(api.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(api.body(), body);
    }
}
