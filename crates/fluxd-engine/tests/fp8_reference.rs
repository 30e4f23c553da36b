//! fp8 checkpoints against diffusers running their upcast weights.
//!
//! `scripts/reference/fp8_fixtures.py` (run by `make_fixtures.sh`) read the files fluxd's writer
//! makes (`write_fp8_reference_models`: Kijai's plain-cast layout, ComfyUI's scaled fp8 with and
//! without input scales, a ComfyUI full checkpoint), upcast them as ComfyUI does and ran
//! diffusers' `FluxTransformer2DModel` / `FluxPipeline` in f32. This test writes the same files
//! again, checks they are byte-identical, and compares: fluxd must match the upcast reference
//! to float noise, far below what fp8 itself changes. On the GPU path (`FLUXD_TEST_PATH=gpu`,
//! bf16 on candle's ops: `scripts/test.sh` runs this file there too) the fp8 weights are upcast
//! to bf16 per layer, as a GPU runs them, and each comparison has a bf16 tolerance.

#[allow(dead_code)] // each test file uses only some of the shared helpers
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use common::{dtype, engine_path, fixture_forward, max_abs_diff, max_level_diff, EnginePath};
use common::{Suite, Tol};
use fluxd_engine::fp8::{
    write_fp8_reference_models, REFERENCE_CHECKPOINT, REFERENCE_MODEL_DIR, REFERENCE_ORIGINAL,
};
use fluxd_engine::lora::write_random_lora;
use fluxd_engine::lora::{LoraFile, LoraFormat};
use fluxd_engine::model_dir::{ModelPaths, VaeSource};
use fluxd_engine::pipeline::FluxPipeline;
use fluxd_engine::transformer::linear::LinearWeight;
use fluxd_engine::transformer::{FluxTransformer, WeightsDtype};

/// Largest |Δ| between fluxd and diffusers (f32) on one forward of the same upcast weights,
/// relative to the reference's largest |value|. f32: observed ≤ 5.3e-6 absolute (see the test's
/// output; the f32 forward of `pipeline_reference` sees 2.5e-5). bf16: this random tiny model
/// amplifies bf16 rounding (as in `gguf_reference`): the f32 original file lands 0.34 of the
/// outputs' largest value away, every fp8 layout 0.35 (fp8 itself moves them 0.06); the bound
/// catches a wrong scale or layout (O(1)), not precision, which the f32 path checks. What the
/// bf16 path does check closely is that the fp8 layers compute exactly what the same weights
/// upcast to dense bf16 layers do (`lora_runs_beside_fp8_weights`: 0 difference observed).
const FORWARD_TOL: Tol<f32> = Tol {
    f32: 1e-4,
    bf16: 0.5,
};
/// Largest |Δ| on the final latents of the checkpoint pipeline run (f32 pipeline: 2.1e-5;
/// bf16, relative to the latents' largest value: 0.26 observed).
const LATENT_TOL: Tol<f32> = Tol {
    f32: 1e-4,
    bf16: 0.5,
};
/// Largest 8-bit difference on its image (f32 path: rounding at .5 boundaries).
const PIXEL_TOL: u8 = 1;
/// fp8 base + LoRA against the dense upcast base + LoRA: the same products, so float noise.
const LORA_TOL: Tol<f32> = Tol {
    f32: 1e-5,
    bf16: 1e-5,
};

const SUITE: Suite = Suite("fp8");

/// What a forward tolerance multiplies: 1 on the f32 path (an absolute bound), the reference's
/// largest |value| on the bf16 path (a relative one, as `gguf_reference`'s).
fn tol_unit(scale: f32) -> f32 {
    match engine_path() {
        EnginePath::Cpu => 1.0,
        EnginePath::Gpu => scale,
    }
}

/// The reference files, written once per test binary.
fn files() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::scratch_dir("fp8-ref");
        let seed = SUITE.meta()["model_seed"].as_u64().expect("seed");
        write_fp8_reference_models(&dir, seed).expect("fp8 files");
        dir
    })
}

fn fp8_linears(model: &mut FluxTransformer) -> usize {
    model
        .linear_names()
        .iter()
        .filter(|n| {
            matches!(
                model.linear_mut(n).map(|l| l.stored_weight()),
                Some(LinearWeight::Fp8(_))
            )
        })
        .count()
}

#[test]
fn files_are_byte_identical_to_the_fixtures_files() {
    for (file, hash) in SUITE.meta()["files"].as_object().expect("files") {
        common::assert_sha256(&files().join(file), hash, file);
    }
}

#[test]
fn fp8_transformers_match_diffusers_on_their_upcast_weights() {
    let fx = common::open_tensors(&SUITE.path("forward.safetensors"));
    let original = common::tensor(&fx, "out_original");
    let ours = FluxTransformer::load_bfl(&files().join(REFERENCE_ORIGINAL), dtype(), &Device::Cpu)
        .expect("f32");
    let scale = max_abs_diff(&original, &original.zeros_like().expect("zeros"));
    let d = max_abs_diff(&fixture_forward(&ours, &fx), &original);
    eprintln!("f32 original: fluxd vs diffusers max|Δ| {d:e} (outputs up to {scale:.3})");
    assert!(
        d <= FORWARD_TOL.get() * tol_unit(scale),
        "f32 original differs by {d}"
    );
    for layout in SUITE.meta()["layouts"].as_array().expect("layouts") {
        let layout = layout.as_str().expect("layout");
        let file = files().join(format!("{layout}.safetensors"));
        let mut model = FluxTransformer::load_bfl(&file, dtype(), &Device::Cpu).expect(layout);
        let n = model.linear_names().len();
        assert_eq!(
            fp8_linears(&mut model),
            n,
            "{layout}: every linear stays fp8"
        );
        let reference = common::tensor(&fx, &format!("out_{layout}"));
        let ours = fixture_forward(&model, &fx);
        let d = max_abs_diff(&ours, &reference);
        let fp8_effect = max_abs_diff(&reference, &original);
        eprintln!(
            "{layout}: fluxd vs diffusers (upcast) max|Δ| {d:e}; fp8 vs original weights max|Δ| \
             {fp8_effect:e} (outputs up to {scale:.3})"
        );
        assert!(
            d <= FORWARD_TOL.get() * tol_unit(scale),
            "{layout}: differs from the reference by {d}"
        );
        assert!(
            fp8_effect > 20.0 * FORWARD_TOL.f32,
            "{layout}: fp8 changes the output by only {fp8_effect}: the comparison shows nothing"
        );
    }
}

#[test]
fn weights_dtype_fp8_stores_a_f32_model_in_fp8() {
    // The reference stored each linear weight of the f32 file in fp8 with a per-tensor scale
    // amax / 448 in torch, and kept biases and norms in f32.
    let fx = common::open_tensors(&SUITE.path("forward.safetensors"));
    let source =
        fluxd_engine::model_dir::TransformerSource::BflFile(files().join(REFERENCE_ORIGINAL));
    let mut model =
        FluxTransformer::load(&source, dtype(), &Device::Cpu, WeightsDtype::Fp8).expect("load");
    let n = model.linear_names().len();
    assert_eq!(fp8_linears(&mut model), n);
    let reference = common::tensor(&fx, "out_weights_fp8");
    let scale = max_abs_diff(&reference, &reference.zeros_like().expect("zeros"));
    let d = max_abs_diff(&fixture_forward(&model, &fx), &reference);
    eprintln!("--weights-dtype fp8 vs diffusers on the same fp8 weights: max|Δ| {d:e}");
    assert!(d <= FORWARD_TOL.get() * tol_unit(scale), "differs by {d}");
}

#[test]
fn lora_runs_beside_fp8_weights() {
    // The same adapter on the fp8 base and on a dense f32 copy of its upcast weights gives the
    // same output; strength 0 gives the base output exactly.
    let fx = common::open_tensors(&SUITE.path("forward.safetensors"));
    let file = files().join("comfy_scaled.safetensors");
    let mut fp8 = FluxTransformer::load_bfl(&file, dtype(), &Device::Cpu).expect("fp8");
    let mut dense = fp8.clone();
    for name in dense.linear_names() {
        let l = dense.linear_mut(&name).expect("linear");
        let w = l.weight().expect("upcast");
        let b = l.bias().cloned();
        *l = fluxd_engine::transformer::FluxLinear::new(w, b).expect("dense");
    }
    let lora_path = files().join("lora.safetensors");
    write_random_lora(&lora_path, LoraFormat::Kohya, fp8.config(), 4, 3, &|_| true).expect("lora");
    let lora = LoraFile::load_for(&lora_path, fp8.config()).expect("lora");
    let base = fixture_forward(&fp8, &fx);
    fluxd_engine::lora::set_loras(&mut fp8, &[(&lora, 0.0)]).expect("set");
    assert_eq!(
        max_abs_diff(&fixture_forward(&fp8, &fx), &base),
        0.0,
        "strength 0"
    );
    fluxd_engine::lora::set_loras(&mut fp8, &[(&lora, 1.3)]).expect("set");
    fluxd_engine::lora::set_loras(&mut dense, &[(&lora, 1.3)]).expect("set");
    let (a, b) = (fixture_forward(&fp8, &fx), fixture_forward(&dense, &fx));
    let moved = max_abs_diff(&a, &base);
    let d = max_abs_diff(&a, &b);
    eprintln!("LoRA on fp8: moves the output by {moved:e}; fp8 vs dense upcast base {d:e}");
    assert!(moved > 1e-2, "the adapter did nothing ({moved})");
    assert!(
        d <= LORA_TOL.get(),
        "fp8 base + LoRA differs from the dense base + LoRA by {d}"
    );
    assert_eq!(
        fp8_linears(&mut fp8),
        fp8.linear_names().len(),
        "base untouched"
    );
}

#[test]
fn comfy_checkpoint_generates_what_diffusers_generates() {
    let model = files().join(REFERENCE_MODEL_DIR);
    let checkpoint = files().join(REFERENCE_CHECKPOINT);
    let paths = ModelPaths::resolve(&model, Some(&checkpoint), None).expect("paths");
    assert!(paths.clip_weights.is_some() && paths.t5_weights.is_some());
    assert!(matches!(paths.vae, VaeSource::Bundled(_)));
    let pipe = FluxPipeline::load(&paths, &Device::Cpu, dtype(), |_| {}).expect("load");
    let meta = SUITE.meta();
    let p = common::generate_params(&meta["case"], "max_sequence_length");
    let text = pipe
        .encode_prompt(&p.prompt, p.max_sequence_length)
        .expect("encode");
    let latents = common::denoise(&pipe, &p, &text);
    let reference = common::open_tensors(&SUITE.path("checkpoint.safetensors"));
    let want = common::tensor(&reference, "final_latents");
    let scale = max_abs_diff(&want, &want.zeros_like().expect("zeros"));
    let d = max_abs_diff(&latents, &want);
    let image = pipe.decode(&latents, p.width, p.height).expect("decode");
    let worst = max_level_diff(&image, &SUITE.png("checkpoint.png"));
    eprintln!(
        "checkpoint: final latents max|Δ| {d:e} (latents up to {scale:.3}), worst pixel {worst}"
    );
    assert!(
        d <= LATENT_TOL.get() * tol_unit(scale),
        "latents differ by {d}"
    );
    // On the bf16 path the latents' loose bound already admits any image: pixels are compared
    // on the f32 path only.
    if engine_path() == EnginePath::Cpu {
        assert!(worst <= PIXEL_TOL, "a pixel differs by {worst}");
    }
}
