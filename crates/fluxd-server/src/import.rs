//! Importing a LoRA file as a fine-tune: one code path for the upload endpoint and
//! `fluxd finetunes import`. The file is parsed and checked against the served model's
//! transformer before anything is stored, so a fine-tune that exists can always be used.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fluxd_engine::lora::LoraFile;
use fluxd_engine::transformer::FluxConfig;
use fluxd_store::{BlobStore, FinetuneRecord, Store, StoreError};
use sha2::{Digest, Sha256};

use crate::error::ServerError;

/// Longest fine-tune name.
const MAX_NAME_LEN: usize = 128;

/// What the caller says about the fine-tune besides its file.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Name, unique within the tenant (the `finetune_id` clients send).
    pub id: String,
    /// Word that triggers the fine-tuned concept.
    pub trigger_word: Option<String>,
    /// Owner's note.
    pub comment: Option<String>,
    /// Whether other tenants may use it as `<tenant>/<id>`.
    pub shared: bool,
}

/// Names are ids in URLs and JSON: a conservative alphabet, and never `/`, which separates owner
/// and name in shared ids.
pub fn check_finetune_id(id: &str) -> Result<(), ServerError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ServerError::InvalidFinetuneId(id.to_owned()))
    }
}

/// Size and lowercase hex SHA-256 of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String), ServerError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| ServerError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ServerError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Parses the LoRA at `path` against `cfg` (off the async runtime: it reads the whole file).
pub async fn validate_lora(path: PathBuf, cfg: &FluxConfig) -> Result<LoraFile, ServerError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || LoraFile::load_for(&path, &cfg))
        .await
        .map_err(|e| ServerError::io("LoRA validation", std::io::Error::other(e)))?
        .map_err(|e| ServerError::InvalidLora(e.to_string()))
}

/// A LoRA file on local disk, with its size and digest (the upload computes them while receiving
/// it, the CLI with [`hash_file`]).
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// Where the file is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its lowercase hex SHA-256.
    pub sha256: String,
}

impl StagedFile {
    /// Describes the file at `path`, reading it once to hash it.
    pub fn hash(path: &Path) -> Result<Self, ServerError> {
        let (size, sha256) = hash_file(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            size,
            sha256,
        })
    }
}

/// Validates the LoRA `file`, stores it in the blob store and records it for `tenant`.
pub async fn import_lora(
    store: &dyn Store,
    blobs: &BlobStore,
    cfg: &FluxConfig,
    tenant: &str,
    options: ImportOptions,
    file: &StagedFile,
) -> Result<FinetuneRecord, ServerError> {
    let path = file.path.as_path();
    check_finetune_id(&options.id)?;
    if store
        .get_finetune(tenant, &options.id)
        .await?
        .is_some_and(|r| r.tenant == tenant)
    {
        return Err(ServerError::FinetuneExists(options.id));
    }
    let lora = validate_lora(path.to_path_buf(), cfg).await?;
    // Streamed in chunks: a rank-128 FLUX LoRA is over a gigabyte.
    let blob_key = format!("loras/{}.safetensors", uuid::Uuid::new_v4());
    blobs.put_file(&blob_key, path).await?;
    let record = FinetuneRecord {
        tenant: tenant.to_owned(),
        id: options.id.clone(),
        format: serde_json::to_value(lora.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", lora.format)),
        rank: u32::try_from(lora.rank).unwrap_or(u32::MAX),
        alpha: lora.alphas.first().map(|&a| f64::from(a)),
        base_hidden: u32::try_from(cfg.hidden()).ok(),
        trigger_word: options.trigger_word,
        comment: options.comment,
        blob_key: blob_key.clone(),
        size_bytes: file.size,
        sha256: file.sha256.clone(),
        created_at: SystemTime::now(),
        shared: options.shared,
    };
    match store.insert_finetune(record.clone()).await {
        Ok(()) => Ok(record),
        Err(err) => {
            // Nothing refers to the blob: do not leave it behind.
            if let Err(del) = blobs.delete(&blob_key).await {
                tracing::warn!(%del, blob_key, "could not delete an orphaned LoRA blob");
            }
            match err {
                StoreError::Conflict(_) => Err(ServerError::FinetuneExists(options.id)),
                other => Err(other.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finetune_ids() {
        for ok in ["my-finetune", "a", "v1.2_final", &"x".repeat(128)] {
            assert!(check_finetune_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(check_finetune_id(bad).is_err(), "{bad}");
        }
    }
}
