"""Helpers shared by the backbone tests (``test_backbones_zoo``, ``test_tinynet``, ``test_spconv``)."""

from __future__ import annotations

import torch
from torch import nn


def perturb_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters (in place), so eval outputs depend on every buffer.

    Freshly built models have mean 0 / variance 1 / weight 1 / bias 0 everywhere, which would let a
    loader that drops or swaps BN tensors pass a logits comparison unnoticed.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=gen)
                    m.bias.normal_(0.0, 0.1, generator=gen)
    return model
