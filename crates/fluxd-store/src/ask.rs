//! Talking to a store's background task (SQLite's writer, PostgreSQL's submit batcher): a
//! message carrying a reply channel, answered once the work is done.

use tokio::sync::{mpsc, oneshot};

use crate::StoreError;

/// Sends the message `message` builds around a reply channel and waits for the reply;
/// [`StoreError::Closed`] once the task has stopped.
pub(crate) async fn ask<M, T>(
    queue: &mpsc::Sender<M>,
    message: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> M,
) -> Result<T, StoreError> {
    let (reply, answer) = oneshot::channel();
    queue
        .send(message(reply))
        .await
        .map_err(|_| StoreError::Closed)?;
    answer.await.map_err(|_| StoreError::Closed)?
}

/// Asks the task to finish what is queued and stop, and waits until it has.
pub(crate) async fn stop<M>(
    queue: &mpsc::Sender<M>,
    message: impl FnOnce(oneshot::Sender<()>) -> M,
) {
    let (done, wait) = oneshot::channel();
    if queue.send(message(done)).await.is_ok() {
        // An error means the task already stopped, which is what we wait for.
        let _ = wait.await;
    }
}
