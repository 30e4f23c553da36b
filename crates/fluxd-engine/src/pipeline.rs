//! The FLUX.1 text-to-image pipeline: tokenizers → CLIP + T5 → transformer under the
//! flow-matching Euler sampler → VAE → 8-bit RGB.
//!
//! It follows diffusers' `FluxPipeline.__call__` (pipelines/flux/pipeline_flux.py, diffusers 0.42.1)
//! step by step, so that with f32 on the CPU the same seed gives the same image. We own the
//! denoising loop: it reports each step and can be cancelled between steps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::lora::LoraFile;
use crate::model_dir::ModelPaths;
use crate::preview::{self, PreviewFrame, Previews, PREVIEW_CHANNELS};
use crate::quant::CpuKernels;
use crate::schedule::{self, SchedulerConfig};
use crate::text_encoders::{ClipTextEncoder, T5TextEncoder};
use crate::tokenizer::{ClipTokenizer, T5Tokenizer};
use crate::transformer::{FluxTransformer, WeightsDtype};
use crate::vae::VaeDecoder;
use crate::{noise, postprocess};

/// T5 sequence length FluxPipeline uses unless told otherwise.
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;

/// What one generation asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// The text prompt.
    pub prompt: String,
    /// Image width in pixels (a multiple of 16).
    pub width: usize,
    /// Image height in pixels (a multiple of 16).
    pub height: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Distilled guidance value fed to the model (ignored by models without guidance embedding).
    pub guidance: f32,
    /// Noise seed; as in torch, only its low 32 bits matter.
    pub seed: u64,
    /// T5 tokens kept (padding or truncating the prompt to this length).
    pub max_sequence_length: usize,
}

/// Where a generation is, reported to the caller as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Running the text encoders.
    EncodingText,
    /// `done` of `total` denoising steps are finished.
    Step {
        /// Steps finished.
        done: usize,
        /// Steps in all.
        total: usize,
    },
    /// Running the VAE decoder.
    Decoding,
}

/// Wall-clock times of one generation's phases, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Tokenizing and running both text encoders.
    pub text_encoding_ms: f64,
    /// Each denoising step (one transformer forward and the Euler update).
    pub step_ms: Vec<f64>,
    /// VAE decode and conversion to 8-bit.
    pub decode_ms: f64,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The image.
    pub image: image::RgbImage,
    /// How long each phase took.
    pub timings: Timings,
}

/// The prompt's conditioning, as the transformer consumes it.
#[derive(Debug, Clone)]
pub struct TextEmbeddings {
    /// T5 last hidden state, (1, L, joint_attention_dim).
    pub t5: Tensor,
    /// CLIP pooled output, (1, pooled_projection_dim).
    pub pooled: Tensor,
}

impl TextEmbeddings {
    /// Appends image-prompt tokens (Redux, (1, N, joint_attention_dim)) after the T5 tokens, as
    /// BFL's `prepare_redux` (`flux/sampling.py`) and diffusers' `FluxPriorReduxPipeline` do
    /// (`torch.cat([prompt_embeds, image_embeds], dim=1)`) with both scales at 1.0. The pooled
    /// vector is unchanged; the sampler gives every text token, these included, zero position ids.
    pub fn with_image_tokens(&self, tokens: &Tensor) -> Result<Self> {
        let (_, _, width) = self.t5.dims3()?;
        match tokens.dims() {
            [1, n, d] if *d == width && *n > 0 => {}
            other => {
                return Err(EngineError::InvalidInput(format!(
                    "image prompt tokens must be (1, N, {width}), got {other:?}"
                )))
            }
        }
        let tokens = tokens
            .to_device(self.t5.device())?
            .to_dtype(self.t5.dtype())?;
        Ok(Self {
            t5: Tensor::cat(&[&self.t5, &tokens], 1)?,
            pooled: self.pooled.clone(),
        })
    }
}

/// A loaded FLUX.1 model. Weights are loaded once; every generation reuses them.
pub struct FluxPipeline {
    clip_tokenizer: ClipTokenizer,
    t5_tokenizer: T5Tokenizer,
    clip: ClipTextEncoder,
    t5: T5TextEncoder,
    transformer: FluxTransformer,
    vae: VaeDecoder,
    scheduler: SchedulerConfig,
    device: Device,
    dtype: DType,
    /// Where CLIP and T5 run (the CPU with `--text-encoders-device cpu`).
    text_device: Device,
}

/// The components a pipeline loads, in order, for progress reporting.
pub const LOAD_STAGES: &[&str] = &[
    "tokenizers",
    "CLIP text encoder",
    "T5 text encoder",
    "transformer",
    "VAE",
];

/// Where and how a pipeline's components are loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The transformer's and the VAE's device.
    pub device: Device,
    /// Their compute dtype.
    pub dtype: DType,
    /// CLIP's and T5's device and dtype, when not the above (e.g. the CPU in f32 beside a GPU:
    /// only their embeddings move to `device`).
    pub text_encoders: Option<(Device, DType)>,
    /// How the transformer's linear weights are held.
    pub weights: WeightsDtype,
    /// The CPU kernels of quantized (GGUF) layers.
    pub cpu_kernels: CpuKernels,
}

impl LoadOptions {
    /// Everything on `device` in `dtype`, weights as stored.
    pub fn new(device: &Device, dtype: DType) -> Self {
        Self {
            device: device.clone(),
            dtype,
            text_encoders: None,
            weights: WeightsDtype::Auto,
            cpu_kernels: CpuKernels::Exact,
        }
    }

    /// CLIP's and T5's device and dtype.
    pub fn text_encoders(&self) -> (Device, DType) {
        self.text_encoders
            .clone()
            .unwrap_or_else(|| (self.device.clone(), self.dtype))
    }
}

impl FluxPipeline {
    /// Loads every component of the model at `paths` in `dtype` on `device`. `on_stage` is called
    /// before each entry of [`LOAD_STAGES`].
    pub fn load(
        paths: &ModelPaths,
        device: &Device,
        dtype: DType,
        on_stage: impl FnMut(&str),
    ) -> Result<Self> {
        Self::load_with(paths, &LoadOptions::new(device, dtype), on_stage)
    }

    /// Loads every component of the model at `paths` as `opts` says.
    pub fn load_with(
        paths: &ModelPaths,
        opts: &LoadOptions,
        mut on_stage: impl FnMut(&str),
    ) -> Result<Self> {
        let (device, dtype) = (&opts.device, opts.dtype);
        let (text_device, text_dtype) = opts.text_encoders();
        let scheduler = match &paths.scheduler_config {
            Some(p) => SchedulerConfig::load(p)?,
            None => SchedulerConfig::flux_dev(),
        };
        on_stage(LOAD_STAGES[0]);
        let clip_tokenizer = ClipTokenizer::from_dir(&paths.tokenizer)?;
        let t5_tokenizer = T5Tokenizer::from_dir(&paths.tokenizer_2)?;
        on_stage(LOAD_STAGES[1]);
        let clip = match &paths.clip_weights {
            Some(b) => {
                ClipTextEncoder::load_bundled(&paths.text_encoder, b, text_dtype, &text_device)?
            }
            None => ClipTextEncoder::load(&paths.text_encoder, text_dtype, &text_device)?,
        };
        on_stage(LOAD_STAGES[2]);
        let t5 = match &paths.t5_weights {
            Some(b) => T5TextEncoder::load_bundled(
                b,
                Some(&paths.text_encoder_2),
                text_dtype,
                &text_device,
            )?,
            None => T5TextEncoder::load(&paths.text_encoder_2, text_dtype, &text_device)?,
        };
        on_stage(LOAD_STAGES[3]);
        let mut transformer =
            FluxTransformer::load(&paths.transformer, dtype, device, opts.weights)?;
        transformer.set_cpu_kernels(opts.cpu_kernels)?;
        on_stage(LOAD_STAGES[4]);
        let vae = VaeDecoder::load(&paths.vae, dtype, device)?;
        let cfg = transformer.config();
        if cfg.joint_attention_dim != t5.d_model() {
            return Err(EngineError::UnknownLayout {
                path: paths.root.clone(),
                msg: format!(
                    "transformer expects {}-wide text embeddings but the T5 encoder gives {}",
                    cfg.joint_attention_dim,
                    t5.d_model()
                ),
            });
        }
        if cfg.pooled_projection_dim != clip.hidden_size() {
            return Err(EngineError::UnknownLayout {
                path: paths.root.clone(),
                msg: format!(
                    "transformer expects a {}-wide pooled embedding but CLIP gives {}",
                    cfg.pooled_projection_dim,
                    clip.hidden_size()
                ),
            });
        }
        Ok(Self {
            clip_tokenizer,
            t5_tokenizer,
            clip,
            t5,
            transformer,
            vae,
            scheduler,
            device: device.clone(),
            dtype,
            text_device,
        })
    }

    /// The transformer, e.g. to attach or clear fine-tune adapters between generations.
    pub fn transformer_mut(&mut self) -> &mut FluxTransformer {
        &mut self.transformer
    }

    /// Reads a LoRA file and checks that it fits this model's transformer.
    pub fn load_lora(&self, path: &std::path::Path) -> Result<LoraFile> {
        LoraFile::load_for(path, self.transformer.config())
    }

    /// Sets the fine-tunes for the next generations, each at its own strength, replacing any set
    /// before. The base weights are not touched (see [`crate::lora::set_loras`]).
    pub fn set_loras(&mut self, loras: &[(&LoraFile, f32)]) -> Result<()> {
        crate::lora::set_loras(&mut self.transformer, loras)
    }

    /// The transformer.
    pub fn transformer(&self) -> &FluxTransformer {
        &self.transformer
    }

    /// The T5 tokenizer (e.g. to tell a user their prompt will be truncated).
    pub fn t5_tokenizer(&self) -> &T5Tokenizer {
        &self.t5_tokenizer
    }

    /// Pixels per latent cell times the 2×2 packing: width and height must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        self.vae.scale_factor() * 2
    }

    /// Checks a request against what this model can do.
    pub fn check(&self, p: &GenerateParams) -> Result<()> {
        let m = self.size_multiple();
        if p.width == 0
            || p.height == 0
            || !p.width.is_multiple_of(m)
            || !p.height.is_multiple_of(m)
        {
            return Err(EngineError::InvalidInput(format!(
                "width and height must be positive multiples of {m}, got {}x{}",
                p.width, p.height
            )));
        }
        if p.steps == 0 {
            return Err(EngineError::InvalidInput("steps must be at least 1".into()));
        }
        if p.max_sequence_length == 0 || p.max_sequence_length > 512 {
            return Err(EngineError::InvalidInput(format!(
                "max_sequence_length must be between 1 and 512, got {}",
                p.max_sequence_length
            )));
        }
        if !p.guidance.is_finite() {
            return Err(EngineError::InvalidInput(
                "guidance must be a finite number".into(),
            ));
        }
        Ok(())
    }

    /// Runs both text encoders on `prompt` (FluxPipeline.encode_prompt).
    pub fn encode_prompt(
        &self,
        prompt: &str,
        max_sequence_length: usize,
    ) -> Result<TextEmbeddings> {
        let clip_ids = self.clip_tokenizer.encode(prompt)?;
        let clip_ids = Tensor::new(clip_ids.as_slice(), &self.text_device)?.unsqueeze(0)?;
        let pooled = self.clip.pooled(&clip_ids)?;
        let t5_ids = self.t5_tokenizer.encode(prompt, max_sequence_length)?;
        let t5_ids = Tensor::new(t5_ids.as_slice(), &self.text_device)?.unsqueeze(0)?;
        let t5 = self.t5.forward(&t5_ids)?;
        // Only the embeddings cross to the transformer's device (diffusers:
        // `prompt_embeds.to(dtype=self.text_encoder_2.dtype, device=device)`, then the
        // transformer's dtype).
        Ok(TextEmbeddings {
            t5: t5.to_device(&self.device)?.to_dtype(self.dtype)?,
            pooled: pooled.to_device(&self.device)?.to_dtype(self.dtype)?,
        })
    }

    /// The packed initial latents for a request: torch's CPU `randn` for the seed, then 2×2
    /// packing (FluxPipeline.prepare_latents with a CPU generator).
    pub fn initial_latents(&self, p: &GenerateParams) -> Result<Tensor> {
        let channels = self.transformer.config().in_channels / 4;
        let latents = noise::flux_initial_latents(p.seed, 1, p.height, p.width, channels)?;
        Ok(latents.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    /// Generates one image. `progress` hears about each phase and step; setting `cancel` stops
    /// the run between two steps with [`EngineError::Cancelled`].
    pub fn generate(
        &self,
        p: &GenerateParams,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Generation> {
        self.generate_with_image_tokens(p, None, progress, cancel)
    }

    /// [`generate`](Self::generate) with an image prompt: `image_tokens` (e.g. from
    /// [`crate::redux::ReduxModel::encode`]) are appended after the prompt's T5 tokens.
    pub fn generate_with_image_tokens(
        &self,
        p: &GenerateParams,
        image_tokens: Option<&Tensor>,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Generation> {
        self.generate_previewed(p, image_tokens, progress, None, cancel)
    }

    /// [`generate_with_image_tokens`](Self::generate_with_image_tokens) that also hands out
    /// live previews as `previews` asks (see [`crate::preview`]).
    pub fn generate_previewed(
        &self,
        p: &GenerateParams,
        image_tokens: Option<&Tensor>,
        progress: &mut dyn FnMut(Progress),
        previews: Option<&mut Previews<'_>>,
        cancel: &AtomicBool,
    ) -> Result<Generation> {
        self.check(p)?;
        let mut timings = Timings::default();
        progress(Progress::EncodingText);
        let t0 = Instant::now();
        let mut text = self.encode_prompt(&p.prompt, p.max_sequence_length)?;
        if let Some(tokens) = image_tokens {
            text = text.with_image_tokens(tokens)?;
        }
        // A GPU runs asynchronously: wait for the work, so each phase is timed as itself.
        self.device.synchronize()?;
        timings.text_encoding_ms = ms(t0);
        let latents = self.denoise(p, &text, &mut timings, (progress, previews), cancel)?;
        progress(Progress::Decoding);
        let t0 = Instant::now();
        let image = self.decode(&latents, p.width, p.height)?;
        timings.decode_ms = ms(t0);
        Ok(Generation { image, timings })
    }

    /// The sampling loop: from the seed's noise to the final packed latents, reporting each step
    /// to `progress` and, when due, a preview of the current estimate to `previews`.
    pub fn denoise(
        &self,
        p: &GenerateParams,
        text: &TextEmbeddings,
        timings: &mut Timings,
        (progress, mut previews): (&mut dyn FnMut(Progress), Option<&mut Previews<'_>>),
        cancel: &AtomicBool,
    ) -> Result<Tensor> {
        let mut latents = self.initial_latents(p)?;
        let img_ids = postprocess::latent_image_ids(p.height, p.width)?.to_device(&self.device)?;
        let txt_len = text.t5.dim(1)?;
        let txt_ids = Tensor::zeros((txt_len, 3), DType::F32, &self.device)?;
        let image_seq_len = latents.dim(1)?;
        let sched = schedule::flux_schedule(&self.scheduler, p.steps, image_seq_len)?;
        let guidance = if self.transformer.config().guidance_embeds {
            Some(Tensor::new(&[p.guidance], &self.device)?)
        } else {
            None
        };
        let rope = self.transformer.rope(&img_ids, &txt_ids)?;
        let model_timesteps = sched.transformer_timesteps(self.dtype)?;
        let total = model_timesteps.len();
        // The preview's factors are FLUX.1's; a model with other latents gets none.
        if self.transformer.config().in_channels != 4 * PREVIEW_CHANNELS {
            previews = None;
        }
        for (i, t) in model_timesteps.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            let t0 = Instant::now();
            // FluxPipeline feeds `t / 1000`, computed in the latents' dtype.
            let timestep = Tensor::new(&[*t], &self.device)?.to_dtype(self.dtype)?;
            let velocity = self.transformer.forward_with_rope(
                &latents,
                &text.t5,
                &rope,
                &timestep,
                guidance.as_ref(),
                &text.pooled,
            )?;
            let next =
                schedule::euler_step(&latents, &velocity, sched.sigmas[i], sched.sigmas[i + 1])?;
            self.device.synchronize()?;
            timings.step_ms.push(ms(t0));
            if let Some(previews) = previews.as_deref_mut().filter(|v| v.due(i + 1, total)) {
                // The flow's estimate of the clean latents, x0 = x_t - sigma_t · v (what
                // ComfyUI previews), is far clearer than the noisy x_t midway.
                let x0 = (&latents - velocity.affine(f64::from(sched.sigmas[i]), 0.0)?)?;
                let image = preview::latent_rgb(&x0, p.height, p.width)?;
                (previews.sink)(PreviewFrame {
                    step: i + 1,
                    steps: total,
                    image,
                });
            }
            latents = next;
            progress(Progress::Step { done: i + 1, total });
        }
        Ok(latents)
    }

    /// Unpacks and decodes with the VAE: (1, 3, height, width), about [-1, 1].
    pub fn decode_tensor(&self, latents: &Tensor, width: usize, height: usize) -> Result<Tensor> {
        let latents = postprocess::unpack_latents(latents, height, width)?;
        Ok(self.vae.decode(&latents)?.to_dtype(DType::F32)?)
    }

    /// Unpacks, decodes with the VAE and converts to 8-bit RGB as diffusers does.
    pub fn decode(&self, latents: &Tensor, width: usize, height: usize) -> Result<image::RgbImage> {
        let decoded = self.decode_tensor(latents, width, height)?;
        let mut images = postprocess::to_rgb8(&decoded)?;
        images
            .pop()
            .ok_or_else(|| EngineError::InvalidInput("the VAE returned no image".into()))
    }
}

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}
