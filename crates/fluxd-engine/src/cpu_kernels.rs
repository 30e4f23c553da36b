//! Whether the CPU runs the engine's own fused f32 kernels or the code path every other device
//! runs.
//!
//! On the CPU in f32 the transformer's blocks run on fused kernels (`transformer/cpu.rs`) and the
//! VAE's convolutions and group norms on their own im2col/two-pass versions (`vae/blocks.rs`);
//! a GPU never runs those, but candle's ops in the model's dtype. Switching the fused kernels off
//! makes the CPU take the GPU's path, so that path (its dtype handling, its attention, its
//! convolutions) is tested on machines without a GPU: the engine's reference tests run that way
//! in bf16 (`FLUXD_TEST_PATH=gpu`, see `scripts/test.sh`).
//!
//! The switch is process-wide (an atomic read at each forward), as a test process or a
//! debugging session wants it; it changes which code runs, never what a model holds.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;

static FUSED: AtomicBool = AtomicBool::new(true);

/// Turns the fused CPU kernels on (the default) or off for every model in this process.
pub fn set_fused_cpu_kernels(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether the fused CPU kernels are on.
pub fn fused_cpu_kernels() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// Whether work on `device` may take a fused CPU kernel: the device is the CPU and the kernels
/// are on. Each kernel also checks the dtypes it handles.
pub(crate) fn fused_on(device: &Device) -> bool {
    device.is_cpu() && fused_cpu_kernels()
}
