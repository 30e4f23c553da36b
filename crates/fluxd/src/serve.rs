//! `fluxd serve`: the HTTP API, and (unless `--no-worker`) the engine thread and the worker, on
//! one store.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fluxd_server::engine::config_only;
use fluxd_server::state::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_UPLOAD_BYTES};
use fluxd_server::upsample::{Upsampler, UpsamplerConfig};
use fluxd_server::Node;
use fluxd_store::DEFAULT_MAX_ACTIVE_TASKS;

use crate::location::StoreLocation;
use crate::node::{bind, open_state, run_node, EngineArgs, NodeArgs};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data: StoreLocation,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, env = "FLUXD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Most unfinished tasks one API key may have; the next submit gets 429.
    #[arg(long, env = "FLUXD_MAX_ACTIVE_TASKS", default_value_t = DEFAULT_MAX_ACTIVE_TASKS)]
    max_active_tasks: u32,
    /// Largest LoRA upload in bytes.
    #[arg(long, env = "FLUXD_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    /// Largest JSON request body in bytes.
    #[arg(long, env = "FLUXD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// How long an authenticated API key is remembered (0s: never). A key revoked or re-limited
    /// by another process (`fluxd keys revoke`) keeps working this long.
    #[arg(long, env = "FLUXD_AUTH_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    auth_cache_ttl: Duration,
    /// How long get_result answers an unfinished task from memory (0s: no task cache). Finished
    /// tasks are kept until their retention ends; this server's worker drops what it changes, a
    /// worker in another process is seen up to this late.
    #[arg(long, env = "FLUXD_TASK_CACHE_TTL", default_value = "200ms", value_parser = parse_duration)]
    task_cache_ttl: Duration,
    /// How long submit remembers a fine-tune it found (0s: never); a fine-tune deleted by another
    /// process can still be submitted to this long.
    #[arg(long, env = "FLUXD_FINETUNE_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    finetune_cache_ttl: Duration,
    /// Size of `flux-pro-1.1-ultra` images in megapixels of 1024² pixels, at most 4 (the
    /// reference's: 2752×1536 for 16:9); lower it to make ultra cheaper. Fixed for a task when it
    /// is accepted.
    #[arg(long, env = "FLUXD_ULTRA_MEGAPIXELS", default_value_t = fluxd_api::ULTRA_MEGAPIXELS_DEFAULT,
          value_parser = parse_megapixels)]
    ultra_megapixels: f64,
    /// An API-only node: serve the API without running tasks (`fluxd worker` processes on the
    /// same store run them). It loads no model: LoRA uploads are checked against the
    /// transformer config of `--model` (its `transformer/config.json`, or a BFL file's header),
    /// or the tiny model's without `--model`.
    #[arg(long)]
    no_worker: bool,
}

/// Parses `600`, `600s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .with_context(|| format!("`{s}` is not a duration like 600s, 10m or 1h"))?;
    if unit == "ms" {
        return Ok(Duration::from_millis(n));
    }
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => bail!("unknown duration unit `{other}` in `{s}` (use ms, s, m or h)"),
    };
    let secs = n
        .checked_mul(scale)
        .with_context(|| format!("`{s}` is too long"))?;
    Ok(Duration::from_secs(secs))
}

/// Parses `--ultra-megapixels`: more than 0, at most 4.
fn parse_megapixels(s: &str) -> Result<f64> {
    let mp: f64 = s
        .trim()
        .parse()
        .with_context(|| format!("`{s}` is not a number of megapixels like 4 or 1.5"))?;
    if !(mp > 0.0 && mp <= fluxd_api::ULTRA_MEGAPIXELS_DEFAULT) {
        bail!("megapixels must be more than 0 and at most 4, got {s}");
    }
    Ok(mp)
}

pub fn run(args: ServeArgs) -> Result<()> {
    run_node(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    args.node.check()?;
    let data = args.data.open()?;
    let (listener, addr) = bind(args.listen).await?;
    let public_url = args
        .node
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    // An API-only node loads no model: it knows only the transformer config, to check uploads.
    let (worker, model) = if args.no_worker {
        let cfg = args
            .engine
            .model
            .transformer_config()
            .await
            .context("reading the model's transformer config")?;
        (None, config_only(cfg))
    } else {
        let engine = args.engine.spawn(&data, args.node.redux().as_ref()).await?;
        let model = engine.watch();
        (Some(engine), model)
    };
    let config = fluxd_server::ServerConfig {
        max_active_tasks: args.max_active_tasks,
        max_upload_bytes: args.max_upload_bytes,
        max_request_bytes: args.max_request_bytes,
        auth_cache_ttl: args.auth_cache_ttl,
        task_cache_ttl: args.task_cache_ttl,
        finetune_cache_ttl: args.finetune_cache_ttl,
        ultra_megapixels: args.ultra_megapixels,
        ..args.node.server_config(public_url.clone())?
    };
    let (state, store) = open_state(&args.data, &data, &args.node, config, model).await?;
    tracing::info!(
        %addr,
        public_url,
        data_dir = %data.root().display(),
        database = %args.data.database(&data),
        worker = worker.is_some(),
        "fluxd serving"
    );
    // One line on stdout for scripts and tests that start the server on port 0.
    println!("fluxd listening on http://{addr}");
    let node = Node {
        http: Some((listener, fluxd_server::app(state.clone()))),
        worker,
    };
    fluxd_server::run(node, state, store, fluxd_server::shutdown_signal()).await?;
    tracing::info!("fluxd stopped");
    Ok(())
}

/// The language model that rewrites prompts (`prompt_upsampling`), shared by `serve` and
/// `generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpsamplerArgs {
    /// OpenAI-compatible API that rewrites prompts for `prompt_upsampling` (e.g.
    /// http://127.0.0.1:8081/v1 for llama.cpp's server, http://127.0.0.1:11434/v1 for Ollama).
    /// Without it such requests get a 422.
    #[arg(long, env = "FLUXD_UPSAMPLER_URL", requires = "upsampler_model")]
    pub upsampler_url: Option<String>,
    /// Model name sent to the upsampler.
    #[arg(long, env = "FLUXD_UPSAMPLER_MODEL")]
    pub upsampler_model: Option<String>,
    /// Bearer token for the upsampler (prefer the environment variable).
    #[arg(long, env = "FLUXD_UPSAMPLER_KEY", hide_env_values = true)]
    pub upsampler_key: Option<String>,
    /// Time for one prompt rewrite.
    #[arg(long, env = "FLUXD_UPSAMPLER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upsampler_timeout: Duration,
}

impl UpsamplerArgs {
    /// The upsampler the flags describe, if any.
    pub fn build(&self) -> Result<Option<Upsampler>> {
        let (Some(url), Some(model)) = (&self.upsampler_url, &self.upsampler_model) else {
            return Ok(None);
        };
        let upsampler = Upsampler::new(UpsamplerConfig {
            url: url.clone(),
            model: model.clone(),
            api_key: self.upsampler_key.clone(),
            timeout: self.upsampler_timeout,
        })?;
        tracing::info!(
            endpoint = upsampler.config().endpoint(),
            model,
            "prompt upsampling enabled"
        );
        Ok(Some(upsampler))
    }
}

/// Shared by the store-only subcommands: runs `f` on a one-thread runtime.
pub fn block_on<T, F: std::future::Future<Output = Result<T>>>(f: F) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

/// The path as given, for messages.
pub fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("600").expect("duration"),
            Duration::from_secs(600)
        );
        assert_eq!(
            parse_duration("600s").expect("duration"),
            Duration::from_secs(600)
        );
        assert_eq!(
            parse_duration("10m").expect("duration"),
            Duration::from_secs(600)
        );
        assert_eq!(
            parse_duration("1h").expect("duration"),
            Duration::from_secs(3600)
        );
        assert_eq!(
            parse_duration("200ms").expect("duration"),
            Duration::from_millis(200)
        );
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn megapixels() {
        assert_eq!(parse_megapixels("4").expect("mp"), 4.0);
        assert_eq!(parse_megapixels("0.25").expect("mp"), 0.25);
        for bad in ["0", "-1", "4.5", "nan", "inf", "x"] {
            assert!(parse_megapixels(bad).is_err(), "{bad}");
        }
    }
}
