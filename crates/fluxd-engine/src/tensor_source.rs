//! Where a model's loader gets its tensors: one trait over every weight container (safetensors
//! files, GGUF files, tensors in memory) and the renaming views put in front of them, so each
//! model's loader is written once against its own names.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::quant::LinearWeight;
use crate::weights::WeightFiles;

/// Hands out named tensors, shape-checked.
pub(crate) trait TensorSource {
    /// Tensor `name`, which must have `shape`, as `dtype` on `device`.
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor>;

    /// A linear layer's `(out, in)` weight as the container holds it: dense in `dtype`, GGML
    /// blocks (GGUF; products run on them) or fp8 with its scale (upcast per product).
    fn get_weight(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<LinearWeight> {
        Ok(LinearWeight::Dense(self.get(name, shape, dtype, device)?))
    }

    /// Whether tensor `name` is present.
    fn contains(&self, name: &str) -> bool;
}

impl TensorSource for WeightFiles {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        self.get_shaped(name, shape, dtype, device)
    }

    /// fp8 weights as stored (with their scale), the others dense in `dtype`.
    fn get_weight(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<LinearWeight> {
        self.check_shape(name, shape)?;
        Ok(match self.get_fp8(name, device)? {
            Some(w) => LinearWeight::Fp8(w),
            None => LinearWeight::Dense(self.get(name, dtype, device)?),
        })
    }

    fn contains(&self, name: &str) -> bool {
        WeightFiles::contains(self, name)
    }
}

impl TensorSource for GgufFile {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        self.tensor_shaped(name, shape, dtype, device)
    }

    fn get_weight(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<LinearWeight> {
        self.weight(name, shape, dtype, device)
    }

    fn contains(&self, name: &str) -> bool {
        GgufFile::contains(self, name)
    }
}

/// Another source seen under other names: `rename` maps the loader's name to the stored one.
pub(crate) struct Renamed<'a> {
    pub inner: &'a dyn TensorSource,
    pub rename: &'a dyn Fn(&str) -> String,
}

impl TensorSource for Renamed<'_> {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        self.inner.get(&(self.rename)(name), shape, dtype, device)
    }

    fn get_weight(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<LinearWeight> {
        self.inner
            .get_weight(&(self.rename)(name), shape, dtype, device)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(&(self.rename)(name))
    }
}

/// The tensors of one weight file, safetensors or GGUF, told apart by its first bytes.
pub(crate) enum FileTensors {
    /// A safetensors file.
    Safetensors(WeightFiles),
    /// A GGUF file.
    Gguf(GgufFile),
}

impl FileTensors {
    /// Opens (maps) `file`.
    pub fn open(file: &Path) -> Result<Self> {
        Ok(if crate::gguf::is_gguf(file)? {
            Self::Gguf(GgufFile::open(file)?)
        } else {
            Self::Safetensors(WeightFiles::open(&[file.to_path_buf()])?)
        })
    }

    /// The names of its tensors.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Self::Safetensors(w) => w.names().collect(),
            Self::Gguf(g) => g.names().collect(),
        }
    }

    /// The file as a tensor source.
    pub fn source(&self) -> &dyn TensorSource {
        match self {
            Self::Safetensors(w) => w,
            Self::Gguf(g) => g,
        }
    }
}
