#!/usr/bin/env bash
# One GPU session in one command, for a lent GPU machine without Rust or network (the device
# tool's 15-minute budget): the self-check and gpu-check, a few real trainings through the
# pipeline on the GPU, `orthopt bench` on CUDA, and PyTorch eager and torch.compile on the same
# GPU as peers. Every report lands in OUT (default outputs/gpu-session).
#
#   scripts/gpu-session.sh BINARY [ITERATIONS] [METHODS]
#
# BINARY is the CUDA build (`just build-cuda`, stripped). Each stage has its own time limit so a
# hang in one still leaves the others' reports; the whole script stays under 10 minutes.
# torch.compile runs only COMPILED (default baseline,gs,ogd): each method compiles for a minute.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$1"
iterations="${2:-300}"
methods="${3:-baseline,gs,hr,ls,cp,ogd,or,sopt}"
out="${OUT:-outputs/gpu-session}"
runs="${RUNS:-/tmp/gpu-session-runs}"  # many files: kept out of OUT
compiled="${COMPILED:-baseline,gs,ogd}"
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1
log() { echo "== $(date -u +%T) $*" | tee -a "$out/session.log"; }

log "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$out/session.log"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' 2>&1 | tee -a "$out/session.log"

log "gpu-check (self-check, ops, 200 steps per method, map routes, bench)"
GPU_CHECK_OUT="$out/check" timeout 240 "$here/gpu-check.sh" "$bin" 2>&1 | tail -n 80 | tee -a "$out/session.log"

log "quickstart trainings on cuda, $iterations iterations: $methods"
for m in ${methods//,/ }; do
    timeout 35 "$bin" run "$here/../recipes/quickstart.toml" --quiet --out "$runs/$m" --cache "$runs/cache" \
        --set run.device=cuda --set method.name="$m" --set schedule.iterations="$iterations" \
        --set schedule.milestones="[$((iterations * 3 / 5)), $((iterations * 4 / 5))]" \
        2>&1 | tail -n 3 | tee -a "$out/session.log"
done
find "$runs" -name results.csv -exec cat {} \; 2>/dev/null > "$out/quickstart-results.csv"

log "orthopt bench on cuda (CNN-6 width 64, batch 128)"
timeout 60 "$bin" bench -q --device cuda --methods "$methods" --width 64 --batch 128 --steps 30 \
    2>&1 | tee "$out/bench-orthopt.md"

log "torch eager and torch.compile on cuda"
timeout 60 python3 "$here/../bench/torch_cnn6.py" --device cuda --methods "$methods" --steps 30 \
    2>&1 | tee "$out/bench-torch-eager.md"
timeout 90 python3 "$here/../bench/torch_cnn6.py" --device cuda --methods "$compiled" --steps 30 --compile \
    2>&1 | tail -n 12 | tee "$out/bench-torch-compile.md"
log "done"
