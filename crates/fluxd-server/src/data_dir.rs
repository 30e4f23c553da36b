//! The data directory every command shares: the SQLite store, blobs, the URL signing key, the
//! tiny model made on first start, scratch space.
//!
//! ```text
//! <data-dir>/fluxd.sqlite         tasks, keys, fine-tunes, webhook outbox (unless --database)
//! <data-dir>/blobs/               images (samples/…) and LoRA files (loras/…)
//! <data-dir>/url-signing.key      HMAC key of the delivery URLs (hex, 0600; with another
//!                                 database, the key is shared through it instead)
//! <data-dir>/tiny-model/          the model served when no --model is given (its demo LoRA:
//!                                 tiny-model/lora/demo.safetensors)
//! <data-dir>/cache/loras/         LoRA files copied out of the blob store for the engine
//! <data-dir>/tmp/                 uploads in progress
//! ```

use std::path::{Path, PathBuf};

use fluxd_engine::tiny_model::{
    write_tiny_demo_lora, write_tiny_model, TinyPreset, TINY_DEMO_LORA,
};
use fluxd_store::{BlobStore, SqliteOptions, SqliteStore};

use crate::error::ServerError;
use crate::signing::UrlSigner;

/// Seed of the tiny model, fixed so every fresh data directory serves the same weights.
const TINY_SEED: u64 = 0;

/// A data directory (created on first use).
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`, which must exist; nothing is created in it (a copy reads
    /// its source without writing to it).
    pub fn existing(root: impl Into<PathBuf>) -> Result<Self, ServerError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(ServerError::io(
                format!("opening the data directory {}", root.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        Ok(Self { root })
    }

    /// Opens (creating if needed) the data directory at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ServerError> {
        let root = root.into();
        for dir in [
            root.clone(),
            root.join("tmp"),
            root.join("cache").join("loras"),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ServerError::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(Self { root })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the directory's own SQLite database is.
    pub fn sqlite_path(&self) -> PathBuf {
        self.root.join("fluxd.sqlite")
    }

    /// The SQLite store.
    pub async fn store(&self) -> Result<SqliteStore, ServerError> {
        self.store_with(SqliteOptions::default()).await
    }

    /// The store, opened with `options`.
    pub async fn store_with(&self, options: SqliteOptions) -> Result<SqliteStore, ServerError> {
        Ok(SqliteStore::open_with(self.sqlite_path(), options).await?)
    }

    /// The blob store (local files).
    pub fn blobs(&self) -> Result<BlobStore, ServerError> {
        Ok(BlobStore::local(self.root.join("blobs"))?)
    }

    /// The delivery URL signer, its key created on first use.
    pub fn signer(&self) -> Result<UrlSigner, ServerError> {
        UrlSigner::load_or_create(&self.signing_key_path())
    }

    /// Where the delivery URLs' key is kept (for the directory's own database).
    pub fn signing_key_path(&self) -> PathBuf {
        self.root.join("url-signing.key")
    }

    /// Scratch space on the same file system as the rest (uploads are renamed, not copied).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where LoRA files are materialised for the engine, which reads files by path.
    pub fn lora_cache(&self) -> PathBuf {
        self.root.join("cache").join("loras")
    }

    /// The tiny model folder, written (once) if it does not exist yet. Returns its path and
    /// whether it was created now.
    pub fn ensure_tiny_model(&self) -> Result<(PathBuf, bool), ServerError> {
        let dir = self.root.join("tiny-model");
        if dir.join("model_index.json").is_file() {
            // Tiny models made before they came with a demo LoRA get one.
            if !dir.join(TINY_DEMO_LORA).is_file() {
                write_tiny_demo_lora(&dir, TINY_SEED, TinyPreset::Tiny)?;
            }
            return Ok((dir, false));
        }
        // Written beside and renamed into place, so a crash never leaves half a model that a
        // later start would take for complete.
        let staging = self
            .tmp()
            .join(format!("tiny-model-{}", uuid::Uuid::new_v4()));
        write_tiny_model(&staging, TINY_SEED, TinyPreset::Tiny)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| ServerError::io(format!("removing {}", dir.display()), e))?;
        }
        std::fs::rename(&staging, &dir).map_err(|e| {
            ServerError::io(format!("moving the tiny model to {}", dir.display()), e)
        })?;
        Ok((dir, true))
    }
}
