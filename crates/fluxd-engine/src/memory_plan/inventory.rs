//! What a weight file holds — names, stored types, shapes — read from its header alone: the
//! safetensors JSON header or the GGUF tensor table (candle's `gguf_file`). No tensor data is
//! read, so a plan for a 24 GB model costs a few kilobytes of I/O.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use safetensors::tensor::{Dtype as StDtype, Metadata};

use crate::error::{EngineError, Result};

/// How one tensor is stored in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A safetensors dtype.
    Safetensors(StDtype),
    /// A GGUF (ggml) type, quantized or not.
    Gguf(GgmlDType),
}

impl Stored {
    /// Bytes of `elems` elements in this type as the file stores them.
    pub fn bytes(self, elems: u64) -> u64 {
        match self {
            Self::Safetensors(d) => elems * d.bitsize() as u64 / 8,
            Self::Gguf(t) => {
                let block = t.block_size() as u64;
                elems.div_ceil(block) * t.type_size() as u64
            }
        }
    }

    /// Whether the engine keeps this type as stored in memory rather than converting it to the
    /// compute dtype: fp8 (`F8_E4M3`) and GGUF's quantized types (matrix products run on them).
    pub fn kept_as_stored(self) -> bool {
        match self {
            Self::Safetensors(d) => d == StDtype::F8_E4M3,
            Self::Gguf(t) => !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16),
        }
    }

    /// The type's name as its format spells it (`BF16`, `F8_E4M3`, `Q8_0`).
    pub fn name(self) -> String {
        match self {
            Self::Safetensors(d) => format!("{d:?}"),
            Self::Gguf(t) => format!("{t:?}"),
        }
    }
}

/// One tensor of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Its name in the file (after any prefix the inventory was read under).
    pub name: String,
    /// How it is stored.
    pub stored: Stored,
    /// Its shape (torch order).
    pub shape: Vec<usize>,
}

impl TensorEntry {
    /// Number of elements.
    pub fn elems(&self) -> u64 {
        self.shape.iter().map(|d| *d as u64).product()
    }

    /// Bytes in the file.
    pub fn file_bytes(&self) -> u64 {
        self.stored.bytes(self.elems())
    }
}

/// The tensors of one component, from one or several files.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Their tensors.
    pub tensors: Vec<TensorEntry>,
}

impl Inventory {
    /// Bytes of all tensors in their files.
    pub fn file_bytes(&self) -> u64 {
        self.tensors.iter().map(TensorEntry::file_bytes).sum()
    }

    /// The distinct stored types, most bytes first (`F8_E4M3+BF16`).
    pub fn format(&self) -> String {
        let mut by_type: Vec<(String, u64)> = Vec::new();
        for t in &self.tensors {
            let name = t.stored.name();
            match by_type.iter_mut().find(|(n, _)| *n == name) {
                Some((_, b)) => *b += t.file_bytes(),
                None => by_type.push((name, t.file_bytes())),
            }
        }
        by_type.sort_by_key(|b| std::cmp::Reverse(b.1));
        let names: Vec<String> = by_type.into_iter().map(|(n, _)| n).collect();
        names.join("+")
    }

    /// Only the tensors whose names start with one of `prefixes`.
    pub fn only(mut self, prefixes: &[&str]) -> Self {
        self.tensors
            .retain(|t| prefixes.iter().any(|p| t.name.starts_with(p)));
        self
    }
}

/// The GGUF magic, `GGUF` as a little-endian u32 at the start of the file.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Reads the tensor table of a safetensors or GGUF file (told apart by content), keeping the
/// tensors under `prefix`, seen without it.
pub fn read_file(path: &Path, prefix: &str) -> Result<Inventory> {
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| EngineError::io(path, e))?;
    file.rewind().map_err(|e| EngineError::io(path, e))?;
    let all = if &magic == GGUF_MAGIC {
        read_gguf(path, &mut file)?
    } else {
        read_safetensors(path, &mut file)?
    };
    let tensors = all
        .into_iter()
        .filter_map(|mut t| {
            let rest = t.name.strip_prefix(prefix)?.to_string();
            t.name = rest;
            Some(t)
        })
        .collect();
    Ok(Inventory {
        files: vec![path.to_path_buf()],
        tensors,
    })
}

/// Reads a component folder the way [`crate::weights::WeightFiles::open_dir`] finds its files:
/// `<stem>.safetensors.index.json` with its shards, or `<stem>.safetensors`.
pub fn read_dir(dir: &Path, stems: &[&str]) -> Result<Inventory> {
    for stem in stems {
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        let files = if index.is_file() {
            crate::weights::shards_from_index(&index)?
        } else {
            let single = dir.join(format!("{stem}.safetensors"));
            if !single.is_file() {
                continue;
            }
            vec![single]
        };
        let mut inv = Inventory::default();
        for f in files {
            let part = read_file(&f, "")?;
            inv.files.extend(part.files);
            inv.tensors.extend(part.tensors);
        }
        return Ok(inv);
    }
    Err(EngineError::MissingFile {
        path: dir.to_path_buf(),
        what: format!(
            "weights ({}.safetensors or a sharded index)",
            stems.join(", ")
        ),
    })
}

fn read_safetensors(path: &Path, file: &mut std::fs::File) -> Result<Vec<TensorEntry>> {
    let bad = |msg: String| EngineError::BadSafetensors {
        path: path.to_path_buf(),
        msg,
    };
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| bad(format!("no header length: {e}")))?;
    let len = u64::from_le_bytes(len);
    // safetensors caps headers at 100 MB (`MAX_HEADER_SIZE`); anything larger is not one.
    if len > 100_000_000 {
        return Err(bad(format!("header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("truncated header: {e}")))?;
    let meta: Metadata = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    Ok(meta
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorEntry {
            name,
            stored: Stored::Safetensors(info.dtype),
            shape: info.shape.clone(),
        })
        .collect())
}

fn read_gguf(path: &Path, file: &mut std::fs::File) -> Result<Vec<TensorEntry>> {
    let content = gguf_file::Content::read(file).map_err(|e| EngineError::UnknownLayout {
        path: path.to_path_buf(),
        msg: format!("not a readable GGUF file: {e}"),
    })?;
    Ok(content
        .tensor_infos
        .into_iter()
        .map(|(name, info)| TensorEntry {
            name,
            stored: Stored::Gguf(info.ggml_dtype),
            shape: info.shape.dims().to_vec(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn safetensors_and_gguf_headers() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-inventory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        let st = dir.join("a.safetensors");
        let mut map = crate::tiny_init::TensorMap::new();
        map.insert(
            "p.w".into(),
            Tensor::zeros((4, 8), DType::BF16, &Device::Cpu)?,
        );
        map.insert("p.s".into(), Tensor::zeros(3, DType::F8E4M3, &Device::Cpu)?);
        map.insert("q.x".into(), Tensor::zeros(2, DType::F32, &Device::Cpu)?);
        crate::tiny_init::write_safetensors(&st, &map)?;
        let inv = read_file(&st, "p.")?;
        assert_eq!(inv.tensors.len(), 2);
        assert_eq!(inv.file_bytes(), 4 * 8 * 2 + 3);
        assert_eq!(inv.format(), "BF16+F8_E4M3");

        let gg = dir.join("b.gguf");
        let w = Tensor::zeros((2, 64), DType::F32, &Device::Cpu)?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let mut f = std::fs::File::create(&gg).map_err(|e| EngineError::io(&gg, e))?;
        gguf_file::write(&mut f, &[], &[("blk.w", &q)])?;
        drop(f);
        let inv = read_file(&gg, "")?;
        assert_eq!(inv.tensors[0].shape, vec![2, 64]);
        // Q8_0: 34 bytes per block of 32.
        assert_eq!(inv.file_bytes(), 4 * 34);
        assert!(inv.tensors[0].stored.kept_as_stored());
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
