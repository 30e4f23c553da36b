//! Live previews on the worker: each JPEG the engine sends is stored under the task's one
//! preview key (replacing the last) and recorded in the store, where `get_result` finds it on
//! any API node; once the task is over, the blob is deleted (retention deletes any left over).

use bytes::Bytes;
use fluxd_store::PreviewRecord;
use uuid::Uuid;

use crate::delivery;
use crate::engine::PreviewJpeg;
use crate::state::AppState;

/// Stores `preview` of task `task_id`. A preview is a hint: failures are logged, not fatal.
pub(super) async fn store(state: &AppState, task_id: Uuid, worker_id: &str, preview: PreviewJpeg) {
    let key = delivery::preview_key(task_id);
    let (Ok(step), Ok(steps)) = (u32::try_from(preview.step), u32::try_from(preview.steps)) else {
        return;
    };
    let bytes = Bytes::from(preview.bytes);
    if let Err(err) = state
        .blobs()
        .put(&key, bytes, delivery::content_type("jpeg"))
        .await
    {
        tracing::debug!(%err, "could not store a preview");
        return;
    }
    let record = PreviewRecord { key, step, steps };
    let recorded = state.store().set_preview(task_id, worker_id, record).await;
    // This process's get_result must not answer from before it.
    state.task_cache().invalidate(task_id);
    if let Err(err) = recorded {
        tracing::debug!(%err, "could not record a preview");
    }
}

/// Deletes the task's preview blob once its run is over (final, re-queued, or handed back): a
/// final task shows none, and a new run stores its own.
pub(super) async fn discard(state: &AppState, task_id: Uuid) {
    if let Err(err) = state.blobs().delete(&delivery::preview_key(task_id)).await {
        tracing::debug!(%err, "could not delete a preview");
    }
}
