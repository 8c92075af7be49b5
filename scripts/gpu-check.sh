#!/usr/bin/env bash
# `just gpu-check`: runs `orthopt gpu-check` and leaves report.md and report.json in
# $GPU_CHECK_OUT (default outputs/gpu-check/).
#
#   scripts/gpu-check.sh [BINARY] [ARGS...]        the CUDA check, on this machine's GPU
#   scripts/gpu-check.sh --cpu [BINARY] [ARGS...]  the same plumbing on the CPU, quick (CI)
#
# BINARY defaults to the CUDA build (.cuda/target/release/orthopt, `just build-cuda`), or with
# --cpu to the release build (built first). On a GPU machine without Rust or network, carry this
# script and the CUDA binary there and run `./gpu-check.sh ./orthopt`: it finds the CUDA
# libraries (a PyTorch virtual environment's nvidia wheels, /usr/local/cuda), reports any the
# binary cannot resolve, and stops the check after 8 minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mode=cuda
if [ "${1:-}" = "--cpu" ]; then
    mode=cpu
    shift
fi
bin=""
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    bin="$1"
    shift
fi
out="${GPU_CHECK_OUT:-outputs/gpu-check}"

if [ "$mode" = cpu ]; then
    if [ -z "$bin" ]; then
        (cd "$here/.." && cargo build --release --bin orthopt)
        bin="$here/../target/release/orthopt"
    fi
    exec "$bin" gpu-check --device cpu --quick --out "$out" "$@"
fi

bin="${bin:-$here/../.cuda/target/release/orthopt}"
[ -x "$bin" ] || { echo "error: no CUDA binary at $bin (run \`just build-cuda\` first)" >&2; exit 2; }
dirs="$(find /opt /usr/local /usr/lib /root -xdev \
    \( -name 'libcublas.so.*' -o -name 'libcurand.so.*' -o -name 'libcudart.so.*' \
       -o -name 'libnvrtc.so.*' -o -name 'libcublasLt.so.*' \) 2>/dev/null |
    xargs -r -n1 dirname | sort -u | paste -sd: -)"
export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ldd "$bin" | grep -q "not found"; then
    echo "error: unresolved libraries:" >&2
    ldd "$bin" | grep "not found" >&2
    exit 2
fi
timeout 480 "$bin" gpu-check --device cuda --out "$out" "$@"
