//! `fluxd model init-tiny` and `fluxd generate` as a user runs them: the real binary, real files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use fluxd_engine::transformer::{write_bfl_single_file, FluxConfig};
use fluxd_engine::vae::write_tiny_ae_bfl;

const SEED: u64 = 7;

fn fluxd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluxd"))
        .args(args)
        .output()
        .expect("run fluxd")
}

fn ok(args: &[&str]) -> String {
    let out = fluxd(args);
    assert!(
        out.status.success(),
        "fluxd {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fluxd-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The tiny model, made once through the CLI.
fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("model").join("tiny");
        let seed = SEED.to_string();
        let out = ok(&["model", "init-tiny", s(&dir), "--seed", &seed]);
        assert_eq!(out.trim(), s(&dir));
        dir
    })
}

fn generate(model: &Path, output: &Path, extra: &[&str]) -> Output {
    generate_seed(model, output, 42, extra)
}

fn generate_seed(model: &Path, output: &Path, seed: u64, extra: &[&str]) -> Output {
    let seed = seed.to_string();
    let mut args = vec![
        "generate",
        "--model",
        s(model),
        "--prompt",
        "a red fox",
        "--seed",
        &seed,
        "--steps",
        "2",
        "--guidance",
        "3.5",
        "--width",
        "64",
        "--height",
        "48",
        "--max-sequence-length",
        "64",
        "--output",
        s(output),
    ];
    args.extend_from_slice(extra);
    fluxd(&args)
}

#[test]
fn generate_writes_png_and_jpeg_of_the_asked_size_with_timings() {
    let dir = scratch("formats");
    let png = dir.join("fox.png");
    let timings = dir.join("t.json");
    let out = generate(tiny(), &png, &["--timings-json", s(&timings)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&png).expect("decodes as an image");
    assert_eq!((img.width(), img.height()), (64, 48));
    assert_eq!(
        image::ImageFormat::from_path(&png).ok(),
        Some(image::ImageFormat::Png)
    );
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&timings).expect("timings")).expect("json");
    assert_eq!(t["step_ms"].as_array().map(Vec::len), Some(2));
    for key in ["load_ms", "text_encoding_ms", "decode_ms"] {
        assert!(t[key].as_f64().is_some_and(|v| v >= 0.0), "{key}: {t}");
    }
    assert!(t["peak_rss_bytes"].as_u64().is_some_and(|v| v > 0));
    assert!(t["weight_bytes"].as_u64().is_some_and(|v| v > 0));

    let jpg = dir.join("fox.jpg");
    assert!(generate(tiny(), &jpg, &[]).status.success());
    let bytes = std::fs::read(&jpg).expect("jpg");
    assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "JPEG magic");
    let img = image::load_from_memory(&bytes).expect("decodes");
    assert_eq!((img.width(), img.height()), (64, 48));
}

#[test]
fn same_seed_same_image_other_seed_other_image() {
    let dir = scratch("seeds");
    let (a, b, c) = (dir.join("a.png"), dir.join("b.png"), dir.join("c.png"));
    assert!(generate(tiny(), &a, &[]).status.success());
    assert!(generate(tiny(), &b, &[]).status.success());
    // 2^32 + 42: torch keeps the low 32 bits, so this is seed 42 again.
    let same = dir.join("same.png");
    assert!(generate_seed(tiny(), &same, 42 + (1 << 32), &[])
        .status
        .success());
    assert!(generate_seed(tiny(), &c, 43, &[]).status.success());
    let pixels = |p: &Path| image::open(p).expect("png").to_rgb8().into_raw();
    assert_eq!(pixels(&a), pixels(&b));
    assert_eq!(pixels(&a), pixels(&same));
    assert_ne!(pixels(&a), pixels(&c));
}

#[test]
fn bfl_single_files_give_the_same_image_as_the_diffusers_layout() {
    let dir = scratch("bfl");
    let transformer = dir.join("flux1-dev.safetensors");
    write_bfl_single_file(&transformer, &FluxConfig::tiny(), SEED, true).expect("bfl file");
    let ae = dir.join("ae.safetensors");
    write_tiny_ae_bfl(&ae, SEED).expect("ae file");
    let (a, b) = (dir.join("diffusers.png"), dir.join("bfl.png"));
    assert!(generate(tiny(), &a, &[]).status.success());
    let out = generate(
        tiny(),
        &b,
        &["--transformer", s(&transformer), "--vae", s(&ae)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pixels = |p: &Path| image::open(p).expect("png").to_rgb8().into_raw();
    assert_eq!(pixels(&a), pixels(&b));
}

#[test]
fn errors_name_the_file_and_tensor() {
    let dir = scratch("errors");
    let out = generate(&dir.join("nope"), &dir.join("x.png"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope") && err.contains("model folder"),
        "{err}"
    );

    let out = generate(tiny(), &dir.join("x.gif"), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(".png"));

    // A model whose transformer config disagrees with its weights.
    let broken = dir.join("broken");
    ok(&["model", "init-tiny", s(&broken), "--seed", "1"]);
    let cfg_path = broken.join("transformer/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("cfg")).expect("json");
    cfg["joint_attention_dim"] = serde_json::json!(48);
    std::fs::write(&cfg_path, cfg.to_string()).expect("write cfg");
    let out = generate(&broken, &dir.join("x.png"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("context_embedder") && err.contains("diffusion_pytorch_model-0000"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A missing shard.
    let shard = broken.join("transformer/diffusion_pytorch_model-00002-of-00002.safetensors");
    std::fs::remove_file(&shard).expect("rm");
    let out = generate(&broken, &dir.join("x.png"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("00002-of-00002"),
        "{err}"
    );
}

#[test]
fn lora_flag_changes_the_image_and_inspect_reports_the_file() {
    use fluxd_engine::lora::{write_random_lora, LoraFormat};
    let dir = scratch("lora");
    let lora = dir.join("style.safetensors");
    write_random_lora(&lora, LoraFormat::Kohya, &FluxConfig::tiny(), 4, 3, &|_| {
        true
    })
    .expect("lora");
    let (base, zero, styled) = (
        dir.join("base.png"),
        dir.join("zero.png"),
        dir.join("styled.png"),
    );
    assert!(generate(tiny(), &base, &[]).status.success());
    let spec0 = format!("{}:0", s(&lora));
    assert!(generate(tiny(), &zero, &["--lora", &spec0])
        .status
        .success());
    let spec = format!("{}:1.1", s(&lora));
    let out = generate(tiny(), &styled, &["--lora", &spec, "--lora", &spec0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pixels = |p: &Path| image::open(p).expect("png").to_rgb8().into_raw();
    assert_eq!(pixels(&base), pixels(&zero));
    assert_ne!(pixels(&base), pixels(&styled));

    let report: serde_json::Value =
        serde_json::from_str(&ok(&["lora", "inspect", s(&lora), "--model", s(tiny())]))
            .expect("json");
    assert_eq!(report["format"], "kohya");
    assert_eq!(report["ranks"], serde_json::json!([4]));
    assert_eq!(report["alphas"], serde_json::json!([2.0]));
    assert_eq!(report["model_check"]["fits"], true);
    assert!(report["transformer_modules"]
        .as_array()
        .is_some_and(|m| m.iter().any(|x| x == "single_blocks.1.linear1")));

    let missing = fluxd(&[
        "generate",
        "--model",
        s(tiny()),
        "--lora",
        "/nonexistent.safetensors",
        "--output",
        s(&dir.join("x.png")),
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "1",
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.safetensors"));
}

#[test]
fn image_prompt_through_redux_conditions_the_image() {
    let dir = scratch("redux");
    let prompt_png = dir.join("prompt.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 100]))
        .save(&prompt_png)
        .expect("write png");
    // `init-tiny` writes a matching FLUX.1-Redux model into DIR/redux.
    let redux = tiny().join("redux");
    let with_redux = |out: &Path, extra: &[&str]| {
        let mut args = vec!["--image-prompt", s(&prompt_png)];
        args.extend_from_slice(extra);
        generate(tiny(), out, &args)
    };
    let (plain, a, b, bfl) = (
        dir.join("plain.png"),
        dir.join("a.png"),
        dir.join("b.png"),
        dir.join("bfl.png"),
    );
    assert!(generate(tiny(), &plain, &[]).status.success());
    let out = with_redux(&a, &["--redux-model", s(&redux)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(with_redux(&b, &["--redux-model", s(&redux)])
        .status
        .success());
    // The BFL single file with the SigLIP folder named explicitly is the same model.
    let bfl_file = redux.join("flux1-redux-dev.safetensors");
    let siglip = redux.join("image_encoder");
    let out = with_redux(
        &bfl,
        &["--redux-model", s(&bfl_file), "--siglip", s(&siglip)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pixels = |p: &Path| image::open(p).expect("png").to_rgb8();
    assert_eq!(pixels(&a).dimensions(), (64, 48));
    assert_ne!(
        pixels(&a),
        pixels(&plain),
        "the image prompt changes the image"
    );
    assert_eq!(pixels(&a), pixels(&b), "and deterministically");
    assert_eq!(pixels(&a), pixels(&bfl));

    // A GIF is refused with a message naming the field and the accepted formats.
    let gif = dir.join("prompt.gif");
    std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").expect("gif");
    let out = generate(
        tiny(),
        &dir.join("x.png"),
        &["--redux-model", s(&redux), "--image-prompt", s(&gif)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("image_prompt") && err.contains("PNG, JPEG or WebP"),
        "{err}"
    );
    // An image prompt needs a Redux model.
    let out = generate(tiny(), &dir.join("x.png"), &["--image-prompt", s(&gif)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redux-model"));
}

fn generate_custom(model: &Path, output: &Path, prompt: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--model",
        s(model),
        "--prompt",
        prompt,
        "--seed",
        "1",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "48",
        "--output",
        s(output),
    ];
    args.extend_from_slice(extra);
    fluxd(&args)
}

#[test]
fn generate_moderates_like_the_api_with_exit_status_3() {
    use fluxd_engine::safety::write_tiny_classifier_with;
    let dir = scratch("moderation");
    let out = dir.join("out.png");
    let refused = generate_custom(tiny(), &out, "porn", &["--safety-tolerance", "2"]);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Request Moderated"));
    assert!(!out.exists());

    let (none, all) = (dir.join("checker-none"), dir.join("checker-all"));
    write_tiny_classifier_with(&none, 7, -20.0).expect("classifier");
    write_tiny_classifier_with(&all, 7, 20.0).expect("classifier");
    let flagged = generate_custom(
        tiny(),
        &out,
        "a fox",
        &["--safety-tolerance", "6", "--safety-checker", s(&all)],
    );
    assert_eq!(flagged.status.code(), Some(3), "{flagged:?}");
    assert!(String::from_utf8_lossy(&flagged.stderr).contains("Content Moderated"));
    assert!(!out.exists(), "a moderated image was written");
    let served = generate_custom(
        tiny(),
        &out,
        "a fox",
        &["--safety-tolerance", "0", "--safety-checker", s(&none)],
    );
    assert!(served.status.success(), "{served:?}");
    assert!(out.exists());
}

#[test]
fn generate_upsamples_the_prompt_through_the_configured_model() {
    let llm = common::FakeLlm::start("a red fox, golden hour, shallow depth of field");
    let dir = scratch("upsampling");
    let (plain, upsampled) = (dir.join("plain.png"), dir.join("upsampled.png"));
    let endpoint = format!("{}/v1", llm.base);
    let flags = [
        "--prompt-upsampling",
        "--upsampler-url",
        &endpoint,
        "--upsampler-model",
        "tiny-llm",
    ];
    let run = generate_custom(tiny(), &upsampled, "fox", &flags);
    assert!(run.status.success(), "{run:?}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("prompt used: a red fox, golden hour, shallow depth of field"),
        "{stdout}"
    );
    assert_eq!(
        llm.requests.lock().expect("lock")[0]["messages"][1]["content"],
        "fox"
    );
    let run = generate_custom(tiny(), &plain, "fox", &[]);
    assert!(run.status.success());
    assert_ne!(
        std::fs::read(&plain).expect("plain"),
        std::fs::read(&upsampled).expect("upsampled"),
        "the rewritten prompt made no difference"
    );
}

#[test]
fn model_plan_of_the_full_size_model() {
    // Header-only files with FLUX.1-dev's, T5-XXL's and CLIP-L's real shapes: a plan reads
    // nothing else.
    let dir = scratch("plan").join("FLUX.1-dev");
    fluxd_engine::memory_plan::shapes::write_flux1_dev_headers(&dir).expect("headers");
    let plan = |memory: &str, extra: &[&str]| {
        let mut args = vec![
            "model",
            "plan",
            "--model",
            s(&dir),
            "--device",
            "cuda:0",
            "--dtype",
            "bf16",
            "--memory",
            memory,
        ];
        args.extend_from_slice(extra);
        fluxd(&args)
    };
    let out = plan("80GB", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1440x1440"), "{stdout}");
    assert!(
        stdout.contains("transformer") && stdout.contains("22.17 GiB"),
        "{stdout}"
    );
    assert!(
        stdout.contains("T5") && stdout.contains("8.87 GiB"),
        "{stdout}"
    );
    assert!(stdout.contains("cuda:0: fits in"), "{stdout}");
    // A 24 GB card: refused, with the size that would fit (none: the weights alone do not).
    let out = plan("24GB", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not fit") && err.contains("weights alone"),
        "{err}"
    );
    // T5 on the CPU and the transformer stored in fp8: the GPU holds 11 GiB of weights.
    let out = plan(
        "24GB",
        &[
            "--text-encoders-device",
            "cpu",
            "--cpu-memory",
            "64GB",
            "--weights-dtype",
            "fp8",
            "--width",
            "1024",
            "--height",
            "1024",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("T5                 cpu"), "{stdout}");
    assert!(
        stdout.contains("cpu: fits in 59.60 GiB (--cpu-memory 64GB)"),
        "{stdout}"
    );
}

#[test]
fn generate_refuses_before_loading_when_the_plan_does_not_fit() {
    let dir = scratch("refuse");
    let png = dir.join("x.png");
    let out = generate(tiny(), &png, &["--memory", "1MB"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not fit") && err.contains("--memory 1MB"),
        "{err}"
    );
    assert!(!png.exists());
}

#[test]
fn fp8_files_and_text_encoders_on_the_cpu() {
    use fluxd_engine::fp8::{write_fp8_transformer, Fp8Layout};
    let dir = scratch("fp8");
    let pixels = |p: &Path| image::open(p).expect("png").to_rgb8().into_raw();
    let run = |name: &str, extra: &[&str]| {
        let png = dir.join(format!("{name}.png"));
        let out = generate(tiny(), &png, extra);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pixels(&png)
    };
    // Kijai's layout and `--weights-dtype fp8` on the folder's f32 weights.
    let kijai = dir.join("kijai.safetensors");
    write_fp8_transformer(&kijai, &FluxConfig::tiny(), SEED, Fp8Layout::Kijai).expect("fp8");
    let f32_image = run("f32", &[]);
    let kijai_image = run("kijai", &["--transformer", s(&kijai)]);
    let stored = run("stored", &["--weights-dtype", "fp8"]);
    assert_eq!(kijai_image.len(), f32_image.len());
    assert_ne!(
        kijai_image, f32_image,
        "fp8 weights change the image a little"
    );
    assert_eq!(stored.len(), f32_image.len());
    // A bf16 model with CLIP/T5 in f32 on the CPU: only their embeddings cross over.
    let split = run(
        "split",
        &["--dtype", "bf16", "--text-encoders-device", "cpu"],
    );
    let bf16 = run("bf16", &["--dtype", "bf16"]);
    let mean = split
        .iter()
        .zip(&bf16)
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / split.len() as f64;
    assert!(
        mean < 4.0,
        "f32 encoders move the bf16 image by {mean} levels on average"
    );
}

/// The engine's reference fixtures (drawn and computed by `scripts/reference/`).
fn engine_fixture(suite: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fluxd-engine/tests/fixtures")
        .join(suite)
        .join(file)
}

/// An image written by the CLI: 3 equal channels, returned as one.
fn gray_of_rgb(path: &Path) -> image::GrayImage {
    let rgb = image::open(path).expect("open output").to_rgb8();
    assert!(
        rgb.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
        "channels differ"
    );
    image::DynamicImage::ImageRgb8(rgb).to_luma8()
}

#[test]
fn control_canny_writes_opencvs_edges() {
    let dir = scratch("canny");
    let input = engine_fixture("canny", "blur_rgb.png");
    let out = dir.join("edges.png");
    ok(&[
        "control",
        "canny",
        s(&input),
        s(&out),
        "--low",
        "50",
        "--high",
        "200",
    ]);
    let want = image::open(engine_fixture("canny", "blur_rgb_50_200.png"))
        .expect("fixture")
        .to_luma8();
    assert_eq!(gray_of_rgb(&out), want);
    // Thresholds in either order, as cv2.Canny takes them.
    let swapped = dir.join("swapped.png");
    ok(&[
        "control",
        "canny",
        s(&input),
        s(&swapped),
        "--low",
        "200",
        "--high",
        "50",
    ]);
    assert_eq!(gray_of_rgb(&swapped), want);
    // --bfl: the map BFL's encoder feeds FLUX.1-Canny.
    let bfl = dir.join("bfl.png");
    ok(&["control", "canny", s(&input), s(&bfl), "--bfl"]);
    let want = image::open(engine_fixture("canny", "bfl_blur_rgb.png"))
        .expect("fixture")
        .to_luma8();
    assert_eq!(gray_of_rgb(&bfl), want);
}

#[test]
fn control_canny_refuses_bad_input_clearly() {
    let dir = scratch("canny-bad");
    let missing = dir.join("nope.png");
    let out = fluxd(&["control", "canny", s(&missing), s(&dir.join("o.png"))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.png"), "{err}");
    let not_image = dir.join("text.png");
    std::fs::write(&not_image, b"hello").expect("write");
    let out = fluxd(&["control", "canny", s(&not_image), s(&dir.join("o.png"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("text.png"));
    let input = engine_fixture("canny", "lines.png");
    let out = fluxd(&[
        "control",
        "canny",
        s(&input),
        s(&dir.join("o.png")),
        "--low",
        "nan",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("finite"));
}

#[test]
fn control_depth_writes_the_reference_depth_map() {
    let dir = scratch("depth");
    let est = dir.join("depth-anything");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(engine_fixture("depth", "cases.json")).expect("cases.json"),
    )
    .expect("json");
    let seed = meta["seed"].as_u64().expect("seed").to_string();
    assert_eq!(
        ok(&["model", "init-tiny-depth", s(&est), "--seed", &seed]).trim(),
        s(&est)
    );
    for file in [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        assert!(est.join(file).is_file(), "{file}");
    }
    let input = engine_fixture("depth", "tall.png");
    let out = dir.join("depth.png");
    ok(&[
        "control",
        "depth",
        s(&input),
        s(&out),
        "--depth-estimator",
        s(&est),
    ]);
    let got = gray_of_rgb(&out);
    let img = image::open(&input).expect("input");
    assert_eq!(got.dimensions(), (img.width(), img.height()));
    // BFL's control tensor from transformers, as 0..255 levels: ours within one level.
    let st = std::fs::read(engine_fixture("depth", "tall.safetensors")).expect("fixture");
    let st = safetensors::SafeTensors::deserialize(&st).expect("safetensors");
    let ctl = st.tensor("bfl_control").expect("bfl_control");
    let plane: Vec<f32> = ctl
        .data()
        .chunks_exact(4)
        .take(got.len())
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let worst = got
        .iter()
        .zip(&plane)
        .map(|(g, c)| (f32::from(*g) - ((c + 1.0) * 127.5).round().clamp(0.0, 255.0)).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1.0, "{worst}");
    // Stretched levels span the whole range.
    let mm = dir.join("minmax.png");
    ok(&[
        "control",
        "depth",
        s(&input),
        s(&mm),
        "--depth-estimator",
        s(&est),
        "--levels",
        "min-max",
    ]);
    let mm = gray_of_rgb(&mm);
    assert_eq!((mm.iter().min(), mm.iter().max()), (Some(&0), Some(&255)));
    // A folder that is not a Depth Anything model is named in the error.
    let out = fluxd(&[
        "control",
        "depth",
        s(&input),
        s(&out),
        "--depth-estimator",
        s(&dir),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
}
