#!/usr/bin/env bash
# Builds tqa with CUDA for compute capability 9.0 (Hopper: H100/H200) on a machine that has
# neither a GPU nor a system CUDA toolkit: NVIDIA's compiler, headers and runtime come from PyPI.
# The CPU build and CI do not need any of this.
#
#   scripts/build-cuda.sh            ->  target/cuda/release/tqa   (run it with --device cuda)
#
# Env: TQA_CUDA_TOOLKIT (where the toolkit is assembled, default ~/.cache/tqa/cuda-12),
#      CUDA_COMPUTE_CAP (default 90).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="${TQA_CUDA_TOOLKIT:-$HOME/.cache/tqa/cuda-12}"
packages=(nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12 nvidia-cuda-cccl-cu12
          nvidia-cuda-nvrtc-cu12 nvidia-cublas-cu12 nvidia-curand-cu12)

if [ ! -e "$prefix/.assembled" ] && [ ! -x "$prefix/bin/nvcc" ]; then
  echo "assembling a CUDA toolkit from PyPI in $prefix …" >&2
  python3 -m pip install --quiet --disable-pip-version-check --target "$prefix/py" "${packages[@]}"
  mkdir -p "$prefix/include" "$prefix/lib64"
  # nvcc finds cicc and its own headers relative to its real location, so bin stays inside the
  # package; the other packages' headers and libraries are gathered into one include/ and lib64/.
  ln -sfn "$prefix/py/nvidia/cuda_nvcc/bin" "$prefix/bin"
  # -f: every package carries its own include/__init__.py; those collide harmlessly.
  for dir in "$prefix"/py/nvidia/*/include; do cp -rsf "$dir"/. "$prefix/include/"; done
  for dir in "$prefix"/py/nvidia/*/lib; do
    for lib in "$dir"/*.so*; do ln -sf "$lib" "$prefix/lib64/"; done
  done
  # The linker looks for unversioned names (libcudart.so); the wheels ship libcudart.so.12.
  for lib in "$prefix"/lib64/*.so.*; do
    plain="${lib%%.so.*}.so"
    [ -e "$plain" ] || ln -s "$lib" "$plain"
  done
  touch "$prefix/.assembled"
fi

export CUDA_HOME="$prefix" CUDA_PATH="$prefix" PATH="$prefix/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export NVCC_PREPEND_FLAGS="-I$prefix/include ${NVCC_PREPEND_FLAGS:-}"
export LIBRARY_PATH="$prefix/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
# The GPU machine's CPU may lack this one's features: build for a widely shared x86-64 level
# instead of .cargo/config.toml's target-cpu=native.
export RUSTFLAGS="-C target-cpu=x86-64-v3"
if ! command -v nvcc >/dev/null; then
  # Seen here: nvidia-cuda-nvcc-cu12 12.4.131 and 12.9.86 ship ptxas and nvvm but not the nvcc
  # driver itself, so candle's kernels cannot be compiled from these wheels alone.
  echo "error: no nvcc in $prefix/bin (the PyPI wheels provided: $(ls "$prefix/bin" | tr '\n' ' '))." >&2
  echo "Install a CUDA 12 toolkit that includes nvcc and set TQA_CUDA_TOOLKIT to it, or point PATH at its nvcc." >&2
  exit 1
fi
nvcc --version | tail -n 1 >&2
cargo build --release --features cuda --target-dir target/cuda
echo "built target/cuda/release/tqa (CUDA, compute capability $CUDA_COMPUTE_CAP)" >&2
