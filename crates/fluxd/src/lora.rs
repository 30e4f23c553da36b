//! `fluxd lora …`: what a LoRA file holds and whether it fits a model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use fluxd_engine::lora::{inspect, LoraFile};
use fluxd_engine::model_dir::ModelPaths;
use fluxd_engine::transformer::FluxTransformer;

#[derive(Debug, Subcommand)]
pub enum LoraCommand {
    /// Print a LoRA file's format, ranks, alphas, targeted modules and the base it fits (JSON).
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The LoRA safetensors file.
    file: PathBuf,
    /// Also check every module against this model's transformer (diffusers folder).
    #[arg(long)]
    model: Option<PathBuf>,
}

pub fn run(cmd: LoraCommand) -> Result<()> {
    match cmd {
        LoraCommand::Inspect(args) => {
            let summary =
                inspect(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
            let mut report = serde_json::to_value(&summary)?;
            if let Some(model) = &args.model {
                let paths = ModelPaths::resolve(model, None, None)?;
                let cfg = FluxTransformer::config_of(&paths.transformer)?;
                let fits = match LoraFile::load_for(&args.file, &cfg) {
                    Ok(l) => serde_json::json!({"fits": true, "modules_matched": l.modules.len()}),
                    Err(e) => serde_json::json!({"fits": false, "error": e.to_string()}),
                };
                report["model_check"] = fits;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
