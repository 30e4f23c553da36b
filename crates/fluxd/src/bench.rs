//! `fluxd bench`: per-step and end-to-end time of the whole pipeline on a model folder, with and
//! without an active LoRA, and the cost of switching fine-tunes. `scripts/bench.sh` runs it beside
//! diffusers (`scripts/reference/pipeline_bench.py`) on the same folder and settings on the CPU,
//! `scripts/gpu-check.sh` on a GPU. With `--transformer` and no `--model`, one transformer forward
//! on random inputs (`scripts/bench-gguf.sh` runs it beside stable-diffusion.cpp and diffusers on
//! the same GGUF file).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use fluxd_engine::lora::{write_random_lora, LoraFormat};
use fluxd_engine::model_dir::{ModelPaths, TransformerSource};
use fluxd_engine::pipeline::{FluxPipeline, GenerateParams, LoadOptions, Timings};
use fluxd_engine::transformer::{bench_model_forward, FluxTransformer, WeightsDtype};

use crate::device::{parse_cpu_kernels, parse_device, parse_dtype, peak_rss_bytes};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Model folder (e.g. one written by `fluxd model init-tiny --preset medium`).
    #[arg(long, required_unless_present = "transformer")]
    model: Option<PathBuf>,
    /// A transformer single file (safetensors or GGUF). With `--model`, it replaces the
    /// folder's; alone, only transformer forwards are timed (text tokens: `--max-sequence-length`).
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// CPU kernels of quantized layers: `exact` (weights expanded to f32 tile by tile) or `int8`
    /// (candle's integer kernels where it has them; activations rounded to 8 bits).
    #[arg(long, default_value = "exact")]
    cpu_kernels: String,
    /// Width in pixels.
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Height in pixels.
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// Denoising steps per run.
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// T5 tokens.
    #[arg(long, default_value_t = 128)]
    max_sequence_length: usize,
    /// Timed runs (after one warm-up run).
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Also time with this LoRA active (strength 1).
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Write a random LoRA (diffusers/PEFT layout, which diffusers loads for any model size) of
    /// this rank for the model to `--lora` first.
    #[arg(long, requires = "lora")]
    random_lora_rank: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `f32`, `bf16` or `f16`.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The timings and wall-clock milliseconds of `runs` generations, after one warm-up generation.
fn timed_runs(pipe: &FluxPipeline, p: &GenerateParams, runs: usize) -> Result<Vec<(Timings, f64)>> {
    let cancel = AtomicBool::new(false);
    pipe.generate(p, &mut |_| {}, &cancel)?; // warm-up
    (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            let timings = pipe.generate(p, &mut |_| {}, &cancel)?.timings;
            Ok((timings, t0.elapsed().as_secs_f64() * 1e3))
        })
        .collect()
}

fn step_times(pipe: &FluxPipeline, p: &GenerateParams, runs: usize) -> Result<Vec<f64>> {
    Ok(timed_runs(pipe, p, runs)?
        .into_iter()
        .flat_map(|(t, _)| t.step_ms)
        .collect())
}

/// Times transformer forwards alone: load, then `runs` forwards after a warm-up.
fn run_transformer(args: &BenchArgs, file: &std::path::Path) -> Result<()> {
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let t0 = Instant::now();
    let source = TransformerSource::file(file, None)?;
    let mut model = FluxTransformer::load(&source, dtype, &device, WeightsDtype::Auto)?;
    model.set_cpu_kernels(parse_cpu_kernels(&args.cpu_kernels)?)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let img = (args.width / 16) * (args.height / 16);
    let txt = args.max_sequence_length;
    let times: Vec<f64> = bench_model_forward(&model, img, txt, args.runs)?
        .into_iter()
        .map(|s| s * 1e3)
        .collect();
    let weight_bytes = std::fs::metadata(file)
        .with_context(|| file.display().to_string())?
        .len();
    let report = serde_json::json!({
        "transformer": file,
        "image_tokens": img,
        "text_tokens": txt,
        "cpus": available_cpus(),
        "cpu_kernels": args.cpu_kernels,
        "load_ms": load_ms,
        "step_ms_median": median(times.clone()),
        "step_ms": times,
        "peak_rss_bytes": peak_rss_bytes(),
        "weight_bytes": weight_bytes,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    let Some(model) = &args.model else {
        let file = args
            .transformer
            .as_deref()
            .context("--model or --transformer")?;
        return run_transformer(&args, file);
    };
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let paths = ModelPaths::resolve(model, args.transformer.as_deref(), None)?;
    let t0 = Instant::now();
    let opts = LoadOptions {
        cpu_kernels: parse_cpu_kernels(&args.cpu_kernels)?,
        ..LoadOptions::new(&device, dtype)
    };
    let mut pipe = FluxPipeline::load_with(&paths, &opts, |_| {})?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let p = GenerateParams {
        prompt: "a benchmark prompt about a red fox in the snow".into(),
        width: args.width,
        height: args.height,
        steps: args.steps,
        guidance: 3.5,
        seed: 0,
        max_sequence_length: args.max_sequence_length,
    };
    let runs = timed_runs(&pipe, &p, args.runs)?;
    let base: Vec<f64> = runs.iter().flat_map(|(t, _)| t.step_ms.clone()).collect();
    let mut report = serde_json::json!({
        "model": model,
        "width": args.width, "height": args.height, "steps": args.steps,
        "max_sequence_length": args.max_sequence_length,
        "image_tokens": (args.width / 16) * (args.height / 16),
        "cpus": available_cpus(),
        "load_ms": load_ms,
        "step_ms_median": median(base.clone()),
        "step_ms": base,
        "text_encoding_ms_median": median(runs.iter().map(|(t, _)| t.text_encoding_ms).collect()),
        "decode_ms_median": median(runs.iter().map(|(t, _)| t.decode_ms).collect()),
        "end_to_end_ms_median": median(runs.iter().map(|(_, ms)| *ms).collect()),
    });
    if let Some(path) = &args.lora {
        if let Some(rank) = args.random_lora_rank {
            let cfg = pipe.transformer().config().clone();
            write_random_lora(path, LoraFormat::Diffusers, &cfg, rank, 1, &|_| true)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let t0 = Instant::now();
        let lora = pipe.load_lora(path)?;
        let lora_load_ms = t0.elapsed().as_secs_f64() * 1e3;
        // Switching fine-tune: set, then clear, many times; each is what a request pays.
        let mut switch = Vec::new();
        for i in 0..50 {
            let t0 = Instant::now();
            if i % 2 == 0 {
                pipe.set_loras(&[(&lora, 1.0)])?;
            } else {
                pipe.set_loras(&[])?;
            }
            switch.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        pipe.set_loras(&[(&lora, 1.0)])?;
        let with = step_times(&pipe, &p, args.runs)?;
        let base_med = report["step_ms_median"].as_f64().unwrap_or(f64::NAN);
        report["lora"] = serde_json::json!({
            "file": path,
            "rank": lora.rank,
            "modules": lora.modules.len(),
            "load_ms": lora_load_ms,
            "switch_ms_median": median(switch),
            "step_ms_median": median(with.clone()),
            "step_overhead_ratio": median(with.clone()) / base_med,
            "step_ms": with,
        });
    }
    report["peak_rss_bytes"] = serde_json::json!(peak_rss_bytes());
    report["weight_bytes"] = serde_json::json!(paths.weight_bytes());
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
