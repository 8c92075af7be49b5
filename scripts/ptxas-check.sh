#!/usr/bin/env bash
# Assembles every PTX module opt-core builds (kernels/*.cu, compiled as build.rs compiles them)
# with ptxas for sm_80 and sm_90, prints each kernel's registers, spills and shared memory, and
# fails when a kernel spills, uses more static shared memory than a block may (48 KiB), or needs
# more registers than its launch bound's block can hold (65 536 per block). No GPU needed: ptxas
# comes with the toolkit `just build-cuda` installs (ORTHOPT_CUDA_DIR, as build-cuda.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${ORTHOPT_CUDA_DIR:-$PWD/.cuda}"
system_nvcc="$(command -v nvcc || true)"
[ -z "$system_nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && system_nvcc=/usr/local/cuda/bin/nvcc
if [ -n "$system_nvcc" ] && [ -z "${ORTHOPT_CUDA_FROM_PYPI:-}" ]; then
    root="$(cd "$(dirname "$system_nvcc")/.." && pwd)"
else
    root="$(scripts/cuda-toolkit.sh "$dir")"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for name in ops maps; do
    # build.rs's flags: PTX for compute_80, which the driver JIT-compiles for later GPUs.
    "$root/bin/nvcc" -ptx -O3 -arch=compute_80 -o "$work/$name.ptx" "opt-core/kernels/$name.cu"
    for sm in sm_80 sm_90; do
        "$root/bin/ptxas" -v -arch="$sm" -o "$work/$name.$sm.cubin" "$work/$name.ptx" \
            2>"$work/$name.$sm.log"
    done
done
python3 - "$work" <<'EOF'
import glob, os, re, sys

work = sys.argv[1]
# Each kernel's launch bound, from the sources (`__launch_bounds__(MACRO)` before its name).
bounds = {}
for src in glob.glob("opt-core/kernels/*.cu"):
    text = open(src).read()
    defines = dict(re.findall(r"#define\s+(\w+)\s+(\d+)", text))
    for macro, kernel in re.findall(r"__launch_bounds__\((\w+)\)\s*(\w+)\s*\(", text):
        bounds[kernel] = int(defines.get(macro, macro))
failures, rows = [], []
for log in sorted(glob.glob(os.path.join(work, "*.log"))):
    module, sm = os.path.basename(log)[:-4].split(".")
    kernel = None
    for line in open(log):
        m = re.search(r"Compiling entry function '(\w+)' for '(\w+)'", line)
        if m:
            kernel = m.group(1)
            info = {"spill": 0, "regs": 0, "smem": 0}
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and kernel:
            info["spill"] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m and kernel:
            info["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            info["smem"] = int(s.group(1)) if s else 0
            threads = bounds.get(kernel)
            rows.append((module, sm, kernel, info["regs"], info["spill"], info["smem"], threads))
            if threads is None:
                failures.append(f"{kernel}: no __launch_bounds__ in its source")
            elif info["regs"] * threads > 65536:
                failures.append(f"{kernel} ({sm}): {info['regs']} registers × {threads} threads > 65536")
            if info["spill"]:
                failures.append(f"{kernel} ({sm}): {info['spill']} bytes of register spills")
            if info["smem"] > 48 * 1024:
                failures.append(f"{kernel} ({sm}): {info['smem']} bytes of static shared memory > 48 KiB")
            kernel = None
print(f"{'module':7} {'arch':6} {'kernel':28} {'regs':>5} {'spill B':>8} {'smem B':>7} {'block':>6}")
for module, sm, kernel, regs, spill, smem, threads in rows:
    print(f"{module:7} {sm:6} {kernel:28} {regs:5} {spill:8} {smem:7} {threads or '?':>6}")
expected = 2 * len(bounds)
if len(rows) != expected:
    failures.append(f"ptxas reported {len(rows)} kernel builds, expected {expected} (every kernel for sm_80 and sm_90)")
if failures:
    print("\nptxas check FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)
print(f"\nptxas check passed: {len(bounds)} kernels, sm_80 and sm_90, no spills, within their launch bounds.")
EOF
