//! GGUF weights against the reference: diffusers' `FluxTransformer2DModel` and transformers'
//! `T5EncoderModel` running the dequantized weights of the GGUF files fluxd writes, one file per
//! type (fixtures by `scripts/reference/make_gguf_fixtures.sh`).
//!
//! Each file is written again here and must be byte-identical to the one the reference read.
//! fluxd computes on the quantized blocks; where it uses candle's integer kernels (Q8_0 with
//! VNNI, Q4_K) the activations are rounded to 8 bits as in ggml, elsewhere the weights are
//! expanded tile by tile and the product is exact up to summation order. The distance to the
//! reference must stay far below what the quantization itself changes (the reference on the
//! dequantized weights against the original f32 weights, recorded by the script).
//!
//! With `FLUXD_TEST_PATH=gpu` (`scripts/test.sh`) the same files run on the code path a GPU
//! runs: bf16 activations through candle's quantized kernels, which round them to 8-bit blocks
//! as CUDA's do; each comparison then has a bf16 tolerance measured for it.

#[allow(dead_code)] // each test file uses only some of the shared helpers
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use common::{
    assert_sha256, dtype, engine_path, fixture_forward, fixtures, max_abs_diff, open_tensors,
    read_json, scratch_dir, tensor, EnginePath, Tol,
};
use fluxd_engine::gguf::{self, quantize_model, write_gguf, GgufTensor, QuantPolicy};
use fluxd_engine::lora::{set_loras, write_reference_loras, LoraFile};
use fluxd_engine::quant::CpuKernels;
use fluxd_engine::text_encoders::{ClipTextEncoder, T5TextEncoder};
use fluxd_engine::tiny_model::{write_tiny_model, TinyPreset};
use fluxd_engine::transformer::FluxTransformer;
use fluxd_engine::weights::WeightFiles;
use serde_json::Value;

/// Largest |fluxd − reference| of a transformer forward, relative to the reference's largest
/// |value|. f32: float summation order only (measured ≤ 1.5e-6 for every type, with and without
/// LoRA; README "GGUF"). bf16 (GPU path): this random model amplifies bf16 rounding: the F32
/// file itself lands 0.25 away (0.2 relative RMS), every quantized type 0.23-0.26, with the
/// LoRA at strength 1 0.32; the bound catches a wrong block layout or scale (O(1)), not
/// precision, which the f32 path checks.
const FORWARD: Tol<f32> = Tol {
    f32: 1e-5,
    bf16: 0.5,
};

/// The same for the text encoders' outputs. bf16: measured ≤ 3.0e-2 (T5 Q8_0), 1.3e-2 (CLIP).
const ENCODER: Tol<f32> = Tol {
    f32: 1e-5,
    bf16: 6e-2,
};

/// The same with candle's integer kernels (`CpuKernels::Int8`), whose 8-bit activations
/// dominate (measured ≤ 1e-2 on AVX-512 VNNI).
const INT8: f32 = 2e-2;

/// What the fixtures were made from, written again: the `quant` tiny model, its GGUF files and
/// the LoRA, each checked against the hashes the script recorded.
struct Inputs {
    dir: PathBuf,
    meta: Value,
}

impl Inputs {
    /// Writes them under a folder of this test's own (`tag`): the tests run in parallel.
    fn write(tag: &str) -> Self {
        let meta = read_json(&fixtures("gguf").join("cases.json"));
        let dir = scratch_dir(&format!("gguf-ref-{tag}"));
        std::fs::remove_dir_all(&dir).ok();
        let model = dir.join("model");
        let seed = meta["model_seed"].as_u64().expect("model_seed");
        write_tiny_model(&model, seed, TinyPreset::Quant).expect("init-tiny --preset quant");
        for (rel, hash) in meta["model_files"].as_object().expect("model_files") {
            assert_sha256(&model.join(rel), hash, rel);
        }
        let lora = &meta["lora"];
        let cfg = TinyPreset::Quant.transformer_config();
        write_reference_loras(
            &dir.join("loras"),
            &cfg,
            lora["rank"].as_u64().expect("rank") as usize,
            lora["seed"].as_u64().expect("seed"),
        )
        .expect("loras");
        for (name, hash) in meta["gguf_files"].as_object().expect("gguf_files") {
            let path = dir.join(name);
            if let Some((kind, ty)) = name.strip_suffix(".gguf").and_then(|n| n.split_once('-')) {
                let input = match kind {
                    "flux" => model.join("transformer"),
                    _ => model.join("text_encoder_2"),
                };
                let ty = gguf::parse_type(ty).expect("type");
                quantize_model(&input, &path, ty, &mut |_, _| {}).expect("quantize");
            }
            assert_sha256(&path, hash, name);
        }
        Self { dir, meta }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Inputs {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    max_abs_diff(got, want) / max_abs_diff(want, &want.zeros_like().expect("zeros"))
}

/// Checks one comparison: within this path's tolerance and, on the f32 path, far below what the
/// quantization itself changes (`effect`; 0 for F32 files, which change nothing). On the bf16
/// path the rounding of bf16 and of 8-bit activations alone is as large as Q8_0's own effect,
/// so there only the tolerance applies.
fn check(what: &str, err: f32, effect: f32, tol: Tol<f32>) {
    eprintln!("{what}: fluxd vs reference {err:.2e}, quantization's own effect {effect:.2e}");
    let tol = tol.get();
    assert!(err <= tol, "{what}: {err} > {tol}");
    if engine_path() == EnginePath::Cpu && effect > 0.0 {
        assert!(err < effect / 2.0, "{what}: {err} not far below {effect}");
    }
}

fn load(inputs: &Inputs, ty: &str) -> FluxTransformer {
    let config = inputs.path("model/transformer/config.json");
    FluxTransformer::load_gguf(
        &inputs.path(&format!("flux-{ty}.gguf")),
        Some(&config),
        dtype(),
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{ty}: {e}"))
}

#[test]
fn every_type_matches_the_dequantized_reference() {
    let inputs = Inputs::write("types");
    let fx = open_tensors(&fixtures("gguf").join("transformer.safetensors"));
    let types = inputs.meta["flux_types"].as_object().expect("flux_types");
    assert_eq!(types.len(), gguf::TYPES.len(), "every type has a fixture");
    for (ty, case) in types {
        let model = load(&inputs, ty);
        let out = fixture_forward(&model, &fx);
        let err = rel_err(&out, &tensor(&fx, &format!("out_{ty}")));
        let effect = case["quantization_effect"]["rel"].as_f64().expect("rel") as f32;
        check(ty, err, effect, FORWARD);
    }
}

/// The integer kernels (opt-in) stay within their activation rounding of the reference; where
/// candle has none for a type, the exact path runs and nothing changes. The choice is the f32
/// CPU path's: on the GPU path candle's kernels run whatever is chosen, and nothing changes.
#[test]
fn int8_kernels_stay_near_the_reference() {
    let inputs = Inputs::write("int8");
    let fx = open_tensors(&fixtures("gguf").join("transformer.safetensors"));
    for ty in ["Q8_0", "Q4_K", "Q6_K"] {
        let mut model = load(&inputs, ty);
        let exact = fixture_forward(&model, &fx);
        model.set_cpu_kernels(CpuKernels::Int8).expect("int8");
        let out = fixture_forward(&model, &fx);
        if engine_path() == EnginePath::Gpu {
            assert_eq!(max_abs_diff(&out, &exact), 0.0, "{ty}: GPU path");
            continue;
        }
        let want = tensor(&fx, &format!("out_{ty}"));
        let err = rel_err(&out, &want);
        let effect = inputs.meta["flux_types"][ty]["quantization_effect"]["rel"]
            .as_f64()
            .expect("rel");
        eprintln!("{ty} int8 kernels: fluxd vs reference {err:.2e}, quantization's own effect {effect:.2e}");
        assert!(err <= INT8, "{ty}: {err} > {INT8}");
        if ty == "Q6_K" {
            assert_eq!(
                max_abs_diff(&out, &exact),
                0.0,
                "no integer kernel for Q6_K"
            );
        }
        model.set_cpu_kernels(CpuKernels::Exact).expect("exact");
        assert_eq!(max_abs_diff(&fixture_forward(&model, &fx), &exact), 0.0);
    }
}

#[test]
fn lora_beside_quantized_weights_matches_the_reference() {
    let inputs = Inputs::write("lora");
    let fx = open_tensors(&fixtures("gguf").join("transformer.safetensors"));
    let lora_meta = &inputs.meta["lora"];
    let cfg = TinyPreset::Quant.transformer_config();
    let lora = LoraFile::load_for(&inputs.path("loras/peft.safetensors"), &cfg).expect("lora");
    for ty in lora_meta["types"].as_array().expect("types") {
        let ty = ty.as_str().expect("type");
        let mut model = load(&inputs, ty);
        let base = fixture_forward(&model, &fx);
        for scale in lora_meta["scales"].as_array().expect("scales") {
            let s = scale.as_f64().expect("scale") as f32;
            set_loras(&mut model, &[(&lora, s)]).expect("set");
            let out = fixture_forward(&model, &fx);
            let want = tensor(&fx, &format!("out_{ty}_lora_{scale}"));
            // The LoRA's own effect is not the quantization's: only the tolerance applies.
            check(
                &format!("{ty} + LoRA {s}"),
                rel_err(&out, &want),
                0.0,
                FORWARD,
            );
            if s == 0.0 {
                // Strength 0 is the base exactly: nothing was merged into the weights.
                assert_eq!(max_abs_diff(&out, &base), 0.0, "{ty}: strength 0");
            } else {
                assert!(max_abs_diff(&out, &base) > 1e-3, "{ty}: the LoRA acts");
            }
        }
        // Clearing brings the base back, bit for bit.
        set_loras(&mut model, &[]).expect("clear");
        assert_eq!(max_abs_diff(&fixture_forward(&model, &fx), &base), 0.0);
    }
}

#[test]
fn t5_encoder_files_match_transformers() {
    let inputs = Inputs::write("t5");
    let fx = open_tensors(&fixtures("gguf").join("t5.safetensors"));
    let ids = fx
        .get("input_ids", DType::I64, &Device::Cpu)
        .expect("input_ids");
    let folder = inputs.path("model/text_encoder_2");
    for (ty, case) in inputs.meta["t5_types"].as_object().expect("t5_types") {
        let file = inputs.path(&format!("t5-{ty}.gguf"));
        let encode = |enc: T5TextEncoder| {
            let out = enc.forward(&ids).expect("forward");
            out.to_dtype(DType::F32).expect("f32")
        };
        let out = encode(
            T5TextEncoder::load_file(&file, Some(&folder), dtype(), &Device::Cpu)
                .unwrap_or_else(|e| panic!("{ty}: {e}")),
        );
        let err = rel_err(&out, &tensor(&fx, &format!("t5_{ty}")));
        let effect = case["quantization_effect"]["rel"].as_f64().expect("rel") as f32;
        check(&format!("T5 {ty}"), err, effect, ENCODER);
        // Without the folder, the file's own metadata configures the encoder the same way.
        let alone = encode(
            T5TextEncoder::load_file(&file, None, dtype(), &Device::Cpu)
                .unwrap_or_else(|e| panic!("{ty} without config: {e}")),
        );
        assert_eq!(max_abs_diff(&alone, &out), 0.0);
    }
}

#[test]
fn mismatched_config_and_unknown_files_are_clear_errors() {
    let inputs = Inputs::write("errors");
    let file = inputs.path("flux-Q8_0.gguf");
    // The tiny preset's config does not describe the quant preset's file.
    let other = scratch_dir("gguf-other-config");
    std::fs::create_dir_all(&other).expect("dir");
    let mut cfg = TinyPreset::Quant.transformer_config();
    cfg.num_single_layers = 3;
    let cfg_path = other.join("config.json");
    std::fs::write(&cfg_path, cfg.to_diffusers_json().to_string()).expect("config");
    let err = FluxTransformer::load_gguf(&file, Some(&cfg_path), DType::F32, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("num_single_layers: file 1, config 3") && err.contains("config.json"),
        "{err}"
    );
    // A T5 file is not a transformer.
    let t5 = inputs.path("t5-Q8_0.gguf");
    let err = FluxTransformer::load_gguf(&t5, None, DType::F32, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("t5encoder"), "{err}");
    // A truncated file names itself.
    let bytes = std::fs::read(&file).expect("read");
    let cut = other.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let err = FluxTransformer::load_gguf(&cut, None, DType::F32, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("cut.gguf") && err.contains("past the end"),
        "{err}"
    );
    std::fs::remove_dir_all(&other).ok();
}

/// CLIP-L from a single file (`--clip`): a GGUF file with transformers names under a prefix (as
/// converters such as stable-diffusion.cpp's write them; no `general.architecture`) loads as the
/// folder's weights do. F32 gives the very same numbers; Q8_0 (quantized linears, the token
/// embedding dequantized as it is looked up) gives the dense encoder's result on the file's
/// dequantized weights, up to summation order.
#[test]
fn clip_gguf_files_load_like_the_folder() {
    const PREFIX: &str = "text_encoders.clip_l.transformer.";
    let folder = common::tiny_model(7).join("text_encoder");
    let dir = scratch_dir("gguf-clip");
    std::fs::create_dir_all(&dir).expect("dir");
    let weights = WeightFiles::open_dir(&folder, &["model"]).expect("CLIP weights");
    let ids = Tensor::new(&[[0i64, 17, 5, 30, 2, 1, 1]], &Device::Cpu).expect("ids");
    let encode = |file: &Path| {
        let enc = ClipTextEncoder::load_file(file, &folder, dtype(), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let out = enc.last_hidden_state(&ids).expect("forward");
        out.to_dtype(DType::F32).expect("f32")
    };
    let want = encode(&folder.join("model.safetensors"));
    for ty in [GgmlDType::F32, GgmlDType::Q8_0] {
        let name = gguf::type_name(ty);
        let file = dir.join(format!("clip_l-{name}.gguf"));
        let policy = QuantPolicy::text_encoder(ty);
        let tensors: Vec<GgufTensor> = weights
            .names()
            .map(|n| {
                let shape = weights.shape(n).expect("shape").to_vec();
                GgufTensor {
                    name: format!("{PREFIX}{n}"),
                    ty: policy.choose(n, &shape),
                    shape,
                }
            })
            .collect();
        write_gguf(&file, &[], &tensors, &mut |t| {
            let n = t.name.strip_prefix(PREFIX).expect("prefix");
            gguf::encode(&weights.get(n, DType::F32, &Device::Cpu)?, t.ty)
        })
        .expect("write");
        let out = encode(&file);
        if ty == GgmlDType::F32 {
            assert_eq!(max_abs_diff(&out, &want), 0.0, "F32 CLIP file");
            continue;
        }
        // The dense reference: the file's dequantized weights, as a safetensors file.
        let g = gguf::GgufFile::open(&file).expect("open");
        let dense: HashMap<String, Tensor> = g
            .names()
            .map(|n| {
                let t = g.tensor(n, DType::F32, &Device::Cpu).expect("dequantize");
                (n.to_string(), t)
            })
            .collect();
        let dense_file = dir.join(format!("clip_l-{name}-dequantized.safetensors"));
        candle_core::safetensors::save(&dense, &dense_file).expect("save");
        let reference = encode(&dense_file);
        check(
            &format!("CLIP {name}"),
            rel_err(&out, &reference),
            rel_err(&reference, &want),
            ENCODER,
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
