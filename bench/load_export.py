"""Loads a model written by `orthopt export` into a plain PyTorch CNN-6 and optionally evaluates it.

The exported file holds each layer's effective weight W = R·W0 (S-OPT: the merged weight) under
the names of bench/torch_cnn6.py's baseline network, so no OPT code is needed here:

    features.<i>   3×3 convs (no bias) and their batch norms, an nn.Sequential of
                   [conv, BN, ReLU] per layer with a 2×2 max-pool after every second
    fc6            a VALID conv over the last feature map (no BN, no ReLU)
    score          the 1×1 classifier

The metadata names the input shape, widths, classes, BN epsilon and the input normalisation
(x = pixel · input_scale + input_shift per channel, pixels 0–255) training used.

    pip install torch safetensors
    python3 bench/load_export.py model.safetensors            # builds, loads strictly, prints
    python3 bench/load_export.py model.safetensors --random 8 # also runs 8 random images

    from load_export import load
    net, preprocess = load("model.safetensors")   # net in eval mode
    logits = net(preprocess(uint8_images_nchw))
"""
import argparse
import json

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file


class Cnn6(nn.Module):
    """The paper's CNN-6 as bench/torch_cnn6.py builds its baseline, with per-stage widths."""

    def __init__(self, input_shape, widths, fc6_width, classes, bn_eps):
        super().__init__()
        c, h, w = input_shape
        layers, prev = [], c
        for i in range(6):
            width = widths[i // 2]
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width, eps=bn_eps), nn.ReLU()]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Conv2d(prev, fc6_width, (h // 8, w // 8), bias=False)
        self.score = nn.Conv2d(fc6_width, classes, 1, bias=False)

    def forward(self, x):
        return self.score(self.fc6(self.features(x))).flatten(1)


def metadata(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata()


def load(path):
    """(network in eval mode, function mapping uint8 NCHW images to its input)."""
    meta = metadata(path)
    if not meta.get("format", "").startswith("opt-cnn6-plain"):
        raise ValueError(f"{path}: not an `orthopt export` file (format {meta.get('format')!r})")
    net = Cnn6(json.loads(meta["input"]), json.loads(meta["widths"]), int(meta["fc6_width"]),
               int(meta["classes"]), float(meta["bn_eps"]))
    # BN's num_batches_tracked is absent from the file; PyTorch fills it in for a state dict
    # without version metadata, so strict loading still checks every other name and shape.
    net.load_state_dict(load_file(path), strict=True)
    net.eval()
    scale = torch.tensor(json.loads(meta["input_scale"])).view(1, -1, 1, 1)
    shift = torch.tensor(json.loads(meta["input_shift"])).view(1, -1, 1, 1)
    return net, lambda images: images.float() * scale + shift


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--random", type=int, default=0, help="run this many random images")
    a = ap.parse_args()
    net, preprocess = load(a.model)
    print(net)
    if a.random:
        c, h, w = json.loads(metadata(a.model)["input"])
        images = torch.randint(0, 256, (a.random, c, h, w), dtype=torch.uint8)
        with torch.no_grad():
            print(net(preprocess(images)).argmax(1).tolist())


if __name__ == "__main__":
    main()
