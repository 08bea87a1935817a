"""Ghost module, DFC attention and the ghost bottleneck (GhostNet, GhostNetV2, ParameterNet).

- Ghost module (C-Ghost): Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020,
  arXiv:1911.11907, Sec. 3.1 / Fig. 2(b): a primary convolution makes ``ceil(out / ratio)``
  intrinsic maps, a cheap depthwise convolution makes the rest ("ghosts"), concatenated.
- DFC attention: Tang et al., "GhostNetV2: Enhance Cheap Operation with Long-Range Attention",
  NeurIPS 2022, arXiv:2211.12905, Sec. 3.2-3.3 / Eq. 4-6, Fig. 4: on a 2x downsampled input, a
  1x1 convolution then depthwise ``1 x K_H`` and ``K_W x 1`` convolutions (the decoupled
  horizontal / vertical fully-connected layers), a sigmoid, nearest upsampling back to the
  module's output and an elementwise gate.
- Ghost bottleneck: GhostNet Sec. 3.2 / Fig. 3; with dynamic convolutions in ParameterNet
  (arXiv:2306.14525, Sec. 3.2).

State-dict names follow the official huawei-noah/Efficient-AI-Backbones code, which timm's
``ghostnet_*`` / ``ghostnetv2_*`` also use (``primary_conv``, ``cheap_operation``,
``short_conv``, ``conv_dw``, ``bn_dw``, ``se``, ``shortcut``), so checkpoints of both load as-is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, make_divisible
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn

from efficient_backbones.layers.conv_bn import conv_bn
from efficient_backbones.layers.dynamic_conv import DynamicConv

ConvLayer = Callable[..., nn.Module]


def make_conv_layer(num_experts: int = 0) -> ConvLayer:
    """``nn.Conv2d``, or ParameterNet's :class:`DynamicConv` with ``num_experts`` experts when > 0.

    Both are called as ``conv(in, out, kernel_size, stride, padding, groups=..., bias=...)``.
    """
    return partial(DynamicConv, num_experts=num_experts) if num_experts > 0 else nn.Conv2d


def conv_norm(x: torch.Tensor, conv: nn.Module, bn: nn.Module) -> torch.Tensor:
    """``bn(conv(x))``; one BN-folded convolution in eval mode where ``conv`` is a plain ``nn.Conv2d``.

    Folding (``layers/conv_bn.py``) saves a pass over every activation map on CPU; outputs agree
    with the unfolded pair to float rounding. Training mode runs the pair as it is.
    """
    if type(conv) is nn.Conv2d:
        return conv_bn(x, conv, bn)
    return bn(conv(x))


def conv_norm_act(x: torch.Tensor, layers: nn.Sequential) -> torch.Tensor:
    """A ``Sequential(conv, bn, act)`` applied through :func:`conv_norm`."""
    return layers[2](conv_norm(x, layers[0], layers[1]))


def _act(act_layer: type[nn.Module] | None) -> nn.Module:
    """An activation module, in place where the layer supports it (``None``: no activation)."""
    if act_layer is None or act_layer is nn.Identity:
        return nn.Identity()
    try:
        return act_layer(inplace=True)
    except TypeError:
        return act_layer()


class ConvBnAct(nn.Sequential):
    """Convolution, BatchNorm, activation; keys ``conv``, ``bn1`` as in the official / timm code."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU,
        conv_layer: ConvLayer = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.conv = conv_layer(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = _act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(conv_norm(x, self.conv, self.bn1))


class DFCAttention(nn.Sequential):
    """DFC attention map of GhostNetV2 (Eq. 4-6): ``sigmoid`` of decoupled FC on a 2x pooled input.

    :meth:`forward` returns the gate at half the input resolution, ``(B, out_chs, H // 2, W // 2)``;
    :class:`GhostModule` upsamples it to its output (nearest) and multiplies. The six layers are
    the official ``short_conv`` (keys ``short_conv.{0..5}``).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        dfc_kernel: int = 5,
        conv_layer: ConvLayer = nn.Conv2d,
    ) -> None:
        pad = dfc_kernel // 2
        super().__init__(
            conv_layer(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.Conv2d(out_chs, out_chs, (1, dfc_kernel), 1, (0, pad), groups=out_chs, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.Conv2d(out_chs, out_chs, (dfc_kernel, 1), 1, (pad, 0), groups=out_chs, bias=False),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A map narrower than 2 (inputs under 64 px) has no full 2x2 window; the official code
        # fails there, ceil_mode pools the partial window. Elsewhere both are the same pooling.
        if x.shape[-2] < 2 or x.shape[-1] < 2:
            pooled = F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
        else:
            pooled = F.avg_pool2d(x, kernel_size=2, stride=2)
        x = conv_norm(pooled, self[0], self[1])
        x = conv_norm(x, self[2], self[3])
        return conv_norm(x, self[4], self[5]).sigmoid_()


def apply_gate_upsampled(out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``out * interpolate(gate, size=out.shape[-2:], mode="nearest")``, in place on ``out``.

    When ``out`` is exactly twice the gate's size (every even input) the nearest upsampling is a
    2x2 repeat, applied here by broadcasting over a ``(h, 2, w, 2)`` view instead of building the
    upsampled gate: the same products, without the extra full-size tensor. Works on contiguous
    and channels-last maps; anything else takes the interpolation.
    """
    b, c, h, w = out.shape
    gh, gw = gate.shape[-2:]
    if h == 2 * gh and w == 2 * gw:
        if out.is_contiguous():
            out.view(b, c, gh, 2, gw, 2).mul_(gate.reshape(b, c, gh, 1, gw, 1))
            return out
        if out.is_contiguous(memory_format=torch.channels_last):
            nhwc = out.permute(0, 2, 3, 1)  # a contiguous (b, h, w, c) view
            nhwc.view(b, gh, 2, gw, 2, c).mul_(gate.permute(0, 2, 3, 1).reshape(b, gh, 1, gw, 1, c))
            return out
    return out.mul_(F.interpolate(gate, size=(h, w), mode="nearest"))


class GhostModule(nn.Module):
    """Ghost module (GhostNet Fig. 2b), optionally gated by DFC attention (GhostNetV2 Fig. 4).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: kernel of the primary convolution (1 in every GhostNet).
        ratio: ``s`` of the paper: ``ceil(out / s)`` intrinsic maps, ``s - 1`` ghosts per map.
        dw_size: kernel of the cheap depthwise operation (``d``).
        stride: stride of the primary convolution.
        act_layer: activation after both convolutions (``None`` for the linear projection).
        use_dfc: gate the output with DFC attention (GhostNetV2's expansion modules).
        conv_layer: the primary and cheap convolutions (``DynamicConv`` in ParameterNet).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        ratio: int = 2,
        dw_size: int = 3,
        stride: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU,
        use_dfc: bool = False,
        conv_layer: ConvLayer = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / ratio)
        new_chs = init_chs * (ratio - 1)
        self.primary_conv = nn.Sequential(
            conv_layer(in_chs, init_chs, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_chs),
            _act(act_layer),
        )
        self.cheap_operation = nn.Sequential(
            conv_layer(init_chs, new_chs, dw_size, 1, dw_size // 2, groups=init_chs, bias=False),
            nn.BatchNorm2d(new_chs),
            _act(act_layer),
        )
        # Ghosts beyond out_chs (odd out_chs, ratio > 2) are made and dropped, as in the paper.
        self.needs_trim = init_chs + new_chs != out_chs
        self.short_conv = (
            DFCAttention(in_chs, out_chs, kernel_size, stride, conv_layer=conv_layer) if use_dfc else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = conv_norm_act(x, self.primary_conv)
        x2 = conv_norm_act(x1, self.cheap_operation)
        out = torch.cat([x1, x2], dim=1)
        if self.needs_trim:
            out = out[:, : self.out_chs]
        if self.short_conv is not None:
            out = apply_gate_upsampled(out, self.short_conv(x))
        return out


class GhostBottleneck(nn.Module):
    """Ghost bottleneck (GhostNet Fig. 3): ghost expansion, [strided depthwise], [SE], ghost projection.

    Args:
        in_chs: input channels.
        mid_chs: expansion channels.
        out_chs: output channels.
        dw_kernel_size: kernel of the strided depthwise convolution and of the shortcut's.
        stride: 1, or 2 to downsample (depthwise convolution between the ghost modules).
        act_layer: activation of the expansion module (and of the SE reduction).
        se_ratio: squeeze-excite reduction (0 for none); SE uses a hard-sigmoid gate and rounds its
            channels to multiples of 4 (official code).
        use_dfc: DFC attention on the expansion module (GhostNetV2).
        conv_layer: convolution of the ghost modules and the projection shortcut; the strided
            depthwise and SE convolutions stay ``nn.Conv2d`` (ParameterNet's placement).
        drop_path_rate: stochastic depth on the residual branch.
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        act_layer: type[nn.Module] = nn.ReLU,
        se_ratio: float = 0.0,
        use_dfc: bool = False,
        conv_layer: ConvLayer = nn.Conv2d,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModule(
            in_chs, mid_chs, act_layer=act_layer, use_dfc=use_dfc, conv_layer=conv_layer
        )
        if stride > 1:
            pad = (dw_kernel_size - 1) // 2
            self.conv_dw = nn.Conv2d(
                mid_chs, mid_chs, dw_kernel_size, stride, pad, groups=mid_chs, bias=False
            )
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = (
            SqueezeExcite(
                mid_chs,
                rd_ratio=se_ratio,
                act_layer=act_layer,
                gate_layer=nn.Hardsigmoid,
                rd_round_fn=partial(make_divisible, divisor=4),
            )
            if se_ratio
            else None
        )
        self.ghost2 = GhostModule(mid_chs, out_chs, act_layer=None, conv_layer=conv_layer)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            pad = (dw_kernel_size - 1) // 2
            self.shortcut = nn.Sequential(
                conv_layer(in_chs, in_chs, dw_kernel_size, stride, pad, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                conv_layer(in_chs, out_chs, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_chs),
            )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.shortcut):
            sc = self.shortcut
            shortcut = conv_norm(conv_norm(x, sc[0], sc[1]), sc[2], sc[3])
        else:
            shortcut = x
        x = self.ghost1(x)
        if self.conv_dw is not None:
            x = conv_norm(x, self.conv_dw, self.bn_dw)
        if self.se is not None:
            x = self.se(x)
        x = self.drop_path(self.ghost2(x))
        return x.add_(shortcut)
