//! GGUF, ggml's single-file weight format, as city96's FLUX.1 and T5-XXL files use it: reading
//! tensors in place from a memory map, writing files, and the type names users know.
//!
//! The format (ggml `docs/gguf.md`): magic `GGUF`, a version, key/value metadata
//! (`general.architecture`, ...), then per tensor its name, its dimensions innermost first (a
//! torch `(out, in)` weight is stored as `[in, out]`), its ggml type and the offset of its data,
//! which starts aligned to `general.alignment` (32). candle's `gguf_file` parses the header
//! and gives dimensions in torch order; the data is read here, in place.

mod quantize;
mod read;
pub mod t5;
pub mod write;

pub use quantize::{
    default_output, quantize_model, write_random_flux, write_random_t5, QuantizeReport,
};
pub use read::GgufFile;
pub use write::{encode, write_gguf, GgufTensor, MetaValue, QuantPolicy};

use std::io::Read;
use std::path::Path;

use candle_core::quantized::GgmlDType;

use crate::error::{EngineError, Result};

/// The first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";

/// Whether `path` is a GGUF file, by its first four bytes (not its extension).
pub fn is_gguf(path: &Path) -> Result<bool> {
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    match f.read_exact(&mut head) {
        Ok(()) => Ok(&head == MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(EngineError::io(path, e)),
    }
}

/// Every ggml type fluxd reads, with the name ggml and gguf-py give it.
pub const TYPES: &[(GgmlDType, &str)] = &[
    (GgmlDType::F32, "F32"),
    (GgmlDType::F16, "F16"),
    (GgmlDType::BF16, "BF16"),
    (GgmlDType::Q8_0, "Q8_0"),
    (GgmlDType::Q5_0, "Q5_0"),
    (GgmlDType::Q5_1, "Q5_1"),
    (GgmlDType::Q4_0, "Q4_0"),
    (GgmlDType::Q4_1, "Q4_1"),
    (GgmlDType::Q6K, "Q6_K"),
    (GgmlDType::Q5K, "Q5_K"),
    (GgmlDType::Q4K, "Q4_K"),
    (GgmlDType::Q3K, "Q3_K"),
    (GgmlDType::Q2K, "Q2_K"),
];

/// The ggml name of a type (`Q4_K`, `BF16`, ...).
pub fn type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q8K => "Q8_K",
        other => TYPES
            .iter()
            .find(|(d, _)| *d == other)
            .map_or("?", |(_, n)| n),
    }
}

/// Parses a ggml type name, case-insensitively, with or without the underscore (`q4_k`, `Q4K`).
pub fn parse_type(name: &str) -> Option<GgmlDType> {
    let norm = |s: &str| s.replace('_', "").to_ascii_uppercase();
    let want = norm(name);
    TYPES.iter().find(|(_, n)| norm(n) == want).map(|(d, _)| *d)
}

/// Whether a type is one of ggml's block quantizations (not a plain float type).
pub fn is_quantized(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip() {
        for (t, name) in TYPES {
            assert_eq!(parse_type(name), Some(*t));
            assert_eq!(parse_type(&name.to_lowercase().replace('_', "")), Some(*t));
            assert_eq!(type_name(*t), *name);
        }
        assert_eq!(parse_type("Q7_K"), None);
    }

    #[test]
    fn magic_decides_not_the_extension() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-gguf-magic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        let a = dir.join("model.safetensors");
        std::fs::write(&a, b"GGUF\x03\0\0\0").map_err(|e| EngineError::io(&a, e))?;
        let b = dir.join("model.gguf");
        std::fs::write(&b, b"{}").map_err(|e| EngineError::io(&b, e))?;
        assert!(is_gguf(&a)?);
        assert!(!is_gguf(&b)?);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
