"""Blocks shared by several families (ghost module, dynamic convolution, graph convolution, ...).

Generic layers timm already provides well (``DropPath``, ``make_divisible``, ``SqueezeExcite``,
``trunc_normal_``) are used from ``timm.layers`` rather than written again.
"""

from efficient_backbones.layers.dynamic_conv import DynamicConv, ExpertConv2d, convert_to_dynamic_conv  # noqa: F401
from efficient_backbones.layers.ghost import DFCAttention, GhostBottleneck, GhostModule  # noqa: F401
