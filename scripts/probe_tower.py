"""Can an object's colour and shape be read linearly from a model's vision-tower features?

A diagnostic for the bundled model: if a logistic-regression probe on the tower's cell features
reads the attributes of the object covering a cell, what the language model fails to answer is
not missing from its input. Frames come from training-split scenes of the synthetic world (never
the test split); for every 4th of 32 sampled frames, each visible object gives the feature of the
cell it covers most (when it covers at least half of it) and its colour and shape as labels.
Printed: 3-fold cross-validated probe accuracy for colour and for shape, and the chance levels.

    .venv/bin/python scripts/probe_tower.py [--model default] [--batches 12] [--seed 10000]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

import vidllm
from vidllm.train.data import cell_coverage, video_batch


def cell_features(model, batches: int, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    num_frames = model.config.reducer_config().num_frames
    features, colours, shapes = [], [], []
    for b in range(batches):
        for item in video_batch(seed + b, videos=4, seed=0, num_frames=num_frames, questions=1, mc_share=0.0):
            picked = list(range(0, num_frames, 4))
            with torch.inference_mode():
                encoded = model.tower.encode(item.frames[picked]).float()  # (T, h, w, C)
            grid = tuple(encoded.shape[1:3])
            for row, frame in enumerate(picked):
                t = item.times[frame]
                for obj in item.scene.objects:
                    if not obj.visible(t):
                        continue
                    coverage = cell_coverage(obj.box(t), grid)
                    i, j = np.unravel_index(coverage.argmax(), coverage.shape)
                    if coverage[i, j] >= 0.5:
                        features.append(encoded[row, i, j].numpy())
                        colours.append(obj.color)
                        shapes.append(obj.shape)
    return np.stack(features), colours, shapes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--batches", type=int, default=12, help="training-split batches of 4 videos")
    parser.add_argument("--seed", type=int, default=10_000, help="first training-split batch index")
    args = parser.parse_args()
    model = vidllm.load(args.model, device="cpu")
    x, colours, shapes = cell_features(model, args.batches, args.seed)
    print(f"{args.model}: {x.shape[0]} object cells, {x.shape[1]}-d tower features")
    for name, labels in (("colour", colours), ("shape", shapes)):
        accuracy = cross_val_score(LogisticRegression(max_iter=2000), x, labels, cv=3).mean()
        chance = max(Counter(labels).values()) / len(labels)
        print(f"  {name:6s} linear probe {accuracy:.3f} (3-fold CV; majority class {chance:.3f})")


if __name__ == "__main__":
    main()
