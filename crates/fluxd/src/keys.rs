//! `fluxd keys …`: API keys of tenants.

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::location::StoreLocation;
use crate::serve::block_on;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant (the tenant is created on first use). The key is printed once,
    /// alone on the last line of stdout; only its hash is stored.
    Create {
        /// Tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// A note for operators.
        #[arg(long)]
        label: Option<String>,
        /// Unfinished tasks this key may have (default 24).
        #[arg(long)]
        max_active_tasks: Option<u32>,
        #[command(flatten)]
        location: StoreLocation,
    },
    /// List a tenant's keys (never the secrets).
    List {
        /// Tenant whose keys to list.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        location: StoreLocation,
    },
    /// Revoke a key by its id (shown by `create` and `list`).
    Revoke {
        /// The key id (a UUID).
        key_id: uuid::Uuid,
        #[command(flatten)]
        location: StoreLocation,
    },
}

pub fn run(cmd: KeysCommand) -> Result<()> {
    block_on(async move {
        match cmd {
            KeysCommand::Create {
                tenant,
                label,
                max_active_tasks,
                location,
            } => {
                let (_, store) = location.open_store().await?;
                let key = store
                    .create_key(&tenant, label.as_deref())
                    .await
                    .context("creating the key")?;
                if let Some(limit) = max_active_tasks {
                    store.set_max_active_tasks(key.key_id, limit).await?;
                }
                store.close().await;
                println!("tenant: {}", key.tenant);
                println!("key id: {}", key.key_id);
                println!("{}", key.key);
            }
            KeysCommand::List { tenant, location } => {
                let (_, store) = location.open_store().await?;
                let keys = store.list_keys(&tenant).await?;
                store.close().await;
                for k in keys {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}  {}…  {}  max_active_tasks={}  {}",
                        k.key_id,
                        k.prefix,
                        state,
                        k.max_active_tasks,
                        k.label.unwrap_or_default()
                    );
                }
            }
            KeysCommand::Revoke { key_id, location } => {
                let (_, store) = location.open_store().await?;
                let revoked = store.revoke_key(key_id).await?;
                store.close().await;
                anyhow::ensure!(revoked, "no active key {key_id}");
                println!("revoked {key_id}");
            }
        }
        Ok(())
    })
}
