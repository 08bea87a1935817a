"""Dynamic convolution: a convolution whose kernel is a per-sample routed sum of expert kernels.

From ParameterNet (Han et al., "ParameterNet: Parameters Are All You Need for Large-scale Visual
Pretraining of Mobile Networks", arXiv:2306.14525, Sec. 3.2, Eq. 3-4), which adds parameters to a
low-FLOPs network without adding FLOPs by replacing its convolutions with dynamic ones; the
routed kernel sum is CondConv's (Yang et al., arXiv:1904.04971). Layout follows the official
``parameternet_pytorch/cv/parameternet.py`` of huawei-noah/Efficient-AI-Backbones: a ``routing``
``nn.Linear(in_chs, num_experts)`` and a ``cond_conv`` holding the experts flattened as
``(num_experts, out * in / groups * k * k)`` (timm's ``CondConv2d`` layout), so official
checkpoints load unchanged.

For an input ``x`` of batch ``B``::

    alpha = sigmoid(W_r @ GAP(x) + b_r)            # (B, E), independent gates, not a softmax
    W_b = sum_e alpha[b, e] * W_e                  # one kernel per sample
    y_b = conv(x_b, W_b)

The ``B`` convolutions run as one grouped convolution (``groups * B`` groups over the batch
folded into channels). Mixing the kernels costs ``B * E * |W|`` multiply-adds, small next to the
convolution for feature maps larger than a few pixels: the parameters grow ``E``-fold, the FLOPs
barely move.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class ExpertConv2d(nn.Module):
    """``num_experts`` convolution kernels of one geometry, applied as a per-sample mixture.

    Holds only the experts; the mixing coefficients come from the caller
    (:class:`DynamicConv` computes them from the input). ``weight`` is ``(E, out * in/g * kh * kw)``
    and ``bias`` ``(E, out)``, the layout of timm's ``CondConv2d`` and of the official ParameterNet
    checkpoints.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        if in_chs % groups or out_chs % groups:
            raise ValueError(f"in_chs {in_chs} and out_chs {out_chs} must be divisible by groups {groups}")
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.in_channels = in_chs
        self.out_channels = out_chs
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        if padding is None:  # "same" for odd kernels at stride 1, as nn.Conv2d users write k // 2
            padding = tuple(d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation))
        self.padding = _pair(padding)
        self.groups = groups
        self.num_experts = num_experts
        self.expert_shape = (out_chs, in_chs // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(num_experts, math.prod(self.expert_shape)))
        self.bias = nn.Parameter(torch.empty(num_experts, out_chs)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert initialised as ``nn.Conv2d`` initialises its kernel and bias."""
        fan_in = math.prod(self.expert_shape[1:])
        for e in range(self.num_experts):
            nn.init.kaiming_uniform_(self.weight[e].view(self.expert_shape), a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def expert(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kernel ``(out, in/g, kh, kw)`` and bias of one expert, as an ``nn.Conv2d`` would hold them."""
        bias = self.bias[index] if self.bias is not None else None
        return self.weight[index].view(self.expert_shape), bias

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        batch, chans, height, width = x.shape
        if routing_weights.shape != (batch, self.num_experts):
            raise ValueError(
                f"routing_weights must be (batch, num_experts) = ({batch}, {self.num_experts}), "
                f"got {tuple(routing_weights.shape)}"
            )
        weight = routing_weights @ self.weight  # (B, out * in/g * kh * kw): one kernel per sample
        bias = routing_weights @ self.bias if self.bias is not None else None
        if batch == 1:  # a plain convolution; no batch folding needed
            return F.conv2d(
                x,
                weight.view(self.expert_shape),
                bias.view(-1) if bias is not None else None,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
        # The batch folded into channels: sample b's channels meet only sample b's kernel.
        out = F.conv2d(
            x.reshape(1, batch * chans, height, width),
            weight.view(batch * self.out_channels, *self.expert_shape[1:]),
            bias.reshape(-1) if bias is not None else None,
            self.stride,
            self.padding,
            self.dilation,
            self.groups * batch,
        )
        return out.view(batch, self.out_channels, out.shape[-2], out.shape[-1])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"num_experts={self.num_experts}, bias={self.bias is not None}"
        )


class DynamicConv(nn.Module):
    """A drop-in replacement for ``nn.Conv2d`` with ``num_experts`` routed kernels (ParameterNet).

    Routing is global average pooling, a linear layer to ``num_experts`` logits and a sigmoid
    (official code); :meth:`forward` also accepts explicit ``routing_weights`` so a caller (or a
    test) can pin the mixture, e.g. one-hot to run a single expert.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        self.routing = nn.Linear(in_chs, num_experts)
        self.cond_conv = ExpertConv2d(
            in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias, num_experts
        )

    @property
    def in_channels(self) -> int:
        return self.cond_conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.cond_conv.out_channels

    @property
    def num_experts(self) -> int:
        return self.cond_conv.num_experts

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample expert weights ``(B, E)``: ``sigmoid(Linear(GAP(x)))``."""
        return torch.sigmoid(self.routing(x.mean((2, 3))))

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor | None = None) -> torch.Tensor:
        if routing_weights is None:
            routing_weights = self.route(x)
        return self.cond_conv(x, routing_weights)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, num_experts: int = 4) -> DynamicConv:
        """A dynamic convolution with ``conv``'s geometry (kernel, stride, padding, groups, bias).

        The experts are freshly initialised: a routed sum of copies of ``conv``'s kernel would scale
        it by the sum of the gates, which is not the original layer either.
        """
        if isinstance(conv.padding, str):
            raise ValueError(f"string padding {conv.padding!r} is not supported; give explicit padding")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode {conv.padding_mode!r} is not supported")
        return cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            num_experts,
        )


def convert_to_dynamic_conv(
    module: nn.Module,
    num_experts: int = 4,
    filter_fn: Callable[[str, nn.Conv2d], bool] | None = None,
) -> nn.Module:
    """Replace the ``nn.Conv2d`` layers of any model with :class:`DynamicConv` (in place).

    ``filter_fn(name, conv)`` picks which convolutions change (all of them when ``None``); the
    ParameterNet recipe leaves e.g. the strided depthwise and squeeze-excite convolutions static.
    Returns ``module`` (or the replacement when ``module`` itself is a convolution).
    """
    if isinstance(module, nn.Conv2d):
        if filter_fn is None or filter_fn("", module):
            return DynamicConv.from_conv(module, num_experts)
        return module
    targets = [
        (name, child)
        for name, child in module.named_modules()
        if type(child) is nn.Conv2d and (filter_fn is None or filter_fn(name, child))
    ]
    for name, conv in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, DynamicConv.from_conv(conv, num_experts))
    return module
