#!/usr/bin/env bash
# Regenerates the GGUF reference fixtures (crates/fluxd-engine/tests/fixtures/gguf): writes the
# `quant` tiny model with our own `init-tiny`, one GGUF file per type with our own
# `model quantize`, and a LoRA, then runs diffusers/transformers on the dequantized files
# (scripts/reference/gguf_fixtures.py). Usage: scripts/reference/make_gguf_fixtures.sh [VENV]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$("$root/scripts/reference/setup_venv.sh" "${1:-$root/.venv-ref}")
seed=7
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --quiet -p fluxd
fluxd="$root/target/debug/fluxd"
"$fluxd" model init-tiny "$work/model" --preset quant --seed "$seed" >/dev/null
for ty in F32 F16 BF16 Q8_0 Q5_0 Q5_1 Q4_0 Q4_1 Q6_K Q5_K Q4_K Q3_K Q2_K; do
  "$fluxd" model quantize "$work/model/transformer" "$work/flux-$ty.gguf" --type "$ty" >/dev/null
done
for ty in F16 Q8_0 Q4_0; do
  "$fluxd" model quantize "$work/model/text_encoder_2" "$work/t5-$ty.gguf" --type "$ty" >/dev/null
done
cargo run --quiet -p fluxd-engine --example write_random_loras -- "$work/loras" 11 quant >/dev/null
FLUXD_TINY_SEED=$seed "$venv/bin/python" "$root/scripts/reference/gguf_fixtures.py" \
  "$work" "$root/crates/fluxd-engine/tests/fixtures/gguf"
