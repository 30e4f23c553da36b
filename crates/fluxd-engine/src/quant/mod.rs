//! Weights of linear layers as files hold them ([`LinearWeight`]): dense tensors, GGML quantized
//! blocks (Q8_0 … Q2_K, as in GGUF files) that every product reads directly, or fp8 with a
//! per-tensor scale ([`crate::fp8`]) upcast one layer at a time.
//!
//! A quantized weight is never expanded into a dense copy of the layer that outlives one
//! product. On CUDA (and for bf16/f16 activations) candle's quantized kernels run the product;
//! on the CPU with f32 activations, `cpu.rs` expands it tile by tile into the dense GEMM, or,
//! if asked ([`CpuKernels::Int8`]), runs candle's integer kernels where they exist. candle has
//! no fp8 GEMM: an fp8 weight is upcast to the compute dtype for each product.

pub(crate) mod blocks;
pub(crate) mod cpu;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::fp8::Fp8Weight;
use blocks::MappedRange;

/// Which kernels CPU products with quantized weights and f32 activations use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuKernels {
    /// Weights expanded to f32 tile by tile, exact activations: the dequantized model's result.
    #[default]
    Exact,
    /// candle's integer kernels where it has them (Q4_K; Q8_0 with VNNI), which round the
    /// activations to 8 bits as ggml does (faster, less faithful); `Exact` elsewhere.
    Int8,
}

/// The weight of a linear layer, `(out, in)`, as held in memory.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// A dense tensor in the compute dtype.
    Dense(Tensor),
    /// GGML blocks (GGUF files), computed on as they are.
    Quantized(QuantWeight),
    /// `float8_e4m3fn` with a per-tensor scale (fp8 checkpoints, `--weights-dtype fp8`).
    Fp8(Fp8Weight),
}

/// A quantized `(out, in)` weight and the dtype its products take and give.
#[derive(Clone)]
pub struct QuantWeight {
    q: Arc<QTensor>,
    dtype: DType,
    kernels: CpuKernels,
    /// The file range the blocks are read from, when they are mapped (CPU).
    mapped: Option<MappedRange>,
}

impl std::fmt::Debug for QuantWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantWeight({:?}, {:?})", self.q, self.dtype)
    }
}

impl QuantWeight {
    /// A weight over an existing quantized tensor; products take and give `dtype`.
    pub fn new(q: QTensor, dtype: DType) -> Result<Self> {
        q.shape().dims2()?;
        Ok(Self {
            q: Arc::new(q),
            dtype,
            kernels: CpuKernels::Exact,
            mapped: None,
        })
    }

    /// A weight whose blocks are read in place from `range` of a mapped file (CPU).
    pub(crate) fn mapped(
        gtype: GgmlDType,
        shape: (usize, usize),
        range: MappedRange,
        dtype: DType,
    ) -> Result<Self> {
        let storage = blocks::mapped_storage(gtype, range.clone())?;
        let q = QTensor::new(candle_core::quantized::QStorage::Cpu(storage), shape)?;
        Ok(Self {
            q: Arc::new(q),
            dtype,
            kernels: CpuKernels::Exact,
            mapped: Some(range),
        })
    }

    /// The quantized tensor.
    pub fn qtensor(&self) -> &QTensor {
        &self.q
    }

    /// The same blocks, their products taking and giving `dtype`.
    pub(crate) fn computing_in(self, dtype: DType) -> Self {
        Self { dtype, ..self }
    }

    /// Switches the CPU kernels. For [`CpuKernels::Int8`], candle's repacking runs now (not in
    /// the first denoising step) where it applies, and the file pages are let go: the repacked
    /// copy serves every product from then on.
    pub fn set_cpu_kernels(&mut self, kernels: CpuKernels) -> Result<()> {
        self.kernels = kernels;
        self.prepare()
    }

    fn prepare(&self) -> Result<()> {
        let (n, k) = self.q.shape().dims2()?;
        let plan = cpu::plan(self.q.dtype(), n, k, self.kernels);
        if self.q.device().is_cpu() && plan == cpu::Plan::Candle {
            let x = vec![0f32; 2 * k];
            let mut y = vec![0f32; 2 * n];
            cpu::matmul(&self.q, self.kernels, &x, 2, &mut y, n)?;
            if let Some(r) = &self.mapped {
                r.release_pages();
            }
        }
        Ok(())
    }
}

impl LinearWeight {
    /// `(out, in)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Self::Dense(t) => t.dims2()?,
            Self::Quantized(q) => q.q.shape().dims2()?,
            Self::Fp8(w) => w.weight.dims2()?,
        })
    }

    /// The device the weight lives on.
    pub fn device(&self) -> Device {
        match self {
            Self::Dense(t) => t.device().clone(),
            Self::Quantized(q) => q.q.device(),
            Self::Fp8(w) => w.weight.device().clone(),
        }
    }

    /// How the weight is stored: a candle dtype (`F32`, `BF16`, ...), a GGML type (`Q4_K`...)
    /// or `F8E4M3`.
    pub fn storage_name(&self) -> String {
        match self {
            Self::Dense(t) => format!("{:?}", t.dtype()).to_uppercase(),
            Self::Quantized(q) => crate::gguf::type_name(q.q.dtype()).to_string(),
            Self::Fp8(w) => format!("{:?}", w.weight.dtype()).to_uppercase(),
        }
    }

    /// Bytes the weight occupies in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Self::Quantized(q) => q.q.storage_size_in_bytes(),
            Self::Fp8(w) => w.bytes(),
        }
    }

    /// The weight as a dense tensor of `dtype`: the held tensor when dense, a fresh expansion of
    /// this one layer otherwise (checks, and products without a kernel of their own).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(t) => t.to_dtype(dtype)?,
            Self::Quantized(q) => q.q.dequantize(&q.q.device())?.to_dtype(dtype)?,
            Self::Fp8(w) => w.dequantize(dtype)?,
        })
    }

    /// The weight with fp8 upcast to a dense `dtype` tensor once, the other kinds unchanged: for
    /// the text encoders, which keep fp8 files' weights in the compute dtype (as the memory plan
    /// counts them) and only the transformer holds fp8 in memory.
    pub(crate) fn upcast_fp8(self, dtype: DType) -> Result<Self> {
        Ok(match self {
            Self::Fp8(w) => Self::Dense(w.dequantize(dtype)?),
            other => other,
        })
    }

    /// Switches the CPU kernels of a quantized weight (the other kinds have one way only).
    pub fn set_cpu_kernels(&mut self, kernels: CpuKernels) -> Result<()> {
        match self {
            Self::Quantized(q) => q.set_cpu_kernels(kernels),
            Self::Dense(_) | Self::Fp8(_) => Ok(()),
        }
    }

    /// `x · Wᵀ` on the last dimension of `x`, all leading dimensions flattened into one product,
    /// computed in `dtype` (the layer's compute dtype, which dense weights already have).
    pub fn forward_t(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        let dims = x.dims();
        let k = dims.last().copied().unwrap_or(1);
        let (n, kw) = self.dims()?;
        if k != kw {
            return Err(EngineError::InvalidInput(format!(
                "input of width {k} for a {n}x{kw} weight"
            )));
        }
        let m = x.elem_count() / k.max(1);
        let x2 = x.reshape((m, k))?;
        let y = match self {
            Self::Dense(w) => x2.matmul(&w.t()?)?,
            // candle has no fp8 GEMM: this one layer is upcast for the product.
            Self::Fp8(w) => x2.matmul(&w.dequantize(dtype)?.t()?)?,
            Self::Quantized(q) => {
                let x2 = x2.to_dtype(q.dtype)?;
                if x2.device().is_cpu() && q.dtype == DType::F32 {
                    let xs = x2.flatten_all()?.to_vec1::<f32>()?;
                    let mut y = vec![0f32; m * n];
                    cpu::matmul(&q.q, q.kernels, &xs, m, &mut y, n)?;
                    Tensor::from_vec(y, (m, n), &Device::Cpu)?
                } else {
                    x2.contiguous()?.apply_op1_no_bwd(q.q.as_ref())?
                }
            }
        };
        let mut out = dims.to_vec();
        if let Some(l) = out.last_mut() {
            *l = n;
        }
        Ok(y.reshape(out)?)
    }

    /// Rows `ids` of the weight (an embedding table), as `(len, in)` in `dtype`.
    pub fn rows(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(t) => t.index_select(ids, 0)?,
            Self::Quantized(q) => q.q.embedding(ids)?.to_dtype(dtype)?,
            Self::Fp8(w) => w.dequantize(dtype)?.index_select(ids, 0)?,
        })
    }

    /// `dst (rows × out, row stride dst_rs) = x · Wᵀ` on the CPU fast path (f32, contiguous).
    pub(crate) fn matmul_f32_into(
        &self,
        x: &[f32],
        rows: usize,
        dst: &mut [f32],
        dst_rs: usize,
    ) -> Result<()> {
        let mut dense = |w: &Tensor| -> Result<()> {
            let (out, inp) = w.dims2()?;
            crate::cpu_gemm::with_f32_data(w, |wd| {
                crate::cpu_gemm::gemm(
                    dst,
                    dst_rs,
                    crate::cpu_gemm::View::rm(x, rows, inp)?,
                    crate::cpu_gemm::View::rm(wd, out, inp)?.t(),
                    false,
                    1.0,
                    true,
                )
            })
        };
        match self {
            Self::Dense(w) => dense(w),
            // An fp8 weight is upcast here, one layer at a time.
            Self::Fp8(w) => dense(&w.dequantize(DType::F32)?),
            Self::Quantized(q) => cpu::matmul(&q.q, q.kernels, x, rows, dst, dst_rs),
        }
    }
}
