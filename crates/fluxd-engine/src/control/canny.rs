//! Canny edge maps exactly as OpenCV's `cv2.Canny(img, low, high)` computes them with its
//! defaults (`apertureSize=3`, `L2gradient=False`): our own port of `modules/imgproc/src/canny.cpp`
//! (OpenCV 4.x/5.x `parallelCanny` + the global hysteresis pass), checked bit for bit against
//! `opencv-python-headless` in `tests/canny_reference.rs`.
//!
//! The steps, each as OpenCV does them:
//! 1. 3×3 Sobel derivatives `dx`, `dy` in 16-bit integers with `BORDER_REPLICATE` (the pixel
//!    outside the image is its edge pixel).
//! 2. L1 magnitude `|dx| + |dy|` per channel; for a colour image each pixel takes the channel
//!    with the largest magnitude (the first on ties) and that channel's `dx`, `dy`.
//! 3. Thresholds: swapped when `low > high`, then floored to integers; only magnitudes
//!    strictly above `low` are candidates, strictly above `high` are strong.
//! 4. Non-maximum suppression in integer arithmetic, the gradient direction sorted into
//!    horizontal / vertical / diagonal by `tan 22.5° ≈ 13573 / 2¹⁵` and `tan 67.5°`, with
//!    OpenCV's asymmetric comparisons (`>` against one neighbour, `>=` against the other,
//!    both `>` on diagonals); magnitudes outside the image count as 0.
//! 5. Hysteresis: every candidate 8-connected to a strong pixel becomes an edge (255); the
//!    one-pixel frame around the image never is.
//!
//! BFL's `CannyImageEncoder` (flux `modules/image_embedders.py`) and diffusers' documented
//! `controlnet_aux.CannyDetector` both run `cv2.Canny` on the 3-channel RGB image itself (no
//! grayscale conversion), so [`canny_rgb`] is the colour path; [`canny_gray`] the 1-channel one.

use image::{GrayImage, RgbImage};

use crate::error::{EngineError, Result};

/// `tan(22.5°)` in OpenCV's 15-bit fixed point: `round(0.41421356 · 2¹⁵)`.
const TG22: i32 = 13573;
/// The fixed-point shift that goes with [`TG22`].
const SHIFT: u32 = 15;

/// Hysteresis map values, as OpenCV names them.
const MAYBE: u8 = 0;
const NOT_EDGE: u8 = 1;
const EDGE: u8 = 2;

/// The two thresholds of `cv2.Canny`, validated: finite, in OpenCV's order after its swap,
/// floored to the integers the comparisons use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CannyThresholds {
    low: i32,
    high: i32,
}

impl CannyThresholds {
    /// `threshold1`, `threshold2` as given to `cv2.Canny`: either order (the smaller is the
    /// low one), fractions floored (`cvFloor`). Non-finite values are refused.
    pub fn new(threshold1: f64, threshold2: f64) -> Result<Self> {
        if !threshold1.is_finite() || !threshold2.is_finite() {
            return Err(EngineError::InvalidInput(format!(
                "Canny thresholds must be finite numbers, got {threshold1} and {threshold2}"
            )));
        }
        let (lo, hi) = if threshold1 > threshold2 {
            (threshold2, threshold1)
        } else {
            (threshold1, threshold2)
        };
        // `as` saturates: thresholds past i32 behave as OpenCV's saturating cvFloor.
        Ok(Self {
            low: lo.floor() as i32,
            high: hi.floor() as i32,
        })
    }

    /// The low threshold after swap and floor.
    pub fn low(&self) -> i32 {
        self.low
    }

    /// The high threshold after swap and floor.
    pub fn high(&self) -> i32 {
        self.high
    }
}

/// `cv2.Canny(img, t1, t2)` on a grayscale image.
pub fn canny_gray(img: &GrayImage, t: CannyThresholds) -> GrayImage {
    let (w, h) = img.dimensions();
    edges(img.as_raw(), w as usize, h as usize, 1, t)
}

/// `cv2.Canny(img, t1, t2)` on a 3-channel image (OpenCV's colour path: per pixel, the
/// channel with the strongest gradient). The channel order does not matter except on ties.
pub fn canny_rgb(img: &RgbImage, t: CannyThresholds) -> GrayImage {
    let (w, h) = img.dimensions();
    edges(img.as_raw(), w as usize, h as usize, 3, t)
}

/// The edge map of interleaved 8-bit `pixels` (`cn` channels, row-major), 0 or 255 per pixel.
fn edges(pixels: &[u8], w: usize, h: usize, cn: usize, t: CannyThresholds) -> GrayImage {
    let mut out = GrayImage::new(w as u32, h as u32);
    if w == 0 || h == 0 {
        return out;
    }
    let grad = Gradient::sobel(pixels, w, h, cn);
    let map = suppress_non_maxima(&grad, t);
    let map = hysteresis(map, w, h);
    // The map has a one-pixel frame; `EDGE` becomes 255, anything else 0.
    let mapstep = w + 2;
    for (y, row) in out.as_mut().chunks_exact_mut(w).enumerate() {
        let m = &map[(y + 1) * mapstep + 1..][..w];
        for (o, &v) in row.iter_mut().zip(m) {
            *o = if v == EDGE { 255 } else { 0 };
        }
    }
    out
}

/// Per-pixel derivatives and L1 magnitude, one channel chosen per pixel.
struct Gradient {
    w: usize,
    h: usize,
    dx: Vec<i16>,
    dy: Vec<i16>,
    mag: Vec<i32>,
}

impl Gradient {
    /// 3×3 Sobel (`[-1 0 1]` across, `[1 2 1]` along) with replicated borders, then the
    /// magnitude and the strongest channel.
    fn sobel(px: &[u8], w: usize, h: usize, cn: usize) -> Self {
        let at = |x: isize, y: isize, c: usize| -> i32 {
            // BORDER_REPLICATE: clamp the coordinate into the image.
            let x = x.clamp(0, w as isize - 1) as usize;
            let y = y.clamp(0, h as isize - 1) as usize;
            i32::from(px[(y * w + x) * cn + c])
        };
        let n = w * h;
        let (mut dx, mut dy, mut mag) = (vec![0i16; n], vec![0i16; n], vec![0i32; n]);
        for y in 0..h as isize {
            for x in 0..w as isize {
                let i = y as usize * w + x as usize;
                let mut best: Option<(i32, i32, i32)> = None;
                for c in 0..cn {
                    let p = |ox: isize, oy: isize| at(x + ox, y + oy, c);
                    let gx =
                        (p(1, -1) - p(-1, -1)) + 2 * (p(1, 0) - p(-1, 0)) + (p(1, 1) - p(-1, 1));
                    let gy =
                        (p(-1, 1) - p(-1, -1)) + 2 * (p(0, 1) - p(0, -1)) + (p(1, 1) - p(1, -1));
                    let m = gx.abs() + gy.abs();
                    // The first channel wins ties: OpenCV replaces only on a strictly larger one.
                    if best.is_none_or(|(bm, _, _)| m > bm) {
                        best = Some((m, gx, gy));
                    }
                }
                let (m, gx, gy) = best.unwrap_or((0, 0, 0));
                // |gx|, |gy| <= 4·255, so the 16-bit derivatives OpenCV stores are exact.
                (mag[i], dx[i], dy[i]) = (m, gx as i16, gy as i16);
            }
        }
        Self { w, h, dx, dy, mag }
    }

    /// The magnitude at (x, y), 0 outside the image.
    fn mag(&self, x: isize, y: isize) -> i32 {
        if x < 0 || y < 0 || x >= self.w as isize || y >= self.h as isize {
            0
        } else {
            self.mag[y as usize * self.w + x as usize]
        }
    }
}

/// Non-maximum suppression and the double threshold: a map with a one-pixel `NOT_EDGE` frame,
/// `EDGE` for strong local maxima, `MAYBE` for weak ones, `NOT_EDGE` elsewhere.
fn suppress_non_maxima(g: &Gradient, t: CannyThresholds) -> Vec<u8> {
    let (w, h) = (g.w, g.h);
    let mapstep = w + 2;
    let mut map = vec![NOT_EDGE; mapstep * (h + 2)];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let m = g.mag[i];
            if m <= t.low {
                continue;
            }
            let (xs, ys) = (i32::from(g.dx[i]), i32::from(g.dy[i]));
            let ax = xs.abs();
            let ay = ys.abs() << SHIFT;
            let tg22x = ax * TG22;
            let (xi, yi) = (x as isize, y as isize);
            let is_max = if ay < tg22x {
                // Mostly horizontal gradient: compare left (>) and right (>=).
                m > g.mag(xi - 1, yi) && m >= g.mag(xi + 1, yi)
            } else {
                let tg67x = tg22x + (ax << (SHIFT + 1));
                if ay > tg67x {
                    // Mostly vertical: above (>) and below (>=).
                    m > g.mag(xi, yi - 1) && m >= g.mag(xi, yi + 1)
                } else {
                    // Diagonal: the sign of dx·dy picks which one, both strict.
                    let s: isize = if (xs ^ ys) < 0 { -1 } else { 1 };
                    m > g.mag(xi - s, yi - 1) && m > g.mag(xi + s, yi + 1)
                }
            };
            if is_max {
                map[(y + 1) * mapstep + x + 1] = if m > t.high { EDGE } else { MAYBE };
            }
        }
    }
    map
}

/// Grows the strong pixels through 8-connected weak ones (OpenCV's stack-based tracking; the
/// result is the same closure whatever the order).
fn hysteresis(mut map: Vec<u8>, w: usize, h: usize) -> Vec<u8> {
    let mapstep = w + 2;
    let mut stack: Vec<usize> = (0..map.len()).filter(|&i| map[i] == EDGE).collect();
    let offsets = [
        -(mapstep as isize) - 1,
        -(mapstep as isize),
        -(mapstep as isize) + 1,
        -1,
        1,
        mapstep as isize - 1,
        mapstep as isize,
        mapstep as isize + 1,
    ];
    while let Some(i) = stack.pop() {
        for o in offsets {
            // The frame is never MAYBE, so a neighbour of an inner pixel is always in the map.
            let n = (i as isize + o) as usize;
            if map[n] == MAYBE {
                map[n] = EDGE;
                stack.push(n);
            }
        }
    }
    debug_assert_eq!(map.len(), mapstep * (h + 2));
    map
}

/// The 8-bit levels BFL's reference code hands to `cv2.Canny` and to the depth processor for
/// an input level `x`: `x / 127.5 − 1` in float32, then `((v + 1) · 127.5)` truncated to
/// `uint8` (flux `sampling.py` `prepare_control`, `modules/image_embedders.py`). The round
/// trip is not exact: levels 1..=63 come back one lower.
pub fn bfl_level_round_trip() -> [u8; 256] {
    let mut lut = [0u8; 256];
    for (x, out) in lut.iter_mut().enumerate() {
        let v = (x as f32 / 127.5 - 1.0).clamp(-1.0, 1.0);
        // Truncation toward zero, as numpy's `astype(uint8)` and torch's `.byte()` do.
        *out = ((v + 1.0) * 127.5) as u8;
    }
    lut
}

/// BFL's `CannyImageEncoder` on an RGB control image: the reference's level round trip
/// ([`bfl_level_round_trip`]), then `cv2.Canny` on the 3 channels. The FLUX.1-Canny pipeline
/// then uses the map on all 3 channels, scaled to [−1, 1] (`super::gray_control_tensor`).
pub fn bfl_canny(img: &RgbImage, t: CannyThresholds) -> GrayImage {
    let lut = bfl_level_round_trip();
    let mut levels = img.clone();
    for v in levels.iter_mut() {
        *v = lut[usize::from(*v)];
    }
    canny_rgb(&levels, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(img: &GrayImage) -> usize {
        img.iter().filter(|&&v| v == 255).count()
    }

    #[test]
    fn thresholds_swap_and_floor_as_opencv() -> Result<()> {
        let t = CannyThresholds::new(200.9, 50.2)?;
        assert_eq!((t.low(), t.high()), (50, 200));
        assert_eq!(CannyThresholds::new(-1.5, 3.0)?.low(), -2);
        assert!(CannyThresholds::new(f64::NAN, 1.0).is_err());
        assert!(CannyThresholds::new(1.0, f64::INFINITY).is_err());
        Ok(())
    }

    #[test]
    fn a_vertical_step_gives_one_thin_edge_column() -> Result<()> {
        // Left half 0, right half 200: |dx| = 800 on the two columns beside the step; the
        // horizontal rule keeps the left one (`>` left, `>=` right).
        let img = GrayImage::from_fn(10, 6, |x, _| image::Luma([if x < 5 { 0 } else { 200 }]));
        let e = canny_gray(&img, CannyThresholds::new(50.0, 100.0)?);
        for y in 0..6 {
            let row: Vec<u8> = (0..10).map(|x| e.get_pixel(x, y)[0]).collect();
            assert_eq!(row, [0, 0, 0, 0, 255, 0, 0, 0, 0, 0], "row {y}");
        }
        Ok(())
    }

    #[test]
    fn flat_and_empty_images_have_no_edges() -> Result<()> {
        let t = CannyThresholds::new(0.0, 0.0)?;
        assert_eq!(count(&canny_gray(&GrayImage::new(7, 5), t)), 0);
        assert_eq!(canny_gray(&GrayImage::new(0, 3), t).dimensions(), (0, 3));
        let rgb = RgbImage::from_pixel(4, 4, image::Rgb([9, 80, 200]));
        assert_eq!(count(&canny_rgb(&rgb, t)), 0);
        Ok(())
    }

    #[test]
    fn weak_edges_survive_only_when_connected_to_strong_ones() -> Result<()> {
        // A step whose height changes along the edge: top rows strong, bottom rows weak.
        let img = GrayImage::from_fn(8, 12, |x, y| {
            let hi = if y < 6 { 100 } else { 30 };
            image::Luma([if x < 4 { 0 } else { hi }])
        });
        // |dx| = 4·30 = 120 on weak rows, 400 on strong ones (at most 4·100 + 4·70 where
        // the two meet).
        let connected = canny_gray(&img, CannyThresholds::new(100.0, 300.0)?);
        assert!((8..12).all(|y| connected.get_pixel(3, y)[0] == 255));
        // With no strong pixel at all, nothing survives.
        let none = canny_gray(&img, CannyThresholds::new(100.0, 700.0)?);
        assert_eq!(count(&none), 0);
        Ok(())
    }

    #[test]
    fn colour_takes_the_strongest_channel_per_pixel() -> Result<()> {
        // The edge is only in blue: the colour path finds it, a gray image of red does not.
        let rgb = RgbImage::from_fn(8, 4, |x, _| {
            image::Rgb([10, 10, if x < 4 { 0 } else { 90 }])
        });
        let t = CannyThresholds::new(50.0, 150.0)?;
        assert_eq!(count(&canny_rgb(&rgb, t)), 4);
        let red = GrayImage::from_fn(8, 4, |x, y| image::Luma([rgb.get_pixel(x, y)[0]]));
        assert_eq!(count(&canny_gray(&red, t)), 0);
        Ok(())
    }

    #[test]
    fn bfl_round_trip_loses_one_level_below_64() {
        let lut = bfl_level_round_trip();
        assert_eq!(lut[0], 0);
        assert!((1..64).all(|x| lut[x] as usize == x - 1));
        assert!((64..256).all(|x| lut[x] as usize == x));
    }
}
