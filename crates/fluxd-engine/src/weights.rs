//! Memory-mapped safetensors weights, single files or sharded with an index json.
//!
//! Each file is mapped once; a tensor is copied out of the map only when a model asks for it, so
//! loading never holds two full copies of a model. Lookups fail with the file and tensor named.
//!
//! fp8 tensors (`F8_E4M3`, with ComfyUI's per-tensor scales, see [`crate::fp8`]; `F8_E5M2`) are
//! dequantized when asked for in another dtype; [`WeightFiles::get_fp8`] hands them out as
//! stored, for layers that keep fp8 weights in memory. A set opened with a key prefix
//! ([`WeightFiles::open_prefixed`]) sees one component of a checkpoint that bundles several.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors};

use crate::error::{EngineError, Result};
use crate::fp8::{weight_scale_names, Fp8Weight};

struct Entry {
    file: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A set of safetensors files seen as one name → tensor map.
pub struct WeightFiles {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    entries: HashMap<String, Entry>,
}

impl WeightFiles {
    /// Maps the given files. Later files do not override earlier ones: a duplicate name is an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        Self::open_prefixed(paths, "")
    }

    /// Maps the given files and keeps only the tensors whose names start with `prefix`, seen
    /// without it (e.g. `text_encoders.t5xxl.transformer.` of a ComfyUI checkpoint).
    pub fn open_prefixed(paths: &[PathBuf], prefix: &str) -> Result<Self> {
        let mut maps = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (file_idx, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
            // SAFETY: the map is read-only; the weight files are not expected to change while we
            // run (the same assumption every mmap-based loader makes).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| EngineError::BadSafetensors {
                    path: path.clone(),
                    msg: e.to_string(),
                })?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let Some(name) = name.strip_prefix(prefix) else {
                    continue;
                };
                let name = name.to_string();
                let (start, end) = info.data_offsets;
                if data_start + end > map.len() {
                    return Err(EngineError::BadSafetensors {
                        path: path.clone(),
                        msg: format!("tensor `{name}` extends past the end of the file"),
                    });
                }
                let entry = Entry {
                    file: file_idx,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + start,
                    end: data_start + end,
                };
                if let Some(prev) = entries.insert(name.clone(), entry) {
                    return Err(EngineError::BadSafetensors {
                        path: path.clone(),
                        msg: format!(
                            "tensor `{name}` also present in {}",
                            paths[prev.file].display()
                        ),
                    });
                }
            }
            maps.push(map);
        }
        Ok(Self {
            paths: paths.to_vec(),
            maps,
            entries,
        })
    }

    /// Opens a component folder the way diffusers/transformers lay it out: an index json
    /// (`<stem>.safetensors.index.json`) naming the shards, or a single `<stem>.safetensors`.
    /// `stems` are tried in order (e.g. `diffusion_pytorch_model`, `model`).
    pub fn open_dir(dir: &Path, stems: &[&str]) -> Result<Self> {
        for stem in stems {
            let index = dir.join(format!("{stem}.safetensors.index.json"));
            if index.is_file() {
                return Self::open(&shards_from_index(&index)?);
            }
            let single = dir.join(format!("{stem}.safetensors"));
            if single.is_file() {
                return Self::open(&[single]);
            }
        }
        Err(EngineError::MissingFile {
            path: dir.join(format!(
                "{}.safetensors",
                stems.first().copied().unwrap_or("model")
            )),
            what: format!(
                "weights ({} or a sharded index)",
                stems.join(".safetensors, ")
            ),
        })
    }

    /// The files behind this set.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// All tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The stored shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The file that holds `name` (for error messages).
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.entries.get(name).map(|e| self.paths[e.file].as_path())
    }

    /// Total bytes of tensor data in the files.
    pub fn total_bytes(&self) -> usize {
        self.entries.values().map(|e| e.end - e.start).sum()
    }

    /// The dtype a tensor is stored in, if present.
    pub fn stored_dtype(&self, name: &str) -> Option<StDtype> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// Loads a tensor, converted to `dtype` on `device`. fp8 tensors are dequantized (times
    /// their ComfyUI scale, if the file has one).
    pub fn get(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        if let Some(w) = self.get_fp8(name, &Device::Cpu)? {
            return Ok(w.dequantize(dtype)?.to_device(device)?);
        }
        let entry = self.entries.get(name).ok_or_else(|| self.missing(name))?;
        let t = match entry.dtype {
            // Widened on the CPU; candle has no e5m2 dtype to keep it in.
            StDtype::F8_E5M2 => {
                let data = crate::fp8::e5m2_to_f16(self.bytes(entry));
                let t = Tensor::from_vec(data, entry.shape.as_slice(), &Device::Cpu)?;
                self.release(entry);
                t
            }
            other => self.raw(name, entry, other)?,
        };
        let t = if t.dtype() == dtype {
            t
        } else {
            t.to_dtype(dtype)?
        };
        Ok(t.to_device(device)?)
    }

    /// An `F8_E4M3` tensor as stored, with its per-tensor scale (`scale_weight` or
    /// `weight_scale` beside it, 1 without), on `device`; `None` if the tensor is stored in
    /// another dtype. A scale that is not one number is refused: per-channel or block scales
    /// are other formats.
    pub fn get_fp8(&self, name: &str, device: &Device) -> Result<Option<Fp8Weight>> {
        let entry = self.entries.get(name).ok_or_else(|| self.missing(name))?;
        if entry.dtype != StDtype::F8_E4M3 {
            return Ok(None);
        }
        let mut scale = 1.0f32;
        for scale_name in weight_scale_names(name) {
            let Some(s) = self.entries.get(&scale_name) else {
                continue;
            };
            if s.shape.iter().product::<usize>() != 1 {
                return Err(EngineError::UnsupportedDtype {
                    path: self.paths[s.file].clone(),
                    name: name.to_string(),
                    dtype: format!(
                        "F8_E4M3 with a scale `{scale_name}` of shape {:?} (only one scale per \
                         tensor is supported)",
                        s.shape
                    ),
                });
            }
            let s = self.get(&scale_name, DType::F32, &Device::Cpu)?;
            scale = s.flatten_all()?.to_vec1::<f32>()?[0];
            if !scale.is_finite() {
                return Err(EngineError::InvalidInput(format!(
                    "{}: fp8 scale `{scale_name}` is not a finite number",
                    self.paths[entry.file].display()
                )));
            }
            break;
        }
        let weight = self.raw(name, entry, StDtype::F8_E4M3)?.to_device(device)?;
        Ok(Some(Fp8Weight { weight, scale }))
    }

    /// The tensor's bytes as candle's dtype of the same name, on the CPU.
    fn raw(&self, name: &str, entry: &Entry, st: StDtype) -> Result<Tensor> {
        let src_dtype = match st {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::F64 => DType::F64,
            StDtype::U8 => DType::U8,
            StDtype::U32 => DType::U32,
            StDtype::I64 => DType::I64,
            StDtype::F8_E4M3 => DType::F8E4M3,
            other => {
                return Err(EngineError::UnsupportedDtype {
                    path: self.paths[entry.file].clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(self.bytes(entry), src_dtype, &entry.shape, &Device::Cpu)?;
        self.release(entry);
        Ok(t)
    }

    fn bytes(&self, entry: &Entry) -> &[u8] {
        &self.maps[entry.file][entry.start..entry.end]
    }

    /// Drops a copied-out range's file pages from our resident set, so that loading a model
    /// never holds the mapped file and the loaded weights at once.
    fn release(&self, entry: &Entry) {
        // SAFETY: a read-only file mapping; DONTNEED only discards pages, which the kernel reads
        // back from the file if they are touched again, and no slice of the range is alive.
        #[cfg(unix)]
        let _ = unsafe {
            self.maps[entry.file].unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                entry.start,
                entry.end - entry.start,
            )
        };
    }

    /// Loads a tensor and checks its shape.
    pub fn get_shaped(
        &self,
        name: &str,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape: Shape = shape.into();
        self.check_shape(name, shape.dims())?;
        self.get(name, dtype, device)
    }

    /// Fails with a message naming file and tensor unless `name` exists with shape `expected`.
    pub fn check_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let entry = self.entries.get(name).ok_or_else(|| self.missing(name))?;
        if entry.shape != expected {
            return Err(EngineError::ShapeMismatch {
                path: self.paths[entry.file].clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: entry.shape.clone(),
            });
        }
        Ok(())
    }

    /// The error for a tensor that is not there.
    pub fn missing(&self, name: &str) -> EngineError {
        let files: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        EngineError::MissingTensor {
            name: name.to_string(),
            files: files.join(", "),
        }
    }

    /// A candle `VarBuilder` over these weights, for model code written against candle-nn.
    /// Errors it returns name the file and tensor too.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> candle_nn::VarBuilder<'_> {
        candle_nn::VarBuilder::from_backend(Box::new(Backend(self)), dtype, device.clone())
    }
}

struct Backend<'a>(&'a WeightFiles);

impl candle_nn::var_builder::SimpleBackend for Backend<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .check_shape(name, s.dims())
            .map_err(candle_core::Error::wrap)?;
        self.get_unchecked(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get(name, dtype, dev).map_err(|e| match e {
            EngineError::Candle(c) => c,
            other => candle_core::Error::wrap(other),
        })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Reads a `*.safetensors.index.json` and returns its shard paths, in order, deduplicated.
pub fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| EngineError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::config(index, e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| EngineError::config(index, "no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<String> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            EngineError::config(index, format!("weight_map[{name}] is not a string"))
        })?;
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    shards.sort();
    let mut paths = Vec::with_capacity(shards.len());
    for s in shards {
        let p = dir.join(&s);
        if !p.is_file() {
            return Err(EngineError::MissingFile {
                path: p,
                what: format!("shard listed in {}", index.display()),
            });
        }
        paths.push(p);
    }
    Ok(paths)
}
