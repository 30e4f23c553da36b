//! `fluxd`: a self-hosted, wire-compatible server for fine-tuned FLUX.1 models.
//!
//! This binary wires configuration, telemetry and the subcommands; the work is done by the
//! library crates.

mod bench;
mod control;
mod credits;
mod device;
mod finetunes;
mod generate;
mod hub;
mod keys;
mod location;
mod lora;
mod model;
mod node;
mod placement;
mod progress;
mod serve;
mod store;
mod webhooks;
mod worker;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a request allocates many small, short-lived
/// buffers across threads, which glibc's malloc served with a sixth of the API's CPU time under
/// load (its arena locking and consolidation); the model's large tensors are unaffected.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// fluxd — serve FLUX.1 fine-tunes behind the BFL API, on your own GPUs.
#[derive(Debug, Parser)]
#[command(name = "fluxd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage model folders.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Write the control maps of the Canny and Depth models (edges, depth) as images.
    #[command(subcommand)]
    Control(control::ControlCommand),
    /// Generate one image offline, without the server.
    Generate(Box<generate::GenerateArgs>),
    /// Time the pipeline's steps (and LoRA overhead) on a model folder.
    Bench(Box<bench::BenchArgs>),
    /// Inspect LoRA fine-tune files.
    #[command(subcommand)]
    Lora(lora::LoraCommand),
    /// Serve the HTTP API (and run tasks, unless --no-worker) on a store.
    Serve(Box<serve::ServeArgs>),
    /// Run tasks from the store without serving the API (one per GPU).
    Worker(Box<worker::WorkerArgs>),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Manage credits: tenants' balances and the endpoints' prices.
    #[command(subcommand)]
    Credits(credits::CreditsCommand),
    /// Manage fine-tunes (LoRA files).
    #[command(subcommand)]
    Finetunes(finetunes::FinetunesCommand),
    /// See webhook deliveries and send given-up ones again.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Work on the store as a whole: copy a deployment to another store.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

/// Whether log lines get ANSI colours: only on a terminal, and never with `NO_COLOR` set to
/// anything but the empty string (<https://no-color.org>). Logs written to a file or a pipe stay
/// plain text.
fn log_colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colour())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(cmd) => model::run(cmd),
        Command::Control(cmd) => control::run(cmd),
        Command::Generate(args) => generate::run(*args),
        Command::Lora(cmd) => lora::run(cmd),
        Command::Bench(args) => bench::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::Worker(args) => worker::run(*args),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Credits(cmd) => credits::run(cmd),
        Command::Finetunes(cmd) => finetunes::run(cmd),
        Command::Webhooks(cmd) => webhooks::run(cmd),
        Command::Store(cmd) => store::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Already reported with its reasons.
        Err(e) if e.is::<generate::Moderated>() => std::process::ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
