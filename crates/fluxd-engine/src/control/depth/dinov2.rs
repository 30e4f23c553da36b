//! The DINOv2 backbone of Depth Anything (transformers `models/dinov2/modeling_dinov2.py`,
//! `Dinov2Backbone`): the ViT patch embedding and `[CLS]` token shared with our other vision
//! towers (`crate::vit`), learned positions resized bicubically to the input's patch grid
//! (`interpolate_pos_encoding`), pre-LayerNorm layers with DINOv2's layer scale
//! (`text_encoders::encoder_layer` with `LayerNames::with_layer_scale`), and the selected
//! hidden states through the final LayerNorm.
//!
//! Hub layout (`backbone.` prefix in Depth Anything files; transformers 5 renames the attention
//! tensors on load, `conversion_mapping.py` "Dinov2Model"):
//! `embeddings.{cls_token, mask_token, position_embeddings, patch_embeddings.projection}`,
//! `encoder.layer.{i}.{norm1, attention.attention.{query,key,value}, attention.output.dense,
//! layer_scale1.lambda1, norm2, mlp.fc1, mlp.fc2, layer_scale2.lambda1}`, `layernorm`.

use candle_core::{DType, Device, Tensor};

use super::config::Dinov2Config;
use super::interp;
use crate::error::{EngineError, Result};
use crate::text_encoders::encoder_layer::{EncoderLayer, LayerDims, Scale};
use crate::text_encoders::{apply, layer_norm};
use crate::vit::{LayerNames, PatchEmbed};
use crate::weights::WeightFiles;

/// A layer's tensor names in [`LayerNames`] order under `{prefix}.encoder.layer.{i}`.
const LAYER_SUFFIXES: [&str; 8] = [
    "norm1",
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.output.dense",
    "norm2",
    "mlp.fc1",
    "mlp.fc2",
];

/// A loaded DINOv2 backbone.
pub(crate) struct Dinov2 {
    cfg: Dinov2Config,
    patch: PatchEmbed,
    cls_token: Tensor,
    /// (1, 1 + grid², hidden): `[CLS]`'s row first.
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    final_norm: candle_nn::LayerNorm,
    device: Device,
}

impl Dinov2 {
    /// Loads the backbone under `prefix` (`backbone`), checking every shape against `cfg`.
    pub fn load(cfg: Dinov2Config, prefix: &str, w: &WeightFiles, device: &Device) -> Result<Self> {
        let dtype = DType::F32;
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        let e = format!("{prefix}.embeddings");
        let patch = PatchEmbed::load(
            w,
            &format!("{e}.patch_embeddings.projection"),
            h,
            cfg.num_channels,
            (p, p),
            dtype,
            device,
        )?;
        let grid = cfg.image_size / p;
        let positions = w.get_shaped(
            &format!("{e}.position_embeddings"),
            (1, grid * grid + 1, h),
            dtype,
            device,
        )?;
        let cls_token = w.get_shaped(&format!("{e}.cls_token"), (1, 1, h), dtype, device)?;
        let dims = LayerDims {
            hidden: h,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            eps: cfg.layer_norm_eps,
            qkv_bias: cfg.qkv_bias,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = format!("{prefix}.encoder.layer.{i}");
                let names = LayerNames::under(&l, LAYER_SUFFIXES).with_layer_scale(
                    format!("{l}.layer_scale1.lambda1"),
                    format!("{l}.layer_scale2.lambda1"),
                );
                EncoderLayer::load(w, &names, &dims, dtype, device)
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = layer_norm(
            w,
            &format!("{prefix}.layernorm"),
            h,
            cfg.layer_norm_eps,
            dtype,
            device,
        )?;
        Ok(Self {
            cfg,
            patch,
            cls_token,
            positions,
            layers,
            final_norm,
            device: device.clone(),
        })
    }

    /// The patch grid (rows, columns) of an input of (height, width) pixels.
    pub fn grid(&self, (h, w): (usize, usize)) -> (usize, usize) {
        (h / self.cfg.patch_size, w / self.cfg.patch_size)
    }

    /// The embeddings (`[CLS]` + patches + positions) of `pixel_values` (B, C, H, W).
    pub fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, hp, wp) = pixel_values.dims4()?;
        if c != self.cfg.num_channels {
            return Err(EngineError::InvalidInput(format!(
                "Depth Anything takes {} channels, got {c}",
                self.cfg.num_channels
            )));
        }
        let grid = self.grid((hp, wp));
        if grid.0 == 0 || grid.1 == 0 {
            return Err(EngineError::InvalidInput(format!(
                "a {wp}x{hp} input is smaller than one {0}x{0} patch",
                self.cfg.patch_size
            )));
        }
        let x = self
            .patch
            .forward(&pixel_values.to_device(&self.device)?, grid)?;
        let h = self.cfg.hidden_size;
        let x = Tensor::cat(&[&self.cls_token.broadcast_as((b, 1, h))?, &x], 1)?;
        Ok(x.broadcast_add(&self.positions_for(grid, hp == wp)?)?)
    }

    /// `interpolate_pos_encoding`: the table as stored when the grid matches it and the input is
    /// square, else its patch rows resized bicubically (align_corners=False) to `grid`.
    fn positions_for(&self, grid: (usize, usize), square_input: bool) -> Result<Tensor> {
        let n = self.positions.dim(1)? - 1;
        if grid.0 * grid.1 == n && square_input {
            return Ok(self.positions.clone());
        }
        let h = self.cfg.hidden_size;
        let side = self.cfg.image_size / self.cfg.patch_size;
        // (side², hidden) → one (side, side) plane per channel.
        let table = self
            .positions
            .narrow(1, 1, n)?
            .reshape((n, h))?
            .t()?
            .contiguous()?;
        let planes: Vec<f32> = table.flatten_all()?.to_vec1()?;
        let mut resized = Vec::with_capacity(h * grid.0 * grid.1);
        for plane in planes.chunks_exact(n) {
            resized.extend(interp::bicubic(plane, (side, side), grid));
        }
        let patch_pos = Tensor::from_vec(resized, (h, grid.0 * grid.1), &self.device)?
            .t()?
            .reshape((1, grid.0 * grid.1, h))?;
        Ok(Tensor::cat(
            &[&self.positions.narrow(1, 0, 1)?, &patch_pos],
            1,
        )?)
    }

    /// The selected hidden states (`out_indices`, 0 = embeddings), each (B, 1 + patches,
    /// hidden) with `[CLS]` first, after the final LayerNorm if `apply_layernorm`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = self.embed(pixel_values)?;
        let mut states = vec![x.clone()];
        for layer in &self.layers {
            // Bidirectional attention, scores scaled after q·kᵀ (`eager_attention_forward`).
            x = layer.forward(&x, self.cfg.act, Scale::Scores, None)?;
            states.push(x.clone());
        }
        self.cfg
            .out_indices
            .iter()
            .map(|&i| {
                let s = &states[i];
                if self.cfg.apply_layernorm {
                    apply(&self.final_norm, s)
                } else {
                    Ok(s.clone())
                }
            })
            .collect()
    }
}
