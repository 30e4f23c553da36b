//! `fluxd model init-tiny`: a small random FLUX.1 model in the exact on-disk layout of
//! `black-forest-labs/FLUX.1-dev`, so that tests, demos and CI never need a download.
//!
//! Every component is written by the module that loads it (one piece of code per format), with
//! tokenizers trained offline on a built-in corpus. The same seed always gives the same files.
//! A tiny FLUX.1-Redux model for image prompts is written alongside, in `redux/`, and a demo
//! LoRA fine-tune for it in `lora/demo.safetensors` (kohya layout, the one most published FLUX.1
//! LoRAs use), so the README's walkthrough needs nothing but the `fluxd` binary.

use std::path::Path;

use crate::error::Result;
use crate::lora::{write_random_lora, LoraFormat};
use crate::redux::{write_tiny_redux_model, SiglipVisionConfig};
use crate::schedule::SchedulerConfig;
use crate::tiny_init::write_json;
use crate::transformer::FluxConfig;
use crate::{text_encoders, tokenizer, transformer, vae};

/// The sub-folder of a tiny model that holds its Redux model.
pub const TINY_REDUX_DIR: &str = "redux";

/// Which transformer size to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TinyPreset {
    /// A few MB: for tests and the out-of-the-box server.
    #[default]
    Tiny,
    /// A transformer with FLUX's real head size (128) and RoPE axes, for benchmarks.
    Medium,
}

impl TinyPreset {
    /// The transformer config of this preset. Both share the tiny text encoders, so the
    /// transformer's text and pooled widths are theirs.
    pub fn transformer_config(self) -> FluxConfig {
        let tiny = FluxConfig::tiny();
        match self {
            Self::Tiny => tiny,
            Self::Medium => FluxConfig {
                joint_attention_dim: tiny.joint_attention_dim,
                pooled_projection_dim: tiny.pooled_projection_dim,
                ..FluxConfig::medium()
            },
        }
    }
}

/// Writes a complete random FLUX.1 model to `dir` (created if needed), with a matching Redux
/// model in `dir/redux/` (see [`write_tiny_redux`]) and a demo LoRA ([`TINY_DEMO_LORA`]).
pub fn write_tiny_model(dir: &Path, seed: u64, preset: TinyPreset) -> Result<()> {
    let cfg = preset.transformer_config();
    write_json(&dir.join("model_index.json"), &model_index())?;
    write_json(
        &dir.join("scheduler").join("scheduler_config.json"),
        &SchedulerConfig::flux_dev().to_json(),
    )?;
    let vocab = tokenizer::write_tiny_tokenizers(&dir.join("tokenizer"), &dir.join("tokenizer_2"))?;
    text_encoders::write_tiny_clip(&dir.join("text_encoder"), vocab.clip_vocab_size, seed)?;
    text_encoders::write_tiny_t5(&dir.join("text_encoder_2"), vocab.t5_vocab_size, seed)?;
    transformer::write_tiny_diffusers(&dir.join("transformer"), &cfg, seed, 2)?;
    vae::write_tiny_vae(&dir.join("vae"), seed)?;
    write_tiny_redux(&dir.join(TINY_REDUX_DIR), seed)?;
    write_tiny_safety_checker(dir, seed)?;
    write_tiny_demo_lora(dir, seed, preset)
}

/// Where a tiny model keeps its demo LoRA, relative to the model folder (not a diffusers
/// component; loaders ignore it).
pub const TINY_DEMO_LORA: &str = "lora/demo.safetensors";
/// Rank of the demo LoRA.
const DEMO_LORA_RANK: usize = 4;

/// Writes the demo LoRA for a tiny model of `preset` to `model_dir/`[`TINY_DEMO_LORA`]: a random
/// rank-4 kohya adapter for every module of its transformer (same seed, same file).
pub fn write_tiny_demo_lora(model_dir: &Path, seed: u64, preset: TinyPreset) -> Result<()> {
    let path = model_dir.join(TINY_DEMO_LORA);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| crate::EngineError::io(parent, e))?;
    }
    write_random_lora(
        &path,
        LoraFormat::Kohya,
        &preset.transformer_config(),
        DEMO_LORA_RANK,
        seed,
        &|_| true,
    )
}

/// Writes a random FLUX.1-Redux model in the layout of `black-forest-labs/FLUX.1-Redux-dev` to
/// `dir`: the tiny SigLIP of [`SiglipVisionConfig::tiny`] and a projection to the tiny
/// transformer's text width (both presets share it), so its tokens condition the tiny model.
pub fn write_tiny_redux(dir: &Path, seed: u64) -> Result<()> {
    let joint_dim = TinyPreset::Tiny.transformer_config().joint_attention_dim;
    write_tiny_redux_model(dir, &SiglipVisionConfig::tiny(), joint_dim, seed)
}

/// Folder of the NSFW image classifier inside a model folder written by `init-tiny` (not a
/// diffusers component: `model_index.json` does not list it, so diffusers ignores it).
pub const SAFETY_CHECKER_DIR: &str = "safety_checker";

/// Writes the tiny NSFW classifier (transformers `ViTForImageClassification`, the format of
/// Falconsai/nsfw_image_detection) into `model_dir/safety_checker`; see `safety::tiny`.
pub fn write_tiny_safety_checker(model_dir: &Path, seed: u64) -> Result<()> {
    crate::safety::write_tiny_classifier(&model_dir.join(SAFETY_CHECKER_DIR), seed)
}

/// `model_index.json` as FLUX.1-dev ships it.
fn model_index() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "FluxPipeline",
        "_diffusers_version": "0.30.0.dev0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}
