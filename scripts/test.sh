#!/usr/bin/env bash
# The project's test command (README): everything a fresh machine needs, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# A real S3-compatible server (SeaweedFS) for the blob tests: started here, its variables
# exported (FLUXD_TEST_S3_URL and AWS_*), and stopped on the way out unless it was already up.
if ! scripts/services/s3.sh status; then
  trap 'scripts/services/s3.sh stop' EXIT
fi
s3_env=$(scripts/services/s3.sh start)
eval "$s3_env"

cargo test --workspace --locked "$@"
# The engine's reference tests once more on the code path a GPU runs, on the CPU: bf16, the fused
# f32 CPU kernels off, bf16 tolerances (crates/fluxd-engine/tests/common/mod.rs, EnginePath). The
# safety classifier is left out: it runs in f32 on every device (fluxd-server's engine.rs), with
# no CPU-only kernel, so the first run already covers it.
FLUXD_TEST_PATH=gpu cargo test --locked -p fluxd-engine --test pipeline_reference \
  --test lora_reference --test redux_reference
