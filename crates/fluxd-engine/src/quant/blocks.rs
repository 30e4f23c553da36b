//! GGML blocks read in place from a memory-mapped weight file.
//!
//! candle keeps a CPU `QTensor`'s blocks in a `Box<dyn QuantizedType>`; its own loader copies
//! them out of the file into a `Vec`. [`MappedBlocks`] implements that trait over the file's
//! mapping instead, so a quantized model costs its file's pages and nothing else: pages the
//! kernels stop reading (after candle has repacked a layer) can be handed back to the kernel.

use std::sync::Arc;

use candle_core::quantized::k_quants::{
    self, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::{GgmlDType, QuantizedType};
use candle_core::CpuStorage;
use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{EngineError, Result};

/// A byte range of a mapped file.
#[derive(Clone)]
pub(crate) struct MappedRange {
    pub map: Arc<Mmap>,
    pub start: usize,
    pub len: usize,
}

impl MappedRange {
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// Drops this range's pages from the process (they stay in the page cache and are read back
    /// if touched again), once a repacked copy serves every product.
    pub fn release_pages(&self) {
        // SAFETY: a read-only shared file mapping; DONTNEED only unmaps pages, which the kernel
        // faults back in from the file on the next access.
        #[cfg(unix)]
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.start,
                self.len,
            )
        };
    }
}

impl std::fmt::Debug for MappedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedRange({}..{})", self.start, self.start + self.len)
    }
}

/// The blocks of one tensor, read in place from a mapping.
pub(crate) struct MappedBlocks<T> {
    range: MappedRange,
    _blocks: std::marker::PhantomData<T>,
}

impl<T: GgmlType> MappedBlocks<T> {
    /// Fails unless the range holds a whole number of `T`s at `T`'s alignment.
    fn new(range: MappedRange) -> Result<Self> {
        cast_blocks::<T>(range.bytes())?;
        Ok(Self {
            range,
            _blocks: std::marker::PhantomData,
        })
    }

    fn blocks(&self) -> &[T] {
        // Checked in `new`; the mapping never changes.
        cast_blocks::<T>(self.range.bytes()).unwrap_or(&[])
    }
}

/// Views `bytes` as blocks of `T`, checking size and alignment.
pub(crate) fn cast_blocks<T: GgmlType>(bytes: &[u8]) -> Result<&[T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return Err(EngineError::InvalidInput(format!(
            "{} bytes at {:p} are not whole aligned {:?} blocks of {size} bytes",
            bytes.len(),
            bytes.as_ptr(),
            T::DTYPE
        )));
    }
    // SAFETY: size and alignment checked above; every `GgmlType` block is plain old data
    // (`repr(C)` integers and halves), valid for any bit pattern.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

impl<T: GgmlType + 'static> QuantizedType for MappedBlocks<T> {
    fn dtype(&self) -> GgmlDType {
        T::DTYPE
    }

    fn matmul_t(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[f32],
        dst: &mut [f32],
    ) -> candle_core::Result<()> {
        k_quants::matmul(mkn, lhs, self.blocks(), dst)
    }

    fn matmul_t_f16(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[f16],
        dst: &mut [f16],
    ) -> candle_core::Result<()> {
        k_quants::matmul_f16(mkn, lhs, self.blocks(), dst)
    }

    fn embedding(
        &self,
        ids: &[u32],
        rows: usize,
        hidden: usize,
    ) -> candle_core::Result<CpuStorage> {
        let per_row = hidden / T::BLCK_SIZE;
        let blocks = self.blocks();
        if !hidden.is_multiple_of(T::BLCK_SIZE) || blocks.len() != rows * per_row {
            candle_core::bail!("embedding of {rows}x{hidden} over {} blocks", blocks.len())
        }
        let mut out = vec![0f32; ids.len() * hidden];
        for (dst, &id) in out.chunks_exact_mut(hidden).zip(ids) {
            let id = id as usize;
            if id >= rows {
                candle_core::bail!("embedding id {id} out of range for {rows} rows")
            }
            T::to_float(&blocks[id * per_row..(id + 1) * per_row], dst);
        }
        Ok(CpuStorage::F32(out))
    }

    fn dequantize(&self, elem_count: usize) -> candle_core::Result<CpuStorage> {
        let mut ys = vec![0f32; elem_count];
        T::to_float(self.blocks(), &mut ys);
        Ok(CpuStorage::F32(ys))
    }

    fn storage_size_in_bytes(&self) -> usize {
        self.range.len
    }

    fn as_ptr(&self) -> *const u8 {
        self.range.bytes().as_ptr()
    }

    fn block_size(&self) -> usize {
        T::BLCK_SIZE
    }

    // A mapped file is read-only: candle writes blocks only into storage it allocates itself
    // (`QTensor::quantize*`), never into a loaded tensor's, so these are never reached.
    fn from_float(&mut self, _xs: &[f32]) {}

    fn from_float_imatrix(&mut self, _xs: &[f32], _imatrix: &[f32], _n_per_row: usize) {}

    fn size(&self) -> usize {
        self.range.len
    }
}

/// Boxes mapped blocks of `dtype` as candle CPU storage.
pub(crate) fn mapped_storage(
    dtype: GgmlDType,
    range: MappedRange,
) -> Result<Box<dyn QuantizedType>> {
    fn boxed<T: GgmlType + 'static>(r: MappedRange) -> Result<Box<dyn QuantizedType>> {
        Ok(Box::new(MappedBlocks::<T>::new(r)?))
    }
    match dtype {
        GgmlDType::F32 => boxed::<f32>(range),
        GgmlDType::F16 => boxed::<f16>(range),
        GgmlDType::BF16 => boxed::<bf16>(range),
        GgmlDType::Q4_0 => boxed::<BlockQ4_0>(range),
        GgmlDType::Q4_1 => boxed::<BlockQ4_1>(range),
        GgmlDType::Q5_0 => boxed::<BlockQ5_0>(range),
        GgmlDType::Q5_1 => boxed::<BlockQ5_1>(range),
        GgmlDType::Q8_0 => boxed::<BlockQ8_0>(range),
        GgmlDType::Q8_1 => boxed::<BlockQ8_1>(range),
        GgmlDType::Q2K => boxed::<BlockQ2K>(range),
        GgmlDType::Q3K => boxed::<BlockQ3K>(range),
        GgmlDType::Q4K => boxed::<BlockQ4K>(range),
        GgmlDType::Q5K => boxed::<BlockQ5K>(range),
        GgmlDType::Q6K => boxed::<BlockQ6K>(range),
        GgmlDType::Q8K => boxed::<BlockQ8K>(range),
    }
}

/// Dequantizes whole rows: `bytes` holds a `(rows, k)` tensor of `dtype` row by row, and
/// `out` (`n·k` floats) receives rows `row0..row0 + n`.
pub(crate) fn dequantize_rows(
    dtype: GgmlDType,
    bytes: &[u8],
    k: usize,
    row0: usize,
    out: &mut [f32],
) -> Result<()> {
    fn rows<T: GgmlType>(bytes: &[u8], k: usize, row0: usize, out: &mut [f32]) -> Result<()> {
        let per_row = k / T::BLCK_SIZE;
        let n = out.len() / k.max(1);
        let blocks = cast_blocks::<T>(bytes)?;
        let src = blocks
            .get(row0 * per_row..(row0 + n) * per_row)
            .ok_or_else(|| {
                EngineError::InvalidInput(format!(
                    "rows {row0}..{} of a {}-block tensor",
                    row0 + n,
                    blocks.len()
                ))
            })?;
        T::to_float(src, out);
        Ok(())
    }
    match dtype {
        GgmlDType::F32 => rows::<f32>(bytes, k, row0, out),
        GgmlDType::F16 => rows::<f16>(bytes, k, row0, out),
        GgmlDType::BF16 => rows::<bf16>(bytes, k, row0, out),
        GgmlDType::Q4_0 => rows::<BlockQ4_0>(bytes, k, row0, out),
        GgmlDType::Q4_1 => rows::<BlockQ4_1>(bytes, k, row0, out),
        GgmlDType::Q5_0 => rows::<BlockQ5_0>(bytes, k, row0, out),
        GgmlDType::Q5_1 => rows::<BlockQ5_1>(bytes, k, row0, out),
        GgmlDType::Q8_0 => rows::<BlockQ8_0>(bytes, k, row0, out),
        GgmlDType::Q8_1 => rows::<BlockQ8_1>(bytes, k, row0, out),
        GgmlDType::Q2K => rows::<BlockQ2K>(bytes, k, row0, out),
        GgmlDType::Q3K => rows::<BlockQ3K>(bytes, k, row0, out),
        GgmlDType::Q4K => rows::<BlockQ4K>(bytes, k, row0, out),
        GgmlDType::Q5K => rows::<BlockQ5K>(bytes, k, row0, out),
        GgmlDType::Q6K => rows::<BlockQ6K>(bytes, k, row0, out),
        GgmlDType::Q8K => rows::<BlockQ8K>(bytes, k, row0, out),
    }
}
