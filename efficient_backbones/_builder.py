"""Building a registered variant: config, weights, feature extraction.

Family files call :func:`build_model_with_cfg` from their ``_create_<family>`` builder; users call
:func:`create_model`. Construction, ``features_only`` wrapping and the strict, filtered loading of
pretrained weights are timm's own machinery; what this module adds is that ``pretrained=True`` is
never silently ignored, that weights come from a local file first, and that user checkpoints are
read as safetensors (or a ``.pth`` with ``weights_only=True``) through the family's
``checkpoint_filter_fn``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from timm.models import build_model_with_cfg as _timm_build_model_with_cfg
from timm.models import load_checkpoint as _timm_load_checkpoint

from efficient_backbones._registry import family_module, model_entrypoint

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "EFFICIENT_BACKBONES_WEIGHTS"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    """A variant's default configuration in timm's ``pretrained_cfg`` form."""
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        **kwargs,
    }


def _local_weights(variant: str) -> Path | None:
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if not root:
        return None
    for suffix in (".safetensors", ".pth", ".pt", ".bin"):
        candidate = Path(root) / f"{variant}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _resolve_pretrained(variant: str, cfg: dict[str, Any], overlay: dict[str, Any] | None) -> dict[str, Any]:
    """Pick the weight source for ``pretrained=True``, or fail with where it looked."""
    overlay = dict(overlay or {})
    if overlay.get("file"):
        if not Path(overlay["file"]).is_file():
            raise FileNotFoundError(f"pretrained weights file {overlay['file']} does not exist")
        return overlay
    local = _local_weights(variant)
    if local is not None:
        overlay["file"] = str(local)
        return overlay
    if cfg.get("hf_hub_id") or cfg.get("url") or overlay.get("hf_hub_id") or overlay.get("url"):
        return overlay  # timm downloads it (where the machine has a network)
    raise RuntimeError(
        f"pretrained=True but no weights are known for {variant!r}: pass "
        f"pretrained_cfg_overlay=dict(file='path/to/{variant}.safetensors'), set "
        f"${WEIGHTS_DIR_ENV} to a folder holding {variant}.safetensors, or use checkpoint_path=..."
    )


def build_model_with_cfg(
    model_cls: Callable[..., torch.nn.Module],
    variant: str,
    pretrained: bool,
    *,
    default_cfgs: dict[str, dict[str, Any]],
    checkpoint_filter_fn: Callable | None = None,
    feature_cfg: dict[str, Any] | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build ``variant`` from its family's ``default_cfgs`` (the ``_create_<family>`` helper)."""
    # timm.create_model always passes pretrained_cfg (None unless its caller gave one); a dict
    # given there overrides fields of the variant's default cfg.
    cfg_override = kwargs.pop("pretrained_cfg", None)
    cfg = {**default_cfgs[variant], **(cfg_override if isinstance(cfg_override, dict) else {})}
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    if pretrained:
        overlay = _resolve_pretrained(variant, cfg, overlay)
    return _timm_build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_cfg=cfg,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg or {"flatten_sequential": True},
        **kwargs,
    )


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, variant: str | None = None) -> None:
    """Load a user checkpoint strictly, through the variant family's ``checkpoint_filter_fn``.

    ``.safetensors`` is read with safetensors; anything else with ``torch.load(weights_only=True)``
    (timm's reader), so a pickle cannot run code. Incompatible keys are reported by name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    filter_fn = getattr(family_module(variant), "checkpoint_filter_fn", None) if variant else None
    _timm_load_checkpoint(model, str(path), strict=True, filter_fn=filter_fn)


def create_model(
    model_name: str,
    pretrained: bool = False,
    num_classes: int | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    features_only: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """Create a registered variant by name, as ``timm.create_model`` does.

    Args:
        model_name: a name from :func:`efficient_backbones.list_models`.
        pretrained: load the variant's pretrained weights (a local file, ``$EFFICIENT_BACKBONES_WEIGHTS``,
            or the hub where reachable); fails clearly when none can be found.
        num_classes: classifier size (0 for none); the variant's default when omitted.
        checkpoint_path: a checkpoint of this model to load after construction (strict).
        features_only: return multi-scale feature maps instead of logits.
        **kwargs: passed to the model constructor (e.g. ``drop_path_rate``, ``in_chans``).
    """
    entrypoint = model_entrypoint(model_name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if features_only:
        kwargs["features_only"] = True
    model = entrypoint(pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, variant=model_name)
    return model
