"""Convolution followed by BatchNorm, folded into one convolution at inference.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with weight ``w * s`` and bias ``beta + (b - mean) * s`` where ``s = gamma / sqrt(var + eps)``
(the usual "BN folding" of deployment tool chains). On a CPU this saves one full pass over every
activation map, which is what small mobile networks spend much of their time on. The modules and
their state_dict stay as they are (a ``Conv2d`` and a ``BatchNorm2d``), so checkpoints load
unchanged; only the arithmetic order changes, so outputs agree with the unfolded pair to float
rounding (about 1e-6 relative in float32), not bit for bit.

The folded weights are cached on the BatchNorm module and rebuilt when any of the five tensors
they come from is replaced or modified in place (``Tensor._version``), so an optimizer step or
``load_state_dict`` is seen. While autograd records (grad enabled and a parameter requires grad)
the fold is recomputed each call so gradients reach the conv weight and the BN affine parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv_bn", "fold_conv_bn"]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of the single convolution equal to ``bn(conv(x))`` in eval mode."""
    scale = (
        bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine
        else torch.rsqrt(bn.running_var + bn.eps)
    )
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    shift = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    bias = shift * scale + bn.bias if bn.affine else shift * scale
    return weight, bias


def _sources(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, ...]:
    tensors = [conv.weight, bn.running_mean, bn.running_var]
    if conv.bias is not None:
        tensors.append(conv.bias)
    if bn.affine:
        tensors += [bn.weight, bn.bias]
    return tuple(tensors)


def _can_fold(conv: nn.Conv2d, bn: nn.Module) -> bool:
    # Exactly BatchNorm2d: subclasses (norm + activation, per-resolution BN, ...) keep their own forward.
    return (
        type(bn) is nn.BatchNorm2d
        and not bn.training
        and bn.running_mean is not None
        and conv.padding_mode == "zeros"
        and not torch.jit.is_scripting()
    )


def conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.Module) -> torch.Tensor:
    """``bn(conv(x))``, computed as one folded convolution when ``bn`` is a BatchNorm2d in eval mode."""
    if not _can_fold(conv, bn):
        return bn(conv(x))
    sources = _sources(conv, bn)
    if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
        weight, bias = fold_conv_bn(conv, bn)
    else:
        key = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        cache = bn.__dict__.get("_folded_conv_cache")
        if cache is None or cache[0] != key:
            # Normal (not inference-mode) tensors, so the module stays deep-copyable.
            with torch.inference_mode(False), torch.no_grad():
                cache = (key, *fold_conv_bn(conv, bn))
            bn.__dict__["_folded_conv_cache"] = cache
        _, weight, bias = cache
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
