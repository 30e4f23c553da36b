//! The crate's one error type, with a yes/no answer to "can retrying help?".

use std::sync::Arc;

use uuid::Uuid;

/// The underlying cause of a storage failure, shared so that one failed commit can be reported to
/// every caller whose write was in that commit.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the store.
///
/// Backend errors are classified here, at the boundary, so that callers never see a driver type:
/// [`StoreError::is_retryable`] is the question a worker or a handler asks.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another writer held the database longer than the busy timeout.
    #[error("the database is busy")]
    Busy(#[source] Source),
    /// The database or blob storage could not be reached, read or written (I/O, disk full,
    /// connection lost, pool exhausted).
    #[error("the storage is unavailable")]
    Unavailable(#[source] Source),
    /// The blob storage refused the request: bad credentials or no permission. Retrying
    /// does not help until the operator fixes the configuration.
    #[error("the blob storage refused access")]
    Denied(#[source] Source),
    /// A statement failed for a reason retrying will not fix (a bug or a schema mismatch).
    #[error("database error")]
    Database(#[source] Source),
    /// The row already exists (a task id, a fine-tune name).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The thing named does not exist (a blob, a webhook delivery).
    #[error("not found: {0}")]
    NotFound(String),
    /// The worker no longer holds the task: its lease ran out, another worker claimed it, or it
    /// already finished. The worker must drop the task without writing anything else.
    #[error("task {task_id} is no longer leased to this worker")]
    LeaseLost {
        /// The task the worker thought it held.
        task_id: Uuid,
    },
    /// An argument breaks a rule of the store (an empty tenant, a progress outside 0..=1).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A stored value could not be read back (not a UUID, not JSON, out of range).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database was written by a newer fluxd whose schema this build does not know.
    #[error("the database schema is version {found}; this build knows versions up to {supported}")]
    SchemaTooNew {
        /// Version recorded in the database.
        found: i64,
        /// Newest version this build can apply.
        supported: i64,
    },
    /// The store was closed; no more writes are accepted.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Whether the same call may succeed if made again later (busy database, lost connection,
    /// full disk): the worker re-queues its task, the handler answers 503 instead of 500.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Busy(_) | Self::Unavailable(_))
    }

    /// Whether the failure leaves the current transaction in an unknown state, so a batch of
    /// writes sharing it must be abandoned. Conditions the store detects itself (a lost lease, a
    /// duplicate id, a bad argument) only undo the one write that met them.
    pub(crate) fn aborts_transaction(&self) -> bool {
        matches!(
            self,
            Self::Busy(_)
                | Self::Unavailable(_)
                | Self::Database(_)
                | Self::SchemaTooNew { .. }
                | Self::Closed
        )
    }

    /// Wraps an I/O failure (creating directories, reading blobs) as retryable.
    pub(crate) fn io(err: std::io::Error) -> Self {
        Self::Unavailable(Arc::new(err))
    }
}

impl From<object_store::Error> for StoreError {
    fn from(err: object_store::Error) -> Self {
        match err {
            object_store::Error::NotFound { path, .. } => Self::NotFound(format!("blob {path}")),
            object_store::Error::AlreadyExists { path, .. } => {
                Self::Conflict(format!("blob {path}"))
            }
            object_store::Error::InvalidPath { source } => {
                Self::Invalid(format!("blob key: {source}"))
            }
            err @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }) => Self::Denied(Arc::new(err)),
            err @ (object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }) => Self::Invalid(err.to_string()),
            // Transport failures (refused or timed-out connections) and 5xx answers that outlived
            // the client's retries: the store is unreachable for now.
            other => Self::Unavailable(Arc::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_only_for_transient_failures() {
        let io: Source = Arc::new(std::io::Error::other("disk"));
        assert!(StoreError::Busy(io.clone()).is_retryable());
        assert!(StoreError::Unavailable(io.clone()).is_retryable());
        assert!(!StoreError::Database(io).is_retryable());
        assert!(!StoreError::Conflict("task".into()).is_retryable());
        assert!(!StoreError::LeaseLost {
            task_id: Uuid::nil()
        }
        .is_retryable());
        assert!(!StoreError::Closed.is_retryable());
    }

    #[test]
    fn blob_not_found_is_not_retryable() {
        let err = StoreError::from(object_store::Error::NotFound {
            path: "a/b".into(),
            source: Box::new(std::io::Error::other("gone")),
        });
        assert!(matches!(err, StoreError::NotFound(_)));
        assert!(!err.is_retryable());
    }

    #[test]
    fn blob_permission_errors_are_not_retryable() {
        let err = StoreError::from(object_store::Error::PermissionDenied {
            path: "a/b".into(),
            source: Box::new(std::io::Error::other("403")),
        });
        assert!(matches!(err, StoreError::Denied(_)), "{err:?}");
        assert!(!err.is_retryable());
    }
}
