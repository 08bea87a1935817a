"""A timm-style zoo of efficient vision backbones.

Families (one file each): GhostNet, GhostNetV2, G-GhostNet, TinyNet, TNT, ViG / Pyramid ViG,
ParameterNet, DRNet (dynamic resolution) and SPConv. Importing the package registers every
variant, here and in timm's registry where timm does not already have the name.

    >>> import efficient_backbones as eb
    >>> eb.list_models("vig*")
    >>> model = eb.create_model("vig_ti_224", num_classes=10)
"""

# Importing a family module registers its variants.
from efficient_backbones import drnet, g_ghost, ghostnet, ghostnetv2, parameternet, spconv, tinynet, tnt, vig  # noqa: F401
from efficient_backbones._builder import build_model_with_cfg, create_model, default_cfg, load_checkpoint
from efficient_backbones._features import PatchTokensMixin, feature_map_to_tokens, patch_tokens
from efficient_backbones._registry import (
    is_model,
    list_models,
    model_entrypoint,
    model_family,
    register_model,
)

__all__ = [
    "PatchTokensMixin",
    "build_model_with_cfg",
    "create_model",
    "default_cfg",
    "feature_map_to_tokens",
    "is_model",
    "list_models",
    "load_checkpoint",
    "model_entrypoint",
    "model_family",
    "patch_tokens",
    "register_model",
]
