"""DRNet on real data: scikit-learn's digits, upscaled, dynamic resolution vs. the fixed largest one.

The paper's claim (Zhu et al., NeurIPS 2021): a jointly trained resolution predictor keeps the
accuracy of the fixed full resolution at a lower mean cost. This run checks it on the 1,797 real
8x8 digit images upscaled to 64 px, with candidates 64 / 48 / 32 px and the predictor on a 32 px
copy (ResNet-18 layout at widths 8-64); the backbone is the zoo's ``tinynet_e`` (one input channel, ten classes).

Two models get the same data, optimiser, schedule and number of epochs:

* ``fixed``: ``tinynet_e`` trained and evaluated at 64 px (plain BatchNorm);
* ``drnet``: the same backbone wrapped in :class:`efficient_backbones.drnet.DRNet` (per-resolution
  BN), trained with the Gumbel-softmax forward and the MACs-constrained loss, evaluated with each
  test image run once at its predicted resolution.

Both start from a zero classifier (tinynet_e's EfficientNet-style head init, meant for 1,000
classes, starts a 10-class head at cross-entropy 3.8 at 64 px and 7.7 at 32 px, which the 32 px
branch takes most of a short run to undo), both see random shifts padded with the background, and
both run 12 epochs. The MACs target is half the 64 px cost (``target_ratio=0.5``; at 0.3 the loss
forces nearly every image to 32 px before that branch has learned). On 8x8 digits 32 px already
holds all the information, so the trained predictor sends almost every test image there: the
saving is real, and this data set cannot show per-image resolution choices beyond that.

Printed: test accuracy and MACs per image of both (DRNet's mean includes the predictor and is
counted twice: from the chosen resolutions, and by FlopCounterMode over the real routed run),
the resolution histogram, and the ratios.

    .venv/bin/python benchmarks/drnet_digits.py [--epochs 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import efficient_backbones as eb
from efficient_backbones._macs import count_macs
from efficient_backbones.drnet import DRNet, drnet_loss

RESOLUTIONS = (64, 48, 32)
PREDICTOR_SIZE = 32
# A quarter of the ImageNet predictor's widths: on 32 px digits it costs 0.66M MACs.
PREDICTOR_CHANNELS = (8, 16, 32, 64)
BACKBONE = "tinynet_e"


@dataclass
class DigitsResult:
    fixed_accuracy: float
    fixed_macs: float
    drnet_accuracy: float
    drnet_macs: float  # mean per test image, predictor included (from the chosen resolutions)
    drnet_macs_counted: float  # the same, counted by FlopCounterMode over the routed run
    resolution_counts: dict[int, int]
    resolution_macs: list[int]
    predictor_macs: int
    per_resolution_accuracy: dict[int, float]
    seconds: float
    cpu_seconds: float  # process CPU time (what the run costs on otherwise idle cores)
    threads: int


def load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits scaled to [0, 1], standardised, upscaled to the largest candidate (bilinear)."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - images.mean()) / images.std()
    images = F.interpolate(images, size=(RESOLUTIONS[0],) * 2, mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=0.3, random_state=seed, stratify=digits.target
    )
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


def _augment(x: torch.Tensor, generator: torch.Generator, background: float) -> torch.Tensor:
    """Random shifts of up to 4 px (the digits are centred; this keeps the tiny set from being memorised).

    The border that shifts in is filled with the background value (the standardised zero pixel),
    not 0, which after standardisation would be a bright bar no test image has."""
    pad = 4
    padded = F.pad(x, (pad,) * 4, value=background)
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _backbone() -> torch.nn.Module:
    model = eb.create_model(BACKBONE, num_classes=10, in_chans=1)
    # EfficientNet's (TF) head init, uniform +-1/sqrt(num_classes), is made for 1000 classes; on a
    # 10-class head it gives logits of std 2.6 (64 px) to 4.2 (32 px), so training starts at a
    # cross-entropy of 3.8 to 7.7 instead of ln 10. A zero classifier starts every resolution at ln 10.
    torch.nn.init.zeros_(model.classifier.weight)
    torch.nn.init.zeros_(model.classifier.bias)
    return model


def _optimizer(model: torch.nn.Module, epochs: int, steps: int, lr: float):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.25)
    return opt, sched


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = sum(
        (model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum().item()
        for i in range(0, len(y), batch_size)
    )
    return correct / len(y)


def run(
    epochs: int = 12,
    seed: int = 0,
    batch_size: int = 64,
    macs_weight: float = 2.0,
    target_ratio: float = 0.5,
    lr: float = 2e-3,
    threads: int | None = 1,
    log=print,
) -> DigitsResult:
    """Train both models and evaluate them on the held-out 30% of the digits.

    ``threads``: torch threads for the run (restored after). One by default: the figures then do
    not depend on the machine's core count (float sums in another order give other models).
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(epochs, seed, batch_size, macs_weight, target_ratio, lr, log)
    finally:
        torch.set_num_threads(previous)


def _run(epochs, seed, batch_size, macs_weight, target_ratio, lr, log) -> DigitsResult:
    start, cpu_start = time.perf_counter(), time.process_time()
    x_train, y_train, x_test, y_test = load_data(seed)
    steps = -(-len(y_train) // batch_size)
    background = float(x_train.amin())

    torch.manual_seed(seed)
    model = DRNet(
        _backbone(),
        resolutions=RESOLUTIONS,
        predictor_size=PREDICTOR_SIZE,
        predictor_channels=PREDICTOR_CHANNELS,
    )
    resolution_macs = model.resolution_macs()
    opt, sched = _optimizer(model, epochs, steps, lr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        picks = torch.zeros(len(RESOLUTIONS))
        for idx in _batches(len(y_train), batch_size, gen):
            out = model.forward_train(_augment(x_train[idx], gen, background))
            loss, parts = drnet_loss(out, y_train[idx], resolution_macs, macs_weight, target_ratio)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            picks += out.selection.detach().sum(0)
        share = ", ".join(f"{r}px {p / picks.sum():.0%}" for r, p in zip(RESOLUTIONS, picks.tolist()))
        log(
            f"[drnet] epoch {epoch + 1}/{epochs} loss {loss.item():.3f} ce {parts['ce']:.3f} "
            f"macs ratio {parts['macs_ratio']:.2f} picks: {share}; test acc {_accuracy(model, x_test, y_test):.4f}"
        )

    torch.manual_seed(seed)
    fixed = _backbone()
    opt, sched = _optimizer(fixed, epochs, steps, lr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        fixed.train()
        for idx in _batches(len(y_train), batch_size, gen):
            loss = F.cross_entropy(fixed(_augment(x_train[idx], gen, background)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(
            f"[fixed {RESOLUTIONS[0]}px] epoch {epoch + 1}/{epochs} loss {loss.item():.3f} "
            f"test acc {_accuracy(fixed, x_test, y_test):.4f}"
        )
    fixed_accuracy = _accuracy(fixed, x_test, y_test)
    fixed_macs = count_macs(fixed, inputs=x_test[:1])

    drnet_accuracy = _accuracy(model, x_test, y_test)
    with torch.no_grad():
        model.eval()
        model(x_test)
        indices = model.last_resolution_indices
        drnet_macs = model.macs_per_image(indices).mean().item()
    drnet_macs_counted = count_macs(model, inputs=x_test)
    per_resolution_accuracy = {}
    with torch.no_grad():
        for j, r in enumerate(RESOLUTIONS):
            logits = model._run_at(model.backbone, x_test, j)
            per_resolution_accuracy[r] = (logits.argmax(-1) == y_test).float().mean().item()
    counts = {r: int((indices == j).sum()) for j, r in enumerate(RESOLUTIONS)}
    return DigitsResult(
        fixed_accuracy=fixed_accuracy,
        fixed_macs=float(fixed_macs),
        drnet_accuracy=drnet_accuracy,
        drnet_macs=drnet_macs,
        drnet_macs_counted=float(drnet_macs_counted),
        resolution_counts=counts,
        resolution_macs=resolution_macs,
        predictor_macs=model.predictor_macs(),
        per_resolution_accuracy=per_resolution_accuracy,
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
        threads=torch.get_num_threads(),
    )


def report(result: DigitsResult) -> str:
    r = result
    lines = [
        f"digits (sklearn, 1797 real 8x8 images) upscaled to {RESOLUTIONS[0]}px; test split 30%; backbone {BACKBONE}",
        f"backbone MACs per image at {RESOLUTIONS}: {[f'{m / 1e6:.2f}M' for m in r.resolution_macs]}; "
        f"predictor ({PREDICTOR_SIZE}px): {r.predictor_macs / 1e6:.2f}M",
        f"{'model':<28}{'accuracy':>10}{'MACs/image':>14}",
        f"{f'fixed {RESOLUTIONS[0]}px':<28}{r.fixed_accuracy:>10.4f}{r.fixed_macs / 1e6:>13.2f}M",
        f"{'DRNet (predicted res.)':<28}{r.drnet_accuracy:>10.4f}{r.drnet_macs / 1e6:>13.2f}M",
        f"DRNet MACs counted by FlopCounterMode over the routed test run: {r.drnet_macs_counted / 1e6:.2f}M/image",
        f"resolutions chosen on the test set: {r.resolution_counts}",
        "DRNet backbone accuracy forced to one resolution: "
        + ", ".join(f"{k}px {v:.4f}" for k, v in r.per_resolution_accuracy.items()),
        f"ratio DRNet / fixed MACs: {r.drnet_macs / r.fixed_macs:.3f} "
        f"({1 - r.drnet_macs / r.fixed_macs:.1%} fewer); accuracy difference "
        f"{100 * (r.drnet_accuracy - r.fixed_accuracy):+.2f} points",
        f"wall time {r.seconds:.0f}s, process CPU time {r.cpu_seconds:.0f}s ({r.threads} threads)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    print(report(run(epochs=args.epochs, seed=args.seed, threads=args.threads or None)))


if __name__ == "__main__":
    main()
