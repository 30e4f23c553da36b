//! The engine thread: the FLUX pipeline lives on its own OS thread, loaded once, and takes jobs
//! from a bounded channel, each with its own reply sender. The async runtime never runs model
//! code; it only awaits replies.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::DType;
use fluxd_engine::lora::LoraFile;
use fluxd_engine::model_dir::ModelPaths;
use fluxd_engine::pipeline::{
    FluxPipeline, GenerateParams, LoadOptions, Progress, DEFAULT_MAX_SEQUENCE_LENGTH,
};
use fluxd_engine::postprocess::{encode_image, OutputFormat, DEFAULT_JPEG_QUALITY};
use fluxd_engine::preview::{PreviewFrame, Previews};
use fluxd_engine::redux::{ReduxModel, ReduxPaths};
use fluxd_engine::safety::ImageClassifier;
use fluxd_engine::transformer::FluxConfig;
use fluxd_engine::EngineError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ServerError;

/// Jobs waiting for the engine beyond the one it runs. One worker feeds it, so a small bound
/// suffices; it exists so a misbehaving caller cannot queue unbounded work in memory.
const JOB_QUEUE: usize = 4;

/// Whether the model can be used yet.
#[derive(Debug, Clone)]
pub enum EngineState {
    /// Loading the weights.
    Loading,
    /// Loaded; the transformer's config tells which LoRA files fit.
    Ready(Arc<FluxConfig>),
    /// Loading failed; the server cannot generate.
    Failed(String),
}

/// One image to make.
#[derive(Debug)]
pub struct GenerateJob {
    /// Prompt, size, steps, guidance, seed.
    pub params: GenerateParams,
    /// The fine-tune and its strength, if any.
    pub lora: Option<(Arc<LoraFile>, f32)>,
    /// Encoding of the result.
    pub format: OutputFormat,
    /// Hears the fraction of denoising steps done.
    pub progress: mpsc::UnboundedSender<f64>,
    /// Set to stop the generation between two denoising steps ([`EngineError::Cancelled`]).
    pub cancel: Arc<AtomicBool>,
    /// The decoded Redux image prompt, if the request has one.
    pub image_prompt: Option<image::RgbImage>,
    /// Scale of the image prompt's Redux tokens: 1 is plain Redux, 0 leaves them out.
    pub image_prompt_strength: f32,
    /// Every how many steps to send a preview, and where (None: no previews).
    pub previews: Option<(usize, mpsc::UnboundedSender<PreviewJpeg>)>,
}

/// A preview of a running generation, encoded.
#[derive(Debug)]
pub struct PreviewJpeg {
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// The JPEG.
    pub bytes: Vec<u8>,
}

/// JPEG quality of previews: they are glimpses, an eighth of the image's sides.
const PREVIEW_JPEG_QUALITY: u8 = 80;

/// The encoded image.
#[derive(Debug)]
pub struct Generated {
    /// JPEG or PNG bytes.
    pub bytes: Vec<u8>,
    /// The safety classifier's "nsfw" probability for the image, when a classifier is loaded.
    pub nsfw_score: Option<f32>,
}

/// What the engine thread loads.
#[derive(Debug, Clone)]
pub struct EngineModels {
    /// The FLUX.1 model.
    pub flux: ModelPaths,
    /// The Redux model for image prompts, if any.
    pub redux: Option<ReduxPaths>,
    /// The NSFW image classifier folder (transformers ViTForImageClassification), if any.
    pub safety_checker: Option<std::path::PathBuf>,
}

type Job = (GenerateJob, oneshot::Sender<Result<Generated, EngineError>>);

/// The async side's handle on the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Job>,
    state: watch::Receiver<EngineState>,
}

impl EngineHandle {
    /// Where loading stands now.
    pub fn state(&self) -> EngineState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of state (to wait for readiness).
    pub fn watch(&self) -> watch::Receiver<EngineState> {
        self.state.clone()
    }

    /// Runs one job on the engine thread and waits for its result.
    pub async fn generate(&self, job: GenerateJob) -> Result<Generated, EngineError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || EngineError::InvalidInput("the engine thread has stopped".into());
        self.jobs.send((job, reply)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// The engine state of a node that runs no engine (`serve --no-worker`): only the served model's
/// transformer config, read from its files without loading any weights, so that LoRA uploads are
/// checked against the model the workers run. Such a node is ready at once.
pub fn config_only(cfg: FluxConfig) -> watch::Receiver<EngineState> {
    watch::channel(EngineState::Ready(Arc::new(cfg))).1
}

/// Starts the engine thread, which loads the model at `paths` and then serves jobs until every
/// handle is dropped.
pub fn spawn_engine(
    models: EngineModels,
    opts: LoadOptions,
) -> Result<(EngineHandle, std::thread::JoinHandle<()>), ServerError> {
    let (jobs, rx) = mpsc::channel::<Job>(JOB_QUEUE);
    let (state_tx, state) = watch::channel(EngineState::Loading);
    let thread = std::thread::Builder::new()
        .name("fluxd-engine".into())
        .spawn(move || engine_main(models, opts, rx, state_tx))
        .map_err(|e| ServerError::io("starting the engine thread", e))?;
    Ok((EngineHandle { jobs, state }, thread))
}

/// The models besides FLUX that jobs may use.
struct Extras {
    redux: Option<ReduxModel>,
    classifier: Option<ImageClassifier>,
}

fn engine_main(
    models: EngineModels,
    opts: LoadOptions,
    mut jobs: mpsc::Receiver<Job>,
    state: watch::Sender<EngineState>,
) {
    let started = std::time::Instant::now();
    let paths = &models.flux;
    let (device, dtype) = (opts.device.clone(), opts.dtype);
    // CLIP and T5 may live on another device (`--text-encoders-device cpu`): they stay there
    // between requests, and only their embeddings reach the model's device.
    let mut pipeline = match FluxPipeline::load_with(paths, &opts, |stage| {
        tracing::info!(stage, "loading model");
    }) {
        Ok(pipeline) => pipeline,
        Err(err) => {
            tracing::error!(%err, model = %paths.root.display(), "loading the model failed");
            state.send_replace(EngineState::Failed(err.to_string()));
            return;
        }
    };
    let redux = match models
        .redux
        .map(|p| ReduxModel::load_paths(&p, dtype, &device))
    {
        None => None,
        Some(Ok(model)) => Some(model),
        Some(Err(err)) => {
            tracing::error!(%err, "loading the Redux model failed");
            state.send_replace(EngineState::Failed(format!("Redux model: {err}")));
            return;
        }
    };
    // The classifier is small; f32 keeps its scores those of the reference.
    let classifier = match models
        .safety_checker
        .map(|dir| ImageClassifier::load(&dir, DType::F32, &device))
    {
        None => None,
        Some(Ok(classifier)) => Some(classifier),
        Some(Err(err)) => {
            tracing::error!(%err, "loading the safety classifier failed");
            state.send_replace(EngineState::Failed(format!("safety classifier: {err}")));
            return;
        }
    };
    let extras = Extras { redux, classifier };
    tracing::info!(
        model = %paths.root.display(),
        redux = extras.redux.is_some(),
        safety_classifier = extras.classifier.is_some(),
        seconds = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    state.send_replace(EngineState::Ready(Arc::new(
        pipeline.transformer().config().clone(),
    )));
    while let Some((job, reply)) = jobs.blocking_recv() {
        let result = run_job(&mut pipeline, &extras, job);
        // The worker may have given up on the task (lease lost); nothing to tell then.
        let _ = reply.send(result);
    }
    tracing::info!("engine thread stopped");
}

fn run_job(
    pipeline: &mut FluxPipeline,
    extras: &Extras,
    job: GenerateJob,
) -> Result<Generated, EngineError> {
    match &job.lora {
        Some((lora, strength)) => pipeline.set_loras(&[(lora.as_ref(), *strength)])?,
        None => pipeline.set_loras(&[])?,
    }
    let image_tokens = match (&job.image_prompt, &extras.redux) {
        (None, _) => None,
        // Strength 0 is exactly the image without the image prompt.
        (Some(_), _) if job.image_prompt_strength <= 0.0 => None,
        (Some(image), Some(redux)) => {
            let tokens = redux.encode(image)?;
            if job.image_prompt_strength == 1.0 {
                Some(tokens)
            } else {
                // ultra's image_prompt_strength: a blend by scaling the Redux tokens before they
                // join the T5 tokens (ComfyUI's StyleModelApply "multiply" strength).
                Some(tokens.affine(f64::from(job.image_prompt_strength), 0.0)?)
            }
        }
        (Some(_), None) => {
            return Err(EngineError::InvalidInput(
                "image_prompt needs a Redux model, and this server has none".into(),
            ))
        }
    };
    let progress = job.progress;
    let mut send_preview = |frame: PreviewFrame| {
        let Some((_, sink)) = &job.previews else {
            return;
        };
        // A preview that cannot be encoded is skipped; the generation goes on.
        match encode_image(&frame.image, OutputFormat::Jpeg, PREVIEW_JPEG_QUALITY) {
            Ok(bytes) => {
                let _ = sink.send(PreviewJpeg {
                    step: frame.step,
                    steps: frame.steps,
                    bytes,
                });
            }
            Err(err) => tracing::debug!(%err, "could not encode a preview"),
        }
    };
    let mut previews = job.previews.as_ref().map(|(every, _)| Previews {
        every: *every,
        sink: &mut send_preview,
    });
    let generation = pipeline.generate_previewed(
        &job.params,
        image_tokens.as_ref(),
        &mut |p| {
            if let Progress::Step { done, total } = p {
                if total > 0 {
                    // usize → f64 is exact for any realistic step count.
                    let _ = progress.send(done as f64 / total as f64);
                }
            }
        },
        previews.as_mut(),
        &job.cancel,
    )?;
    let nsfw_score = match &extras.classifier {
        Some(classifier) => Some(classifier.nsfw_score(&generation.image)?),
        None => None,
    };
    let bytes = encode_image(&generation.image, job.format, DEFAULT_JPEG_QUALITY)?;
    Ok(Generated { bytes, nsfw_score })
}

/// Generation parameters for the engine from a resolved request.
pub fn generate_params(
    generation: &fluxd_api::Generation,
    seed: u64,
) -> Result<GenerateParams, EngineError> {
    let size = |v: u32| usize::try_from(v).map_err(|e| EngineError::InvalidInput(e.to_string()));
    Ok(GenerateParams {
        prompt: generation.prompt.clone(),
        width: size(generation.width)?,
        height: size(generation.height)?,
        steps: size(generation.steps)?,
        // The contract bounds guidance to 1.5..=5, well inside f32.
        guidance: generation.guidance as f32,
        seed,
        max_sequence_length: DEFAULT_MAX_SEQUENCE_LENGTH,
    })
}

/// The engine's encoding for the wire's `output_format`.
pub fn output_format(format: fluxd_api::OutputFormat) -> OutputFormat {
    match format {
        fluxd_api::OutputFormat::Jpeg => OutputFormat::Jpeg,
        fluxd_api::OutputFormat::Png => OutputFormat::Png,
    }
}
