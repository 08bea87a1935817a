"""G-GhostNet (GPU-efficient GhostNet): stage-wise ghost features on RegNetX.

Paper: Han, Wang, Xu, Guo, Xu, Wu, Tian, "GhostNets on Heterogeneous Devices via Cheap
Operations", IJCV 2022, arXiv:2201.03297, Sec. 4 (G-Ghost stage, Fig. 5-6; Eq. 9-11). In a stage
of ``n`` blocks, only a ``1 - lambda`` share of the output channels (``raw_planes``) runs through
the middle blocks; the rest (``cheap_planes``) is made by a cheap 1x1 convolution from the
stage's first block, plus a "mix" of the pooled intermediate features of every block, and the
stage's last block fuses both. C-Ghost (the CPU ghost module) is ``layers/ghost.py``.

Structure and state-dict keys follow the official code, huawei-noah/Efficient-AI-Backbones
``g_ghost_pytorch/g_ghost_regnet.py`` (``conv1``, ``layer{1..4}``, ``base`` / ``layers`` /
``merge`` / ``cheap`` / ``end``, ``fc``): a stage with more than two blocks is a ghost stage with
``lambda = 0.5`` and the middle blocks' group width cut to ``int(0.75 * group_width)`` (which
also sets the raw/cheap split), a stage of at most two blocks (``layer1``; ``layer2`` /
``layer4`` where shallow) is plain RegNetX. Variant widths, depths and group widths are the
official ones; params 10.5 / 15.7 / 24.6 / 32.4M for X-032 / 040 / 080 / 160.

Two differences of form, not of function: the mix pools each block's output before
concatenating rather than after (the same numbers without a full-resolution concatenation), and
the official ``LambdaLayer`` that slices the already-sliced input of the first middle block is a
plain identity shortcut (it has no parameters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from torch import nn
from torch.utils.checkpoint import checkpoint

from efficient_backbones._builder import build_model_with_cfg, default_cfg
from efficient_backbones._features import PatchTokensMixin
from efficient_backbones._registry import register_model
from efficient_backbones.ghostnet import clean_state_dict
from efficient_backbones.layers.conv_bn import conv_bn

__all__ = ["GGhostRegNet", "GGhostStage", "RegNetBottleneck", "checkpoint_filter_fn", "ghost_split"]


class RegNetBottleneck(nn.Module):
    """RegNetX block (bottleneck ratio 1): 1x1, 3x3 group conv (``group_width`` per group), 1x1."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        group_width: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        groups = out_chs // min(out_chs, group_width)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv3 = nn.Conv2d(out_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv_bn: BatchNorm folded into the convolution in eval mode (layers/conv_bn.py).
        shortcut = x if self.downsample is None else conv_bn(x, self.downsample[0], self.downsample[1])
        out = self.relu(conv_bn(x, self.conv1, self.bn1))
        out = self.relu(conv_bn(out, self.conv2, self.bn2))
        out = conv_bn(out, self.conv3, self.bn3)
        return self.relu(out.add_(shortcut))


def _downsample(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


def make_plain_stage(in_chs: int, out_chs: int, depth: int, group_width: int, stride: int) -> nn.Sequential:
    """A RegNetX stage: ``depth`` blocks, the first one strided (official ``_make_layer``)."""
    blocks = [RegNetBottleneck(in_chs, out_chs, stride, group_width, _downsample(in_chs, out_chs, stride))]
    blocks += [RegNetBottleneck(out_chs, out_chs, 1, group_width) for _ in range(1, depth)]
    return nn.Sequential(*blocks)


def ghost_split(out_chs: int, group_width: int, cheap_ratio: float = 0.5) -> tuple[int, int, int]:
    """``(raw_planes, cheap_planes, middle_group_width)`` of a G-Ghost stage (official rule).

    The middle blocks use ``int(0.75 * group_width)``; ``raw_planes`` is the largest multiple of
    that group width not above ``(1 - cheap_ratio) * out_chs``.
    """
    middle_gw = int(group_width * 0.75)
    raw = int(out_chs * (1 - cheap_ratio) / middle_gw) * middle_gw
    return raw, out_chs - raw, middle_gw


class GGhostStage(nn.Module):
    """G-Ghost stage (paper Fig. 6): ``base`` block, ``depth - 2`` thin middle blocks, cheap + mix, ``end``.

    ``x0 = base(x)``; the first ``raw_planes`` channels of ``x0`` go through the middle blocks;
    the other ``cheap_planes`` channels become ``relu(cheap(x0_c) + mix)``, where ``mix`` is a
    two-layer 1x1 MLP on the global average of ``x0`` and of every middle block's output; the
    ``end`` block sees ``[middle output, cheap features]``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        group_width: int,
        stride: int = 2,
        cheap_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"a G-Ghost stage needs at least 3 blocks, got {depth}")
        raw, cheap, middle_gw = ghost_split(out_chs, group_width, cheap_ratio)
        self.raw_planes, self.cheap_planes = raw, cheap
        self.base = RegNetBottleneck(
            in_chs, out_chs, stride, group_width, _downsample(in_chs, out_chs, stride)
        )
        self.end = RegNetBottleneck(out_chs, out_chs, 1, group_width)
        mix_in = out_chs + raw * (depth - 2)
        # Index 0 held the official global pool; the pooling happens per feature in forward().
        self.merge = nn.Sequential(
            nn.Identity(),
            nn.Conv2d(mix_in, cheap, 1, bias=False),
            nn.BatchNorm2d(cheap),
            nn.ReLU(inplace=True),
            nn.Conv2d(cheap, cheap, 1, bias=False),
            nn.BatchNorm2d(cheap),
        )
        self.cheap = nn.Sequential(nn.Conv2d(cheap, cheap, 1, bias=False), nn.BatchNorm2d(cheap))
        self.cheap_relu = nn.ReLU(inplace=True)
        self.layers = nn.Sequential(*[RegNetBottleneck(raw, raw, 1, middle_gw) for _ in range(depth - 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.base(x)
        pooled = [F.adaptive_avg_pool2d(x0, 1)]
        e = x0[:, : self.raw_planes]
        for block in self.layers:
            e = block(e)
            pooled.append(F.adaptive_avg_pool2d(e, 1))
        mix = self.merge(torch.cat(pooled, dim=1))
        c = self.cheap_relu(conv_bn(x0[:, self.raw_planes :], self.cheap[0], self.cheap[1]).add_(mix))
        return self.end(torch.cat((e, c), dim=1))


class GGhostRegNet(PatchTokensMixin, nn.Module):
    """G-Ghost RegNetX.

    Args:
        depths: blocks per stage (4 stages).
        widths: output channels per stage.
        group_width: channels per group of the 3x3 convolutions.
        num_classes: classifier outputs (0: none).
        in_chans: input channels.
        stem_chs: channels of the stride-2 3x3 stem.
        cheap_ratio: share of a ghost stage's channels made by cheap operations (``lambda``).
        ghost_stages: which stages may be ghost stages; a stage becomes one when it is listed here
            and has more than two blocks. The official code never makes ``layer1`` a ghost stage.
        global_pool: pooling before the classifier.
        drop_rate: dropout before the classifier (0.2 in the official code).
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        group_width: int,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_chs: int = 32,
        cheap_ratio: float = 0.5,
        ghost_stages: Sequence[int] = (1, 2, 3),
        global_pool: str = "avg",
        drop_rate: float = 0.2,
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(widths) != 4:
            raise ValueError("G-Ghost RegNet has 4 stages: give 4 depths and 4 widths")
        if output_stride != 32:
            raise ValueError("G-Ghost RegNet supports output_stride=32 only")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.eval_channels_last = True  # see forward_features
        self.conv1 = nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.relu = nn.ReLU(inplace=True)
        self.feature_info: list[dict[str, Any]] = [dict(num_chs=stem_chs, reduction=2, module="relu")]
        prev_chs, reduction = stem_chs, 2
        for idx, (depth, width) in enumerate(zip(depths, widths)):
            if idx in ghost_stages and depth > 2:
                stage = GGhostStage(prev_chs, width, depth, group_width, 2, cheap_ratio)
            else:
                stage = make_plain_stage(prev_chs, width, depth, group_width, 2)
            self.add_module(f"layer{idx + 1}", stage)
            prev_chs, reduction = width, reduction * 2
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"layer{idx + 1}"))
        self.num_features = self.head_hidden_size = prev_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(prev_chs, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """Official initialisation: He (fan-out) convolutions, unit BatchNorm."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\w+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.eval_channels_last and not self.training and x.device.type == "cpu":
            # CPU inference runs channels-last (faster oneDNN convolutions, about 1.3x here) and
            # hands back a contiguous NCHW map with the same values.
            return self._body(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return self._body(x)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(conv_bn(x, self.conv1, self.bn1))
        for stage in self.stages:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official G-Ghost RegNet checkpoint (``g_ghost_regnet_*.pth``) -> ours: the same keys, unwrapped."""
    return clean_state_dict(state_dict)


def _create_g_ghost(variant: str, pretrained: bool = False, **kwargs: Any) -> GGhostRegNet:
    return build_model_with_cfg(
        GGhostRegNet,
        variant,
        pretrained,
        default_cfgs=default_cfgs,
        checkpoint_filter_fn=checkpoint_filter_fn,
        # Stages are named layer1..4 (official keys); they are the feature taps, not flattened.
        feature_cfg=dict(flatten_sequential=False),
        **{**model_cfgs[variant], **kwargs},
    )


# Official variant table (RegNetX depths / widths / group widths).
model_cfgs: dict[str, dict[str, Any]] = {
    "g_ghost_regnetx_032": dict(depths=(2, 6, 15, 2), widths=(96, 192, 432, 1008), group_width=48),
    "g_ghost_regnetx_040": dict(depths=(2, 5, 14, 2), widths=(80, 240, 560, 1360), group_width=40),
    "g_ghost_regnetx_080": dict(depths=(2, 5, 15, 1), widths=(80, 240, 720, 1920), group_width=120),
    "g_ghost_regnetx_160": dict(depths=(2, 6, 13, 1), widths=(256, 512, 896, 2048), group_width=128),
}

# Official weights are GitHub release assets (tag g_ghost_regnet) without a stable URL scheme in
# the code; pretrained=True needs a local file (see efficient_backbones._builder).
default_cfgs: dict[str, dict[str, Any]] = {
    name: default_cfg(first_conv="conv1", classifier="fc") for name in model_cfgs
}


@register_model
def g_ghost_regnetx_032(pretrained: bool = False, **kwargs: Any) -> GGhostRegNet:
    """G-Ghost RegNetX-3.2GF (10.5M params, 1.8G MACs, 77.8% top-1)."""
    return _create_g_ghost("g_ghost_regnetx_032", pretrained, **kwargs)


@register_model
def g_ghost_regnetx_040(pretrained: bool = False, **kwargs: Any) -> GGhostRegNet:
    """G-Ghost RegNetX-4.0GF (15.7M params, 2.2G MACs, 78.6% top-1)."""
    return _create_g_ghost("g_ghost_regnetx_040", pretrained, **kwargs)


@register_model
def g_ghost_regnetx_080(pretrained: bool = False, **kwargs: Any) -> GGhostRegNet:
    """G-Ghost RegNetX-8.0GF (24.6M params, 4.2G MACs, 79.0% top-1)."""
    return _create_g_ghost("g_ghost_regnetx_080", pretrained, **kwargs)


@register_model
def g_ghost_regnetx_160(pretrained: bool = False, **kwargs: Any) -> GGhostRegNet:
    """G-Ghost RegNetX-16.0GF (32.4M params, 9.0G MACs, 79.9% top-1)."""
    return _create_g_ghost("g_ghost_regnetx_160", pretrained, **kwargs)
