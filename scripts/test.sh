#!/usr/bin/env bash
# The project's test command (README): everything a fresh machine needs, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
# The engine's reference tests once more on the code path a GPU runs, on the CPU: bf16, the fused
# f32 CPU kernels off, bf16 tolerances (crates/fluxd-engine/tests/common/mod.rs, EnginePath). The
# safety classifier is left out: it runs in f32 on every device (fluxd-server's engine.rs), with
# no CPU-only kernel, so the first run already covers it.
FLUXD_TEST_PATH=gpu cargo test --locked -p fluxd-engine --test pipeline_reference \
  --test lora_reference --test redux_reference
