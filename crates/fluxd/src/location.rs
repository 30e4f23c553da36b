//! Where a deployment keeps its state: one set of flags, flattened into every command that
//! touches the store. On one machine `--data-dir` holds everything (SQLite, files, the URL
//! signing key); several nodes share a database (`--database`) and a blob store (`--blobs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fluxd_server::{DataDir, UrlSigner};
use fluxd_store::{open_store, BlobStore, DatabaseUrl, Store, DEFAULT_MAX_ATTEMPTS};

/// The store's location.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreLocation {
    /// Data directory: the SQLite store and the URL signing key (unless --database puts them
    /// elsewhere), scratch space, the tiny model, and the blobs unless --blobs puts them
    /// elsewhere.
    #[arg(long, env = "FLUXD_DATA_DIR", default_value = "./fluxd-data")]
    pub data_dir: PathBuf,
    /// Database instead of <data-dir>/fluxd.sqlite: `sqlite://PATH`, or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (libpq parameters such as `sslmode=require`
    /// work) to share one database between several API nodes and workers; they then share the
    /// URL signing key through it as well. Prefer the environment variable (it may hold a
    /// password, which is never shown).
    #[arg(long, env = "FLUXD_DATABASE_URL", hide_env_values = true)]
    pub database: Option<DatabaseUrl>,
    /// Where images and LoRA files are kept: file://DIR, or s3://bucket/prefix with credentials,
    /// region and endpoint from the standard AWS_* variables (AWS_ENDPOINT_URL for
    /// MinIO/SeaweedFS/R2-style servers, AWS_ALLOW_HTTP=true for plain HTTP). Default:
    /// <data-dir>/blobs.
    #[arg(long, env = "FLUXD_BLOBS_URL")]
    pub blobs: Option<String>,
    /// PostgreSQL only: how long one database call may take, waiting for a connection
    /// included, before it fails (a request then gets a 503, a worker tries again within its
    /// lease). Bounds every call on a database that stopped answering (e.g. 5s).
    #[arg(long, env = "FLUXD_DATABASE_TIMEOUT", default_value = "5s",
          value_parser = crate::serve::parse_duration)]
    pub database_timeout: Duration,
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

    /// The database to use: `--database`, else the data directory's SQLite file.
    pub fn database(&self, data: &DataDir) -> DatabaseUrl {
        self.database
            .clone()
            .unwrap_or_else(|| DatabaseUrl::Sqlite(data.sqlite_path()))
    }

    /// Whether the database is the data directory's own SQLite file (named or not).
    pub fn own_database(&self, data: &DataDir) -> bool {
        match &self.database {
            None => true,
            Some(DatabaseUrl::Sqlite(path)) => {
                let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
                let own = data.sqlite_path();
                path == &own || (canonical(path).is_some() && canonical(path) == canonical(&own))
            }
            Some(DatabaseUrl::Postgres(_)) => false,
        }
    }

    /// Opens (and migrates) the store; tasks submitted through it may run `max_attempts` times.
    pub async fn store(&self, data: &DataDir, max_attempts: u32) -> Result<Arc<dyn Store>> {
        let url = self.database(data);
        open_store(&url, max_attempts, self.database_timeout)
            .await
            .with_context(|| format!("opening the store at {url}"))
    }

    /// The data directory and the store, for commands that do not submit tasks.
    pub async fn open_store(&self) -> Result<(DataDir, Arc<dyn Store>)> {
        let data = self.open()?;
        let store = self.store(&data, DEFAULT_MAX_ATTEMPTS).await?;
        Ok((data, store))
    }

    /// The delivery URL signer every node of the deployment shares (see
    /// [`fluxd_server::signing::signer_for`]): the data directory's key file for its own
    /// database, as it always was, else the key kept in the database.
    pub async fn signer(&self, data: &DataDir, store: &dyn Store) -> Result<UrlSigner> {
        let own = self.own_database(data).then_some(data);
        fluxd_server::signing::signer_for(store, own)
            .await
            .context("loading the URL signing key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(data_dir: &std::path::Path, database: Option<&str>) -> StoreLocation {
        StoreLocation {
            data_dir: data_dir.to_path_buf(),
            database: database.map(|url| url.parse().expect("a database URL")),
            blobs: None,
            database_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_data_dirs_own_database_keeps_its_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open(dir.path()).expect("data dir");
        std::fs::write(data.sqlite_path(), b"").expect("touch");
        let own = format!("sqlite://{}", data.sqlite_path().display());
        assert!(location(dir.path(), None).own_database(&data));
        assert!(location(dir.path(), Some(&own)).own_database(&data));
        let elsewhere = format!("sqlite://{}", dir.path().join("other.db").display());
        assert!(!location(dir.path(), Some(&elsewhere)).own_database(&data));
        assert!(!location(dir.path(), Some("postgres://u:p@db/fluxd")).own_database(&data));
    }
}
