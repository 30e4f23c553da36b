//! The transformer's blocks on candle tensor ops (any device, any dtype).
//!
//! Math follows diffusers `models/transformers/transformer_flux.py` (`FluxTransformerBlock`,
//! `FluxSingleTransformerBlock`, `FluxAttnProcessor`) and `models/normalization.py`
//! (`AdaLayerNormZero`, `AdaLayerNormZeroSingle`, `AdaLayerNormContinuous`), with BFL's fused
//! projections (`modules/layers.py` `DoubleStreamBlock`, `SingleStreamBlock`).

use candle_core::{DType, Device, Tensor, D};

use super::linear::{FluxLinear, LinearWeight};
use super::load::TensorSource;
use super::rope::Rope;
use crate::error::Result;

/// LayerNorm / RMSNorm epsilon of every norm in the model.
pub const EPS: f32 = 1e-6;

/// The two QK-RMSNorm scales of one attention.
#[derive(Debug, Clone)]
pub(crate) struct QkNorm {
    pub query: Tensor,
    pub key: Tensor,
}

impl QkNorm {
    pub fn load(
        src: &dyn TensorSource,
        prefix: &str,
        d: usize,
        dt: DType,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Self {
            query: src.get(&format!("{prefix}.query_norm.scale"), &[d], dt, dev)?,
            key: src.get(&format!("{prefix}.key_norm.scale"), &[d], dt, dev)?,
        })
    }
}

/// Loads `{name}.weight` `(out, in)` and `{name}.bias` `(out,)`.
pub(crate) fn load_linear(
    src: &dyn TensorSource,
    name: &str,
    out: usize,
    inp: usize,
    dt: DType,
    dev: &Device,
) -> Result<FluxLinear> {
    let weight_name = format!("{name}.weight");
    let b = src.get(&format!("{name}.bias"), &[out], dt, dev)?;
    let w = match src.get_fp8(&weight_name, &[out, inp], dev)? {
        Some(w8) => LinearWeight::Fp8(w8),
        None => LinearWeight::Dense(src.get(&weight_name, &[out, inp], dt, dev)?),
    };
    FluxLinear::with_weight(w, Some(b), dt)
}

/// One double-stream block (BFL `DoubleStreamBlock`, diffusers `FluxTransformerBlock`).
#[derive(Debug, Clone)]
pub(crate) struct DoubleBlock {
    pub img_mod: FluxLinear,
    pub img_qkv: FluxLinear,
    pub img_norm: QkNorm,
    pub img_proj: FluxLinear,
    pub img_mlp0: FluxLinear,
    pub img_mlp2: FluxLinear,
    pub txt_mod: FluxLinear,
    pub txt_qkv: FluxLinear,
    pub txt_norm: QkNorm,
    pub txt_proj: FluxLinear,
    pub txt_mlp0: FluxLinear,
    pub txt_mlp2: FluxLinear,
}

/// One single-stream block (BFL `SingleStreamBlock`, diffusers `FluxSingleTransformerBlock`).
#[derive(Debug, Clone)]
pub(crate) struct SingleBlock {
    pub linear1: FluxLinear,
    pub linear2: FluxLinear,
    pub modulation: FluxLinear,
    pub norm: QkNorm,
}

/// Geometry shared by the blocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub mlp: usize,
}

impl DoubleBlock {
    pub fn load(
        src: &dyn TensorSource,
        i: usize,
        d: Dims,
        dt: DType,
        dev: &Device,
    ) -> Result<Self> {
        let (h, m) = (d.hidden, d.mlp);
        let p = format!("double_blocks.{i}");
        let l = |n: &str, out, inp| load_linear(src, &format!("{p}.{n}"), out, inp, dt, dev);
        Ok(Self {
            img_mod: l("img_mod.lin", 6 * h, h)?,
            img_qkv: l("img_attn.qkv", 3 * h, h)?,
            img_norm: QkNorm::load(src, &format!("{p}.img_attn.norm"), d.head_dim, dt, dev)?,
            img_proj: l("img_attn.proj", h, h)?,
            img_mlp0: l("img_mlp.0", m, h)?,
            img_mlp2: l("img_mlp.2", h, m)?,
            txt_mod: l("txt_mod.lin", 6 * h, h)?,
            txt_qkv: l("txt_attn.qkv", 3 * h, h)?,
            txt_norm: QkNorm::load(src, &format!("{p}.txt_attn.norm"), d.head_dim, dt, dev)?,
            txt_proj: l("txt_attn.proj", h, h)?,
            txt_mlp0: l("txt_mlp.0", m, h)?,
            txt_mlp2: l("txt_mlp.2", h, m)?,
        })
    }

    /// `(img, txt)` → `(img, txt)`; `vec_silu` is `silu(temb)` `(B, hidden)`.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec_silu: &Tensor,
        rope: &Rope,
        d: Dims,
    ) -> Result<(Tensor, Tensor)> {
        let im = chunks(&self.img_mod.forward(vec_silu)?, 6)?;
        let tm = chunks(&self.txt_mod.forward(vec_silu)?, 6)?;
        let (iq, ik, iv) = qkv(
            &self.img_qkv,
            &self.img_norm,
            &modulate(img, &im[0], &im[1])?,
            d,
        )?;
        let (tq, tk, tv) = qkv(
            &self.txt_qkv,
            &self.txt_norm,
            &modulate(txt, &tm[0], &tm[1])?,
            d,
        )?;
        // Joint attention over (txt; img), txt first (diffusers `FluxAttnProcessor`).
        let q = rope.apply(&Tensor::cat(&[tq, iq], 2)?)?;
        let k = rope.apply(&Tensor::cat(&[tk, ik], 2)?)?;
        let v = Tensor::cat(&[tv, iv], 2)?;
        let attn = attention(&q, &k, &v)?;
        let l = txt.dim(1)?;
        let txt_attn = attn.narrow(1, 0, l)?;
        let img_attn = attn.narrow(1, l, attn.dim(1)? - l)?;

        let img = (img + self.img_proj.forward(&img_attn)?.broadcast_mul(&im[2])?)?;
        let ff = mlp(
            &self.img_mlp0,
            &self.img_mlp2,
            &modulate(&img, &im[3], &im[4])?,
        )?;
        let img = (img + ff.broadcast_mul(&im[5])?)?;

        let txt = (txt + self.txt_proj.forward(&txt_attn)?.broadcast_mul(&tm[2])?)?;
        let ff = mlp(
            &self.txt_mlp0,
            &self.txt_mlp2,
            &modulate(&txt, &tm[3], &tm[4])?,
        )?;
        let txt = (txt + ff.broadcast_mul(&tm[5])?)?;
        Ok((img, txt))
    }
}

impl SingleBlock {
    pub fn load(
        src: &dyn TensorSource,
        i: usize,
        d: Dims,
        dt: DType,
        dev: &Device,
    ) -> Result<Self> {
        let (h, m) = (d.hidden, d.mlp);
        let p = format!("single_blocks.{i}");
        let l = |n: &str, out, inp| load_linear(src, &format!("{p}.{n}"), out, inp, dt, dev);
        Ok(Self {
            linear1: l("linear1", 3 * h + m, h)?,
            linear2: l("linear2", h, h + m)?,
            modulation: l("modulation.lin", 3 * h, h)?,
            norm: QkNorm::load(src, &format!("{p}.norm"), d.head_dim, dt, dev)?,
        })
    }

    /// `x` = (txt; img) `(B, S, hidden)` → same shape.
    pub fn forward(&self, x: &Tensor, vec_silu: &Tensor, rope: &Rope, d: Dims) -> Result<Tensor> {
        let m = chunks(&self.modulation.forward(vec_silu)?, 3)?;
        let x_mod = modulate(x, &m[0], &m[1])?;
        let lin1 = self.linear1.forward(&x_mod)?;
        let qkv_part = lin1.narrow(D::Minus1, 0, 3 * d.hidden)?;
        let mlp_part = lin1.narrow(D::Minus1, 3 * d.hidden, d.mlp)?;
        let (q, k, v) = split_heads(&qkv_part, &self.norm, d)?;
        let attn = attention(&rope.apply(&q)?, &rope.apply(&k)?, &v)?;
        let cat = Tensor::cat(&[attn, mlp_part.gelu()?], D::Minus1)?;
        let out = self.linear2.forward(&cat)?;
        Ok((x + out.broadcast_mul(&m[2])?)?)
    }
}

/// `linear(silu(vec))` split in `n` chunks, each `(B, 1, hidden)` to broadcast over tokens.
pub(crate) fn chunks(modv: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let per = modv.dim(D::Minus1)? / n;
    (0..n)
        .map(|i| Ok(modv.narrow(D::Minus1, i * per, per)?.unsqueeze(1)?))
        .collect()
}

/// `LN(x)·(1 + scale) + shift` (LayerNorm without affine, eps 1e-6).
pub(crate) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let centered = xf.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered
        .broadcast_div(&(var + f64::from(EPS))?.sqrt()?)?
        .to_dtype(dtype)?;
    Ok(normed
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)?)
}

/// Projects to q, k, v `(B, H, S, D)` with QK-RMSNorm applied.
fn qkv(lin: &FluxLinear, norm: &QkNorm, x: &Tensor, d: Dims) -> Result<(Tensor, Tensor, Tensor)> {
    split_heads(&lin.forward(x)?, norm, d)
}

fn split_heads(qkv: &Tensor, norm: &QkNorm, d: Dims) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, s, _) = qkv.dims3()?;
    let qkv = qkv
        .reshape((b, s, 3, d.heads, d.head_dim))?
        .permute((2, 0, 3, 1, 4))?;
    let q = candle_nn::ops::rms_norm(&qkv.get(0)?.contiguous()?, &norm.query, EPS)?;
    let k = candle_nn::ops::rms_norm(&qkv.get(1)?.contiguous()?, &norm.key, EPS)?;
    let v = qkv.get(2)?.contiguous()?;
    Ok((q, k, v))
}

/// Scaled dot-product attention `(B, H, S, D)` → `(B, S, H·D)`; scores and softmax in f32
/// (as torch SDPA keeps them), a block of queries at a time ([`crate::attention`]).
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let scale = 1.0 / (d as f64).sqrt();
    let out = crate::attention::sdpa(q, k, v, Some(scale), crate::attention::SCORE_BUDGET)?;
    Ok(out.transpose(1, 2)?.reshape((b, s, h * d))?)
}

/// GELU(tanh) MLP (`FeedForward(activation_fn="gelu-approximate")`).
fn mlp(l0: &FluxLinear, l2: &FluxLinear, x: &Tensor) -> Result<Tensor> {
    l2.forward(&l0.forward(x)?.gelu()?)
}
