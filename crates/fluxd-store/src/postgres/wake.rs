//! Wake-ups through `LISTEN/NOTIFY`: writes that make work say so on a channel, and every store
//! listens and passes what it hears to its subscribers ([`Wakeups`]).
//!
//! `NOTIFY` is sent by a task of its own, after the write committed, instead of inside the
//! writing transaction: PostgreSQL serialises the commits of all notifying transactions on one
//! lock, held through the commit's WAL flush (`PreCommit_Notify` in `src/backend/commands/
//! async.c`), which would make every submit wait for the previous one's fsync. Here the
//! submit's commit is not held up, notifications requested while one is being sent are merged
//! into the next, and the sender's connection runs with `synchronous_commit=off` (a notification
//! carries no data worth a flush). A notification lost to a crash between the write and its
//! `NOTIFY`, or to a dropped connection, costs latency only: waiters also poll.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use sqlx::ConnectOptions;
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;

use crate::{Wakeup, Wakeups};

/// The channels of one schema: deployments sharing a database in different schemas (and tests
/// side by side) do not wake each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Channels {
    /// Of [`Wakeup::TaskQueued`].
    tasks: String,
    /// Of [`Wakeup::WebhookDue`].
    webhooks: String,
}

impl Channels {
    /// The channels of the tables in `schema`: `fluxd_tasks` and `fluxd_webhooks`, suffixed
    /// with the schema's name unless it is `public`.
    pub(crate) fn of(schema: &str) -> Self {
        // Channel names are identifiers, at most 63 bytes: a long schema name is hashed.
        let suffix = match schema {
            "public" => String::new(),
            short if short.len() <= 40 => format!(".{short}"),
            long => format!(".{}", &hex::encode(Sha256::digest(long))[..16]),
        };
        Self {
            tasks: format!("fluxd_tasks{suffix}"),
            webhooks: format!("fluxd_webhooks{suffix}"),
        }
    }
}

/// Bits of [`Requested::channels`].
const TASKS_BIT: u8 = 1;
const WEBHOOKS_BIT: u8 = 2;

/// How long the notifier and the listener wait for a connection before trying again later.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two attempts to listen again after losing the connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the listener hears nothing before it checks that its connection still answers.
const QUIET_CHECK: Duration = Duration::from_secs(30);
/// Wake-ups a subscriber may fall behind by before it is told it missed some.
const BACKLOG: usize = 64;

/// Notifications asked for and not sent yet.
#[derive(Default)]
struct Requested {
    channels: AtomicU8,
    wake: Notify,
}

/// The notifier and the listener of one store.
pub(crate) struct Wake {
    requested: Arc<Requested>,
    /// The subscribers' channel; dropped by [`Wake::stop`], which ends their streams.
    events: Mutex<Option<broadcast::Sender<Wakeup>>>,
    tasks: [JoinHandle<()>; 2],
}

impl Wake {
    /// Starts the notifier and the listener on `channels`, each with its own connection to
    /// `connect`.
    pub(crate) fn start(connect: PgConnectOptions, channels: Channels) -> Self {
        let requested = Arc::new(Requested::default());
        let (events, _) = broadcast::channel(BACKLOG);
        let tasks = [
            tokio::spawn(notify(
                connect.clone(),
                channels.clone(),
                Arc::clone(&requested),
            )),
            tokio::spawn(listen(connect, channels, events.clone())),
        ];
        Self {
            requested,
            events: Mutex::new(Some(events)),
            tasks,
        }
    }

    /// Tells every listening store that a task became claimable.
    pub(crate) fn task_queued(&self) {
        self.request(TASKS_BIT);
    }

    /// Tells every listening store that a webhook delivery became due.
    pub(crate) fn webhook_due(&self) {
        self.request(WEBHOOKS_BIT);
    }

    fn request(&self, bit: u8) {
        self.requested.channels.fetch_or(bit, Ordering::AcqRel);
        self.requested.wake.notify_one();
    }

    /// A new subscriber; after [`Wake::stop`], one whose stream has ended.
    pub(crate) fn subscribe(&self) -> Wakeups {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        match events.as_ref() {
            Some(events) => Wakeups::new(events.subscribe()),
            None => Wakeups::new(broadcast::channel(1).1),
        }
    }

    /// Stops both tasks, closing their connections, and ends the subscribers' streams.
    pub(crate) fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends the requested notifications, all channels asked for since the last round in one
/// statement, until aborted.
async fn notify(connect: PgConnectOptions, channels: Channels, requested: Arc<Requested>) {
    // Not durable, so not worth waiting for a WAL flush.
    let connect = connect.options([("synchronous_commit", "off")]);
    let mut conn: Option<PgConnection> = None;
    loop {
        requested.wake.notified().await;
        let bits = requested.channels.swap(0, Ordering::AcqRel);
        let wanted: Vec<&str> = [
            (TASKS_BIT, channels.tasks.as_str()),
            (WEBHOOKS_BIT, channels.webhooks.as_str()),
        ]
        .into_iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, channel)| channel)
        .collect();
        if wanted.is_empty() {
            continue;
        }
        if conn.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, connect.connect()).await {
                Ok(Ok(fresh)) => conn = Some(fresh),
                Ok(Err(err)) => tracing::debug!(%err, "wake-up not sent: cannot connect"),
                Err(_) => tracing::debug!("wake-up not sent: connecting timed out"),
            }
        }
        let Some(live) = conn.as_mut() else {
            continue;
        };
        let send = sqlx::query("SELECT pg_notify(channel, '') FROM unnest($1::text[]) AS channel")
            .bind(wanted)
            .execute(live);
        // Bounded like every call (see `db`): a dead link must not stop wake-ups for good.
        match tokio::time::timeout(CONNECT_TIMEOUT, send).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::debug!(%err, "wake-up not sent");
                conn = None;
            }
            Err(_) => {
                tracing::debug!("wake-up not sent: no answer from the database");
                conn = None;
            }
        }
    }
}

/// Listens on both channels and passes what arrives to the subscribers, reconnecting (with a
/// [`Wakeup::Missed`], since notifications sent meanwhile are gone) whenever the connection
/// drops, until aborted.
async fn listen(connect: PgConnectOptions, channels: Channels, events: broadcast::Sender<Wakeup>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listener(&connect, &channels).await {
            Ok(mut listener) => {
                backoff = Duration::from_millis(100);
                // (No subscribers is not an error: nobody is waiting.)
                let _ = events.send(Wakeup::Missed);
                loop {
                    let Ok(received) = tokio::time::timeout(QUIET_CHECK, listener.try_recv()).await
                    else {
                        // A dead link never says so: after a quiet while, ask. (No answer:
                        // listen again on a fresh connection.)
                        let ping = sqlx::query("SELECT 1").execute(&mut listener);
                        if let Ok(Ok(_)) = tokio::time::timeout(CONNECT_TIMEOUT, ping).await {
                            continue;
                        }
                        tracing::debug!("the wake-up listener's connection stopped answering");
                        break;
                    };
                    let wakeup = match received {
                        Ok(Some(notification)) => {
                            if notification.channel() == channels.tasks {
                                Wakeup::TaskQueued
                            } else if notification.channel() == channels.webhooks {
                                Wakeup::WebhookDue
                            } else {
                                Wakeup::Missed
                            }
                        }
                        // Reconnected: anything sent meanwhile was lost.
                        Ok(None) => Wakeup::Missed,
                        Err(err) => {
                            tracing::debug!(%err, "lost the wake-up listener's connection");
                            break;
                        }
                    };
                    let _ = events.send(wakeup);
                }
            }
            Err(err) => tracing::debug!(%err, "cannot listen for wake-ups"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A listener on both channels, on a connection of its own.
async fn listener(
    connect: &PgConnectOptions,
    channels: &Channels,
) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(connect.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener
        .listen_all([channels.tasks.as_str(), channels.webhooks.as_str()])
        .await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_per_schema_and_fit_an_identifier() {
        assert_eq!(Channels::of("public").tasks, "fluxd_tasks");
        assert_eq!(Channels::of("eu").webhooks, "fluxd_webhooks.eu");
        let long = "a".repeat(100);
        let hashed = Channels::of(&long);
        assert!(hashed.webhooks.len() <= 63, "{hashed:?}");
        assert_ne!(hashed, Channels::of(&"b".repeat(100)));
    }
}
