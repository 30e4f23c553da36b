//! What the SQL backends share: reading typed values out of rows ([`rows`]), building the
//! trait's records from them ([`records`]), and classifying driver errors ([`map_error`]).
//!
//! Both schemas use the same column names and value types (TEXT ids and JSON, BIGINT
//! milliseconds and counts, DOUBLE PRECISION, BOOLEAN), so a row of either database reads back
//! through the same code.

pub(crate) mod records;
pub(crate) mod rows;

use std::sync::Arc;

use sqlx::error::{DatabaseError, ErrorKind};

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
        err @ (sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed) => StoreError::Unavailable(Arc::new(err)),
        other => StoreError::Database(Arc::new(other)),
    }
}
