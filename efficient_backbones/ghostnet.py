"""GhostNet: ghost bottlenecks in a MobileNetV3-like layout.

Paper: Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020, arXiv:1911.11907;
architecture in Sec. 3.2 / Table 1 (the block table below), width multiplier in Sec. 4.2.
Official code: huawei-noah/Efficient-AI-Backbones ``ghostnet_pytorch/ghostnet.py``; timm's
``ghostnet_*`` keep the same state-dict layout, and ours matches both key for key (tests load
timm's weights and compare logits).

The :class:`GhostNet` class is shared with GhostNetV2 (``dfc_from_block``: DFC attention in the
expansion modules) and ParameterNet (``num_experts``: dynamic convolutions); their variant
tables live in ``ghostnetv2.py`` and ``parameternet.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d, make_divisible
from timm.models import checkpoint_seq
from torch import nn

from efficient_backbones._builder import build_model_with_cfg, default_cfg
from efficient_backbones._features import PatchTokensMixin
from efficient_backbones._registry import register_model
from efficient_backbones.layers.ghost import ConvBnAct, GhostBottleneck, conv_norm, make_conv_layer

__all__ = ["GHOSTNET_BLOCKS", "GhostNet", "checkpoint_filter_fn", "clean_state_dict"]

logger = logging.getLogger(__name__)

BlockCfg = tuple[int, int, int, float, int]
"""One ghost bottleneck: (depthwise kernel, expansion channels, output channels, SE ratio, stride)."""

# GhostNet Table 1, grouped as the official code groups it (one nn.Sequential per group); channel
# counts are for width 1.0.
GHOSTNET_BLOCKS: tuple[tuple[BlockCfg, ...], ...] = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    (
        (3, 200, 80, 0, 1),
        (3, 184, 80, 0, 1),
        (3, 184, 80, 0, 1),
        (3, 480, 112, 0.25, 1),
        (3, 672, 112, 0.25, 1),
    ),
    ((5, 672, 160, 0.25, 2),),
    (
        (5, 960, 160, 0, 1),
        (5, 960, 160, 0.25, 1),
        (5, 960, 160, 0, 1),
        (5, 960, 160, 0.25, 1),
    ),
)


class GhostNet(PatchTokensMixin, nn.Module):
    """GhostNet (v1), and with options GhostNetV2 and ParameterNet.

    Args:
        block_cfgs: groups of :data:`BlockCfg` at width 1.0; each group becomes one
            ``blocks.{i}`` stage, followed by a 1x1 ConvBnAct to the last expansion width.
        num_classes: classifier outputs (0: no classifier).
        width: channel multiplier; channels round to multiples of 4.
        in_chans: input channels.
        output_stride: only 32 (no dilation).
        global_pool: pooling before the head (``avg``, ``max``, ... or ``''`` for none).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly over the groups from 0 (ParameterNet).
        act_layer: activation throughout (ReLU; Hardswish in ParameterNet).
        stem_chs: stem channels at width 1.0.
        head_chs: channels of the 1x1 conv after pooling.
        dfc_from_block: blocks with this index and later (counted over the whole network) gate
            their expansion module with DFC attention (GhostNetV2 uses 2); ``None`` for none.
        num_experts: > 0 turns the stem, ghost modules, projection shortcuts and last 1x1 conv
            into :class:`~efficient_backbones.layers.dynamic_conv.DynamicConv` with this many
            experts (ParameterNet); 0 keeps static convolutions.
    """

    def __init__(
        self,
        block_cfgs: Sequence[Sequence[BlockCfg]] = GHOSTNET_BLOCKS,
        num_classes: int = 1000,
        width: float = 1.0,
        in_chans: int = 3,
        output_stride: int = 32,
        global_pool: str = "avg",
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU,
        stem_chs: int = 16,
        head_chs: int = 1280,
        dfc_from_block: int | None = None,
        num_experts: int = 0,
    ) -> None:
        super().__init__()
        if output_stride != 32:
            raise ValueError("GhostNet supports output_stride=32 only (no dilated variant)")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.eval_channels_last = True  # see forward_features
        conv_layer = make_conv_layer(num_experts)

        stem_out = make_divisible(stem_chs * width, 4)
        self.conv_stem = conv_layer(in_chans, stem_out, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_out)
        self.act1 = act_layer(inplace=True)
        self.feature_info: list[dict[str, Any]] = []

        num_groups = len(block_cfgs)
        group_dpr = [drop_path_rate * i / max(num_groups - 1, 1) for i in range(num_groups)]
        stages: list[nn.Module] = []
        prev_chs, reduction, block_idx = stem_out, 2, 0
        group_reduction: list[tuple[int, int]] = []  # (reduction, channels) after each stage
        for group_idx, group in enumerate(block_cfgs):
            blocks = []
            for kernel, exp_chs, out_chs, se_ratio, stride in group:
                out_chs = make_divisible(out_chs * width, 4)
                mid_chs = make_divisible(exp_chs * width, 4)
                blocks.append(
                    GhostBottleneck(
                        prev_chs,
                        mid_chs,
                        out_chs,
                        kernel,
                        stride,
                        act_layer=act_layer,
                        se_ratio=se_ratio,
                        use_dfc=dfc_from_block is not None and block_idx >= dfc_from_block,
                        conv_layer=conv_layer,
                        drop_path_rate=group_dpr[group_idx],
                    )
                )
                prev_chs, reduction, block_idx = out_chs, reduction * stride, block_idx + 1
            stages.append(nn.Sequential(*blocks))
            group_reduction.append((reduction, prev_chs))
        last_exp = block_cfgs[-1][-1][1]
        self.num_features = make_divisible(last_exp * width, 4)
        stages.append(
            nn.Sequential(
                ConvBnAct(prev_chs, self.num_features, 1, act_layer=act_layer, conv_layer=conv_layer)
            )
        )
        group_reduction.append((reduction, self.num_features))
        self.blocks = nn.Sequential(*stages)
        # One feature per resolution: the last stage before the next downsampling (timm taps the
        # first stage of each stride instead, e.g. ``blocks.1`` before ``blocks.2`` at stride 4).
        for idx, (red, chs) in enumerate(group_reduction):
            last_at_red = idx + 1 == len(group_reduction) or group_reduction[idx + 1][0] != red
            if last_at_red:
                self.feature_info.append(dict(num_chs=chs, reduction=red, module=f"blocks.{idx}"))

        self.head_hidden_size = head_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = nn.Conv2d(self.num_features, head_chs, 1, 1, 0, bias=True)
        self.act2 = act_layer(inplace=True)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = nn.Linear(head_chs, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^conv_stem|bn1",
            blocks=[
                (r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None),
                (r"conv_head", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.eval_channels_last and not self.training and x.device.type == "cpu":
            # CPU inference runs the body channels-last (oneDNN's depthwise and 1x1 convolutions
            # are faster on NHWC maps) and hands back a contiguous NCHW map, the same values.
            return self._body(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return self._body(x)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(conv_norm(x, self.conv_stem, self.bn1))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x, flatten=True)
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.act2(self.conv_head(self.global_pool(x))))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net")
_PROFILER_SUFFIXES = ("total_ops", "total_params")  # left behind by the thop FLOP counter


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A training checkpoint reduced to the bare state dict.

    Takes the weights out of a ``{"state_dict": ...}`` (or EMA / ``model``) wrapper, strips the
    ``module.`` prefix of ``DataParallel`` training, and drops the ``total_ops`` /
    ``total_params`` buffers that profiling with thop leaves in some official checkpoints.
    """
    for key in _WRAPPER_KEYS:
        inner = state_dict.get(key)
        if isinstance(inner, Mapping):
            state_dict = inner
            break
    out = {}
    for k, v in state_dict.items():
        if k.endswith(_PROFILER_SUFFIXES):
            continue
        out[k.removeprefix("module.")] = v
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official GhostNet or timm ``ghostnet_*`` checkpoint -> ours (the same keys once unwrapped)."""
    return clean_state_dict(state_dict)


def _create_ghostnet(variant: str, pretrained: bool = False, **kwargs: Any) -> GhostNet:
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


def ghostnet_cfg(**kwargs: Any) -> dict[str, Any]:
    """A GhostNet-family ``default_cfg`` (stem ``conv_stem``, classifier ``classifier``)."""
    return default_cfg(first_conv="conv_stem", classifier="classifier", **kwargs)


model_cfgs: dict[str, dict[str, Any]] = {
    "ghostnet_050": dict(width=0.5),
    "ghostnet_100": dict(width=1.0),
    "ghostnet_130": dict(width=1.3),
}

default_cfgs: dict[str, dict[str, Any]] = {
    "ghostnet_050": ghostnet_cfg(),
    # Official 73.98% weights; same layout as ours.
    "ghostnet_100": ghostnet_cfg(
        url="https://github.com/huawei-noah/CV-backbones/releases/download/ghostnet_pth/ghostnet_1x.pth"
    ),
    "ghostnet_130": ghostnet_cfg(),
}


@register_model
def ghostnet_050(pretrained: bool = False, **kwargs: Any) -> GhostNet:
    """GhostNet 0.5x."""
    return _create_ghostnet("ghostnet_050", pretrained, **kwargs)


@register_model
def ghostnet_100(pretrained: bool = False, **kwargs: Any) -> GhostNet:
    """GhostNet 1.0x (5.18M params, 141M MACs, 73.98% top-1)."""
    return _create_ghostnet("ghostnet_100", pretrained, **kwargs)


@register_model
def ghostnet_130(pretrained: bool = False, **kwargs: Any) -> GhostNet:
    """GhostNet 1.3x."""
    return _create_ghostnet("ghostnet_130", pretrained, **kwargs)
