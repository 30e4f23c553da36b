//! Building blocks for writing small random models in the real on-disk layouts: a deterministic
//! random source and safetensors writers (single file, or sharded with an index json as the
//! Hugging Face hub ships large components).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};

/// A small deterministic generator (SplitMix64) for random weights. Not the torch generator:
/// weights only need to be reproducible by us, noise must match torch (see `noise`).
#[derive(Debug, Clone)]
pub struct InitRng(u64);

impl InitRng {
    /// A generator for `seed`; `stream` separates components so that adding a tensor to one
    /// component does not change another's weights.
    pub fn new(seed: u64, stream: &str) -> Self {
        let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
        for b in stream.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
        Self(h)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform sample in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// An f32 tensor of normal samples with standard deviation `std` (and mean `mean`).
    pub fn normal_tensor(&mut self, shape: &[usize], mean: f32, std: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| mean + std * self.normal()).collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }

    /// A weight for a linear layer `out × in`, scaled by 1/sqrt(in) so activations keep their size.
    pub fn linear_weight(&mut self, out: usize, inp: usize) -> Result<Tensor> {
        self.normal_tensor(&[out, inp], 0.0, 1.0 / (inp as f32).sqrt())
    }
}

/// Named tensors to be written, sorted by name (the order safetensors files use).
pub type TensorMap = BTreeMap<String, Tensor>;

/// Writes one safetensors file.
pub fn write_safetensors(path: &Path, tensors: &TensorMap) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    }
    let map: std::collections::HashMap<&str, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    candle_core::safetensors::save(&map, path).map_err(|e| EngineError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Writes `tensors` as `shards` files named the way the hub names them
/// (`{stem}-00001-of-00003.safetensors`) plus `{stem}.safetensors.index.json`.
/// With `shards == 1` writes a single `{stem}.safetensors` and no index.
pub fn write_sharded(dir: &Path, stem: &str, tensors: &TensorMap, shards: usize) -> Result<()> {
    if shards <= 1 {
        return write_safetensors(&dir.join(format!("{stem}.safetensors")), tensors);
    }
    let names: Vec<&String> = tensors.keys().collect();
    let per_shard = names.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    let mut total_size = 0usize;
    for (i, chunk) in names.chunks(per_shard.max(1)).enumerate() {
        let file = format!("{stem}-{:05}-of-{:05}.safetensors", i + 1, shards);
        let mut part = TensorMap::new();
        for name in chunk {
            let t = &tensors[*name];
            total_size += t.elem_count() * t.dtype().size_in_bytes();
            part.insert((*name).clone(), t.clone());
            weight_map.insert((*name).clone(), serde_json::Value::String(file.clone()));
        }
        write_safetensors(&dir.join(&file), &part)?;
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    write_json(&dir.join(format!("{stem}.safetensors.index.json")), &index)
}

/// Writes pretty JSON with a trailing newline.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    }
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| EngineError::config(path, e.to_string()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| EngineError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightFiles;
    use candle_core::DType;

    #[test]
    fn sharded_roundtrip_through_index() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-shard-{}", std::process::id()));
        let mut rng = InitRng::new(1, "t");
        let mut map = TensorMap::new();
        for i in 0..5 {
            map.insert(format!("w{i}"), rng.normal_tensor(&[3, 2], 0.0, 1.0)?);
        }
        write_sharded(&dir, "model", &map, 2)?;
        let w = WeightFiles::open_dir(&dir, &["model"])?;
        assert_eq!(w.paths().len(), 2);
        let got = w.get("w3", DType::F32, &Device::Cpu)?;
        let diff = (got - &map["w3"])?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let err = w.get_shaped("w1", (2, 3), DType::F32, &Device::Cpu).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("w1") && msg.contains("model-0000"), "{msg}");
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
