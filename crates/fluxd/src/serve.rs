//! `fluxd serve`: the HTTP API, the engine thread and the worker, on one data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fluxd_engine::model_dir::ModelPaths;
use fluxd_engine::redux::ReduxPaths;
use fluxd_engine::safety::PromptPolicy;
use fluxd_engine::tiny_model::SAFETY_CHECKER_DIR;
use fluxd_engine::transformer::{FluxConfig, FluxTransformer};
use fluxd_server::engine::{spawn_engine, EngineModels};
use fluxd_server::state::{
    DEFAULT_IMAGE_PROMPT_MAX_PIXELS, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_UPLOAD_BYTES,
};
use fluxd_server::upsample::{Upsampler, UpsamplerConfig};
use fluxd_server::webhook::WebhookConfig;
use fluxd_server::{AppState, DataDir, Dirs, ServerConfig};
use fluxd_store::{SqliteOptions, Store, DEFAULT_MAX_ACTIVE_TASKS, DEFAULT_MAX_ATTEMPTS};

use crate::hub::{self, Fetch};
use crate::placement::{plan_and_check, PlacementArgs};
use fluxd_engine::memory_plan::ExtraComponents;
use fluxd_engine::pipeline::DEFAULT_MAX_SEQUENCE_LENGTH;

/// Where the shared state lives; every command that touches the store takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// Data directory: the SQLite store, blobs, the URL signing key, the tiny model.
    #[arg(long, env = "FLUXD_DATA_DIR", default_value = "./fluxd-data")]
    pub data_dir: PathBuf,
}

impl DataDirArgs {
    /// Opens (creating) the data directory.
    pub fn open(&self) -> Result<DataDir> {
        DataDir::open(&self.data_dir)
            .with_context(|| format!("opening the data directory {}", self.data_dir.display()))
    }
}

/// Which model to serve.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model folder (diffusers FLUX.1 layout, or one with flux1-dev.safetensors + ae.safetensors)
    /// or a Hugging Face repo id (`black-forest-labs/FLUX.1-dev[@rev]`, fetched into the HF
    /// cache; a local path that exists wins). Without it, a tiny random model is created in
    /// <data-dir>/tiny-model and served.
    #[arg(long, env = "FLUXD_MODEL")]
    pub model: Option<PathBuf>,
    /// Transformer from a single file instead of the folder's `transformer/`: BFL/ComfyUI
    /// safetensors (fp8 included) or `owner/repo:file` on the Hugging Face Hub.
    #[arg(long, requires = "model")]
    pub transformer: Option<PathBuf>,
    /// VAE from a single BFL `ae.safetensors` instead of the folder's `vae/`.
    #[arg(long, requires = "model")]
    pub vae: Option<PathBuf>,
}

impl ModelArgs {
    /// The model's files: the given folder or Hub repository (fetched into the Hugging Face
    /// cache), or the data directory's tiny model (made once).
    pub async fn resolve(&self, data: &DataDir) -> Result<ModelPaths> {
        let root = match &self.model {
            Some(model) => model.clone(),
            None => {
                let (dir, created) = data
                    .ensure_tiny_model()
                    .context("creating the tiny model")?;
                tracing::warn!(
                    model = %dir.display(),
                    created,
                    "NO --model GIVEN: serving a TINY RANDOM model that makes noise images, \
                     for trying the API only; pass --model DIR for real images"
                );
                dir
            }
        };
        hub::model_paths(
            &root,
            self.transformer.as_deref(),
            self.vae.as_deref(),
            Fetch::Allowed,
        )
        .await
    }
}

/// The transformer config of a model (to check LoRA files against), from its `config.json` or
/// its file's header: no weights are read.
pub fn transformer_config(paths: &ModelPaths) -> Result<FluxConfig> {
    Ok(FluxTransformer::config_of(&paths.transformer)?)
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data: DataDirArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, env = "FLUXD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL clients reach this server at (polling and image URLs start with it). Default:
    /// http://<listen address>.
    #[arg(long, env = "FLUXD_PUBLIC_URL")]
    public_url: Option<String>,
    /// Most unfinished tasks one API key may have; the next submit gets 429.
    #[arg(long, env = "FLUXD_MAX_ACTIVE_TASKS", default_value_t = DEFAULT_MAX_ACTIVE_TASKS)]
    max_active_tasks: u32,
    /// Lifetime of the signed image URLs in get_result (e.g. 600s, 10m, 1h).
    #[arg(long, env = "FLUXD_RESULT_URL_TTL", default_value = "600s", value_parser = parse_duration)]
    result_url_ttl: Duration,
    /// How long finished tasks and their images are kept (e.g. 24h); then get_result says
    /// `Task not found`.
    #[arg(long, env = "FLUXD_RESULT_RETENTION", default_value = "24h", value_parser = parse_duration)]
    result_retention: Duration,
    /// Largest LoRA upload in bytes.
    #[arg(long, env = "FLUXD_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    /// Largest JSON request body in bytes.
    #[arg(long, env = "FLUXD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Call webhook URLs on loopback, private, link-local and other non-public addresses too
    /// (refused by default: callers choose webhook URLs, so this is an SSRF switch).
    #[arg(long, env = "FLUXD_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
    /// Time for one webhook attempt (e.g. 15s).
    #[arg(long, env = "FLUXD_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    webhook_timeout: Duration,
    /// How long a failing webhook is retried before it is recorded as failed (e.g. 24h).
    #[arg(long, env = "FLUXD_WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = parse_duration)]
    webhook_retry_for: Duration,
    /// A claimed task's lease: after a crash, its task runs again this long after the worker's
    /// last heartbeat (e.g. 60s).
    #[arg(long, env = "FLUXD_TASK_LEASE", default_value = "60s", value_parser = parse_duration)]
    task_lease: Duration,
    /// Runs a task may start (a crash or kill interrupting a run counts one) before it ends as
    /// `Error`; stored on each task at submit.
    #[arg(long, env = "FLUXD_MAX_TASK_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_task_attempts: u32,
    /// Delay before a failed webhook's first retry; each further retry doubles it (up to 1h).
    #[arg(long, env = "FLUXD_WEBHOOK_RETRY_BASE", default_value = "5s", value_parser = parse_duration)]
    webhook_retry_base: Duration,
    /// On SIGTERM, how long the running task may take to finish (then it goes back to the queue)
    /// and how long the webhook outbox is flushed.
    #[arg(long, env = "FLUXD_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    drain_timeout: Duration,
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
    /// NSFW image classifier (a transformers ViTForImageClassification folder, e.g.
    /// Falconsai/nsfw_image_detection) that checks every image against the request's
    /// `safety_tolerance`. Default: `safety_checker/` inside the `--model` folder, if there is
    /// one. (The tiny model's own tiny checker, in `<data-dir>/tiny-model/safety_checker`, is
    /// only used when named here: it flags the tiny model's reddish noise.)
    #[arg(long, env = "FLUXD_SAFETY_CHECKER")]
    safety_checker: Option<PathBuf>,
    /// Serve images without the classifier check (prompts are still checked).
    #[arg(long, conflicts_with = "safety_checker")]
    no_image_moderation: bool,
    /// Prompt policy file added to the built-in list: one term per line, `always: TERM` blocked
    /// at every tolerance, `N: TERM` allowed from tolerance N up, `TERM` allowed only at 6.
    #[arg(long, env = "FLUXD_PROMPT_POLICY")]
    prompt_policy: Option<PathBuf>,
    /// Flux Redux model for `image_prompt`: a FLUX.1-Redux-dev folder (image_encoder/,
    /// feature_extractor/, image_embedder/) or a `flux1-redux-dev.safetensors` file (then give
    /// `--siglip`). `fluxd model init-tiny DIR` writes a tiny one in DIR/redux. Without it,
    /// requests with `image_prompt` get a 422.
    #[arg(long, env = "FLUXD_REDUX_MODEL")]
    redux_model: Option<PathBuf>,
    /// SigLIP vision model folder, when `--redux-model` has no image_encoder/.
    #[arg(long, env = "FLUXD_SIGLIP", requires = "redux_model")]
    siglip: Option<PathBuf>,
    /// Largest `image_prompt` in pixels (larger images and decompression bombs get a 422).
    #[arg(long, env = "FLUXD_IMAGE_PROMPT_MAX_PIXELS", default_value_t = DEFAULT_IMAGE_PROMPT_MAX_PIXELS)]
    image_prompt_max_pixels: u64,
    #[command(flatten)]
    upsampler: UpsamplerArgs,
    /// Serve the API without running tasks (another process on the same data directory runs
    /// them).
    #[arg(long)]
    no_worker: bool,
    #[command(flatten)]
    placement: PlacementArgs,
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

pub fn run(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    if args.task_lease < Duration::from_secs(1) {
        bail!("--task-lease must be at least 1s (heartbeats renew it four times per lease)");
    }
    if args.webhook_timeout.is_zero() {
        bail!("--webhook-timeout must be more than 0s");
    }
    let data = args.data.open()?;
    let paths = args.model.resolve(&data).await?;
    let opts = args.placement.load_options()?;
    let options = SqliteOptions {
        max_attempts: args.max_task_attempts,
        ..SqliteOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(
        data.store_with(options)
            .await
            .context("opening the store")?,
    );
    let blobs = data.blobs().context("opening the blob store")?;
    let signer = data.signer().context("loading the URL signing key")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let redux = match &args.redux_model {
        Some(redux) => Some(
            ReduxPaths::resolve(redux, args.siglip.as_deref())
                .with_context(|| format!("the Redux model {}", redux.display()))?,
        ),
        None => None,
    };
    let image_prompt_max_pixels = redux.is_some().then_some(args.image_prompt_max_pixels);
    let safety_checker = safety_checker(&args, &paths.root);
    let mut prompt_policy = PromptPolicy::builtin();
    if let Some(file) = &args.prompt_policy {
        let own = PromptPolicy::from_file(file)
            .with_context(|| format!("reading the prompt policy {}", file.display()))?;
        tracing::info!(terms = own.len(), file = %file.display(), "prompt policy loaded");
        prompt_policy.extend(own);
    }
    // The plan covers the largest request the API accepts.
    let side = fluxd_api::limits::SIDE_MAX as usize;
    let extra = ExtraComponents {
        redux: redux.clone(),
        safety_checker: safety_checker.clone(),
    };
    let workload = extra.workload(side, side, DEFAULT_MAX_SEQUENCE_LENGTH)?;
    plan_and_check(&paths, &args.placement, &opts, workload, &extra)?;
    let models = EngineModels {
        flux: paths,
        redux,
        safety_checker,
    };
    let (engine, _engine_thread) = spawn_engine(models, opts)?;
    let config = ServerConfig {
        max_active_tasks: args.max_active_tasks,
        result_url_ttl: args.result_url_ttl,
        result_retention: args.result_retention,
        max_upload_bytes: args.max_upload_bytes,
        max_request_bytes: args.max_request_bytes,
        webhooks: WebhookConfig {
            allow_private: args.webhook_allow_private,
            timeout: args.webhook_timeout,
            retry_for: args.webhook_retry_for,
            retry_base: args.webhook_retry_base.max(Duration::from_millis(100)),
            ..WebhookConfig::default()
        },
        task_lease: args.task_lease,
        drain_timeout: args.drain_timeout,
        auth_cache_ttl: args.auth_cache_ttl,
        task_cache_ttl: args.task_cache_ttl,
        finetune_cache_ttl: args.finetune_cache_ttl,
        upsampler: args.upsampler.build()?,
        image_prompt_max_pixels,
        prompt_policy: Arc::new(prompt_policy),
        ..ServerConfig::new(public_url.clone())
    };
    let state = AppState::new(
        store.clone(),
        blobs,
        signer,
        config,
        engine.watch(),
        Dirs {
            tmp: data.tmp(),
            lora_cache: data.lora_cache(),
        },
    );
    tracing::info!(%addr, public_url, data_dir = %data.root().display(), "fluxd serving");
    // One line on stdout for scripts and tests that start the server on port 0.
    println!("fluxd listening on http://{addr}");
    fluxd_server::run(
        listener,
        state,
        store,
        engine,
        !args.no_worker,
        fluxd_server::shutdown_signal(),
    )
    .await?;
    tracing::info!("fluxd stopped");
    Ok(())
}

/// The image classifier to load: the flag's, else the model folder's `safety_checker/`.
fn safety_checker(args: &ServeArgs, model_root: &Path) -> Option<PathBuf> {
    if args.no_image_moderation {
        tracing::warn!("image moderation is OFF (--no-image-moderation): images are not checked");
        return None;
    }
    if let Some(dir) = &args.safety_checker {
        return Some(dir.clone());
    }
    let bundled = model_root.join(SAFETY_CHECKER_DIR);
    if args.model.model.is_some() && bundled.join("config.json").is_file() {
        return Some(bundled);
    }
    tracing::warn!(
        "NO SAFETY CHECKER: images are served unchecked; pass --safety-checker DIR (e.g. \
         Falconsai/nsfw_image_detection) or --no-image-moderation to silence this"
    );
    None
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
}
