//! A tiny random Depth Anything in exactly the transformers layout of
//! `LiheYoung/depth-anything-large-hf` (`config.json` with its DINOv2 `backbone_config`,
//! `preprocessor_config.json` of the `DPTImageProcessor`, `model.safetensors` with the hub's
//! tensor names), small enough for tests: hidden 32, 4 layers, 4 neck levels. transformers
//! loads it with no missing or unexpected keys (checked by `scripts/reference/depth_fixtures.py`).

use std::path::Path;

use super::config::{DepthAnythingConfig, DepthProcessorConfig};
use crate::error::Result;
use crate::tiny_init::{write_json, write_safetensors, InitRng, TensorMap};

const HIDDEN: usize = 32;
const LAYERS: usize = 4;
const HEADS: usize = 2;
const IMAGE: usize = 56;
const PATCH: usize = 14;
const NECK: [usize; 4] = [8, 16, 32, 32];
const FUSION: usize = 16;
const HEAD_HIDDEN: usize = 8;

/// `config.json` of the tiny model: depth-anything-large-hf's keys with tiny sizes.
fn config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["DepthAnythingForDepthEstimation"],
        "backbone": null,
        "backbone_config": {
            "architectures": ["Dinov2Model"],
            "hidden_size": HIDDEN,
            "image_size": IMAGE,
            "layerscale_value": 1.0,
            "mlp_ratio": 4,
            "model_type": "dinov2",
            "num_attention_heads": HEADS,
            "num_hidden_layers": LAYERS,
            "out_indices": [1, 2, 3, 4],
            "patch_size": PATCH,
            "reshape_hidden_states": false,
        },
        "depth_estimation_type": "relative",
        "fusion_hidden_size": FUSION,
        "head_hidden_size": HEAD_HIDDEN,
        "head_in_index": -1,
        "initializer_range": 0.02,
        "model_type": "depth_anything",
        "neck_hidden_sizes": NECK,
        "patch_size": PATCH,
        "reassemble_factors": [4, 2, 1, 0.5],
        "reassemble_hidden_size": HIDDEN,
        "torch_dtype": "float32",
        "transformers_version": "5.23.0",
        "use_pretrained_backbone": false,
    })
}

/// `preprocessor_config.json`: depth-anything-large-hf's, with a 56×56 target.
fn processor_json() -> serde_json::Value {
    serde_json::json!({
        "do_normalize": true,
        "do_pad": false,
        "do_rescale": true,
        "do_resize": true,
        "ensure_multiple_of": PATCH,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "DPTImageProcessor",
        "image_std": [0.229, 0.224, 0.225],
        "keep_aspect_ratio": true,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": { "height": IMAGE, "width": IMAGE },
        "size_divisor": null,
    })
}

/// Writes the tiny Depth Anything into `dir` (created if needed); the same seed always writes
/// the same files.
pub fn write_tiny_depth_anything(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| crate::EngineError::io(dir, e))?;
    let cfg = config_json();
    // Parse what we write: the writer and the loader cannot drift apart.
    let parsed = DepthAnythingConfig::from_value(cfg.clone(), &dir.join("config.json"))?;
    DepthProcessorConfig::parse(
        &processor_json().to_string(),
        &dir.join("preprocessor_config.json"),
    )?;
    let mut rng = InitRng::new(seed, "depth_anything");
    let mut t = TensorMap::new();
    backbone(&mut rng, &mut t)?;
    neck_and_head(&mut rng, &mut t, &parsed)?;
    write_json(&dir.join("config.json"), &cfg)?;
    write_json(&dir.join("preprocessor_config.json"), &processor_json())?;
    write_safetensors(&dir.join("model.safetensors"), &t)
}

fn vector(
    rng: &mut InitRng,
    t: &mut TensorMap,
    name: String,
    n: usize,
    mean: f32,
    std: f32,
) -> Result<()> {
    t.insert(name, rng.normal_tensor(&[n], mean, std)?);
    Ok(())
}

fn linear(rng: &mut InitRng, t: &mut TensorMap, name: &str, out: usize, inp: usize) -> Result<()> {
    t.insert(format!("{name}.weight"), rng.linear_weight(out, inp)?);
    vector(rng, t, format!("{name}.bias"), out, 0.0, 0.1)
}

fn norm(rng: &mut InitRng, t: &mut TensorMap, name: &str, n: usize) -> Result<()> {
    vector(rng, t, format!("{name}.weight"), n, 1.0, 0.1)?;
    vector(rng, t, format!("{name}.bias"), n, 0.0, 0.1)
}

/// A conv weight (out, in, k, k) scaled by 1/√(in·k²), and a bias unless `bias` is false.
fn conv(
    rng: &mut InitRng,
    t: &mut TensorMap,
    name: &str,
    (out, inp, k): (usize, usize, usize),
    bias: bool,
) -> Result<()> {
    let std = 1.0 / ((inp * k * k) as f32).sqrt();
    t.insert(
        format!("{name}.weight"),
        rng.normal_tensor(&[out, inp, k, k], 0.0, std)?,
    );
    if bias {
        vector(rng, t, format!("{name}.bias"), out, 0.0, 0.1)?;
    }
    Ok(())
}

fn backbone(rng: &mut InitRng, t: &mut TensorMap) -> Result<()> {
    let e = "backbone.embeddings";
    let h = HIDDEN;
    conv(
        rng,
        t,
        &format!("{e}.patch_embeddings.projection"),
        (h, 3, PATCH),
        true,
    )?;
    t.insert(
        format!("{e}.cls_token"),
        rng.normal_tensor(&[1, 1, h], 0.0, 0.5)?,
    );
    // Unused at inference, but part of the layout (`use_mask_token`).
    t.insert(
        format!("{e}.mask_token"),
        rng.normal_tensor(&[1, h], 0.0, 0.02)?,
    );
    let tokens = (IMAGE / PATCH) * (IMAGE / PATCH) + 1;
    t.insert(
        format!("{e}.position_embeddings"),
        rng.normal_tensor(&[1, tokens, h], 0.0, 0.5)?,
    );
    for i in 0..LAYERS {
        let l = format!("backbone.encoder.layer.{i}");
        norm(rng, t, &format!("{l}.norm1"), h)?;
        for p in ["query", "key", "value"] {
            linear(rng, t, &format!("{l}.attention.attention.{p}"), h, h)?;
        }
        linear(rng, t, &format!("{l}.attention.output.dense"), h, h)?;
        norm(rng, t, &format!("{l}.norm2"), h)?;
        linear(rng, t, &format!("{l}.mlp.fc1"), 4 * h, h)?;
        linear(rng, t, &format!("{l}.mlp.fc2"), h, 4 * h)?;
        // Trained layer scales are far below 1; these keep each branch visible but small.
        vector(rng, t, format!("{l}.layer_scale1.lambda1"), h, 0.5, 0.2)?;
        vector(rng, t, format!("{l}.layer_scale2.lambda1"), h, 0.5, 0.2)?;
    }
    norm(rng, t, "backbone.layernorm", h)
}

fn neck_and_head(rng: &mut InitRng, t: &mut TensorMap, cfg: &DepthAnythingConfig) -> Result<()> {
    for (i, c, factor) in cfg.levels() {
        let n = format!("neck.reassemble_stage.layers.{i}");
        conv(
            rng,
            t,
            &format!("{n}.projection"),
            (c, cfg.reassemble_hidden_size, 1),
            true,
        )?;
        if factor > 1.0 {
            // ConvTranspose2d: (in, out, k, k).
            conv(
                rng,
                t,
                &format!("{n}.resize"),
                (c, c, factor as usize),
                true,
            )?;
        } else if factor < 1.0 {
            conv(rng, t, &format!("{n}.resize"), (c, c, 3), true)?;
        }
        conv(rng, t, &format!("neck.convs.{i}"), (FUSION, c, 3), false)?;
    }
    for i in 0..cfg.neck_hidden_sizes.len() {
        let n = format!("neck.fusion_stage.layers.{i}");
        conv(
            rng,
            t,
            &format!("{n}.projection"),
            (FUSION, FUSION, 1),
            true,
        )?;
        for r in ["residual_layer1", "residual_layer2"] {
            for c in ["convolution1", "convolution2"] {
                conv(rng, t, &format!("{n}.{r}.{c}"), (FUSION, FUSION, 3), true)?;
            }
        }
    }
    conv(rng, t, "head.conv1", (FUSION / 2, FUSION, 3), true)?;
    conv(rng, t, "head.conv2", (HEAD_HIDDEN, FUSION / 2, 3), true)?;
    // The last layer scaled up, with a positive bias: the tiny map then spans tens of levels
    // (a real model's relative depth reads as 0..255-ish levels in BFL's encoder) with some
    // values cut by the final ReLU, instead of a near-constant map that would test little.
    t.insert(
        "head.conv3.weight".into(),
        rng.normal_tensor(
            &[1, HEAD_HIDDEN, 1, 1],
            0.0,
            40.0 / (HEAD_HIDDEN as f32).sqrt(),
        )?,
    );
    vector(rng, t, "head.conv3.bias".into(), 1, 30.0, 0.0)
}
