//! The embedded SQLite store, fluxd's default deployment: one file, WAL, fsync on every commit.
//!
//! Writes go through one connection owned by a group-commit writer ([`writer`]); reads use a small
//! pool of other connections, which WAL lets run beside the writer. Queries use `$N` parameters and
//! portable SQL (`RETURNING`, `ON CONFLICT DO NOTHING`) so a PostgreSQL backend can share their
//! text.

mod cancel;
pub(crate) mod copy;
mod credits;
mod finetunes;
mod keys;
mod migrate;
mod secrets;
mod tasks;
mod trait_impl;
mod webhooks;
mod writer;

use std::path::Path;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::ConnectOptions;
use tokio::sync::oneshot;

use crate::sql::{map_error, Transient};
use crate::{StoreError, DEFAULT_MAX_ATTEMPTS};
use writer::Writer;
pub use writer::WriterStats;

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
    /// Dropped with the store, which ends [`checkpoints`].
    _stop_checkpoints: oneshot::Sender<()>,
}

/// How often [`checkpoints`] copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed pages from the WAL into the database file every [`CHECKPOINT_EVERY`] on a
/// read connection, so that the writer's commits never do it. `PASSIVE` neither waits for nor
/// blocks the writer or readers (it copies what no reader still needs); once a checkpoint has
/// caught up, the writer starts the WAL over, which keeps it short. Ends when the store is
/// dropped or closed.
async fn checkpoints(reads: SqlitePool, mut stop: oneshot::Receiver<()>) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = every.tick() => {}
        }
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&reads)
            .await
        {
            Ok(_) => {}
            Err(sqlx::Error::PoolClosed) => break,
            // The writer's automatic checkpoint is the backstop; say why this one failed.
            Err(err) => tracing::debug!(error = %err, "background checkpoint failed"),
        }
    }
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
        // A page cache that holds the indexes saves reading back the pages a batch touches.
        // Statement journals (a multi-row insert keeps one, to undo itself on a conflict) stay
        // in memory instead of spilling to a temporary file past 64 KiB. Checkpoints run beside
        // the writer ([`checkpoints`]) instead of inside whichever commit crosses SQLite's
        // 1000-page mark, where copying the pages and syncing the database file made that
        // commit, and every submit in its batch, wait; the writer's own automatic checkpoint
        // stays as a backstop at 16384 pages (64 MiB of WAL). The statement cache holds the
        // multi-row submit for every batch size (1 to 64 rows) beside the other writes, so none
        // is prepared again under load.
        let mut write_conn = connect
            .clone()
            .statement_cache_capacity(256)
            .pragma("cache_size", "-16384")
            .pragma("wal_autocheckpoint", "16384")
            .pragma("temp_store", "memory")
            .connect()
            .await
            .map_err(map_sqlx)?;
        migrate::migrate(&mut write_conn).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(0)
            // sqlx would otherwise ping each connection on every acquire: one more round trip
            // to the connection's thread per read, for a local file that cannot drop the link.
            .test_before_acquire(false)
            .connect_with(connect.create_if_missing(false))
            .await
            .map_err(map_sqlx)?;
        let (stop_checkpoints, stop) = oneshot::channel();
        tokio::spawn(checkpoints(reads.clone(), stop));
        Ok(Self {
            writer: Writer::spawn(write_conn),
            reads,
            max_attempts: options.max_attempts,
            _stop_checkpoints: stop_checkpoints,
        })
    }
}

impl SqliteStore {
    /// Group-commit counters of the writer (also [`Store::writer_stats`](crate::Store)).
    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }
}

/// Classifies a driver error for callers (see [`map_error`]).
pub(crate) fn map_sqlx(err: sqlx::Error) -> StoreError {
    map_error(err, transient)
}

/// SQLite's transient failures, by the primary result code (the low byte of the extended one).
fn transient(db: &dyn DatabaseError) -> Transient {
    let primary = db
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .map(|code| code & 0xff);
    match primary {
        // SQLITE_BUSY, SQLITE_LOCKED
        Some(5 | 6) => Transient::Busy,
        // SQLITE_NOMEM, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL
        Some(7 | 10 | 13 | 14 | 15) => Transient::Unavailable,
        _ => Transient::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pragma's value as the write connection sees it, as text.
    async fn pragma_on_writer(
        store: &SqliteStore,
        sql: &'static str,
    ) -> Result<String, StoreError> {
        store
            .writer
            .write(move |c| {
                Box::pin(async move {
                    let row = sqlx::query(sql).fetch_one(c).await.map_err(map_sqlx)?;
                    // journal_mode answers text, the others integers.
                    let text =
                        sqlx::Row::try_get::<String, _>(&row, "journal_mode").or_else(|_| {
                            sqlx::Row::try_get::<i64, _>(&row, 0)
                                .map(|n| n.to_string())
                                .map_err(map_sqlx)
                        })?;
                    Ok(text)
                })
            })
            .await
    }

    #[tokio::test]
    async fn connections_use_wal_full_sync_foreign_keys_and_a_busy_timeout(
    ) -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let store = SqliteStore::open(dir.path().join("p.db")).await?;
        assert_eq!(
            pragma_on_writer(&store, "PRAGMA journal_mode").await?,
            "wal"
        );
        // 2 = FULL
        assert_eq!(pragma_on_writer(&store, "PRAGMA synchronous").await?, "2");
        assert_eq!(pragma_on_writer(&store, "PRAGMA foreign_keys").await?, "1");
        assert_eq!(
            pragma_on_writer(&store, "PRAGMA busy_timeout").await?,
            "5000"
        );
        let read: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.reads)
            .await
            .map_err(map_sqlx)?;
        assert_eq!(read, 2);
        Ok(())
    }

    fn task_of(key_id: uuid::Uuid) -> crate::NewTask {
        crate::NewTask {
            id: uuid::Uuid::new_v4(),
            tenant: "t".into(),
            key_id,
            params: serde_json::json!({}),
            finetune_id: None,
            webhook_url: None,
            webhook_secret: None,
            cost: None,
        }
    }

    // On the current-thread runtime, submits joined together reach the writer before it runs
    // and share one batch, so they go through the multi-row inserts of `tasks::insert_many`.
    #[tokio::test]
    async fn submits_sharing_a_batch_keep_their_own_outcomes() -> Result<(), StoreError> {
        use crate::{InsertOutcome, Store};
        use futures_util::future::join_all;
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let store = SqliteStore::open(dir.path().join("batch.db")).await?;
        let mut keys = Vec::new();
        for _ in 0..5 {
            keys.push(store.create_key("t", None).await?.key_id);
        }
        // Key 0 is at the limit of 2; key 1's next task reuses an id.
        store.insert_task(task_of(keys[0])).await?;
        store.insert_task(task_of(keys[0])).await?;
        let taken = task_of(keys[1]);
        store.insert_task(taken.clone()).await?;

        // Distinct keys: one statement; it queues all but the key at its limit.
        let before = store.writer_stats();
        let outcomes =
            join_all([0, 2, 3, 4].map(|k| store.insert_task_if_under_limit(task_of(keys[k]), 2)))
                .await;
        assert!(matches!(
            outcomes[0],
            Ok(InsertOutcome::LimitReached { active: 2 })
        ));
        for outcome in &outcomes[1..] {
            assert!(
                matches!(outcome, Ok(InsertOutcome::Inserted)),
                "{outcome:?}"
            );
        }
        assert_eq!(store.writer_stats().commits, before.commits + 1);

        // A duplicate id undoes its statement: the rows go again one by one and only it is
        // refused; a key twice in one batch is counted with its own earlier task.
        let outcomes = join_all([
            store.insert_task_if_under_limit(taken, 2),
            store.insert_task_if_under_limit(task_of(keys[2]), 2),
            store.insert_task_if_under_limit(task_of(keys[3]), 2),
            store.insert_task_if_under_limit(task_of(keys[3]), 2),
        ])
        .await;
        assert!(
            matches!(outcomes[0], Err(StoreError::Conflict(_))),
            "{:?}",
            outcomes[0]
        );
        assert!(matches!(outcomes[1], Ok(InsertOutcome::Inserted)));
        assert!(matches!(outcomes[2], Ok(InsertOutcome::Inserted)));
        assert!(matches!(
            outcomes[3],
            Ok(InsertOutcome::LimitReached { active: 2 })
        ));
        for (k, unfinished) in [(0, 2), (1, 1), (2, 2), (3, 2), (4, 1)] {
            assert_eq!(
                store.count_unfinished(keys[k]).await?,
                unfinished,
                "key {k}"
            );
        }
        Ok(())
    }

    // One statement may hold a key several times and keys of different limits: a key's rows are
    // counted among themselves, each against its own limit.
    #[tokio::test]
    async fn one_statement_counts_a_keys_rows_among_themselves() -> Result<(), StoreError> {
        use crate::{InsertOutcome, Store};
        use futures_util::future::join_all;
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let store = SqliteStore::open(dir.path().join("same-key.db")).await?;
        let (a, b) = (
            store.create_key("t", None).await?.key_id,
            store.create_key("t", None).await?.key_id,
        );
        store.insert_task(task_of(b)).await?;
        let before = store.writer_stats();
        // Key a: limit 2, nothing queued, three submits. Key b: limit 3, one queued, three.
        let submits = [(a, 2), (b, 3), (a, 2), (b, 3), (a, 2), (b, 3)];
        let outcomes = join_all(
            submits.map(|(key, limit)| store.insert_task_if_under_limit(task_of(key), limit)),
        )
        .await;
        assert_eq!(store.writer_stats().commits, before.commits + 1);
        let mut inserted = [0, 0];
        for (outcome, (key, _)) in outcomes.iter().zip(submits) {
            let k = usize::from(key == b);
            match outcome {
                Ok(InsertOutcome::Inserted) => inserted[k] += 1,
                Ok(InsertOutcome::LimitReached { active }) => {
                    assert_eq!(*active, [2, 3][k], "key {k}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(inserted, [2, 2]);
        assert_eq!(store.count_unfinished(a).await?, 2);
        assert_eq!(store.count_unfinished(b).await?, 3);
        Ok(())
    }

    #[tokio::test]
    async fn tasks_need_an_existing_key() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let store = SqliteStore::open(dir.path().join("fk.db")).await?;
        let orphan = crate::NewTask {
            id: uuid::Uuid::new_v4(),
            tenant: "ghost".into(),
            key_id: uuid::Uuid::new_v4(),
            params: serde_json::json!({}),
            finetune_id: None,
            webhook_url: None,
            webhook_secret: None,
            cost: None,
        };
        let inserted = crate::Store::insert_task(&store, orphan).await;
        assert!(
            matches!(inserted, Err(StoreError::Invalid(_))),
            "{inserted:?}"
        );
        Ok(())
    }
}
