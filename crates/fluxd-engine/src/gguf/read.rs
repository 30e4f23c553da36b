//! Reading a GGUF file: the header through candle's `gguf_file`, the tensors in place from a
//! memory map.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use super::{is_quantized, type_name};
use crate::error::{EngineError, Result};
use crate::quant::blocks::MappedRange;
use crate::quant::{LinearWeight, QuantWeight};

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgufFile({})", self.path.display())
    }
}

impl GgufFile {
    /// Maps the file and parses its header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
        // SAFETY: read-only map of a weight file that is not expected to change while we run
        // (the assumption of every mmap-based loader, `weights.rs` included).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        let content = Content::read(&mut std::io::Cursor::new(&map[..])).map_err(|e| {
            EngineError::UnknownLayout {
                path: path.to_path_buf(),
                msg: format!("not a GGUF file fluxd can read: {e}"),
            }
        })?;
        let gguf = Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            content,
        };
        for name in gguf.content.tensor_infos.keys() {
            gguf.range(name)?;
        }
        Ok(gguf)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture` (`flux`, `t5encoder`, ...), if the file says.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A metadata value as an unsigned integer (any integer type).
    pub fn metadata_usize(&self, key: &str) -> Option<usize> {
        let v = self.metadata(key)?;
        v.to_u64()
            .ok()
            .or_else(|| v.to_u32().map(u64::from).ok())
            .or_else(|| v.to_i32().ok().and_then(|i| u64::try_from(i).ok()))
            .and_then(|u| usize::try_from(u).ok())
    }

    /// All tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor's shape in torch order (`(out, in)` for a linear weight).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims())
    }

    /// Every tensor's shape, by name.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.content
            .tensor_infos
            .iter()
            .map(|(n, i)| (n.clone(), i.shape.dims().to_vec()))
            .collect()
    }

    /// A tensor's ggml type.
    pub fn ggml_type(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|i| i.ggml_dtype)
    }

    /// How many tensors of each type the file holds, e.g. `Q4_K: 304, F32: 470`.
    pub fn type_summary(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for info in self.content.tensor_infos.values() {
            *counts.entry(type_name(info.ggml_dtype)).or_default() += 1;
        }
        counts
            .iter()
            .map(|(t, n)| format!("{t}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.names()
            .filter_map(|n| self.range(n).ok())
            .map(|r| r.len)
            .sum()
    }

    /// The error for a tensor that is not there.
    pub fn missing(&self, name: &str) -> EngineError {
        EngineError::MissingTensor {
            name: name.to_string(),
            files: self.path.display().to_string(),
        }
    }

    /// Fails with a message naming file and tensor unless `name` exists with shape `expected`.
    pub fn check_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let actual = self.shape(name).ok_or_else(|| self.missing(name))?;
        if actual != expected {
            return Err(EngineError::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: actual.to_vec(),
            });
        }
        Ok(())
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.missing(name))
    }

    /// Where a tensor's data lies in the file, bounds-checked.
    fn range(&self, name: &str) -> Result<MappedRange> {
        let info = self.info(name)?;
        let bad = |msg: String| EngineError::UnknownLayout {
            path: self.path.clone(),
            msg: format!("tensor `{name}`: {msg}"),
        };
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        let last = info.shape.dims().last().copied().unwrap_or(1);
        if !last.is_multiple_of(block) {
            return Err(bad(format!(
                "rows of {last} values do not fill {} blocks of {block}",
                type_name(info.ggml_dtype)
            )));
        }
        let len = elems / block * info.ggml_dtype.type_size();
        let start = usize::try_from(self.content.tensor_data_offset + info.offset)
            .map_err(|_| bad("offset past the address space".into()))?;
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.map.len())
        {
            return Err(bad(format!(
                "{len} bytes at offset {start} run past the end of the file ({} bytes)",
                self.map.len()
            )));
        }
        if !start.is_multiple_of(4) {
            return Err(bad(format!("data at offset {start} is not 4-byte aligned")));
        }
        Ok(MappedRange {
            map: self.map.clone(),
            start,
            len,
        })
    }

    /// A tensor as a dense tensor of `dtype` on `device`. Quantized tensors are dequantized:
    /// meant for the small ones (norms, biases, embedders); linear weights use [`Self::weight`].
    pub fn tensor(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let info = self.info(name)?;
        let range = self.range(name)?;
        let src = match info.ggml_dtype {
            GgmlDType::F32 => Some(DType::F32),
            GgmlDType::F16 => Some(DType::F16),
            GgmlDType::BF16 => Some(DType::BF16),
            _ => None,
        };
        let t = match src {
            Some(src) => {
                Tensor::from_raw_buffer(range.bytes(), src, info.shape.dims(), &Device::Cpu)?
            }
            None => self.qtensor(name, &Device::Cpu)?.dequantize(&Device::Cpu)?,
        };
        // The tensor owns a copy now: let the file pages go (see `weights.rs`).
        range.release_pages();
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    /// A tensor of `shape` as [`Self::tensor`], or an error naming it.
    pub fn tensor_shaped(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.check_shape(name, shape)?;
        self.tensor(name, dtype, device)
    }

    /// A linear layer's `(out, in)` weight of `shape`: float types as dense tensors of `dtype`,
    /// quantized types as they are (read in place on the CPU, copied to the device's memory
    /// otherwise), their products taking and giving `dtype`.
    pub fn weight(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<LinearWeight> {
        self.check_shape(name, shape)?;
        let gtype = self.ggml_type(name).ok_or_else(|| self.missing(name))?;
        if !is_quantized(gtype) {
            return Ok(LinearWeight::Dense(self.tensor(name, dtype, device)?));
        }
        let (out, inp) = match shape {
            [o, i] => (*o, *i),
            other => {
                return Err(EngineError::InvalidInput(format!(
                    "`{name}`: a linear weight must be a matrix, asked for {other:?}"
                )))
            }
        };
        let w = if device.is_cpu() {
            QuantWeight::mapped(gtype, (out, inp), self.range(name)?, dtype)?
        } else {
            QuantWeight::new(self.qtensor(name, device)?, dtype)?
        };
        Ok(LinearWeight::Quantized(w))
    }

    /// A tensor as candle's `QTensor` on `device` (a copy of its blocks).
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self.info(name)?;
        let range = self.range(name)?;
        let storage = QStorage::from_data(
            std::borrow::Cow::Borrowed(range.bytes()),
            device,
            info.ggml_dtype,
        )?;
        Ok(QTensor::new(storage, info.shape.clone())?)
    }
}
