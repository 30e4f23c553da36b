//! `fluxd generate`: one image from the command line, the same engine the server runs.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::hub::{self, Fetch};
use crate::serve::{block_on, UpsamplerArgs};
use anyhow::{bail, Context, Result};
use fluxd_engine::memory_plan::ExtraComponents;
use fluxd_engine::pipeline::{
    FluxPipeline, GenerateParams, Progress, DEFAULT_MAX_SEQUENCE_LENGTH, LOAD_STAGES,
};
use fluxd_engine::postprocess::{encode_image, OutputFormat, DEFAULT_JPEG_QUALITY};
use fluxd_engine::redux::{decode_image_prompt, ReduxModel, ReduxPaths};
use fluxd_engine::safety::{moderate_nsfw_score, ImageClassifier, PromptPolicy, SafetyTolerance};

use crate::device::peak_rss_bytes;
use crate::placement::{plan_and_check, PlacementArgs};
use crate::progress::bar;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model folder (diffusers FLUX.1 layout, or one with flux1-dev.safetensors + ae.safetensors)
    /// or a Hugging Face repo id (`black-forest-labs/FLUX.1-dev[@rev]`, fetched into the HF
    /// cache; a local path that exists wins).
    #[arg(long, env = "FLUXD_MODEL")]
    model: PathBuf,
    /// Transformer from a single file instead of the folder's `transformer/`: BFL/ComfyUI
    /// safetensors (fp8 included) or `owner/repo:file` on the Hugging Face Hub.
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// VAE from a single BFL `ae.safetensors` instead of the folder's `vae/`.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Text prompt.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Noise seed (64-bit; as in torch only the low 32 bits matter).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Denoising steps.
    #[arg(long, default_value_t = 28)]
    steps: usize,
    /// Distilled guidance.
    #[arg(long, default_value_t = 3.5)]
    guidance: f32,
    /// Width in pixels (multiple of 16).
    #[arg(long, default_value_t = 1024)]
    width: usize,
    /// Height in pixels (multiple of 16).
    #[arg(long, default_value_t = 1024)]
    height: usize,
    /// T5 tokens (1..=512).
    #[arg(long, default_value_t = DEFAULT_MAX_SEQUENCE_LENGTH)]
    max_sequence_length: usize,
    /// Output file; `.png` or `.jpg`/`.jpeg` picks the format.
    #[arg(long, short)]
    output: PathBuf,
    /// A LoRA fine-tune to apply, as `FILE` or `FILE:STRENGTH` (default strength 1.0); repeat
    /// the flag to combine several.
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]")]
    loras: Vec<String>,
    /// Redux model for `--image-prompt`: a FLUX.1-Redux-dev folder (`fluxd model init-tiny`
    /// writes one in `DIR/redux`) or a BFL `flux1-redux-dev.safetensors` file.
    #[arg(long, requires = "image_prompt")]
    redux_model: Option<PathBuf>,
    /// SigLIP vision model folder, when `--redux-model` has no `image_encoder/`.
    #[arg(long, requires = "redux_model")]
    siglip: Option<PathBuf>,
    /// Image prompt (PNG, JPEG or WebP): its Redux tokens are appended to the text prompt's.
    #[arg(long, requires = "redux_model")]
    image_prompt: Option<PathBuf>,
    /// Rewrite the prompt with the language model at `--upsampler-url` first (as the API's
    /// `prompt_upsampling`); the prompt used is printed.
    #[arg(long, requires = "upsampler_url")]
    prompt_upsampling: bool,
    #[command(flatten)]
    upsampler: UpsamplerArgs,
    /// Moderate as the API does at this `safety_tolerance` (0 strictest … 6): the prompt against
    /// the built-in policy (+ `--prompt-policy`), the image with `--safety-checker` if given. A
    /// refused prompt or image is reported and nothing is written (exit status 3).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=6))]
    safety_tolerance: Option<u8>,
    /// NSFW image classifier folder (transformers ViTForImageClassification).
    #[arg(long, requires = "safety_tolerance")]
    safety_checker: Option<PathBuf>,
    /// Prompt policy file added to the built-in list (format in the README).
    #[arg(long, requires = "safety_tolerance")]
    prompt_policy: Option<PathBuf>,
    /// Write load, text-encoding, per-step and decode times (ms) and peak RSS to this JSON file.
    #[arg(long)]
    timings_json: Option<PathBuf>,
    #[command(flatten)]
    placement: PlacementArgs,
}

/// A refused prompt or image: `main` turns it into exit status 3.
#[derive(Debug, thiserror::Error)]
#[error("moderated")]
pub struct Moderated;

/// The prompt rewritten by the configured language model.
fn upsample(args: &GenerateArgs, prompt: &str) -> Result<String> {
    let Some(upsampler) = args.upsampler.build()? else {
        bail!("--prompt-upsampling needs --upsampler-url and --upsampler-model");
    };
    block_on(async { Ok(upsampler.upsample(prompt, args.seed).await?) })
}

/// Image prompts with more pixels than this are refused before decoding.
const IMAGE_PROMPT_MAX_PIXELS: u64 = 64 << 20;

pub fn run(args: GenerateArgs) -> Result<()> {
    let Some(format) = OutputFormat::from_path_extension(&args.output) else {
        bail!(
            "--output must end in .png, .jpg or .jpeg: {}",
            args.output.display()
        );
    };
    let opts = args.placement.load_options()?;
    let (device, dtype) = (opts.device.clone(), opts.dtype);
    let paths = block_on(hub::model_paths(
        &args.model,
        args.transformer.as_deref(),
        args.vae.as_deref(),
        Fetch::Allowed,
    ))?;
    let redux_paths = match &args.redux_model {
        Some(redux) => Some(
            ReduxPaths::resolve(redux, args.siglip.as_deref())
                .with_context(|| format!("the Redux model {}", redux.display()))?,
        ),
        None => None,
    };
    let extra = ExtraComponents {
        redux: redux_paths.clone(),
        safety_checker: args.safety_checker.clone(),
    };
    let workload = extra.workload(args.width, args.height, args.max_sequence_length)?;
    plan_and_check(&paths, &args.placement, &opts, workload, &extra)?;

    let t0 = Instant::now();
    let load_bar = bar(LOAD_STAGES.len() as u64, "load");
    let mut pipeline = FluxPipeline::load_with(&paths, &opts, |stage| {
        load_bar.set_message(stage.to_string());
        load_bar.inc(1);
    })
    .context("loading the model")?;
    load_bar.finish_and_clear();
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;

    let mut loras = Vec::new();
    for spec in &args.loras {
        let (path, strength) = parse_lora_spec(spec)?;
        let lora = pipeline
            .load_lora(&path)
            .with_context(|| format!("loading LoRA {}", path.display()))?;
        if !lora.text_encoder_modules.is_empty() {
            tracing::warn!(
                lora = %path.display(),
                modules = lora.text_encoder_modules.len(),
                "this LoRA also trains the text encoder; fluxd applies only its transformer part"
            );
        }
        loras.push((lora, strength));
    }
    let refs: Vec<_> = loras.iter().map(|(l, s)| (l, *s)).collect();
    pipeline.set_loras(&refs).context("applying LoRAs")?;

    let tolerance = args
        .safety_tolerance
        .map(SafetyTolerance::new)
        .transpose()
        .context("--safety-tolerance")?;
    let mut policy = PromptPolicy::builtin();
    if let Some(file) = &args.prompt_policy {
        policy.extend(
            PromptPolicy::from_file(file).with_context(|| format!("reading {}", file.display()))?,
        );
    }
    let moderated = |kind: &str, reasons: Vec<String>| -> anyhow::Error {
        eprintln!("{kind} Moderated: {}", reasons.join("; "));
        anyhow::Error::new(Moderated)
    };
    if let Some(t) = tolerance {
        if let Some(reasons) = policy.moderate(&args.prompt, t) {
            return Err(moderated("Request", reasons));
        }
    }
    let mut prompt = args.prompt.clone();
    if args.prompt_upsampling {
        prompt = upsample(&args, &prompt)?;
        println!("prompt used: {prompt}");
        if let Some(t) = tolerance {
            if let Some(reasons) = policy.moderate(&prompt, t) {
                return Err(moderated("Request", reasons));
            }
        }
    }
    let params = GenerateParams {
        prompt,
        width: args.width,
        height: args.height,
        steps: args.steps,
        guidance: args.guidance,
        seed: args.seed,
        max_sequence_length: args.max_sequence_length,
    };
    let t_redux = Instant::now();
    let image_tokens = match (&redux_paths, &args.image_prompt) {
        (Some(redux), Some(image)) => {
            let model =
                ReduxModel::load_paths(redux, dtype, &device).context("loading the Redux model")?;
            let bytes =
                std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
            let rgb = decode_image_prompt(&bytes, IMAGE_PROMPT_MAX_PIXELS)
                .with_context(|| image.display().to_string())?;
            let tokens = model.encode(&rgb).context("encoding the image prompt")?;
            Some(tokens)
        }
        _ => None,
    };
    let redux_ms = image_tokens
        .as_ref()
        .map(|_| t_redux.elapsed().as_secs_f64() * 1000.0);
    let tokens = pipeline.t5_tokenizer().count_tokens(&params.prompt)?;
    if tokens > params.max_sequence_length {
        tracing::warn!(
            tokens,
            max = params.max_sequence_length,
            "the prompt is longer than the T5 limit and will be truncated"
        );
    }
    let steps_bar = bar(params.steps as u64, "denoise");
    let mut on_progress = |p: Progress| match p {
        Progress::EncodingText => steps_bar.set_message("encoding text"),
        Progress::Step { done, .. } => {
            steps_bar.set_message("");
            steps_bar.set_position(done as u64);
        }
        Progress::Decoding => steps_bar.set_message("decoding"),
    };
    let generation = pipeline
        .generate_with_image_tokens(
            &params,
            image_tokens.as_ref(),
            &mut on_progress,
            &AtomicBool::new(false),
        )
        .context("generating")?;
    steps_bar.finish_and_clear();

    if let (Some(t), Some(dir)) = (tolerance, &args.safety_checker) {
        let classifier = ImageClassifier::load(dir, candle_core::DType::F32, &device)
            .with_context(|| format!("loading the safety checker {}", dir.display()))?;
        let score = classifier.nsfw_score(&generation.image)?;
        tracing::info!(score, "safety classifier score");
        if let Some(reasons) = moderate_nsfw_score(score, t) {
            return Err(moderated("Content", reasons));
        }
    }
    let bytes = encode_image(&generation.image, format, DEFAULT_JPEG_QUALITY)?;
    std::fs::write(&args.output, bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;

    if let Some(path) = &args.timings_json {
        let t = &generation.timings;
        let report = serde_json::json!({
            "load_ms": load_ms,
            "redux_ms": redux_ms,
            "text_encoding_ms": t.text_encoding_ms,
            "step_ms": t.step_ms,
            "decode_ms": t.decode_ms,
            "peak_rss_bytes": peak_rss_bytes(),
            "weight_bytes": paths.weight_bytes(),
            "device": args.placement.device,
            "dtype": args.placement.dtype,
            "width": params.width,
            "height": params.height,
            "steps": params.steps,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", args.output.display());
    Ok(())
}

/// Parses `FILE` or `FILE:STRENGTH`. A suffix after the last `:` that is not a number is part of
/// the file name.
fn parse_lora_spec(spec: &str) -> Result<(PathBuf, f32)> {
    if let Some((path, strength)) = spec.rsplit_once(':') {
        if let Ok(s) = strength.parse::<f32>() {
            if !s.is_finite() {
                bail!("LoRA strength must be a finite number: {spec}");
            }
            return Ok((PathBuf::from(path), s));
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_specs() {
        let p = |s: &str| parse_lora_spec(s).ok();
        assert_eq!(
            p("a.safetensors"),
            Some((PathBuf::from("a.safetensors"), 1.0))
        );
        assert_eq!(
            p("a.safetensors:0.7"),
            Some((PathBuf::from("a.safetensors"), 0.7))
        );
        assert_eq!(
            p("C:dir/a.safetensors"),
            Some((PathBuf::from("C:dir/a.safetensors"), 1.0))
        );
        assert_eq!(p("x:y:1.5"), Some((PathBuf::from("x:y"), 1.5)));
        assert!(parse_lora_spec("a:inf").is_err());
    }
}
