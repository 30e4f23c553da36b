//! How a task's run can fail, and what the worker does about each kind: a user error ends the
//! task `Error`, a retryable one re-queues it, a shutdown hands it back, a lost lease drops it.

use fluxd_engine::EngineError;
use fluxd_store::StoreError;

use crate::lease::Lost;

/// A failure of one task.
#[derive(Debug)]
pub(super) struct TaskFailure {
    /// What the user reads in `details`.
    pub(super) details: String,
    /// Whether running again may help.
    pub(super) retryable: bool,
    /// Stopped by a shutdown: the task goes back to the queue, not to `Error`.
    pub(super) cancelled: bool,
    /// The worker no longer holds the task (another may): it writes nothing more about it.
    pub(super) let_go: bool,
}

impl TaskFailure {
    /// A failure the user can act on (bad input, a fine-tune gone).
    pub(super) fn user(details: impl Into<String>) -> Self {
        Self {
            details: details.into(),
            retryable: false,
            cancelled: false,
            let_go: false,
        }
    }

    /// The lease is gone, or the store failed for good while the worker tried to keep it.
    pub(super) fn lost(lost: Lost) -> Self {
        match lost {
            Lost::Taken(err) => {
                tracing::warn!(%err, "the task is no longer this worker's; dropping it");
                Self {
                    let_go: true,
                    ..Self::user("The task's lease was lost")
                }
            }
            Lost::RanOut(err) => {
                tracing::warn!(%err, "the store stayed unreachable until the lease ran out; \
                    dropping the task (it runs again once its lease is seen expired)");
                Self {
                    let_go: true,
                    ..Self::user("The task's lease ran out")
                }
            }
            Lost::Failed(err) => Self::store(err),
        }
    }

    /// A failure that running again may fix.
    pub(super) fn retryable(details: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::user(details)
        }
    }

    /// A store failure, retryable as the store says.
    pub(super) fn store(err: StoreError) -> Self {
        tracing::warn!(%err, "store failure while running a task");
        Self {
            retryable: err.is_retryable(),
            ..Self::user("Storage failure while running the task")
        }
    }
}

/// Logs a final write that did not land. After a retry, a lost lease may also mean that an
/// earlier try did land and only its answer was lost with the connection.
pub(super) fn not_recorded(what: &str, lost: &Lost) {
    tracing::warn!(
        ?lost,
        "could not record {what} (if the store was unreachable, an earlier \
        try may have been recorded; otherwise the task runs again after its lease)"
    );
}

/// The failure an engine error means for the task.
pub(super) fn engine_failure(err: EngineError) -> TaskFailure {
    match err {
        EngineError::InvalidInput(msg) => TaskFailure::user(format!("Invalid request: {msg}")),
        EngineError::Cancelled => TaskFailure {
            cancelled: true,
            ..TaskFailure::user("Stopped by a shutdown")
        },
        other => {
            tracing::error!(err = %other, "generation failed");
            TaskFailure::user("Generation failed inside the engine; the operator's logs say why")
        }
    }
}
