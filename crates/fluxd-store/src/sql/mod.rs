//! What the SQL backends share: reading typed values out of rows ([`rows`]), building the
//! trait's records from them ([`records`]), and classifying driver errors ([`map_error`]).
//!
//! Both schemas use the same column names and value types (TEXT ids and JSON, BIGINT
//! milliseconds and counts, DOUBLE PRECISION, BOOLEAN), so a row of either database reads back
//! through the same code.

pub(crate) mod credits;
pub(crate) mod records;
pub(crate) mod rows;

use std::sync::Arc;

use sqlx::error::{DatabaseError, ErrorKind};

use uuid::Uuid;

use crate::StoreError;

/// What a backend says about one of its own database errors, beyond the constraint violations
/// every SQL database reports alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transient {
    /// Lock contention: another writer, a deadlock, a serialization conflict.
    Busy,
    /// The database cannot serve right now: connection lost, shutting down, out of disk.
    Unavailable,
    /// Neither: a bug or a schema mismatch; retrying will not help.
    No,
}

/// Classifies a driver error for callers: constraint violations say what the caller did wrong,
/// `classify` picks out the backend's transient failures, a closed pool is a closed store, lost
/// connections and exhausted pools are retryable, anything else is a database bug.
pub(crate) fn map_error(
    err: sqlx::Error,
    classify: fn(&dyn DatabaseError) -> Transient,
) -> StoreError {
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
            let transient = classify(db.as_ref());
            let source = Arc::new(sqlx::Error::Database(db));
            match transient {
                Transient::Busy => StoreError::Busy(source),
                Transient::Unavailable => StoreError::Unavailable(source),
                Transient::No => StoreError::Database(source),
            }
        }
        sqlx::Error::PoolClosed => StoreError::Closed,
        // A connection cut mid-handshake (a proxy or load balancer in front of a database that
        // is down accepts and then closes) shows as a protocol error, not an I/O one.
        err @ (sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed) => StoreError::Unavailable(Arc::new(err)),
        other => StoreError::Database(Arc::new(other)),
    }
}

/// An update of webhook delivery `id` that changed `rows_affected` rows: none means there is no
/// such delivery.
pub(crate) fn delivery_found(rows_affected: u64, id: Uuid) -> Result<(), StoreError> {
    if rows_affected == 0 {
        Err(StoreError::NotFound(format!("webhook delivery {id}")))
    } else {
        Ok(())
    }
}

/// The table recording which schema versions a database has, made if missing.
pub(crate) const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
    version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)";

/// The newest version a database has (NULL for a new one).
pub(crate) const CURRENT_VERSION: &str = "SELECT MAX(version) FROM schema_migrations";

/// Records version `$1` as applied at `$2` (epoch milliseconds).
pub(crate) const RECORD_VERSION: &str =
    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)";

/// A backend's schema versions, in order: (version, SQL).
pub(crate) type Migrations = &'static [(i64, &'static str)];

/// The newest version of `all` (0 for none).
pub(crate) fn newest(all: Migrations) -> i64 {
    all.last().map_or(0, |(version, _)| *version)
}

/// The migrations of `all` that a database at version `current` (None: a new database) still
/// needs, in order; a database written by a newer build is refused.
pub(crate) fn pending_migrations(
    all: Migrations,
    current: Option<i64>,
) -> Result<Migrations, StoreError> {
    let current = current.unwrap_or(0);
    let supported = newest(all);
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    Ok(&all[all.partition_point(|(version, _)| *version <= current)..])
}

/// What a cancel does to the task it read (`status` and `leased`: whether a worker's lease on
/// it is still running), the same on every backend.
pub(crate) enum CancelVerdict {
    /// Nothing to change: answer this.
    Answer(crate::CancelOutcome),
    /// A worker runs it: mark it for the worker.
    Mark,
    /// Queued, or its worker's lease ran out: finish it now.
    Finish,
}

/// The [`CancelVerdict`] for a task read as `found` (None: not the tenant's).
pub(crate) fn cancel_verdict(
    id: Uuid,
    found: Option<&impl rows::ReadRow>,
) -> Result<CancelVerdict, StoreError> {
    let Some(row) = found else {
        return Ok(CancelVerdict::Answer(crate::CancelOutcome::NotFound));
    };
    let text = row.text("status")?;
    let status = crate::TaskStatus::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("task {id}: status {text:?}")))?;
    Ok(if status != crate::TaskStatus::Pending {
        CancelVerdict::Answer(crate::CancelOutcome::Final(status))
    } else if row.boolean("leased")? {
        CancelVerdict::Mark
    } else {
        CancelVerdict::Finish
    })
}
