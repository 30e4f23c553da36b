//! Wake-ups for work another process made: a backend that can tell (PostgreSQL's
//! `LISTEN/NOTIFY`) hands them out through [`Store::subscribe`](crate::Store::subscribe), so idle
//! workers and webhook senders start at once instead of at their next poll. They are hints, never
//! a promise: a wake-up can be lost (a dropped connection), so waiters keep polling as well.

use tokio::sync::broadcast;

/// What woke the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wakeup {
    /// A task became claimable (queued, handed back, re-queued after a retryable failure).
    TaskQueued,
    /// A webhook delivery became due (a task finished with one, a failed one was retried).
    WebhookDue,
    /// Wake-ups may have been lost (the backend's connection dropped, or this subscriber fell
    /// behind): look for both kinds of work.
    Missed,
}

/// A subscriber's stream of [`Wakeup`]s.
#[derive(Debug)]
pub struct Wakeups {
    events: broadcast::Receiver<Wakeup>,
}

impl Wakeups {
    /// Subscribes to `events`.
    pub(crate) fn new(events: broadcast::Receiver<Wakeup>) -> Self {
        Self { events }
    }

    /// The next wake-up, or None once the store is closed.
    pub async fn next(&mut self) -> Option<Wakeup> {
        match self.events.recv().await {
            Ok(wakeup) => Some(wakeup),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Wakeup::Missed),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
