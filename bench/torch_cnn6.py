"""CNN-6 training throughput in PyTorch eager (OPT methods through torch.linalg), the reference
`orthopt bench` is compared with.

Same network as opt's (spec §5): 3 stages × 2 [3×3 conv (no bias), BN (eps 1e-3), ReLU] +
2×2 max-pool, fc6 = VALID conv over the last map, 1×1 classifier; official loss
−Σ y·log(softmax + 1e-4) with label smoothing 0.01; SGD momentum 0.9, weight decay 5e-4.
Synthetic data, like `orthopt bench`. Prints images/s and ms/step of the median step, and the mean step.

    python3 bench/torch_cnn6.py [--methods all] [--width 64] [--batch 128] [--steps 10]
                                [--compile] [--device cpu|cuda]

`--compile` runs the network through `torch.compile` (inductor; the linalg calls of the maps
stay eager kernels inside the compiled graph); its compilation happens in the warm-up steps,
which are not timed. On CUDA the timing is synchronised and TF32 is off (f32 as opt computes).

OPT layers: fixed W0 [d, n], learned P [d, d], W = orth(P)·W0 with torch.linalg routines
(qr for GS/HR, svd for LS, solve for CP), raw P for OGD/OR/UPT (OGD updated by the same
Cayley-SGD step as opt), S-OPT with a 25 % subset per layer after the first.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def orth(p, method):
    if method == "gs":
        q, r = torch.linalg.qr(p.T)
        return (q * torch.sign(torch.diagonal(r))).T
    if method == "hr":
        q, r = torch.linalg.qr(p)
        return q * torch.sign(torch.diagonal(r))
    if method == "ls":
        u, _, vh = torch.linalg.svd(p)
        return u @ vh
    if method == "cp":
        u = torch.triu(p)
        s = u - u.T
        eye = torch.eye(p.shape[0], device=p.device)
        return torch.linalg.solve(eye - s, eye + s, left=False)
    return p  # ogd, or, upt: raw


class OptConv(nn.Module):
    """A conv whose kernel is orth(P)·W0 (or a sparse S-OPT rotation of W0)."""

    def __init__(self, c_in, c_out, k, method, padding, first):
        super().__init__()
        d = c_in * k * k
        self.shape, self.padding, self.method = (c_out, c_in, k, k), padding, method
        self.register_buffer("w0", torch.randn(d, c_out) * (2.0 / d) ** 0.5)
        self.sparse = method == "sopt" and not first
        if self.sparse:
            b = d // 4
            self.register_buffer("idx", torch.randperm(d)[:b])
            self.p = nn.Parameter(torch.eye(b))
        elif method in ("ogd", "upt", "sopt"):
            self.p = nn.Parameter(torch.eye(d))
        else:
            self.p = nn.Parameter(torch.randn(d, d))

    def forward(self, x):
        if self.sparse:
            rows = self.w0[self.idx]
            w = self.w0.index_add(0, self.idx, orth(self.p, "gs") @ rows - rows)
        else:
            w = orth(self.p, "gs" if self.method == "sopt" else self.method) @ self.w0
        return F.conv2d(x, w.T.reshape(self.shape), padding=self.padding)

    def penalty(self):
        g = self.p @ self.p.T - torch.eye(self.p.shape[0], device=self.p.device)
        return torch.sqrt((g * g).sum())


class Cnn6(nn.Module):
    def __init__(self, c_in, hw, width, classes, method="baseline"):
        super().__init__()

        def conv(cin, cout, k, pad, first=False):
            if method == "baseline":
                return nn.Conv2d(cin, cout, k, padding=pad, bias=False)
            return OptConv(cin, cout, k, method, pad, first)

        layers, prev = [], c_in
        for i in range(6):
            layers += [conv(prev, width, 3, 1, first=i == 0),
                       nn.BatchNorm2d(width, eps=1e-3, momentum=0.001), nn.ReLU()]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.features = nn.Sequential(*layers)
        self.fc6 = conv(width, width, hw // 8, 0)
        self.score = nn.Conv2d(width, classes, 1, bias=False)

    def forward(self, x):
        return self.score(self.fc6(self.features(x))).flatten(1)

    def opt_layers(self):
        return [m for m in self.modules() if isinstance(m, OptConv)]


@torch.no_grad()
def cayley_sgd_step(x, m, g, lr, beta=0.9):
    """OPT's OGD step (spec 2.6), the same sequence as opt's CayleySgd."""
    m.mul_(beta).sub_(g)
    what = m @ x.T - 0.5 * x @ (x.T @ m @ x.T)
    w = what - what.T
    m.copy_(w @ x)
    alpha = min(lr, 1.0 / (float(torch.linalg.norm(w)) + 1e-8))
    y = x + alpha * m
    y = x + alpha / 2 * w @ (x + y)
    x.copy_(x + alpha / 2 * w @ (x + y))


def official_loss(logits, labels, classes):
    y = F.one_hot(labels, classes).float() * 0.99 + 0.01 / classes
    return -(y * torch.log(F.softmax(logits, 1) + 1e-4)).sum(1).mean()


def bench(a, method):
    c, h, w = (int(v) for v in a.input.split("x"))
    dev = torch.device(a.device)
    net = Cnn6(c, h, a.width, a.classes, method).to(dev)
    rotations = [m.p for m in net.opt_layers()] if method == "ogd" else []
    rot_ids = {id(p) for p in rotations}
    others = [p for p in net.parameters() if id(p) not in rot_ids]
    wd = 5e-5 if method == "ogd" else 5e-4
    opt = torch.optim.SGD(others, lr=0.01, momentum=0.9, weight_decay=wd)
    moms = [torch.zeros_like(p) for p in rotations]
    x = torch.randn(a.batch, c, h, w, device=dev)
    labels = torch.arange(a.batch, device=dev) % a.classes
    forward = torch.compile(net) if a.compile else net
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        for p in rotations:
            p.grad = None
        loss = official_loss(forward(x), labels, a.classes)
        if method == "or":
            loss = loss + 0.1 * sum(m.penalty() for m in net.opt_layers())
        loss.backward()
        opt.step()
        for p, m in zip(rotations, moms):
            cayley_sgd_step(p.data, m, p.grad, 0.02)
        return loss.item()

    for _ in range(a.warmup):
        step()
    sync()
    # Each step timed on its own, as `orthopt bench` does: throughput from the median step,
    # the mean beside it (a step that first touches new memory is an outlier).
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="baseline", help="comma-separated, or all")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--input", default="3x32x32")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the network (inductor)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    a = ap.parse_args()
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if a.threads:
        torch.set_num_threads(a.threads)
    methods = ["baseline", "cp", "gs", "hr", "ls", "ogd", "or", "upt", "sopt"] if a.methods == "all" \
        else a.methods.split(",")
    mode = "torch.compile" if a.compile else "eager"
    print(f"| method (torch {torch.__version__} {mode}, {torch.get_num_threads()} threads) | device | batch | input | images/s | ms/step | mean ms/step |")
    print("|---|---|---:|---|---:|---:|---:|")
    for method in methods:
        times = bench(a, method)
        step = statistics.median_high(times)  # the upper median, as `orthopt bench` takes it
        print(f"| {method} | {a.device} | {a.batch} | {a.input} | {a.batch / step:.1f} | {1e3 * step:.2f} "
              f"| {1e3 * statistics.mean(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
