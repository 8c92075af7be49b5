"""`just bench-compare`: orthopt against PyTorch eager on this CPU, interleaved.

For each round and each method: `orthopt bench` (one process per method, so no method inherits
another's warm-up) then `bench/torch_cnn6.py` with the same thread count and OpenMP's passive
wait policy (torch's busy-waiting threads otherwise steal the cores the next process needs).
Each process's peak RSS comes from wait4(2). A gemm microbenchmark (torch.mm, f32, same threads)
runs every round; its best is the machine's sgemm peak here. The step's floating-point work is
counted from the network: 2·MACs of every convolution forward, its weight gradient, and its
input gradient except the first layer's (BN, pooling, the loss and the orthogonal maps are left
out, so the fraction of peak is an upper bound on how well the convolutions run).

    python3 bench/compare.py [--rounds 3] [--methods all] [--width 64] [--batch 128] [--threads 2]
                             [--before OLD_ORTHOPT]

Prints a markdown table: images/s of each (median over rounds), the ratio, peak RSS of each,
orthopt's GFLOP/s and its fraction of the gemm peak. `--before` adds an older orthopt build to
every round (before, orthopt, torch, interleaved), for before/after tables from one run.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ["baseline", "cp", "gs", "hr", "ls", "ogd", "or", "upt", "sopt"]


def run(cmd, env=None):
    """(stdout, peak RSS in bytes) of one process; fails loudly on a non-zero exit."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{err.read()}")
        return out.read(), usage.ru_maxrss * 1024


def table_value(text, method, column):
    """Column `column` (0-based, after the leading `|`) of the table row naming `method`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if method in cells[:2] and re.match(r"^[0-9.]+$", cells[column] if len(cells) > column else ""):
            return float(cells[column])
    sys.exit(f"no row for {method} in:\n{text}")


def step_gflop(width, batch, input_shape):
    """2·MACs of CNN-6's convolutions, forward + weight gradient + input gradient (not the
    first layer's, whose input needs none)."""
    c, h, w = input_shape
    total = 0.0
    first = True
    for stage in range(3):
        for _ in range(2):
            macs = batch * h * w * width * c * 9
            total += 2 * macs * (2 if first else 3)
            first, c = False, width
        h, w = h // 2, w // 2
    macs = batch * width * c * h * w  # fc6: a VALID conv over the whole map
    total += 2 * macs * 3
    total += 2 * batch * 100 * width * 3  # the classifier (100 classes)
    return total / 1e9


def gemm_peak(threads, python):
    code = (
        "import time, torch\n"
        f"torch.set_num_threads({threads})\n"
        "n = 2048\n"
        "a, b = torch.randn(n, n), torch.randn(n, n)\n"
        "for _ in range(3): a @ b\n"
        "best = 1e9\n"
        "for _ in range(10):\n"
        "    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)\n"
        "print(2 * n ** 3 / best / 1e9)\n"
    )
    out, _ = run([python, "-c", code], env=passive_env(threads))
    return float(out.strip())


def passive_env(threads):
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--orthopt", default=os.path.join(HERE, "..", "target", "release", "orthopt"))
    ap.add_argument("--python", default=sys.executable, help="a Python with torch installed")
    ap.add_argument("--before", help="an older orthopt binary, measured in the same rounds")
    a = ap.parse_args()
    methods = METHODS if a.methods == "all" else a.methods.split(",")
    common = ["--width", str(a.width), "--batch", str(a.batch), "--steps", str(a.steps),
              "--threads", str(a.threads)]
    opt, torch, peaks = {m: [] for m in methods}, {m: [] for m in methods}, []
    before = {m: [] for m in methods}
    for r in range(a.rounds):
        peaks.append(gemm_peak(a.threads, a.python))
        for m in methods:
            if a.before:
                out, rss = run([a.before, "bench", "--device", "cpu", "--methods", m, *common])
                before[m].append((table_value(out, m, 5), rss))
            out, rss = run([a.orthopt, "bench", "--device", "cpu", "--methods", m, *common])
            opt[m].append((table_value(out, m, 5), rss))
            out, rss = run([a.python, os.path.join(HERE, "torch_cnn6.py"), "--methods", m, *common],
                           env=passive_env(a.threads))
            torch[m].append((table_value(out, m, 4), rss))
            print(f"round {r + 1}/{a.rounds} {m}: orthopt {opt[m][-1][0]:.1f}, torch {torch[m][-1][0]:.1f} images/s",
                  file=sys.stderr, flush=True)
    peak = max(peaks)
    gflop = step_gflop(a.width, a.batch, (3, 32, 32))
    print(f"CNN-6 width {a.width}, batch {a.batch}, 3×32×32, {a.threads} threads, {a.rounds} interleaved rounds "
          f"(median); step ≈ {gflop:.1f} GFLOP of convolutions; sgemm peak {peak:.0f} GFLOP/s (torch.mm 2048², best of rounds)\n")
    extra = " before images/s | before / torch | before peak RSS |" if a.before else ""
    print(f"| method | orthopt images/s | torch images/s | ratio | orthopt peak RSS | torch peak RSS | orthopt GFLOP/s | of peak |{extra}")
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if a.before else ""))
    for m in methods:
        o = statistics.median(v for v, _ in opt[m])
        t = statistics.median(v for v, _ in torch[m])
        o_rss = max(r for _, r in opt[m]) / 2**20
        t_rss = max(r for _, r in torch[m]) / 2**20
        gflops = gflop * o / a.batch
        row = f"| {m} | {o:.1f} | {t:.1f} | {o / t:.2f}× | {o_rss:.0f} MiB | {t_rss:.0f} MiB | {gflops:.0f} | {gflops / peak:.0%} |"
        if a.before:
            b = statistics.median(v for v, _ in before[m])
            b_rss = max(r for _, r in before[m]) / 2**20
            row += f" {b:.1f} | {b / t:.2f}× | {b_rss:.0f} MiB |"
        print(row)


if __name__ == "__main__":
    main()
