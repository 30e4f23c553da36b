//! Depth Anything against transformers: the tiny model `fluxd model init-tiny-depth` writes,
//! run by `DepthAnythingForDepthEstimation` with its (PIL) `DPTImageProcessor` and by BFL's
//! `DepthImageEncoder` (fixtures from `scripts/reference/depth_fixtures.py`), must give the same
//! pixel values, every stage (embeddings, backbone feature maps, reassembled and fused neck
//! maps, predicted depth) within measured float noise, and the same control tensor.

#[allow(dead_code)] // each test file uses only some of the shared helpers
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use fluxd_engine::control::depth::{bfl_depth_map, write_tiny_depth_anything, DepthEstimator};
use serde_json::Value;

/// Largest |Δ| allowed, about 10× the float noise measured on these fixtures (x86-64, 7 Dec
/// 2026, `--nocapture` prints every stage's): pixel values are the same 8-bit resize and the
/// same f32 arithmetic (0 measured); embeddings, backbone, reassembled and fused maps at most
/// 4.3e-6; `predicted_depth` (values up to 53) at most 6.1e-5; BFL's control tensor (the depth
/// resized and scaled by 1/127.5) at most 5.4e-7.
const PIXELS_TOL: f32 = 0.0;
const STAGE_TOL: f32 = 5e-5;
const DEPTH_TOL: f32 = 6e-4;
const CONTROL_TOL: f32 = 5e-6;

fn suite() -> common::Suite {
    common::Suite("depth")
}

fn meta() -> Value {
    suite().meta()
}

/// The tiny model written again with the fixtures' seed, checked byte for byte.
fn model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::scratch_dir("depth-model");
        let seed = meta()["seed"].as_u64().expect("seed");
        write_tiny_depth_anything(&dir, seed).expect("write the tiny depth model");
        for (rel, hash) in meta()["model_files"].as_object().expect("model_files") {
            common::assert_sha256(&dir.join(rel), hash, rel);
        }
        dir
    })
}

fn estimator() -> &'static DepthEstimator {
    static E: OnceLock<DepthEstimator> = OnceLock::new();
    E.get_or_init(|| DepthEstimator::load(model(), &Device::Cpu).expect("load the tiny model"))
}

fn cases() -> Vec<(Value, fluxd_engine::weights::WeightFiles)> {
    meta()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().expect("name");
            (
                c.clone(),
                common::open_tensors(&suite().path(&format!("{name}.safetensors"))),
            )
        })
        .collect()
}

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = common::max_abs_diff(got, want);
    eprintln!("{what}: max |Δ| = {d:e}");
    assert!(d <= tol, "{what}: max |Δ| {d} > {tol}");
}

#[test]
fn processor_gives_the_same_pixel_values() {
    for (case, t) in cases() {
        let name = case["name"].as_str().expect("name");
        let img = suite().png(case["image"].as_str().expect("image"));
        let px = estimator().preprocess(&img).expect("preprocess");
        let resized: Vec<usize> = px.dims()[2..].to_vec();
        let want: Vec<usize> = case["resized"]
            .as_array()
            .expect("resized")
            .iter()
            .map(|v| v.as_u64().expect("size") as usize)
            .collect();
        assert_eq!(resized, want, "{name}");
        check(
            &format!("{name} pixel_values"),
            &px,
            &common::tensor(&t, "pixel_values"),
            PIXELS_TOL,
        );
    }
}

#[test]
fn every_stage_matches_transformers() {
    for (case, t) in cases() {
        let name = case["name"].as_str().expect("name");
        let levels = case["levels"].as_u64().expect("levels") as usize;
        let px = common::tensor(&t, "pixel_values");
        let s = estimator().stages(&px).expect("forward");
        check(
            &format!("{name} embeddings"),
            &s.embeddings,
            &common::tensor(&t, "embeddings"),
            STAGE_TOL,
        );
        assert_eq!(
            (s.backbone.len(), s.reassembled.len(), s.fused.len()),
            (levels, levels, levels)
        );
        for i in 0..levels {
            check(
                &format!("{name} backbone.{i}"),
                &s.backbone[i],
                &common::tensor(&t, &format!("backbone.{i}")),
                STAGE_TOL,
            );
            check(
                &format!("{name} reassembled.{i}"),
                &s.reassembled[i],
                &common::tensor(&t, &format!("reassembled.{i}")),
                STAGE_TOL,
            );
            check(
                &format!("{name} fused.{i}"),
                &s.fused[i],
                &common::tensor(&t, &format!("fused.{i}")),
                STAGE_TOL,
            );
        }
        let want = common::tensor(&t, "predicted_depth");
        check(
            &format!("{name} predicted_depth"),
            &s.depth,
            &want,
            DEPTH_TOL,
        );
        // The map is not trivially flat: the comparison above means something.
        let range = case["depth_range"].as_array().expect("depth_range");
        let (lo, hi) = (
            range[0].as_f64().expect("min"),
            range[1].as_f64().expect("max"),
        );
        assert!(hi - lo > 0.1, "{name}: depth range {lo}..{hi}");
    }
}

#[test]
fn bfl_encoder_matches_the_reference() {
    for (case, t) in cases() {
        let name = case["name"].as_str().expect("name");
        let img = suite().png(case["image"].as_str().expect("image"));
        let map = bfl_depth_map(estimator(), &img).expect("bfl depth");
        assert_eq!(
            (map.width, map.height),
            (img.width() as usize, img.height() as usize)
        );
        let got = map.control_tensor(&Device::Cpu).expect("control tensor");
        check(
            &format!("{name} bfl_control"),
            &got,
            &common::tensor(&t, "bfl_control"),
            CONTROL_TOL,
        );
    }
}
