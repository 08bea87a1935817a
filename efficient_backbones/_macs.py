"""Counting parameters and multiply-accumulates the way the papers report them.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, linear layers and
matrix products; FLOPs / 2), on one image in eval mode, which is what the published tables count:
element-wise work (activations, normalisation, pooling, gating) is left out. Because the counter
records the operations that actually run, it also gives the true cost of dynamic models (a DRNet
image at its predicted resolution, plus its predictor).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_params"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors once)."""
    seen: dict[int, int] = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())


def count_macs(
    model: nn.Module,
    input_size: tuple[int, int, int] | None = None,
    inputs: torch.Tensor | None = None,
) -> int:
    """MACs of one forward pass in eval mode, per image of the batch.

    Args:
        model: the model; its train/eval state is restored afterwards.
        input_size: ``(C, H, W)``; defaults to the model's ``pretrained_cfg['input_size']``.
        inputs: a batch to run instead of one random image (MACs are divided by its size).
    """
    if inputs is None:
        if input_size is None:
            input_size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
        device = next(iter(model.parameters()), torch.empty(0)).device
        inputs = torch.randn(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // (2 * inputs.shape[0])
