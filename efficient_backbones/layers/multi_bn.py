"""Resolution-aware BatchNorm: one set of BN statistics and affine parameters per input resolution.

Paper: Zhu et al., "Dynamic Resolution Network", NeurIPS 2021 (https://arxiv.org/abs/2106.02898),
Sec. 3.2: activations of one network fed several resolutions have different statistics, so
sharing a BN across them mixes the statistics and costs accuracy; a private BN per resolution
(a few thousand parameters per layer) removes that at no compute cost.

:func:`convert_to_multi_resolution_norm` swaps every BatchNorm of any model (including timm's
``BatchNormAct2d``, which carries its activation) for a :class:`MultiResolutionNorm` holding one
copy per resolution, initialised from the original, so a trained single-resolution model starts
from its own statistics. :func:`set_resolution_index` selects which copy the next forward uses.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "MultiResolutionNorm",
    "convert_to_multi_resolution_norm",
    "expand_single_resolution_state_dict",
    "set_resolution_index",
]

logger = logging.getLogger(__name__)


class MultiResolutionNorm(nn.Module):
    """``num_resolutions`` copies of a norm layer; ``index`` picks the one a forward goes through."""

    def __init__(self, norm: nn.Module, num_resolutions: int) -> None:
        super().__init__()
        if num_resolutions < 1:
            raise ValueError("num_resolutions must be at least 1")
        self.norms = nn.ModuleList(copy.deepcopy(norm) for _ in range(num_resolutions))
        self.index = 0

    @property
    def num_resolutions(self) -> int:
        return len(self.norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.index](x)

    def extra_repr(self) -> str:
        return f"num_resolutions={self.num_resolutions}, index={self.index}"


def convert_to_multi_resolution_norm(
    model: nn.Module,
    num_resolutions: int,
    norm_types: tuple[type[nn.Module], ...] = (_BatchNorm,),
) -> list[MultiResolutionNorm]:
    """Replace, in place, every ``norm_types`` module of ``model`` by a :class:`MultiResolutionNorm`.

    Returns the new modules (in module order) so a caller can switch them together. A model
    without BatchNorm (e.g. a LayerNorm transformer) is left unchanged and an empty list returned.
    """
    converted: list[MultiResolutionNorm] = []

    def _convert(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, MultiResolutionNorm):
                converted.append(child)
            elif isinstance(child, norm_types):
                wrapper = MultiResolutionNorm(child, num_resolutions)
                wrapper.train(child.training)
                setattr(parent, name, wrapper)
                converted.append(wrapper)
            else:
                _convert(child)

    if isinstance(model, norm_types):
        raise TypeError("pass the model containing the norm layers, not a norm layer itself")
    _convert(model)
    if not converted:
        logger.warning(
            "%s has no %s layers; it runs without per-resolution statistics",
            type(model).__name__,
            [t.__name__ for t in norm_types],
        )
    return converted


def set_resolution_index(norms: list[MultiResolutionNorm] | nn.Module, index: int) -> None:
    """Route every per-resolution norm (a list from the conversion, or all in a model) to ``index``."""
    modules = norms.modules() if isinstance(norms, nn.Module) else norms
    for m in modules:
        if isinstance(m, MultiResolutionNorm):
            if not 0 <= index < m.num_resolutions:
                raise IndexError(f"resolution index {index} out of range for {m.num_resolutions} resolutions")
            m.index = index


def expand_single_resolution_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Map a checkpoint of the unconverted model onto the converted one (each BN copied per resolution).

    Keys already in the per-resolution layout pass through, so the function is idempotent.
    """
    prefixes = {
        name: m.num_resolutions for name, m in model.named_modules() if isinstance(m, MultiResolutionNorm)
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module_name, _, leaf = key.rpartition(".")
        if module_name in prefixes:
            for i in range(prefixes[module_name]):
                out[f"{module_name}.norms.{i}.{leaf}"] = value.clone()
        else:
            out[key] = value
    return out
