//! Depth Anything's DPT neck and head (transformers
//! `models/depth_anything/modeling_depth_anything.py`): the backbone's hidden states become
//! image-like maps at four scales (reassemble), are fused from the coarsest to the finest with
//! residual convolution units and 2× bilinear upsampling (fusion), and the head turns the finest
//! map into one depth value per input pixel.
//!
//! Tensor names (no prefix): `neck.reassemble_stage.layers.{i}.{projection, resize}`,
//! `neck.convs.{i}`, `neck.fusion_stage.layers.{i}.{projection, residual_layer1,
//! residual_layer2}.convolution{1,2}`, `head.conv{1,2,3}`.

use candle_core::{DType, Device, Tensor};

use super::config::{DepthAnythingConfig, DepthKind};
use crate::error::{EngineError, Result};
use crate::weights::WeightFiles;

/// A 2-D convolution with its stride and padding.
struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// `{name}.weight` (out, in, k, k) and, if `bias`, `{name}.bias`.
    #[allow(clippy::too_many_arguments)]
    fn load(
        w: &WeightFiles,
        name: &str,
        (out, inp, k): (usize, usize, usize),
        stride: usize,
        padding: usize,
        bias: bool,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: w.get_shaped(&format!("{name}.weight"), (out, inp, k, k), DType::F32, dev)?,
            bias: bias
                .then(|| w.get_shaped(&format!("{name}.bias"), out, DType::F32, dev))
                .transpose()?,
            stride,
            padding,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        add_bias(y, self.bias.as_ref())
    }
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
        None => y,
    })
}

/// How a reassemble level changes the patch grid's resolution.
enum Resize {
    /// `ConvTranspose2d(kernel = stride = factor)`.
    Up {
        weight: Tensor,
        bias: Tensor,
        factor: usize,
    },
    /// `Identity`.
    Keep,
    /// `Conv2d(3, stride = 1/factor, padding 1)`.
    Down(Conv),
}

struct Reassemble {
    projection: Conv,
    resize: Resize,
}

/// `PreActResidualLayer`: x + conv(relu(conv(relu(x)))).
struct ResidualUnit {
    conv1: Conv,
    conv2: Conv,
}

impl ResidualUnit {
    fn load(w: &WeightFiles, name: &str, c: usize, dev: &Device) -> Result<Self> {
        let conv = |i| {
            Conv::load(
                w,
                &format!("{name}.convolution{i}"),
                (c, c, 3),
                1,
                1,
                true,
                dev,
            )
        };
        Ok(Self {
            conv1: conv(1)?,
            conv2: conv(2)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&x.relu()?)?;
        let h = self.conv2.forward(&h.relu()?)?;
        Ok((h + x)?)
    }
}

struct Fusion {
    projection: Conv,
    residual1: ResidualUnit,
    residual2: ResidualUnit,
}

/// The neck and head of a Depth Anything model.
pub(crate) struct DptHead {
    reassemble: Vec<Reassemble>,
    convs: Vec<Conv>,
    fusion: Vec<Fusion>,
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    head_in_index: usize,
    patch_size: usize,
    kind: DepthKind,
    max_depth: f64,
}

impl DptHead {
    /// Loads `neck.*` and `head.*`, checking every shape against `cfg`.
    pub fn load(cfg: &DepthAnythingConfig, w: &WeightFiles, dev: &Device) -> Result<Self> {
        let (rh, f) = (cfg.reassemble_hidden_size, cfg.fusion_hidden_size);
        let mut reassemble = Vec::new();
        for (i, c, factor) in cfg.levels() {
            let n = format!("neck.reassemble_stage.layers.{i}");
            let projection =
                Conv::load(w, &format!("{n}.projection"), (c, rh, 1), 1, 0, true, dev)?;
            let resize = if factor > 1.0 {
                let k = factor as usize;
                // ConvTranspose2d weights are (in, out, k, k).
                Resize::Up {
                    weight: w.get_shaped(
                        &format!("{n}.resize.weight"),
                        (c, c, k, k),
                        DType::F32,
                        dev,
                    )?,
                    bias: w.get_shaped(&format!("{n}.resize.bias"), c, DType::F32, dev)?,
                    factor: k,
                }
            } else if factor == 1.0 {
                Resize::Keep
            } else {
                let stride = (1.0 / factor).round() as usize;
                Resize::Down(Conv::load(
                    w,
                    &format!("{n}.resize"),
                    (c, c, 3),
                    stride,
                    1,
                    true,
                    dev,
                )?)
            };
            reassemble.push(Reassemble { projection, resize });
        }
        let convs = cfg
            .neck_hidden_sizes
            .iter()
            .enumerate()
            .map(|(i, &c)| Conv::load(w, &format!("neck.convs.{i}"), (f, c, 3), 1, 1, false, dev))
            .collect::<Result<Vec<_>>>()?;
        let fusion = (0..cfg.neck_hidden_sizes.len())
            .map(|i| {
                let n = format!("neck.fusion_stage.layers.{i}");
                Ok(Fusion {
                    projection: Conv::load(
                        w,
                        &format!("{n}.projection"),
                        (f, f, 1),
                        1,
                        0,
                        true,
                        dev,
                    )?,
                    residual1: ResidualUnit::load(w, &format!("{n}.residual_layer1"), f, dev)?,
                    residual2: ResidualUnit::load(w, &format!("{n}.residual_layer2"), f, dev)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let levels = cfg.neck_hidden_sizes.len() as i64;
        let head_in_index = cfg.head_in_index.rem_euclid(levels) as usize;
        Ok(Self {
            reassemble,
            convs,
            fusion,
            conv1: Conv::load(w, "head.conv1", (f / 2, f, 3), 1, 1, true, dev)?,
            conv2: Conv::load(
                w,
                "head.conv2",
                (cfg.head_hidden_size, f / 2, 3),
                1,
                1,
                true,
                dev,
            )?,
            conv3: Conv::load(
                w,
                "head.conv3",
                (1, cfg.head_hidden_size, 1),
                1,
                0,
                true,
                dev,
            )?,
            head_in_index,
            patch_size: cfg.patch_size,
            kind: cfg.kind,
            max_depth: cfg.max_depth,
        })
    }

    /// The reassembled, channel-matched maps (`neck.convs` applied), finest first, from the
    /// backbone's states (B, 1 + gh·gw, hidden).
    pub fn reassemble(&self, states: &[Tensor], grid: (usize, usize)) -> Result<Vec<Tensor>> {
        if states.len() != self.reassemble.len() {
            return Err(EngineError::InvalidInput(format!(
                "{} backbone states for {} neck levels",
                states.len(),
                self.reassemble.len()
            )));
        }
        let (gh, gw) = grid;
        states
            .iter()
            .zip(&self.reassemble)
            .zip(&self.convs)
            .map(|((s, r), conv)| {
                let (b, _, c) = s.dims3()?;
                // Drop [CLS], tokens back to (B, C, gh, gw).
                let x = s
                    .narrow(1, 1, gh * gw)?
                    .reshape((b, gh, gw, c))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?;
                let x = r.projection.forward(&x)?;
                let x = match &r.resize {
                    Resize::Up {
                        weight,
                        bias,
                        factor,
                    } => add_bias(x.conv_transpose2d(weight, 0, 0, *factor, 1)?, Some(bias))?,
                    Resize::Keep => x,
                    Resize::Down(conv) => conv.forward(&x)?,
                };
                conv.forward(&x)
            })
            .collect()
    }

    /// The fusion stage on the reassembled maps (finest first): fused maps, coarsest first.
    pub fn fuse(&self, maps: &[Tensor]) -> Result<Vec<Tensor>> {
        let rev: Vec<&Tensor> = maps.iter().rev().collect();
        let mut fused: Vec<Tensor> = Vec::with_capacity(rev.len());
        for (i, (map, layer)) in rev.iter().zip(&self.fusion).enumerate() {
            // Each level upsamples to the next (finer) map's size; the last one by 2.
            let size = match rev.get(i + 1) {
                Some(next) => {
                    let (_, _, h, w) = next.dims4()?;
                    (h, w)
                }
                None => {
                    let (_, _, h, w) = map.dims4()?;
                    (2 * h, 2 * w)
                }
            };
            let x = match fused.last() {
                None => (*map).clone(),
                Some(prev) => {
                    if prev.dims() != map.dims() {
                        return Err(EngineError::InvalidInput(format!(
                            "fusion maps {:?} and {:?} differ",
                            prev.dims(),
                            map.dims()
                        )));
                    }
                    (prev + layer.residual1.forward(map)?)?
                }
            };
            let x = layer.residual2.forward(&x)?;
            let x = x.upsample_bilinear2d(size.0, size.1, true)?;
            fused.push(layer.projection.forward(&x)?);
        }
        Ok(fused)
    }

    /// The head on the fused maps: predicted depth (B, gh·patch, gw·patch).
    pub fn head(&self, fused: &[Tensor], grid: (usize, usize)) -> Result<Tensor> {
        let x = self.conv1.forward(&fused[self.head_in_index])?;
        let x = x.upsample_bilinear2d(grid.0 * self.patch_size, grid.1 * self.patch_size, true)?;
        let x = self.conv2.forward(&x)?.relu()?;
        let x = self.conv3.forward(&x)?;
        let x = match self.kind {
            DepthKind::Relative => x.relu()?,
            DepthKind::Metric => candle_nn::ops::sigmoid(&x)?,
        };
        Ok((x * self.max_depth)?.squeeze(1)?)
    }
}
