//! Where a model's loader gets its tensors: one trait over every weight container (safetensors
//! files, GGUF files, tensors in memory) and the renaming views put in front of them, so each
//! model's loader is written once against its own names.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::quant::LinearWeight;
use crate::weights::WeightFiles;

/// Hands out named tensors, shape-checked.
pub(crate) trait TensorSource {
    /// Tensor `name`, which must have `shape`, as `dtype` on `device`.
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor>;

    /// A linear layer's `(out, in)` weight: dense, or quantized where the container stores it
    /// so (products then run on the quantized blocks).
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
