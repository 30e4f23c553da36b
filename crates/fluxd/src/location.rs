//! Where a command finds the shared state: the data directory (`--data-dir`, the one-machine
//! deployment: SQLite, files, the URL signing key, all in it) and, for several nodes, the
//! database elsewhere (`--database`). Every command that touches the store flattens
//! [`StoreLocation`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use fluxd_server::{DataDir, UrlSigner};
use fluxd_store::{open_store, DatabaseUrl, Store, DEFAULT_MAX_ATTEMPTS};

/// The store's whereabouts.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreLocation {
    /// Data directory: the SQLite store (unless --database says otherwise), blobs, the URL
    /// signing key (likewise), the tiny model, scratch space.
    #[arg(long, env = "FLUXD_DATA_DIR", default_value = "./fluxd-data")]
    pub data_dir: PathBuf,
    /// Database instead of <data-dir>/fluxd.sqlite: `sqlite://PATH`, or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (libpq parameters such as `sslmode=require`
    /// work) to share one database between several API nodes and workers; they then share the
    /// URL signing key through it as well. Prefer the environment variable (it may hold a
    /// password, which is never shown).
    #[arg(long, env = "FLUXD_DATABASE_URL", hide_env_values = true)]
    pub database: Option<DatabaseUrl>,
}

impl StoreLocation {
    /// Opens (creating) the data directory.
    pub fn data_dir(&self) -> Result<DataDir> {
        DataDir::open(&self.data_dir)
            .with_context(|| format!("opening the data directory {}", self.data_dir.display()))
    }

    /// The database to use: `--database`, else the data directory's SQLite file.
    pub fn database(&self, data: &DataDir) -> DatabaseUrl {
        self.database
            .clone()
            .unwrap_or_else(|| DatabaseUrl::Sqlite(data.sqlite_path()))
    }

    /// Whether the database is the data directory's own SQLite file (named or not), whose
    /// delivery URLs are signed with the key file beside it, as they always were.
    fn own_database(&self, data: &DataDir) -> bool {
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
        open_store(&url, max_attempts)
            .await
            .with_context(|| format!("opening the store at {url}"))
    }

    /// The data directory and the store, for commands that do not submit tasks.
    pub async fn open(&self) -> Result<(DataDir, Arc<dyn Store>)> {
        let data = self.data_dir()?;
        let store = self.store(&data, DEFAULT_MAX_ATTEMPTS).await?;
        Ok((data, store))
    }

    /// The delivery URL signer: the data directory's key file for its own database, else the
    /// key shared through the database by every node using it.
    pub async fn signer(&self, data: &DataDir, store: &dyn Store) -> Result<UrlSigner> {
        if self.own_database(data) {
            data.signer().context("loading the URL signing key")
        } else {
            UrlSigner::shared(store)
                .await
                .context("reading the URL signing key from the database")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(data_dir: &std::path::Path, database: Option<&str>) -> StoreLocation {
        StoreLocation {
            data_dir: data_dir.to_path_buf(),
            database: database.map(|url| url.parse().expect("a database URL")),
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
