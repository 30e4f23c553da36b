//! Where a deployment keeps its state: one set of flags, flattened into every command that
//! touches the store.

use std::path::PathBuf;

use anyhow::{Context, Result};
use fluxd_server::DataDir;
use fluxd_store::BlobStore;

/// The store's location.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreLocation {
    /// Data directory: the SQLite store, the URL signing key, scratch space, the tiny model, and
    /// the blobs unless --blobs puts them elsewhere.
    #[arg(long, env = "FLUXD_DATA_DIR", default_value = "./fluxd-data")]
    pub data_dir: PathBuf,
    /// Where images and LoRA files are kept: file://DIR, or s3://bucket/prefix with credentials,
    /// region and endpoint from the standard AWS_* variables (AWS_ENDPOINT_URL for
    /// MinIO/SeaweedFS/R2-style servers, AWS_ALLOW_HTTP=true for plain HTTP). Default:
    /// <data-dir>/blobs.
    #[arg(long, env = "FLUXD_BLOBS_URL")]
    pub blobs: Option<String>,
}

impl StoreLocation {
    /// Opens (creating) the data directory.
    pub fn open(&self) -> Result<DataDir> {
        DataDir::open(&self.data_dir)
            .with_context(|| format!("opening the data directory {}", self.data_dir.display()))
    }

    /// The blob store: `--blobs`, else the data directory's `blobs/`.
    pub fn blobs(&self, data: &DataDir) -> Result<BlobStore> {
        match &self.blobs {
            Some(url) => {
                BlobStore::from_url(url).with_context(|| format!("opening the blob store {url}"))
            }
            None => data.blobs().context("opening the blob store"),
        }
    }
}
