//! Our own endpoints beside the reference's: `POST /v1/cancel` (cancel a task) and the
//! balance, `GET /v1/credits` (whose reference answer is the balance alone too).

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use fluxd_api::{
    parse_cancel_request, CancelResponse, CreditsResponse, TaskStatus, CANCELLED_DETAILS,
};
use fluxd_store::{credits_from_milli, CancelOutcome, TaskState};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::tasks::json_body;
use crate::state::AppState;

/// `POST /v1/cancel` `{"id": ...}`: a queued task ends `Error` now (its webhook queued in the
/// same transaction); a running one is marked, and its worker, which asks between steps, stops
/// it within about a second and ends it `Error`.
pub async fn cancel(
    State(state): State<AppState>,
    Caller(key): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CancelResponse>, ApiError> {
    let body = json_body(&headers, body, state.config().max_request_bytes)?;
    let request = parse_cancel_request(&body)?;
    // Not a UUID: no task of ours has that id.
    let id = Uuid::parse_str(&request.id).map_err(|_| ApiError::TaskNotFound)?;
    // The webhook target never changes after submit, so reading it first is race-free; the
    // store queues the webhook only if this cancel is what finishes the task.
    let task = state
        .store()
        .get_task(&key.tenant, id)
        .await?
        .ok_or(ApiError::TaskNotFound)?;
    let final_state = TaskState::Error {
        details: CANCELLED_DETAILS.to_owned(),
    };
    let webhook = crate::webhook::final_webhook(
        &state,
        id,
        (task.webhook_url, task.webhook_secret),
        final_state,
    )
    .await;
    let outcome = state
        .store()
        .cancel_task(&key.tenant, id, CANCELLED_DETAILS.to_owned(), webhook)
        .await?;
    state.task_cache().invalidate(id);
    let status = match outcome {
        CancelOutcome::Cancelled => {
            tracing::info!(task_id = %id, "queued task cancelled");
            crate::metrics::task_finished("Error", None);
            state.webhook_wake().notify_one();
            TaskStatus::Error
        }
        CancelOutcome::Requested => {
            tracing::info!(task_id = %id, "running task marked for cancelling");
            TaskStatus::Pending
        }
        CancelOutcome::Final(status) => return Err(ApiError::TaskFinal(status.as_str())),
        // Expired (or deleted) since it was read.
        CancelOutcome::NotFound => return Err(ApiError::TaskNotFound),
    };
    Ok(Json(CancelResponse {
        id: request.id,
        status,
    }))
}

/// `GET /v1/credits`: the caller's tenant's balance, null when it has none (unlimited).
pub async fn credits(
    State(state): State<AppState>,
    Caller(key): Caller,
) -> Result<Json<CreditsResponse>, ApiError> {
    let balance = state.store().credits(&key.tenant).await?;
    Ok(Json(CreditsResponse {
        credits: balance.map(credits_from_milli),
    }))
}
