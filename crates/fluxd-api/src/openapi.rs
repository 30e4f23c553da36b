//! The OpenAPI document of the contract, generated from the wire types.
//!
//! Schemas come from the types' `ToSchema` derives; operations are declared here with utoipa's
//! builders, so this crate holds no handler code. The server serves this document and CI diffs it
//! against the checked-in copy.

use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, Required, ResponseBuilder, Type};
use utoipa::OpenApi;

use crate::error::{ErrorDetail, LocItem, ValidationError, ValidationErrors};
use crate::request::{DeleteFinetuneRequest, FinetunedRequest, OutputFormat};
use crate::response::{
    DeleteFinetuneResponse, FinetuneDetailsResponse, GetResultResponse, MyFinetunesResponse,
    ReadyResult, SubmitResponse, TaskResult, TaskStatus, WebhookPayload,
};

/// Name of the API-key security scheme (the `x-key` header).
pub const SECURITY_SCHEME: &str = "x-key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fluxd",
        description = "FLUX.1 fine-tune inference with the Black Forest Labs fine-tune API's wire contract."
    ),
    components(schemas(
        FinetunedRequest,
        OutputFormat,
        DeleteFinetuneRequest,
        SubmitResponse,
        GetResultResponse,
        TaskStatus,
        TaskResult,
        ReadyResult,
        WebhookPayload,
        MyFinetunesResponse,
        FinetuneDetailsResponse,
        DeleteFinetuneResponse,
        ValidationErrors,
        ValidationError,
        LocItem,
        ErrorDetail,
    ))
)]
struct Components;

/// The whole document: every `/v1` endpoint of the contract, its schemas and the `x-key` scheme.
pub fn openapi() -> utoipa::openapi::OpenApi {
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
    let ops = [
        (
            "/v1/flux-pro-finetuned",
            HttpMethod::Post,
            op(
                "flux_pro_finetuned",
                "Generate an image with a fine-tune",
                "Queues a generation task and returns its id and polling URL.",
            )
            .request_body(Some(json_body("FinetunedRequest")))
            .response(
                "200",
                json_response("Successful Response", "SubmitResponse"),
            ),
        ),
        (
            "/v1/get_result",
            HttpMethod::Get,
            op(
                "get_result",
                "Get a task's result",
                "Always 200; unknown, expired and other keys' ids read `Task not found`.",
            )
            .parameter(query("id", "Task id."))
            .response(
                "200",
                json_response("Successful Response", "GetResultResponse"),
            ),
        ),
        (
            "/v1/my_finetunes",
            HttpMethod::Get,
            op(
                "my_finetunes",
                "List your fine-tunes",
                "Ids of the fine-tunes you can use.",
            )
            .response(
                "200",
                json_response("Successful Response", "MyFinetunesResponse"),
            ),
        ),
        (
            "/v1/finetune_details",
            HttpMethod::Get,
            op(
                "finetune_details",
                "Describe a fine-tune",
                "What is known about one fine-tune.",
            )
            .parameter(query("finetune_id", "Fine-tune id."))
            .response(
                "200",
                json_response("Successful Response", "FinetuneDetailsResponse"),
            )
            .response("404", json_response("Finetune not found", "ErrorDetail")),
        ),
        (
            "/v1/delete_finetune",
            HttpMethod::Post,
            op(
                "delete_finetune",
                "Delete a fine-tune",
                "Deletes one of your fine-tunes.",
            )
            .request_body(Some(json_body("DeleteFinetuneRequest")))
            .response(
                "200",
                json_response("Successful Response", "DeleteFinetuneResponse"),
            )
            .response("404", json_response("Finetune not found", "ErrorDetail")),
        ),
    ];
    for (path, method, builder) in ops {
        let operation: Operation = with_common_errors(builder).build();
        doc.paths
            .paths
            .insert(path.to_owned(), PathItem::new(method, operation));
    }
    doc
}

/// [`openapi()`] as pretty-printed JSON with a trailing newline: the form checked in and diffed.
pub fn openapi_json() -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(&openapi())?;
    text.push('\n');
    Ok(text)
}

fn op(id: &str, summary: &str, description: &str) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .description(Some(description))
        .security(SecurityRequirement::new(
            SECURITY_SCHEME,
            Vec::<String>::new(),
        ))
}

/// Answers every authenticated `/v1` endpoint can give.
fn with_common_errors(builder: OperationBuilder) -> OperationBuilder {
    builder
        .response(
            "403",
            json_response("Missing or invalid API key", "ErrorDetail"),
        )
        .response("422", json_response("Validation Error", "ValidationErrors"))
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

fn query(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn doc() -> Value {
        serde_json::to_value(openapi()).unwrap()
    }

    #[test]
    fn request_schema_matches_the_reference_page() {
        let doc = doc();
        let req = &doc["components"]["schemas"]["FinetunedRequest"];
        assert_eq!(req["required"], json!(["finetune_id"]));
        let p = &req["properties"];
        assert_eq!(p["finetune_strength"]["default"], json!(1.1));
        assert_eq!(p["finetune_strength"]["minimum"].as_f64(), Some(0.0));
        assert_eq!(p["finetune_strength"]["maximum"].as_f64(), Some(2.0));
        assert_eq!(p["steps"]["default"], json!(40));
        assert_eq!(p["steps"]["minimum"], json!(1));
        assert_eq!(p["steps"]["maximum"], json!(50));
        assert_eq!(p["guidance"]["minimum"].as_f64(), Some(1.5));
        assert_eq!(p["guidance"]["maximum"].as_f64(), Some(5.0));
        assert_eq!(p["width"]["multipleOf"], json!(32));
        assert_eq!(p["height"]["default"], json!(768));
        assert_eq!(p["height"]["maximum"], json!(1440));
        assert_eq!(p["safety_tolerance"]["maximum"], json!(6));
        assert_eq!(p["webhook_url"]["maxLength"], json!(2083));
        assert_eq!(p["webhook_url"]["minLength"], json!(1));
        assert_eq!(p["webhook_url"]["format"], json!("uri"));
        assert_eq!(p["prompt"]["default"], json!(""));
        let formats = &doc["components"]["schemas"]["OutputFormat"]["enum"];
        assert_eq!(formats, &json!(["jpeg", "png"]));
        let statuses = &doc["components"]["schemas"]["TaskStatus"]["enum"];
        assert_eq!(
            statuses,
            &json!([
                "Task not found",
                "Pending",
                "Request Moderated",
                "Content Moderated",
                "Ready",
                "Error"
            ])
        );
    }

    #[test]
    fn endpoints_and_security() {
        let doc = doc();
        assert_eq!(
            doc["components"]["securitySchemes"]["x-key"],
            json!({"type":"apiKey","in":"header","name":"x-key","description":"Your API key."})
        );
        for (path, method) in [
            ("/v1/flux-pro-finetuned", "post"),
            ("/v1/get_result", "get"),
            ("/v1/my_finetunes", "get"),
            ("/v1/finetune_details", "get"),
            ("/v1/delete_finetune", "post"),
        ] {
            let op = &doc["paths"][path][method];
            assert_eq!(op["security"], json!([{"x-key": []}]), "{path}");
            assert!(op["responses"]["200"].is_object(), "{path}");
            assert!(op["responses"]["422"].is_object(), "{path}");
        }
        assert_eq!(
            doc["paths"]["/v1/get_result"]["get"]["parameters"][0]["name"],
            json!("id")
        );
    }

    #[test]
    fn document_is_stable() {
        let a = serde_json::to_string_pretty(&openapi()).unwrap();
        let b = serde_json::to_string_pretty(&openapi()).unwrap();
        assert_eq!(a, b);
        // Every `$ref` points at a schema the document defines.
        let doc: Value = serde_json::from_str(&a).unwrap();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling {r}"
            );
        }
    }

    /// The checked-in `openapi.json` is what the code generates. After an intended change,
    /// regenerate it with `FLUXD_UPDATE_OPENAPI=1 cargo test -p fluxd-api openapi` and review the
    /// diff.
    #[test]
    fn checked_in_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let generated = openapi_json().unwrap();
        if std::env::var_os("FLUXD_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{path} is stale: run FLUXD_UPDATE_OPENAPI=1 cargo test -p fluxd-api openapi"
        );
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.extend(v.as_str().map(str::to_owned));
                    } else {
                        collect_refs(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
