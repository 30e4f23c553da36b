//! A worker's hold on its task across store outages: the lease is renewed by heartbeats, and a
//! renewal or a write that fails for a reason that may pass (the database unreachable, busy) is
//! tried again for as long as the lease surely lasts, instead of giving the task up at the first
//! failure. Only when the lease may have run out (another worker may hold the task by now) does
//! the worker let go, writing nothing more.

use std::future::Future;
use std::time::Duration;

use fluxd_store::StoreError;
use tokio::time::Instant;

/// Longest pause between two tries of a failed renewal or write.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the worker knows of its lease: until when it surely holds the task. Renewals are timed
/// from before the call was sent, so the estimate is early, never late, whatever the store's
/// clock says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseClock {
    lease: Duration,
    held_until: Instant,
}

/// Why the worker stopped holding its task.
#[derive(Debug)]
pub(crate) enum Lost {
    /// The store says another worker holds it, or it finished.
    Taken(StoreError),
    /// The lease may have run out while the store could not be reached.
    RanOut(StoreError),
    /// The store refused for a reason retrying will not fix.
    Failed(StoreError),
}

impl LeaseClock {
    /// A lease of `lease` taken by a claim sent at `claimed_at`.
    pub(crate) fn new(lease: Duration, claimed_at: Instant) -> Self {
        Self {
            lease,
            held_until: claimed_at + lease,
        }
    }

    /// The lease's length.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether the lease surely still lasts.
    pub(crate) fn held(&self) -> bool {
        Instant::now() < self.held_until
    }

    /// How long to wait before trying a failed call again: a second, or less when the lease is
    /// short.
    pub(crate) fn retry_delay(&self) -> Duration {
        RETRY_EVERY.min(self.lease / 8)
    }

    /// Renews the lease with `heartbeat` (one call): renewed, or still held though the call
    /// failed for a passing reason (the caller tries again after [`LeaseClock::retry_delay`]),
    /// or lost.
    pub(crate) async fn renew<F>(&mut self, heartbeat: F) -> Result<Renewal, Lost>
    where
        F: Future<Output = Result<(), StoreError>>,
    {
        let sent = Instant::now();
        match heartbeat.await {
            Ok(()) => {
                self.held_until = sent + self.lease;
                Ok(Renewal::Renewed)
            }
            Err(err) => self.judge(err).map(|()| Renewal::Retry),
        }
    }

    /// Makes `write` (a call the task's result depends on), trying again while it fails for a
    /// passing reason and the lease lasts.
    pub(crate) async fn write<T, F, Fut>(&self, mut write: F) -> Result<T, Lost>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        loop {
            match write().await {
                Ok(value) => return Ok(value),
                Err(err) => self.judge(err)?,
            }
            tokio::time::sleep(self.retry_delay()).await;
        }
    }

    /// Ok when a failed call may be tried again.
    fn judge(&self, err: StoreError) -> Result<(), Lost> {
        match err {
            err @ StoreError::LeaseLost { .. } => Err(Lost::Taken(err)),
            err if err.is_retryable() && self.held() => {
                tracing::warn!(%err, "the store failed; trying again while the lease lasts");
                Ok(())
            }
            err if err.is_retryable() => Err(Lost::RanOut(err)),
            err => Err(Lost::Failed(err)),
        }
    }
}

/// How a renewal went, when the task is still held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// The lease runs `lease` from the renewal.
    Renewed,
    /// The renewal failed for a passing reason; the lease still lasts.
    Retry,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn unreachable() -> StoreError {
        StoreError::Unavailable(Arc::new(std::io::Error::other("connection refused")))
    }

    /// A clock whose lease ran out a moment ago.
    fn run_out(lease: Duration) -> LeaseClock {
        LeaseClock {
            lease,
            held_until: Instant::now() - Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn renewals_are_retried_while_the_lease_lasts() {
        let lease = Duration::from_secs(60);
        let mut clock = run_out(lease);
        assert!(!clock.held());
        let before = Instant::now();
        assert!(matches!(
            clock.renew(async { Ok(()) }).await,
            Ok(Renewal::Renewed)
        ));
        // A renewal holds for a lease from when it was sent.
        assert!(clock.held() && clock.held_until >= before + lease);
        assert!(matches!(
            clock.renew(async { Err(unreachable()) }).await,
            Ok(Renewal::Retry)
        ));
        let mut late = run_out(lease);
        assert!(matches!(
            late.renew(async { Err(unreachable()) }).await,
            Err(Lost::RanOut(_))
        ));
    }

    #[tokio::test]
    async fn a_taken_task_or_a_lasting_failure_is_let_go_at_once() {
        let mut clock = LeaseClock::new(Duration::from_secs(60), Instant::now());
        let taken = clock
            .renew(async {
                Err(StoreError::LeaseLost {
                    task_id: uuid::Uuid::nil(),
                })
            })
            .await;
        assert!(matches!(taken, Err(Lost::Taken(_))), "{taken:?}");
        let broken = clock
            .renew(async { Err(StoreError::Corrupt("bad row".into())) })
            .await;
        assert!(matches!(broken, Err(Lost::Failed(_))), "{broken:?}");
    }

    #[tokio::test]
    async fn writes_go_through_once_the_store_is_back() {
        // Retried every half second: three failures fit well within the lease.
        let clock = LeaseClock::new(Duration::from_secs(4), Instant::now());
        let mut tries = 0;
        let written = clock
            .write(|| {
                tries += 1;
                let outcome = if tries < 4 {
                    Err(unreachable())
                } else {
                    Ok(tries)
                };
                async move { outcome }
            })
            .await;
        assert!(matches!(written, Ok(4)), "{written:?}");
        let gave_up = run_out(Duration::from_secs(60))
            .write(|| async { Err::<(), _>(unreachable()) })
            .await;
        assert!(matches!(gave_up, Err(Lost::RanOut(_))), "{gave_up:?}");
    }
}
