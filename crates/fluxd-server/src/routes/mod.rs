//! The router: one module per resource, plus health and the OpenAPI document.

pub mod finetunes;
pub mod tasks;
#[cfg(test)]
mod tests;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::engine::EngineState;
use crate::error::ApiError;
use crate::state::AppState;

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    let json_limit = DefaultBodyLimit::max(state.config().max_request_bytes);
    let routes = Router::new()
        .route(
            "/v1/flux-pro-finetuned",
            post(tasks::submit).layer(json_limit),
        )
        .route("/v1/get_result", get(tasks::get_result))
        .route("/v1/images/{file}", get(tasks::image))
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
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
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

/// Alive: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: the model is loaded and tasks will run (on an API-only node: at once, it has no model).
async fn readyz(State(state): State<AppState>) -> Response {
    match state.engine_state() {
        EngineState::Ready(_) => Json(json!({"status": "ready"})).into_response(),
        EngineState::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
        EngineState::Failed(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "detail": "the model failed to load; see the server log"})),
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
