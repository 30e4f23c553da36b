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
pub mod delivery;
pub mod engine;
pub mod error;
pub mod image_prompt;
pub mod import;
mod lease;
pub mod metrics;
pub mod prices;
pub mod request_id;
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
pub use routes::{app, ops_app};
pub use signing::UrlSigner;
pub use state::{AppState, Dirs, ServerConfig};

use axum::Router;
use fluxd_store::Store;
use tokio::net::TcpListener;

/// What one process runs besides the background work every node shares (webhook delivery from
/// the outbox, deleting results past their retention).
pub struct Node {
    /// HTTP: the listener and what is served on it ([`app`], the whole API, or [`ops_app`], a
    /// worker's health and metrics); None for a worker without `--listen`.
    pub http: Option<(TcpListener, Router)>,
    /// The engine the worker loop feeds; None on an API-only node (`serve --no-worker`), which
    /// loads no model.
    pub worker: Option<engine::EngineHandle>,
}

/// Runs `node` on `state` until `shutdown` completes, delivering webhooks from the outbox and
/// deleting results past their retention; the store's wake-ups, if it has any, wake the worker
/// and the sender ([`wakeups`]). Drains as described in the crate docs and closes `store` on the
/// way out.
pub async fn run(
    node: Node,
    state: AppState,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wakeups = wakeups::spawn(&state);
    let worker_task = node
        .worker
        .map(|engine| tokio::spawn(worker::run_worker(state.clone(), engine, stop_rx.clone())));
    let janitor = tokio::spawn(worker::run_janitor(state.clone(), stop_rx));
    // The sender stops after the worker, so the webhook of a task finished while draining is
    // flushed too.
    let (sender_stop_tx, sender_stop_rx) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(webhook::run_sender(state, sender_stop_rx));
    let served = match node.http {
        Some((listener, router)) => axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections");
            })
            .await
            .map_err(|e| ServerError::io("serving HTTP", e)),
        None => {
            shutdown.await;
            tracing::info!("shutting down");
            Ok(())
        }
    };
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
