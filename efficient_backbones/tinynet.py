"""TinyNet: EfficientNet-B0 shrunk along resolution, width and depth together.

Paper: Han et al., "Model Rubik's Cube: Twisting Resolution, Depth and Width for TinyNets",
NeurIPS 2020 (https://arxiv.org/abs/2010.14819), Sec. 3 ("tiny formula"), Table 3 for the
(r, w, d) triples of TinyNet-A..E. Official code: huawei-noah/Efficient-AI-Backbones
(tinynet_pytorch, built on gen-efficientnet); timm ships the same models as ``tinynet_*``.

The base network is EfficientNet-B0 (Tan & Le, 2019, Table 1): a depthwise-separable block and six
stages of inverted residual ("MBConv") blocks with squeeze-excitation and SiLU. A variant scales
every stage's repeat count by ``d`` (rounded, at least one), every channel count by ``w`` (rounded
to a multiple of 8, never more than 10% down; the 32-channel stem stays fixed) and the input size by
``r`` (``int(224 * r)``). The module names and channel arithmetic follow timm's ``tinynet_*`` so a
timm (or official) checkpoint loads unchanged and gives the same logits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from timm.layers import DropPath, create_classifier, make_divisible
from timm.models import checkpoint_seq
from torch import nn

from efficient_backbones._builder import build_model_with_cfg, default_cfg
from efficient_backbones._features import PatchTokensMixin
from efficient_backbones._registry import register_model
from efficient_backbones.layers.conv_bn import conv_bn

__all__ = ["TINYNET_CFGS", "TinyNet", "checkpoint_filter_fn"]

logger = logging.getLogger(__name__)


class StageSpec(NamedTuple):
    """One stage of the base network: ``repeats`` blocks of one type (EfficientNet-B0, Table 1)."""

    block: str  # "ds": depthwise separable, "ir": inverted residual (MBConv)
    repeats: int
    kernel_size: int
    stride: int
    exp_ratio: float
    out_chs: int
    se_ratio: float  # of the block's input channels


EFFICIENTNET_B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec("ds", 1, 3, 1, 1.0, 16, 0.25),
    StageSpec("ir", 2, 3, 2, 6.0, 24, 0.25),
    StageSpec("ir", 2, 5, 2, 6.0, 40, 0.25),
    StageSpec("ir", 3, 3, 2, 6.0, 80, 0.25),
    StageSpec("ir", 3, 5, 1, 6.0, 112, 0.25),
    StageSpec("ir", 4, 5, 2, 6.0, 192, 0.25),
    StageSpec("ir", 1, 3, 1, 6.0, 320, 0.25),
)

# (resolution r, width w, depth d) over EfficientNet-B0, paper Table 3.
TINYNET_CFGS: dict[str, dict[str, float]] = {
    "tinynet_a": {"r": 0.86, "w": 1.0, "d": 1.2},
    "tinynet_b": {"r": 0.84, "w": 0.75, "d": 1.1},
    "tinynet_c": {"r": 0.825, "w": 0.54, "d": 0.85},
    "tinynet_d": {"r": 0.68, "w": 0.54, "d": 0.695},
    "tinynet_e": {"r": 0.475, "w": 0.51, "d": 0.60},
}


def scale_depth(repeats: int, depth_mult: float) -> int:
    """Rounded (not ceiled) repeat count, so single-block stages stay single for longer."""
    return max(1, round(repeats * depth_mult))


def scale_width(channels: int, width_mult: float) -> int:
    return make_divisible(channels * width_mult, 8)


class SqueezeExcite(nn.Module):
    """Channel gate from pooled features; the bottleneck is sized from the *block* input."""

    def __init__(self, chs: int, rd_chs: int, act_layer: Callable[..., nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class DepthwiseSeparable(nn.Module):
    """Depthwise conv -> BN -> act -> SE -> pointwise conv -> BN (no activation)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.25,
        act_layer: Callable[..., nn.Module] = nn.SiLU,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = nn.Conv2d(
            in_chs, in_chs, kernel_size, stride, kernel_size // 2, groups=in_chs, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = act_layer(inplace=True)
        self.se = SqueezeExcite(in_chs, round(in_chs * se_ratio), act_layer) if se_ratio else nn.Identity()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.act1(conv_bn(x, self.conv_dw, self.bn1)))
        x = conv_bn(x, self.conv_pw, self.bn2)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand -> depthwise kxk -> SE -> 1x1 linear projection, residual when shapes allow."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        exp_ratio: float = 6.0,
        se_ratio: float = 0.25,
        act_layer: Callable[..., nn.Module] = nn.SiLU,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * exp_ratio, 8)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = act_layer(inplace=True)
        self.conv_dw = nn.Conv2d(
            mid_chs, mid_chs, kernel_size, stride, kernel_size // 2, groups=mid_chs, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = act_layer(inplace=True)
        # The SE bottleneck is a fraction of the block input, not of the expanded width.
        self.se = SqueezeExcite(mid_chs, round(in_chs * se_ratio), act_layer) if se_ratio else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(conv_bn(x, self.conv_pw, self.bn1))
        x = self.act2(conv_bn(x, self.conv_dw, self.bn2))
        x = conv_bn(self.se(x), self.conv_pwl, self.bn3)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class TinyNet(PatchTokensMixin, nn.Module):
    """EfficientNet-B0 with its widths scaled by ``width_mult`` and its depths by ``depth_mult``.

    The third scaling axis, resolution, is the variant's default input size (``pretrained_cfg``);
    the network itself is fully convolutional and accepts any size.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        stages: Sequence[StageSpec] = EFFICIENTNET_B0_STAGES,
        stem_chs: int = 32,
        head_chs: int = 1280,
        num_classes: int = 1000,
        in_chans: int = 3,
        act_layer: Callable[..., nn.Module] = nn.SiLU,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        # The stem is not width-scaled; the head never drops below the base network's 1280.
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = act_layer(inplace=True)

        depths = [scale_depth(s.repeats, depth_mult) for s in stages]
        total_blocks, block_idx = sum(depths), 0
        in_chs, reduction = stem_chs, 2
        stage_modules: list[nn.Module] = []
        self.feature_info: list[dict[str, Any]] = []
        for stage_idx, (spec, depth) in enumerate(zip(stages, depths)):
            out_chs = scale_width(spec.out_chs, width_mult)
            if spec.stride > 1 and stage_idx > 0:
                # A feature level ends where the next stage downsamples (timm's stage ends).
                self.feature_info.append(
                    {"num_chs": in_chs, "reduction": reduction, "module": f"blocks.{stage_idx - 1}"}
                )
            reduction *= spec.stride
            blocks = []
            for i in range(depth):
                stride = spec.stride if i == 0 else 1
                dpr = drop_path_rate * block_idx / total_blocks
                if spec.block == "ds":
                    block = DepthwiseSeparable(
                        in_chs, out_chs, spec.kernel_size, stride, spec.se_ratio, act_layer, dpr
                    )
                else:
                    block = InvertedResidual(
                        in_chs,
                        out_chs,
                        spec.kernel_size,
                        stride,
                        spec.exp_ratio,
                        spec.se_ratio,
                        act_layer,
                        dpr,
                    )
                blocks.append(block)
                in_chs = out_chs
                block_idx += 1
            stage_modules.append(nn.Sequential(*blocks))
        self.feature_info.append(
            {"num_chs": in_chs, "reduction": reduction, "module": f"blocks.{len(stages) - 1}"}
        )
        self.blocks = nn.Sequential(*stage_modules)

        self.num_features = self.head_hidden_size = max(head_chs, scale_width(head_chs, width_mult))
        self.conv_head = nn.Conv2d(in_chs, self.num_features, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.num_features)
        self.act2 = act_layer(inplace=True)
        self.global_pool, self.classifier = create_classifier(
            self.num_features, num_classes, pool_type=global_pool
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """EfficientNet's (TF) scheme: conv fan-out normal, classifier uniform by its fan-out."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.size(0))
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            "stem": r"^conv_stem|bn1",
            "blocks": [
                (r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None),
                (r"conv_head|bn2", (99999,)),
            ],
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.classifier = create_classifier(
            self.num_features, num_classes, pool_type=global_pool
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(conv_bn(x, self.conv_stem, self.bn1))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x, flatten=True)
        else:
            x = self.blocks(x)
        return self.act2(conv_bn(x, self.conv_head, self.bn2))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``tinynet_*`` and the official release share our layout; strip wrappers only."""
    state_dict = state_dict.get("state_dict", state_dict.get("model", state_dict))
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _cfg(variant: str, **kwargs: Any) -> dict[str, Any]:
    size = int(224 * TINYNET_CFGS[variant]["r"])
    return default_cfg(
        url=f"https://github.com/huawei-noah/CV-Backbones/releases/download/v1.2.0/{variant}.pth",
        input_size=(3, size, size),
        pool_size=(math.ceil(size / 32), math.ceil(size / 32)),
        first_conv="conv_stem",
        classifier="classifier",
        paper_ids="arXiv:2010.14819",
        **kwargs,
    )


default_cfgs: dict[str, dict[str, Any]] = {name: _cfg(name) for name in TINYNET_CFGS}


def _create_tinynet(variant: str, pretrained: bool = False, **kwargs: Any) -> TinyNet:
    arch = TINYNET_CFGS[variant]
    kwargs = {"width_mult": arch["w"], "depth_mult": arch["d"], **kwargs}
    return build_model_with_cfg(
        TinyNet,
        variant,
        pretrained,
        default_cfgs=default_cfgs,
        checkpoint_filter_fn=checkpoint_filter_fn,
        feature_cfg={"flatten_sequential": True, "out_indices": (0, 1, 2, 3, 4)},
        **kwargs,
    )


@register_model
def tinynet_a(pretrained: bool = False, **kwargs: Any) -> TinyNet:
    """TinyNet-A: r=0.86, w=1.0, d=1.2 (192 px)."""
    return _create_tinynet("tinynet_a", pretrained, **kwargs)


@register_model
def tinynet_b(pretrained: bool = False, **kwargs: Any) -> TinyNet:
    """TinyNet-B: r=0.84, w=0.75, d=1.1 (188 px)."""
    return _create_tinynet("tinynet_b", pretrained, **kwargs)


@register_model
def tinynet_c(pretrained: bool = False, **kwargs: Any) -> TinyNet:
    """TinyNet-C: r=0.825, w=0.54, d=0.85 (184 px)."""
    return _create_tinynet("tinynet_c", pretrained, **kwargs)


@register_model
def tinynet_d(pretrained: bool = False, **kwargs: Any) -> TinyNet:
    """TinyNet-D: r=0.68, w=0.54, d=0.695 (152 px)."""
    return _create_tinynet("tinynet_d", pretrained, **kwargs)


@register_model
def tinynet_e(pretrained: bool = False, **kwargs: Any) -> TinyNet:
    """TinyNet-E: r=0.475, w=0.51, d=0.6 (106 px)."""
    return _create_tinynet("tinynet_e", pretrained, **kwargs)
