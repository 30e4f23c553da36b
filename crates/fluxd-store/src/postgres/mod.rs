//! The PostgreSQL store, for several API nodes and workers on one database.
//!
//! Every call takes a connection from a pool and runs one statement where it can (a completion
//! and its webhook are one statement with a data-modifying CTE), so a call costs one round trip
//! and concurrent calls run side by side. Submits, the hottest write, are batched ([`submit`]):
//! those arriving while others commit share one statement and one WAL flush. Claims use `FOR UPDATE SKIP LOCKED`, so workers never wait on each other's rows.
//! The per-key limit is checked under a row lock of the key's `key_load` row, which makes it hold
//! across API nodes. Leases and due dates use the database's clock.
//!
//! Wake-ups ([`wake`]): writes that make work tell other processes through `NOTIFY`, sent
//! coalesced and off the write path; each store listens, and hands them to
//! subscribers of [`Store::subscribe`](crate::Store::subscribe).

mod cancel;
pub(crate) mod copy;
mod credits;
mod db;
mod finetunes;
mod keys;
mod migrate;
mod submit;
mod tasks;
mod trait_impl;
mod wake;
mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::sql::{map_error, Transient};
use crate::url::DatabaseUrl;
use crate::{StoreError, DEFAULT_MAX_ATTEMPTS};

/// Knobs of [`PostgresStore::connect_with`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections this process holds for calls (wake-ups use two more of their own).
    pub max_connections: u32,
    /// How long a call waits for a connection, connecting included, before it fails as
    /// [`StoreError::Unavailable`] (a request then gets a 503).
    pub acquire_timeout: Duration,
    /// How long a call may take in all, waiting for a connection included, before it fails as
    /// [`StoreError::Unavailable`]: what bounds a call on a database that stopped answering
    /// (see [`db`]). Also each statement's `statement_timeout` on the server.
    pub call_timeout: Duration,
    /// Runs a task may start before it fails for good (stored on each task at submit).
    pub max_attempts: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// A pooled connection idle longer than this is checked with a ping before use; younger ones
/// are used as they are (a ping per call would double every call's round trips), and sqlx checks
/// each connection anyway when it goes back to the pool.
const PING_IDLE_AFTER: Duration = Duration::from_secs(10);

/// The time limit of retention's deletes, which may meet many rows at once.
const MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(300);

/// The [`Store`](crate::Store) on a PostgreSQL database.
pub struct PostgresStore {
    db: db::Db,
    max_attempts: u32,
    submitter: submit::Submitter,
    wake: wake::Wake,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, with any of libpq's
    /// URL parameters sqlx knows, e.g. `sslmode=require`) and migrates the schema, with default
    /// options.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects to `url` with `options`. Several processes may do this at once on a new
    /// database: migrations are applied by one of them under an advisory lock.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        if options.call_timeout.is_zero() {
            return Err(StoreError::Invalid("call_timeout must not be zero".into()));
        }
        if options.max_attempts == 0 {
            return Err(StoreError::Invalid(
                "max_attempts must be at least 1".into(),
            ));
        }
        // The driver's message never quotes the URL; ours shows it with the password hidden.
        let connect = PgConnectOptions::from_str(url).map_err(|err| {
            StoreError::Invalid(format!("database URL {}: {err}", DatabaseUrl::redact(url)))
        })?;
        let connect = connect.application_name("fluxd").options([(
            "statement_timeout",
            db::statement_timeout(options.call_timeout),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect.clone())
            .await
            .map_err(map_pg)?;
        let mut conn = pool.acquire().await.map_err(map_pg)?;
        migrate::migrate(&mut conn).await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut *conn)
            .await
            .map_err(map_pg)?;
        drop(conn);
        let db = db::Db::new(pool, options.call_timeout);
        Ok(Self {
            submitter: submit::Submitter::start(db.clone(), options.max_attempts),
            db,
            max_attempts: options.max_attempts,
            wake: wake::Wake::start(connect, wake::Channels::of(&schema)),
        })
    }
}

/// Classifies a driver error for callers (see [`map_error`]).
pub(crate) fn map_pg(err: sqlx::Error) -> StoreError {
    map_error(err, transient)
}

/// PostgreSQL's transient failures, by SQLSTATE (appendix A of its manual).
fn transient(db: &dyn DatabaseError) -> Transient {
    let Some(code) = db.code() else {
        return Transient::No;
    };
    match code.as_ref() {
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => Transient::Busy,
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up, in recovery),
        // read_only_sql_transaction (a failover left us on a standby)
        "57P01" | "57P02" | "57P03" | "25006" => Transient::Unavailable,
        // connection_exception, insufficient_resources (disk full, out of memory, too many
        // connections), system_error (I/O)
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("58") => {
            Transient::Unavailable
        }
        _ => Transient::No,
    }
}
