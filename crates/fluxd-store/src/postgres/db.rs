//! Calls on pooled connections with a time limit, so that no call waits forever on a database
//! that stopped answering.
//!
//! A link that silently drops packets (a partition, a dead host behind a firewall that sends no
//! RST) leaves a statement in flight waiting for an answer that never comes: TCP retransmits
//! for about 15 minutes before it gives up (`tcp_retries2`), and sqlx has no timeout of its own
//! on a statement. So every call here runs under a deadline, connecting included: past it the
//! caller gets [`StoreError::Unavailable`] (a 503 for a request, a retry for a worker within
//! its lease), and the connection is closed instead of going back to the pool, where sqlx's
//! return-time ping would hold its slot as long as the link stays dead.
//!
//! The server gets the same limit as its `statement_timeout`, so a statement that is merely slow
//! (waiting on a lock, say) is cancelled by the server itself, rolling back and releasing its
//! locks, rather than running on after the client gave up on it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::Postgres;
use tokio::time::{timeout_at, Instant};

use crate::postgres::map_pg;
use crate::StoreError;

/// A pool of connections whose calls end within a time limit.
#[derive(Clone)]
pub(crate) struct Db {
    pool: PgPool,
    call_timeout: Duration,
}

/// No answer from the database in time: the source of the [`StoreError::Unavailable`] of a call
/// that ran past its limit.
#[derive(Debug)]
struct NoAnswer(Duration);

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no answer from the database within {:?}", self.0)
    }
}

impl std::error::Error for NoAnswer {}

impl Db {
    /// Calls on `pool` end within `call_timeout`.
    pub(crate) fn new(pool: PgPool, call_timeout: Duration) -> Self {
        Self { pool, call_timeout }
    }

    /// The pool itself, for what runs without a limit (closing, `fluxd store copy`).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `call` on a pooled connection within the call time limit.
    pub(crate) async fn call<T>(
        &self,
        call: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.call_within(self.call_timeout, call).await
    }

    /// Runs `call` on a pooled connection within `limit` (a longer one for maintenance that
    /// may touch many rows; it sets its own `statement_timeout` to match).
    pub(crate) async fn call_within<T>(
        &self,
        limit: Duration,
        call: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + limit;
        let mut conn: PoolConnection<Postgres> = timeout_at(deadline, self.pool.acquire())
            .await
            .map_err(|_| no_answer(limit))?
            .map_err(map_pg)?;
        match timeout_at(deadline, call(&mut conn)).await {
            Ok(done) => done,
            Err(_) => {
                // Whatever the connection was doing is unknown: it must not serve another call.
                conn.close_on_drop();
                Err(no_answer(limit))
            }
        }
    }
}

fn no_answer(limit: Duration) -> StoreError {
    StoreError::Unavailable(Arc::new(NoAnswer(limit)))
}

/// The `statement_timeout` setting for `limit`, in milliseconds (at least 1: 0 would mean none).
pub(crate) fn statement_timeout(limit: Duration) -> String {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
    format!("{ms}ms")
}
