//! Fine-tunes on the worker: the LoRA file of a task's fine-tune, fetched from the blob store to
//! a local file once, parsed and checked against the model, and kept parsed by content digest.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use fluxd_engine::lora::LoraFile;
use fluxd_engine::transformer::FluxConfig;

use super::failure::TaskFailure;
use crate::lease::LeaseClock;
use crate::state::AppState;

/// Parsed LoRA files kept in memory; each holds the adapter's tensors.
const LORA_CACHE: usize = 16;

/// Parsed LoRA files by content digest, so neither adapters nor the base model are re-read per
/// request. Oldest-first eviction.
#[derive(Default)]
pub(super) struct LoraCache {
    files: HashMap<String, Arc<LoraFile>>,
    order: VecDeque<String>,
}

impl LoraCache {
    fn get(&self, sha: &str) -> Option<Arc<LoraFile>> {
        self.files.get(sha).cloned()
    }

    fn insert(&mut self, sha: String, lora: Arc<LoraFile>) {
        if self.files.insert(sha.clone(), lora).is_none() {
            self.order.push_back(sha);
        }
        while self.order.len() > LORA_CACHE {
            if let Some(old) = self.order.pop_front() {
                self.files.remove(&old);
            }
        }
    }
}

/// The parsed LoRA of the tenant's fine-tune `id` (read once, then from the cache by digest).
pub(super) async fn finetune_lora(
    state: &AppState,
    cfg: &FluxConfig,
    cache: &mut LoraCache,
    clock: &LeaseClock,
    tenant: &str,
    id: &str,
) -> Result<Arc<LoraFile>, TaskFailure> {
    // Through the lease clock: a database outage is retried while the lease lasts.
    let record = clock
        .write(|| state.store().get_finetune(tenant, id))
        .await
        .map_err(TaskFailure::lost)?
        .ok_or_else(|| {
            TaskFailure::user(format!(
                "Finetune {id:?} no longer exists (deleted after the task was submitted)"
            ))
        })?;
    if let Some(lora) = cache.get(&record.sha256) {
        return Ok(lora);
    }
    let lora = Arc::new(load_lora(state, cfg, &record.blob_key, &record.sha256).await?);
    cache.insert(record.sha256.clone(), lora.clone());
    Ok(lora)
}

/// Copies the LoRA blob to a local file (the engine reads files by path) and parses it.
async fn load_lora(
    state: &AppState,
    cfg: &FluxConfig,
    blob_key: &str,
    sha256: &str,
) -> Result<LoraFile, TaskFailure> {
    let path: PathBuf = state.lora_cache_dir().join(format!("{sha256}.safetensors"));
    if !path.is_file() {
        let staging = state
            .lora_cache_dir()
            .join(format!(".{}.partial", uuid::Uuid::new_v4()));
        // Streamed to disk: the blob is not held in memory whole.
        if let Err(err) = state.blobs().get_to_file(blob_key, &staging).await {
            let _ = tokio::fs::remove_file(&staging).await;
            return Err(TaskFailure::store(err));
        }
        tokio::fs::rename(&staging, &path).await.map_err(|e| {
            tracing::error!(%e, "could not cache a LoRA file");
            TaskFailure::retryable("Could not read the fine-tune's file")
        })?;
    }
    crate::import::validate_lora(path, cfg).await.map_err(|e| {
        TaskFailure::user(format!("The fine-tune cannot be used with this model: {e}"))
    })
}
