//! Writing a tiny random FLUX.1-Redux model in the layout of `black-forest-labs/FLUX.1-Redux-dev`
//! (`model_index.json`, `feature_extractor/`, `image_encoder/`, `image_embedder/`, and the BFL
//! single file `flux1-redux-dev.safetensors` at the root), which diffusers'
//! `FluxPriorReduxPipeline.from_pretrained` loads with no missing or unexpected keys.

use std::path::Path;

use super::siglip::SiglipVisionConfig;
use crate::error::{EngineError, Result};
use crate::tiny_init::{write_json, write_safetensors, InitRng, TensorMap};

/// The BFL single-file name of the Redux projection, as FLUX.1-Redux-dev ships it.
pub const BFL_REDUX_FILE: &str = "flux1-redux-dev.safetensors";

impl SiglipVisionConfig {
    /// The tiny SigLIP of `fluxd model init-tiny`: 32 wide, 2 layers of 2 heads, patch 14 on a
    /// 62-pixel input, so that, as with the real 384-pixel input, the patch grid (4×4 = 16 tokens)
    /// leaves a 6-pixel remainder the convolution drops.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_channels: 3,
            image_size: 62,
            patch_size: 14,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["SiglipVisionModel"],
            "attention_dropout": 0.0,
            "dtype": "float32",
            "torch_dtype": "float32",
            "hidden_act": self.hidden_act,
            "hidden_size": self.hidden_size,
            "image_size": self.image_size,
            "intermediate_size": self.intermediate_size,
            "layer_norm_eps": self.layer_norm_eps,
            "model_type": "siglip_vision_model",
            "num_attention_heads": self.num_attention_heads,
            "num_channels": self.num_channels,
            "num_hidden_layers": self.num_hidden_layers,
            "patch_size": self.patch_size,
            "transformers_version": "5.23.0",
        })
    }
}

fn linear(rng: &mut InitRng, t: &mut TensorMap, name: &str, out: usize, inp: usize) -> Result<()> {
    t.insert(format!("{name}.weight"), rng.linear_weight(out, inp)?);
    t.insert(
        format!("{name}.bias"),
        rng.normal_tensor(&[out], 0.0, 0.02)?,
    );
    Ok(())
}

fn norm(rng: &mut InitRng, t: &mut TensorMap, name: &str, dim: usize) -> Result<()> {
    t.insert(
        format!("{name}.weight"),
        rng.normal_tensor(&[dim], 1.0, 0.1)?,
    );
    t.insert(
        format!("{name}.bias"),
        rng.normal_tensor(&[dim], 0.0, 0.02)?,
    );
    Ok(())
}

/// Random `SiglipVisionModel` weights with transformers' key names, the pooling head included
/// (FLUX.1-Redux-dev's encoder has it; Redux does not use it).
fn siglip_weights(cfg: &SiglipVisionConfig, seed: u64) -> Result<TensorMap> {
    let mut rng = InitRng::new(seed, "image_encoder");
    let mut t = TensorMap::new();
    let (h, f, ps, c) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.patch_size,
        cfg.num_channels,
    );
    let p = "vision_model";
    let fan_in = c * ps * ps;
    t.insert(
        format!("{p}.embeddings.patch_embedding.weight"),
        rng.normal_tensor(&[h, c, ps, ps], 0.0, 1.0 / (fan_in as f32).sqrt())?,
    );
    t.insert(
        format!("{p}.embeddings.patch_embedding.bias"),
        rng.normal_tensor(&[h], 0.0, 0.02)?,
    );
    t.insert(
        format!("{p}.embeddings.position_embedding.weight"),
        rng.normal_tensor(&[cfg.num_patches(), h], 0.0, 0.5)?,
    );
    for i in 0..cfg.num_hidden_layers {
        let l = format!("{p}.encoder.layers.{i}");
        for name in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            linear(&mut rng, &mut t, &format!("{l}.self_attn.{name}"), h, h)?;
        }
        linear(&mut rng, &mut t, &format!("{l}.mlp.fc1"), f, h)?;
        linear(&mut rng, &mut t, &format!("{l}.mlp.fc2"), h, f)?;
        norm(&mut rng, &mut t, &format!("{l}.layer_norm1"), h)?;
        norm(&mut rng, &mut t, &format!("{l}.layer_norm2"), h)?;
    }
    norm(&mut rng, &mut t, &format!("{p}.post_layernorm"), h)?;
    let head = format!("{p}.head");
    t.insert(
        format!("{head}.probe"),
        rng.normal_tensor(&[1, 1, h], 0.0, 0.5)?,
    );
    t.insert(
        format!("{head}.attention.in_proj_weight"),
        rng.linear_weight(3 * h, h)?,
    );
    t.insert(
        format!("{head}.attention.in_proj_bias"),
        rng.normal_tensor(&[3 * h], 0.0, 0.02)?,
    );
    linear(
        &mut rng,
        &mut t,
        &format!("{head}.attention.out_proj"),
        h,
        h,
    )?;
    norm(&mut rng, &mut t, &format!("{head}.layernorm"), h)?;
    linear(&mut rng, &mut t, &format!("{head}.mlp.fc1"), f, h)?;
    linear(&mut rng, &mut t, &format!("{head}.mlp.fc2"), h, f)?;
    Ok(t)
}

/// Random Redux projection weights (`redux_up`: redux_dim → 3·joint, `redux_down`: 3·joint →
/// joint), with the key names both the diffusers and the BFL files use.
fn embedder_weights(redux_dim: usize, joint_dim: usize, seed: u64) -> Result<TensorMap> {
    let mut rng = InitRng::new(seed, "image_embedder");
    let mut t = TensorMap::new();
    linear(&mut rng, &mut t, "redux_up", 3 * joint_dim, redux_dim)?;
    linear(&mut rng, &mut t, "redux_down", joint_dim, 3 * joint_dim)?;
    Ok(t)
}

/// Writes a random FLUX.1-Redux model to `dir` (created if needed): a SigLIP vision encoder of
/// config `siglip` and a projection to `joint_dim`, the text width of the FLUX transformer it
/// feeds. The same seed always gives the same files.
pub fn write_tiny_redux_model(
    dir: &Path,
    siglip: &SiglipVisionConfig,
    joint_dim: usize,
    seed: u64,
) -> Result<()> {
    if joint_dim == 0 {
        return Err(EngineError::InvalidInput(
            "joint_dim must be positive".into(),
        ));
    }
    write_json(
        &dir.join("model_index.json"),
        &serde_json::json!({
            "_class_name": "FluxPriorReduxPipeline",
            "_diffusers_version": "0.32.0.dev0",
            "feature_extractor": ["transformers", "SiglipImageProcessor"],
            "image_embedder": ["diffusers", "ReduxImageEncoder"],
            "image_encoder": ["transformers", "SiglipVisionModel"],
        }),
    )?;
    write_json(
        &dir.join("feature_extractor")
            .join("preprocessor_config.json"),
        &serde_json::json!({
            "do_convert_rgb": null,
            "do_normalize": true,
            "do_rescale": true,
            "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5],
            "processor_class": "SiglipProcessor",
            "resample": 3,
            "rescale_factor": 1.0 / 255.0,
            "size": {"height": siglip.image_size, "width": siglip.image_size},
        }),
    )?;
    let enc = dir.join("image_encoder");
    write_json(&enc.join("config.json"), &siglip.to_json())?;
    write_safetensors(
        &enc.join("model.safetensors"),
        &siglip_weights(siglip, seed)?,
    )?;
    let emb = dir.join("image_embedder");
    write_json(
        &emb.join("config.json"),
        &serde_json::json!({
            "_class_name": "ReduxImageEncoder",
            "_diffusers_version": "0.32.0.dev0",
            "redux_dim": siglip.hidden_size,
            "txt_in_features": joint_dim,
        }),
    )?;
    let weights = embedder_weights(siglip.hidden_size, joint_dim, seed)?;
    write_safetensors(&emb.join("diffusion_pytorch_model.safetensors"), &weights)?;
    write_safetensors(&dir.join(BFL_REDUX_FILE), &weights)
}
