//! Group commit: one task owns SQLite's single write connection and runs every write.
//!
//! SQLite admits one writer at a time, and with `synchronous=FULL` each commit waits for an
//! fsync. Instead of many connections queueing on the write lock and paying one fsync each, writes
//! are sent here; whatever has piled up while the previous commit was syncing runs as one
//! transaction and is acknowledged after that single commit. A write of several statements runs
//! inside its own savepoint, so refusing it undoes only it; a write of one statement needs none,
//! because SQLite undoes a failed statement by itself (which saves two round trips to the
//! connection's thread on the hottest path, submitting a task).
//! Under load, many submits share one fsync; alone, a write costs what it would anyway. Nothing
//! waits on a mutex: callers await a oneshot reply.
//!
//! Submits, the most frequent write, are not closures but data ([`Submit`]): a batch's submits are
//! queued by a few multi-row statements ([`tasks::insert_many`]), since each statement is a
//! hand-off to the connection's thread and back, and those hand-offs, not SQLite, were what
//! limited the submit rate. A batch of nothing but submits that one statement queues runs
//! without `BEGIN`/`COMMIT` (the statement is its own transaction): one hand-off per commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::ask::{ask, stop};
use crate::sqlite::map_sqlx;
use crate::sqlite::tasks::{self, Submit};
use crate::{InsertOutcome, NewTask, StoreError};

/// Most writes that share one transaction; bounds how long one commit holds the write lock.
const MAX_BATCH: usize = 256;

/// Writes waiting for the writer before senders wait too (back-pressure under overload).
const QUEUE: usize = 4096;

/// How a write went, as far as the batch is concerned.
enum Ran {
    /// Keep it; it is acknowledged after the commit.
    Ok,
    /// It failed on a condition the store detected; its savepoint is rolled back, the rest of the
    /// batch goes on.
    Refused,
    /// The transaction is in doubt; the whole batch is rolled back and fails with this.
    Fatal(StoreError),
}

/// A write waiting in the batch, type-erased so one queue carries every kind of write.
trait Job: Send {
    /// Whether the write may change the database with more than one statement.
    fn needs_savepoint(&self) -> bool;
    /// Runs the write's statements on the batch's transaction.
    fn run<'a>(&'a mut self, conn: &'a mut SqliteConnection) -> BoxFuture<'a, Ran>;
    /// Sends the write's answer once the batch's fate (`commit`) is known.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

/// The statements of one write: a function of the connection returning the caller's answer.
type WriteFn<R> = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<R, StoreError>> + Send,
>;

struct Pending<R> {
    write: Option<WriteFn<R>>,
    savepoint: bool,
    result: Option<Result<R, StoreError>>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<R: Send + 'static> Job for Pending<R> {
    fn needs_savepoint(&self) -> bool {
        self.savepoint
    }

    fn run<'a>(&'a mut self, conn: &'a mut SqliteConnection) -> BoxFuture<'a, Ran> {
        Box::pin(async move {
            let Some(write) = self.write.take() else {
                return Ran::Ok;
            };
            let result = write(conn).await;
            let ran = match &result {
                Ok(_) => Ran::Ok,
                Err(err) if err.aborts_transaction() => Ran::Fatal(err.clone()),
                Err(_) => Ran::Refused,
            };
            self.result = Some(result);
            ran
        })
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (self.result, commit) {
            // The write's own failure is the most precise answer, whatever the batch did.
            (Some(Err(err)), _) => Err(err),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (Some(Ok(_)), Err(err)) | (None, Err(err)) => Err(err),
            // Not run but committed cannot happen: run() is called on every job before commit.
            (None, Ok(())) => Err(StoreError::Closed),
        };
        // The caller may have gone away (request cancelled); the write stands regardless.
        let _ = self.reply.send(answer);
    }
}

enum Message {
    Write(Box<dyn Job>),
    Submit(Submit),
    Close(oneshot::Sender<()>),
}

/// Counters of the writer, for metrics: `writes / commits` is the average batch size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Writes that ran in committed transactions (including ones refused on their own
    /// condition, which were answered with their error).
    pub writes: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
}

/// Handle to the writer task.
pub(crate) struct Writer {
    queue: mpsc::Sender<Message>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Starts the writer task on `conn`, which must have no transaction open.
    pub(crate) fn spawn(conn: SqliteConnection) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(conn, rx, Arc::clone(&counters)));
        Self { queue, counters }
    }

    /// Commits and committed writes so far.
    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Runs `write` in the next batch, in its own savepoint, and returns its answer once the
    /// batch committed.
    pub(crate) async fn write<R, F>(&self, write: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static,
    {
        self.submit(Box::new(write), true).await
    }

    /// Like [`Writer::write`] for a write that changes the database with at most one statement
    /// (any number of reads before it) and cannot be refused once that statement succeeded: it
    /// needs no savepoint.
    pub(crate) async fn write_one<R, F>(&self, write: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static,
    {
        self.submit(Box::new(write), false).await
    }

    /// Queues `task` unless its key has `limit` unfinished tasks, in the next batch (see
    /// [`tasks::insert_many`]).
    pub(crate) async fn submit_task(
        &self,
        task: NewTask,
        limit: u32,
        max_attempts: u32,
    ) -> Result<InsertOutcome, StoreError> {
        ask(&self.queue, |reply| {
            Message::Submit(Submit {
                task,
                limit,
                max_attempts,
                reply,
            })
        })
        .await
    }

    async fn submit<R: Send + 'static>(
        &self,
        write: WriteFn<R>,
        savepoint: bool,
    ) -> Result<R, StoreError> {
        ask(&self.queue, |reply| {
            Message::Write(Box::new(Pending {
                write: Some(write),
                savepoint,
                result: None,
                reply,
            }))
        })
        .await
    }

    /// Lets writes already queued finish, then stops the writer and closes its connection.
    pub(crate) async fn close(&self) {
        stop(&self.queue, Message::Close).await;
    }
}

async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Message>, counters: Arc<Counters>) {
    let mut closing = None;
    while let Some(first) = rx.recv().await {
        let mut batch: Vec<Box<dyn Job>> = Vec::new();
        let mut submits: Vec<Submit> = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Write(job) => batch.push(job),
                Message::Submit(submit) => submits.push(submit),
                Message::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.len() + submits.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() || !submits.is_empty() {
            let writes = batch.len() + submits.len();
            let ran = if batch.is_empty() && tasks::one_statement(&submits) {
                // One statement commits by itself: the round trips to the connection's thread
                // for BEGIN and COMMIT, the better part of a small batch's time, are saved.
                tasks::insert_many(&mut conn, &submits).await
            } else {
                run_batch(&mut conn, &mut batch, &submits).await
            };
            let commit = ran.as_ref().map(|_| ()).map_err(StoreError::clone);
            match &commit {
                Ok(()) => {
                    counters.commits.fetch_add(1, Ordering::Relaxed);
                    let writes = u64::try_from(writes).unwrap_or(u64::MAX);
                    counters.writes.fetch_add(writes, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::warn!(error = %err, writes, "store batch failed");
                }
            }
            for job in batch {
                job.finish(commit.clone());
            }
            match ran {
                Ok(outcomes) => {
                    for (submit, outcome) in submits.into_iter().zip(outcomes) {
                        // The caller may have gone away; the task stays queued regardless.
                        let _ = submit.reply.send(outcome);
                    }
                }
                Err(err) => {
                    for submit in submits {
                        let _ = submit.reply.send(Err(err.clone()));
                    }
                }
            }
        }
        if closing.is_some() {
            break;
        }
    }
    // Refuse what arrives from now on; writes sent after Close get `Closed`.
    rx.close();
    if let Err(err) = conn.close().await {
        tracing::warn!(error = %err, "closing the store's write connection");
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Runs a batch in one `BEGIN IMMEDIATE` transaction (taking the write lock up front, so no
/// statement inside can fail with a busy snapshot): the writes, then the submits. Writes of one
/// batch were all sent before any was answered, so no caller can tell their order.
/// Returns the submits' outcomes.
async fn run_batch(
    conn: &mut SqliteConnection,
    batch: &mut [Box<dyn Job>],
    submits: &[Submit],
) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
    let mut tx: Transaction<'_, Sqlite> =
        conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_sqlx)?;
    for job in batch.iter_mut() {
        if !job.needs_savepoint() {
            // A refused single statement has already been undone by SQLite.
            if let Ran::Fatal(err) = job.run(&mut tx).await {
                return Err(err);
            }
            continue;
        }
        let mut savepoint = tx.begin().await.map_err(map_sqlx)?;
        match job.run(&mut savepoint).await {
            Ran::Ok => savepoint.commit().await.map_err(map_sqlx)?,
            Ran::Refused => savepoint.rollback().await.map_err(map_sqlx)?,
            // Dropping the transactions rolls everything back.
            Ran::Fatal(err) => return Err(err),
        }
    }
    let outcomes = tasks::insert_many(&mut tx, submits).await?;
    tx.commit().await.map_err(map_sqlx)?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::future::join_all;
    use sqlx::ConnectOptions;

    use super::*;

    /// A writer on a fresh database with one table, plus the directory keeping it alive.
    async fn writer() -> Result<(tempfile::TempDir, Writer), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .create_if_missing(true)
            .connect()
            .await
            .map_err(map_sqlx)?;
        sqlx::query("CREATE TABLE t (v INTEGER PRIMARY KEY)")
            .execute(&mut conn)
            .await
            .map_err(map_sqlx)?;
        Ok((dir, Writer::spawn(conn)))
    }

    /// Inserts `v`, then fails with `fail` if given. Only a write that may fail after its
    /// statement needs the savepoint; the plain insert goes without, as submits do.
    async fn insert(writer: &Writer, v: i64, fail: Option<StoreError>) -> Result<i64, StoreError> {
        let savepoint = fail.is_some();
        let write: WriteFn<i64> = Box::new(move |c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO t (v) VALUES ($1)")
                    .bind(v)
                    .execute(&mut *c)
                    .await
                    .map_err(map_sqlx)?;
                fail.map_or(Ok(v), Err)
            })
        });
        writer.submit(write, savepoint).await
    }

    async fn values(writer: &Writer) -> Result<Vec<i64>, StoreError> {
        writer
            .write(|c| {
                Box::pin(async move {
                    sqlx::query_scalar("SELECT v FROM t ORDER BY v")
                        .fetch_all(c)
                        .await
                        .map_err(map_sqlx)
                })
            })
            .await
    }

    // On the current-thread runtime the writer cannot run until the test awaits, so writes
    // joined together are queued before it wakes and deterministically share one batch.
    #[tokio::test]
    async fn a_refused_write_is_undone_alone_and_the_batch_commits_once() -> Result<(), StoreError>
    {
        let (_dir, writer) = writer().await?;
        let answers = join_all([
            insert(&writer, 1, None),
            insert(&writer, 2, Some(StoreError::Conflict("two".into()))),
            insert(&writer, 1, None),
            insert(&writer, 3, None),
        ])
        .await;
        assert!(matches!(answers[0], Ok(1)));
        assert!(matches!(&answers[1], Err(StoreError::Conflict(what)) if what == "two"));
        // The duplicate key is a constraint the database found: SQLite undid the statement.
        assert!(
            matches!(answers[2], Err(StoreError::Conflict(_))),
            "{:?}",
            answers[2]
        );
        assert!(matches!(answers[3], Ok(3)));
        assert_eq!(
            writer.stats(),
            WriterStats {
                commits: 1,
                writes: 4
            }
        );
        assert_eq!(values(&writer).await?, [1, 3]);
        Ok(())
    }

    #[tokio::test]
    async fn a_fatal_write_fails_its_whole_batch() -> Result<(), StoreError> {
        let (_dir, writer) = writer().await?;
        let disk: crate::Source = Arc::new(std::io::Error::other("disk full"));
        let answers = join_all([
            insert(&writer, 1, None),
            insert(&writer, 2, Some(StoreError::Unavailable(disk))),
            insert(&writer, 3, None),
        ])
        .await;
        for answer in &answers {
            assert!(
                matches!(answer, Err(StoreError::Unavailable(_))),
                "{answer:?}"
            );
        }
        assert_eq!(writer.stats().commits, 0);
        // Everything was rolled back and the connection is usable again.
        assert_eq!(values(&writer).await?, Vec::<i64>::new());
        assert!(matches!(insert(&writer, 4, None).await, Ok(4)));
        assert_eq!(values(&writer).await?, [4]);
        Ok(())
    }

    #[tokio::test]
    async fn writes_after_close_are_refused() -> Result<(), StoreError> {
        let (_dir, writer) = writer().await?;
        assert!(matches!(insert(&writer, 1, None).await, Ok(1)));
        writer.close().await;
        assert!(matches!(
            insert(&writer, 2, None).await,
            Err(StoreError::Closed)
        ));
        writer.close().await;
        Ok(())
    }
}
