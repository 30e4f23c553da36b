#!/usr/bin/env bash
# Per-step time of fluxd vs diffusers on the same medium random FLUX model, same settings, same
# machine, measured in one run. Usage: scripts/bench.sh [VENV] (the reference venv; made if absent)
# Env: WIDTH, HEIGHT (512), STEPS (4), MSL (128), RUNS (2), THREADS (all CPUs), LORA_RANK (16).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$("$root/scripts/reference/setup_venv.sh" "${1:-$root/.venv-ref}")
W=${WIDTH:-512}; H=${HEIGHT:-512}; STEPS=${STEPS:-4}; MSL=${MSL:-128}; RUNS=${RUNS:-2}
THREADS=${THREADS:-$(nproc)}; RANK=${LORA_RANK:-16}
work=$(mktemp -d)
cargo build --quiet --release -p fluxd
./target/release/fluxd model init-tiny "$work/medium" --preset medium --seed 0 >/dev/null
RAYON_NUM_THREADS=$THREADS ./target/release/fluxd bench --model "$work/medium" --width "$W" \
  --height "$H" --steps "$STEPS" --max-sequence-length "$MSL" --runs "$RUNS" \
  --lora "$work/lora.safetensors" --random-lora-rank "$RANK" > "$work/fluxd.json"
"$venv/bin/python" scripts/reference/pipeline_bench.py "$work/medium" "$W" "$H" "$STEPS" "$MSL" \
  "$RUNS" "$THREADS" "$work/lora.safetensors" 2>/dev/null > "$work/diffusers.json"
python3 - "$work/fluxd.json" "$work/diffusers.json" <<'PY'
import json, sys
f, d = (json.load(open(p)) for p in sys.argv[1:3])
print(f"image tokens {f['image_tokens']}, text tokens {f['max_sequence_length']}, weights {f['weight_bytes']/2**20:.1f} MiB")
print(f"per step   fluxd {f['step_ms_median']:8.1f} ms   diffusers {d['step_ms_median']:8.1f} ms   ratio fluxd/diffusers {f['step_ms_median']/d['step_ms_median']:.2f}")
fl, dl = f["lora"], d["lora"]
print(f"with LoRA  fluxd {fl['step_ms_median']:8.1f} ms   diffusers {dl['step_ms_median']:8.1f} ms   ratio {fl['step_ms_median']/dl['step_ms_median']:.2f}")
print(f"LoRA step overhead  fluxd x{fl['step_overhead_ratio']:.3f}   diffusers x{dl['step_overhead_ratio']:.3f}   switch {fl['switch_ms_median']:.3f} ms, load {fl['load_ms']:.1f} ms (rank {fl['rank']}, {fl['modules']} modules)")
print(f"peak RSS   fluxd {f['peak_rss_bytes']/2**20:.0f} MiB   diffusers {d['peak_rss_bytes']/2**20:.0f} MiB")
PY
