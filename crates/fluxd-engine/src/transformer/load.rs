//! Reading the transformer's weights from the layouts FLUX.1 ships in, into the canonical
//! (BFL-named, fused) representation.
//!
//! Each tensor is copied out of the memory map straight into the target dtype; fused layers are
//! assembled from their diffusers row blocks one layer at a time, so no second copy of the model
//! is ever held.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::config::FluxConfig;
use super::names::{diffusers_source, DiffusersSource};
use crate::error::{EngineError, Result};
use crate::fp8::Fp8Weight;
use crate::tiny_init::TensorMap;
use crate::weights::WeightFiles;

/// Something that hands out canonical tensors (`img_in.weight`, `single_blocks.0.linear1.bias`,
/// `double_blocks.0.img_attn.norm.query_norm.scale`, ...), shape-checked.
pub(crate) trait TensorSource {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor>;

    /// A linear weight to be held in fp8, if the source has it so (or stores every linear weight
    /// so); `None` means "ask [`TensorSource::get`] for it in the compute dtype".
    fn get_fp8(
        &self,
        _name: &str,
        _shape: &[usize],
        _device: &Device,
    ) -> Result<Option<Fp8Weight>> {
        Ok(None)
    }
}

/// A source whose linear weights are all held in fp8: fp8 ones as stored, the others
/// quantized one tensor at a time as they are read (`--weights-dtype fp8`).
pub(crate) struct StoreFp8<'a>(pub &'a dyn TensorSource);

impl TensorSource for StoreFp8<'_> {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        self.0.get(name, shape, dtype, device)
    }

    fn get_fp8(&self, name: &str, shape: &[usize], device: &Device) -> Result<Option<Fp8Weight>> {
        if let Some(w) = self.0.get_fp8(name, shape, device)? {
            return Ok(Some(w));
        }
        let dense = self.0.get(name, shape, DType::F32, device)?;
        Ok(Some(Fp8Weight::quantize(&dense)?))
    }
}

/// A BFL single file; `prefix` is `model.diffusion_model.` for ComfyUI files, else empty.
pub(crate) struct BflSource<'a> {
    pub weights: &'a WeightFiles,
    pub prefix: String,
}

impl TensorSource for BflSource<'_> {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        self.weights
            .get_shaped(&format!("{}{name}", self.prefix), shape, dtype, device)
    }

    fn get_fp8(&self, name: &str, shape: &[usize], device: &Device) -> Result<Option<Fp8Weight>> {
        let full = format!("{}{name}", self.prefix);
        self.weights.check_shape(&full, shape)?;
        self.weights.get_fp8(&full, device)
    }
}

/// The ComfyUI prefix of BFL names in checkpoint files that bundle the whole model.
pub(crate) const COMFY_PREFIX: &str = "model.diffusion_model.";

/// Finds which BFL naming a file uses: plain or with the ComfyUI prefix.
pub(crate) fn detect_bfl_prefix(weights: &WeightFiles, file: &Path) -> Result<String> {
    for prefix in ["", COMFY_PREFIX] {
        if weights.contains(&format!("{prefix}img_in.weight")) {
            return Ok(prefix.to_string());
        }
    }
    let hint = if weights.contains("x_embedder.weight") {
        "it has diffusers names; load the `transformer` folder with the diffusers layout"
    } else {
        "no `img_in.weight` (BFL) or `model.diffusion_model.img_in.weight` (ComfyUI) tensor"
    };
    Err(EngineError::UnknownLayout {
        path: file.to_path_buf(),
        msg: hint.to_string(),
    })
}

/// A diffusers `transformer/` folder.
pub(crate) struct DiffusersDirSource<'a> {
    pub weights: &'a WeightFiles,
    pub cfg: &'a FluxConfig,
    pub dir: PathBuf,
}

impl TensorSource for DiffusersDirSource<'_> {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let (module, suffix) = match name.rsplit_once('.') {
            Some((m, s @ ("weight" | "bias"))) => (m, s),
            _ => (name, ""),
        };
        // Norm scales (`...query_norm.scale`) are mapped by their full name, linears by module.
        let source =
            diffusers_source(self.cfg, module).ok_or_else(|| EngineError::UnknownLayout {
                path: self.dir.clone(),
                msg: format!("no diffusers name for canonical tensor `{name}`"),
            })?;
        let key = |m: &str| {
            if suffix.is_empty() {
                m.to_string()
            } else {
                format!("{m}.{suffix}")
            }
        };
        match source {
            DiffusersSource::Renamed(m) => self.weights.get_shaped(&key(&m), shape, dtype, device),
            DiffusersSource::Fused(parts) => {
                let mut pieces = Vec::with_capacity(parts.len());
                for (m, rows) in parts {
                    let mut part_shape = shape.to_vec();
                    if let Some(first) = part_shape.first_mut() {
                        *first = rows;
                    }
                    pieces.push(
                        self.weights
                            .get_shaped(&key(&m), part_shape, dtype, device)?,
                    );
                }
                let fused = Tensor::cat(&pieces, 0)?;
                if fused.dims() != shape {
                    return Err(EngineError::ShapeMismatch {
                        path: self.dir.clone(),
                        name: format!("{name} (fused)"),
                        expected: shape.to_vec(),
                        actual: fused.dims().to_vec(),
                    });
                }
                Ok(fused)
            }
            DiffusersSource::Swapped(m) => {
                let t = self.weights.get_shaped(&key(&m), shape, dtype, device)?;
                swap_halves(&t)
            }
        }
    }
}

/// Swaps the two halves of a tensor along dim 0 (shift/scale order, BFL ↔ diffusers).
pub(crate) fn swap_halves(t: &Tensor) -> Result<Tensor> {
    let n = t.dims().first().copied().unwrap_or(0);
    let half = n / 2;
    Ok(Tensor::cat(
        &[t.narrow(0, half, n - half)?, t.narrow(0, 0, half)?],
        0,
    )?)
}

/// Canonical tensors held in memory (benchmarks, tests).
pub(crate) struct MapSource<'a>(pub &'a TensorMap);

impl TensorSource for MapSource<'_> {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self.0.get(name).ok_or_else(|| EngineError::MissingTensor {
            name: name.to_string(),
            files: "(in-memory weights)".into(),
        })?;
        if t.dims() != shape {
            return Err(EngineError::ShapeMismatch {
                path: PathBuf::from("(in-memory weights)"),
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
}

/// How the transformer's linear weights are held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightsDtype {
    /// fp8 weights stay fp8 (upcast per layer at compute time); all others are converted to the
    /// compute dtype.
    #[default]
    Auto,
    /// Every linear weight is held in fp8 (per-tensor scale), converted one tensor at a time as
    /// it is read: half the memory of bf16, a quarter of f32.
    Fp8,
}

/// The config and key prefix of a BFL/ComfyUI single file, from its header.
pub(crate) fn bfl_config(files: &WeightFiles, file: &Path) -> Result<(FluxConfig, String)> {
    let prefix = detect_bfl_prefix(files, file)?;
    let name = |k: &str| format!("{prefix}{k}");
    Ok((FluxConfig::infer_bfl(files, file, &name)?, prefix))
}
