//! The Canny port against OpenCV: every edge map `scripts/reference/canny_fixtures.py` made with
//! `cv2.Canny` from `opencv-python-headless` (pinned) must come out bit for bit the same: named
//! images (noise, flat areas, thin lines, ramps, one-channel colour edges, tiny and one-pixel-wide
//! images) at several threshold pairs (low > high and fractional ones included), BFL's
//! `CannyImageEncoder` path, and 40 random small images at random thresholds.

#[allow(dead_code)] // each test file uses only some of the shared helpers
mod common;

use std::path::Path;

use fluxd_engine::control::{
    bfl_canny, bfl_level_round_trip, canny_gray, canny_rgb, CannyThresholds,
};
use image::{DynamicImage, GrayImage, RgbImage};
use serde_json::Value;

fn dir() -> std::path::PathBuf {
    common::fixtures("canny")
}

fn open(path: &Path) -> DynamicImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn thresholds(case: &Value) -> CannyThresholds {
    let (lo, hi) = (case["low"].as_f64(), case["high"].as_f64());
    CannyThresholds::new(lo.expect("low"), hi.expect("high")).expect("finite thresholds")
}

/// The pixels where two maps differ, for the failure message.
fn differences(got: &GrayImage, want: &GrayImage) -> Vec<(u32, u32)> {
    assert_eq!(got.dimensions(), want.dimensions());
    got.enumerate_pixels()
        .filter(|(x, y, p)| want.get_pixel(*x, *y) != *p)
        .map(|(x, y, _)| (x, y))
        .collect()
}

/// Canny of a decoded fixture: its own channel count, as cv2 saw the array.
fn edges_of(img: &DynamicImage, t: CannyThresholds) -> GrayImage {
    match img {
        DynamicImage::ImageLuma8(g) => canny_gray(g, t),
        DynamicImage::ImageRgb8(c) => canny_rgb(c, t),
        other => panic!("fixture inputs are 8-bit L or RGB, got {:?}", other.color()),
    }
}

#[test]
fn named_images_match_opencv_bit_for_bit() {
    let meta = common::read_json(&dir().join("cases.json"));
    let cases = meta["cases"].as_array().expect("cases");
    assert!(cases.len() >= 80, "{} cases", cases.len());
    let mut edges_seen = 0;
    for case in cases {
        let input = open(&dir().join(case["input"].as_str().expect("input")));
        let want = open(&dir().join(case["expected"].as_str().expect("expected"))).to_luma8();
        let got = edges_of(&input, thresholds(case));
        let diff = differences(&got, &want);
        assert!(
            diff.is_empty(),
            "{case}: {} pixels differ, first {:?}",
            diff.len(),
            &diff[..diff.len().min(8)]
        );
        edges_seen += want.iter().filter(|&&v| v == 255).count();
    }
    // The fixtures are not all empty maps.
    assert!(edges_seen > 1000, "{edges_seen}");
}

#[test]
fn bfl_encoder_path_matches_the_reference() {
    let meta = common::read_json(&dir().join("cases.json"));
    let levels: Vec<u8> = meta["bfl_levels"]
        .as_array()
        .expect("bfl_levels")
        .iter()
        .map(|v| v.as_u64().expect("level") as u8)
        .collect();
    assert_eq!(levels, bfl_level_round_trip().to_vec());
    let cases = meta["bfl"].as_array().expect("bfl");
    assert!(!cases.is_empty());
    let t = CannyThresholds::new(50.0, 200.0).expect("thresholds");
    for case in cases {
        let input: RgbImage = open(&dir().join(case["input"].as_str().expect("input"))).to_rgb8();
        let want = open(&dir().join(case["expected"].as_str().expect("expected"))).to_luma8();
        let diff = differences(&bfl_canny(&input, t), &want);
        assert!(diff.is_empty(), "{case}: {} pixels differ", diff.len());
    }
}

#[test]
fn random_images_match_opencv_bit_for_bit() {
    let meta = common::read_json(&dir().join("cases.json"));
    let path = dir().join("fuzz.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("fuzz.safetensors parses");
    let cases = meta["fuzz"].as_array().expect("fuzz");
    assert_eq!(cases.len(), 40);
    for case in cases {
        let i = case["case"].as_u64().expect("case");
        let input = st.tensor(&format!("case{i}.input")).expect("input");
        let want = st.tensor(&format!("case{i}.edges")).expect("edges");
        let (h, w, cn) = match input.shape() {
            [h, w, c] => (*h as u32, *w as u32, *c),
            s => panic!("case {i}: input shape {s:?}"),
        };
        let t = thresholds(case);
        let data = input.data().to_vec();
        let got = match cn {
            1 => canny_gray(&GrayImage::from_raw(w, h, data).expect("gray"), t),
            3 => canny_rgb(&RgbImage::from_raw(w, h, data).expect("rgb"), t),
            c => panic!("case {i}: {c} channels"),
        };
        let want = GrayImage::from_raw(w, h, want.data().to_vec()).expect("edges");
        let diff = differences(&got, &want);
        assert!(
            diff.is_empty(),
            "fuzz case {case}: {} pixels differ, first {:?}",
            diff.len(),
            &diff[..diff.len().min(8)]
        );
    }
}
