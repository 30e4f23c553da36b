//! Writing GGUF files (version 3, 32-byte alignment), one tensor at a time so that a full-size
//! model is never held in memory twice, and the choice of type per tensor that city96's FLUX
//! conversion makes (`tools/convert.py` of ComfyUI-GGUF).

use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;

use super::{is_quantized, type_name, MAGIC};
use crate::error::{EngineError, Result};

/// Where tensor data starts, and each tensor within it (ggml's `GGUF_DEFAULT_ALIGNMENT`).
const ALIGNMENT: usize = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `GGUF_TYPE_UINT32`.
    U32(u32),
    /// `GGUF_TYPE_FLOAT32`.
    F32(f32),
    /// `GGUF_TYPE_STRING`.
    Str(String),
}

/// One tensor of a file to write: name, shape in torch order, and type.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    /// The tensor's name in the file.
    pub name: String,
    /// Its shape, outermost first (`(out, in)` for a linear weight); written reversed.
    pub shape: Vec<usize>,
    /// Its ggml type.
    pub ty: GgmlDType,
}

impl GgufTensor {
    /// Bytes of data the tensor takes.
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() / self.ty.block_size() * self.ty.type_size()
    }
}

/// ggml's number for a type (`ggml_type` in `ggml.h`).
fn type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn pad(w: &mut impl Write, len: usize) -> std::io::Result<()> {
    w.write_all(&vec![0u8; len.next_multiple_of(ALIGNMENT) - len])
}

/// Writes the header of a GGUF file: magic, version, `meta` key/values and the table of
/// `tensors` (their data to follow in that order, each aligned). Header-only files (the memory
/// plan's tests) are this alone.
pub(crate) fn write_header(
    w: &mut impl Write,
    meta: &[(String, MetaValue)],
    tensors: &[GgufTensor],
) -> std::io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&3u32.to_le_bytes())?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())?;
    w.write_all(&(meta.len() as u64).to_le_bytes())?;
    for (key, value) in meta {
        put_str(w, key)?;
        match value {
            MetaValue::U32(v) => {
                w.write_all(&4u32.to_le_bytes())?;
                w.write_all(&v.to_le_bytes())?;
            }
            MetaValue::F32(v) => {
                w.write_all(&6u32.to_le_bytes())?;
                w.write_all(&v.to_le_bytes())?;
            }
            MetaValue::Str(s) => {
                w.write_all(&8u32.to_le_bytes())?;
                put_str(w, s)?;
            }
        }
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(w, &t.name)?;
        w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
        for d in t.shape.iter().rev() {
            w.write_all(&(*d as u64).to_le_bytes())?;
        }
        w.write_all(&type_id(t.ty).to_le_bytes())?;
        w.write_all(&(offset as u64).to_le_bytes())?;
        offset += t.bytes().next_multiple_of(ALIGNMENT);
    }
    Ok(())
}

/// Writes a GGUF file: `meta` key/values, then `tensors`, whose bytes `data` makes one at a
/// time (in the order given).
pub fn write_gguf(
    path: &Path,
    meta: &[(String, MetaValue)],
    tensors: &[GgufTensor],
    data: &mut dyn FnMut(&GgufTensor) -> Result<Vec<u8>>,
) -> Result<()> {
    for t in tensors {
        let last = t.shape.last().copied().unwrap_or(1);
        if !last.is_multiple_of(t.ty.block_size()) {
            return Err(EngineError::InvalidInput(format!(
                "`{}`: rows of {last} values cannot be stored as {}",
                t.name,
                type_name(t.ty)
            )));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    }
    let io = |e| EngineError::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = BufWriter::new(file);
    write_header(&mut w, meta, tensors).map_err(io)?;
    let header = usize::try_from(w.stream_position().map_err(io)?)
        .map_err(|_| EngineError::InvalidInput("header too large".into()))?;
    pad(&mut w, header).map_err(io)?;
    for t in tensors {
        let bytes = data(t)?;
        if bytes.len() != t.bytes() {
            return Err(EngineError::InvalidInput(format!(
                "`{}`: {} bytes of data for {} {:?} ({} expected)",
                t.name,
                bytes.len(),
                type_name(t.ty),
                t.shape,
                t.bytes()
            )));
        }
        w.write_all(&bytes).map_err(io)?;
        pad(&mut w, bytes.len()).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

/// `t` (any float dtype, CPU) encoded as `ty` blocks, with candle's quantizers (ports of ggml's
/// `quantize_row_*_ref`).
pub fn encode(t: &Tensor, ty: GgmlDType) -> Result<Vec<u8>> {
    encode_in_bands(t, ty, BAND_ELEMS)
}

/// Values of one band of rows that [`encode`] quantizes on one core: a FLUX.1-dev matrix
/// (3072 × 12288) is a few dozen bands, and quantizing a 12 B model takes the cores, not one.
const BAND_ELEMS: usize = 1 << 20;

/// [`encode`] a band of whole rows (of about `band` values) at a time, the bands in parallel.
/// Blocks never cross a row, so the bands' bytes, joined in order, are the whole tensor's.
fn encode_in_bands(t: &Tensor, ty: GgmlDType, band: usize) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    let t = t.to_dtype(candle_core::DType::F32)?;
    let rows = t.dims().first().copied().unwrap_or(1);
    let per_row = t.elem_count() / rows.max(1);
    let band_rows = (band / per_row.max(1)).max(1);
    if t.rank() < 2 || band_rows >= rows {
        return Ok(QTensor::quantize(&t, ty)?.data()?.into_owned());
    }
    let starts: Vec<usize> = (0..rows).step_by(band_rows).collect();
    let parts = starts
        .into_par_iter()
        .map(|r0| {
            // A copy, not a view: candle quantizes a tensor's whole storage, whatever its layout.
            let part = t
                .narrow(0, r0, band_rows.min(rows - r0))?
                .force_contiguous()?;
            Ok(QTensor::quantize(&part, ty)?.data()?.into_owned())
        })
        .collect::<Result<Vec<Vec<u8>>>>()?;
    Ok(parts.concat())
}

/// Which type each tensor of a converted model gets.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantPolicy {
    /// The type asked for.
    pub target: GgmlDType,
    /// Substrings of the names of weights kept in F32 whatever the target.
    pub keep_f32: &'static [&'static str],
}

/// city96's FLUX conversion keeps the embedders and the final layer at full precision
/// (`blacklist` in ComfyUI-GGUF `tools/convert.py`).
const FLUX_KEEP: &[&str] = &[
    "img_in.",
    "txt_in.",
    "time_in.",
    "vector_in.",
    "guidance_in.",
    "final_layer.",
];

impl QuantPolicy {
    /// The FLUX transformer as city96 converts it.
    pub fn flux(target: GgmlDType) -> Self {
        Self {
            target,
            keep_f32: FLUX_KEEP,
        }
    }

    /// A text encoder: every matrix (the token embedding too) takes the target.
    pub fn text_encoder(target: GgmlDType) -> Self {
        Self {
            target,
            keep_f32: &[],
        }
    }

    /// The type of tensor `name` of `shape` (torch order). Vectors (biases, norms) stay F32 as
    /// in city96's files; matrices whose rows do not fill the target's blocks fall back as
    /// llama.cpp's quantizer does (K-quants to the 32-block type of about the same size), then
    /// to F32.
    pub fn choose(&self, name: &str, shape: &[usize]) -> GgmlDType {
        if shape.len() < 2 || self.keep_f32.iter().any(|k| name.contains(k)) {
            return GgmlDType::F32;
        }
        let row = shape.last().copied().unwrap_or(0);
        let fallback = match self.target {
            GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
            GgmlDType::Q4K => GgmlDType::Q5_0,
            GgmlDType::Q5K => GgmlDType::Q5_1,
            GgmlDType::Q6K => GgmlDType::Q8_0,
            other => other,
        };
        [self.target, fallback]
            .into_iter()
            .find(|t| row.is_multiple_of(t.block_size()) && (row > 0 || !is_quantized(*t)))
            .unwrap_or(GgmlDType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;
    use candle_core::{DType, Device};

    /// Quantizing in bands of rows gives the bytes of quantizing the whole tensor, for a block
    /// type and a K-quant (rows of 512: two super-blocks).
    #[test]
    fn bands_give_the_whole_tensors_bytes() -> Result<()> {
        let t = Tensor::randn(0f32, 1.0, (37, 512), &Device::Cpu)?;
        for ty in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::BF16] {
            let whole = QTensor::quantize(&t, ty)?.data()?.into_owned();
            let banded = encode_in_bands(&t, ty, 5 * 512)?;
            assert_eq!(banded.len(), whole.len(), "{ty:?}");
            assert!(banded == whole, "{ty:?}: the bands' bytes differ");
        }
        Ok(())
    }

    #[test]
    fn written_files_read_back() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-gguf-write-{}", std::process::id()));
        let path = dir.join("t.gguf");
        let mut rng = crate::tiny_init::InitRng::new(1, "gguf-write");
        let a = rng.normal_tensor(&[3, 256], 0.0, 1.0)?;
        let b = rng.normal_tensor(&[5], 0.0, 1.0)?;
        let tensors = vec![
            GgufTensor {
                name: "a".into(),
                shape: vec![3, 256],
                ty: GgmlDType::Q4K,
            },
            GgufTensor {
                name: "b".into(),
                shape: vec![5],
                ty: GgmlDType::F32,
            },
        ];
        let meta = vec![
            (
                "general.architecture".to_string(),
                MetaValue::Str("flux".into()),
            ),
            ("x.count".to_string(), MetaValue::U32(7)),
        ];
        write_gguf(&path, &meta, &tensors, &mut |t| match t.name.as_str() {
            "a" => encode(&a, t.ty),
            _ => encode(&b, t.ty),
        })?;
        let f = GgufFile::open(&path)?;
        assert_eq!(f.architecture(), Some("flux"));
        assert_eq!(f.metadata_usize("x.count"), Some(7));
        assert_eq!(f.shape("a"), Some(&[3usize, 256][..]));
        assert_eq!(f.ggml_type("a"), Some(GgmlDType::Q4K));
        let back = f.tensor("b", DType::F32, &Device::Cpu)?;
        assert_eq!(back.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        let q = f.tensor("a", DType::F32, &Device::Cpu)?;
        let err = (&q - &a)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err > 0.0 && err < 0.5, "{err}");
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn policy_keeps_what_city96_keeps() {
        let p = QuantPolicy::flux(GgmlDType::Q4K);
        assert_eq!(p.choose("img_in.weight", &[3072, 64]), GgmlDType::F32);
        assert_eq!(
            p.choose("double_blocks.0.img_attn.qkv.bias", &[9216]),
            GgmlDType::F32
        );
        assert_eq!(
            p.choose("double_blocks.0.img_attn.qkv.weight", &[9216, 3072]),
            GgmlDType::Q4K
        );
        // Rows of 32: the K-quant's 32-block fallback; rows of 16: F32.
        assert_eq!(
            p.choose("single_blocks.0.linear2.weight", &[32, 160]),
            GgmlDType::Q5_0
        );
        assert_eq!(p.choose("x.weight", &[32, 16]), GgmlDType::F32);
        let f = QuantPolicy::text_encoder(GgmlDType::BF16);
        assert_eq!(f.choose("token_embd.weight", &[100, 16]), GgmlDType::BF16);
    }
}
