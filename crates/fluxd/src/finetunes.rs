//! `fluxd finetunes …`: importing LoRA files as fine-tunes, listing and deleting them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use fluxd_server::import::{import_lora, ImportOptions, StagedFile};
use fluxd_store::DEFAULT_MAX_ATTEMPTS;

use crate::location::StoreLocation;
use crate::node::ModelArgs;
use crate::serve::{block_on, shown};

#[derive(Debug, Subcommand)]
pub enum FinetunesCommand {
    /// Validate a LoRA .safetensors file against the served model and store it as a fine-tune,
    /// exactly as the upload endpoint does.
    Import {
        /// Owning tenant.
        #[arg(long)]
        tenant: String,
        /// Fine-tune name (the `finetune_id` clients send).
        #[arg(long)]
        id: String,
        /// The LoRA file.
        file: PathBuf,
        /// Word that triggers the fine-tuned concept.
        #[arg(long)]
        trigger_word: Option<String>,
        /// A note.
        #[arg(long)]
        comment: Option<String>,
        /// Let other tenants use it as `<tenant>/<id>`.
        #[arg(long)]
        shared: bool,
        #[command(flatten)]
        location: StoreLocation,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// List a tenant's fine-tunes.
    List {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        location: StoreLocation,
    },
    /// Delete a tenant's fine-tune and its file.
    Delete {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Fine-tune name.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        location: StoreLocation,
    },
}

pub fn run(cmd: FinetunesCommand) -> Result<()> {
    block_on(async move {
        match cmd {
            FinetunesCommand::Import {
                tenant,
                id,
                file,
                trigger_word,
                comment,
                shared,
                location,
                model,
            } => {
                let dir = location.open()?;
                let cfg = model
                    .transformer_config()
                    .await
                    .context("reading the transformer config")?;
                let staged = StagedFile::hash(&file)?;
                let blobs = location.blobs(&dir)?;
                let store = location.store(&dir, DEFAULT_MAX_ATTEMPTS).await?;
                let options = ImportOptions {
                    id,
                    trigger_word,
                    comment,
                    shared,
                };
                let result =
                    import_lora(store.as_ref(), &blobs, &cfg, &tenant, options, &staged).await;
                store.close().await;
                let record = result.with_context(|| format!("importing {}", shown(&file)))?;
                println!(
                    "imported {} for tenant {}: {} LoRA, rank {}, {} bytes, sha256 {}",
                    record.id,
                    record.tenant,
                    record.format,
                    record.rank,
                    record.size_bytes,
                    record.sha256
                );
                println!("{}", record.id);
            }
            FinetunesCommand::List { tenant, location } => {
                let (_, store) = location.open_store().await?;
                let names = store.list_finetunes(&tenant).await?;
                store.close().await;
                for name in names {
                    println!("{name}");
                }
            }
            FinetunesCommand::Delete {
                tenant,
                id,
                location,
            } => {
                let dir = location.open()?;
                let blobs = location.blobs(&dir)?;
                let store = location.store(&dir, DEFAULT_MAX_ATTEMPTS).await?;
                let deleted = store.delete_finetune(&tenant, &id).await?;
                store.close().await;
                let record =
                    deleted.with_context(|| format!("tenant {tenant} has no fine-tune {id}"))?;
                blobs.delete(&record.blob_key).await?;
                println!("deleted {id}");
            }
        }
        Ok(())
    })
}
