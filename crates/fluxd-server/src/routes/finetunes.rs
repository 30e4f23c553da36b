//! Fine-tune management: `GET /v1/my_finetunes`, `GET /v1/finetune_details`,
//! `POST /v1/delete_finetune`, and the LoRA upload `POST /v1/finetunes?finetune_id=NAME` (ours).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use fluxd_api::{
    parse_delete_finetune_request, DeleteFinetuneResponse, FinetuneDetailsResponse,
    MyFinetunesResponse,
};
use fluxd_store::FinetuneRecord;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::auth::Caller;
use crate::engine::EngineState;
use crate::error::ApiError;
use crate::import::{check_finetune_id, import_lora, ImportOptions, StagedFile};
use crate::routes::tasks::{json_body, query_param};
use crate::state::AppState;

/// `GET /v1/my_finetunes`.
pub async fn my_finetunes(
    State(state): State<AppState>,
    Caller(key): Caller,
) -> Result<Json<MyFinetunesResponse>, ApiError> {
    let finetunes = state.store().list_finetunes(&key.tenant).await?;
    Ok(Json(MyFinetunesResponse { finetunes }))
}

/// `GET /v1/finetune_details?finetune_id=`.
pub async fn finetune_details(
    State(state): State<AppState>,
    Caller(key): Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<FinetuneDetailsResponse>, ApiError> {
    let id = query_param(query, "finetune_id")?;
    let record = state
        .store()
        .get_finetune(&key.tenant, &id)
        .await?
        .ok_or(ApiError::FinetuneNotFound)?;
    Ok(Json(FinetuneDetailsResponse {
        finetune_details: details(&record),
    }))
}

/// What `finetune_details` shows of a record (never the blob key: storage layout is ours).
pub fn details(r: &FinetuneRecord) -> Value {
    json!({
        "finetune_id": r.id,
        "owner": r.tenant,
        "shared": r.shared,
        "format": r.format,
        "finetune_type": "lora",
        "lora_rank": r.rank,
        "lora_alpha": r.alpha,
        "base_model_hidden_size": r.base_hidden,
        "trigger_word": r.trigger_word,
        "finetune_comment": r.comment,
        "created_at": rfc3339(r.created_at),
        "size_bytes": r.size_bytes,
        "sha256": r.sha256,
        "source": "import",
    })
}

/// `POST /v1/delete_finetune` `{"finetune_id": ...}`.
pub async fn delete_finetune(
    State(state): State<AppState>,
    Caller(key): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DeleteFinetuneResponse>, ApiError> {
    let body = json_body(&headers, body, state.config().max_request_bytes)?;
    let request = parse_delete_finetune_request(&body)?;
    let deleted = state
        .store()
        .delete_finetune(&key.tenant, &request.finetune_id)
        .await?
        .ok_or(ApiError::FinetuneNotFound)?;
    // Submits through this process stop finding it at once (others within their cache TTL).
    state.finetune_cache().clear();
    // The record is gone, so nothing can reach the file any more; a failed delete only leaks
    // disk space, which is worth a warning, not a failed request.
    if let Err(err) = state.blobs().delete(&deleted.blob_key).await {
        tracing::warn!(%err, blob = deleted.blob_key, "could not delete a fine-tune's file");
    }
    Ok(Json(DeleteFinetuneResponse {
        status: "success".into(),
        message: format!("Finetune {} deleted", deleted.id),
        deleted_finetune_id: deleted.id,
        timestamp: rfc3339(SystemTime::now()),
    }))
}

/// `POST /v1/finetunes?finetune_id=NAME[&trigger_word=..][&comment=..][&shared=true]` with the
/// raw safetensors file as the body.
pub async fn upload(
    State(state): State<AppState>,
    Caller(key): Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Body,
) -> Result<Json<FinetuneDetailsResponse>, ApiError> {
    let pairs = query.map(|Query(p)| p).unwrap_or_default();
    let param = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let id = query_param(Ok(Query(pairs.clone())), "finetune_id")?;
    check_finetune_id(&id)?;
    let shared = match param("shared").as_deref() {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "shared must be true or false, got {other:?}"
            )))
        }
    };
    let cfg = match state.engine_state() {
        EngineState::Ready(cfg) => cfg,
        EngineState::Loading | EngineState::Failed(_) => return Err(ApiError::NotReady),
    };
    let staged = receive(&state, body).await?;
    let options = ImportOptions {
        id,
        trigger_word: param("trigger_word"),
        comment: param("comment"),
        shared,
    };
    let record = import_lora(
        state.store(),
        state.blobs(),
        &cfg,
        &key.tenant,
        options,
        &staged.file,
    )
    .await?;
    state.finetune_cache().clear();
    tracing::info!(
        tenant = record.tenant,
        finetune = record.id,
        "fine-tune uploaded"
    );
    Ok(Json(FinetuneDetailsResponse {
        finetune_details: details(&record),
    }))
}

/// An upload in the scratch directory, deleted when dropped: after the import, on any error, and
/// when the client disconnects mid-upload (the handler's future is dropped then).
struct Upload {
    file: StagedFile,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.file.path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%err, path = %self.file.path.display(), "could not remove an upload");
            }
        }
    }
}

/// Streams the body to a file in the scratch directory, hashing it on the way and stopping at
/// the upload limit, so a 2 GB LoRA never sits in memory.
async fn receive(state: &AppState, body: Body) -> Result<Upload, ApiError> {
    let limit = state.config().max_upload_bytes;
    let path = state
        .tmp_dir()
        .join(format!("upload-{}.safetensors", uuid::Uuid::new_v4()));
    let mut upload = Upload {
        file: StagedFile {
            path: path.clone(),
            size: 0,
            sha256: String::new(),
        },
    };
    let io = |e: std::io::Error| ApiError::Unavailable(format!("writing an upload: {e}"));
    let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    let outcome = async {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|_| ApiError::Request(fluxd_api::RequestError::Unreadable))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(())
    }
    .await;
    outcome?;
    upload.file.size = size;
    upload.file.sha256 = hex::encode(hasher.finalize());
    Ok(upload)
}

/// RFC 3339 UTC time to the millisecond, e.g. `2025-01-31T12:00:00.000Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// "chrono-Compatible Low-Level Date Algorithms", for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day) 12:34:56.789
        let t = UNIX_EPOCH + Duration::from_millis(951_827_696_789);
        assert_eq!(rfc3339(t), "2000-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_764_547_200);
        assert_eq!(rfc3339(t), "2025-12-01T00:00:00.000Z");
    }
}
