//! The NSFW classifier against transformers: the tiny classifier `init-tiny` writes, run by
//! `ViTForImageClassification` with the slow (PIL) `ViTImageProcessor` and by
//! `pipeline("image-classification")` on images built from an integer formula, must give the
//! same resized pixels, logits and scores (fixtures from `scripts/reference/safety_fixtures.py`).

#[allow(dead_code)] // each test file uses only some of the shared helpers
mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use fluxd_engine::safety::{
    pil_resize, red_probe, ImageClassifier, PromptPolicy, Resample, SafetyTolerance,
};
use fluxd_engine::tiny_model::{write_tiny_safety_checker, SAFETY_CHECKER_DIR};

/// Largest |Δ| on a logit or score (observed 4.8e-7 on logits, 1.2e-7 on pipeline scores).
const LOGIT_TOL: f32 = 2e-5;

fn fixture() -> serde_json::Value {
    common::read_json(&common::fixtures("safety").join("safety.json"))
}

/// `pattern_image` of the fixture script.
fn pattern_image(w: u32, h: u32, k: u64) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (u64::from(x), u64::from(y));
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            let c = c as u64;
            *v = ((x * (7 + 3 * c + k) + y * (5 + c) + ((x * y) >> 3) * (c + 1) + 31 * k) % 256)
                as u8;
        }
        image::Rgb(px)
    })
}

fn case_image(case: &serde_json::Value) -> image::RgbImage {
    let w = case["width"].as_u64().expect("width") as u32;
    let h = case["height"].as_u64().expect("height") as u32;
    let param = case["param"].as_u64().expect("param");
    match case["kind"].as_str() {
        Some("pattern") => pattern_image(w, h, param),
        Some("red") => red_probe(w, h, param as u8),
        other => panic!("unknown image kind {other:?}"),
    }
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn classifier_dir() -> PathBuf {
    let dir = common::scratch_dir("safety-ref");
    let seed = fixture()["seed"].as_u64().expect("seed");
    write_tiny_safety_checker(&dir, seed).expect("write classifier");
    dir.join(SAFETY_CHECKER_DIR)
}

#[test]
fn resizing_matches_pillow_bilinear() {
    let fx = fixture();
    let mut max_level_diff = 0u8;
    for case in fx["cases"].as_array().expect("cases") {
        let img = case_image(case);
        let small = pil_resize(&img, 32, 32, Resample::Bilinear).expect("resize");
        let want = case["resized_hex"].as_str().expect("hex");
        let want: Vec<u8> = (0..want.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&want[i..i + 2], 16).expect("hex digit"))
            .collect();
        assert_eq!(want.len(), small.as_raw().len());
        for (a, b) in small.as_raw().iter().zip(&want) {
            max_level_diff = max_level_diff.max(a.abs_diff(*b));
        }
        // Falconsai's 224×224, checked by digest.
        let big = pil_resize(&img, 224, 224, Resample::Bilinear).expect("resize");
        assert_eq!(
            common::sha256_hex(big.as_raw()),
            case["resized224_sha256"].as_str().expect("sha"),
            "224x224 resize of {}x{} differs from Pillow",
            img.width(),
            img.height()
        );
    }
    eprintln!("max level difference vs Pillow at 32x32: {max_level_diff}");
    assert_eq!(max_level_diff, 0);
}

#[test]
fn logits_and_scores_match_transformers() {
    let fx = fixture();
    let dir = classifier_dir();
    let clf = ImageClassifier::load(&dir, DType::F32, &Device::Cpu).expect("load");
    let (mut max_logit, mut max_prob) = (0f32, 0f32);
    for case in fx["cases"].as_array().expect("cases") {
        let img = case_image(case);
        let pv = clf.preprocess(&img).expect("preprocess");
        let sum = pv
            .to_dtype(DType::F64)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.to_scalar::<f64>())
            .expect("sum");
        let want_sum = case["pixel_values_sum"].as_f64().expect("sum");
        assert!(
            (sum - want_sum).abs() < 1e-3,
            "pixel sum {sum} vs {want_sum}"
        );
        let logits: Vec<f32> = clf
            .logits(&pv)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
            .expect("logits");
        for (a, b) in logits.iter().zip(floats(&case["logits"])) {
            max_logit = max_logit.max((a - b).abs());
        }
        let scores = clf.classify(&img).expect("classify");
        assert_eq!(scores.len(), 2);
        assert_eq!(
            (scores[0].label.as_str(), scores[1].label.as_str()),
            ("normal", "nsfw")
        );
        for (s, p) in scores.iter().zip(floats(&case["pipeline_scores"])) {
            max_prob = max_prob.max((s.score - p).abs());
        }
        let nsfw = clf.nsfw_score(&img).expect("nsfw");
        assert_eq!(nsfw, scores[1].score);
    }
    eprintln!("max |Δlogit| {max_logit:e}, max |Δscore| vs pipeline {max_prob:e}");
    assert!(max_logit < LOGIT_TOL, "logits differ by {max_logit}");
    assert!(max_prob < LOGIT_TOL, "scores differ by {max_prob}");
    std::fs::remove_dir_all(dir.parent().expect("parent")).ok();
}

/// The planted red path holds in the reference too: the red probes score as documented.
#[test]
fn red_probes_give_both_verdicts_at_every_tolerance() {
    let fx = fixture();
    for case in fx["cases"].as_array().expect("cases") {
        if case["kind"] != "red" {
            continue;
        }
        let nsfw = floats(&case["probs"])[1];
        let red = case["param"].as_u64().expect("red");
        for t in 0..=SafetyTolerance::MAX {
            let t = SafetyTolerance::new(t).expect("tolerance");
            assert_eq!(
                t.blocks_nsfw_score(nsfw),
                red == 255,
                "red {red} at {t:?}: {nsfw}"
            );
        }
    }
    // And the prompt side blocks an `always` term at the least strict tolerance.
    let six = SafetyTolerance::new(SafetyTolerance::MAX).expect("tolerance");
    assert!(PromptPolicy::builtin().moderate("csam", six).is_some());
}
