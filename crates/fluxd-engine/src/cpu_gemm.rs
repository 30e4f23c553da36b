//! Dense f32 matrix products on the CPU for the engine's fused fast paths: a bounds-checked
//! strided matrix view and one `gemm` call (the `gemm` crate's AVX-512 microkernels) shared by the
//! transformer's blocks and the quantized-weight kernels.

use candle_core::{Storage, Tensor};

use crate::error::{EngineError, Result};

/// A strided read-only matrix over a slice, bounds-checked at construction.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    pub(crate) fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<Self> {
        let last = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        };
        if last > data.len() {
            return Err(EngineError::InvalidInput(format!(
                "matrix view {rows}x{cols} (strides {rs},{cs}) exceeds a buffer of {}",
                data.len()
            )));
        }
        Ok(Self {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// Row-major `rows × cols`.
    pub(crate) fn rm(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// Rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst (m×n, row stride dst_rs) = [dst +] beta · lhs · rhs`.
pub(crate) fn gemm(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    accumulate: bool,
    beta: f32,
    parallel: bool,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k {
        return Err(EngineError::InvalidInput(format!(
            "matmul {m}x{k} by {}x{n}",
            rhs.rows
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if (m - 1) * dst_rs + n > dst.len() || dst_rs < n {
        return Err(EngineError::InvalidInput(format!(
            "matmul output {m}x{n} (row stride {dst_rs}) exceeds a buffer of {}",
            dst.len()
        )));
    }
    let par = if parallel && m * n * k > 1 << 18 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: all three matrices were bounds-checked against their slices above / in
    // `View::new`; `dst` is borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// The f32 data of a contiguous CPU tensor.
pub(crate) fn with_f32_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(EngineError::InvalidInput(
            "CPU fast path on a non-CPU tensor".into(),
        ));
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| EngineError::InvalidInput("CPU fast path on a strided tensor".into()))?;
    f(&data[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_rejects_views_outside_their_buffers() {
        let a = [1f32; 6];
        assert!(View::new(&a, 2, 3, 3, 1).is_ok());
        assert!(View::new(&a, 3, 3, 3, 1).is_err());
        let lhs = View::rm(&a, 2, 3).ok();
        let rhs = View::rm(&a, 3, 2).ok();
        let (Some(lhs), Some(rhs)) = (lhs, rhs) else {
            panic!("views")
        };
        let mut small = [0f32; 3];
        assert!(gemm(&mut small, 2, lhs, rhs, false, 1.0, false).is_err());
        let mut dst = [0f32; 4];
        assert!(gemm(&mut dst, 2, lhs, rhs, false, 1.0, false).is_ok());
        assert_eq!(dst, [3.0; 4]);
    }
}
