//! What `fluxd serve` and `fluxd worker` share: the flags of the model and the engine, the flags
//! every node of a deployment must agree on, and opening the state a node runs on.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fluxd_engine::memory_plan::ExtraComponents;
use fluxd_engine::model_dir::{ModelPaths, TransformerSource};
use fluxd_engine::pipeline::DEFAULT_MAX_SEQUENCE_LENGTH;
use fluxd_engine::redux::ReduxPaths;
use fluxd_engine::safety::PromptPolicy;
use fluxd_engine::tiny_model::{TinyPreset, SAFETY_CHECKER_DIR};
use fluxd_engine::transformer::{FluxConfig, FluxTransformer};
use fluxd_server::delivery::Delivery;
use fluxd_server::engine::{spawn_engine, EngineHandle, EngineModels, EngineState};
use fluxd_server::state::DEFAULT_IMAGE_PROMPT_MAX_PIXELS;
use fluxd_server::webhook::WebhookConfig;
use fluxd_server::{AppState, DataDir, Dirs, ServerConfig};
use fluxd_store::{Store, DEFAULT_MAX_ATTEMPTS};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::hub::{self, Fetch, SingleFiles};
use crate::location::StoreLocation;
use crate::placement::{plan_and_check, PlacementArgs};
use crate::serve::{parse_duration, UpsamplerArgs};

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
    /// safetensors (fp8 included) or a GGUF file (city96's `flux1-dev-Q8_0.gguf` ...), told
    /// apart by content, or `owner/repo:file` on the Hugging Face Hub.
    #[arg(long, requires = "model")]
    pub transformer: Option<PathBuf>,
    /// T5 encoder from a single file instead of the folder's `text_encoder_2/` weights: a GGUF
    /// file (city96's `t5-v1_1-xxl-encoder-Q8_0.gguf` ...) or safetensors with transformers
    /// names (ComfyUI's `t5xxl_fp16.safetensors`), or `owner/repo:file` on the Hub.
    #[arg(long, requires = "model")]
    pub t5: Option<PathBuf>,
    /// CLIP text encoder from a single file (safetensors or GGUF with transformers names, e.g.
    /// ComfyUI's `clip_l.safetensors`, or `owner/repo:file` on the Hub) instead of the folder's
    /// `text_encoder/` weights.
    #[arg(long, requires = "model")]
    pub clip: Option<PathBuf>,
    /// VAE from a single BFL `ae.safetensors` (or `owner/repo:file`) instead of the folder's
    /// `vae/`.
    #[arg(long, requires = "model")]
    pub vae: Option<PathBuf>,
}

impl ModelArgs {
    /// The model's files: the given folder or Hub repository (fetched into the Hugging Face
    /// cache), or the data directory's tiny model (made once).
    pub async fn resolve(&self, data: &DataDir) -> Result<ModelPaths> {
        let root = match &self.model {
            Some(root) => root.clone(),
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
        hub::model_paths(&root, self.single_files(), Fetch::Allowed).await
    }

    /// The components given as single files.
    fn single_files(&self) -> SingleFiles<'_> {
        SingleFiles {
            transformer: self.transformer.as_deref(),
            vae: self.vae.as_deref(),
            t5: self.t5.as_deref(),
            clip: self.clip.as_deref(),
        }
    }

    /// The transformer config of the model (what LoRA files are checked against), read from its
    /// files without loading any weight: `transformer/config.json`, or the tensor shapes in a
    /// BFL single file's or a GGUF file's header. A Hub repository gives only its `transformer/config.json` (an
    /// API node fetches no weights); a Hub file named with `--transformer` is fetched. Without
    /// `--model`, the tiny model's, which is what a node without `--model` serves (nothing is
    /// written).
    pub async fn transformer_config(&self) -> Result<FluxConfig> {
        let Some(root) = &self.model else {
            return Ok(TinyPreset::Tiny.transformer_config());
        };
        if let Some(file) = &self.transformer {
            let file = hub::weight_file(file, Fetch::Allowed).await?;
            // A local folder's config gives a GGUF file's RoPE axes (a Hub name's is not fetched:
            // FLUX.1's head size tells them).
            let folder_config =
                Some(root.join("transformer").join("config.json")).filter(|p| p.is_file());
            let source = TransformerSource::file(&file, folder_config)?;
            return Ok(FluxTransformer::config_of(&source)?);
        }
        if let Some(config) =
            hub::repo_file(root, "transformer/config.json", Fetch::Allowed).await?
        {
            return Ok(FluxConfig::from_file(&config)?);
        }
        let paths = ModelPaths::resolve(root, None, self.vae.as_deref())
            .with_context(|| format!("reading the model folder {}", root.display()))?;
        Ok(FluxTransformer::config_of(&paths.transformer)?)
    }
}

/// The model and the engine that runs it (a node with a worker loads them; an API-only node only
/// reads the model's transformer config).
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// NSFW image classifier (a transformers ViTForImageClassification folder, e.g.
    /// Falconsai/nsfw_image_detection) that checks every image against the request's
    /// `safety_tolerance`. Default: `safety_checker/` inside the `--model` folder, if there is
    /// one. (The tiny model's own tiny checker, in `<data-dir>/tiny-model/safety_checker`, is
    /// only used when named here: it flags the tiny model's reddish noise.)
    #[arg(long, env = "FLUXD_SAFETY_CHECKER")]
    pub safety_checker: Option<PathBuf>,
    /// Serve images without the classifier check (prompts are still checked).
    #[arg(long, conflicts_with = "safety_checker")]
    pub no_image_moderation: bool,
}

impl EngineArgs {
    /// Makes the memory plan for the API's largest request (refusing, before anything is
    /// loaded, a model that does not fit), then starts the engine thread, which loads the model
    /// (and `redux`, and the image classifier) in the background; the handle's state says when
    /// it is ready.
    pub async fn spawn(
        &self,
        data: &DataDir,
        redux: Option<&ReduxArg<'_>>,
    ) -> Result<EngineHandle> {
        let paths = self.model.resolve(data).await?;
        let opts = self.placement.load_options()?;
        let redux = match redux {
            Some(ReduxArg { model, siglip }) => Some(
                ReduxPaths::resolve(model, *siglip)
                    .with_context(|| format!("the Redux model {}", model.display()))?,
            ),
            None => None,
        };
        let safety_checker = self.safety_checker(&paths.root);
        let extra = ExtraComponents {
            redux: redux.clone(),
            safety_checker: safety_checker.clone(),
        };
        let side = fluxd_api::limits::SIDE_MAX as usize;
        let workload = extra.workload(side, side, DEFAULT_MAX_SEQUENCE_LENGTH)?;
        plan_and_check(&paths, &self.placement, &opts, workload, &extra)?;
        let models = EngineModels {
            flux: paths,
            redux,
            safety_checker,
        };
        let (engine, _engine_thread) = spawn_engine(models, opts)?;
        Ok(engine)
    }

    /// The image classifier to load: the flag's, else the model folder's `safety_checker/`.
    fn safety_checker(&self, model_root: &Path) -> Option<PathBuf> {
        if self.no_image_moderation {
            tracing::warn!(
                "image moderation is OFF (--no-image-moderation): images are not checked"
            );
            return None;
        }
        if let Some(dir) = &self.safety_checker {
            return Some(dir.clone());
        }
        let bundled = model_root.join(SAFETY_CHECKER_DIR);
        if self.model.model.is_some() && bundled.join("config.json").is_file() {
            return Some(bundled);
        }
        tracing::warn!(
            "NO SAFETY CHECKER: images are served unchecked; pass --safety-checker DIR (e.g. \
             Falconsai/nsfw_image_detection) or --no-image-moderation to silence this"
        );
        None
    }
}

/// The Redux model named on the command line.
pub struct ReduxArg<'a> {
    /// `--redux-model`.
    pub model: &'a Path,
    /// `--siglip`.
    pub siglip: Option<&'a Path>,
}

/// How image URLs are made (`--delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryArg {
    /// fluxd's own signed URL; the API nodes stream the image from the blob store.
    Signed,
    /// The object store's presigned GET URL (needs --blobs s3://...), as long-lived: image bytes
    /// bypass the API nodes.
    Presigned,
}

/// Settings every node of a deployment (API nodes and workers) should be given alike: they
/// shape the tasks, the image URLs and the webhooks any node may produce.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Base URL clients reach the API at (polling and image URLs start with it). Default for
    /// `serve`: http://<listen address>; a worker needs it for the image links in webhooks.
    #[arg(long, env = "FLUXD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Lifetime of the image URLs in get_result and webhooks (e.g. 600s, 10m, 1h).
    #[arg(long, env = "FLUXD_RESULT_URL_TTL", default_value = "600s", value_parser = parse_duration)]
    pub result_url_ttl: Duration,
    /// Image URLs: `signed` (fluxd's own, streamed by the API nodes) or `presigned` (the S3
    /// store's own presigned URL, same lifetime).
    #[arg(long, env = "FLUXD_DELIVERY", value_enum, default_value = "signed")]
    pub delivery: DeliveryArg,
    /// How long finished tasks and their images are kept (e.g. 24h); then get_result says
    /// `Task not found`.
    #[arg(long, env = "FLUXD_RESULT_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub result_retention: Duration,
    /// A claimed task's lease: after a crash, its task runs again this long after the worker's
    /// last heartbeat (e.g. 60s).
    #[arg(long, env = "FLUXD_TASK_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub task_lease: Duration,
    /// Store a preview of a running task (a small JPEG of its current latents, shown by
    /// get_result as `preview`) every this many denoising steps; 0: no previews.
    #[arg(long, env = "FLUXD_PREVIEW_EVERY", default_value_t = fluxd_server::state::DEFAULT_PREVIEW_EVERY)]
    pub preview_every: u32,
    /// Runs a task may start (a crash or kill interrupting a run counts one) before it ends as
    /// `Error`; stored on each task at submit.
    #[arg(long, env = "FLUXD_MAX_TASK_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_task_attempts: u32,
    /// On SIGTERM, how long the running task may take to finish (then it goes back to the queue)
    /// and how long the webhook outbox is flushed.
    #[arg(long, env = "FLUXD_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Call webhook URLs on loopback, private, link-local and other non-public addresses too
    /// (refused by default: callers choose webhook URLs, so this is an SSRF switch).
    #[arg(long, env = "FLUXD_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// Time for one webhook attempt (e.g. 15s).
    #[arg(long, env = "FLUXD_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
    /// How long a failing webhook is retried before it is recorded as failed (e.g. 24h).
    #[arg(long, env = "FLUXD_WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = parse_duration)]
    pub webhook_retry_for: Duration,
    /// Delay before a failed webhook's first retry; each further retry doubles it (up to 1h).
    #[arg(long, env = "FLUXD_WEBHOOK_RETRY_BASE", default_value = "5s", value_parser = parse_duration)]
    pub webhook_retry_base: Duration,
    /// Do not send `X-Webhook-Secret: <webhook_secret>` with webhooks (sent by default, as the
    /// reference does and the official SDK's verifier expects); the two HMAC signatures are sent
    /// either way. For receivers reached over plain HTTP, where the secret would travel readable.
    #[arg(long, env = "FLUXD_WEBHOOK_NO_SECRET_HEADER")]
    pub webhook_no_secret_header: bool,
    /// Prompt policy file added to the built-in list: one term per line, `always: TERM` blocked
    /// at every tolerance, `N: TERM` allowed from tolerance N up, `TERM` allowed only at 6.
    #[arg(long, env = "FLUXD_PROMPT_POLICY")]
    pub prompt_policy: Option<PathBuf>,
    /// Flux Redux model for `image_prompt`: a FLUX.1-Redux-dev folder (image_encoder/,
    /// feature_extractor/, image_embedder/) or a `flux1-redux-dev.safetensors` file (then give
    /// `--siglip`). `fluxd model init-tiny DIR` writes a tiny one in DIR/redux. Without it,
    /// requests with `image_prompt` get a 422. An API-only node (`serve --no-worker`) reads no
    /// file of it: the flag only makes it accept image prompts, which its workers run.
    #[arg(long, env = "FLUXD_REDUX_MODEL")]
    pub redux_model: Option<PathBuf>,
    /// SigLIP vision model folder, when `--redux-model` has no image_encoder/.
    #[arg(long, env = "FLUXD_SIGLIP", requires = "redux_model")]
    pub siglip: Option<PathBuf>,
    /// Largest `image_prompt` in pixels (larger images and decompression bombs get a 422).
    #[arg(long, env = "FLUXD_IMAGE_PROMPT_MAX_PIXELS", default_value_t = DEFAULT_IMAGE_PROMPT_MAX_PIXELS)]
    pub image_prompt_max_pixels: u64,
    #[command(flatten)]
    pub upsampler: UpsamplerArgs,
}

impl NodeArgs {
    /// Refuses settings that cannot work.
    pub fn check(&self) -> Result<()> {
        if self.task_lease < Duration::from_secs(1) {
            bail!("--task-lease must be at least 1s (heartbeats renew it four times per lease)");
        }
        if self.webhook_timeout.is_zero() {
            bail!("--webhook-timeout must be more than 0s");
        }
        // SigV4 presigned URLs live at most 7 days.
        if self.delivery == DeliveryArg::Presigned
            && self.result_url_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            bail!("--result-url-ttl can be at most 7 days with --delivery presigned");
        }
        Ok(())
    }

    /// The Redux model, if one is named.
    pub fn redux(&self) -> Option<ReduxArg<'_>> {
        self.redux_model.as_deref().map(|model| ReduxArg {
            model,
            siglip: self.siglip.as_deref(),
        })
    }

    /// The server settings these flags give, for an API reachable at `public_url` (settings of
    /// the HTTP API alone keep their defaults; `serve` sets them).
    pub fn server_config(&self, public_url: String) -> Result<ServerConfig> {
        let mut prompt_policy = PromptPolicy::builtin();
        if let Some(file) = &self.prompt_policy {
            let own = PromptPolicy::from_file(file)
                .with_context(|| format!("reading the prompt policy {}", file.display()))?;
            tracing::info!(terms = own.len(), file = %file.display(), "prompt policy loaded");
            prompt_policy.extend(own);
        }
        Ok(ServerConfig {
            result_url_ttl: self.result_url_ttl,
            delivery: match self.delivery {
                DeliveryArg::Signed => Delivery::Signed,
                DeliveryArg::Presigned => Delivery::Presigned,
            },
            result_retention: self.result_retention,
            webhooks: WebhookConfig {
                allow_private: self.webhook_allow_private,
                timeout: self.webhook_timeout,
                retry_for: self.webhook_retry_for,
                retry_base: self.webhook_retry_base.max(Duration::from_millis(100)),
                secret_header: !self.webhook_no_secret_header,
                ..WebhookConfig::default()
            },
            task_lease: self.task_lease,
            preview_every: self.preview_every,
            drain_timeout: self.drain_timeout,
            upsampler: self.upsampler.build()?,
            image_prompt_max_pixels: self
                .redux_model
                .is_some()
                .then_some(self.image_prompt_max_pixels),
            prompt_policy: Arc::new(prompt_policy),
            ..ServerConfig::new(public_url)
        })
    }
}

/// Runs a node (`serve`, `worker`) to its end on a multi-threaded runtime.
pub fn run_node(node: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(node)
}

/// Listens on `addr` (port 0 picks a free one); returns the listener and its actual address.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    Ok((listener, bound))
}

/// A node's shared state, opened on `location` (whose data directory is `data`) with `config`;
/// `engine` is what the node knows of the model (the engine's own state, or
/// [`fluxd_server::engine::config_only`]).
pub async fn open_state(
    location: &StoreLocation,
    data: &DataDir,
    node: &NodeArgs,
    config: ServerConfig,
    engine: watch::Receiver<EngineState>,
) -> Result<(AppState, Arc<dyn Store>)> {
    let blobs = location.blobs(data)?;
    if node.delivery == DeliveryArg::Presigned && !blobs.can_presign() {
        bail!("--delivery presigned needs an S3 blob store (--blobs s3://bucket/prefix)");
    }
    let store = location.store(data, node.max_task_attempts).await?;
    let signer = location.signer(data, store.as_ref()).await?;
    let state = AppState::new(
        store.clone(),
        blobs,
        signer,
        config,
        engine,
        Dirs {
            tmp: data.tmp(),
            lora_cache: data.lora_cache(),
        },
    );
    Ok((state, store))
}
