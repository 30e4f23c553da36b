//! A tiny random NSFW classifier in the exact on-disk format of Falconsai/nsfw_image_detection
//! (transformers `ViTForImageClassification`: `config.json`, `preprocessor_config.json`,
//! `model.safetensors` with the hub's tensor names), for tests and the out-of-the-box server.
//!
//! Its weights are random (scaled as the other tiny components) except for one planted path
//! that makes the "nsfw" score a steep, increasing function of how red the image is, so tests
//! can ask for either verdict:
//! - hidden dimension 0 of each patch embedding is `RED_GAIN` × the patch's mean normalized red
//!   level (−1 at 0, +1 at 255); `[CLS]` and the position embeddings are 0 there;
//! - in layer 0, head 0 has zero query/key weights, so it attends uniformly to all tokens, and
//!   its first value channel reads the layer-normed dimension 0; `o_proj` writes that average
//!   (× `SPREAD_GAIN`) into dimension 0 of every token, the only write to dimension 0 anywhere;
//! - the head reads the final-layer-normed `[CLS]` dimension 0 with weight +`HEAD_GAIN` for
//!   "nsfw" and −`HEAD_GAIN` for "normal" (other head weights are small).
//!
//! Measured ([`red_probe`] images, whose green and blue hold a fixed pattern; unit test below
//! for seed 0, `tests/safety_reference.rs` for seed 7 in transformers too): a red channel of 0
//! everywhere scores below 0.01, of 255 everywhere above 0.99 (0.0069 and 0.9972 for seed 7), so
//! they are served resp. moderated at every tolerance; the score rises with the red level in
//! between. Ordinary pictures (the fixtures' patterns) score 0.5 to 0.8.

use std::path::Path;

use candle_core::Tensor;

use super::preprocess::ImageProcessorConfig;
use crate::error::Result;
use crate::tiny_init::{write_json, write_safetensors, InitRng, TensorMap};

/// Scale of the red signal in the patch embeddings.
const RED_GAIN: f32 = 3.0;
/// Scale of layer 0's write of the averaged red signal.
const SPREAD_GAIN: f32 = 2.0;
/// Weight of the red signal in the head's logits.
const HEAD_GAIN: f32 = 1.0;

/// The tiny classifier's sizes (see the engine brief): hidden 32, 2 layers of 2 heads, MLP 64,
/// 32×32 images in 8×8 patches, classes `normal` and `nsfw` (Falconsai's order).
pub const TINY_HIDDEN: usize = 32;
const LAYERS: usize = 2;
const HEADS: usize = 2;
const INTER: usize = 64;
const IMAGE: usize = 32;
const PATCH: usize = 8;

fn tiny_config_json() -> serde_json::Value {
    // Falconsai/nsfw_image_detection's config with the tiny sizes.
    serde_json::json!({
        "architectures": ["ViTForImageClassification"],
        "attention_probs_dropout_prob": 0.0,
        "dtype": "float32",
        "encoder_stride": PATCH,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": TINY_HIDDEN,
        "id2label": { "0": "normal", "1": "nsfw" },
        "image_size": IMAGE,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "label2id": { "normal": 0, "nsfw": 1 },
        "layer_norm_eps": 1e-12,
        "model_type": "vit",
        "num_attention_heads": HEADS,
        "num_channels": 3,
        "num_hidden_layers": LAYERS,
        "patch_size": PATCH,
        "problem_type": "single_label_classification",
        "qkv_bias": true,
        "transformers_version": "5.23.0",
    })
}

/// Writes the tiny classifier into `dir` (created if needed). The same seed always writes the
/// same files.
pub fn write_tiny_classifier(dir: &Path, seed: u64) -> Result<()> {
    write_tiny_classifier_with(dir, seed, 0.0)
}

/// [`write_tiny_classifier`] with `nsfw_bias` added to the "nsfw" logit's bias: +20 makes a
/// classifier that flags every image, −20 one that flags none (for tests of the moderation
/// paths that cannot choose the image, such as a generated one).
pub fn write_tiny_classifier_with(dir: &Path, seed: u64, nsfw_bias: f32) -> Result<()> {
    let mut rng = InitRng::new(seed, "safety_checker");
    let mut t = TensorMap::new();
    let h = TINY_HIDDEN;
    let hd = h / HEADS;
    let fan_in = 3 * PATCH * PATCH;
    let e = "vit.embeddings";

    // Patch embedding: random, with row 0 the patch's mean red level × RED_GAIN.
    let mut proj: Vec<f32> = rng
        .normal_tensor(&[h, 3, PATCH, PATCH], 0.0, 1.0 / (fan_in as f32).sqrt())?
        .flatten_all()?
        .to_vec1()?;
    for (i, v) in proj.iter_mut().take(fan_in).enumerate() {
        *v = if i < PATCH * PATCH {
            RED_GAIN / (PATCH * PATCH) as f32
        } else {
            0.0
        };
    }
    t.insert(
        format!("{e}.patch_embeddings.projection.weight"),
        Tensor::from_vec(proj, (h, 3, PATCH, PATCH), &candle_core::Device::Cpu)?,
    );
    let mut bias = small(&mut rng, h)?;
    bias[0] = 0.0;
    t.insert(format!("{e}.patch_embeddings.projection.bias"), vec1(bias)?);
    let mut cls = normal(&mut rng, h, 0.5)?;
    cls[0] = 0.0;
    t.insert(format!("{e}.cls_token"), vec1(cls)?.reshape((1, 1, h))?);
    let tokens = (IMAGE / PATCH) * (IMAGE / PATCH) + 1;
    let mut pos = normal(&mut rng, tokens * h, 0.5)?;
    for row in pos.chunks_mut(h) {
        row[0] = 0.0;
    }
    t.insert(
        format!("{e}.position_embeddings"),
        vec1(pos)?.reshape((1, tokens, h))?,
    );

    for i in 0..LAYERS {
        let l = format!("vit.encoder.layer.{i}");
        for name in ["layernorm_before", "layernorm_after"] {
            t.insert(
                format!("{l}.{name}.weight"),
                rng.normal_tensor(&[h], 1.0, 0.1)?,
            );
            let mut b = small(&mut rng, h)?;
            if i == 0 && name == "layernorm_before" {
                // A red-neutral token (level 127.5) then carries 0 into head 0's average.
                b[0] = 0.0;
            }
            t.insert(format!("{l}.{name}.bias"), vec1(b)?);
        }
        for (name, o, inp) in [
            ("attention.attention.query", h, h),
            ("attention.attention.key", h, h),
            ("attention.attention.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", INTER, h),
            ("output.dense", h, INTER),
        ] {
            let mut w: Vec<f32> = rng.linear_weight(o, inp)?.flatten_all()?.to_vec1()?;
            let mut b = small(&mut rng, o)?;
            let planted = match name {
                // Head 0 of layer 0 attends uniformly: zero query and key rows.
                "attention.attention.query" | "attention.attention.key" if i == 0 => {
                    w[..hd * inp].fill(0.0);
                    b[..hd].fill(0.0);
                    true
                }
                // Head 0's first value channel reads the normed dimension 0, nothing else.
                "attention.attention.value" if i == 0 => {
                    w[..inp].fill(0.0);
                    w[0] = 1.0;
                    true
                }
                // Dimension 0 of the residual is written only by layer 0's head-0 channel 0.
                "attention.output.dense" => {
                    w[..inp].fill(0.0);
                    if i == 0 {
                        w[0] = SPREAD_GAIN;
                    }
                    true
                }
                "output.dense" => {
                    w[..inp].fill(0.0);
                    true
                }
                _ => false,
            };
            if planted {
                b[0] = 0.0;
            }
            t.insert(
                format!("{l}.{name}.weight"),
                Tensor::from_vec(w, (o, inp), &candle_core::Device::Cpu)?,
            );
            t.insert(format!("{l}.{name}.bias"), vec1(b)?);
        }
    }
    t.insert(
        "vit.layernorm.weight".into(),
        rng.normal_tensor(&[h], 1.0, 0.1)?,
    );
    let mut b = small(&mut rng, h)?;
    b[0] = 0.0;
    t.insert("vit.layernorm.bias".into(), vec1(b)?);

    // Head: "normal" (row 0) and "nsfw" (row 1) read dimension 0 with opposite signs.
    let mut w = normal(&mut rng, 2 * h, 0.02)?;
    w[0] = -HEAD_GAIN;
    w[h] = HEAD_GAIN;
    t.insert("classifier.weight".into(), vec1(w)?.reshape((2, h))?);
    t.insert("classifier.bias".into(), vec1(vec![0.0, nsfw_bias])?);

    let pp = ImageProcessorConfig {
        size: (IMAGE, IMAGE),
        ..Default::default()
    };
    write_json(&dir.join("config.json"), &tiny_config_json())?;
    write_json(&dir.join("preprocessor_config.json"), &pp.to_json())?;
    write_safetensors(&dir.join("model.safetensors"), &t)
}

fn normal(rng: &mut InitRng, n: usize, std: f32) -> Result<Vec<f32>> {
    Ok(rng.normal_tensor(&[n], 0.0, std)?.to_vec1()?)
}

/// Small biases (std 0.02), as the other tiny components use.
fn small(rng: &mut InitRng, n: usize) -> Result<Vec<f32>> {
    normal(rng, n, 0.02)
}

fn vec1(v: Vec<f32>) -> Result<Tensor> {
    let n = v.len();
    Ok(Tensor::from_vec(v, n, &candle_core::Device::Cpu)?)
}

/// A `width`×`height` test image whose red channel is `red` everywhere and whose green and
/// blue channels hold a fixed pattern: the tiny classifier's "nsfw" score follows `red`
/// (0 → below 0.01, 255 → above 0.99; see the module doc).
pub fn red_probe(width: u32, height: u32, red: u8) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let g = ((x * 37 + y * 11) % 256) as u8;
        let b = ((x * 5 + y * 53 + 101) % 256) as u8;
        image::Rgb([red, g, b])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety::ImageClassifier;
    use candle_core::{DType, Device};

    #[test]
    fn the_nsfw_score_follows_the_red_channel() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-tiny-nsfw-{}", std::process::id()));
        write_tiny_classifier(&dir, 0)?;
        let c = ImageClassifier::load(&dir, DType::F32, &Device::Cpu)?;
        assert_eq!(c.labels(), ["normal", "nsfw"]);
        let mut last = 0.0;
        for red in [0u8, 64, 128, 192, 255] {
            let s = c.nsfw_score(&red_probe(48, 40, red))?;
            assert!(s > last, "red {red}: {s} after {last}");
            last = s;
        }
        assert!(c.nsfw_score(&red_probe(64, 64, 0))? < 0.01);
        assert!(c.nsfw_score(&red_probe(100, 30, 255))? > 0.99);
        let p = c.classify(&red_probe(32, 32, 255))?;
        assert!((p[0].score + p[1].score - 1.0).abs() < 1e-6);
        // An always-flagging variant for tests that cannot choose the image.
        write_tiny_classifier_with(&dir, 0, 20.0)?;
        let c = ImageClassifier::load(&dir, DType::F32, &Device::Cpu)?;
        assert!(c.nsfw_score(&red_probe(32, 32, 0))? > 0.99);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
