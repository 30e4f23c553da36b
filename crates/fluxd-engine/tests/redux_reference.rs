//! fluxd's Redux image prompts against diffusers' FluxPriorReduxPipeline and FluxPipeline on the
//! tiny model, stage by stage: decoding, Pillow's bicubic resize, SigLIP, the Redux projection,
//! the concatenated conditioning and a whole generation from it.
//!
//! Fixtures come from `scripts/reference/redux_fixtures.py` (run by `make_fixtures.sh`;
//! diffusers 0.42.1, transformers 5.23.0, Pillow 13, torch 2.15.0, CPU, float32) on the model
//! `fluxd model init-tiny --seed 7` writes (its Redux model in `redux/`); this test writes the
//! same model again and checks it is byte-identical first. Tolerances were measured (see each
//! constant) and leave head-room of a few times the largest difference observed.

#[allow(dead_code)] // each test file uses only some of the shared helpers
mod common;

use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, max_level_diff, Case, Suite, Tol};
use fluxd_engine::redux::{decode_image_prompt, ReduxModel};
use fluxd_engine::tiny_model::TINY_REDUX_DIR;
use image::RgbImage;

/// Largest |Δ| allowed on SigLIP's last_hidden_state, the Redux tokens and the concatenated
/// prompt embeddings (observed in f32: 2.8e-6 SigLIP, 1.2e-7 projection, 2.1e-6 prompt_embeds;
/// bf16 on the GPU path against these f32 references: 3.9e-2 SigLIP, 1.4e-2 projection,
/// 3.0e-2 prompt_embeds).
const ENCODER_TOL: Tol<f32> = Tol {
    f32: 2e-5,
    bf16: 0.08,
};
/// Largest |Δ| allowed on the final latents after 2 steps (observed in f32: 1.7e-5; bf16
/// against f32, amplified by the random tiny model as in pipeline_reference.rs: 1.18).
const LATENT_TOL: Tol<f32> = Tol {
    f32: 1e-4,
    bf16: 2.5,
};
/// Largest difference allowed on an 8-bit channel of the generated image (f32: a value within
/// 1e-5 of a .5 boundary may round the other way; bf16 against f32: 93 observed).
const PIXEL_TOL: Tol<u8> = Tol { f32: 1, bf16: 200 };
/// Largest 8-bit difference allowed between our JPEG decode and Pillow's (libjpeg-turbo): the
/// two decoders' IDCT and chroma upsampling differ slightly (observed: 3 on the 4:2:0 fixture).
const JPEG_LEVEL_TOL: u8 = 5;

/// The fixtures of `scripts/reference/redux_fixtures.py`.
const SUITE: Suite = Suite("redux");

fn redux() -> &'static ReduxModel {
    static R: OnceLock<ReduxModel> = OnceLock::new();
    R.get_or_init(|| {
        ReduxModel::load(
            &SUITE.model().join(TINY_REDUX_DIR),
            None,
            common::dtype(),
            &Device::Cpu,
        )
        .expect("load redux")
    })
}

/// The image prompt's file name (`file` of the case).
fn file(case: &Case) -> &str {
    case.json["file"].as_str().expect("file")
}

/// Pillow's decode of the image prompt, after transformers' convert_to_rgb.
fn pil_rgb(case: &Case) -> RgbImage {
    SUITE.png(&format!("{}_rgb.png", case.name))
}

/// The synthetic pattern of `redux_fixtures.py`.
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (i64::from(x), i64::from(y));
        let v = |c: i64| ((x * 7 + y * 13 + c * 50 + ((x * y) % 11) * 9) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    })
}

#[test]
fn tiny_model_is_byte_identical_to_the_fixtures_model() {
    let meta = SUITE.meta();
    let expected = meta["model_files"].as_object().expect("model_files");
    assert!(expected.keys().any(|k| k.starts_with("redux/")));
    SUITE.assert_model_files();
}

#[test]
fn decoding_matches_pillow() {
    for case in SUITE.cases() {
        let bytes = std::fs::read(SUITE.path(file(&case))).expect("input");
        let ours = decode_image_prompt(&bytes, 1 << 20).expect("decode");
        let d = max_level_diff(&ours, &pil_rgb(&case));
        eprintln!("{}: decode max level difference vs Pillow {d}", case.name);
        if file(&case).ends_with(".png") {
            assert_eq!(d, 0, "{}: PNG decode + alpha compositing differ", case.name);
        } else {
            assert!(
                d <= JPEG_LEVEL_TOL,
                "{}: JPEG decode differs by {d}",
                case.name
            );
        }
    }
}

/// Exact on these shapes (upscales, downscales, mixed, identity); see `pil_resize` for the
/// both-shrinking case where Pillow 13's pass order is not always ours.
#[test]
fn resize_matches_pillow_bicubic() {
    let cfg = redux().preprocess_config();
    let mut worst = 0;
    for case in SUITE.cases() {
        let ours = cfg.resize(&pil_rgb(&case)).expect("resize");
        let d = max_level_diff(&ours, &SUITE.png(&format!("{}_resized.png", case.name)));
        eprintln!("{}: resize max level difference vs Pillow {d}", case.name);
        worst = worst.max(d);
    }
    for shape in SUITE.meta()["resize_shapes"].as_array().expect("shapes") {
        let (w, h) = (
            shape[0].as_u64().expect("w") as u32,
            shape[1].as_u64().expect("h") as u32,
        );
        let ours = cfg.resize(&pattern(w, h)).expect("resize");
        let d = max_level_diff(&ours, &SUITE.png(&format!("resize_{w}x{h}.png")));
        eprintln!("pattern {w}x{h}: resize max level difference vs Pillow {d}");
        worst = worst.max(d);
    }
    assert_eq!(worst, 0, "the resize must be Pillow's, level for level");
}

#[test]
fn siglip_and_projection_match() {
    for case in SUITE.cases() {
        let pixels = redux().pixel_values(&pil_rgb(&case)).expect("pixels");
        let hidden = redux().siglip().forward(&pixels).expect("siglip");
        let d_hidden = max_abs_diff(&hidden, &case.tensor("last_hidden_state"));
        let tokens = redux()
            .project(&case.tensor("last_hidden_state"))
            .expect("project");
        let d_proj = max_abs_diff(&tokens, &case.tensor("image_embeds"));
        let encoded = redux().encode(&pil_rgb(&case)).expect("encode");
        let d_enc = max_abs_diff(&encoded, &case.tensor("image_embeds"));
        eprintln!(
            "{}: SigLIP max|Δ| {d_hidden:e}, projection {d_proj:e}, encode {d_enc:e}",
            case.name
        );
        let tol = ENCODER_TOL.get();
        assert!(d_hidden <= tol, "{}: SigLIP {d_hidden}", case.name);
        assert!(d_proj <= tol, "{}: projection {d_proj}", case.name);
        assert!(d_enc <= tol, "{}: encode {d_enc}", case.name);
    }
}

#[test]
fn redux_generation_matches_diffusers() {
    for case in SUITE.cases() {
        let p = &case.params;
        let pipe = SUITE.pipeline();
        let tokens = redux().encode(&pil_rgb(&case)).expect("encode");
        let text = pipe
            .encode_prompt(&p.prompt, p.max_sequence_length)
            .expect("encode prompt")
            .with_image_tokens(&tokens)
            .expect("append");
        let d_txt = max_abs_diff(&text.t5, &case.tensor("prompt_embeds"));
        let d_pooled = max_abs_diff(&text.pooled, &case.tensor("pooled_prompt_embeds"));
        let latents = common::denoise(pipe, p, &text);
        let d_lat = max_abs_diff(&latents, &case.tensor("final_latents"));
        let image = pipe
            .generate_with_image_tokens(p, Some(&tokens), &mut |_| {}, &AtomicBool::new(false))
            .expect("generate")
            .image;
        let d_px = max_level_diff(&image, &SUITE.png(&format!("{}_out.png", case.name)));
        eprintln!(
            "{}: prompt_embeds max|Δ| {d_txt:e}, pooled {d_pooled:e}, final latents {d_lat:e}, \
             image worst {d_px} levels",
            case.name
        );
        assert!(
            d_txt <= ENCODER_TOL.get() && d_pooled <= ENCODER_TOL.get(),
            "{}",
            case.name
        );
        assert!(d_lat <= LATENT_TOL.get(), "{}: latents {d_lat}", case.name);
        assert!(d_px <= PIXEL_TOL.get(), "{}: image {d_px}", case.name);
        // The image prompt changes the image: without it the same request gives another one.
        let plain = pipe
            .generate(p, &mut |_| {}, &AtomicBool::new(false))
            .expect("generate")
            .image;
        assert_ne!(plain, image, "{}", case.name);
    }
}

#[test]
fn image_tokens_of_the_wrong_width_are_refused() {
    let pipe = SUITE.pipeline();
    let text = pipe.encode_prompt("x", 8).expect("encode");
    let bad = Tensor::zeros((1, 4, 7), DType::F32, &Device::Cpu).expect("zeros");
    let err = text.with_image_tokens(&bad).err().map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("(1, N, 32)"));
}
