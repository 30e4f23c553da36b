//! The fluxd HTTP service: the contract's routes on axum ([`app`]), authentication by `x-key`,
//! per-key task limits, signed delivery URLs, the engine on its own OS thread ([`engine`]) and the
//! worker loop that feeds it from the store ([`worker`]).
//!
//! [`run`] wires them together and shuts down gracefully: stop accepting, let requests in flight
//! finish, let the running task finish (or stop it and hand it back to the queue after the drain
//! time), flush the webhook outbox, close the store.

// Tests state their expectations with unwrap/expect; library code never does.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod auth;
pub mod cache;
pub mod data_dir;
pub mod engine;
pub mod error;
pub mod image_prompt;
pub mod import;
mod lease;
pub mod metrics;
pub mod routes;
pub mod signing;
pub mod state;
pub mod upsample;
pub mod wakeups;
pub mod webhook;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

pub use auth::Caller;
pub use data_dir::DataDir;
pub use error::{ApiError, ServerError};
pub use routes::app;
pub use signing::UrlSigner;
pub use state::{AppState, Dirs, ServerConfig};

use fluxd_store::Store;
use tokio::net::TcpListener;

/// Serves `state` on `listener` until `shutdown` completes, running the worker on `engine` unless
/// `worker` is false (an API-only node), delivering webhooks from the outbox and deleting results
/// past their retention; the store's wake-ups, if it has any, wake the worker and the sender
/// ([`wakeups`]). Drains as described in the crate docs and closes `store` on the way out.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    store: Arc<dyn Store>,
    engine: engine::EngineHandle,
    worker: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wakeups = wakeups::spawn(&state);
    let worker_task = worker.then(|| {
        tokio::spawn(worker::run_worker(
            state.clone(),
            engine.clone(),
            stop_rx.clone(),
        ))
    });
    let janitor = tokio::spawn(worker::run_janitor(state.clone(), stop_rx.clone()));
    // The sender stops after the worker, so the webhook of a task finished while draining is
    // flushed too.
    let (sender_stop_tx, sender_stop_rx) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(webhook::run_sender(state.clone(), sender_stop_rx));
    let mut http_stop = stop_rx;
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {}
                _ = http_stop.wait_for(|stop| *stop) => {}
            }
            tracing::info!("shutting down: no new connections");
        })
        .await
        .map_err(|e| ServerError::io("serving HTTP", e));
    stop_tx.send_replace(true);
    if let Some(task) = worker_task {
        if let Err(err) = task.await {
            tracing::error!(%err, "the worker task failed");
        }
    }
    sender_stop_tx.send_replace(true);
    if let Err(err) = sender.await {
        tracing::error!(%err, "the webhook sender failed");
    }
    if let Err(err) = janitor.await {
        tracing::error!(%err, "the retention task failed");
    }
    store.close().await;
    // Ends by itself once the store is closed.
    if let Some(wakeups) = wakeups {
        wakeups.abort();
    }
    served
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
