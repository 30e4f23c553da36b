//! Group commit: one task owns SQLite's single write connection and runs every write.
//!
//! SQLite admits one writer at a time, and with `synchronous=FULL` each commit waits for an
//! fsync. Instead of many connections queueing on the write lock and paying one fsync each, writes
//! are sent here; whatever has piled up while the previous commit was syncing runs as one
//! transaction (each write inside its own savepoint) and is acknowledged after that single commit.
//! Under load, many submits share one fsync; alone, a write costs what it would anyway. Nothing
//! waits on a mutex: callers await a oneshot reply.

use futures_util::future::BoxFuture;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::sqlite::map_sqlx;
use crate::StoreError;

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
    result: Option<Result<R, StoreError>>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<R: Send + 'static> Job for Pending<R> {
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
    Close(oneshot::Sender<()>),
}

/// Handle to the writer task.
pub(crate) struct Writer {
    queue: mpsc::Sender<Message>,
}

impl Writer {
    /// Starts the writer task on `conn`, which must have no transaction open.
    pub(crate) fn spawn(conn: SqliteConnection) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(conn, rx));
        Self { queue }
    }

    /// Runs `write` in the next batch and returns its answer once the batch committed.
    pub(crate) async fn write<R, F>(&self, write: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Pending {
            write: Some(Box::new(write) as WriteFn<R>),
            result: None,
            reply,
        };
        self.queue
            .send(Message::Write(Box::new(job)))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets writes already queued finish, then stops the writer and closes its connection.
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Close(done)).await.is_ok() {
            // An error means the writer already stopped, which is what we wait for.
            let _ = wait.await;
        }
    }
}

async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Message>) {
    let mut closing = None;
    while let Some(first) = rx.recv().await {
        let mut batch: Vec<Box<dyn Job>> = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Write(job) => batch.push(job),
                Message::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let commit = run_batch(&mut conn, &mut batch).await;
            if let Err(err) = &commit {
                tracing::warn!(error = %err, writes = batch.len(), "store batch failed");
            }
            for job in batch {
                job.finish(commit.clone());
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
/// statement inside can fail with a busy snapshot), each write in its own savepoint.
async fn run_batch(
    conn: &mut SqliteConnection,
    batch: &mut [Box<dyn Job>],
) -> Result<(), StoreError> {
    let mut tx: Transaction<'_, Sqlite> =
        conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_sqlx)?;
    for job in batch.iter_mut() {
        let mut savepoint = tx.begin().await.map_err(map_sqlx)?;
        match job.run(&mut savepoint).await {
            Ran::Ok => savepoint.commit().await.map_err(map_sqlx)?,
            Ran::Refused => savepoint.rollback().await.map_err(map_sqlx)?,
            // Dropping the transactions rolls everything back.
            Ran::Fatal(err) => return Err(err),
        }
    }
    tx.commit().await.map_err(map_sqlx)
}
