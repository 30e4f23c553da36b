//! `fluxd worker`: a GPU worker without the API. It claims tasks from the store, runs the engine,
//! writes the images to the blob store and the results to the store, and sends webhooks. It
//! takes no API requests, so it needs no inbound port; with `--listen` it serves `/healthz`,
//! `/readyz` and `/metrics` there.

use std::net::SocketAddr;

use anyhow::{bail, Result};
use fluxd_server::Node;

use crate::location::StoreLocation;
use crate::node::{bind, open_state, run_node, DeliveryArg, EngineArgs, NodeArgs};

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    data: StoreLocation,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Where to serve /healthz, /readyz and /metrics (nothing is served without it; port 0
    /// picks a free one and prints it).
    #[arg(long, env = "FLUXD_WORKER_LISTEN")]
    listen: Option<SocketAddr>,
}

pub fn run(args: WorkerArgs) -> Result<()> {
    run_node(work(args))
}

async fn work(args: WorkerArgs) -> Result<()> {
    args.node.check()?;
    // Webhooks carry the image link; fluxd's own links start with the API's address, which a
    // worker cannot guess from its own. (Presigned links are the object store's.)
    let public_url = match (&args.node.public_url, args.node.delivery) {
        (Some(url), _) => url.clone(),
        (None, DeliveryArg::Presigned) => String::new(),
        (None, DeliveryArg::Signed) => bail!(
            "fluxd worker needs --public-url (the API nodes' base URL, for the image links in \
             webhooks), or --delivery presigned"
        ),
    };
    let data = args.data.open()?;
    let listener = match args.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let engine = args.engine.spawn(&data, args.node.redux().as_ref()).await?;
    let config = args.node.server_config(public_url)?;
    let (state, store) = open_state(&args.data, &data, &args.node, config, engine.watch()).await?;
    let http = match listener {
        Some((listener, addr)) => {
            // One line on stdout for scripts and tests that start it on port 0.
            println!("fluxd worker listening on http://{addr}");
            Some((listener, fluxd_server::ops_app(state.clone())))
        }
        None => None,
    };
    tracing::info!(
        data_dir = %data.root().display(),
        database = %args.data.database(&data),
        "fluxd worker started"
    );
    let node = Node {
        http,
        worker: Some(engine),
    };
    fluxd_server::run(node, state, store, fluxd_server::shutdown_signal()).await?;
    tracing::info!("fluxd worker stopped");
    Ok(())
}
