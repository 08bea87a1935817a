"""How many pixels the synthetic world's small objects need: shape recognition by model input size.

The world's small objects are 1/12 to 1/8 of the frame width. A vision tower sees the frame
resized to its input size, so the same object covers 4-6 pixels at 48 px and 8-12 pixels at
96 px; sizes above the test videos' 96 px stand for a zoom on the region of interest (RoI
re-encoding upsamples the 96 px frame's crop to the tower's full input). This probe renders
single small objects (random shape, colour, position and background, as the world draws them),
resizes the 96x96 frame to each input size with the antialiased bilinear filter a tower would
use, cuts the same region of the frame around the object (1.3 times the largest small object)
and trains the same tiny CNN to name the shape, side by side for every size.

It bounds what a model can read about a small object's shape at that input size. Printed: shape
accuracy per input size and its ratio to the 96 px one.

    .venv/bin/python benchmarks/synthetic_small_objects.py [--sizes 48 64 96 144] [--epochs 20]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidllm.data.synthetic import COLORS, SHAPES, Scene, SceneObject, WorldConfig, render
from vidllm.data.synthetic.scene import sample_background

FRAME = 96  # the test split's frame size


def make_crops(n: int, input_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` crops around one small object each, from frames resized to ``input_size``, and its shape."""
    config = WorldConfig()
    lo, hi = config.min_size, config.small_size
    side = math.ceil(input_size * hi * 1.3)
    crops, labels = [], []
    for i in range(n):
        label = i % len(SHAPES)
        x, y = rng.uniform(0.2, 0.8, 2)
        obj = SceneObject(
            SHAPES[label], COLORS[rng.integers(len(COLORS))], rng.uniform(lo, hi), "right",
            0.0, 1.0, x, y, x, y, short_lived=False, small=True,
        )  # fmt: skip
        background, noise, ramp, angle = sample_background(rng, config)
        scene = Scene("probe", (obj,), background, noise, ramp, angle, int(rng.integers(2**31)))
        frame = torch.from_numpy(render(scene, 1, FRAME)[0]).permute(2, 0, 1)[None].float() / 255
        if input_size != FRAME:
            frame = F.interpolate(frame, size=(input_size, input_size), mode="bilinear", antialias=True)
        padded = F.pad(frame[0], (side, side, side, side))
        cx, cy = int(x * input_size) + side, int(y * input_size) + side
        crops.append(
            padded[:, cy - side // 2 : cy - side // 2 + side, cx - side // 2 : cx - side // 2 + side]
        )
        labels.append(label)
    return torch.stack(crops), torch.tensor(labels)


def probe(input_size: int, train: int, test: int, epochs: int, seed: int) -> float:
    rng = np.random.default_rng([seed, input_size])
    torch.manual_seed(seed)
    x_train, y_train = make_crops(train, input_size, rng)
    x_test, y_test = make_crops(test, input_size, rng)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),  # receptive field 22 px: the whole object at every size
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(SHAPES)),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(train / 128))
    for _ in range(epochs):
        order = torch.randperm(train)
        for start in range(0, train, 128):
            idx = order[start : start + 128]
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return float((net(x_test).argmax(1) == y_test).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 96, 144])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = {}
    for size in args.sizes:
        results[size] = probe(size, args.train, args.test, args.epochs, args.seed)
        print(f"input {size:4d} px: small-object shape accuracy {results[size]:.3f}", flush=True)
    reference = results.get(FRAME, max(results.values()))
    print(f"\n{'input':>6s}  {'object px':>9s}  {'accuracy':>8s}  {'vs 96 px':>8s}")
    config = WorldConfig()
    for size, accuracy in results.items():
        span = f"{size * config.min_size:.1f}-{size * config.small_size:.1f}"
        print(f"{size:6d}  {span:>9s}  {accuracy:8.3f}  {accuracy / reference:8.3f}")
    print(
        f"({args.train} train / {args.test} test crops per size, {args.epochs} epochs, {time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
