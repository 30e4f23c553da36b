//! Tensor names of the two VAE layouts. The model code asks for diffusers `AutoencoderKL` names;
//! for a BFL `ae.safetensors` they are translated to the original LDM names, following diffusers
//! `loaders/single_file_utils.py convert_ldm_vae_checkpoint` in reverse: `up_blocks.{u}` is
//! `up.{n-1-u}`, `mid_block.resnets.{0,1}` is `mid.block_{1,2}`, `conv_shortcut` is
//! `nin_shortcut`, `conv_norm_out` is `norm_out`, and the attention's linear layers are 1×1
//! convolutions `mid.attn_1.{q,k,v,proj_out}` with a `norm`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::weights::WeightFiles;

/// Which naming a weight file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// diffusers `AutoencoderKL`.
    Diffusers,
    /// BFL / LDM `AutoEncoder`, with `levels` resolution levels (for reversing up indices).
    Ldm { levels: usize },
}

/// Weight files seen through diffusers names.
pub(crate) struct Source<'a> {
    pub(crate) files: &'a WeightFiles,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) device: &'a Device,
}

impl Source<'_> {
    /// The first weight file, for config errors.
    pub(crate) fn path(&self) -> PathBuf {
        self.files.paths().first().cloned().unwrap_or_default()
    }

    fn name(&self, diffusers: &str) -> String {
        match self.layout {
            Layout::Diffusers => diffusers.to_string(),
            Layout::Ldm { levels } => diffusers_to_ldm(diffusers, levels),
        }
    }

    /// Loads the tensor a diffusers name denotes, checking its shape.
    pub(crate) fn get(&self, diffusers: &str, shape: &[usize]) -> Result<Tensor> {
        self.files
            .get_shaped(&self.name(diffusers), shape, self.dtype, self.device)
    }

    /// Loads a linear weight `out × in`, stored as a 1×1 conv in the LDM layout.
    pub(crate) fn get_linear(&self, diffusers: &str, out: usize, inp: usize) -> Result<Tensor> {
        match self.layout {
            Layout::Diffusers => self.get(diffusers, &[out, inp]),
            Layout::Ldm { .. } => Ok(self
                .get(diffusers, &[out, inp, 1, 1])?
                .reshape((out, inp))?),
        }
    }
}

/// Translates a diffusers `AutoencoderKL` tensor name to its LDM (BFL `ae.safetensors`) name.
/// `levels` is the number of resolution levels (`len(block_out_channels)`).
pub(crate) fn diffusers_to_ldm(name: &str, levels: usize) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        let rest = &parts[i..];
        match rest {
            ["conv_norm_out", ..] => {
                out.push("norm_out".into());
                i += 1;
            }
            ["mid_block", "resnets", j, ..] => {
                out.push("mid".into());
                out.push(if *j == "0" {
                    "block_1".into()
                } else {
                    "block_2".into()
                });
                i += 3;
            }
            ["mid_block", "attentions", "0", inner, ..] => {
                out.push("mid".into());
                out.push("attn_1".into());
                let (mapped, used) = match (*inner, rest.get(4).copied()) {
                    ("group_norm", _) => ("norm", 1),
                    ("to_q", _) => ("q", 1),
                    ("to_k", _) => ("k", 1),
                    ("to_v", _) => ("v", 1),
                    ("to_out", Some("0")) => ("proj_out", 2),
                    (other, _) => (other, 1),
                };
                out.push(mapped.into());
                i += 3 + used;
            }
            ["up_blocks", u, "upsamplers", "0", ..] => {
                let idx = u.parse::<usize>().map(|u| levels.saturating_sub(1 + u));
                out.push("up".into());
                out.push(
                    idx.map(|v| v.to_string())
                        .unwrap_or_else(|_| (*u).to_string()),
                );
                out.push("upsample".into());
                i += 4;
            }
            ["up_blocks", u, "resnets", j, ..] => {
                let idx = u.parse::<usize>().map(|u| levels.saturating_sub(1 + u));
                out.push("up".into());
                out.push(
                    idx.map(|v| v.to_string())
                        .unwrap_or_else(|_| (*u).to_string()),
                );
                out.push("block".into());
                out.push((*j).to_string());
                i += 4;
            }
            ["down_blocks", d, "downsamplers", "0", ..] => {
                out.extend(["down".into(), (*d).to_string(), "downsample".into()]);
                i += 4;
            }
            ["down_blocks", d, "resnets", j, ..] => {
                out.extend([
                    "down".into(),
                    (*d).to_string(),
                    "block".into(),
                    (*j).to_string(),
                ]);
                i += 4;
            }
            ["conv_shortcut", ..] => {
                out.push("nin_shortcut".into());
                i += 1;
            }
            [p, ..] => {
                out.push((*p).to_string());
                i += 1;
            }
            [] => break,
        }
    }
    out.join(".")
}

/// Reads the `__metadata__` string map of a safetensors file (BFL files carry none; our tiny
/// `ae.safetensors` records its GroupNorm group count there, which no tensor shape reveals).
pub(crate) fn safetensors_metadata(
    path: &Path,
) -> Result<std::collections::HashMap<String, String>> {
    use std::io::Read;
    let bad = |msg: String| crate::error::EngineError::BadSafetensors {
        path: path.to_path_buf(),
        msg,
    };
    let mut f = std::fs::File::open(path).map_err(|e| crate::error::EngineError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let len = u64::from_le_bytes(len) as usize;
    if len > 100_000_000 {
        return Err(bad(format!("header of {len} bytes")));
    }
    let mut header = vec![0u8; len];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let mut out = std::collections::HashMap::new();
    if let Some(meta) = json.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in meta {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::diffusers_to_ldm;

    #[test]
    fn ldm_names() {
        let cases = [
            ("decoder.conv_in.weight", "decoder.conv_in.weight"),
            ("decoder.conv_norm_out.bias", "decoder.norm_out.bias"),
            (
                "decoder.mid_block.resnets.0.norm1.weight",
                "decoder.mid.block_1.norm1.weight",
            ),
            (
                "decoder.mid_block.resnets.1.conv2.bias",
                "decoder.mid.block_2.conv2.bias",
            ),
            (
                "decoder.mid_block.attentions.0.group_norm.weight",
                "decoder.mid.attn_1.norm.weight",
            ),
            (
                "decoder.mid_block.attentions.0.to_q.weight",
                "decoder.mid.attn_1.q.weight",
            ),
            (
                "decoder.mid_block.attentions.0.to_out.0.bias",
                "decoder.mid.attn_1.proj_out.bias",
            ),
            (
                "decoder.up_blocks.0.resnets.2.conv1.weight",
                "decoder.up.3.block.2.conv1.weight",
            ),
            (
                "decoder.up_blocks.3.resnets.0.conv_shortcut.weight",
                "decoder.up.0.block.0.nin_shortcut.weight",
            ),
            (
                "decoder.up_blocks.1.upsamplers.0.conv.bias",
                "decoder.up.2.upsample.conv.bias",
            ),
            (
                "encoder.down_blocks.2.downsamplers.0.conv.weight",
                "encoder.down.2.downsample.conv.weight",
            ),
            (
                "encoder.down_blocks.1.resnets.0.norm2.bias",
                "encoder.down.1.block.0.norm2.bias",
            ),
            ("encoder.conv_out.weight", "encoder.conv_out.weight"),
        ];
        for (d, l) in cases {
            assert_eq!(diffusers_to_ldm(d, 4), l, "{d}");
        }
    }
}
