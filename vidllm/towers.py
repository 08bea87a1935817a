"""Vision towers: frames -> a grid of patch features, behind :class:`vidllm.interfaces.VisionTower`.

Three towers, one contract (``encode`` -> ``(T, h, w, C)``, ``encode_crop``, ``grid``,
``hidden_size``):

- :class:`BackboneTower`: any ``efficient_backbones`` model (or timm model) through the zoo's
  ``patch_tokens`` view (``efficient_backbones/_features.py``); timm models whose features are a
  token sequence (ViTs) go through timm's ``forward_intermediates``.
- :class:`OpenCLIPTower`: the patch tokens of an open_clip ``VisionTransformer``, by default from
  the penultimate block as LLaVA does (``mm_vision_select_layer=-2``, class token dropped;
  Liu et al., "Visual Instruction Tuning", 2023, and LLaVA's ``clip_encoder.py``).
- :class:`HFCLIPTower`: the same for a transformers ``CLIPVisionModel`` (``hidden_states[-2]``
  without the class token, exactly LLaVA's ``feature_select``).

Every tower resizes frames to its input size (LLaVA's ``image_aspect_ratio="resize"`` by default,
``aspect="pad"`` for mean-colour padding), normalises them with the model's mean and std, encodes
them in batches of at most ``max_batch_size`` frames (preprocessing included, so 50 full-HD frames
never sit in memory as floats at once), without gradients while frozen, on the device and in the
dtype the tower was moved to. ``encode_crop`` serves the reducer's ``roi_mode="reencode"``.

:func:`build_tower` rebuilds a tower from the JSON-able spec its ``to_spec()`` returns, so a saved
``VideoLLM`` can name its tower in its config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vidllm._vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Aspect,
    FrameModule,
    ImagePreprocess,
    as_frames,
    build_from_spec,
    chunks,
    hf_preprocess,
    load_hf,
    load_state_dict_file,
    module_device_dtype,
    open_clip_preprocess,
    register_kind,
    require_file,
    require_open_clip_vit,
    resolve_open_clip,
    to_size,
)
from vidllm.interfaces import Box, Frames

logger = logging.getLogger(__name__)

__all__ = [
    "TOWERS",
    "BackboneTower",
    "HFCLIPTower",
    "ImagePreprocess",
    "OpenCLIPTower",
    "PatchTower",
    "build_tower",
    "register_tower",
]


class PatchTower(FrameModule):
    """What every tower shares: preprocessing, batching, frozen weights, crops, specs.

    Subclasses set ``self.preprocess``, ``self._grid`` and ``self._hidden_size`` and implement
    :meth:`_tokens` (a normalised ``(B, 3, H, W)`` batch -> ``(B, h*w, C)`` row-major tokens).
    """

    def __init__(self, *, max_batch_size: int = 16, frozen: bool = True) -> None:
        super().__init__(max_batch_size=max_batch_size, frozen=frozen)
        self._grid: tuple[int, int] = (0, 0)
        self._hidden_size = 0

    # -- the VisionTower interface -------------------------------------------------------------

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocess.size

    def encode(self, frames: Frames) -> torch.Tensor:
        frames = as_frames(frames)
        return self._encode_batches(frames.shape[0], lambda sl, dev, dt: self.preprocess(frames[sl], dev, dt))

    def encode_crop(self, frames: Frames, boxes: Sequence[Box]) -> torch.Tensor:
        frames = as_frames(frames)
        if len(boxes) != frames.shape[0]:
            raise ValueError(f"one box per frame: got {len(boxes)} boxes for {frames.shape[0]} frames")
        return self._encode_batches(
            frames.shape[0], lambda sl, dev, dt: self.preprocess.crops(frames[sl], boxes[sl], dev, dt)
        )

    # -- machinery -----------------------------------------------------------------------------

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_batches(self, total: int, pixels_of: Callable) -> torch.Tensor:
        device, dtype = module_device_dtype(self)
        h, w = self._grid
        outputs = []
        with torch.set_grad_enabled(self._grad_enabled()):
            for sl in chunks(total, self.max_batch_size):
                tokens = self._tokens(pixels_of(sl, device, dtype))
                if tokens.shape[1] != h * w:
                    raise RuntimeError(
                        f"{type(self).__name__} produced {tokens.shape[1]} tokens for a {h}x{w} grid; "
                        "was the input size changed after construction?"
                    )
                outputs.append(tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]))
        if not outputs:
            return torch.empty(0, h, w, self._hidden_size, device=device, dtype=dtype)
        return torch.cat(outputs)

    def to_spec(self) -> dict[str, Any]:
        return {**super().to_spec(), "frozen": self.frozen}

    def extra_repr(self) -> str:
        return f"grid={self.grid}, hidden_size={self.hidden_size}, input_size={self.input_size}, aspect={self.preprocess.aspect!r}"


# ----------------------------------------------------------------------------------------------
# efficient_backbones / timm
# ----------------------------------------------------------------------------------------------


def _create_backbone(
    name: str, pretrained: bool, checkpoint: str | os.PathLike | None, model_kwargs: dict[str, Any]
) -> nn.Module:
    """A zoo model by name (ours first, then timm's), with its weights."""
    import timm

    import efficient_backbones as eb

    if checkpoint is not None:
        checkpoint = require_file(checkpoint)
    if eb.is_model(name):
        return eb.create_model(name, pretrained=pretrained, checkpoint_path=checkpoint, **model_kwargs)
    if timm.is_model(name):
        model = timm.create_model(name, pretrained=pretrained, **model_kwargs)
        if checkpoint is not None:
            state = load_state_dict_file(checkpoint)
            model.load_state_dict(state, strict=True)
        return model
    raise ValueError(
        f"unknown backbone {name!r}: efficient_backbones.list_models() lists the zoo's variants and "
        "timm.list_models() timm's"
    )


def _backbone_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The input size a model was built for: a fixed-size patch embedding wins over the cfg
    (timm keeps the default cfg's 224 when a ViT is built with another ``img_size``)."""
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None and not getattr(patch_embed, "dynamic_img_size", False):
        return to_size(img_size)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if cfg.get("input_size"):
        return to_size(cfg["input_size"])
    return None


class BackboneTower(PatchTower):
    """Any ``efficient_backbones`` or timm model as a vision tower.

    Features come from the zoo's ``patch_tokens`` contract (the last feature map, row-major);
    a timm model whose ``forward_features`` is a token sequence (a ViT) gives its last block's
    normed patch tokens through ``forward_intermediates``. The grid and width are measured by one
    dry run at the input size, so they are exact for any family.

    Args:
        model: a registered name (``efficient_backbones`` first, then timm) or a built module.
        pretrained: load the variant's pretrained weights (fails clearly where none are known).
        checkpoint: a local checkpoint of this model (safetensors, or a pickle read with
            ``weights_only=True``), loaded strictly.
        image_size: the input size; by default the model's own (fixed patch embedding or cfg).
        mean, std, interpolation: normalisation; by default the model's cfg (ImageNet's when none).
        aspect: ``"resize"`` (LLaVA's default) or ``"pad"``.
        max_batch_size: frames per forward pass.
        frozen: no gradients and eval mode (the reducer is training-free).
        model_kwargs: passed to the model constructor when built by name.
    """

    kind = "backbone"

    def __init__(
        self,
        model: str | nn.Module,
        *,
        pretrained: bool = False,
        checkpoint: str | os.PathLike | None = None,
        image_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str | None = None,
        aspect: Aspect = "resize",
        max_batch_size: int = 16,
        frozen: bool = True,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, frozen=frozen)
        model_kwargs = dict(model_kwargs or {})
        if isinstance(model, str):
            self._spec = {
                "model": model,
                "pretrained": pretrained,
                "checkpoint": None if checkpoint is None else str(checkpoint),
                "image_size": None if image_size is None else list(to_size(image_size)),
                "mean": None if mean is None else list(mean),
                "std": None if std is None else list(std),
                "interpolation": interpolation,
                "model_kwargs": model_kwargs,
            }
            model = _create_backbone(model, pretrained, checkpoint, model_kwargs)
        elif pretrained or checkpoint is not None or model_kwargs:
            raise ValueError("pretrained, checkpoint and model_kwargs apply to a model built by name")
        self.model = model
        self._freeze(model)
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = to_size(image_size) if image_size is not None else _backbone_input_size(model)
        if size is None:
            raise ValueError(f"{type(model).__name__} has no default input size: pass image_size")
        if mean is None and "mean" not in cfg:
            logger.info("%s has no mean/std in its cfg; using ImageNet's", type(model).__name__)
        interpolation = interpolation or cfg.get("interpolation") or "bicubic"
        self.preprocess = ImagePreprocess(
            size=size,
            mean=tuple(mean or cfg.get("mean") or IMAGENET_MEAN),
            std=tuple(std or cfg.get("std") or IMAGENET_STD),
            interpolation=interpolation if interpolation in ("bicubic", "bilinear", "nearest") else "bicubic",
            aspect=aspect,
        )
        self._token_fn = self._pick_token_fn()
        device, dtype = module_device_dtype(model)
        with torch.no_grad():
            tokens, grid = self._token_fn(torch.zeros(1, 3, *size, device=device, dtype=dtype))
        self._grid = (int(grid[0]), int(grid[1]))
        self._hidden_size = int(tokens.shape[-1])

    def _pick_token_fn(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, tuple[int, int]]]:
        """``patch_tokens`` (the zoo's contract), a ``(B, C, h, w)`` ``forward_features``, or for a
        token-sequence model timm's ``forward_intermediates``, decided once by the output's shape."""
        from efficient_backbones import feature_map_to_tokens

        model = self.model
        if hasattr(model, "patch_tokens"):
            return model.patch_tokens
        if not hasattr(model, "forward_features"):
            raise TypeError(f"{type(model).__name__} has neither patch_tokens nor forward_features")
        device, dtype = module_device_dtype(model)
        with torch.no_grad():
            probe = model.forward_features(
                torch.zeros(1, 3, *self.preprocess.size, device=device, dtype=dtype)
            )
        if probe.ndim == 4:
            return lambda x: feature_map_to_tokens(model.forward_features(x))
        if hasattr(model, "forward_intermediates"):

            def intermediates(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
                (fmap,) = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
                return feature_map_to_tokens(fmap)

            return intermediates
        raise TypeError(
            f"{type(model).__name__}.forward_features returns shape {tuple(probe.shape)}, not a (B, C, h, w) "
            "map, and the model has no patch_tokens or forward_intermediates to find its grid"
        )

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._token_fn(pixels)[0]


# ----------------------------------------------------------------------------------------------
# open_clip
# ----------------------------------------------------------------------------------------------


def _layer_index(select_layer: int, num_layers: int) -> int:
    index = select_layer + num_layers if select_layer < 0 else select_layer
    if not 0 <= index < num_layers:
        raise ValueError(f"select_layer {select_layer} is outside a {num_layers}-block transformer")
    return index


class OpenCLIPTower(PatchTower):
    """The patch tokens of an open_clip ``VisionTransformer``.

    Args:
        model: an open_clip model name (``"ViT-L-14-336"``, ``"local-dir:/path"``,
            ``"hf-hub:org/repo"``), a built open_clip model (its ``visual`` is kept), or its
            ``VisionTransformer``; ignored when ``model_cfg`` is given.
        pretrained: a pretrained tag of that name, or a local checkpoint file.
        model_cfg: an open_clip model config dict to build instead of a named model.
        select_layer: which block's output to take, LLaVA style: ``-2`` the penultimate (LLaVA's
            default), ``-1`` the last.
        post_norm: apply the tower's final LayerNorm (``ln_post``) to the tokens.
        aspect, max_batch_size, frozen: as :class:`BackboneTower`.
    """

    kind = "open_clip"

    def __init__(
        self,
        model: str | nn.Module | None = None,
        pretrained: str | os.PathLike | None = None,
        *,
        model_cfg: dict[str, Any] | None = None,
        select_layer: int = -2,
        post_norm: bool = False,
        aspect: Aspect = "resize",
        max_batch_size: int = 16,
        frozen: bool = True,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, frozen=frozen)
        model, _, spec = resolve_open_clip(model, pretrained, model_cfg)
        if spec is not None:
            self._spec = {**spec, "select_layer": select_layer, "post_norm": post_norm}
        visual = require_open_clip_vit(
            getattr(model, "visual", model), "for a timm trunk use BackboneTower(model.visual.trunk)"
        )
        self.visual = visual
        self._freeze(visual)
        self.layer_index = _layer_index(select_layer, len(visual.transformer.resblocks))
        self.select_layer = select_layer
        self.post_norm = post_norm
        self.preprocess = open_clip_preprocess(visual, aspect)
        self._grid = tuple(int(v) for v in visual.grid_size)
        self._hidden_size = int(visual.transformer.width)

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            pixels,
            indices=[self.layer_index],
            stop_early=True,
            normalize_intermediates=self.post_norm,
            intermediates_only=True,
            output_fmt="NLC",
        )
        return out["image_intermediates"][0]  # the class token is already split off


# ----------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------


class HFCLIPTower(PatchTower):
    """A transformers vision model (``CLIPVisionModel``, or the vision part of a ``CLIPModel``).

    Tokens are ``hidden_states[select_layer]`` with the prefix (class) tokens dropped, which is
    LLaVA's ``feature_select(select_feature="patch")``. Models without a class token (SigLIP)
    work too: the prefix is whatever precedes the ``h * w`` patch tokens.

    Args:
        model: a local model folder (or a hub id where a hub is reachable), or a built model.
        select_layer: hidden state index, ``-2`` by default as LLaVA.
        mean, std: normalisation; by default the folder's ``preprocessor_config.json``, else CLIP's.
        aspect, max_batch_size, frozen: as :class:`BackboneTower`.
    """

    kind = "hf_clip"

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        *,
        select_layer: int = -2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        aspect: Aspect = "resize",
        max_batch_size: int = 16,
        frozen: bool = True,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, frozen=frozen)
        model, folder, spec = load_hf(model, "CLIPVisionModel")
        if spec is not None:
            self._spec = {**spec, "select_layer": select_layer, "mean": mean, "std": std}
        vision = getattr(model, "vision_model", model)  # a CLIPModel's vision part
        config = vision.config
        self.vision_model = vision
        self._freeze(vision)
        num_layers = int(config.num_hidden_layers)
        _layer_index(select_layer, num_layers + 1)  # hidden_states has the embeddings first
        self.select_layer = select_layer
        self.preprocess = hf_preprocess(config, folder, mean, std, aspect)
        self._grid = (config.image_size // config.patch_size,) * 2
        self._hidden_size = int(config.hidden_size)

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.vision_model(pixel_values=pixels, output_hidden_states=True)
        hidden = out.hidden_states[self.select_layer]
        prefix = hidden.shape[1] - self._grid[0] * self._grid[1]
        return hidden[:, prefix:]


# ----------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------

TOWERS: dict[str, Callable[..., nn.Module]] = {
    "backbone": BackboneTower,
    "open_clip": OpenCLIPTower,
    "hf_clip": HFCLIPTower,
}


def register_tower(kind: str) -> Callable:
    """Register a tower class (or builder) under ``kind`` for :func:`build_tower`."""
    return register_kind(TOWERS, kind, "tower")


def build_tower(spec: dict[str, Any] | str) -> nn.Module:
    """A vision tower from a JSON-able spec.

    ``spec`` is a dict ``{"kind": "backbone" | "open_clip" | "hf_clip" | ..., **constructor
    arguments, "device": ..., "dtype": ...}`` (what a tower's ``to_spec()`` returns; the kind
    defaults to ``"backbone"``), or a string ``"kind:model"`` (``"open_clip:ViT-L-14-336"``,
    ``"hf_clip:/models/clip"``); a string without a known kind is a backbone name (``"tinynet_e"``).
    """
    if isinstance(spec, str):
        kind, sep, rest = spec.partition(":")
        spec = {"kind": kind, "model": rest} if sep and kind in TOWERS else {"model": spec}
    return build_from_spec(TOWERS, {"kind": "backbone", **spec}, "tower")
