#!/usr/bin/env bash
# One FLUX denoising step of the same GGUF file in fluxd, stable-diffusion.cpp and diffusers'
# GGUF path: same machine, same threads, one run, ratios printed.
#
# The file is a random FLUX transformer with FLUX.1's real widths (hidden 3072 = 24 heads of
# 128, T5 width 4096, CLIP width 768: what stable-diffusion.cpp hard-codes) and a few blocks,
# written in city96's layout by fluxd; stable-diffusion.cpp runs without T5 and so feeds 256
# zero text tokens, and fluxd and diffusers get 256 text tokens too. stable-diffusion.cpp also
# needs a CLIP-L and a decoder: a random full-size CLIP-L and a random tiny autoencoder are
# written, not timed (its log gives the sampling time alone).
#
# Usage: scripts/bench-gguf.sh [REF_VENV]
# Env: TYPES ("Q8_0 Q4_K"), WIDTH/HEIGHT (512), DOUBLE (1), SINGLE (2) blocks, RUNS (2),
#      THREADS (all CPUs), SDCPP_VENV (target/bench-gguf/venv: stable-diffusion-cpp-python 0.4.7
#      is built there on first use, which takes a while), KEEP=1 keeps the files.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ref=$("$root/scripts/reference/setup_venv.sh" "${1:-$root/.venv-ref}")
TYPES=${TYPES:-"Q8_0 Q4_K"}; W=${WIDTH:-512}; H=${HEIGHT:-512}; TXT=256
DOUBLE=${DOUBLE:-1}; SINGLE=${SINGLE:-2}; RUNS=${RUNS:-2}; THREADS=${THREADS:-$(nproc)}
sdvenv=${SDCPP_VENV:-$root/target/bench-gguf/venv}
if [ ! -x "$sdvenv/bin/python" ] || ! "$sdvenv/bin/python" -c "import stable_diffusion_cpp" 2>/dev/null; then
  echo "building stable-diffusion-cpp-python 0.4.7 in $sdvenv (once)" >&2
  python3 -m venv "$sdvenv"
  "$sdvenv/bin/pip" install --quiet --disable-pip-version-check stable-diffusion-cpp-python==0.4.7
fi
work=$(mktemp -d)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
cargo build --quiet --release -p fluxd
cargo build --quiet --release -p fluxd-engine --example write_random_gguf
"$ref/bin/python" scripts/reference/gguf_bench.py encoders "$work/enc"
bench=scripts/reference/gguf_bench.py
for ty in $TYPES; do
  d="$work/$ty"; mkdir -p "$d"
  ./target/release/examples/write_random_gguf flux "$d/flux.gguf" "$ty" "$DOUBLE" "$SINGLE" 2>/dev/null
  for k in exact int8; do
    RAYON_NUM_THREADS=$THREADS ./target/release/fluxd bench --transformer "$d/flux.gguf" \
      --width "$W" --height "$H" --max-sequence-length "$TXT" --runs "$RUNS" --cpu-kernels "$k" \
      > "$d/fluxd-$k.json"
  done
  "$sdvenv/bin/python" "$bench" sdcpp "$d/flux.gguf" "$work/enc/clip_l.safetensors" \
    "$work/enc/taef1.safetensors" "$W" "$H" "$RUNS" "$THREADS" > /dev/null 2> "$d/sdcpp.log"
  "$ref/bin/python" "$bench" diffusers "$d/flux.gguf" "$d" "$W" "$H" "$TXT" "$RUNS" "$THREADS" \
    2>/dev/null > "$d/diffusers.json"
done
python3 - "$work" "$RUNS" $TYPES <<'PY'
import json, re, statistics, sys
work, runs, types = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for ty in types:
    d = f"{work}/{ty}"
    ex, i8 = (json.load(open(f"{d}/fluxd-{k}.json")) for k in ("exact", "int8"))
    df = json.load(open(f"{d}/diffusers.json"))
    log = open(f"{d}/sdcpp.log").read()
    sd = [float(x) * 1e3 for x in re.findall(r"sampling completed, taking ([0-9.]+)s", log)]
    if len(sd) < 2:
        sys.exit(f"{ty}: no sampling times in the stable-diffusion.cpp log:\n{log[-2000:]}")
    sd_ms = statistics.median(sd[1:])
    print(f"{ty}: {ex['image_tokens']} image + {ex['text_tokens']} text tokens, "
          f"file {ex['weight_bytes'] / 2**20:.0f} MiB, {ex['cpus']} CPUs")
    for name, ms in [("fluxd exact", ex["step_ms_median"]), ("fluxd int8", i8["step_ms_median"]),
                     ("stable-diffusion.cpp", sd_ms), ("diffusers GGUF", df["step_ms_median"])]:
        print(f"  {name:22s} {ms:9.0f} ms/step   fluxd exact / this = {ex['step_ms_median'] / ms:5.2f}"
              f"   fluxd int8 / this = {i8['step_ms_median'] / ms:5.2f}")
    print(f"  fluxd peak RSS {ex['peak_rss_bytes'] / 2**20:.0f} MiB (exact), "
          f"{i8['peak_rss_bytes'] / 2**20:.0f} MiB (int8), file {ex['weight_bytes'] / 2**20:.0f} MiB")
PY
