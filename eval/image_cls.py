"""Image classification for the backbone zoo: top-1 / top-5, parameters, MACs, images per second.

No ImageNet and no pretrained weights exist here, so the built-in real data set is scikit-learn's
``load_digits`` (1,797 real 8x8 grey images of handwritten digits, 10 classes): a fixed, stratified
75 / 25 train / test split (``random_state=0``, whatever ``--seed`` is), each image scaled to
[0, 1], upscaled bilinearly to the input size, repeated to 3 channels and normalised with the
model's mean and std. ``imagefolder:DIR`` reads ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``
(or ``val``) the torchvision way.

With ``--train-epochs`` the model (``efficient_backbones.create_model(name, num_classes=K)``, or a
timm model) is trained on the train split first: AdamW, one-cycle schedule, label smoothing 0.1,
and light affine augmentation (rotation within 10 degrees, scale 0.9-1.1, shifts up to one source
pixel), which a from-scratch model needs on 1,347 images. MACs are counted by
``torch.utils.flop_counter`` at the input size (FLOPs / 2; convolutions, linear layers and matrix
products, as the papers count them; :func:`efficient_backbones._macs.count_macs`). Images per
second is eval-mode inference over the test split, after a warm-up batch, with this process's
threads.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SHARE = 0.25
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


@dataclass
class ImageClsConfig:
    model: str
    data: str = "digits"
    checkpoint: str | None = None
    input_size: int | None = None
    train_epochs: int = 0
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 0.05
    seed: int = 0
    max_steps: int | None = None
    save: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # torch CPU threads (one avoids spinning threads on a shared machine)
    progress: bool = False


@dataclass
class ImageData:
    """Images as float tensors in [0, 1], ``(N, C, H, W)`` at their native size, and labels."""

    train_x: torch.Tensor | None
    train_y: torch.Tensor | None
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    name: str


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def load_digits_data() -> ImageData:
    """scikit-learn's digits, the fixed stratified split (see the module docstring)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_SHARE,
        random_state=DIGITS_SPLIT_SEED,
        stratify=digits.target,
    )
    return ImageData(
        images[train], labels[train], images[test], labels[test], [str(i) for i in range(10)], "digits"
    )


def _read_folder(split_dir: Path, classes: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((split_dir / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(path) as image:
                image = image.convert("RGB").resize((size, size), Image.BILINEAR)
                images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {split_dir}/<class>/")
    return torch.stack(images).float() / 255.0, torch.tensor(labels)


def load_imagefolder(root: str | os.PathLike, size: int) -> ImageData:
    """``root/train/<class>/*`` (optional) and ``root/test/<class>/*`` or ``root/val/<class>/*``."""
    root = Path(root).expanduser()
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if test_dir is None:
        raise FileNotFoundError(f"{root} has no test/ or val/ folder of class folders")
    classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    test_x, test_y = _read_folder(test_dir, classes, size)
    train_x = train_y = None
    if (root / "train").is_dir():
        train_classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if train_classes != classes:
            raise ValueError(f"{root}: train/ and {test_dir.name}/ have different class folders")
        train_x, train_y = _read_folder(root / "train", classes, size)
    return ImageData(train_x, train_y, test_x, test_y, classes, f"imagefolder:{root}")


def load_data(spec: str, size: int) -> ImageData:
    if spec == "digits":
        return load_digits_data()
    if spec.startswith("imagefolder:"):
        return load_imagefolder(spec.split(":", 1)[1], size)
    raise ValueError(f"--data must be 'digits' or 'imagefolder:DIR', got {spec!r}")


def to_input(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Native images -> the model's input: bilinear resize, 3 channels, normalised."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: float) -> torch.Tensor:
    """Random rotation (10 degrees), scale (0.9-1.1) and shift (``max_shift`` of the half-width)."""
    n = x.shape[0]
    rand = lambda: torch.rand(n, generator=generator) * 2 - 1
    angle = rand() * math.radians(10)
    scale = 1 + rand() * 0.1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, rand() * max_shift], 1), torch.stack([sin, cos, rand() * max_shift], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------


def create_classifier(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A zoo model (``efficient_backbones``) or, failing that, a timm model, with a fresh head."""
    import efficient_backbones as eb

    if eb.is_model(name):
        return eb.create_model(name, num_classes=num_classes, **kwargs)
    import timm

    if timm.is_model(name):
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    raise ValueError(f"unknown model {name!r}: see efficient_backbones.list_models()")


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load weights, skipping tensors whose shape differs (a head for another number of classes);
    return the skipped names. Anything else that does not match is an error."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise RuntimeError(
            f"{path} does not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}"
        )
    if skipped:
        logger.info("%s: re-initialised %s (shape differs: another number of classes)", path, skipped)
    return skipped


def zero_head(model: nn.Module) -> None:
    """Start a new classifier at zero. EfficientNet-style initialisation scales the head by
    ``1/sqrt(num_classes)``, which for 10 classes gives initial logits in the tens (a loss near 6)
    and a first few hundred steps spent unlearning them; a zero head starts at chance."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear | nn.Conv2d):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    else:
        logger.info(
            "%s: no Linear/Conv2d classifier found; its head keeps its initialisation", type(model).__name__
        )


def model_input_size(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def model_norm(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


# ----------------------------------------------------------------------------------------------
# train and evaluate
# ----------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    data: ImageData,
    config: ImageClsConfig,
    size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> dict[str, Any]:
    if data.train_x is None:
        raise ValueError(f"{data.name} has no train split to fine-tune on")
    generator = torch.Generator().manual_seed(config.seed)
    n = len(data.train_y)
    # the last partial batch is dropped: BatchNorm on a handful of images with 1x1 maps (a
    # stride-32 network at 32 px) normalises by a variance of almost nothing and wrecks training
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch
    total = config.train_epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    lr = config.lr or 2e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(total, 1), pct_start=0.15
    )
    max_shift = 2.0 / data.test_x.shape[-1]  # one source pixel each way, in affine_grid units
    model.train()
    step, started, losses = 0, time.perf_counter(), []
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"train {config.model}", unit="step", dynamic_ncols=True)
    while step < total:
        for index in torch.randperm(n, generator=generator).split(batch):
            if step >= total or len(index) < batch:
                break
            x = to_input(data.train_x[index], size, mean, std)
            x = augment(x, generator, max_shift)
            loss = F.cross_entropy(model(x), data.train_y[index], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-steps_per_epoch:]):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return {
        "train_steps": step,
        "train_seconds": time.perf_counter() - started,
        "final_loss": float(np.mean(losses[-steps_per_epoch:])) if losses else None,
        "lr": lr,
    }


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: ImageData, size: int, mean: torch.Tensor, std: torch.Tensor, batch_size: int
) -> dict[str, Any]:
    """Top-1 / top-5 over the test split, and images per second of that pass (after a warm-up batch)."""
    model.eval()
    x_all, y_all = data.test_x, data.test_y
    model(to_input(x_all[:batch_size], size, mean, std))  # warm-up: allocator, lazy init
    correct1 = correct5 = 0
    seconds = 0.0
    k = min(5, len(data.classes))
    for start in range(0, len(y_all), batch_size):
        x = to_input(x_all[start : start + batch_size], size, mean, std)
        y = y_all[start : start + batch_size]
        t0 = time.perf_counter()
        logits = model(x)
        seconds += time.perf_counter() - t0
        top = logits.topk(k, dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
    n = len(y_all)
    return {
        "top1": correct1 / n,
        "top5": correct5 / n,
        "top5_k": k,
        "n_test": n,
        "images_per_s": n / seconds if seconds else None,
    }


def run_image_cls(config: ImageClsConfig) -> dict[str, Any]:
    """Build (and optionally fine-tune) a classifier and measure it; a JSON-able result dict.

    ``config.threads`` holds for this call only: the caller's torch thread count is restored.
    """
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run_image_cls(config)
    finally:
        torch.set_num_threads(threads)


def _run_image_cls(config: ImageClsConfig) -> dict[str, Any]:
    from efficient_backbones._macs import count_macs, count_params

    torch.manual_seed(config.seed)
    probe_size = config.input_size or 224
    data = load_data(config.data, probe_size)
    model = create_classifier(config.model, len(data.classes), **config.model_kwargs)
    size = config.input_size or model_input_size(model)
    if config.data.startswith("imagefolder:") and size != probe_size:
        data = load_data(config.data, size)
    if config.checkpoint:
        skipped = load_checkpoint(model, config.checkpoint)
    else:
        skipped = []
    if config.train_epochs > 0 and (not config.checkpoint or skipped):
        zero_head(model)
    mean, std = model_norm(model)
    training = train(model, data, config, size, mean, std) if config.train_epochs > 0 else {}
    if config.save:
        from safetensors.torch import save_file

        Path(config.save).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, config.save)
    metrics = evaluate(model, data, size, mean, std, config.batch_size)
    return {
        "model": config.model,
        "data": data.name,
        "input_size": size,
        "num_classes": len(data.classes),
        "n_train": 0 if data.train_y is None else len(data.train_y),
        "train_epochs": config.train_epochs,
        **training,
        **metrics,
        "params": count_params(model),
        "macs": count_macs(model, (3, size, size)),
        "threads": torch.get_num_threads(),
        "checkpoint": config.checkpoint,
        "reinitialised": skipped,
        "config": asdict(config),
    }


# ----------------------------------------------------------------------------------------------
# the digits suite
# ----------------------------------------------------------------------------------------------

#: Per-model settings of the digits fine-tuning suite (from random initialisation).
SUITE: dict[str, dict[str, Any]] = {
    "ghostnet_100": {"input_size": 32, "train_epochs": 15, "lr": 3e-3},
    # a stride-32 network at 32 px ends in 1x1 maps: it needs more epochs (96.4% after 15, 98.4% after 30)
    "tinynet_e": {"input_size": 32, "train_epochs": 30, "lr": 3e-3},
    "vig_ti_224": {"input_size": 32, "train_epochs": 15, "lr": 1e-3},
    "pvig_ti_224": {"input_size": 32, "train_epochs": 15, "lr": 1e-3},
}


def run_digits_suite(
    models: list[str],
    *,
    input_size: int | None = None,
    train_epochs: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Fine-tune each model on digits from random initialisation and measure it."""
    results = []
    for name in models:
        settings = dict(SUITE.get(name, {"input_size": 32, "train_epochs": 15}))
        if input_size is not None:
            settings["input_size"] = input_size
        if train_epochs is not None:
            settings["train_epochs"] = train_epochs
        started = time.perf_counter()
        result = run_image_cls(
            ImageClsConfig(
                model=name, data="digits", seed=seed, threads=threads, progress=progress, **settings
            )
        )
        result["wall_seconds"] = time.perf_counter() - started
        logger.info("%s: top-1 %.4f in %.0f s", name, result["top1"], result["wall_seconds"])
        results.append(result)
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    """A markdown table of image-classification results."""
    lines = [
        "| model | data | input | epochs | top-1 | top-5 | params (M) | MACs (M) | images/s | train (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        train_s = f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else "-"
        ips = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "-"
        lines.append(
            f"| {r['model']} | {r['data']} | {r['input_size']} | {r['train_epochs']} | {r['top1']:.4f} | "
            f"{r['top5']:.4f} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e6:.2f} | {ips} | {train_s} |"
        )
    threads = {r["threads"] for r in results}
    return (
        "\n".join(lines)
        + f"\n\nimages/s: eval-mode batches of 64 on {', '.join(map(str, threads))} CPU thread(s)\n"
    )
