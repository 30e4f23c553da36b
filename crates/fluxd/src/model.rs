//! `fluxd model …`: making and inspecting model folders.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use fluxd_engine::control::depth::write_tiny_depth_anything;
use fluxd_engine::gguf::{self, quantize_model};
use fluxd_engine::tiny_model::{write_tiny_model, TinyPreset};

use crate::progress::bar;

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
    /// Write a FLUX.1 transformer or a T5 encoder as a GGUF file in the layout people download
    /// (city96's FLUX GGUFs: BFL names, embedders and final layer kept in F32; llama.cpp's
    /// `t5encoder` names for T5), matrices in `--type`.
    Quantize(QuantizeArgs),
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
pub struct QuantizeArgs {
    /// The model: a diffusers `transformer/` folder, a BFL single file (safetensors or GGUF), a
    /// transformers T5 encoder folder (`text_encoder_2/`) or a `t5encoder` GGUF file.
    input: PathBuf,
    /// The GGUF file to write (default: `<input>-<TYPE>.gguf` beside the input).
    output: Option<PathBuf>,
    /// The type of the matrices: F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1, Q6_K, Q5_K, Q4_K,
    /// Q3_K or Q2_K (K-quants need rows that are multiples of 256; narrower rows fall back).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_ggml_type)]
    ty: candle_core::quantized::GgmlDType,
}

fn parse_ggml_type(s: &str) -> std::result::Result<candle_core::quantized::GgmlDType, String> {
    gguf::parse_type(s).ok_or_else(|| {
        let names: Vec<&str> = gguf::TYPES.iter().map(|(_, n)| *n).collect();
        format!("unknown type `{s}`; one of {}", names.join(", "))
    })
}

#[derive(Debug, clap::Args)]
pub struct InitTinyArgs {
    /// Folder to write (created if needed).
    dir: PathBuf,
    /// Seed for the random weights; the same seed always writes the same files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model size: `tiny` (a few MB), `medium` (FLUX's real head size, for benchmarks) or
    /// `quant` (rows of 256 and more, so every GGUF type applies; for quantization tests).
    #[arg(long, value_enum, default_value_t = Preset::Tiny)]
    preset: Preset,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Preset {
    Tiny,
    Medium,
    Quant,
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::InitTiny(args) => {
            let preset = match args.preset {
                Preset::Tiny => TinyPreset::Tiny,
                Preset::Medium => TinyPreset::Medium,
                Preset::Quant => TinyPreset::Quant,
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
        ModelCommand::Quantize(args) => {
            let output = args
                .output
                .clone()
                .unwrap_or_else(|| gguf::default_output(&args.input, args.ty));
            let pb = bar(0, "quantize");
            let report = quantize_model(&args.input, &output, args.ty, &mut |done, total| {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            })
            .with_context(|| {
                format!(
                    "quantizing {} to {}",
                    args.input.display(),
                    output.display()
                )
            })?;
            pb.finish_and_clear();
            let types: Vec<String> = report
                .types
                .iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect();
            eprintln!(
                "{}: {} tensors ({}), {:.1} MB",
                report.model,
                report.types.values().sum::<usize>(),
                types.join(", "),
                report.bytes as f64 / 1e6
            );
            println!("{}", output.display());
            Ok(())
        }
    }
}
