//! `fluxd model …`: making and inspecting model folders.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use fluxd_engine::control::depth::write_tiny_depth_anything;
use fluxd_engine::memory_plan::{gib, plan_model, ExtraComponents, PlanDevice, Workload};
use fluxd_engine::model_dir::t5_weights_file;
use fluxd_engine::pipeline::DEFAULT_MAX_SEQUENCE_LENGTH;
use fluxd_engine::redux::ReduxPaths;
use fluxd_engine::tiny_model::{write_tiny_model, TinyPreset};
use fluxd_engine::EngineError;

use crate::hub::{self, Fetch, Skip};
use crate::placement::PlacementArgs;
use crate::serve::block_on;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write a small random FLUX.1 model in the real FLUX.1-dev (diffusers) layout, with a
    /// matching FLUX.1-Redux model (image prompts) in `DIR/redux`, a tiny NSFW classifier
    /// (Falconsai/nsfw_image_detection's format) in `DIR/safety_checker` and a demo LoRA
    /// fine-tune in `DIR/lora/demo.safetensors`.
    InitTiny(InitTinyArgs),
    /// Write a small random Depth Anything (`DepthAnythingForDepthEstimation`) in the exact
    /// transformers layout of depth-anything-large-hf, for `--depth-estimator`.
    InitTinyDepth(InitTinyDepthArgs),
    /// Print the memory plan of a model — each component's weights in its format and its
    /// working memory at the largest request, per device — without loading it, and check it
    /// against `--memory` (or the device's free memory). Exits with status 1 if it does not fit.
    Plan(Box<PlanArgs>),
    /// Fetch a model repository from the Hugging Face Hub (the files fluxd reads:
    /// `owner/name[@rev]`) or one file (`owner/name[@rev]:path`) into the Hugging Face cache,
    /// resuming an interrupted download, and print the local path. `HF_TOKEN` opens gated
    /// repositories, `HF_ENDPOINT` names a mirror.
    Download {
        /// `owner/name[@rev]` or `owner/name[@rev]:path/in/repo`.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Model folder (diffusers FLUX.1 layout, or one with flux1-dev.safetensors + ae.safetensors),
    /// or a Hugging Face repo id already in the local cache (`fluxd model download`).
    #[arg(long, env = "FLUXD_MODEL")]
    model: PathBuf,
    /// Transformer from a single file (BFL/ComfyUI safetensors, fp8 included, or GGUF; or
    /// `owner/repo:file` from the cache).
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// VAE from a single BFL `ae.safetensors`.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// T5 weights from a single file (safetensors, ComfyUI-prefixed or not, or GGUF).
    #[arg(long)]
    t5: Option<PathBuf>,
    /// A Redux model (its SigLIP encoder and the 729 image tokens it adds count too).
    #[arg(long)]
    redux_model: Option<PathBuf>,
    /// SigLIP vision model folder, when `--redux-model` has no `image_encoder/`.
    #[arg(long, requires = "redux_model")]
    siglip: Option<PathBuf>,
    /// NSFW image classifier folder.
    #[arg(long)]
    safety_checker: Option<PathBuf>,
    /// Width of the largest request (default: the API's largest).
    #[arg(long, default_value_t = fluxd_api::limits::SIDE_MAX as usize)]
    width: usize,
    /// Height of the largest request.
    #[arg(long, default_value_t = fluxd_api::limits::SIDE_MAX as usize)]
    height: usize,
    /// T5 tokens of the largest request.
    #[arg(long, default_value_t = DEFAULT_MAX_SEQUENCE_LENGTH)]
    max_sequence_length: usize,
    #[command(flatten)]
    placement: PlacementArgs,
}

#[derive(Debug, clap::Args)]
pub struct InitTinyDepthArgs {
    /// Folder to write (created if needed).
    dir: PathBuf,
    /// Seed for the random weights; the same seed always writes the same files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct InitTinyArgs {
    /// Folder to write (created if needed).
    dir: PathBuf,
    /// Seed for the random weights; the same seed always writes the same files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model size: `tiny` (a few MB) or `medium` (FLUX's real head size, for benchmarks).
    #[arg(long, value_enum, default_value_t = Preset::Tiny)]
    preset: Preset,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Preset {
    Tiny,
    Medium,
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Plan(args) => plan(&args),
        ModelCommand::Download { name } => {
            let arg = PathBuf::from(&name);
            let path = if hub::parse_repo_file(&name).is_some() {
                block_on(hub::weight_file(&arg, Fetch::Allowed))?
            } else if hub::parse_repo(&name).is_some() {
                block_on(hub::model_dir(&arg, Skip::default(), Fetch::Allowed))?
            } else {
                bail!("`{name}` is not `owner/name[@rev]` or `owner/name[@rev]:file`")
            };
            println!("{}", path.display());
            Ok(())
        }
        ModelCommand::InitTiny(args) => {
            let preset = match args.preset {
                Preset::Tiny => TinyPreset::Tiny,
                Preset::Medium => TinyPreset::Medium,
            };
            write_tiny_model(&args.dir, args.seed, preset)
                .with_context(|| format!("writing a tiny model to {}", args.dir.display()))?;
            println!("{}", args.dir.display());
            Ok(())
        }
        ModelCommand::InitTinyDepth(args) => {
            write_tiny_depth_anything(&args.dir, args.seed).with_context(|| {
                format!("writing a tiny Depth Anything to {}", args.dir.display())
            })?;
            println!("{}", args.dir.display());
            Ok(())
        }
    }
}

fn plan(args: &PlanArgs) -> Result<()> {
    // Hub names are planned from the cache: a plan reads headers, not 30 GB of weights.
    let fetch = Fetch::CacheOnly;
    let (mut paths, t5) = block_on(async {
        let paths = hub::model_paths(
            &args.model,
            args.transformer.as_deref(),
            args.vae.as_deref(),
            fetch,
        )
        .await?;
        Ok((
            paths,
            hub::maybe_weight_file(args.t5.as_deref(), fetch).await?,
        ))
    })?;
    if let Some(t5) = &t5 {
        paths.t5_weights = Some(t5_weights_file(t5));
    }
    let redux = match &args.redux_model {
        Some(r) => Some(ReduxPaths::resolve(r, args.siglip.as_deref())?),
        None => None,
    };
    let extra = ExtraComponents {
        redux,
        safety_checker: args.safety_checker.clone(),
    };
    let workload = extra.workload(args.width, args.height, args.max_sequence_length)?;
    let opts = args.placement.plan_options(workload)?;
    let plan = plan_model(&paths, &opts, &extra)?;
    print!("{plan}");
    // The model's device is opened only to ask for its free memory, and only without --memory.
    let open = match (&args.placement.memory, opts.device) {
        (None, PlanDevice::Cpu) => Some(args.placement.load_options()?),
        (None, PlanDevice::Cuda(_)) if candle_core::utils::cuda_is_available() => {
            Some(args.placement.load_options()?)
        }
        _ => None,
    };
    let budgets = args.placement.budgets(open.as_ref())?;
    if !budgets.iter().any(|(d, _)| *d == opts.device) {
        println!(
            "{}: no budget to check against (pass --memory, e.g. --memory 24GB)",
            opts.device
        );
    }
    let replan = |w: Workload| {
        let mut o = opts.clone();
        o.workload = w;
        plan_model(&paths, &o, &extra)
    };
    match plan.check(&budgets, &replan) {
        Ok(()) => {
            for (device, budget) in &budgets {
                println!(
                    "{device}: fits in {} ({})",
                    gib(budget.bytes),
                    budget.source
                );
            }
            Ok(())
        }
        Err(EngineError::InsufficientMemory(msg)) => {
            // The plan is printed already; the first lines say what does not fit.
            let why: Vec<&str> = msg
                .lines()
                .take_while(|l| !l.starts_with("memory plan"))
                .collect();
            bail!("does not fit: {}", why.join("; "))
        }
        Err(e) => Err(e.into()),
    }
}
