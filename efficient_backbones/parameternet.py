"""ParameterNet: a low-FLOPs GhostNet given many more parameters through dynamic convolutions.

Paper: Han, Wang, Guo, Wu, "ParameterNet: Parameters Are All You Need for Large-scale Visual
Pretraining of Mobile Networks", CVPR 2024, arXiv:2306.14525. Dynamic convolution: Sec. 3.2
(Eq. 3-4); ParameterNet-600M: Sec. 4.1 (GhostNet with DynamicConv, 4 experts, 34.5M params,
0.6G FLOPs, 81.6% top-1 after ImageNet-22K pretraining).

The exact configuration is read from the official code, huawei-noah/Efficient-AI-Backbones
``parameternet_pytorch/cv/parameternet.py``: a deeper GhostNet block table (below) at width 1.9
with Hardswish activations (SE included), and :class:`DynamicConv` in the stem, both
convolutions of every ghost module, both projection-shortcut convolutions and the last 1x1
ConvBnAct; the strided depthwise convolutions, SE and ``conv_head`` stay static. Stochastic
depth rises linearly over the block groups. State-dict keys equal the official ones
(``*.routing.weight``, ``*.cond_conv.weight``), see ``manifests/parameternet_600m.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from efficient_backbones._builder import build_model_with_cfg
from efficient_backbones._registry import register_model
from efficient_backbones.ghostnet import BlockCfg, GhostNet, clean_state_dict, ghostnet_cfg

__all__ = ["PARAMETERNET_600M_BLOCKS", "checkpoint_filter_fn"]

# Official ``_create_parameternet_600m`` table at width 1.0: (kernel, expansion, out, SE, stride).
PARAMETERNET_600M_BLOCKS: tuple[tuple[BlockCfg, ...], ...] = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((3, 120, 40, 0.25, 1), (3, 120, 40, 0.25, 1)),
    ((3, 240, 80, 0, 2),),
    (
        (3, 200, 80, 0, 1),
        (3, 200, 80, 0, 1),
        (3, 200, 80, 0, 1),
        (3, 480, 112, 0.25, 1),
        (3, 672, 112, 0.25, 1),
        (3, 672, 112, 0.25, 1),
    ),
    ((5, 672, 160, 0.25, 2),),
    tuple((3, 960, 160, 0.25, 1) for _ in range(5)),
)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official ParameterNet checkpoint -> ours (same keys once unwrapped from a training checkpoint)."""
    return clean_state_dict(state_dict)


def _create_parameternet(variant: str, pretrained: bool = False, **kwargs: Any) -> GhostNet:
    model_kwargs = {**model_cfgs[variant], **kwargs}
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
    "parameternet_600m": dict(
        block_cfgs=PARAMETERNET_600M_BLOCKS, width=1.9, act_layer=nn.Hardswish, num_experts=4
    ),
}

default_cfgs: dict[str, dict[str, Any]] = {
    # The official release publishes no checkpoint URL; pretrained=True needs a local file.
    "parameternet_600m": ghostnet_cfg(interpolation="bilinear"),
}


@register_model
def parameternet_600m(pretrained: bool = False, **kwargs: Any) -> GhostNet:
    """ParameterNet-600M (34.5M params, about 590M MACs with the kernel mixing, 81.6% top-1)."""
    return _create_parameternet("parameternet_600m", pretrained, **kwargs)
