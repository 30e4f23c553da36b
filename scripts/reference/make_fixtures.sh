#!/usr/bin/env bash
# Regenerates the engine's reference fixtures: writes the tiny model with our own
# `fluxd model init-tiny`, then runs diffusers on it. Usage: scripts/reference/make_fixtures.sh [VENV]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$("$root/scripts/reference/setup_venv.sh" "${1:-$root/.venv-ref}")
seed=7
model=$(mktemp -d)/tiny
cargo run --quiet -p fluxd -- model init-tiny "$model" --seed "$seed"
export FLUXD_TINY_SEED=$seed
"$venv/bin/python" "$root/scripts/reference/pipeline_fixtures.py" \
  "$model" "$root/crates/fluxd-engine/tests/fixtures/pipeline"
"$venv/bin/python" "$root/scripts/reference/redux_fixtures.py" \
  "$model" "$root/crates/fluxd-engine/tests/fixtures/redux"
loras=$(mktemp -d)
cargo run --quiet -p fluxd-engine --example write_random_loras -- "$loras"
"$venv/bin/python" "$root/scripts/reference/lora_fixtures.py" \
  "$model" "$loras" "$root/crates/fluxd-engine/tests/fixtures/lora"
FLUXD_TINY_SEED=$seed "$venv/bin/python" "$root/scripts/reference/safety_fixtures.py" \
  "$model" "$root/crates/fluxd-engine/tests/fixtures/safety"
fp8=$(mktemp -d)
cargo run --quiet -p fluxd-engine --example write_fp8_models -- "$fp8" "$seed"
FLUXD_TINY_SEED=$seed "$venv/bin/python" "$root/scripts/reference/fp8_fixtures.py" \
  "$fp8" "$root/crates/fluxd-engine/tests/fixtures/fp8"
"$venv/bin/python" "$root/scripts/reference/canny_fixtures.py" \
  "$root/crates/fluxd-engine/tests/fixtures/canny"
depth=$(mktemp -d)/depth-anything
cargo run --quiet -p fluxd -- model init-tiny-depth "$depth" --seed "$seed"
"$venv/bin/python" "$root/scripts/reference/depth_fixtures.py" \
  "$depth" "$root/crates/fluxd-engine/tests/fixtures/depth"
echo "fixtures written to crates/fluxd-engine/tests/fixtures/{pipeline,redux,lora,safety,fp8,canny,depth}"
