//! The FLUX.1 image-generation engine on candle.
//!
//! It loads real on-disk formats (the Hugging Face diffusers layout of FLUX.1-dev, BFL single
//! files, GGUF files with quantized weights), runs the text encoders, the flow-matching
//! transformer and the VAE, and produces the image diffusers would produce for the same seed.
//! No HTTP and no SQL live here.

#[cfg(test)]
mod alloc_meter;
mod attention;
pub mod control;
pub(crate) mod cpu_gemm;
pub mod cpu_kernels;
pub mod error;
pub mod fp8;
pub mod gguf;
pub mod lora;
pub mod memory_plan;
pub mod model_dir;
pub mod noise;
pub mod pipeline;
pub mod postprocess;
pub mod preview;
pub mod quant;
pub mod redux;
pub mod safety;
pub mod schedule;
pub(crate) mod tensor_source;
pub mod text_encoders;
pub mod tiny_init;
pub mod tiny_model;
pub mod tokenizer;
pub mod transformer;
pub mod vae;
mod vit;
pub mod weights;

pub use cpu_kernels::{fused_cpu_kernels, set_fused_cpu_kernels};
pub use error::{EngineError, Result};
