#!/usr/bin/env bash
# The prepared GPU check (issue J): fluxd against diffusers on a random FLUX.1-dev-shaped model,
# 1024x1024, 28 steps, bf16, in one call of the device tool, then fluxd once more with the same
# transformer quantized to GGUF Q8_0 (by `fluxd model quantize`, as issue G's users hold it), then
# a table.
#
# Here, first: scripts/gpu-check-prepare.sh (builds the CUDA binary, fetches the wheels, dry-runs
# this script). On the GPU machine, from the repo root, with target/gpu-carry carried:
#     bash scripts/gpu-check.sh            (device tool: carry ["target/gpu-carry"], timeout_s 560)
# Dry run on this machine (CPU, the small preset, the same steps; no GPU needed):
#     scripts/gpu-check.sh --dry-run
# Logs and JSON go to $OUT (the device tool's folder) or $TMPDIR/fluxd-gpu-check/out.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
gc=target/gpu-carry
mode=gpu
[ "${1:-}" = "--dry-run" ] && mode=dry
if [ "$mode" = gpu ]; then
    py=python3; dev=cuda; preset=dev; W=1024; H=1024; STEPS=28; MSL=512
else
    py=${FLUXD_REF_PYTHON:-$root/.venv-ref/bin/python}; dev=cpu; preset=small
    W=256; H=256; STEPS=2; MSL=64
fi
work=${TMPDIR:-/tmp}/fluxd-gpu-check
rm -rf "$work"; mkdir -p "$work"
out=${OUT:-$work/out}; mkdir -p "$out"
log() { printf '== %s  %s\n' "$(date +%T)" "$*"; }
[ -f "$gc/fluxd.gz" ] || { echo "no $gc/fluxd.gz: run scripts/gpu-check-prepare.sh first" >&2; exit 1; }

log "wheels (diffusers and what the machine lacks)"
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" "$gc"/whl/*.whl
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import diffusers, torch, transformers; print("diffusers", diffusers.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'

log "binary"
gunzip -c "$gc/fluxd.gz" > "$work/fluxd"
chmod +x "$work/fluxd"
if [ "$mode" = gpu ]; then
    # cuBLAS, cuRAND, NVRTC and the CUDA runtime come from torch's NVIDIA wheels, libcuda from
    # the driver.
    site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    libs=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do [ -d "$d" ] && libs="$libs:$d"; done
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
else
    # The CUDA binary runs here too, on the CPU: the link stubs stand in for the GPU libraries
    # (never called unless a CUDA device is opened).
    mkdir -p "$work/libs"
    for l in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
        ln -sf "$root/$gc/stubs/${l%%.so*}.so" "$work/libs/$l"
    done
    ln -sf "$root/$gc/stubs/libcudart.so.13" "$work/libs/libcudart.so.13"
    libs="$work/libs"
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$work/fluxd" | grep 'not found'; then
    echo "libraries missing (above); LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2
    exit 1
fi
ldd "$work/fluxd" | grep -E 'cuda|cublas|curand|nvrtc|libstdc|libc\.so' | sed 's/^/    /'

log "model: init-tiny, then random FLUX.1-dev-shaped weights ($preset)"
"$work/fluxd" model init-tiny "$work/model" --seed 1 >/dev/null
"$py" scripts/gpu/make_model.py "$work/model" --preset "$preset" --device "$dev"
du -sh "$work/model"

sample_mem() { # $1: file; samples GPU memory until killed
    if [ "$mode" = gpu ]; then
        while nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$1"; do sleep 0.2; done
    fi
}

log "fluxd ${W}x${H}, $STEPS steps, bf16 on $dev"
sample_mem "$out/fluxd_mem.txt" & sampler=$!
timeout 300 "$work/fluxd" bench --model "$work/model" --device "$dev" --dtype bf16 --width "$W" \
    --height "$H" --steps "$STEPS" --runs 1 --max-sequence-length "$MSL" \
    > "$out/fluxd.json" 2> "$out/fluxd.log" || { echo "fluxd failed:"; tail -n 30 "$out/fluxd.log"; }
kill "$sampler" 2>/dev/null || true
cat "$out/fluxd.json"

log "diffusers ${W}x${H}, $STEPS steps, bf16 on $dev"
sample_mem "$out/diffusers_mem.txt" & sampler=$!
timeout 240 "$py" scripts/gpu/diffusers_bench.py "$work/model" "$W" "$H" "$STEPS" "$MSL" \
    --device "$dev" > "$out/diffusers.json" 2> "$out/diffusers.log" \
    || { echo "diffusers failed:"; tail -n 30 "$out/diffusers.log"; }
kill "$sampler" 2>/dev/null || true
cat "$out/diffusers.json"

# Last, so a slow quantization never costs the bf16 comparison above.
log "fluxd ${W}x${H}, $STEPS steps, transformer in GGUF Q8_0 on $dev"
if timeout 150 "$work/fluxd" model quantize "$work/model/transformer" "$work/q8_0.gguf" \
    --type Q8_0 2> "$out/quantize.log"; then
    tail -n 1 "$out/quantize.log"
    sample_mem "$out/fluxd_q8_0_mem.txt" & sampler=$!
    timeout 200 "$work/fluxd" bench --model "$work/model" --transformer "$work/q8_0.gguf" \
        --device "$dev" --dtype bf16 --width "$W" --height "$H" --steps "$STEPS" --runs 1 \
        --max-sequence-length "$MSL" > "$out/fluxd_q8_0.json" 2> "$out/fluxd_q8_0.log" \
        || { echo "fluxd Q8_0 failed:"; tail -n 30 "$out/fluxd_q8_0.log"; }
    kill "$sampler" 2>/dev/null || true
    cat "$out/fluxd_q8_0.json"
else
    echo "quantizing failed:"; tail -n 30 "$out/quantize.log"
fi

log "table ($(uname -n), $mode)"
"$py" scripts/gpu/table.py "$out/fluxd.json" "$out/diffusers.json" \
    "$out/fluxd_mem.txt" "$out/diffusers_mem.txt" "$STEPS" \
    "$out/fluxd_q8_0.json" "$out/fluxd_q8_0_mem.txt"
