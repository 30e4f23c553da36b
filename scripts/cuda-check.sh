#!/usr/bin/env bash
# CI's CUDA build (issue J): builds the `fluxd` binary with `--features cuda` on a machine without
# a GPU, so the CUDA path (candle's kernels, cudarc, the engine's device handling) keeps
# compiling and linking. The toolkit comes from PyPI (scripts/cuda-env.sh: CUDA 13.0, kernels
# for compute capability 9.0 unless CUDA_COMPUTE_CAP says otherwise).
#
# It shares the CPU build's target folder and dev profile: only the crates whose features change
# (candle-core, candle-nn, cudarc, candle-kernels and ours above them) are built again; the
# CPU build's artifacts stay valid beside them. Most of the time is nvcc compiling candle's
# kernels (the PTX ones and the quantized-matmul library): once per clean target folder, and
# again whenever Cargo.lock moves one of candle-kernels' build dependencies (its build script
# then gets a new output folder).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cuda-env.sh
source scripts/cuda-env.sh
start=$(date +%s)
cargo build --locked -p fluxd --features cuda --bins
echo "cuda-check: fluxd --features cuda built for compute capability $CUDA_COMPUTE_CAP (CUDA $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')) in $(( $(date +%s) - start )) s"
