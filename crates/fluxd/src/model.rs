//! `fluxd model …`: making and inspecting model folders.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use fluxd_engine::control::depth::write_tiny_depth_anything;
use fluxd_engine::tiny_model::{write_tiny_model, TinyPreset};

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
