#!/usr/bin/env bash
# The project's test command (README): everything a fresh machine needs, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Servers the tests need are started here and stopped on the way out, unless they were
# already up.
stops=()
stop_services() {
    for stop in "${stops[@]}"; do
        $stop || true
    done
}
trap stop_services EXIT

# A real S3-compatible server (SeaweedFS) for the blob tests: its variables exported
# (FLUXD_TEST_S3_URL and AWS_*).
if ! scripts/services/s3.sh status; then
    stops+=("scripts/services/s3.sh stop")
fi
s3_env=$(scripts/services/s3.sh start)
eval "$s3_env"

# A real PostgreSQL server for the Postgres store's tests, its URL exported as
# FLUXD_TEST_POSTGRES_URL. A URL already in the environment points the tests at another server
# instead.
if [[ -z "${FLUXD_TEST_POSTGRES_URL:-}" ]]; then
    if ! scripts/services/postgres.sh status; then
        stops+=("scripts/services/postgres.sh stop")
    fi
    FLUXD_TEST_POSTGRES_URL="$(scripts/services/postgres.sh start)"
    export FLUXD_TEST_POSTGRES_URL
fi

cargo test --workspace --locked "$@"
# The engine's reference tests once more on the code path a GPU runs, on the CPU: bf16, the fused
# f32 CPU kernels off, bf16 tolerances (crates/fluxd-engine/tests/common/mod.rs, EnginePath). The
# safety classifier is left out: it runs in f32 on every device (fluxd-server's engine.rs), with
# no CPU-only kernel, so the first run already covers it. GGUF weights run there through candle's
# quantized matmul with bf16 activations (rounded to 8-bit blocks), the CPU side of what CUDA runs.
# These test targets exist only in fluxd-engine. The selection reuses the first run's build
# (Cargo.toml's `profile.dev.build-override` keeps it from compiling candle again).
FLUXD_TEST_PATH=gpu cargo test --workspace --locked --test pipeline_reference \
  --test lora_reference --test redux_reference --test gguf_reference --test fp8_reference
