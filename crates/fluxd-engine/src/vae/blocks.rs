//! The building blocks of the VAE decoder, following diffusers
//! (`models/resnet.py ResnetBlock2D`, `models/attention_processor.py Attention` with
//! `AttnProcessor2_0`, `models/upsampling.py Upsample2D`); BFL's `modules/autoencoder.py` computes
//! the same functions under other names.

use candle_core::{DType, Tensor, D};

use super::names::Source;
use crate::error::Result;

/// Epsilon of every GroupNorm in the decoder (diffusers `resnet_eps=1e-6`, BFL `eps=1e-6`).
const NORM_EPS: f64 = 1e-6;

/// A 2-D convolution with bias, stride 1, "same" padding (kernel 1 or 3 in this model).
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    /// (out, in·k·k): the kernel as the matrix of an im2col product.
    weight_mat: Tensor,
    bias: Tensor,
    k: usize,
}

/// Elements of one unfolded (im2col) strip: 64 MiB in f32, so a 1024² decode (128 channels,
/// 1152 rows per pixel) unfolds a few dozen image rows at a time instead of 4.8 GB at once.
pub(crate) const IM2COL_STRIP_ELEMS: usize = 1 << 24;

/// Elements of one unfolded strip for candle's `conv2d` (the GPU path): 256 MiB in bf16, few
/// enough strips (a dozen at 1440²) that launching them costs nothing next to the convolutions.
pub(crate) const DEVICE_STRIP_ELEMS: usize = 1 << 27;

impl Conv {
    pub(crate) fn load(src: &Source, name: &str, out: usize, inp: usize, k: usize) -> Result<Self> {
        let weight = src.get(&format!("{name}.weight"), &[out, inp, k, k])?;
        Ok(Self {
            weight_mat: weight.reshape((out, inp * k * k))?,
            bias: src
                .get(&format!("{name}.bias"), &[out])?
                .reshape((out, 1))?,
            k,
        })
    }

    /// Convolves (B, C, H, W).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_up(x, 1)
    }

    /// Convolves the nearest-neighbour ×`up` upsampling of `x` (diffusers `Upsample2D`:
    /// `F.interpolate(scale_factor=2.0, mode="nearest")` then the conv).
    ///
    /// On the CPU in f32 a k×k convolution runs as one matrix product of the kernel with the
    /// unfolded (im2col) input, a strip of rows at a time to bound memory, and the unfolding
    /// reads the padding and the upsampling straight from the source image, so neither the
    /// padded nor the 4× upsampled tensor is built. On this project's 2-core CPU candle 0.11's
    /// `conv2d` reached 21 GFLOP/s on a 128-channel 256² conv where a GEMM of the same size
    /// reaches ~150; a FLUX-size 256² decode went from 21.8 s to 6.5 s. On other devices (and on
    /// the CPU with the fused kernels off, [`crate::set_fused_cpu_kernels`]) candle's own
    /// `conv2d` runs, in the model's dtype.
    pub(crate) fn forward_up(&self, x: &Tensor, up: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (ho, wo) = (h * up, w * up);
        let out = self.weight_mat.dim(0)?;
        let fused = crate::cpu_kernels::fused_on(x.device());
        if fused && x.dtype() != DType::F32 {
            // candle's CPU matmul has no bf16 kernel in conv2d: run the f32 path.
            let f32_conv = Self {
                weight_mat: self.weight_mat.to_dtype(DType::F32)?,
                bias: self.bias.to_dtype(DType::F32)?,
                k: self.k,
            };
            let y = f32_conv.forward_up(&x.to_dtype(DType::F32)?, up)?;
            return Ok(y.to_dtype(x.dtype())?);
        }
        if !fused {
            return self.forward_candle(x, up, DEVICE_STRIP_ELEMS);
        }
        let x = x.contiguous()?;
        let mut images = Vec::with_capacity(b);
        for i in 0..b {
            let img = x.get(i)?;
            let y = if self.k == 1 && up == 1 {
                self.weight_mat.matmul(&img.reshape((c, h * w))?)?
            } else {
                let kk = self.k * self.k;
                let rows = (IM2COL_STRIP_ELEMS / (c * kk * wo).max(1)).clamp(1, ho);
                let mut strips = Vec::with_capacity(ho.div_ceil(rows));
                let mut r0 = 0;
                while r0 < ho {
                    let n = rows.min(ho - r0);
                    let cols = unfold_cpu(&img, self.k, up, r0, n)?;
                    strips.push(self.weight_mat.matmul(&cols)?);
                    r0 += n;
                }
                if strips.len() == 1 {
                    strips.remove(0)
                } else {
                    Tensor::cat(&strips, 1)?
                }
            };
            images.push(y.broadcast_add(&self.bias)?.reshape((1, out, ho, wo))?);
        }
        Ok(if images.len() == 1 {
            images.remove(0)
        } else {
            Tensor::cat(&images, 0)?
        })
    }

    /// candle's own `conv2d` (every device but the fused CPU path) on strips of output rows
    /// whose unfolded input holds at most `strip_elems` values.
    fn forward_candle(&self, x: &Tensor, up: usize, strip_elems: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (ho, wo) = (h * up, w * up);
        let out = self.weight_mat.dim(0)?;
        // candle's `conv2d` unfolds its whole input (im2col: C·k·k values per output pixel,
        // 9.6 GB for a 1440² decode's 256-channel level in bf16), so it runs on strips of
        // output rows, each with the k/2 rows around it; the upsampling is done per strip.
        // candle's CPU conv2d has no bf16/f16 kernel. A GPU multiplies the 16-bit values with
        // f32 accumulation and rounds the result once; so does this (the 16-bit values are exact
        // in f32), with the kernel widened once for all strips.
        let widen = x.device().is_cpu() && x.dtype() != DType::F32;
        let kernel = self.weight_mat.reshape((out, c, self.k, self.k))?;
        let kernel = if widen {
            kernel.to_dtype(DType::F32)?
        } else {
            kernel
        };
        let pad = self.k / 2;
        let kk = self.k * self.k;
        let rows = (strip_elems / (b * c * kk * wo).max(1)).clamp(1, ho);
        let mut strips = Vec::with_capacity(ho.div_ceil(rows));
        let mut r0 = 0;
        while r0 < ho {
            let n = rows.min(ho - r0);
            // Rows lo..hi of the upsampled input feed output rows r0..r0+n; zero padding
            // stands in for the rows beyond the image, as it does for the whole image.
            let (lo, hi) = (r0.saturating_sub(pad), (r0 + n + pad).min(ho));
            let (src_lo, src_hi) = (lo / up, hi.div_ceil(up));
            let src = x.narrow(2, src_lo, src_hi - src_lo)?;
            let seg = if up > 1 {
                src.upsample_nearest2d((src_hi - src_lo) * up, wo)?.narrow(
                    2,
                    lo - src_lo * up,
                    hi - lo,
                )?
            } else {
                src
            };
            let y = if widen {
                seg.to_dtype(DType::F32)?
                    .conv2d(&kernel, pad, 1, 1, 1)?
                    .to_dtype(seg.dtype())?
            } else {
                seg.conv2d(&kernel, pad, 1, 1, 1)?
            };
            strips.push(y.narrow(2, r0 - lo, n)?);
            r0 += n;
        }
        let y = if strips.len() == 1 {
            strips.remove(0)
        } else {
            Tensor::cat(&strips, 2)?
        };
        Ok(y.broadcast_add(&self.bias.reshape((1, out, 1, 1))?)?)
    }
}

/// im2col on the CPU of output rows `r0..r0+n` of a k×k "same" convolution applied to the
/// ×`up` nearest upsampling of a contiguous f32 (C, H, W) image: a (C·k·k, n·W·up) matrix whose
/// row `(ci·k + dy)·k + dx` holds channel `ci` shifted by (dy − k/2, dx − k/2), zero outside.
fn unfold_cpu(img: &Tensor, k: usize, up: usize, r0: usize, n: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    let (c, h, w) = img.dims3()?;
    let (ho, wo) = (h * up, w * up);
    let pad = (k / 2) as isize;
    let (storage, layout) = img.storage_and_layout();
    let data = match &*storage {
        candle_core::Storage::Cpu(cpu) => cpu.as_slice::<f32>()?,
        _ => return Err(candle_core::Error::Msg("unfold_cpu on a non-CPU tensor".into()).into()),
    };
    let start = layout.start_offset();
    let src = &data[start..start + c * h * w];
    let mut cols = vec![0f32; c * k * k * n * wo];
    cols.par_chunks_mut(k * k * n * wo)
        .enumerate()
        .for_each(|(ci, block)| {
            let plane = &src[ci * h * w..(ci + 1) * h * w];
            for (tap, dst) in block.chunks_mut(n * wo).enumerate() {
                let dy = (tap / k) as isize - pad;
                let dx = (tap % k) as isize - pad;
                for (r, row) in dst.chunks_mut(wo).enumerate() {
                    let y = (r0 + r) as isize + dy;
                    if y < 0 || y >= ho as isize {
                        continue; // stays zero: padding
                    }
                    let line = &plane[(y as usize / up) * w..(y as usize / up + 1) * w];
                    // Output columns whose source column x + dx lies inside the image.
                    let lo = (-dx).max(0) as usize;
                    let hi = (wo as isize - dx.max(0)) as usize;
                    if up == 1 {
                        let s0 = (lo as isize + dx) as usize;
                        row[lo..hi].copy_from_slice(&line[s0..s0 + (hi - lo)]);
                    } else {
                        for (x, o) in row[lo..hi].iter_mut().enumerate() {
                            *o = line[((x + lo) as isize + dx) as usize / up];
                        }
                    }
                }
            }
        });
    drop(storage);
    Ok(Tensor::from_vec(cols, (c * k * k, n * wo), img.device())?)
}

/// GroupNorm with affine parameters, statistics in f32, optionally followed by SiLU (every
/// decoder norm but the attention's is followed by one).
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

impl GroupNorm {
    pub(crate) fn load(src: &Source, name: &str, channels: usize, groups: usize) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(crate::error::EngineError::config(
                src.path(),
                format!("{channels} channels of `{name}` do not split into {groups} groups"),
            ));
        }
        Ok(Self {
            weight: src
                .get(&format!("{name}.weight"), &[channels])?
                .reshape((1, channels, 1, 1))?,
            bias: src
                .get(&format!("{name}.bias"), &[channels])?
                .reshape((1, channels, 1, 1))?,
            groups,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if crate::cpu_kernels::fused_on(x.device())
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
        {
            return self.forward_cpu_f32(x, silu);
        }
        let (b, c, h, w) = x.dims4()?;
        let dtype = x.dtype();
        let xg = x
            .to_dtype(DType::F32)?
            .reshape((b, self.groups, (c / self.groups) * h * w))?;
        let mean = xg.mean_keepdim(D::Minus1)?;
        let centered = xg.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?;
        let y = normed
            .reshape((b, c, h, w))?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?;
        Ok(if silu { y.silu()? } else { y })
    }

    /// The same on a CPU f32 tensor in two passes and one allocation (statistics per group in
    /// f64, then normalise, scale, shift and SiLU together), instead of seven tensor ops.
    fn forward_cpu_f32(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        use rayon::prelude::*;
        let (b, c, h, w) = x.dims4()?;
        let x = x.contiguous()?;
        let hw = h * w;
        let per_group = c / self.groups;
        let gamma: Vec<f32> = self.weight.flatten_all()?.to_vec1()?;
        let beta: Vec<f32> = self.bias.flatten_all()?.to_vec1()?;
        let (storage, layout) = x.storage_and_layout();
        let data = match &*storage {
            candle_core::Storage::Cpu(cpu) => cpu.as_slice::<f32>()?,
            _ => return Err(candle_core::Error::Msg("group norm: not a CPU tensor".into()).into()),
        };
        let start = layout.start_offset();
        let src = &data[start..start + b * c * hw];
        let mut out = vec![0f32; b * c * hw];
        let group_len = per_group * hw;
        out.par_chunks_mut(group_len)
            .zip(src.par_chunks(group_len))
            .enumerate()
            .for_each(|(g, (dst, xs))| {
                let n = xs.len() as f64;
                let mean = xs.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = xs
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                let inv = 1.0 / (var + NORM_EPS).sqrt();
                let ch0 = (g % self.groups) * per_group;
                for (j, (d, s)) in dst.chunks_mut(hw).zip(xs.chunks(hw)).enumerate() {
                    let a = (inv as f32) * gamma[ch0 + j];
                    let bb = beta[ch0 + j] - (mean * inv) as f32 * gamma[ch0 + j];
                    for (o, &v) in d.iter_mut().zip(s) {
                        let y = v * a + bb;
                        *o = if silu { y / (1.0 + (-y).exp()) } else { y };
                    }
                }
            });
        drop(storage);
        Ok(Tensor::from_vec(out, (b, c, h, w), x.device())?)
    }
}

/// `ResnetBlock2D` (BFL `ResnetBlock`): two norm-SiLU-conv stages and a 1×1 shortcut conv when
/// the channel count changes.
#[derive(Debug, Clone)]
pub(crate) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv,
    norm2: GroupNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl Resnet {
    pub(crate) fn load(
        src: &Source,
        name: &str,
        inp: usize,
        out: usize,
        groups: usize,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(src, &format!("{name}.norm1"), inp, groups)?,
            conv1: Conv::load(src, &format!("{name}.conv1"), out, inp, 3)?,
            norm2: GroupNorm::load(src, &format!("{name}.norm2"), out, groups)?,
            conv2: Conv::load(src, &format!("{name}.conv2"), out, out, 3)?,
            shortcut: if inp != out {
                Some(Conv::load(
                    src,
                    &format!("{name}.conv_shortcut"),
                    out,
                    inp,
                    1,
                )?)
            } else {
                None
            },
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h, true)?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        Ok((skip + h)?)
    }
}

/// Single-head self-attention over all pixels with a residual (diffusers `Attention` as the VAE
/// mid block builds it: heads = channels / attention_head_dim = 1, scale 1/sqrt(C)).
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    norm: GroupNorm,
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    out_t: Tensor,
    q_b: Tensor,
    k_b: Tensor,
    v_b: Tensor,
    out_b: Tensor,
}

/// Score elements computed at once per chunk of queries (128 MiB in f32): a 1024² image has
/// 16384 latent pixels, whose full score matrix would take 1 GiB.
pub(crate) const ATTN_CHUNK_ELEMS: usize = 1 << 25;

impl Attention {
    pub(crate) fn load(src: &Source, name: &str, c: usize, groups: usize) -> Result<Self> {
        let lin = |n: &str| -> Result<(Tensor, Tensor)> {
            let w = src.get_linear(&format!("{name}.{n}.weight"), c, c)?;
            let b = src.get(&format!("{name}.{n}.bias"), &[c])?;
            Ok((w.t()?.contiguous()?, b))
        };
        let (q_t, q_b) = lin("to_q")?;
        let (k_t, k_b) = lin("to_k")?;
        let (v_t, v_b) = lin("to_v")?;
        let (out_t, out_b) = lin("to_out.0")?;
        Ok(Self {
            norm: GroupNorm::load(src, &format!("{name}.group_norm"), c, groups)?,
            q_t,
            k_t,
            v_t,
            out_t,
            q_b,
            k_b,
            v_b,
            out_b,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_chunked(x, ATTN_CHUNK_ELEMS)
    }

    /// The attention, with at most `chunk_elems` score elements alive at a time.
    pub(crate) fn forward_chunked(&self, x: &Tensor, chunk_elems: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        // (B, C, H, W) -> (B·N, C): one matmul per projection.
        let t = self
            .norm
            .forward(x, false)?
            .reshape((b, c, n))?
            .transpose(1, 2)?;
        let t = t.contiguous()?.reshape((b * n, c))?;
        let proj = |wt: &Tensor, bias: &Tensor| -> Result<Tensor> {
            Ok(t.matmul(wt)?.broadcast_add(bias)?.reshape((b, n, c))?)
        };
        let scale = 1.0 / (c as f64).sqrt();
        let q = (proj(&self.q_t, &self.q_b)? * scale)?;
        let k = proj(&self.k_t, &self.k_b)?;
        let v = proj(&self.v_t, &self.v_b)?;
        let o = crate::attention::sdpa(&q, &k, &v, None, chunk_elems)?;
        let o = o
            .reshape((b * n, c))?
            .matmul(&self.out_t)?
            .broadcast_add(&self.out_b)?;
        let o = o
            .reshape((b, n, c))?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        Ok((o + x)?)
    }
}

/// `UNetMidBlock2D` (BFL `mid`): resnet, attention, resnet at the lowest resolution.
#[derive(Debug, Clone)]
pub(crate) struct MidBlock {
    res1: Resnet,
    attn: Option<Attention>,
    res2: Resnet,
}

impl MidBlock {
    pub(crate) fn load(
        src: &Source,
        name: &str,
        c: usize,
        groups: usize,
        attn: bool,
    ) -> Result<Self> {
        Ok(Self {
            res1: Resnet::load(src, &format!("{name}.resnets.0"), c, c, groups)?,
            attn: if attn {
                Some(Attention::load(
                    src,
                    &format!("{name}.attentions.0"),
                    c,
                    groups,
                )?)
            } else {
                None
            },
            res2: Resnet::load(src, &format!("{name}.resnets.1"), c, c, groups)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.res1.forward(x)?;
        if let Some(a) = &self.attn {
            x = a.forward(&x)?;
        }
        self.res2.forward(&x)
    }
}

/// `UpDecoderBlock2D` (BFL `up[i]`): resnets, then nearest ×2 upsampling and a 3×3 conv.
#[derive(Debug, Clone)]
pub(crate) struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<Conv>,
}

impl UpBlock {
    pub(crate) fn load(
        src: &Source,
        name: &str,
        inp: usize,
        out: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        for j in 0..layers {
            let cin = if j == 0 { inp } else { out };
            resnets.push(Resnet::load(
                src,
                &format!("{name}.resnets.{j}"),
                cin,
                out,
                groups,
            )?);
        }
        let upsample = if upsample {
            Some(Conv::load(
                src,
                &format!("{name}.upsamplers.0.conv"),
                out,
                out,
                3,
            )?)
        } else {
            None
        };
        Ok(Self { resnets, upsample })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x)?;
        }
        if let Some(conv) = &self.upsample {
            x = conv.forward_up(&x, 2)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::Conv;
    use crate::error::Result;

    /// candle's `conv2d` on strips of rows (each with the rows around it, the upsampling done
    /// per strip) gives the whole image's result. What the strips save is candle's im2col buffer,
    /// which its CUDA `conv2d` allocates for the whole input (`cuda_backend` `USE_IM2COL_CONV2D`)
    /// and its CPU `conv2d` never does, so it is not measurable here.
    #[test]
    fn strips_give_the_whole_images_convolution() -> Result<()> {
        let dev = Device::Cpu;
        let (out, c, h, w) = (8, 16, 40, 24);
        for k in [1, 3] {
            let conv = Conv {
                weight_mat: Tensor::randn(0f32, 0.1, (out, c * k * k), &dev)?,
                bias: Tensor::randn(0f32, 1.0, (out, 1), &dev)?,
                k,
            };
            let x = Tensor::randn(0f32, 1.0, (2, c, h, w), &dev)?;
            for up in [1, 2] {
                let whole = conv.forward_candle(&x, up, usize::MAX)?;
                assert_eq!(whole.dims(), [2, out, h * up, w * up]);
                // One row per strip, then 7 and 13 (strips that end mid-way and at an edge).
                for rows in [1, 7, 13] {
                    let strip = 2 * c * k * k * w * up * rows;
                    let strips = conv.forward_candle(&x, up, strip)?;
                    // Each output value is the same dot product both ways; only the matrix
                    // product's blocking may differ: f32 rounding at most.
                    let diff = (&strips - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    let scale = whole.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(
                        diff <= scale * 1e-6,
                        "k {k}, up {up}, {rows} rows: differ by {diff} (of {scale})"
                    );
                }
            }
        }
        Ok(())
    }
}
