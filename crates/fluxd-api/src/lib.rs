//! Wire types of the fluxd HTTP contract (the Black Forest Labs fine-tune API, wire for wire).
//!
//! - [`parse_finetuned_request`] / [`parse_delete_finetune_request`]: raw body → validated type,
//!   or every problem at once in FastAPI/pydantic v2's `422 {"detail": [...]}` shape
//!   ([`ValidationErrors`]); pydantic's lax coercions and messages are replayed from a fixture
//!   produced by the reference stack (`tests/pydantic_reference.py`).
//! - Response bodies ([`SubmitResponse`], [`GetResultResponse`], ...) and the webhook payload.
//! - [`openapi()`]: the OpenAPI document, generated from these types.
//!
//! No I/O and no HTTP framework: the server maps [`RequestError::status`] and the bodies here onto
//! its responses.

// Tests state their expectations with unwrap; library code never does.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod json;
mod lax;
mod openapi;
mod request;
mod response;

pub use error::{ErrorDetail, LocItem, RequestError, ValidationError, ValidationErrors};
pub use openapi::{openapi, openapi_json, SECURITY_SCHEME};
pub use request::{
    limits, parse_delete_finetune_request, parse_finetuned_request, DeleteFinetuneRequest,
    FinetunedRequest, OutputFormat,
};
pub use response::{
    megapixels, DeleteFinetuneResponse, FinetuneDetailsResponse, GetResultResponse,
    MyFinetunesResponse, ReadyResult, SubmitResponse, TaskResult, TaskStatus, WebhookPayload,
};
