# Sourced (not run) by the scripts that build fluxd with `--features cuda` on a machine without a GPU
# or a system CUDA toolkit: scripts/cuda-check.sh (CI) and scripts/gpu-check-prepare.sh.
#
# It installs the parts of the CUDA 13.0 toolkit that candle 0.11.1 needs to build (nvcc, ptxas,
# cicc, the CUDA runtime and C++ headers, libcudart) from NVIDIA's PyPI wheels into
# $FLUXD_CUDA_HOME (default target/cuda-13.0, so it lives and dies with the build cache), once, and
# exports what candle's build scripts read:
#   CUDA_HOME        the toolkit root (cudarc's linker search path, cudaforge's nvcc)
#   PATH             with its bin/ first (cudarc runs `nvcc --version` to pick its API version)
#   CUDAFORGE_THREADS every core unless set: how many nvcc candle-kernels' build runs at once
#   CUDA_COMPUTE_CAP 90 unless set: candle-kernels then compiles for compute_90a/sm_90a (Hopper:
#                    H100, H200) and nothing else; there is no GPU here to ask.
#
# Why 13.0 and not the newest: the lent GPU machines run driver 580 (CUDA 13.0), and candle loads its
# kernels as PTX that the driver compiles at start; PTX from a newer nvcc (ISA 9.1+) is refused by a
# 13.0 driver. cudarc 0.19.10 knows 13.0.
#
# Link stubs: cudarc links libcuda, libcublas, libcublasLt, libcurand and libnvrtc dynamically. The
# driver (libcuda) cannot be installed without a GPU, and the cuBLAS wheels are ~700 MB for a library
# used only on the GPU machine, which brings its own. So, like the toolkit's own lib/stubs/libcuda.so,
# we link against stub libraries that carry the real sonames and export every function cudarc
# declares for them (names read from cudarc's bindings); at run time the dynamic loader finds the real
# libraries by soname. The stubs are never loaded.

FLUXD_CUDA_VERSION=13.0
# One pinned version per wheel (CUDA 13.0 update 2).
FLUXD_CUDA_WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
# The cudarc version in Cargo.lock, whose bindings name the stubs' symbols.
FLUXD_CUDARC=cudarc-0.19.10

fluxd_cuda_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FLUXD_CUDA_HOME="${FLUXD_CUDA_HOME:-$fluxd_cuda_root/target/cuda-$FLUXD_CUDA_VERSION}"

# Writes a stub shared library `$1` with soname `$2` exporting every function declared in the
# cudarc binding file `$3` (the `fn name(` lines of its `extern "C"` blocks).
fluxd_cuda_stub() {
    local out=$1 soname=$2 bindings=$3 c
    c=$(mktemp --suffix=.c)
    grep -oP '^\s+fn \K\w+(?=\()' "$bindings" | sort -u \
        | sed 's/.*/int &(void) { return 999; }/' >"$c"
    [ -s "$c" ] || { echo "cuda-env: no functions found in $bindings" >&2; rm -f "$c"; return 1; }
    gcc -shared -fPIC -Wl,-soname,"$soname" -o "$out" "$c"
    rm -f "$c"
}

fluxd_cuda_install() {
    local home=$FLUXD_CUDA_HOME
    if [ -x "$home/bin/nvcc" ] && [ -f "$home/.complete" ]; then
        return 0
    fi
    echo "cuda-env: installing CUDA $FLUXD_CUDA_VERSION (nvcc, headers, cudart) into $home" >&2
    rm -rf "$home"
    local dl
    dl=$(mktemp -d)
    python3 -m pip download -q --no-cache-dir --no-deps --only-binary=:all: \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
        -d "$dl" "${FLUXD_CUDA_WHEELS[@]}" || { rm -rf "$dl"; return 1; }
    mkdir -p "$home"
    # The wheels put the toolkit under nvidia/cu13/ in the layout nvcc.profile expects.
    python3 - "$dl" "$home" <<'PY' || { rm -rf "$dl"; return 1; }
import os, pathlib, stat, sys, zipfile
dl, home = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
prefix = "nvidia/cu13/"
for wheel in sorted(dl.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            rel = info.filename[len(prefix):]
            # Not used by nvcc's compile steps or by the link (cicc is standalone).
            if rel.startswith((".metadata/", "lib/cmake/", "lib/libnvvm", "lib/libcudart_static")):
                continue
            dest = home / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                out.write(src.read())
            mode = (info.external_attr >> 16) & 0o777
            if mode & stat.S_IXUSR or rel.startswith(("bin/", "nvvm/bin/")):
                os.chmod(dest, 0o755)
PY
    rm -rf "$dl"
    # The linker wants the unversioned name.
    ln -sf libcudart.so.13 "$home/lib/libcudart.so"
    local cudarc
    cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$FLUXD_CUDARC" 2>/dev/null | head -n1)
    if [ -z "$cudarc" ]; then
        (cd "$fluxd_cuda_root" && cargo fetch --locked >/dev/null) || return 1
        cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$FLUXD_CUDARC" | head -n1)
    fi
    mkdir -p "$home/lib/stubs"
    fluxd_cuda_stub "$home/lib/stubs/libcuda.so" libcuda.so.1 "$cudarc/src/driver/sys/mod.rs" &&
        fluxd_cuda_stub "$home/lib/stubs/libcublas.so" libcublas.so.13 "$cudarc/src/cublas/sys/mod.rs" &&
        fluxd_cuda_stub "$home/lib/stubs/libcublasLt.so" libcublasLt.so.13 "$cudarc/src/cublaslt/sys/mod.rs" &&
        fluxd_cuda_stub "$home/lib/stubs/libcurand.so" libcurand.so.10 "$cudarc/src/curand/sys/mod.rs" &&
        fluxd_cuda_stub "$home/lib/stubs/libnvrtc.so" libnvrtc.so.13 "$cudarc/src/nvrtc/sys/mod.rs" ||
        return 1
    touch "$home/.complete"
    echo "cuda-env: $(du -sh "$home" | cut -f1) in $home" >&2
}

fluxd_cuda_install || return 1 2>/dev/null || exit 1
export CUDA_HOME="$FLUXD_CUDA_HOME"
export PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# candle-kernels' build script compiles its .cu files through cudaforge, which runs nvcc on half
# the cores unless told otherwise: one nvcc at a time on a 2-core CI machine, while nothing else can
# build (candle-core waits for those kernels). Every core, then.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
