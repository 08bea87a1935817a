"""GhostNetV2: GhostNet with DFC attention on the expansion ghost modules.

Paper: Tang, Han, Guo, Xu, Xu, Wang, "GhostNetV2: Enhance Cheap Operation with Long-Range
Attention", NeurIPS 2022, arXiv:2211.12905. DFC attention: Sec. 3.2 (Eq. 4-6); where it goes:
Sec. 3.3 / Fig. 4 (parallel to the ghost module of each block's expansion, from the third block
on; the projection module stays plain). The block table is GhostNet's (``GHOSTNET_BLOCKS``).
Official code: huawei-noah/Efficient-AI-Backbones ``ghostnetv2_pytorch/model/ghostnetv2_torch.py``.

Its state-dict layout is the same as timm's ``ghostnetv2_*`` (``ghost1.short_conv.{0..5}`` hold
the DFC branch), and ours matches both: the committed ``manifests/ghostnetv2_100.json``
(key -> shape of the official model, built locally from the official code) loads through
:func:`checkpoint_filter_fn` with no missing or unexpected key, and timm's weights give
identical logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from efficient_backbones._builder import build_model_with_cfg
from efficient_backbones._registry import register_model
from efficient_backbones.ghostnet import GhostNet, clean_state_dict, ghostnet_cfg

__all__ = ["checkpoint_filter_fn"]

DFC_FROM_BLOCK = 2
"""Blocks 0 and 1 (the stride-1 and first stride-2 block) have no DFC attention (official code)."""

_OFFICIAL_URL = "https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download/GhostNetV2"


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official GhostNetV2 (``ck_ghostnetv2_*.pth.tar``) or timm checkpoint -> ours.

    The official release is a timm training checkpoint (``state_dict`` / ``state_dict_ema``
    wrapper, ``module.`` prefix when trained with DataParallel); the keys inside are ours.
    """
    return clean_state_dict(state_dict)


def _create_ghostnetv2(variant: str, pretrained: bool = False, **kwargs: Any) -> GhostNet:
    model_kwargs = {"dfc_from_block": DFC_FROM_BLOCK, **model_cfgs[variant], **kwargs}
    return build_model_with_cfg(
        GhostNet,
        variant,
        pretrained,
        default_cfgs=default_cfgs,
        checkpoint_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True),
        **model_kwargs,
    )


model_cfgs: dict[str, dict[str, Any]] = {
    "ghostnetv2_100": dict(width=1.0),
    "ghostnetv2_130": dict(width=1.3),
    "ghostnetv2_160": dict(width=1.6),
}

default_cfgs: dict[str, dict[str, Any]] = {
    "ghostnetv2_100": ghostnet_cfg(url=f"{_OFFICIAL_URL}/ck_ghostnetv2_10.pth.tar"),
    "ghostnetv2_130": ghostnet_cfg(url=f"{_OFFICIAL_URL}/ck_ghostnetv2_13.pth.tar"),
    "ghostnetv2_160": ghostnet_cfg(url=f"{_OFFICIAL_URL}/ck_ghostnetv2_16.pth.tar"),
}


@register_model
def ghostnetv2_100(pretrained: bool = False, **kwargs: Any) -> GhostNet:
    """GhostNetV2 1.0x (6.16M params, 167M MACs, 75.3% top-1)."""
    return _create_ghostnetv2("ghostnetv2_100", pretrained, **kwargs)


@register_model
def ghostnetv2_130(pretrained: bool = False, **kwargs: Any) -> GhostNet:
    """GhostNetV2 1.3x."""
    return _create_ghostnetv2("ghostnetv2_130", pretrained, **kwargs)


@register_model
def ghostnetv2_160(pretrained: bool = False, **kwargs: Any) -> GhostNet:
    """GhostNetV2 1.6x."""
    return _create_ghostnetv2("ghostnetv2_160", pretrained, **kwargs)
