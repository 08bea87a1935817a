"""Blocks shared by several families (ghost module, dynamic convolution, graph convolution, ...).

Generic layers timm already provides well (``DropPath``, ``make_divisible``, ``SqueezeExcite``,
``trunc_normal_``) are used from ``timm.layers`` rather than written again.
"""
