//! `fluxd webhooks …`: where webhook deliveries stand, and sending given-up ones again.

use anyhow::{bail, Result};
use clap::{Subcommand, ValueEnum};
use fluxd_server::routes::finetunes::rfc3339;
use fluxd_store::WebhookRecord;

use crate::location::StoreLocation;
use crate::serve::block_on;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List deliveries of all tenants' tasks, most recently changed first, one a line: id,
    /// status, attempts, task id, URL, when it last changed (when it is next due, for pending
    /// ones) and the last error.
    List {
        /// Only deliveries in this state.
        #[arg(long, value_enum)]
        status: Option<DeliveryStatus>,
        /// Most deliveries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        location: StoreLocation,
    },
    /// Queue given-up (`failed`) deliveries for one more attempt: a running `fluxd serve` on the
    /// same store sends them within a second. If that attempt fails too, they are
    /// `failed` again, with its error.
    Retry {
        /// The delivery id (from `list`).
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        id: Option<uuid::Uuid>,
        /// Every failed delivery.
        #[arg(long)]
        all_failed: bool,
        #[command(flatten)]
        location: StoreLocation,
    },
}

/// A delivery's state, as the store records it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeliveryStatus {
    /// Queued or waiting for a retry.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after the retry window, or refused (a private address, say).
    Failed,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

pub fn run(cmd: WebhooksCommand) -> Result<()> {
    block_on(async move {
        match cmd {
            WebhooksCommand::List {
                status,
                limit,
                location,
            } => {
                let (_, store) = location.open_store().await?;
                let found = store
                    .list_webhooks(status.map(DeliveryStatus::as_str), limit)
                    .await;
                store.close().await;
                for delivery in found? {
                    println!("{}", line(&delivery));
                }
            }
            WebhooksCommand::Retry {
                id,
                all_failed: _,
                location,
            } => {
                let (_, store) = location.open_store().await?;
                let queued = store.retry_failed_webhooks(id).await;
                store.close().await;
                let queued = queued?;
                if let (Some(id), 0) = (id, queued) {
                    bail!("no failed webhook delivery {id} (see `fluxd webhooks list --status failed`)");
                }
                println!("queued {queued} failed webhook deliveries for one more attempt");
            }
        }
        Ok(())
    })
}

fn line(d: &WebhookRecord) -> String {
    let when = if d.status == "pending" {
        format!("due {}", rfc3339(d.next_attempt_at))
    } else {
        format!("{} {}", d.status, rfc3339(d.updated_at))
    };
    let mut line = format!(
        "{}  {}  attempts={}  task={}  {}  {}",
        d.id, d.status, d.attempts, d.task_id, d.url, when
    );
    if let Some(error) = &d.last_error {
        line.push_str("  last_error: ");
        line.push_str(error);
    }
    line
}
