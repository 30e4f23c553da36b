//! `fluxd control …`: the control maps the FLUX.1 Canny and Depth models are conditioned on,
//! written as images so a user can see them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use fluxd_engine::control::depth::{bfl_depth_map, DepthEstimator, DepthLevels};
use fluxd_engine::control::{bfl_canny, canny_rgb, CannyThresholds};
use image::{DynamicImage, GrayImage, RgbImage};

use crate::device::parse_device;

#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Canny edges exactly as `cv2.Canny(image, low, high)` (OpenCV's defaults), on the RGB image.
    Canny(CannyArgs),
    /// A depth map from Depth Anything (transformers layout), as BFL's depth encoder makes it.
    Depth(DepthArgs),
}

#[derive(Debug, clap::Args)]
pub struct CannyArgs {
    /// Input image (PNG, JPEG or WebP; transparency is dropped, as Pillow's `convert("RGB")`).
    input: PathBuf,
    /// Output image: the edge map on 3 channels (format from the extension).
    output: PathBuf,
    /// Lower hysteresis threshold (the smaller of the two is the low one, as OpenCV swaps).
    #[arg(long, default_value_t = 50.0, allow_negative_numbers = true)]
    low: f64,
    /// Upper hysteresis threshold.
    #[arg(long, default_value_t = 200.0, allow_negative_numbers = true)]
    high: f64,
    /// Apply BFL's CannyImageEncoder level round trip first (levels 1..63 drop by one), giving
    /// exactly the map the reference feeds FLUX.1-Canny.
    #[arg(long)]
    bfl: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Levels {
    /// The predicted values as 0..255 levels (clamped): what BFL's encoder feeds the model.
    Reference,
    /// Stretched from the map's minimum to its maximum (the preprocessor in diffusers' docs).
    MinMax,
}

#[derive(Debug, clap::Args)]
pub struct DepthArgs {
    /// Input image (PNG, JPEG or WebP; transparency is dropped).
    input: PathBuf,
    /// Output image: the depth map at the input's size on 3 channels.
    output: PathBuf,
    /// Depth Anything folder in the transformers layout (e.g. depth-anything-large-hf).
    #[arg(long, env = "FLUXD_DEPTH_ESTIMATOR")]
    depth_estimator: PathBuf,
    /// How depth values become 8-bit levels.
    #[arg(long, value_enum, default_value_t = Levels::Reference)]
    levels: Levels,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(cmd: ControlCommand) -> Result<()> {
    match cmd {
        ControlCommand::Canny(a) => {
            let img = read_rgb(&a.input)?;
            let t = CannyThresholds::new(a.low, a.high)?;
            let edges = if a.bfl {
                bfl_canny(&img, t)
            } else {
                canny_rgb(&img, t)
            };
            write_gray(&edges, &a.output)
        }
        ControlCommand::Depth(a) => {
            let img = read_rgb(&a.input)?;
            let device = parse_device(&a.device)?;
            let est = DepthEstimator::load(&a.depth_estimator, &device).with_context(|| {
                format!(
                    "loading the depth estimator {}",
                    a.depth_estimator.display()
                )
            })?;
            let map = bfl_depth_map(&est, &img)?;
            let levels = match a.levels {
                Levels::Reference => DepthLevels::Reference,
                Levels::MinMax => DepthLevels::MinMax,
            };
            write_gray(&map.to_image(levels), &a.output)
        }
    }
}

fn read_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("reading {}", path.display()))?
        .decode()
        .with_context(|| format!("decoding {}", path.display()))?;
    if img.width() == 0 || img.height() == 0 {
        anyhow::bail!("{} has no pixels", path.display());
    }
    Ok(img.to_rgb8())
}

/// Writes a one-channel map as a 3-channel image (the control image's layout).
fn write_gray(map: &GrayImage, path: &Path) -> Result<()> {
    let rgb = DynamicImage::ImageLuma8(map.clone()).to_rgb8();
    rgb.save(path)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
