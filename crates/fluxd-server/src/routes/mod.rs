//! The router: one module per resource, plus health and the OpenAPI document.
//!
//! Every generation endpoint of the endpoint table ([`fluxd_api::ENDPOINTS`]) is routed to the
//! one submit handler; endpoints this server has no model for (fill, canny, depth, Kontext...)
//! are not routed at all, so they answer the fallback's `404 {"detail":"Not Found"}` exactly like
//! any unknown path. A known path with the wrong method answers FastAPI's
//! `405 {"detail":"Method Not Allowed"}`. Every response carries `x-request-id`.

pub mod control;
pub mod finetunes;
pub mod submit;
pub mod tasks;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_control;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use fluxd_api::HealthStatus;

use crate::auth::Caller;
use crate::engine::EngineState;
use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::state::AppState;

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    let json_limit = DefaultBodyLimit::max(state.config().max_request_bytes);
    let mut routes = Router::new();
    for endpoint in fluxd_api::Endpoint::all() {
        let handler = move |state: State<AppState>,
                            caller: Caller,
                            request_id: Option<Extension<RequestId>>,
                            headers: HeaderMap,
                            body: Result<Bytes, BytesRejection>| {
            submit::submit(endpoint, state, caller, request_id, headers, body)
        };
        routes = routes.route(&endpoint.path(), post(handler).layer(json_limit));
    }
    let routes = routes
        .route("/v1/get_result", get(tasks::get_result))
        .route("/v1/images/{file}", get(tasks::image))
        .route("/v1/cancel", post(control::cancel).layer(json_limit))
        .route("/v1/credits", get(control::credits))
        .route("/v1/my_finetunes", get(finetunes::my_finetunes))
        .route("/v1/finetune_details", get(finetunes::finetune_details))
        .route(
            "/v1/delete_finetune",
            post(finetunes::delete_finetune).layer(json_limit),
        )
        // The upload streams to disk and enforces its own (much larger) limit.
        .route(
            "/v1/finetunes",
            post(finetunes::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/openapi.json", get(openapi))
        .merge(ops_routes());
    finish(routes, state)
}

/// What a worker serves on `--listen`: health and metrics only (it takes no API requests).
pub fn ops_app(state: AppState) -> Router {
    finish(ops_routes(), state)
}

/// `routes` counted in the metrics, with the contract's 404 for anything else.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    // Install the recorder before the first request is counted.
    let _ = crate::metrics::handle();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn(crate::request_id::tag))
        .with_state(state)
}

/// `/healthz`, `/readyz` and `/metrics`, served by every node.
fn ops_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
}

/// Prometheus metrics (`fluxd_` prefix).
async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(state.store()),
    )
        .into_response()
}

fn health(status: &str, detail: Option<&str>) -> Json<HealthStatus> {
    Json(HealthStatus {
        status: status.to_owned(),
        detail: detail.map(str::to_owned),
    })
}

/// Alive: the process answers.
async fn healthz() -> Json<HealthStatus> {
    health("ok", None)
}

/// Ready: the model is loaded and tasks will run (on an API-only node: at once, it has no model).
async fn readyz(State(state): State<AppState>) -> Response {
    match state.engine_state() {
        EngineState::Ready(_) => health("ready", None).into_response(),
        EngineState::Loading => {
            (StatusCode::SERVICE_UNAVAILABLE, health("loading", None)).into_response()
        }
        EngineState::Failed(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            health(
                "failed",
                Some("the model failed to load; see the server log"),
            ),
        )
            .into_response(),
    }
}

async fn openapi() -> Result<Response, ApiError> {
    let doc = fluxd_api::openapi_json()
        .map_err(|e| ApiError::Internal(format!("OpenAPI document: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], doc).into_response())
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
