"""`just bench-compare`: orthopt against PyTorch eager and `torch.compile` on this CPU, interleaved.

For each round and each method: `orthopt bench` (one process per method, so no method inherits
another's warm-up), then `bench/torch_cnn6.py` eager, then the same with `--compile` (inductor;
its compilation falls in the untimed warm-up), each torch process with the same thread count and
OpenMP's passive wait policy (torch's busy-waiting threads otherwise steal the cores the next
process needs). Every ratio is taken within a round (A B C, A B C, …) and reported as the median
with its min–max over the rounds, beside the machine (CPU model, cores, load average at the
start) and the date; `--json` (default bench/results/<date>-<host>.json) keeps every sample.
Each process's peak RSS comes from wait4(2). A gemm microbenchmark (torch.mm, f32, same threads)
runs every round; its best is the machine's sgemm peak here. The step's floating-point work is
counted from the network: 2·MACs of every convolution forward, its weight gradient, and its
input gradient except the first layer's (BN, pooling, the loss and the orthogonal maps are left
out, so the fraction of peak is an upper bound on how well the convolutions run).

    python3 bench/compare.py [--rounds 5] [--methods all] [--width 64] [--batch 128] [--threads 2]
                             [--no-compile] [--before OLD_ORTHOPT] [--json FILE]

Prints markdown tables: images/s of each (median and min–max over rounds), each method's step
against orthopt's baseline step, the ratios to eager and to torch.compile, peak RSS, and
orthopt's GFLOP/s against the gemm peak. `--before` adds an older orthopt build to every round,
for before/after tables from one run.
"""
import argparse
import datetime
import json
import os
import platform
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


def mean_images_per_sec(text, method, column, batch):
    """images/s over the whole timed window, from the `mean ms/step` column; a build from before
    that column existed reported this mean as its images/s (column 5)."""
    header = next((l for l in text.splitlines() if "images/s" in l), "")
    if "mean ms/step" in header:
        return 1e3 * batch / table_value(text, method, column)
    return table_value(text, method, 5)


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


def machine():
    """CPU model, cores and the load average now: what a reader needs to weigh the numbers."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_average": list(os.getloadavg()),
            "host": platform.node(), "date": datetime.datetime.now().isoformat(timespec="seconds")}


def spread(xs, digits=2):
    """`median (min–max)`."""
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def measure(a, methods):
    """Every sample, interleaved: per round, per method, orthopt [before] eager [compile]."""
    common = ["--width", str(a.width), "--batch", str(a.batch), "--steps", str(a.steps),
              "--warmup", str(a.warmup), "--threads", str(a.threads)]
    torch_peers = [] if a.no_torch else ["eager"] + ([] if a.no_compile else ["compile"])
    peers = ["orthopt"] + torch_peers + (["before"] if a.before else [])
    arch = ["--arch", a.arch] + (["--depth", str(a.depth)] if a.arch == "resnet" else [])
    samples = {p: {m: [] for m in methods} for p in peers}
    peaks = []
    torch_cmd = [a.python, os.path.join(HERE, "torch_cnn6.py")]
    for r in range(a.rounds):
        if not a.no_torch:
            peaks.append(gemm_peak(a.threads, a.python))
        for m in methods:
            for peer in peers:
                if peer in ("orthopt", "before"):
                    binary = a.orthopt if peer == "orthopt" else a.before
                    out, rss = run([binary, "bench", "--device", "cpu", "--methods", m, *arch, *common])
                    value = table_value(out, m, 5)
                    mean = mean_images_per_sec(out, m, 8, a.batch)
                else:
                    extra = ["--compile"] if peer == "compile" else []
                    out, rss = run([*torch_cmd, "--methods", m, *common, *extra], env=passive_env(a.threads))
                    value = table_value(out, m, 4)
                    mean = mean_images_per_sec(out, m, 6, a.batch)
                samples[peer][m].append({"images_per_sec": value, "mean_images_per_sec": mean,
                                         "peak_rss": rss})
            line = ", ".join(f"{p} {samples[p][m][-1]['images_per_sec']:.1f}" for p in peers)
            print(f"round {r + 1}/{a.rounds} {m}: {line} images/s", file=sys.stderr, flush=True)
    return peers, samples, peaks


def report(a, methods, peers, samples, peaks, info):
    ips = {p: {m: [s["images_per_sec"] for s in samples[p][m]] for m in methods} for p in peers}
    means = {p: {m: [s["mean_images_per_sec"] for s in samples[p][m]] for m in methods} for p in peers}
    peak = max(peaks) if peaks else None
    # The convolution count is CNN-6's; other networks and runs without torch get no rate.
    gflop = step_gflop(a.width, a.batch, (3, 32, 32)) if a.arch == "cnn6" else None
    net = "CNN-6" if a.arch == "cnn6" else f"{a.arch}-{a.depth}" if a.arch == "resnet" else a.arch
    print(f"{net} width {a.width}, batch {a.batch}, 3×32×32, {a.threads} threads, {a.rounds} interleaved "
          f"rounds; {info['cpu']}, {info['cores']} cores, load average {info['load_average'][0]:.2f} at the "
          f"start, {info['date']}. Ratios are taken within each round: median (min–max). Each run's "
          f"images/s is from its median step (the steady state); the mean-step ratio to the baseline "
          f"is beside it, and `vs before` compares mean steps (older builds report only the mean)."
          + (f" Step ≈ {gflop:.1f} GFLOP of convolutions." if gflop else "")
          + (f" sgemm peak {peak:.0f} GFLOP/s (torch.mm 2048², best of rounds)." if peak else "") + "\n")
    cols = ["orthopt images/s", "step vs our baseline", "mean step vs baseline"] + \
        [f"vs {p}" for p in peers if p not in ("orthopt",)] + \
        (["before: mean step vs its baseline"] if "before" in peers else [])
    print("| method | " + " | ".join(cols) + " | orthopt peak RSS | orthopt GFLOP/s | of peak |")
    print("|---|" + "---:|" * (len(cols) + 3))
    base = ips["orthopt"].get("baseline")
    for m in methods:
        o = ips["orthopt"][m]
        row = [spread(o, 0)]
        # Step time against the baseline's step of the same round: baseline ips / method ips.
        row.append(spread([b / x for b, x in zip(base, o)]) + "×" if base else "–")
        mean_base, mean_o = means["orthopt"].get("baseline"), means["orthopt"][m]
        row.append(spread([b / x for b, x in zip(mean_base, mean_o)]) + "×" if mean_base else "–")
        for p in peers:
            if p == "before":
                row.append(spread([x / y for x, y in zip(mean_o, means[p][m])]) + "×")
            elif p != "orthopt":
                row.append(spread([x / y for x, y in zip(o, ips[p][m])]) + "×")
        if "before" in peers:
            old_base = means["before"].get("baseline")
            row.append(spread([b / x for b, x in zip(old_base, means["before"][m])]) + "×" if old_base else "–")
        rss = max(s["peak_rss"] for s in samples["orthopt"][m]) / 2**20
        rate = gflop * statistics.median(o) / a.batch if gflop else None
        rate_cells = f"{rate:.0f} | {rate / peak:.0%}" if rate and peak else (f"{rate:.0f} | –" if rate else "– | –")
        print(f"| {m} | " + " | ".join(row) + f" | {rss:.0f} MiB | {rate_cells} |")
    print("\nimages/s of the peers (median (min–max)):\n")
    print("| method | " + " | ".join(peers) + " |")
    print("|---|" + "---:|" * len(peers))
    for m in methods:
        print(f"| {m} | " + " | ".join(spread(ips[p][m], 0) for p in peers) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=10)
    # Both tools reach their steady step only after a few steps (allocator growth, caches):
    # measured 2026-12-04, orthopt's CNN-6 step was 10–20 % slower after 2 warm-up steps than
    # after 6.
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--orthopt", default=os.path.join(HERE, "..", "target", "release", "orthopt"))
    ap.add_argument("--python", default=sys.executable, help="a Python with torch installed")
    ap.add_argument("--before", help="an older orthopt binary, measured in the same rounds")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    ap.add_argument("--no-torch", action="store_true", help="orthopt (and --before) only")
    ap.add_argument("--arch", default="cnn6", help="orthopt's architecture (torch peers: CNN-6 only)")
    ap.add_argument("--depth", type=int, default=20, help="ResNet depth")
    ap.add_argument("--json", help="where to keep every sample (default bench/results/<date>-<host>.json)")
    a = ap.parse_args()
    if a.arch != "cnn6":
        a.no_torch = True  # bench/torch_cnn6.py has CNN-6 only
    methods = METHODS if a.methods == "all" else a.methods.split(",")
    if "baseline" not in methods:
        methods = ["baseline"] + methods  # every step is compared with the baseline's
    info = machine()
    peers, samples, peaks = measure(a, methods)
    report(a, methods, peers, samples, peaks, info)
    path = a.json or os.path.join(HERE, "results", f"{info['date'][:10]}-{info['host'] or 'host'}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": info, "config": vars(a), "gemm_peak_gflops": peaks, "samples": samples}, f, indent=1)
    print(f"\nsamples: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
