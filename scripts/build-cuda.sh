#!/usr/bin/env bash
# Builds the CUDA `orthopt` (feature `cuda`) into its own target directory, so the CPU build in
# target/ is never invalidated. Uses a system CUDA toolkit when there is one (nvcc on PATH or
# in /usr/local/cuda), else installs CUDA 13.0 from PyPI first (scripts/cuda-toolkit.sh).
#   ORTHOPT_CUDA_DIR   where the toolkit and the target directory live (default: .cuda)
#   CUDA_COMPUTE_CAP   GPU architecture for candle's kernels (default 90: H100/H200)
# Prints the binary's path last. Extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${ORTHOPT_CUDA_DIR:-$PWD/.cuda}"
mkdir -p "$dir"
# The physical path: the build scripts see it in CUDA_ROOT, and a changed value rebuilds
# candle's kernels (minutes), so a symlinked cache must not look like a new place.
dir="$(cd "$dir" && pwd -P)"

system_nvcc="$(command -v nvcc || true)"
[ -z "$system_nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && system_nvcc=/usr/local/cuda/bin/nvcc
if [ -n "$system_nvcc" ] && [ -z "${ORTHOPT_CUDA_FROM_PYPI:-}" ]; then
    root="$(cd "$(dirname "$system_nvcc")/.." && pwd)"
else
    root="$(scripts/cuda-toolkit.sh "$dir")"
fi
release="$("$root/bin/nvcc" --version | sed -nE 's/.*release ([0-9]+)\.([0-9]+).*/\1 \2/p')"
read -r major minor <<<"$release"
echo "CUDA toolkit: $root (nvcc $major.$minor)" >&2

export CUDA_ROOT="$root" CUDA_HOME="$root" CUDA_PATH="$root" NVCC="$root/bin/nvcc"
export PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION="$((major * 1000 + minor * 10))"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
export LIBRARY_PATH="$root/lib64:$root/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export ORTHOPT_CUDA_LIB="$root/lib64"

log="$dir/build.log"
cargo build --release --locked --features cuda --bin orthopt --target-dir "$dir/target" "$@" 2>&1 | tee "$log" >&2
# Our crates' warnings fail the build as clippy's -D warnings does for the CPU build.
if grep -qE '^warning: .*(opt-core|opt-stages|opt-pipeline)|^warning: unused' "$log"; then
    echo "error: the cuda build has warnings (see $log)" >&2
    exit 1
fi
bin="$dir/target/release/orthopt"
echo "shared libraries the binary needs (resolved at run time on the GPU machine):" >&2
readelf -d "$bin" | grep -E 'NEEDED|RUNPATH' >&2
echo "$bin"
