#!/usr/bin/env bash
# Prepares scripts/gpu-check.sh for a lent GPU machine, which has no cargo and no registries:
# everything it needs goes to target/gpu-carry/ (the device tool's `carry`, under its 64 MiB):
#   fluxd.gz   the release binary built with `--features cuda` for compute capability 9.0
#              (sm_90a: H100, H200), stripped and gzipped; CUDA 13.0 (driver 580 runs it)
#   whl/       the Python wheels the machine's image lacks (diffusers and its one missing need)
#   stubs/     the link stubs and libcudart, for the dry run on this machine only
# then dry-runs the GPU check on this machine's CPU (scripts/gpu-check.sh --dry-run).
# Env: FLUXD_GPU_PROFILE=dev builds in the dev profile instead (engine and dependencies at
# opt-level 3 as in CI, reusing scripts/cuda-check.sh's build and its compiled kernels; the
# release profile compiles candle's kernels once more); FLUXD_REF_VENV the reference venv for the dry run (default .venv-ref, made if absent);
# FLUXD_SKIP_DRY_RUN=1 skips the dry run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/cuda-env.sh
source scripts/cuda-env.sh
carry=target/gpu-carry
rm -rf "$carry"
mkdir -p "$carry/whl" "$carry/stubs"

profile=${FLUXD_GPU_PROFILE:-cuda-release}
echo "== building fluxd --features cuda (profile $profile, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
start=$(date +%s)
cargo build --locked --profile "$profile" -p fluxd --features cuda --bins
echo "   built in $(( $(date +%s) - start )) s"
dir=$profile
[ "$profile" = dev ] && dir=debug
bin=target/$dir/fluxd
strip -o "$carry/fluxd" "$bin"
gzip -9 "$carry/fluxd"
echo "   binary $(du -h "$bin" | cut -f1), stripped and gzipped $(du -h "$carry/fluxd.gz" | cut -f1)"
echo "   needs: $(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | paste -sd' ')"
echo "   newest glibc symbol: $(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)"

cp "$CUDA_HOME"/lib/stubs/*.so "$CUDA_HOME/lib/libcudart.so.13" "$carry/stubs/"

# diffusers as pinned for the fixtures; importlib_metadata is the one need of diffusers that
# the GPU image lacks (its package list is in the device tool's KINDS.md); 8.7 needs only zipp,
# which the image has (newer releases also need lazy-importer).
python3 -m pip download -q --no-cache-dir --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 -d "$carry/whl" \
    "$(grep '^diffusers==' scripts/reference/requirements.txt)" importlib_metadata==8.7.0
ls "$carry/whl"

size=$(du -sb "$carry" | cut -f1)
echo "== carry: $carry $(( size / 1024 / 1024 )) MiB (limit 64 MiB with the working tree)"
[ "$size" -lt $(( 56 * 1024 * 1024 )) ] || { echo "carry too large" >&2; exit 1; }

if [ "${FLUXD_SKIP_DRY_RUN:-0}" != 1 ]; then
    echo "== dry run (CPU, small preset)"
    venv=$(scripts/reference/setup_venv.sh "${FLUXD_REF_VENV:-$root/.venv-ref}")
    FLUXD_REF_PYTHON="$venv/bin/python" scripts/gpu-check.sh --dry-run
fi
