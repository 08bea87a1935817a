"""SPConv: a 3x3 convolution that spends its compute on the representative channels only.

Paper: Zhang et al., "Split to Be Slim: An Overlooked Redundancy in Vanilla Convolution",
IJCAI 2020 (https://arxiv.org/abs/2006.12085), Sec. 3 and Fig. 2. Official code:
github.com/qiulinzhang/SPConv.pytorch (``code/resnet_sp.py``, class ``SPConv_3x3``), whose module
names (``gwc``, ``pwc``, ``conv1x1``, ``bn1``, ``bn2``) we keep so its checkpoints load.

The input channels are split by ``alpha`` into a representative part and a redundant part:

* representative: group-wise 3x3 (``groups=2``) plus point-wise 1x1 on the same channels, summed
  (the point-wise path fills in the cross-group information the group-wise one misses), then BN;
* redundant: one cheap 1x1 convolution (with bias, as in the official code), then BN;
* fusion without parameters: per output channel, a softmax over the two parts' global-average
  responses weighs the two maps (a two-way "selective kernel" with no FC layers).

At stride 2 the point-wise and cheap paths see a 2x2-average-pooled input, so only the 3x3
group-wise path convolves at the full resolution (official code at commit 78c734f; an earlier
revision's stride-2 branch referred to an undefined variable). We pool with ``ceil_mode=True`` so
odd sizes match the strided 3x3's output size; on even sizes (every stage of a 224 px ResNet) it
is the official pooling, and the outputs equal the official module's bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SPConv2d"]


class SPConv2d(nn.Module):
    """Drop-in replacement for a 3x3 ``Conv2d(in_chs, out_chs, 3, stride, padding=1)``.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: 1 or 2.
        alpha: fraction of input channels treated as representative (paper: 1/2).
        groups: groups of the representative 3x3 convolution (paper: 2).
    """

    def __init__(
        self, in_chs: int, out_chs: int, stride: int = 1, alpha: float = 0.5, groups: int = 2
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"SPConv2d supports stride 1 or 2, got {stride}")
        self.in_chs_rep = int(in_chs * alpha)
        self.in_chs_red = in_chs - self.in_chs_rep
        if self.in_chs_rep == 0 or self.in_chs_red == 0:
            raise ValueError(f"alpha={alpha} leaves one part of {in_chs} input channels empty")
        self.out_chs = out_chs
        self.stride = stride
        self.gwc = nn.Conv2d(self.in_chs_rep, out_chs, 3, stride, 1, groups=groups, bias=False)
        self.pwc = nn.Conv2d(self.in_chs_rep, out_chs, 1, bias=False)
        self.conv1x1 = nn.Conv2d(self.in_chs_red, out_chs, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2, 2, ceil_mode=True) if self.stride > 1 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_rep, x_red = x.split([self.in_chs_rep, self.in_chs_red], dim=1)
        out_rep = self.bn1(self.gwc(x_rep) + self.pwc(self._pool(x_rep)))
        out_red = self.bn2(self.conv1x1(self._pool(x_red)))
        # (B, C, 2): each part's mean response per channel; softmax over the two parts.
        weights = torch.stack((out_rep.mean((2, 3)), out_red.mean((2, 3))), dim=-1).softmax(dim=-1)
        w_rep, w_red = weights[..., 0, None, None], weights[..., 1, None, None]
        return out_rep * w_rep + out_red * w_red
