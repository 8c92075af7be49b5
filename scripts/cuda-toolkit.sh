#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit from PyPI into DIR (default: .cuda in the project, git-ignored)
# and shapes DIR/root like a CUDA installation for candle's and cudarc's build scripts:
#   root/{bin,include,nvvm}  -> the wheels' folders
#   root/lib64/libX.so       -> the wheels' versioned libraries (the wheels ship only libX.so.N)
#   root/lib64/stubs/libcuda.so  a link-time stub (soname libcuda.so.1): the real driver library
#                            comes from the GPU machine at run time.
# nvcc must be 13.0.x for a 580-series driver (PTX from 13.1+ is rejected by it); see
# ../shared/reference/cuda_build.md and the README's "GPU" section. Idempotent: a finished DIR
# (DIR/root/.complete) is left as it is.
set -euo pipefail
dir="${1:-${ORTHOPT_CUDA_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.cuda}}"
version="13.0.2"
if [ -f "$dir/root/.complete" ] && [ "$(cat "$dir/root/.complete")" = "$version" ]; then
    echo "$dir/root"
    exit 0
fi
mkdir -p "$dir"
if [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${ORTHOPT_CUDA_FROM_PYPI:-}" ]; then
    echo "note: a system toolkit exists at /usr/local/cuda; build-cuda uses it (set ORTHOPT_CUDA_FROM_PYPI=1 to install from PyPI instead)" >&2
fi
python3 -m venv "$dir/venv"
"$dir/venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$dir/venv/bin/python" -m pip install --quiet \
    "cuda-toolkit[nvcc,crt,cccl,cudart,cublas,curand,nvrtc,nvvm,cusolver,cusparse,nvjitlink]==$version" >&2
wheel="$("$dir/venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
root="$dir/root"
rm -rf "$root"
mkdir -p "$root/lib64/stubs"
for sub in bin include nvvm; do ln -s "$wheel/$sub" "$root/$sub"; done
for lib in "$wheel"/lib/lib*.so.*; do
    base="$(basename "$lib")"
    ln -sf "$lib" "$root/lib64/$base"
    ln -sf "$lib" "$root/lib64/${base%%.so.*}.so"
done
# The driver API stub: every cu* function the driver header declares, returning
# CUDA_ERROR_STUB_LIBRARY (34). Only the linker sees it.
stub_c="$root/lib64/stubs/libcuda_stub.c"
grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\s*\(' "$wheel/include/cuda.h" | sed -E 's/\s*\($//' | sort -u |
    awk '{ print "int " $1 "(void) { return 34; }" }' >"$stub_c"
# The header maps API names onto versioned symbols (cuCtxCreate -> cuCtxCreate_v2, ...).
grep -ohE '#define (cu[A-Za-z0-9_]+) +(cu[A-Za-z0-9_]+)' "$wheel/include/cuda.h" | awk '{ print $3 }' | sort -u |
    awk '{ print "int " $1 "(void) { return 34; }" }' >>"$stub_c"
sort -u -o "$stub_c" "$stub_c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib64/stubs/libcuda.so" "$stub_c"
# Under its run-time name too, so a CUDA build can run its CPU paths on a machine without a
# driver (CI: LD_LIBRARY_PATH=root/lib64/stubs); every driver call then reports "stub library".
ln -sf libcuda.so "$root/lib64/stubs/libcuda.so.1"
"$root/bin/nvcc" --version | tail -2 >&2
echo "$version" >"$root/.complete"
echo "$root"
