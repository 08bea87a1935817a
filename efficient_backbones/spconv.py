"""SPConv-ResNet: ResNet with every bottleneck's 3x3 convolution replaced by SPConv.

Paper: Zhang et al., "Split to Be Slim: An Overlooked Redundancy in Vanilla Convolution",
IJCAI 2020 (https://arxiv.org/abs/2006.12085), Sec. 4.2 (ImageNet, ResNet-50 with alpha = 1/2:
18.35M parameters, 2.91G FLOPs, 76.26 top-1). Official code: github.com/qiulinzhang/SPConv.pytorch
(``code/resnet_sp.py``): a torchvision ResNet-50 whose ``Bottleneck.conv2`` is ``SPConv_3x3``; the
block keeps its own BN + ReLU after the SPConv (which has two BNs inside).

The ResNet skeleton (7x7 stem, max-pool, four stages of bottlenecks, stride on the 3x3 as in
torchvision's "v1.5", 1x1-conv + BN shortcut) is timm's ``ResNet`` with our block plugged in, so the
state_dict uses the torchvision / official key names (``layer1.0.conv2.gwc.weight``, ``fc.weight``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from timm.models.resnet import ResNet
from torch import nn

from efficient_backbones._builder import build_model_with_cfg, default_cfg
from efficient_backbones._features import PatchTokensMixin
from efficient_backbones._registry import register_model
from efficient_backbones.layers.spconv import SPConv2d

__all__ = ["SPBottleneck", "SPConvResNet", "checkpoint_filter_fn"]

logger = logging.getLogger(__name__)


class SPBottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> SPConv 3x3 -> 1x1, expansion 4) with the official layout."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 1,
        base_width: int = 64,
        reduce_first: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        drop_path: nn.Module | None = None,
        alpha: float = 0.5,
        **kwargs: Any,  # timm's block arguments this block has no use for (attn_layer, aa_layer, ...)
    ) -> None:
        super().__init__()
        if cardinality != 1 or reduce_first != 1 or dilation != 1:
            raise ValueError("SPBottleneck supports cardinality=1, reduce_first=1, dilation=1 only")
        for unused in ("attn_layer", "aa_layer", "drop_block"):
            if kwargs.get(unused) is not None:
                raise ValueError(f"SPBottleneck does not support {unused}")
        width = int(planes * base_width / 64)
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.act1 = act_layer(inplace=True)
        self.conv2 = SPConv2d(width, width, stride=stride, alpha=alpha)
        self.bn2 = norm_layer(width)
        self.act2 = act_layer(inplace=True)
        self.conv3 = nn.Conv2d(width, outplanes, 1, bias=False)
        self.bn3 = norm_layer(outplanes)
        self.act3 = act_layer(inplace=True)
        self.downsample = downsample
        self.drop_path = drop_path if drop_path is not None else nn.Identity()

    def zero_init_last(self) -> None:
        if getattr(self.bn3, "weight", None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act3(self.drop_path(x) + shortcut)


class SPConvResNet(PatchTokensMixin, ResNet):
    """A ResNet of :class:`SPBottleneck` blocks.

    Args:
        layers: blocks per stage (ResNet-50: ``(3, 4, 6, 3)``).
        alpha: representative fraction of each SPConv's input channels.
        **kwargs: timm ``ResNet`` arguments (``num_classes``, ``in_chans``, ``drop_path_rate``, ...).
    """

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), alpha: float = 0.5, **kwargs: Any) -> None:
        block_args = {**kwargs.pop("block_args", {}), "alpha": alpha}
        # The official model does not zero-init the last BN of each block.
        kwargs.setdefault("zero_init_last", False)
        super().__init__(SPBottleneck, layers, block_args=block_args, **kwargs)
        self.alpha = alpha

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official checkpoints (saved from ``nn.DataParallel``) carry a ``module.`` prefix; drop it."""
    state_dict = state_dict.get("state_dict", state_dict.get("model", state_dict))
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


SPCONV_CFGS: dict[str, dict[str, Any]] = {
    "spconv_resnet50": {"layers": (3, 4, 6, 3), "alpha": 0.5},
}

default_cfgs: dict[str, dict[str, Any]] = {
    "spconv_resnet50": default_cfg(first_conv="conv1", classifier="fc", paper_ids="arXiv:2006.12085"),
}


def _create_spconv(variant: str, pretrained: bool = False, **kwargs: Any) -> SPConvResNet:
    kwargs = {**SPCONV_CFGS[variant], **kwargs}
    return build_model_with_cfg(
        SPConvResNet,
        variant,
        pretrained,
        default_cfgs=default_cfgs,
        checkpoint_filter_fn=checkpoint_filter_fn,
        # Stages are the feature levels (``layer1`` ...), so they stay whole.
        feature_cfg={"flatten_sequential": False},
        **kwargs,
    )


@register_model
def spconv_resnet50(pretrained: bool = False, **kwargs: Any) -> SPConvResNet:
    """SPConv-ResNet-50, alpha = 1/2 (18.35M params, 2.91G MACs at 224)."""
    return _create_spconv("spconv_resnet50", pretrained, **kwargs)
