//! The OpenAPI document of the contract, generated from the wire types.
//!
//! Schemas come from the types' `ToSchema` derives; operations are declared here with utoipa's
//! builders, so this crate holds no handler code. Every route the server answers is here with
//! every status it can answer (5xx aside from 503, which a busy store gives), and every response
//! documents the `x-request-id` header. The server serves this document, CI diffs it against the
//! checked-in copy, and a schema-driven fuzz run (schemathesis, `crates/fluxd/tests/fuzz.rs`)
//! checks the running server against it.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{KnownFormat, OneOfBuilder, SchemaFormat};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder, Schema, Type,
};
use utoipa::OpenApi;

use crate::control::{CancelRequest, CancelResponse, CreditsResponse};
use crate::endpoint::{Endpoint, ENDPOINTS};
use crate::error::{ErrorDetail, LocItem, ValidationError, ValidationErrors};
use crate::generation::{FluxDevRequest, FluxPro11Request, FluxProRequest};
use crate::request::{DeleteFinetuneRequest, FinetunedRequest, OutputFormat};
use crate::response::{
    DeleteFinetuneResponse, FinetuneDetailsResponse, GetResultResponse, HealthStatus,
    MyFinetunesResponse, Preview, ReadyResult, SubmitResponse, TaskResult, TaskStatus,
    WebhookPayload,
};
use crate::ultra::{UltraFinetunedRequest, UltraRequest};

/// Name of the API-key security scheme (the `x-key` header).
pub const SECURITY_SCHEME: &str = "x-key";

/// The request and response header that identifies a request (echoed, or generated).
const REQUEST_ID_HEADER: &str = "x-request-id";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fluxd",
        description = "FLUX.1 inference (text-to-image and fine-tunes) with the Black Forest Labs API's wire contract."
    ),
    components(schemas(
        FinetunedRequest,
        FluxDevRequest,
        FluxProRequest,
        FluxPro11Request,
        UltraRequest,
        UltraFinetunedRequest,
        OutputFormat,
        DeleteFinetuneRequest,
        SubmitResponse,
        GetResultResponse,
        Preview,
        TaskStatus,
        TaskResult,
        ReadyResult,
        WebhookPayload,
        MyFinetunesResponse,
        FinetuneDetailsResponse,
        DeleteFinetuneResponse,
        CancelRequest,
        CancelResponse,
        CreditsResponse,
        HealthStatus,
        ValidationErrors,
        ValidationError,
        LocItem,
        ErrorDetail,
    ))
)]
struct Components;

/// The error statuses an operation can answer, each with its fixed meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fails {
    /// 400: the body is not UTF-8 or nested too deep.
    Unreadable,
    /// 402: the balance cannot pay the task.
    Payment,
    /// 403: no or an unknown `x-key`.
    Auth,
    /// 404 with this description.
    NotFound(&'static str),
    /// 409 with this description.
    Conflict(&'static str),
    /// 413: the body is over the limit.
    TooLarge,
    /// 422 in pydantic's shape.
    Invalid,
    /// 422 in pydantic's shape or a plain `{"detail": "..."}` (the LoRA upload).
    InvalidOrUnusable,
    /// 429 with `Retry-After`.
    TooMany,
    /// 503: retry later (busy store, model loading).
    Unavailable,
}

/// The whole document: every route, its schemas and the `x-key` scheme.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use Fails::*;
    let mut doc = Components::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    if let Some(components) = doc.components.as_mut() {
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-key",
                "Your API key.",
            ))),
        );
    }
    let mut ops: Vec<(String, HttpMethod, OperationBuilder, Vec<Fails>)> = Vec::new();
    for spec in &ENDPOINTS {
        let finetuned = spec.finetune_strength.is_some();
        let mut fails = vec![
            Unreadable,
            Payment,
            Auth,
            TooLarge,
            Invalid,
            TooMany,
            Unavailable,
        ];
        if finetuned {
            fails.push(NotFound("Finetune not found"));
        }
        let id = spec.name.replace(['-', '.'], "_");
        let summary = format!("Generate an image ({})", spec.name);
        let description = format!(
            "Queues a generation task on {} and returns its id and polling URL; the task is \
             stored before the answer is sent.",
            spec.model
        );
        ops.push((
            spec.endpoint.path(),
            HttpMethod::Post,
            authed(&id, &summary, &description)
                .request_body(Some(json_body(schema_of(spec.endpoint))))
                .response(
                    "200",
                    json_response("Successful Response", "SubmitResponse"),
                ),
            fails,
        ));
    }
    ops.extend([
        (
            "/v1/get_result".to_owned(),
            HttpMethod::Get,
            authed(
                "get_result",
                "Get a task's result",
                "Always 200 once authenticated; unknown, expired and other keys' ids read `Task not found`.",
            )
            .parameter(query("id", "Task id.", true))
            .response("200", json_response("Successful Response", "GetResultResponse")),
            vec![Auth, Invalid, Unavailable],
        ),
        (
            "/v1/images/{file}".to_owned(),
            HttpMethod::Get,
            op(
                "image",
                "Download a result",
                "The signed URL in `result.sample`: works without `x-key` until `exp`.",
            )
            .parameter(
                ParameterBuilder::new()
                    .name("file")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some("`<task id>.jpeg` or `<task id>.png`."))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            )
            .parameter(query_typed("exp", "Expiry, Unix seconds.", Type::Integer))
            .parameter(query("sig", "Signature.", true))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The image")
                    .content("image/jpeg", binary())
                    .content("image/png", binary())
                    .build(),
            )
            .response(
                "403",
                json_response("Invalid or expired signature", "ErrorDetail"),
            ),
            vec![NotFound("No such image (or it expired)"), Unavailable],
        ),
        (
            "/v1/my_finetunes".to_owned(),
            HttpMethod::Get,
            authed("my_finetunes", "List your fine-tunes", "Ids of the fine-tunes you own.")
                .response("200", json_response("Successful Response", "MyFinetunesResponse")),
            vec![Auth, Unavailable],
        ),
        (
            "/v1/finetune_details".to_owned(),
            HttpMethod::Get,
            authed("finetune_details", "Describe a fine-tune", "What is known about one fine-tune.")
                .parameter(query("finetune_id", "Fine-tune id.", true))
                .response(
                    "200",
                    json_response("Successful Response", "FinetuneDetailsResponse"),
                ),
            vec![Auth, NotFound("Finetune not found"), Invalid, Unavailable],
        ),
        (
            "/v1/delete_finetune".to_owned(),
            HttpMethod::Post,
            authed("delete_finetune", "Delete a fine-tune", "Deletes one of your fine-tunes.")
                .request_body(Some(json_body("DeleteFinetuneRequest")))
                .response(
                    "200",
                    json_response("Successful Response", "DeleteFinetuneResponse"),
                ),
            vec![
                Unreadable,
                Auth,
                NotFound("Finetune not found"),
                TooLarge,
                Invalid,
                Unavailable,
            ],
        ),
        (
            "/v1/finetunes".to_owned(),
            HttpMethod::Post,
            authed(
                "upload_finetune",
                "Upload a LoRA as a fine-tune (ours)",
                "The body is the LoRA `.safetensors` file. It is checked against the served model \
                 before it is stored; 503 while the model loads.",
            )
            .parameter(query_with(
                "finetune_id",
                "Name: 1 to 128 of A-Z a-z 0-9 . _ -",
                true,
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[A-Za-z0-9._-]{1,128}$")),
            ))
            .parameter(query("trigger_word", "Word that triggers the concept.", false))
            .parameter(query("comment", "A note.", false))
            .parameter(query_with(
                "shared",
                "`true` lets other tenants use it as `<owner>/<id>`.",
                false,
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["true", "false", "1", "0"])),
            ))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/octet-stream", binary())
                    .required(Some(Required::True))
                    .build(),
            ))
            .response(
                "200",
                json_response("Successful Response", "FinetuneDetailsResponse"),
            ),
            vec![
                Unreadable,
                Auth,
                Conflict("A fine-tune of that name exists"),
                TooLarge,
                InvalidOrUnusable,
                Unavailable,
            ],
        ),
        (
            "/v1/cancel".to_owned(),
            HttpMethod::Post,
            authed(
                "cancel",
                "Cancel a task (ours)",
                "A queued task never runs: it ends `Error` at once. A running one stops between \
                 two denoising steps, within about a second, and ends `Error`. `details` says it \
                 was cancelled, and its webhook fires.",
            )
            .request_body(Some(json_body("CancelRequest")))
            .response("200", json_response("Successful Response", "CancelResponse")),
            vec![
                Unreadable,
                Auth,
                NotFound("Task not found (unknown, expired, or another key's)"),
                Conflict("The task is already final"),
                TooLarge,
                Invalid,
                Unavailable,
            ],
        ),
        (
            "/v1/credits".to_owned(),
            HttpMethod::Get,
            authed(
                "credits",
                "Your credits",
                "The balance of your key's tenant; null when none is configured (unlimited).",
            )
            .response("200", json_response("Successful Response", "CreditsResponse")),
            vec![Auth, Unavailable],
        ),
        (
            "/healthz".to_owned(),
            HttpMethod::Get,
            op("healthz", "Liveness", "200 while the process answers.")
                .response("200", json_response("Alive", "HealthStatus")),
            vec![],
        ),
        (
            "/readyz".to_owned(),
            HttpMethod::Get,
            op("readyz", "Readiness", "200 once the model is loaded and tasks run.")
                .response("200", json_response("Ready", "HealthStatus"))
                .response("503", json_response("Loading, or loading failed", "HealthStatus")),
            vec![],
        ),
        (
            "/metrics".to_owned(),
            HttpMethod::Get,
            op("metrics", "Prometheus metrics", "Text exposition; names start with `fluxd_`.")
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("Prometheus text format 0.0.4")
                        .content(
                            "text/plain",
                            ContentBuilder::new()
                                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                                .build(),
                        )
                        .build(),
                ),
            vec![],
        ),
        (
            "/openapi.json".to_owned(),
            HttpMethod::Get,
            op("openapi", "This document", "The OpenAPI document of this server.").response(
                "200",
                ResponseBuilder::new()
                    .description("OpenAPI 3.1")
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                            .build(),
                    )
                    .build(),
            ),
            vec![],
        ),
    ]);
    for (path, method, builder, fails) in ops {
        let operation: Operation = with_request_id(with_errors(builder, &fails)).build();
        doc.paths
            .paths
            .insert(path, PathItem::new(method, with_response_ids(operation)));
    }
    doc
}

/// [`openapi()`] as pretty-printed JSON with a trailing newline: the form checked in and diffed.
pub fn openapi_json() -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(&openapi())?;
    text.push('\n');
    Ok(text)
}

/// The component schema of an endpoint's request body.
fn schema_of(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::FluxProFinetuned => "FinetunedRequest",
        Endpoint::FluxDev => "FluxDevRequest",
        Endpoint::FluxPro => "FluxProRequest",
        Endpoint::FluxPro11 => "FluxPro11Request",
        Endpoint::FluxPro11Ultra => "UltraRequest",
        Endpoint::FluxPro11UltraFinetuned => "UltraFinetunedRequest",
    }
}

fn op(id: &str, summary: &str, description: &str) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .description(Some(description))
}

/// An operation that needs the `x-key` header.
fn authed(id: &str, summary: &str, description: &str) -> OperationBuilder {
    op(id, summary, description).security(SecurityRequirement::new(
        SECURITY_SCHEME,
        Vec::<String>::new(),
    ))
}

fn with_errors(mut builder: OperationBuilder, fails: &[Fails]) -> OperationBuilder {
    for fail in fails {
        builder = match *fail {
            Fails::Unreadable => builder.response(
                "400",
                json_response(
                    "The body could not be read (not UTF-8, or nested too deep)",
                    "ErrorDetail",
                ),
            ),
            Fails::Payment => builder.response(
                "402",
                json_response(
                    "Insufficient credits: the balance cannot pay this task (nothing was queued)",
                    "ErrorDetail",
                ),
            ),
            Fails::Auth => builder.response(
                "403",
                json_response("Missing or invalid API key", "ErrorDetail"),
            ),
            Fails::NotFound(what) => builder.response("404", json_response(what, "ErrorDetail")),
            Fails::Conflict(what) => builder.response("409", json_response(what, "ErrorDetail")),
            Fails::TooLarge => builder.response(
                "413",
                json_response("Request body too large", "ErrorDetail"),
            ),
            Fails::Invalid => {
                builder.response("422", json_response("Validation Error", "ValidationErrors"))
            }
            Fails::InvalidOrUnusable => builder.response(
                "422",
                ResponseBuilder::new()
                    .description("Validation Error, or a file that is no usable LoRA")
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(
                                OneOfBuilder::new()
                                    .item(Ref::from_schema_name("ValidationErrors"))
                                    .item(Ref::from_schema_name("ErrorDetail")),
                            ))
                            .build(),
                    )
                    .build(),
            ),
            Fails::TooMany => builder.response(
                "429",
                ResponseBuilder::new()
                    .description("Too many unfinished tasks for this key; retry after the delay")
                    .header(
                        "Retry-After",
                        HeaderBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                            .description(Some("Seconds to wait."))
                            .build(),
                    )
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorDetail")))
                            .build(),
                    )
                    .build(),
            ),
            Fails::Unavailable => builder.response(
                "503",
                json_response(
                    "Temporarily unavailable (a busy store, or the model is loading); retry",
                    "ErrorDetail",
                ),
            ),
        };
    }
    builder
}

/// Every operation takes an optional `x-request-id` (echoed back; generated when absent).
fn with_request_id(builder: OperationBuilder) -> OperationBuilder {
    builder.parameter(
        ParameterBuilder::new()
            .name(REQUEST_ID_HEADER)
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Your id for this request, echoed in the response (1 to 200 visible ASCII \
                 characters; otherwise a UUID is generated). Also in the server's logs.",
            ))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
    )
}

/// Every response carries `x-request-id`.
fn with_response_ids(mut operation: Operation) -> Operation {
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response.headers.insert(
                REQUEST_ID_HEADER.to_owned(),
                RefOr::T(
                    HeaderBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .description(Some("The request's id: the one sent, or a generated UUID."))
                        .build(),
                ),
            );
        }
    }
    operation
}

fn json_body(schema: &str) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .required(Some(Required::True))
        .build()
}

fn json_response(description: &str, schema: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build()
}

fn binary() -> utoipa::openapi::Content {
    let schema: Schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
        .into();
    ContentBuilder::new().schema(Some(schema)).build()
}

fn query(name: &str, description: &str, required: bool) -> utoipa::openapi::path::Parameter {
    query_with(
        name,
        description,
        required,
        ObjectBuilder::new().schema_type(Type::String),
    )
}

fn query_typed(name: &str, description: &str, kind: Type) -> utoipa::openapi::path::Parameter {
    query_with(
        name,
        description,
        true,
        ObjectBuilder::new().schema_type(kind),
    )
}

fn query_with(
    name: &str,
    description: &str,
    required: bool,
    schema: ObjectBuilder,
) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

#[cfg(test)]
mod tests;
