"""CNN-6 training throughput in PyTorch eager, the reference `opt bench` is compared with.

Same network as opt's (spec §5): 3 stages × 2 [3×3 conv (no bias), BN (eps 1e-3), ReLU] +
2×2 max-pool, fc6 = VALID conv over the last map, 1×1 classifier; official loss
−Σ y·log(softmax + 1e-4) with label smoothing 0.01; SGD momentum 0.9, weight decay 5e-4.
Synthetic data, like `opt bench`. Prints images/s and ms/step.

    python3 bench/torch_cnn6.py [--width 64] [--batch 128] [--steps 10] [--threads 0]
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Cnn6(nn.Module):
    def __init__(self, c_in, hw, width, classes):
        super().__init__()
        layers, prev = [], c_in
        for i in range(6):
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width, eps=1e-3, momentum=0.001), nn.ReLU()]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Conv2d(width, width, hw // 8, bias=False)
        self.score = nn.Conv2d(width, classes, 1, bias=False)

    def forward(self, x):
        return self.score(self.fc6(self.features(x))).flatten(1)


def official_loss(logits, labels, classes):
    y = F.one_hot(labels, classes).float() * 0.99 + 0.01 / classes
    return -(y * torch.log(F.softmax(logits, 1) + 1e-4)).sum(1).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--input", default="3x32x32")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    c, h, w = (int(v) for v in a.input.split("x"))
    net = Cnn6(c, h, a.width, a.classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, c, h, w)
    labels = torch.arange(a.batch) % a.classes

    def step():
        opt.zero_grad(set_to_none=True)
        loss = official_loss(net(x), labels, a.classes)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    secs = time.perf_counter() - t
    print("| method | device | batch | input | images/s | ms/step |")
    print("|---|---|---:|---|---:|---:|")
    print(f"| baseline (torch {torch.__version__}, {torch.get_num_threads()} threads) | cpu | {a.batch} "
          f"| {a.input} | {a.steps * a.batch / secs:.1f} | {1e3 * secs / a.steps:.2f} |")


if __name__ == "__main__":
    main()
