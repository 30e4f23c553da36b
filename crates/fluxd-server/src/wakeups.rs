//! Wake-ups from the store, for work other processes made (a submit on another API node, a task
//! handed back by another worker, a webhook made due elsewhere): passed to this process's
//! worker and webhook sender, which would otherwise find that work at their next poll.

use fluxd_store::{Wakeup, Wakeups};
use tokio::task::JoinHandle;

use crate::state::AppState;

/// Passes `wakeups` on until the store closes.
pub async fn forward(state: AppState, mut wakeups: Wakeups) {
    while let Some(wakeup) = wakeups.next().await {
        let (tasks, webhooks) = match wakeup {
            Wakeup::TaskQueued => (true, false),
            Wakeup::WebhookDue => (false, true),
            Wakeup::Missed => (true, true),
        };
        if tasks {
            state.wake().notify_one();
        }
        if webhooks {
            state.webhook_wake().notify_one();
        }
    }
}

/// Starts [`forward`] when the store offers wake-ups (SQLite's come from this process only,
/// through the same [`AppState::wake`] the submit route pokes).
pub fn spawn(state: &AppState) -> Option<JoinHandle<()>> {
    let wakeups = state.store().subscribe()?;
    Some(tokio::spawn(forward(state.clone(), wakeups)))
}
