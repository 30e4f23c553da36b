//! Writers of a tiny random FLUX-shaped autoencoder, in the diffusers layout (for
//! `fluxd model init-tiny`) and renamed to BFL's LDM layout (to check that both load alike).

use std::collections::HashMap;
use std::path::Path;

use super::names::diffusers_to_ldm;
use crate::error::{EngineError, Result};
use crate::tiny_init::{write_json, write_safetensors, InitRng, TensorMap};

const BLOCK_OUT: [usize; 4] = [16, 32, 32, 32];
const LAYERS: usize = 1;
const GROUPS: usize = 8;
const LATENT: usize = 16;
const IMAGE: usize = 3;

/// The tiny config as diffusers 0.42 saves an `AutoencoderKL`.
fn tiny_config_json() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "block_out_channels": BLOCK_OUT,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "force_upcast": true,
        "in_channels": IMAGE,
        "latent_channels": LATENT,
        "latents_mean": null,
        "latents_std": null,
        "layers_per_block": LAYERS,
        "mid_block_add_attention": true,
        "norm_num_groups": GROUPS,
        "out_channels": IMAGE,
        "sample_size": 32,
        "scaling_factor": super::FLUX_SCALING_FACTOR,
        "shift_factor": super::FLUX_SHIFT_FACTOR,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "use_post_quant_conv": false,
        "use_quant_conv": false,
    })
}

struct Gen {
    rng: InitRng,
    t: TensorMap,
}

impl Gen {
    fn conv(&mut self, name: &str, out: usize, inp: usize, k: usize) -> Result<()> {
        let std = 1.0 / ((inp * k * k) as f32).sqrt();
        self.t.insert(
            format!("{name}.weight"),
            self.rng.normal_tensor(&[out, inp, k, k], 0.0, std)?,
        );
        self.t.insert(
            format!("{name}.bias"),
            self.rng.normal_tensor(&[out], 0.0, 0.02)?,
        );
        Ok(())
    }

    fn linear(&mut self, name: &str, c: usize) -> Result<()> {
        self.t
            .insert(format!("{name}.weight"), self.rng.linear_weight(c, c)?);
        self.t.insert(
            format!("{name}.bias"),
            self.rng.normal_tensor(&[c], 0.0, 0.02)?,
        );
        Ok(())
    }

    fn norm(&mut self, name: &str, c: usize) -> Result<()> {
        self.t.insert(
            format!("{name}.weight"),
            self.rng.normal_tensor(&[c], 1.0, 0.1)?,
        );
        self.t.insert(
            format!("{name}.bias"),
            self.rng.normal_tensor(&[c], 0.0, 0.02)?,
        );
        Ok(())
    }

    fn resnet(&mut self, name: &str, inp: usize, out: usize) -> Result<()> {
        self.norm(&format!("{name}.norm1"), inp)?;
        self.conv(&format!("{name}.conv1"), out, inp, 3)?;
        self.norm(&format!("{name}.norm2"), out)?;
        self.conv(&format!("{name}.conv2"), out, out, 3)?;
        if inp != out {
            self.conv(&format!("{name}.conv_shortcut"), out, inp, 1)?;
        }
        Ok(())
    }

    fn mid(&mut self, name: &str, c: usize) -> Result<()> {
        self.resnet(&format!("{name}.resnets.0"), c, c)?;
        let a = format!("{name}.attentions.0");
        self.norm(&format!("{a}.group_norm"), c)?;
        for p in ["to_q", "to_k", "to_v", "to_out.0"] {
            self.linear(&format!("{a}.{p}"), c)?;
        }
        self.resnet(&format!("{name}.resnets.1"), c, c)
    }
}

/// All tensors of the tiny `AutoencoderKL`, encoder and decoder, under diffusers names.
fn tiny_vae_tensors(seed: u64) -> Result<TensorMap> {
    let mut g = Gen {
        rng: InitRng::new(seed, "vae"),
        t: TensorMap::new(),
    };
    let n = BLOCK_OUT.len();
    let top = BLOCK_OUT[n - 1];
    // Encoder (diffusers `Encoder`): conv_in, down blocks with a stride-2 conv on all but the
    // last, mid block, norm, conv_out to 2·latent (mean and log-variance).
    g.conv("encoder.conv_in", BLOCK_OUT[0], IMAGE, 3)?;
    let mut prev = BLOCK_OUT[0];
    for (i, &out) in BLOCK_OUT.iter().enumerate() {
        for j in 0..LAYERS {
            let cin = if j == 0 { prev } else { out };
            g.resnet(&format!("encoder.down_blocks.{i}.resnets.{j}"), cin, out)?;
        }
        if i + 1 < n {
            g.conv(
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                out,
                out,
                3,
            )?;
        }
        prev = out;
    }
    g.mid("encoder.mid_block", top)?;
    g.norm("encoder.conv_norm_out", top)?;
    g.conv("encoder.conv_out", 2 * LATENT, top, 3)?;
    // Decoder (diffusers `Decoder`), coarsest level first.
    g.conv("decoder.conv_in", top, LATENT, 3)?;
    g.mid("decoder.mid_block", top)?;
    let mut prev = top;
    for u in 0..n {
        let out = BLOCK_OUT[n - 1 - u];
        for j in 0..=LAYERS {
            let cin = if j == 0 { prev } else { out };
            g.resnet(&format!("decoder.up_blocks.{u}.resnets.{j}"), cin, out)?;
        }
        if u + 1 < n {
            g.conv(
                &format!("decoder.up_blocks.{u}.upsamplers.0.conv"),
                out,
                out,
                3,
            )?;
        }
        prev = out;
    }
    g.norm("decoder.conv_norm_out", BLOCK_OUT[0])?;
    g.conv("decoder.conv_out", IMAGE, BLOCK_OUT[0], 3)?;
    Ok(g.t)
}

/// Writes a tiny random diffusers `AutoencoderKL` (`config.json` and
/// `diffusion_pytorch_model.safetensors`, encoder included) into `dir`.
pub fn write_tiny_vae(dir: &Path, seed: u64) -> Result<()> {
    write_json(&dir.join("config.json"), &tiny_config_json())?;
    write_safetensors(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &tiny_vae_tensors(seed)?,
    )
}

/// The tiny VAE's diffusers tensors renamed to BFL's LDM layout (attention projections as 1×1
/// convs), as `ae.safetensors` and ComfyUI checkpoints (under `vae.`) hold them.
pub fn diffusers_vae_to_ldm(tensors: TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (name, t) in tensors {
        let ldm = diffusers_to_ldm(&name, BLOCK_OUT.len());
        let t = if name.contains(".attentions.0.to_") && name.ends_with(".weight") {
            let (o, i) = t.dims2()?;
            t.reshape((o, i, 1, 1))?
        } else {
            t
        };
        out.insert(ldm, t);
    }
    Ok(out)
}

/// The GroupNorm group count of the tiny VAE, which LDM files record in their metadata
/// (`norm_num_groups`; FLUX's own is 32, the loader's default).
pub const TINY_VAE_GROUPS: usize = GROUPS;

/// Writes the same weights as [`write_tiny_vae`] with `seed`, renamed to BFL's LDM layout
/// (attention projections as 1×1 convs), as one `ae.safetensors`-style file. Its metadata
/// records `norm_num_groups`, which [`super::VaeDecoder::load_bfl`] reads.
pub fn write_tiny_ae_bfl(file: &Path, seed: u64) -> Result<()> {
    let out = diffusers_vae_to_ldm(tiny_vae_tensors(seed)?)?;
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    }
    let meta: HashMap<String, String> = [("norm_num_groups".to_string(), GROUPS.to_string())]
        .into_iter()
        .collect();
    safetensors::serialize_to_file(out.iter().map(|(k, v)| (k.as_str(), v)), Some(meta), file)
        .map_err(|e| EngineError::Io {
            path: file.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(())
}
