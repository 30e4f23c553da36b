//! Wire types of the fluxd HTTP contract (the Black Forest Labs API, wire for wire).
//!
//! - [`Endpoint::parse`]: a generation endpoint's raw body → its validated request
//!   ([`GenerationRequest`]), or every problem at once in FastAPI/pydantic v2's
//!   `422 {"detail": [...]}` shape ([`ValidationErrors`]); pydantic's lax coercions and messages
//!   are replayed from a fixture produced by the reference stack (`tests/pydantic_reference.py`).
//! - [`ENDPOINTS`]: the one table of how each endpoint runs on the served model
//!   ([`GenerationRequest::resolve`] → [`Generation`]); [`StoredTask`]: what a task keeps.
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
//! - `aspect_ratio` (ultra) must be `W:H`, both 1..=9999, between 21:9 and 9:21.
//!
//! No I/O and no HTTP framework: the server maps [`RequestError::status`] and the bodies here onto
//! its responses.

// Tests state their expectations with unwrap; library code never does.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod body;
mod control;
mod endpoint;
mod error;
mod generation;
mod json;
mod lax;
mod openapi;
mod request;
mod resolve;
mod response;
mod ultra;

pub use body::{is_json_content_type, not_json_error};
pub use control::{
    parse_cancel_request, CancelRequest, CancelResponse, CreditsResponse, CANCELLED_DETAILS,
};
pub use endpoint::{
    endpoint_table_markdown, Endpoint, EndpointSpec, Setting, SizeRule, ENDPOINTS, RAW_GUIDANCE,
    SERVER_GUIDANCE, SERVER_STEPS, UNSERVED_ENDPOINTS,
};
pub use error::{ErrorDetail, LocItem, RequestError, ValidationError, ValidationErrors};
pub use generation::{
    parse_flux_dev_request, parse_flux_pro_1_1_request, parse_flux_pro_request, FluxDevRequest,
    FluxPro11Request, FluxProRequest,
};
pub use openapi::{openapi, openapi_json, SECURITY_SCHEME};
pub use request::{
    limits, parse_delete_finetune_request, parse_finetuned_request, DeleteFinetuneRequest,
    FinetunedRequest, OutputFormat,
};
pub use resolve::{FinetuneUse, Generation, GenerationRequest, StoredTask};
pub use response::{
    megapixels, DeleteFinetuneResponse, FinetuneDetailsResponse, GetResultResponse, HealthStatus,
    MyFinetunesResponse, Preview, ReadyResult, SubmitResponse, TaskResult, TaskStatus,
    WebhookPayload,
};
pub use ultra::{
    parse_aspect_ratio, parse_ultra_finetuned_request, parse_ultra_request, ultra_size,
    UltraFinetunedRequest, UltraRequest, ULTRA_MEGAPIXELS_DEFAULT, ULTRA_SIDE_MULTIPLE,
};
