//! What every handler and the worker share: the store, blobs, the URL signer, the engine's state
//! and the server's settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fluxd_store::{BlobStore, Store, DEFAULT_MAX_ACTIVE_TASKS};
use tokio::sync::{watch, Notify};

use crate::cache::{
    AuthCache, FinetuneCache, TaskCache, DEFAULT_AUTH_CACHE_TTL, DEFAULT_FINETUNE_CACHE_TTL,
    DEFAULT_TASK_CACHE_TTL,
};
use crate::delivery::Delivery;
use crate::engine::EngineState;
use crate::prices::PriceCache;
use crate::signing::UrlSigner;
use fluxd_engine::safety::PromptPolicy;

use crate::upsample::Upsampler;
use crate::webhook::WebhookConfig;

/// Default request body limit of the JSON endpoints: a base64 image prompt of a large PNG fits.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 32 << 20;
/// Default LoRA upload limit (FLUX.1 LoRAs of rank 128 are about 1.2 GB).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 2 << 30;
/// Default retention of finished tasks and their images (the contract's 24 h).
pub const DEFAULT_RESULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a delivery URL (the contract's 10 minutes).
pub const DEFAULT_RESULT_URL_TTL: Duration = Duration::from_secs(600);

/// The server's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Absolute base URL clients reach this server at, without a trailing `/`; polling and image
    /// URLs start with it.
    pub public_url: String,
    /// Most unfinished tasks one key may have, whatever the key's own setting says.
    pub max_active_tasks: u32,
    /// How long a delivery URL stays valid.
    pub result_url_ttl: Duration,
    /// Whether image URLs are fluxd's signed ones or the object store's presigned ones.
    pub delivery: Delivery,
    /// How long finished tasks (and their images) are kept; then they read `Task not found`.
    pub result_retention: Duration,
    /// Largest JSON request body.
    pub max_request_bytes: usize,
    /// Largest LoRA upload.
    pub max_upload_bytes: u64,
    /// Webhook delivery settings.
    pub webhooks: WebhookConfig,
    /// How long a claimed task stays claimed without a heartbeat: after a crash, its task runs
    /// again this long after the last heartbeat.
    pub task_lease: Duration,
    /// A running task's preview is stored every this many denoising steps (0: never).
    pub preview_every: u32,
    /// Terms refused in prompts, by `safety_tolerance` (requests become `Request Moderated`).
    pub prompt_policy: Arc<PromptPolicy>,
    /// Largest image prompt in pixels; None when the server has no Redux model, and requests
    /// with `image_prompt` are refused with a 422.
    pub image_prompt_max_pixels: Option<u64>,
    /// The language model that rewrites prompts for `prompt_upsampling: true`; without one such
    /// requests are refused with a 422.
    pub upsampler: Option<Upsampler>,
    /// On shutdown, how long a running task may take to finish before it is stopped and handed
    /// back to the queue, and how long the outbox is flushed.
    pub drain_timeout: Duration,
    /// How long an authenticated key is remembered (zero: every request reads the store). A key
    /// revoked by another process keeps working this long.
    pub auth_cache_ttl: Duration,
    /// How long `get_result` remembers an unfinished task (zero: no task cache). Finished tasks
    /// are remembered until their retention ends; this process's worker drops what it changes.
    pub task_cache_ttl: Duration,
    /// How long submit remembers a fine-tune it found (zero: off); imports and deletes through
    /// this process clear it.
    pub finetune_cache_ttl: Duration,
    /// Output size of the ultra endpoints, in units of 2²⁰ pixels (see
    /// [`fluxd_api::ultra_size`]); 4 is the reference's.
    pub ultra_megapixels: f64,
}

/// Default largest image prompt: 16 megapixels (a 4096×4096 PNG) is far beyond the 384² SigLIP
/// sees, while a decompression bomb is refused before its pixels are allocated.
pub const DEFAULT_IMAGE_PROMPT_MAX_PIXELS: u64 = 16 << 20;
/// Default steps between two previews of a running task: 7 previews of a 28-step FLUX.1-dev
/// run, each a 1/64-size JPEG of a few kilobytes.
pub const DEFAULT_PREVIEW_EVERY: u32 = 4;
/// Default lease of a claimed task.
pub const DEFAULT_TASK_LEASE: Duration = Duration::from_secs(60);
/// Default time a shutdown waits for the running task and the outbox (inside the 30 s most
/// process managers allow between SIGTERM and SIGKILL).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

impl ServerConfig {
    /// Defaults for a server reachable at `public_url`.
    pub fn new(public_url: impl Into<String>) -> Self {
        Self {
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            max_active_tasks: DEFAULT_MAX_ACTIVE_TASKS,
            result_url_ttl: DEFAULT_RESULT_URL_TTL,
            delivery: Delivery::Signed,
            result_retention: DEFAULT_RESULT_RETENTION,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            webhooks: WebhookConfig::default(),
            task_lease: DEFAULT_TASK_LEASE,
            preview_every: DEFAULT_PREVIEW_EVERY,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            auth_cache_ttl: DEFAULT_AUTH_CACHE_TTL,
            task_cache_ttl: DEFAULT_TASK_CACHE_TTL,
            finetune_cache_ttl: DEFAULT_FINETUNE_CACHE_TTL,
            ultra_megapixels: fluxd_api::ULTRA_MEGAPIXELS_DEFAULT,
            upsampler: None,
            image_prompt_max_pixels: None,
            prompt_policy: Arc::new(PromptPolicy::builtin()),
        }
    }
}

struct Inner {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    signer: UrlSigner,
    config: ServerConfig,
    engine: watch::Receiver<EngineState>,
    wake: Notify,
    webhook_wake: Notify,
    tmp_dir: PathBuf,
    lora_cache_dir: PathBuf,
    auth_cache: AuthCache,
    task_cache: TaskCache,
    finetune_cache: FinetuneCache,
    prices: PriceCache,
}

/// Shared state of the service; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// Where files go while being received and where LoRA files are materialised for the engine.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Uploads in progress (same file system as the blobs, ideally).
    pub tmp: PathBuf,
    /// Local copies of LoRA blobs.
    pub lora_cache: PathBuf,
}

impl AppState {
    /// Assembles the state.
    pub fn new(
        store: Arc<dyn Store>,
        blobs: BlobStore,
        signer: UrlSigner,
        config: ServerConfig,
        engine: watch::Receiver<EngineState>,
        dirs: Dirs,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth_cache: AuthCache::new(config.auth_cache_ttl),
                task_cache: TaskCache::new(config.task_cache_ttl, config.result_retention),
                finetune_cache: FinetuneCache::new(config.finetune_cache_ttl),
                prices: PriceCache::default(),
                store,
                blobs,
                signer,
                config,
                engine,
                wake: Notify::new(),
                webhook_wake: Notify::new(),
                tmp_dir: dirs.tmp,
                lora_cache_dir: dirs.lora_cache,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The blobs.
    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// The delivery URL signer.
    pub fn signer(&self) -> &UrlSigner {
        &self.inner.signer
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The engine's state now.
    pub fn engine_state(&self) -> EngineState {
        self.inner.engine.borrow().clone()
    }

    /// Wakes an idle worker when a task is queued.
    pub fn wake(&self) -> &Notify {
        &self.inner.wake
    }

    /// Wakes the webhook sender when a delivery is queued.
    pub fn webhook_wake(&self) -> &Notify {
        &self.inner.webhook_wake
    }

    /// Scratch space for uploads.
    pub fn tmp_dir(&self) -> &Path {
        &self.inner.tmp_dir
    }

    /// Local copies of LoRA blobs.
    pub fn lora_cache_dir(&self) -> &Path {
        &self.inner.lora_cache_dir
    }

    /// Recently authenticated keys.
    pub fn auth_cache(&self) -> &AuthCache {
        &self.inner.auth_cache
    }

    /// Recently read tasks (`get_result`).
    pub fn task_cache(&self) -> &TaskCache {
        &self.inner.task_cache
    }

    /// Recently resolved fine-tunes (submit).
    pub fn finetune_cache(&self) -> &FinetuneCache {
        &self.inner.finetune_cache
    }

    /// The endpoints' prices (submit).
    pub fn prices(&self) -> &PriceCache {
        &self.inner.prices
    }
}
