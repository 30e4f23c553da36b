//! The pre-LayerNorm vision transformer shared by the SigLIP tower of Redux
//! (transformers `models/siglip/modeling_siglip.py`, `SiglipVisionTransformer`) and the ViT
//! safety classifier (`models/vit/modeling_vit.py`, `ViTModel`): patch embedding, an optional
//! `[CLS]` token, learned positions, encoder layers (LayerNorm → multi-head attention → residual →
//! LayerNorm → MLP → residual) and a final LayerNorm.
//!
//! The two models differ only in what [`VitSpec`] and [`VitNames`] carry: tensor names, the MLP
//! activation (SigLIP `gelu_pytorch_tanh`, ViT the exact `gelu`), the `[CLS]` token (ViT only),
//! the LayerNorm epsilon and whether q/k/v have biases. [`processor`] holds what their image
//! processors share.

pub(crate) mod processor;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::text_encoders::encoder_layer::{EncoderLayer, LayerDims, Scale};
pub(crate) use crate::text_encoders::encoder_layer::{LayerNames, CLIP_LAYER_SUFFIXES};
use crate::text_encoders::{apply, layer_norm, Act};
use crate::weights::WeightFiles;

/// An int or an `[h, w]` pair, as vision configs write `image_size` and `patch_size`.
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub(crate) enum SizePair {
    /// One number for both sides.
    One(usize),
    /// `[height, width]`.
    Two([usize; 2]),
}

impl SizePair {
    /// (height, width).
    pub fn hw(self) -> (usize, usize) {
        match self {
            Self::One(n) => (n, n),
            Self::Two([h, w]) => (h, w),
        }
    }
}

/// The sizes and choices of one vision transformer, taken from its model config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VitSpec {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Width of each head (q/k/v project to `num_heads · head_dim`).
    pub head_dim: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Patch (height, width).
    pub patch_size: (usize, usize),
    /// Patches per column and row: the convolution is `padding="valid"`, so pixels past the
    /// last whole patch are dropped (SigLIP's 384 = 27·14 + 6).
    pub grid: (usize, usize),
    /// LayerNorm epsilon (SigLIP 1e-6, ViT 1e-12).
    pub layer_norm_eps: f64,
    /// MLP activation.
    pub act: Act,
    /// Whether q/k/v projections have biases (the output projection always has one).
    pub qkv_bias: bool,
}

/// Tensor names of a whole vision transformer, in its checkpoint's layout.
pub(crate) struct VitNames {
    /// The patch convolution (`.weight` (hidden, C, ph, pw), `.bias`).
    pub patch: String,
    /// The `[CLS]` token (1, 1, hidden), prepended to the patches (ViT); `None` for SigLIP.
    pub cls_token: Option<String>,
    /// The position table.
    pub positions: String,
    /// Whether the position table is stored as (1, tokens, hidden) (ViT's `nn.Parameter`) rather
    /// than (tokens, hidden) (SigLIP's `nn.Embedding` weight).
    pub positions_batched: bool,
    /// One entry per encoder layer.
    pub layers: Vec<LayerNames>,
    /// The LayerNorm after the last layer (`post_layernorm`, `vit.layernorm`).
    pub final_norm: String,
}

/// A loaded vision transformer: pixel values in, final-normed hidden states out.
pub(crate) struct VitEncoder {
    spec: VitSpec,
    patch: PatchEmbed,
    cls_token: Option<Tensor>,
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    final_norm: candle_nn::LayerNorm,
    dtype: DType,
    device: Device,
}

impl VitEncoder {
    /// Loads the weights `names` lists from `w`, checking every shape against `spec`.
    pub fn load(
        spec: VitSpec,
        names: &VitNames,
        w: &WeightFiles,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (h, c) = (spec.hidden_size, spec.num_channels);
        let (ph, pw) = spec.patch_size;
        let patch = PatchEmbed::load(w, &names.patch, h, c, (ph, pw), dtype, device)?;
        let cls_token = match &names.cls_token {
            Some(n) => Some(w.get_shaped(n, (1, 1, h), dtype, device)?),
            None => None,
        };
        let tokens = spec.grid.0 * spec.grid.1 + usize::from(cls_token.is_some());
        let positions = if names.positions_batched {
            w.get_shaped(&names.positions, (1, tokens, h), dtype, device)?
        } else {
            w.get_shaped(&names.positions, (tokens, h), dtype, device)?
        };
        let dims = LayerDims {
            hidden: h,
            heads: spec.num_heads,
            head_dim: spec.head_dim,
            intermediate: spec.intermediate_size,
            eps: spec.layer_norm_eps,
            qkv_bias: spec.qkv_bias,
        };
        let layers = names
            .layers
            .iter()
            .map(|n| EncoderLayer::load(w, n, &dims, dtype, device))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = layer_norm(w, &names.final_norm, h, spec.layer_norm_eps, dtype, device)?;
        Ok(Self {
            spec,
            patch,
            cls_token,
            positions,
            layers,
            final_norm,
            dtype,
            device: device.clone(),
        })
    }

    /// Hidden states after the final LayerNorm, (B, tokens, hidden) with the `[CLS]` state first
    /// when the model has one, for `pixel_values` (B, C, H, W). The caller checks the input
    /// shape (each model words its own error); pixels past the last whole patch are dropped.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let x = pixel_values.to_device(&self.device)?.to_dtype(self.dtype)?;
        let x = self.embed_patches(&x)?;
        let mut x = match &self.cls_token {
            Some(cls) => {
                let (b, _, h) = x.dims3()?;
                Tensor::cat(&[&cls.broadcast_as((b, 1, h))?, &x], 1)?
            }
            None => x,
        }
        .broadcast_add(&self.positions)?;
        for layer in &self.layers {
            // Bidirectional, no mask; scores scaled after `q·kᵀ` as both references do.
            x = layer.forward(&x, self.spec.act, Scale::Scores, None)?;
        }
        apply(&self.final_norm, &x)
    }

    /// The patch convolution: (B, C, H, W) → (B, patches, hidden).
    fn embed_patches(&self, x: &Tensor) -> Result<Tensor> {
        self.patch.forward(x, self.spec.grid)
    }
}

/// A ViT patch embedding: a convolution whose kernel and stride are the patch size, without
/// padding (`padding="valid"`), flattened to tokens.
pub(crate) struct PatchEmbed {
    /// Patch convolution as a matrix (C·ph·pw, hidden): a stride-`patch` convolution is one
    /// matmul over non-overlapping patches, rows in the kernel's (c, kh, kw) order.
    weight_t: Tensor,
    bias: Tensor,
    patch: (usize, usize),
    hidden: usize,
}

impl PatchEmbed {
    /// Loads `{prefix}.weight` (hidden, channels, ph, pw) and `{prefix}.bias`.
    pub fn load(
        w: &WeightFiles,
        prefix: &str,
        hidden: usize,
        channels: usize,
        patch: (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (ph, pw) = patch;
        let weight = w.get_shaped(
            &format!("{prefix}.weight"),
            (hidden, channels, ph, pw),
            dtype,
            device,
        )?;
        Ok(Self {
            weight_t: weight
                .reshape((hidden, channels * ph * pw))?
                .t()?
                .contiguous()?,
            bias: w.get_shaped(&format!("{prefix}.bias"), hidden, dtype, device)?,
            patch,
            hidden,
        })
    }

    /// (B, C, H, W) → (B, gh·gw, hidden) over the first `grid` = (gh, gw) whole patches
    /// (pixels past them are dropped), in the conv output's row-major
    /// (`flatten(2).transpose(1, 2)`) order.
    pub fn forward(&self, x: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        let (ph, pw) = self.patch;
        let (gh, gw) = grid;
        // (B, C, gh, ph, gw, pw) → (B, gh, gw, C, ph, pw): one row per patch in the kernel's
        // (c, kh, kw) order.
        let patches = x
            .narrow(2, 0, gh * ph)?
            .narrow(3, 0, gw * pw)?
            .reshape((b, c, gh, ph, gw, pw))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * ph * pw))?;
        Ok(patches
            .matmul(&self.weight_t)?
            .broadcast_add(&self.bias)?
            .reshape((b, gh * gw, self.hidden))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny_init::{write_safetensors, InitRng, TensorMap};

    fn spec(cls: bool) -> VitSpec {
        VitSpec {
            hidden_size: 8,
            num_heads: 2,
            head_dim: 4,
            intermediate_size: 12,
            num_channels: 3,
            patch_size: (3, 2),
            grid: (2, 3),
            layer_norm_eps: 1e-6,
            act: if cls { Act::GeluErf } else { Act::GeluTanh },
            qkv_bias: !cls,
        }
    }

    fn names(cls: bool, layers: usize) -> VitNames {
        VitNames {
            patch: "patch".into(),
            cls_token: cls.then(|| "cls".into()),
            positions: "pos".into(),
            positions_batched: cls,
            layers: (0..layers)
                .map(|i| {
                    LayerNames::under(
                        &format!("l.{i}"),
                        ["n1", "q", "k", "v", "o", "n2", "f1", "f2"],
                    )
                })
                .collect(),
            final_norm: "norm".into(),
        }
    }

    /// Random weights for `spec` under `names`.
    fn tensors(spec: &VitSpec, names: &VitNames, tag: &str) -> Result<TensorMap> {
        let mut rng = InitRng::new(7, tag);
        let mut t = TensorMap::new();
        let (h, f, c) = (spec.hidden_size, spec.intermediate_size, spec.num_channels);
        let (ph, pw) = spec.patch_size;
        let tokens = spec.grid.0 * spec.grid.1 + usize::from(names.cls_token.is_some());
        let mut lin = |t: &mut TensorMap, n: &str, o: usize, i: usize| -> Result<()> {
            t.insert(format!("{n}.weight"), rng.linear_weight(o, i)?);
            t.insert(format!("{n}.bias"), rng.normal_tensor(&[o], 0.0, 0.1)?);
            Ok(())
        };
        for n in &names.layers {
            for (name, o, i) in [
                (&n.q, h, h),
                (&n.k, h, h),
                (&n.v, h, h),
                (&n.out, h, h),
                (&n.fc1, f, h),
                (&n.fc2, h, f),
            ] {
                lin(&mut t, name, o, i)?;
            }
            for ln in [&n.ln1, &n.ln2] {
                lin(&mut t, ln, h, 1)?;
                let wt = t[&format!("{ln}.weight")].reshape(h)?;
                t.insert(format!("{ln}.weight"), (wt + 1.0)?);
            }
        }
        lin(&mut t, &names.final_norm, h, 1)?;
        let wt = t[&format!("{}.weight", names.final_norm)].reshape(h)?;
        t.insert(format!("{}.weight", names.final_norm), (wt + 1.0)?);
        let mut rng = InitRng::new(8, tag);
        t.insert(
            format!("{}.weight", names.patch),
            rng.normal_tensor(&[h, c, ph, pw], 0.0, 0.3)?,
        );
        t.insert(
            format!("{}.bias", names.patch),
            rng.normal_tensor(&[h], 0.0, 0.1)?,
        );
        if let Some(cls) = &names.cls_token {
            t.insert(cls.clone(), rng.normal_tensor(&[1, 1, h], 0.0, 0.5)?);
        }
        let pos_shape = if names.positions_batched {
            vec![1, tokens, h]
        } else {
            vec![tokens, h]
        };
        t.insert(
            names.positions.clone(),
            rng.normal_tensor(&pos_shape, 0.0, 0.5)?,
        );
        Ok(t)
    }

    /// `t` written to a temp file and opened.
    fn open(t: &TensorMap, tag: &str) -> Result<WeightFiles> {
        let dir = std::env::temp_dir().join(format!("fluxd-vit-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| crate::EngineError::io(&dir, e))?;
        let file = dir.join("model.safetensors");
        write_safetensors(&file, t)?;
        let w = WeightFiles::open(&[file]);
        // The mapping outlives the unlinked file.
        std::fs::remove_dir_all(&dir).ok();
        w
    }

    fn pixels(b: usize, h: usize, w: usize) -> Result<Tensor> {
        InitRng::new(3, "pixels").normal_tensor(&[b, 3, h, w], 0.0, 1.0)
    }

    #[test]
    fn patch_embedding_is_the_valid_strided_convolution() -> Result<()> {
        let (s, n) = (spec(false), names(false, 0));
        let w = open(&tensors(&s, &n, "conv")?, "conv")?;
        let enc = VitEncoder::load(s, &n, &w, DType::F32, &Device::Cpu)?;
        // 8×7 input, 3×2 patches: one row and one column are left over and dropped.
        let x = pixels(2, 8, 7)?;
        let got = enc.embed_patches(&x)?;
        let kernel = w.get("patch.weight", DType::F32, &Device::Cpu)?;
        let bias = w.get("patch.bias", DType::F32, &Device::Cpu)?;
        // conv2d takes one stride for both axes: run it per patch row on (3, 2) windows.
        let mut rows = Vec::new();
        for gy in 0..2 {
            let strip = x.narrow(2, gy * 3, 3)?.contiguous()?;
            let y = strip.conv2d(&kernel, 0, 2, 1, 1)?; // (B, hidden, 1, 3)
            rows.push(y.squeeze(2)?.transpose(1, 2)?);
        }
        let want = Tensor::cat(&rows, 1)?.broadcast_add(&bias)?;
        assert_eq!(got.dims(), &[2, 6, 8]);
        let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        Ok(())
    }

    #[test]
    fn attention_with_zero_queries_averages_the_values() -> Result<()> {
        let (s, n) = (spec(false), names(false, 1));
        let mut t = tensors(&s, &n, "attn")?;
        // Zero queries: every score is 0, so each token's output is out(mean over tokens of v).
        for name in ["l.0.q.weight", "l.0.q.bias"] {
            let zeros = t[name].zeros_like()?;
            t.insert(name.into(), zeros);
        }
        let enc = VitEncoder::load(s, &n, &open(&t, "attn")?, DType::F32, &Device::Cpu)?;
        let x = pixels(1, 5, 8)?.reshape((1, 15, 8))?;
        let got = enc.layers[0].attention(&x, Scale::Scores, None)?;
        let layer = &enc.layers[0];
        let mean_v = layer.v.forward(&x)?.mean_keepdim(1)?;
        let want = layer.out.forward(&mean_v)?.broadcast_as((1, 15, 8))?;
        let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        Ok(())
    }

    #[test]
    fn cls_token_adds_one_state_and_shapes_are_checked() -> Result<()> {
        let (s, n) = (spec(true), names(true, 2));
        let w = open(&tensors(&s, &n, "cls")?, "cls")?;
        let enc = VitEncoder::load(s.clone(), &n, &w, DType::F32, &Device::Cpu)?;
        let out = enc.forward(&pixels(2, 6, 6)?)?;
        assert_eq!(out.dims(), &[2, 7, 8]);
        // Finite, and the [CLS] state differs from the first patch's.
        let v: Vec<f32> = out.flatten_all()?.to_vec1()?;
        assert!(v.iter().all(|x| x.is_finite()));
        assert!(v[..8] != v[8..16]);
        // A file whose positions lack the [CLS] row is refused, naming the tensor.
        let bigger = VitSpec { grid: (3, 3), ..s };
        let msg = VitEncoder::load(bigger, &n, &w, DType::F32, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("pos") && msg.contains("model.safetensors"),
            "{msg}"
        );
        Ok(())
    }
}
