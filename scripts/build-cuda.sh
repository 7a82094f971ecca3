#!/usr/bin/env bash
# Builds tqa with CUDA for compute capability 9.0 (Hopper: H100/H200) on a machine that has
# neither a GPU nor a system CUDA toolkit: NVIDIA's compiler, headers and libraries come from
# PyPI wheels. The CPU build and CI do not need any of this.
#
#   scripts/build-cuda.sh            ->  target/cuda/release/tqa   (run it with --device cuda)
#   scripts/build-cuda.sh --tests    ->  also target/cuda/gpu-tests/{decoder,generation}, the
#                                        tests that run tqa's model on the GPU when
#                                        TQA_TEST_DEVICE=cuda (scripts/gpu-check.sh runs them)
#
# Env: TQA_CUDA_TOOLKIT  where the toolkit is assembled (default ~/.cache/tqa/cuda-13); if it
#                        points at an existing CUDA 13 toolkit (bin/nvcc, no .assembled stamp),
#                        that toolkit is used as it is.
#      CUDA_COMPUTE_CAP  default 90 (candle-kernels then compiles for sm_90a).
#
# Toolkit: CUDA 13.0, the packages and versions that PyPI's cuda-toolkit==13.0.3.0 pins. The
# CUDA 13 wheels (unlike nvidia-cuda-nvcc-cu12, which has ptxas but no nvcc and no cicc) carry
# the whole compiler; every one of them unpacks into nvidia/cu13/, which is laid out like a
# toolkit (bin, include, lib, nvvm) and is moved here to $prefix. lib/ becomes lib64/ (lib stays
# as a link for nvcc.profile), unversioned .so links are added for the linker, and
# lib64/stubs/libcuda.so is a stub generated from cuda.h (soname libcuda.so.1, no code) because
# no wheel ships the driver library that cudarc links against; the real one comes from the
# NVIDIA driver on the GPU machine.
#
# Why 13.0 and not a newer 13.x: candle loads most of its kernels as PTX, which the driver
# compiles when they are loaded, and a driver only accepts PTX from toolkits no newer than
# itself. PTX from 13.0 loads on every CUDA 13 driver (>= 580); cudarc 0.19.10 also knows CUDA
# versions only up to 13.4.
#
# Running the binary needs, on the GPU machine: an NVIDIA driver >= 580 (CUDA 13; a 570 or
# older CUDA 12 driver cannot run it) and the CUDA 13 libraries it links dynamically:
# libcudart.so.13, libcublas.so.13 (which loads libcublasLt.so.13) and libcurand.so.10, plus
# libcuda.so.1 from the driver. If they are not on the loader's path, put the directory that
# holds them in LD_LIBRARY_PATH (e.g. nvidia/cu13/lib of a pip install of the wheels below).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  nvidia-cuda-nvcc==13.0.88     # bin/: nvcc, nvcc.profile, cudafe++, ptxas, fatbinary, nvlink
  nvidia-nvvm==13.0.88          # nvvm/bin/cicc, nvvm/libdevice
  nvidia-cuda-crt==13.0.88      # include/crt
  nvidia-cuda-runtime==13.0.96  # cuda.h, cuda_runtime.h, libcudart
  nvidia-cuda-cccl==13.0.85     # include/cccl (libcu++, CUB, Thrust)
  nvidia-cuda-nvrtc==13.0.88    # libnvrtc
  nvidia-cublas==13.1.1.3       # libcublas, libcublasLt
  nvidia-curand==10.4.0.35      # libcurand
)
prefix="${TQA_CUDA_TOOLKIT:-$HOME/.cache/tqa/cuda-13}"
prefix="${prefix%/}"
stamp="$prefix/.assembled"
cap="${CUDA_COMPUTE_CAP:-90}"

# What candle-kernels' nvcc runs and cudarc/candle-kernels link need.
required=(
  bin/nvcc bin/nvcc.profile bin/cudafe++ bin/ptxas bin/fatbinary bin/nvlink
  nvvm/bin/cicc nvvm/libdevice/libdevice.10.bc
  include/cuda.h include/cuda_runtime.h include/cuda_fp16.h include/cuda_bf16.h
  include/crt/host_config.h include/cccl/cuda/std/cstdint include/curand_kernel.h
  lib64/libcudart.so lib64/libcublas.so lib64/libcublasLt.so lib64/libcurand.so
  lib64/libnvrtc.so lib64/stubs/libcuda.so
)

die() { echo "error: $*" >&2; exit 1; }
case "${1:-}" in
  "" | --tests) ;;
  *) die "unknown argument $1; usage: scripts/build-cuda.sh [--tests]" ;;
esac

missing_in() {  # prints the required files missing under $1
  local f
  for f in "${required[@]}"; do [ -e "$1/$f" ] || printf '%s ' "$f"; done
}

assemble() {  # $1: an empty directory to build the toolkit in
  local stage="$1" root lib f
  command -v python3 >/dev/null || die "python3 (with pip) is needed to fetch the CUDA wheels."
  command -v gcc >/dev/null && command -v g++ >/dev/null ||
    die "gcc and g++ are needed (nvcc's host compiler, and for the libcuda stub)."
  echo "assembling a CUDA 13.0 toolkit from PyPI in $prefix …" >&2
  # --no-deps: the versions are pinned above; the wheels' own dependencies are unpinned.
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    --no-deps --only-binary=:all: \
    --target "$stage/wheels" "${packages[@]}" ||
    die "pip could not install ${packages[*]}"
  root="$stage/wheels/nvidia/cu13"
  [ -d "$root" ] || die "the wheels did not unpack into nvidia/cu13/ (pip target: $stage/wheels)."
  mkdir -p "$stage/toolkit"
  for f in "$root"/*; do mv "$f" "$stage/toolkit/"; done
  [ -d "$stage/toolkit/lib" ] || die "the wheels carried no lib/ directory."
  mv "$stage/toolkit/lib" "$stage/toolkit/lib64"
  ln -s lib64 "$stage/toolkit/lib"  # nvcc.profile: -L$(TOP)/lib, $(TOP)/lib/stubs
  # The linker looks for unversioned names (libcudart.so); the wheels ship libcudart.so.13.
  for lib in "$stage"/toolkit/lib64/*.so.*; do
    f="${lib%%.so.*}.so"
    [ -e "$f" ] || ln -s "$(basename "$lib")" "$f"
  done
  # libcuda.so belongs to the driver; cudarc links it (-lcuda). An empty-bodied function for
  # every cu* name in cuda.h satisfies the linker, and the soname makes the binary ask for the
  # real libcuda.so.1 at run time.
  [ -f "$stage/toolkit/include/cuda.h" ] || die "no cuda.h in the wheels (nvidia-cuda-runtime)."
  mkdir -p "$stage/toolkit/lib64/stubs"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$stage/toolkit/include/cuda.h" | sort -u |
    sed 's/.*/void &(void) {}/' |
    gcc -x c -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "$stage/toolkit/lib64/stubs/libcuda.so" - ||
    die "could not build the libcuda stub."
  ln -s libcuda.so "$stage/toolkit/lib64/stubs/libcuda.so.1"
  # Record which wheel gave what, then drop pip's bookkeeping.
  python3 -m pip list --disable-pip-version-check --path "$stage/wheels" 2>/dev/null |
    grep -i nvidia >"$stage/toolkit/PACKAGES" || true
  rm -rf "$stage/wheels"

  f="$(missing_in "$stage/toolkit")"
  [ -z "$f" ] || die "the CUDA wheels lack: $f(looked in $stage/toolkit)."
  # Compile one kernel the way candle-kernels does (cicc, ptxas, fatbinary, host gcc, headers).
  mkdir -p "$stage/smoke"
  cat >"$stage/smoke/k.cu" <<'EOF'
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda/std/cstdint>
extern "C" __global__ void k(__nv_bfloat16 *x, cuda::std::int32_t n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = __float2bfloat16(__bfloat162float(x[i]) * 2.0f);
}
EOF
  "$stage/toolkit/bin/nvcc" --ptx -arch="compute_$cap" -std=c++17 -O3 \
    -o "$stage/smoke/k.ptx" "$stage/smoke/k.cu" &&
    "$stage/toolkit/bin/nvcc" -c -arch="sm_$cap" -std=c++17 -O3 -Xcompiler -fPIC \
      -o "$stage/smoke/k.o" "$stage/smoke/k.cu" ||
    die "the assembled nvcc cannot compile a test kernel (toolkit left in $stage/toolkit)."
  rm -rf "$stage/smoke"
  printf '%s\n' "${packages[@]}" >"$stage/toolkit/.assembled"
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(printf '%s\n' "${packages[@]}")" ]; then
  :  # assembled earlier, from these packages
elif [ -f "$stamp" ] || [ ! -e "$prefix" ]; then
  # Not there yet, or assembled by this script from other versions: (re)build it next to the
  # final place and swap it in, so that an interrupted run never leaves a half toolkit.
  stage="$prefix.partial"
  rm -rf "$stage"
  mkdir -p "$stage"
  assemble "$stage"
  if [ -e "$prefix" ]; then rm -rf "$prefix"; fi
  mv "$stage/toolkit" "$prefix"
  rmdir "$stage"
elif [ -x "$prefix/bin/nvcc" ]; then
  echo "using the CUDA toolkit in $prefix as it is (no $stamp)" >&2
else
  die "$prefix exists but is neither a toolkit assembled by this script nor one with bin/nvcc; remove it or point TQA_CUDA_TOOLKIT elsewhere."
fi

if [ -f "$stamp" ]; then
  missing="$(missing_in "$prefix")"
  [ -z "$missing" ] || die "$prefix lacks $missing- remove $prefix and rerun to reassemble it."
fi

export CUDA_HOME="$prefix" CUDA_PATH="$prefix" PATH="$prefix/bin:$PATH" NVCC="$prefix/bin/nvcc"
export CUDA_COMPUTE_CAP="$cap"
export LIBRARY_PATH="$prefix/lib64:$prefix/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
# The GPU machine's CPU may lack this one's features: build for a widely shared x86-64 level
# instead of .cargo/config.toml's target-cpu=native.
export RUSTFLAGS="-C target-cpu=x86-64-v3"
[ -x "$NVCC" ] || die "no nvcc in $prefix/bin."
nvcc --version | tail -n 2 | head -n 1 >&2
cargo build --release --features cuda --target-dir target/cuda
if [ "${1:-}" = "--tests" ]; then
  mkdir -p target/cuda/gpu-tests
  for test in decoder generation; do
    exe="$(cargo test --release --features cuda --target-dir target/cuda --no-run --test "$test" \
      --message-format=json | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
    [ -x "$exe" ] || die "cargo built no executable for tests/$test.rs"
    cp "$exe" "target/cuda/gpu-tests/$test"
  done
  echo "built target/cuda/gpu-tests/{decoder,generation}" >&2
fi
echo "built target/cuda/release/tqa (CUDA 13, compute capability $CUDA_COMPUTE_CAP; needs NVIDIA driver >= 580)" >&2
