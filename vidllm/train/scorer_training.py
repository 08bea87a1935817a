"""Stage 1: train the dual encoder that scores frames and patches against the question.

Free Video-LLM (Han et al., 2024, arXiv:2410.10441) relies on CLIP for two decisions: which
frames the slow path keeps (text-frame cosine) and where the region of interest is (text-patch
cosine). Our CLIP is trained here, on the synthetic world, for exactly those two:

- frame loss: for every frame and text of a batch, whether a subject of the text is on screen,
  with SigLIP's pairwise sigmoid loss (positives and negatives weighted equally) (Zhai et al., 2023, "Sigmoid Loss for Language Image
  Pre-Training", Eq. 1; a frame shows several objects and a text may match several frames, which
  the softmax of CLIP's InfoNCE cannot express);
- patch loss: the same per cell of the patch grid, against how much of the cell the subjects'
  boxes cover (:meth:`vidllm.data.synthetic.Scene.annotations`), so the RoI lands on the object;
- attribute loss: the colour and shape of the object in each cell of the backbone's map (dense
  labels from the same boxes), which teaches the backbone the world's objects fast; the video
  LLM's vision tower starts from this backbone;
- position loss: each cell of the backbone's map regresses its own centre, so the features say
  where in the frame they are (see :class:`vidllm.train.dual_encoder.DualEncoder`).

Texts are the questions the reducer will be asked (every template, open and multiple choice)
and object descriptions; labels follow :func:`vidllm.train.data.subject_predicate`.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vidllm._vision import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess, as_frames
from vidllm.data.synthetic import SHAPES
from vidllm.train.data import ScorerBatch, scorer_batch
from vidllm.train.dual_encoder import DualEncoder, DualEncoderConfig
from vidllm.train.loop import Stage, decay_groups
from vidllm.train.presets import Preset

logger = logging.getLogger(__name__)

METRICS = ("frame_loss", "patch_loss", "attribute_loss", "position_loss", "frame_acc", "patch_hit")


def build_dual_encoder(preset: Preset, tokenizer) -> DualEncoder:
    """The stage-1 model of ``preset``, freshly initialised (seeded by the caller)."""
    spec = preset.scorer
    config = DualEncoderConfig(
        backbone=preset.model.tower.backbone,
        backbone_kwargs=dict(preset.model.tower.backbone_kwargs),
        image_size=preset.model.tower.image_size,
        embed_dim=spec.embed_dim,
        patch_hidden=spec.patch_hidden,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        text_width=spec.text_width,
        text_layers=spec.text_layers,
        text_heads=spec.text_heads,
    )
    return DualEncoder(config)


def patch_grid(model: DualEncoder) -> tuple[int, int]:
    size = model.config.image_size
    with torch.no_grad():
        _, patches = model.image_encoder.eval()(torch.zeros(1, 3, size, size))
    model.image_encoder.train()
    return int(patches.shape[2]), int(patches.shape[3])


def balanced_mean(values: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over the positive entries plus mean over the others (each side counts once).

    Objects fill a few percent of the cells and a subject is on screen in a quarter of the
    frame-text pairs: with a plain mean the "nothing here" answer wins for hundreds of steps.
    """
    zero = values.sum() * 0.0
    pos = values[positive].mean() if positive.any() else zero
    neg = values[~positive].mean() if (~positive).any() else zero
    return pos + neg


def balanced_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy (soft targets allowed), balanced between positive and negative entries."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return balanced_mean(loss, targets > 0)


def scorer_loss(
    module: nn.Module,
    batch: ScorerBatch,
    step: int,
    *,
    tokenizer,
    preprocess: ImagePreprocess,
    patch_loss_weight: float,
    attribute_loss_weight: float = 1.0,
    position_loss_weight: float = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Frame loss + per-cell loss + per-cell colour, shape and position losses, each balanced
    between positives and negatives; metrics: the two losses, frame accuracy at
    logit 0, and how often the best cell of a positive pair lies on a subject."""
    device = next(module.parameters()).device
    pixels = preprocess(as_frames(batch.frames), device)
    tokens = tokenizer(batch.texts, padding=True, return_tensors="pt")
    frame_logits, patch_logits, attribute_logits = module(
        pixels, tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
    )
    colors = torch.from_numpy(batch.cell_colors).to(device)
    shapes = torch.from_numpy(batch.cell_shapes).to(device)
    n_colors = int(attribute_logits.shape[1]) - len(SHAPES) - 1 - 2
    n_shapes = len(SHAPES) + 1
    color_logits, shape_logits, position = attribute_logits.float().split([n_colors, n_shapes, 2], dim=1)
    h, w = position.shape[-2:]
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    grid_xy = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, h, w): x then y
    position_loss = F.mse_loss(position, grid_xy.expand_as(position))
    per_cell = F.cross_entropy(color_logits, colors, reduction="none") + F.cross_entropy(
        shape_logits, shapes, reduction="none"
    )
    attribute_loss = balanced_mean(per_cell, colors < n_colors - 1)
    frame_labels = torch.from_numpy(batch.frame_labels).to(device)
    patch_labels = torch.from_numpy(batch.patch_labels).to(device)
    frame_loss = balanced_bce(frame_logits.float(), frame_labels)
    patch_loss = balanced_bce(patch_logits.float(), patch_labels)
    with torch.no_grad():
        frame_acc = float(((frame_logits > 0).float() == frame_labels).float().mean())
        positive = frame_labels > 0
        if positive.any():
            best = patch_logits[positive].flatten(1).argmax(1)
            hit = patch_labels[positive].flatten(1).gather(1, best[:, None]) > 0
            patch_hit = float(hit.float().mean())
        else:
            patch_hit = float("nan")
    loss = (
        frame_loss
        + patch_loss_weight * patch_loss
        + attribute_loss_weight * attribute_loss
        + position_loss_weight * position_loss
    )
    metrics = {
        "frame_loss": float(frame_loss.detach()),
        "patch_loss": float(patch_loss.detach()),
        "attribute_loss": float(attribute_loss.detach()),
        "position_loss": float(position_loss.detach()),
        "frame_acc": frame_acc,
        "patch_hit": patch_hit,
    }
    return loss, metrics


def scorer_stage(preset: Preset, tokenizer, model: DualEncoder) -> Stage:
    """Stage 1 of ``preset`` as a :class:`vidllm.train.loop.Stage`."""
    spec = preset.scorer
    grid = patch_grid(model)
    preprocess = ImagePreprocess(
        size=model.config.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"
    )
    groups = decay_groups(model.named_parameters(), spec.lr, spec.weight_decay)
    batch_fn = lambda step, rank, world_size: scorer_batch(
        step,
        seed=preset.seed,
        scenes=spec.scenes,
        frames_per_scene=spec.frames_per_scene,
        texts=spec.texts,
        grid=grid,
        mc_prob=spec.mc_prob,
        yuv420_prob=spec.yuv420_prob,
        rank=rank,
        world_size=world_size,
    )
    loss_fn = partial(
        scorer_loss,
        tokenizer=tokenizer,
        preprocess=preprocess,
        patch_loss_weight=spec.patch_loss_weight,
        attribute_loss_weight=spec.attribute_loss_weight,
        position_loss_weight=spec.position_loss_weight,
    )
    return Stage(
        name="scorer",
        module=model,
        param_groups=groups,
        steps=spec.steps,
        batch_fn=batch_fn,
        loss_fn=loss_fn,
        warmup=spec.warmup,
        metric_names=METRICS,
    )


__all__ = ["METRICS", "build_dual_encoder", "patch_grid", "scorer_loss", "scorer_stage"]
