//! Wire types of the fluxd HTTP contract (the Black Forest Labs fine-tune API, wire for wire).
//!
//! - [`parse_finetuned_request`] / [`parse_delete_finetune_request`]: raw body → validated type,
//!   or every problem at once in FastAPI/pydantic v2's `422 {"detail": [...]}` shape
//!   ([`ValidationErrors`]); pydantic's lax coercions and messages are replayed from a fixture
//!   produced by the reference stack (`tests/pydantic_reference.py`).
//! - Response bodies ([`SubmitResponse`], [`GetResultResponse`], ...) and the webhook payload.
//! - [`openapi()`]: the OpenAPI document, generated from these types.
//!
//! Where the reference has no answer of its own (it fails with a 500) or says nothing, the choice
//! is ours:
//! - `seed` must fit a `u64`: -1 or 2⁶⁴ get pydantic's `greater_than_equal`/`less_than_equal`.
//! - `NaN`/`Infinity` literals are `json_invalid` ("Expecting value"); a lone surrogate escape
//!   becomes U+FFFD; nesting deeper than 256 levels is the 400 for an unreadable body.
//! - An echoed `input` holds integers wider than 64 bits as the nearest float, and objects with
//!   keys in `serde_json`'s order rather than the request's (the same JSON value).
//! - `webhook_url` is kept normalised as pydantic's `HttpUrl` prints it (`http://x` → `http://x/`).
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
    is_json_content_type, limits, not_json_error, parse_delete_finetune_request,
    parse_finetuned_request, DeleteFinetuneRequest, FinetunedRequest, OutputFormat,
};
pub use response::{
    megapixels, DeleteFinetuneResponse, FinetuneDetailsResponse, GetResultResponse,
    MyFinetunesResponse, ReadyResult, SubmitResponse, TaskResult, TaskStatus, WebhookPayload,
};
