//! The embedded SQLite store, fluxd's default deployment: one file, WAL, fsync on every commit.
//!
//! Writes go through one connection owned by a group-commit writer ([`writer`]); reads use a small
//! pool of other connections, which WAL lets run beside the writer. Queries use `$N` parameters and
//! portable SQL (`RETURNING`, `ON CONFLICT DO NOTHING`) so a PostgreSQL backend can share their
//! text.

mod finetunes;
mod keys;
mod migrate;
mod rows;
mod tasks;
mod trait_impl;
mod webhooks;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::ConnectOptions;

use crate::{StoreError, DEFAULT_MAX_ATTEMPTS};
use writer::Writer;

/// Knobs of [`SqliteStore::open_with`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a statement waits for another process's write lock before failing as
    /// [`StoreError::Busy`].
    pub busy_timeout: Duration,
    /// Connections serving reads (authentication, `get_result`) beside the one writer.
    pub read_connections: u32,
    /// Runs a task may start before it fails for good (stored on each task at submit).
    pub max_attempts: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// The [`Store`](crate::Store) on an SQLite file.
pub struct SqliteStore {
    writer: Writer,
    reads: SqlitePool,
    max_attempts: u32,
}

impl SqliteStore {
    /// Opens (creating the file and its directories if missing) and migrates the database at
    /// `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens the database at `path` with `options`.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::io)?;
        }
        if options.max_attempts == 0 {
            return Err(StoreError::Invalid(
                "max_attempts must be at least 1".into(),
            ));
        }
        // FULL: a commit is on disk when it returns, which is what "the task is durably stored
        // before the response" needs; WAL keeps that to one fsync of the log per commit.
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout);
        let mut write_conn = connect.connect().await.map_err(map_sqlx)?;
        migrate::migrate(&mut write_conn).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(0)
            .connect_with(connect.create_if_missing(false))
            .await
            .map_err(map_sqlx)?;
        Ok(Self {
            writer: Writer::spawn(write_conn),
            reads,
            max_attempts: options.max_attempts,
        })
    }
}

/// Classifies a driver error for callers: busy and I/O failures are retryable, constraint
/// violations say what the caller did wrong, anything else is a database bug.
pub(crate) fn map_sqlx(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::Database(db) => {
            match db.kind() {
                ErrorKind::UniqueViolation => return StoreError::Conflict(db.message().to_owned()),
                ErrorKind::ForeignKeyViolation => {
                    return StoreError::Invalid(format!(
                        "refers to a missing row: {}",
                        db.message()
                    ))
                }
                _ => {}
            }
            // SQLite's extended result code; the low byte is the primary code.
            let primary = db
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                .map(|code| code & 0xff);
            let source = Arc::new(sqlx::Error::Database(db));
            match primary {
                // SQLITE_BUSY, SQLITE_LOCKED
                Some(5 | 6) => StoreError::Busy(source),
                // SQLITE_NOMEM, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL
                Some(7 | 10 | 13 | 14 | 15) => StoreError::Unavailable(source),
                _ => StoreError::Database(source),
            }
        }
        sqlx::Error::PoolClosed => StoreError::Closed,
        err @ (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed) => {
            StoreError::Unavailable(Arc::new(err))
        }
        other => StoreError::Database(Arc::new(other)),
    }
}
