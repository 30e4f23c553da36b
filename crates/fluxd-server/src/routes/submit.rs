//! `POST /v1/<endpoint>`: one handler for every generation endpoint of the endpoint table. The
//! body is validated with the endpoint's own schema, resolved through the table into what the
//! engine will run, checked against what this server can do, and durably queued before the
//! answer is sent.

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use bytes::Bytes;
use fluxd_api::{megapixels, Endpoint, StoredTask, SubmitResponse, TaskStatus};
use fluxd_store::{credits_from_milli, InsertOutcome, NewTask};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::routes::tasks::json_body;
use crate::state::AppState;

/// Submits to `endpoint`.
pub async fn submit(
    endpoint: Endpoint,
    State(state): State<AppState>,
    Caller(key): Caller,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubmitResponse>, ApiError> {
    let body = json_body(&headers, body, state.config().max_request_bytes)?;
    let request = endpoint.parse(&body)?;
    let generation = request.resolve(state.config().ultra_megapixels);
    // What the URL alone shows is refused now; names resolving to private addresses are refused
    // at delivery (recorded on the delivery), since DNS answers can change in between.
    let webhook_url = request.webhook_url().map(str::to_owned);
    if let Some(url) = &webhook_url {
        let allow_private = state.config().webhooks.allow_private;
        if let Err(refused) = crate::webhook::guard::check_url(url, allow_private) {
            return Err(ApiError::body_field(
                "webhook_url",
                Value::String(url.clone()),
                &refused.to_string(),
            ));
        }
    }
    // Never silently ignore what the caller asked for (contract): these need models or services
    // this server may not have.
    let input_mp = match &generation.image_prompt {
        None => 0.0,
        Some(image) => check_image_prompt(&state, image).await?,
    };
    if generation.prompt_upsampling && state.config().upsampler.is_none() {
        return Err(ApiError::body_field(
            "prompt_upsampling",
            Value::Bool(true),
            "this server has no prompt upsampler configured; send prompt_upsampling false",
        ));
    }
    if let Some(finetune) = &generation.finetune {
        find_finetune(&state, &key.tenant, &finetune.id).await?;
    }
    // Time-ordered (UUIDv7: 48 bits of milliseconds, 74 random bits): new ids land at the end of
    // the store's primary-key index, so a batch of submits dirties one page of it instead of one
    // page each, which is what the commit has to write. Clients see an ordinary UUID.
    let id = Uuid::now_v7();
    let internal = |e: serde_json::Error| ApiError::Internal(format!("serialising the task: {e}"));
    let stored = StoredTask {
        endpoint,
        request_id: request_id.map(|Extension(RequestId(id))| id),
        request: serde_json::to_value(&request).map_err(internal)?,
        generation,
    };
    let output_mp = megapixels(stored.generation.width, stored.generation.height);
    let cost = state
        .prices()
        .cost(state.store(), endpoint.name(), output_mp)
        .await?;
    let task = NewTask {
        id,
        tenant: key.tenant.clone(),
        key_id: key.key_id,
        finetune_id: stored.generation.finetune.as_ref().map(|f| f.id.clone()),
        webhook_url: webhook_url.clone(),
        webhook_secret: request.webhook_secret().map(str::to_owned),
        params: serde_json::to_value(&stored).map_err(internal)?,
        cost,
    };
    let limit = key.max_active_tasks.min(state.config().max_active_tasks);
    match state
        .store()
        .insert_task_if_under_limit(task, limit)
        .await?
    {
        InsertOutcome::Inserted => {}
        InsertOutcome::LimitReached { active } => {
            return Err(ApiError::TooManyActiveTasks { active, limit });
        }
        InsertOutcome::InsufficientCredits { balance } => {
            return Err(ApiError::InsufficientCredits {
                cost: credits_from_milli(cost.unwrap_or_default()),
                balance: credits_from_milli(balance),
            });
        }
    }
    state.wake().notify_one();
    tracing::info!(task_id = %id, tenant = key.tenant, endpoint = endpoint.name(), "task queued");
    Ok(Json(SubmitResponse {
        id: id.to_string(),
        // The reference's webhook answer is `{id, status, webhook_url}`; we send its fields
        // beside the polling ones (see `SubmitResponse`).
        status: webhook_url.is_some().then_some(TaskStatus::Pending),
        webhook_url,
        polling_url: format!("{}/v1/get_result?id={id}", state.config().public_url),
        cost: cost.map(credits_from_milli),
        input_mp,
        output_mp,
    }))
}

/// Checks the image prompt in full (format, pixel limit, decoding) and returns its megapixels;
/// a 422 naming `image_prompt` when it is unusable or the server has no Redux model.
async fn check_image_prompt(state: &AppState, image: &str) -> Result<f64, ApiError> {
    let refuse =
        |why: &str| ApiError::body_field("image_prompt", Value::String(truncate(image, 64)), why);
    let Some(max_pixels) = state.config().image_prompt_max_pixels else {
        return Err(refuse(
            "this server has no Redux model configured, so image_prompt is not supported",
        ));
    };
    // Decoding is bounded by the pixel limit but still real work: off the async threads.
    let text = image.to_owned();
    let checked =
        tokio::task::spawn_blocking(move || crate::image_prompt::decode(&text, max_pixels))
            .await
            .map_err(|e| ApiError::Internal(format!("checking image_prompt: {e}")))?;
    match checked {
        Ok(decoded) => Ok(megapixels(decoded.width(), decoded.height())),
        Err(why) => Err(refuse(&why)),
    }
}

/// The fine-tune the caller names (their own, or `owner/name` shared with them), through the
/// fine-tune cache; 404 `Finetune not found` otherwise.
async fn find_finetune(state: &AppState, tenant: &str, id: &str) -> Result<(), ApiError> {
    if state.finetune_cache().get(tenant, id).is_some() {
        return Ok(());
    }
    let generation = state.finetune_cache().generation();
    let found = state
        .store()
        .get_finetune(tenant, id)
        .await?
        .ok_or(ApiError::FinetuneNotFound)?;
    tracing::debug!(
        owner = found.tenant,
        finetune = found.id,
        "fine-tune resolved"
    );
    state.finetune_cache().insert(generation, tenant, id, found);
    Ok(())
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}
