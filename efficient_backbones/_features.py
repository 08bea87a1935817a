"""The patch-token view that lets any zoo model serve as the vision tower of the video model.

``patch_tokens(images) -> (tokens, grid)``: ``tokens`` is ``(B, N, C)`` with ``N == h * w`` in
row-major order over the spatial ``grid == (h, w)``: the cells of a CNN's last feature map, the
nodes of a ViG graph, the patches of TNT (class token dropped). The reducer pools and crops
tokens by their grid position, so the order matters and is the same for every family.
"""

from __future__ import annotations

import torch


def feature_map_to_tokens(feature_map: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, C, h, w)`` -> ``(B, h*w, C)`` row-major, and ``(h, w)``."""
    if feature_map.ndim != 4:
        raise ValueError(f"expected a (B, C, h, w) feature map, got shape {tuple(feature_map.shape)}")
    _, _, h, w = feature_map.shape
    return feature_map.flatten(2).transpose(1, 2), (h, w)


class PatchTokensMixin:
    """``patch_tokens`` for models whose ``forward_features`` returns a ``(B, C, h, w)`` map.

    Families whose features are not a map (TNT's token sequence) override ``patch_tokens``.
    """

    def patch_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return feature_map_to_tokens(self.forward_features(images))


def patch_tokens(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The patch-token view of any zoo model (see the module docstring)."""
    method = getattr(model, "patch_tokens", None)
    if method is not None:
        return method(images)
    return feature_map_to_tokens(model.forward_features(images))
