//! Generation tasks: `GET /v1/get_result`, the signed image delivery URL
//! `GET /v1/images/{id}.{ext}`, and the body and query helpers every route shares (submits are
//! in [`super::submit`]).

use std::time::SystemTime;

use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use fluxd_api::{
    GetResultResponse, Preview, ReadyResult, RequestError, TaskResult, TaskStatus, ValidationError,
    ValidationErrors,
};
use fluxd_store::{ModerationKind, StoreError, TaskState};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::auth::Caller;
use crate::cache::CachedTask;
use crate::delivery;
use crate::error::ApiError;
use crate::state::AppState;

/// Reads a request body, turning the size limit into the contract's 413.
pub(crate) fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: limit as u64,
            }
        } else {
            ApiError::Request(RequestError::Unreadable)
        }
    })
}

/// Reads a JSON endpoint's body as the reference does: a non-empty body sent with a non-JSON
/// `Content-Type` (a form, plain text) is not decoded and fails validation as a non-object.
/// Without the header the body is decoded (more lenient than FastAPI 0.165, which refuses it;
/// no client is hurt by that).
pub(crate) fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let body = body_bytes(body, limit)?;
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let is_json = content_type
            .to_str()
            .is_ok_and(fluxd_api::is_json_content_type);
        if !is_json && !body.is_empty() {
            return Err(ApiError::Request(fluxd_api::not_json_error(&body)));
        }
    }
    Ok(body)
}

/// The last value of query parameter `name` (FastAPI: a repeated parameter's last value wins), or
/// FastAPI's 422 `missing` when absent.
pub(crate) fn query_param(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    name: &str,
) -> Result<String, ApiError> {
    query
        .ok()
        .and_then(|Query(pairs)| pairs.into_iter().rev().find(|(k, _)| k == name))
        .map(|(_, v)| v)
        .ok_or_else(|| ValidationErrors::from(ValidationError::missing_query(name)).into())
}

/// `GET /v1/get_result?id=`: always 200 once authenticated. Answers from the task cache when it
/// can (see [`crate::cache`] for how stale that may be).
pub async fn get_result(
    State(state): State<AppState>,
    Caller(key): Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<GetResultResponse>, ApiError> {
    let id = query_param(query, "id")?;
    let Ok(uuid) = Uuid::parse_str(&id) else {
        return Ok(Json(GetResultResponse::not_found(id)));
    };
    let now = SystemTime::now();
    let cache = state.task_cache();
    if let Some(task_state) = cache.get(&key.tenant, uuid, now) {
        return Ok(Json(result_body(&state, id, task_state, now).await?));
    }
    let generation = cache.generation();
    let Some(task) = state.store().get_task(&key.tenant, uuid).await? else {
        return Ok(Json(GetResultResponse::not_found(id)));
    };
    cache.insert(
        generation,
        uuid,
        CachedTask {
            tenant: task.tenant,
            state: task.state.clone(),
            finished_at: task.finished_at,
        },
    );
    Ok(Json(result_body(&state, id, task.state, now).await?))
}

/// The `get_result` body of a task, with a freshly signed sample URL when it is ready (made as
/// the server's [`Delivery`](crate::delivery::Delivery) says).
pub async fn result_body(
    state: &AppState,
    id: String,
    task_state: TaskState,
    now: SystemTime,
) -> Result<GetResultResponse, StoreError> {
    let delivery = state.config().delivery;
    let url = match &task_state {
        TaskState::Ready(ready) => Some(&ready.sample_key),
        TaskState::Pending {
            preview: Some(preview),
            ..
        } => Some(&preview.key),
        _ => None,
    };
    let url = match url {
        Some(key) => Some(delivery::sample_url(state, delivery, key, now).await?),
        None => None,
    };
    Ok(body_with_sample(id, task_state, url))
}

/// The `get_result` body of a task whose image (if it is ready), or preview (if it runs and has
/// one), downloads from `sample`.
pub fn body_with_sample(
    id: String,
    task_state: TaskState,
    sample: Option<String>,
) -> GetResultResponse {
    let mut body = GetResultResponse::not_found(id);
    match task_state {
        TaskState::Pending { progress, preview } => {
            body.status = TaskStatus::Pending;
            body.progress = progress;
            body.preview = preview.zip(sample.clone()).map(|(p, sample)| Preview {
                sample,
                step: p.step,
                steps: p.steps,
            });
        }
        TaskState::Ready(ready) => {
            body.status = TaskStatus::Ready;
            body.result = Some(TaskResult::Sample(ReadyResult {
                sample: sample.unwrap_or_default(),
                prompt: ready.prompt_used,
                seed: ready.seed_used,
                start_time: ready.start_time,
                end_time: ready.end_time,
                duration: ((ready.end_time - ready.start_time) * 1000.0).round() / 1000.0,
            }));
        }
        TaskState::Moderated { kind, reasons } => {
            body.status = match kind {
                ModerationKind::Request => TaskStatus::RequestModerated,
                ModerationKind::Content => TaskStatus::ContentModerated,
            };
            body.details = Some(json!({ "Moderation Reasons": reasons }));
        }
        TaskState::Error { details } => {
            body.status = TaskStatus::Error;
            body.details = Some(json!({ "error": details }));
        }
    }
    body
}

/// Query of the delivery URL.
#[derive(Debug, Deserialize)]
pub struct Signature {
    exp: Option<u64>,
    sig: Option<String>,
}

/// `GET /v1/images/{file}?exp=&sig=`: no key needed, the signature is the authorisation.
pub async fn image(
    State(state): State<AppState>,
    Path(file): Path<String>,
    query: Result<Query<Signature>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (stem, ext) = file.rsplit_once('.').ok_or(ApiError::NotFound)?;
    let content_type = delivery::content_type(ext).ok_or(ApiError::NotFound)?;
    // Only names the worker writes: a task id (or its preview's) and a known extension, nothing
    // that could walk the blob store.
    if !delivery::known_stem(stem) {
        return Err(ApiError::NotFound);
    }
    let Ok(Query(Signature {
        exp: Some(exp),
        sig: Some(sig),
    })) = query
    else {
        return Err(ApiError::BadSignature);
    };
    if !state.signer().verify(&file, exp, &sig, SystemTime::now()) {
        return Err(ApiError::BadSignature);
    }
    // Streamed as it arrives from the blob store (S3 or local), never held whole.
    let blob = match state.blobs().get_stream(&delivery::sample_key(&file)).await {
        Ok(blob) => blob,
        // Signed but gone: the result expired after the URL was issued.
        Err(StoreError::NotFound(_)) => return Err(ApiError::NotFound),
        Err(err) => return Err(err.into()),
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_LENGTH, HeaderValue::from(blob.size)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=600"),
            ),
        ],
        Body::from_stream(blob.chunks),
    )
        .into_response())
}
