//! `fluxd credits …`: tenants' balances and the endpoints' prices. Amounts are credits (decimal
//! numbers, kept to a thousandth); a tenant without a balance is unlimited and an endpoint
//! without a price is free.

use anyhow::{Context, Result};
use clap::Subcommand;
use fluxd_store::{credits_from_milli, credits_to_milli, Price};

use crate::location::StoreLocation;
use crate::serve::block_on;

#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Set a tenant's balance (the tenant is created on first use); `--unlimited` removes it.
    Set {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The new balance, in credits.
        #[arg(required_unless_present = "unlimited", conflicts_with = "unlimited")]
        credits: Option<f64>,
        /// Remove the balance: the tenant's submits are no longer charged.
        #[arg(long)]
        unlimited: bool,
        #[command(flatten)]
        location: StoreLocation,
    },
    /// Add credits to a tenant's balance (negative to take some away; never below 0). Safe
    /// while the server charges submits: the change is atomic.
    Add {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Credits to add.
        #[arg(allow_negative_numbers = true)]
        credits: f64,
        #[command(flatten)]
        location: StoreLocation,
    },
    /// Show balances (one tenant's, or every tenant's that has one) and prices.
    Show {
        /// Only this tenant's balance (`unlimited` when it has none).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        location: StoreLocation,
    },
    /// Set what tasks of an endpoint cost: per task plus per megapixel of output;
    /// `--free` removes the price.
    Price {
        /// The endpoint, e.g. `flux-dev` or `flux-pro-finetuned`.
        endpoint: String,
        /// Credits per task.
        #[arg(long, default_value_t = 0.0, conflicts_with = "free")]
        per_task: f64,
        /// Credits per megapixel of output (`output_mp` of the submit answer).
        #[arg(long, default_value_t = 0.0, conflicts_with = "free")]
        per_megapixel: f64,
        /// Make the endpoint free.
        #[arg(long)]
        free: bool,
        #[command(flatten)]
        location: StoreLocation,
    },
}

/// `credits` as the store keeps it (thousandths), or a clear error.
fn milli(what: &str, credits: f64) -> Result<i64> {
    credits_to_milli(credits).with_context(|| format!("{what} {credits} is not a usable number"))
}

pub fn run(cmd: CreditsCommand) -> Result<()> {
    block_on(async move {
        match cmd {
            CreditsCommand::Set {
                tenant,
                credits,
                unlimited: _,
                location,
            } => {
                let balance = credits.map(|c| milli("the balance", c)).transpose()?;
                let (_, store) = location.open_store().await?;
                let set = store.set_credits(&tenant, balance).await;
                store.close().await;
                set.context("setting the balance")?;
                match balance {
                    Some(b) => println!("{tenant}: {}", credits_from_milli(b)),
                    None => println!("{tenant}: unlimited"),
                }
            }
            CreditsCommand::Add {
                tenant,
                credits,
                location,
            } => {
                let delta = milli("the amount", credits)?;
                let (_, store) = location.open_store().await?;
                let added = store.add_credits(&tenant, delta).await;
                store.close().await;
                let balance = added.context("adding credits")?;
                println!("{tenant}: {}", credits_from_milli(balance));
            }
            CreditsCommand::Show { tenant, location } => {
                let (_, store) = location.open_store().await?;
                let balances = match &tenant {
                    Some(t) => vec![(t.clone(), store.credits(t).await?)],
                    None => store
                        .list_credits()
                        .await?
                        .into_iter()
                        .map(|(t, b)| (t, Some(b)))
                        .collect(),
                };
                let prices = store.prices().await?;
                store.close().await;
                for (tenant, balance) in balances {
                    match balance {
                        Some(b) => println!("balance {tenant}: {}", credits_from_milli(b)),
                        None => println!("balance {tenant}: unlimited"),
                    }
                }
                for (endpoint, price) in prices {
                    println!(
                        "price {endpoint}: {} per task + {} per megapixel",
                        credits_from_milli(price.per_task),
                        credits_from_milli(price.per_megapixel)
                    );
                }
            }
            CreditsCommand::Price {
                endpoint,
                per_task,
                per_megapixel,
                free,
                location,
            } => {
                anyhow::ensure!(
                    fluxd_api::Endpoint::all().any(|e| e.name() == endpoint),
                    "unknown endpoint {endpoint:?}: one of {}",
                    fluxd_api::Endpoint::all()
                        .map(|e| e.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let price = if free {
                    None
                } else {
                    Some(Price {
                        per_task: milli("--per-task", per_task)?,
                        per_megapixel: milli("--per-megapixel", per_megapixel)?,
                    })
                };
                let (_, store) = location.open_store().await?;
                let set = store.set_price(&endpoint, price).await;
                store.close().await;
                set.context("setting the price")?;
                match price {
                    Some(_) => println!(
                        "price {endpoint}: {per_task} per task + {per_megapixel} per megapixel"
                    ),
                    None => println!("price {endpoint}: free"),
                }
            }
        }
        Ok(())
    })
}
