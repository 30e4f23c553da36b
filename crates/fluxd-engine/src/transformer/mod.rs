//! The FLUX.1 flow-matching transformer (MMDiT: double-stream then single-stream blocks).
//!
//! Faithful to diffusers' `FluxTransformer2DModel` (`models/transformers/transformer_flux.py`):
//! same inputs (packed latents, T5 states, CLIP pooled vector, `timestep` = σ, raw guidance),
//! same output. Weights load from a diffusers `transformer/` folder or a BFL single file (plain
//! or ComfyUI-prefixed) into one canonical form with BFL module names and fused projections.
//! Every linear layer is a [`FluxLinear`] reachable by name, for LoRA adapters.

mod blocks;
pub mod config;
mod cpu;
mod kernels;
pub mod linear;
mod load;
pub mod names;
pub mod rope;
pub mod write;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use config::FluxConfig;
pub use linear::{FluxLinear, LowRank};
pub(crate) use load::{swap_halves, COMFY_PREFIX};
pub use rope::Rope;
pub use write::{random_canonical_weights, write_bfl_single_file, write_tiny_diffusers};

use crate::error::{EngineError, Result};
use crate::tiny_init::TensorMap;
use crate::weights::WeightFiles;
use blocks::{load_linear, Dims, DoubleBlock, SingleBlock};
use config::TIME_EMBED_DIM;
pub use load::WeightsDtype;
use load::{bfl_config, BflSource, DiffusersDirSource, MapSource, StoreFp8, TensorSource};

use crate::model_dir::TransformerSource;

/// `MLPEmbedder` (BFL) / `TimestepEmbedding`, `PixArtAlphaTextProjection` (diffusers):
/// `out_layer(silu(in_layer(x)))`.
#[derive(Debug, Clone)]
struct MlpEmbedder {
    in_layer: FluxLinear,
    out_layer: FluxLinear,
}

impl MlpEmbedder {
    fn load(
        src: &dyn TensorSource,
        name: &str,
        inp: usize,
        h: usize,
        dt: DType,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Self {
            in_layer: load_linear(src, &format!("{name}.in_layer"), h, inp, dt, dev)?,
            out_layer: load_linear(src, &format!("{name}.out_layer"), h, h, dt, dev)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out_layer
            .forward(&candle_nn::ops::silu(&self.in_layer.forward(x)?)?)
    }
}

/// A loaded FLUX.1 transformer.
#[derive(Debug, Clone)]
pub struct FluxTransformer {
    cfg: FluxConfig,
    dtype: DType,
    device: Device,
    img_in: FluxLinear,
    txt_in: FluxLinear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    double_blocks: Vec<DoubleBlock>,
    single_blocks: Vec<SingleBlock>,
    final_linear: FluxLinear,
    /// `final_layer.adaLN_modulation.1`, BFL order (shift, scale).
    final_mod: FluxLinear,
    /// Whether forwards may run on the fused f32 CPU kernels (`cpu.rs`) rather than candle ops
    /// (also subject to [`crate::set_fused_cpu_kernels`]).
    fast_path: bool,
    /// Scratch buffers of the fast path, reused across forwards.
    work: cpu::WorkCache,
}

impl FluxTransformer {
    /// Loads the transformer from where the model folder says it is, holding linear weights as
    /// `weights` says.
    pub fn load(
        source: &TransformerSource,
        dtype: DType,
        device: &Device,
        weights: WeightsDtype,
    ) -> Result<Self> {
        match source {
            TransformerSource::Diffusers(dir) => {
                let cfg = FluxConfig::from_file(&dir.join("config.json"))?;
                let files = WeightFiles::open_dir(dir, &["diffusion_pytorch_model"])?;
                let map_cfg = cfg.clone();
                let src = DiffusersDirSource {
                    weights: &files,
                    cfg: &map_cfg,
                    dir: dir.to_path_buf(),
                };
                Self::build_as(cfg, &src, dtype, device, weights)
            }
            TransformerSource::BflFile(file) => {
                let files = WeightFiles::open(&[file.to_path_buf()])?;
                let (cfg, prefix) = bfl_config(&files, file)?;
                let fp8_files = files.names().any(|n| {
                    n.starts_with(prefix.as_str())
                        && files.stored_dtype(n) == Some(safetensors::Dtype::F8_E4M3)
                });
                if fp8_files {
                    let scales = ["scale_input", "input_scale"]
                        .iter()
                        .any(|s| files.names().any(|n| n.ends_with(&format!(".{s}"))));
                    tracing::info!(
                        file = %file.display(),
                        "fp8 weights: kept in fp8, upcast per layer to {dtype:?}{}",
                        if scales {
                            " (the file's input scales are for fp8 GEMMs and are not used)"
                        } else {
                            ""
                        }
                    );
                }
                let src = BflSource {
                    weights: &files,
                    prefix,
                };
                Self::build_as(cfg, &src, dtype, device, weights)
            }
        }
    }

    /// Loads a diffusers `transformer/` folder (`config.json` + one or sharded
    /// `diffusion_pytorch_model*.safetensors`).
    pub fn load_diffusers(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let source = TransformerSource::Diffusers(dir.to_path_buf());
        Self::load(&source, dtype, device, WeightsDtype::Auto)
    }

    /// Loads a BFL single file (`flux1-dev.safetensors`), with or without the ComfyUI
    /// `model.diffusion_model.` prefix (a ComfyUI checkpoint may hold more than the
    /// transformer). The config is inferred from tensor shapes.
    pub fn load_bfl(file: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let source = TransformerSource::BflFile(file.to_path_buf());
        Self::load(&source, dtype, device, WeightsDtype::Auto)
    }

    /// The config of the transformer at `source`, from its `config.json` or its file's header
    /// (no weights are read).
    pub fn config_of(source: &TransformerSource) -> Result<FluxConfig> {
        match source {
            TransformerSource::Diffusers(dir) => FluxConfig::from_file(&dir.join("config.json")),
            TransformerSource::BflFile(file) => Self::bfl_config(file),
        }
    }

    /// The config of a BFL single file, inferred from the tensor shapes in its header: no weight
    /// is read (an API node checks LoRA files against it without loading the model).
    pub fn bfl_config(file: &Path) -> Result<FluxConfig> {
        let files = WeightFiles::open(&[file.to_path_buf()])?;
        Ok(bfl_config(&files, file)?.0)
    }

    /// Builds a model from canonical (BFL-named) tensors held in memory.
    pub fn from_canonical(
        cfg: FluxConfig,
        tensors: &TensorMap,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate().map_err(EngineError::InvalidInput)?;
        Self::build(cfg, &MapSource(tensors), dtype, device)
    }

    fn build_as(
        cfg: FluxConfig,
        src: &dyn TensorSource,
        dt: DType,
        dev: &Device,
        weights: WeightsDtype,
    ) -> Result<Self> {
        match weights {
            WeightsDtype::Auto => Self::build(cfg, src, dt, dev),
            WeightsDtype::Fp8 => Self::build(cfg, &StoreFp8(src), dt, dev),
        }
    }

    fn build(cfg: FluxConfig, src: &dyn TensorSource, dt: DType, dev: &Device) -> Result<Self> {
        let d = dims(&cfg);
        let h = d.hidden;
        let guidance_in = if cfg.guidance_embeds {
            Some(MlpEmbedder::load(
                src,
                "guidance_in",
                TIME_EMBED_DIM,
                h,
                dt,
                dev,
            )?)
        } else {
            None
        };
        let double_blocks = (0..cfg.num_layers)
            .map(|i| DoubleBlock::load(src, i, d, dt, dev))
            .collect::<Result<_>>()?;
        let single_blocks = (0..cfg.num_single_layers)
            .map(|i| SingleBlock::load(src, i, d, dt, dev))
            .collect::<Result<_>>()?;
        Ok(Self {
            img_in: load_linear(src, "img_in", h, cfg.in_channels, dt, dev)?,
            txt_in: load_linear(src, "txt_in", h, cfg.joint_attention_dim, dt, dev)?,
            time_in: MlpEmbedder::load(src, "time_in", TIME_EMBED_DIM, h, dt, dev)?,
            vector_in: MlpEmbedder::load(src, "vector_in", cfg.pooled_projection_dim, h, dt, dev)?,
            guidance_in,
            double_blocks,
            single_blocks,
            final_linear: load_linear(src, "final_layer.linear", cfg.out_features(), h, dt, dev)?,
            final_mod: load_linear(src, "final_layer.adaLN_modulation.1", 2 * h, h, dt, dev)?,
            cfg,
            dtype: dt,
            device: dev.clone(),
            fast_path: dev.is_cpu() && dt == DType::F32,
            work: cpu::WorkCache::default(),
        })
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &FluxConfig {
        &self.cfg
    }

    /// The dtype the weights are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Canonical (BFL) names of all linear layers, e.g. `double_blocks.0.img_attn.qkv`.
    pub fn linear_names(&self) -> Vec<String> {
        names::linear_specs(&self.cfg)
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    /// The linear layer with canonical module name `module`, to set or clear adapters.
    pub fn linear_mut(&mut self, module: &str) -> Option<&mut FluxLinear> {
        match module {
            "img_in" => return Some(&mut self.img_in),
            "txt_in" => return Some(&mut self.txt_in),
            "time_in.in_layer" => return Some(&mut self.time_in.in_layer),
            "time_in.out_layer" => return Some(&mut self.time_in.out_layer),
            "vector_in.in_layer" => return Some(&mut self.vector_in.in_layer),
            "vector_in.out_layer" => return Some(&mut self.vector_in.out_layer),
            "guidance_in.in_layer" => return self.guidance_in.as_mut().map(|g| &mut g.in_layer),
            "guidance_in.out_layer" => return self.guidance_in.as_mut().map(|g| &mut g.out_layer),
            "final_layer.linear" => return Some(&mut self.final_linear),
            "final_layer.adaLN_modulation.1" => return Some(&mut self.final_mod),
            _ => {}
        }
        let (kind, rest) = module.split_once('.')?;
        let (idx, sub) = rest.split_once('.')?;
        let idx: usize = idx.parse().ok()?;
        match kind {
            "double_blocks" => {
                let b = self.double_blocks.get_mut(idx)?;
                Some(match sub {
                    "img_mod.lin" => &mut b.img_mod,
                    "img_attn.qkv" => &mut b.img_qkv,
                    "img_attn.proj" => &mut b.img_proj,
                    "img_mlp.0" => &mut b.img_mlp0,
                    "img_mlp.2" => &mut b.img_mlp2,
                    "txt_mod.lin" => &mut b.txt_mod,
                    "txt_attn.qkv" => &mut b.txt_qkv,
                    "txt_attn.proj" => &mut b.txt_proj,
                    "txt_mlp.0" => &mut b.txt_mlp0,
                    "txt_mlp.2" => &mut b.txt_mlp2,
                    _ => return None,
                })
            }
            "single_blocks" => {
                let b = self.single_blocks.get_mut(idx)?;
                Some(match sub {
                    "linear1" => &mut b.linear1,
                    "linear2" => &mut b.linear2,
                    "modulation.lin" => &mut b.modulation,
                    _ => return None,
                })
            }
            _ => None,
        }
    }

    /// Removes every adapter from every layer.
    pub fn clear_adapters(&mut self) {
        for name in self.linear_names() {
            if let Some(l) = self.linear_mut(&name) {
                l.clear_adapters();
            }
        }
    }

    /// RoPE tables for a request: `img_ids` `(N, 3)`, `txt_ids` `(L, 3)`. Compute once per
    /// request and pass to [`Self::forward_with_rope`] at every step.
    pub fn rope(&self, img_ids: &Tensor, txt_ids: &Tensor) -> Result<Rope> {
        Rope::new(&self.cfg.axes_dims_rope, img_ids, txt_ids, &self.device)
    }

    /// One forward pass, diffusers' argument conventions: `img` `(B, N, in_channels)` packed
    /// latents, `txt` `(B, L, joint_attention_dim)`, `timestep` `(B,)` = σ (×1000 inside),
    /// `guidance` `(B,)` raw scale (×1000 inside; required iff the model embeds guidance),
    /// `pooled` `(B, pooled_projection_dim)`. Returns `(B, N, out_channels)`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        timestep: &Tensor,
        guidance: Option<&Tensor>,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        let rope = self.rope(img_ids, txt_ids)?;
        self.forward_with_rope(img, txt, &rope, timestep, guidance, pooled)
    }

    /// [`Self::forward`] with precomputed RoPE tables.
    pub fn forward_with_rope(
        &self,
        img: &Tensor,
        txt: &Tensor,
        rope: &Rope,
        timestep: &Tensor,
        guidance: Option<&Tensor>,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, n, c) = img.dims3()?;
        let (b2, l, c2) = txt.dims3()?;
        if b2 != b || c != cfg.in_channels || c2 != cfg.joint_attention_dim {
            return Err(EngineError::InvalidInput(format!(
                "img {:?} / txt {:?} do not fit in_channels {} / joint_attention_dim {}",
                img.dims(),
                txt.dims(),
                cfg.in_channels,
                cfg.joint_attention_dim
            )));
        }
        if rope.img_len != n || rope.txt_len != l {
            return Err(EngineError::InvalidInput(format!(
                "RoPE built for {} txt + {} img tokens, inputs have {l} + {n}",
                rope.txt_len, rope.img_len
            )));
        }
        if pooled.dims() != [b, cfg.pooled_projection_dim] {
            return Err(EngineError::InvalidInput(format!(
                "pooled {:?}, expected [{b}, {}]",
                pooled.dims(),
                cfg.pooled_projection_dim
            )));
        }
        let vec = self.conditioning(timestep, guidance, pooled, b)?;
        let vec_silu = candle_nn::ops::silu(&vec)?;
        if self.fast_path && crate::fused_cpu_kernels() {
            return self.forward_cpu(img, txt, rope, &vec_silu);
        }
        self.forward_blocks(img, txt, rope, &vec_silu)
    }

    /// The blocks on candle ops (any device and dtype).
    fn forward_blocks(
        &self,
        img: &Tensor,
        txt: &Tensor,
        rope: &Rope,
        vec_silu: &Tensor,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let vec_silu = vec_silu.clone();
        let (n, l) = (img.dim(1)?, txt.dim(1)?);
        let d = dims(cfg);
        let mut img = self.img_in.forward(&img.to_dtype(self.dtype)?)?;
        let mut txt = self.txt_in.forward(&txt.to_dtype(self.dtype)?)?;
        for block in &self.double_blocks {
            (img, txt) = block.forward(&img, &txt, &vec_silu, rope, d)?;
        }
        let mut x = Tensor::cat(&[&txt, &img], 1)?;
        for block in &self.single_blocks {
            x = block.forward(&x, &vec_silu, rope, d)?;
        }
        let img = x.narrow(1, l, n)?;
        // Final layer: BFL (shift, scale) = diffusers `AdaLayerNormContinuous` after its swap.
        let m = blocks::chunks(&self.final_mod.forward(&vec_silu)?, 2)?;
        let out = self
            .final_linear
            .forward(&blocks::modulate(&img, &m[0], &m[1])?)?;
        Ok(out)
    }

    /// The blocks on the f32 CPU fast path (`cpu.rs`).
    fn forward_cpu(
        &self,
        img: &Tensor,
        txt: &Tensor,
        rope: &Rope,
        vec_silu: &Tensor,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, n, _) = img.dims3()?;
        let l = txt.dim(1)?;
        let h = cfg.hidden();
        let g = cpu::Geo {
            txt: l,
            img: n,
            hidden: h,
            heads: cfg.num_attention_heads,
            head_dim: cfg.attention_head_dim,
            mlp: cfg.mlp_hidden(),
        };
        let cos = rope.cos.flatten_all()?.to_vec1::<f32>()?;
        let sin = rope.sin.flatten_all()?.to_vec1::<f32>()?;
        let vs = vec_silu.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let img_all = img.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let txt_all = txt.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (ci, ct) = (cfg.in_channels, cfg.joint_attention_dim);
        self.work.with(|work| {
            work.fit(g);
            let mut x = vec![0f32; (l + n) * h];
            let mut out = Vec::with_capacity(b * n * cfg.out_features());
            for (bi, vsb) in vs.iter().enumerate() {
                let (x_txt, x_img) = x.split_at_mut(l * h);
                cpu::linear_into(
                    &self.txt_in,
                    &txt_all[bi * l * ct..(bi + 1) * l * ct],
                    l,
                    x_txt,
                )?;
                cpu::linear_into(
                    &self.img_in,
                    &img_all[bi * n * ci..(bi + 1) * n * ci],
                    n,
                    x_img,
                )?;
                for block in &self.double_blocks {
                    cpu::double_block(block, &mut x, vsb, (&cos, &sin), work, g)?;
                }
                for block in &self.single_blocks {
                    cpu::single_block(block, &mut x, vsb, (&cos, &sin), work, g)?;
                }
                let y = cpu::final_layer(
                    &self.final_mod,
                    &self.final_linear,
                    &x[l * h..],
                    vsb,
                    work,
                    g,
                )?;
                out.extend_from_slice(&y);
            }
            Ok(Tensor::from_vec(
                out,
                (b, n, cfg.out_features()),
                &Device::Cpu,
            )?)
        })
    }

    /// `temb` = time_in(t·1000) + guidance_in(g·1000) + vector_in(pooled)
    /// (`CombinedTimestepGuidanceTextProjEmbeddings`).
    fn conditioning(
        &self,
        timestep: &Tensor,
        guidance: Option<&Tensor>,
        pooled: &Tensor,
        b: usize,
    ) -> Result<Tensor> {
        let t = self.timestep_embedding(timestep, b, "timestep")?;
        let mut vec = self.time_in.forward(&t)?;
        match (&self.guidance_in, guidance) {
            (Some(g_in), Some(g)) => {
                let g = self.timestep_embedding(g, b, "guidance")?;
                vec = (vec + g_in.forward(&g)?)?;
            }
            (Some(_), None) => {
                return Err(EngineError::InvalidInput(
                    "this model needs a guidance value".into(),
                ))
            }
            // diffusers' `CombinedTimestepTextProjEmbeddings` ignores guidance (schnell).
            (None, _) => {}
        }
        Ok((vec + self.vector_in.forward(&pooled.to_dtype(self.dtype)?)?)?)
    }

    /// Sinusoidal embedding of `v·1000` (`Timesteps(256, flip_sin_to_cos=True,
    /// downscale_freq_shift=0)`, diffusers `get_timestep_embedding`): `[cos, sin]`, f32 math,
    /// the ×1000 done in the model dtype as `timestep.to(dtype) * 1000` is.
    fn timestep_embedding(&self, v: &Tensor, b: usize, what: &str) -> Result<Tensor> {
        if v.dims() != [b] {
            return Err(EngineError::InvalidInput(format!(
                "{what} must be ({b},), got {:?}",
                v.dims()
            )));
        }
        let scaled = v.to_dtype(self.dtype)?.affine(1000.0, 0.0)?;
        let vals = scaled
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        let half = TIME_EMBED_DIM / 2;
        let ln = -(10_000f64.ln() as f32);
        let mut out = Vec::with_capacity(b * TIME_EMBED_DIM);
        for t in vals {
            let args: Vec<f32> = (0..half)
                .map(|i| t * ((ln * i as f32) / half as f32).exp())
                .collect();
            out.extend(args.iter().map(|a| a.cos()));
            out.extend(args.iter().map(|a| a.sin()));
        }
        Ok(Tensor::from_vec(out, (b, TIME_EMBED_DIM), &self.device)?.to_dtype(self.dtype)?)
    }
}

/// Times `iters` forwards (after one warm-up) of a random f32 CPU model of size `cfg` on
/// `img_tokens` image tokens (a near-square grid) and `txt_tokens` text tokens, batch 1, RoPE
/// precomputed as in a denoising loop. Returns seconds per forward. Threads: rayon's global pool
/// (`RAYON_NUM_THREADS`).
pub fn bench_forward(
    cfg: &FluxConfig,
    img_tokens: usize,
    txt_tokens: usize,
    iters: usize,
) -> Result<Vec<f64>> {
    let dev = Device::Cpu;
    let model = FluxTransformer::from_canonical(
        cfg.clone(),
        &random_canonical_weights(cfg, 0)?,
        DType::F32,
        &dev,
    )?;
    let mut rng = crate::tiny_init::InitRng::new(0, "bench-inputs");
    let cols = (img_tokens as f64).sqrt().ceil().max(1.0) as usize;
    let ids: Vec<f32> = (0..img_tokens)
        .flat_map(|i| [0.0, (i / cols) as f32, (i % cols) as f32])
        .collect();
    let img_ids = Tensor::from_vec(ids, (img_tokens, 3), &dev)?;
    let txt_ids = Tensor::zeros((txt_tokens, 3), DType::F32, &dev)?;
    let img = rng.normal_tensor(&[1, img_tokens, cfg.in_channels], 0.0, 1.0)?;
    let txt = rng.normal_tensor(&[1, txt_tokens, cfg.joint_attention_dim], 0.0, 1.0)?;
    let pooled = rng.normal_tensor(&[1, cfg.pooled_projection_dim], 0.0, 1.0)?;
    let t = Tensor::new(&[0.7f32], &dev)?;
    let g = Tensor::new(&[3.5f32], &dev)?;
    let guidance = cfg.guidance_embeds.then_some(&g);
    let rope = model.rope(&img_ids, &txt_ids)?;
    let mut times = Vec::with_capacity(iters);
    for i in 0..=iters {
        let start = std::time::Instant::now();
        let out = model.forward_with_rope(&img, &txt, &rope, &t, guidance, &pooled)?;
        // Force the result (candle is eager; this only guards against future laziness).
        let _ = out.dims();
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

fn dims(cfg: &FluxConfig) -> Dims {
    Dims {
        heads: cfg.num_attention_heads,
        head_dim: cfg.attention_head_dim,
        hidden: cfg.hidden(),
        mlp: cfg.mlp_hidden(),
    }
}

#[cfg(test)]
mod tests;
