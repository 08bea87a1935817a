"""What the vision towers and relevance scorers share: frames in, pixels out, weights in.

- :func:`as_frames` checks the ``(T, H, W, 3)`` uint8 frame contract of :mod:`vidllm.interfaces`.
- :class:`ImagePreprocess` resizes and normalises frames for one model. ``aspect="resize"`` squashes
  the frame to the input size, as LLaVA's ``image_aspect_ratio="resize"`` does: the patch grid then
  covers the whole frame, which is what the reducer's RoI boxes (fractions of the frame) and the
  scorer-to-tower resampling of patch scores assume. ``aspect="pad"`` keeps the aspect ratio by
  padding with the mean colour first (LLaVA's ``expand2square``, generalised to non-square
  inputs); the grid then covers the padded canvas.
- :func:`load_state_dict_file` reads a checkpoint safely: safetensors, or a pickle through
  ``torch.load(weights_only=True)`` only.
- Lazy imports of open_clip and transformers' CLIP with errors that say what to install.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from vidllm.interfaces import Box, Frames

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Aspect = Literal["resize", "pad"]
Interpolation = Literal["bicubic", "bilinear", "nearest"]
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


# ----------------------------------------------------------------------------------------------
# frames and preprocessing
# ----------------------------------------------------------------------------------------------


def as_frames(frames: Frames) -> torch.Tensor:
    """Check the frame contract and return a ``(T, H, W, 3)`` uint8 CPU or device tensor (no copy)."""
    if isinstance(frames, np.ndarray):
        if any(s < 0 for s in frames.strides):
            frames = np.ascontiguousarray(frames)
        with warnings.catch_warnings():
            # decoded frames are often read-only; they are only ever read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a numpy array or a torch tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}")
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"frames must be at least 1x1 pixels, got {tuple(frames.shape)}")
    return frames


def to_size(size: int | Sequence[int]) -> tuple[int, int]:
    """An image size as ``(height, width)``; a single int is a square."""
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 3:  # timm's (C, H, W)
        size = size[1:]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"an image size is an int or (height, width), got {size}")
    return size


def box_to_pixels(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """Fractional ``(x0, y0, x1, y1)`` -> pixel ``(top, left, bottom, right)``, at least 1x1, inside the frame."""
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {box}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"a box needs x1 > x0 and y1 > y0, got {box}")
    left = min(max(round(x0 * width), 0), width - 1)
    top = min(max(round(y0 * height), 0), height - 1)
    right = min(max(round(x1 * width), left + 1), width)
    bottom = min(max(round(y1 * height), top + 1), height)
    return top, left, bottom, right


@dataclass(frozen=True)
class ImagePreprocess:
    """uint8 frames -> normalised ``(T, 3, H, W)`` model input.

    Attributes:
        size: the model's input ``(height, width)``.
        mean, std: per-channel normalisation of ``[0, 1]`` pixels.
        interpolation: resampling mode (antialiased when shrinking, like PIL).
        aspect: ``"resize"`` squashes the frame to ``size``; ``"pad"`` pads it with the mean
            colour to the aspect ratio of ``size`` first (centred), then resizes.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Interpolation = "bicubic"
    aspect: Aspect = "resize"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", to_size(self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std are three values (std > 0), got {self.mean}, {self.std}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if self.aspect not in ("resize", "pad"):
            raise ValueError(f"aspect must be 'resize' or 'pad', got {self.aspect!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Centre ``x`` (T, 3, H, W) in a mean-coloured canvas of the target aspect ratio."""
        _, _, h, w = x.shape
        th, tw = self.size
        if h * tw == w * th:
            return x
        if w * th > h * tw:  # too wide: grow the height
            ch, cw = math.ceil(w * th / tw), w
        else:
            ch, cw = h, math.ceil(h * tw / th)
        # LLaVA fills with the mean colour quantised to uint8 (expand2square).
        fill = torch.tensor([int(m * 255) / 255 for m in self.mean], dtype=x.dtype, device=x.device)
        canvas = fill.view(1, 3, 1, 1).expand(x.shape[0], 3, ch, cw).clone()
        top, left = (ch - h) // 2, (cw - w) // 2
        canvas[:, :, top : top + h, left : left + w] = x
        return canvas

    def __call__(
        self, frames: torch.Tensor, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``(T, H, W, 3)`` uint8 -> ``(T, 3, *size)`` normalised, on ``device`` in ``dtype``.

        Resampling runs in float32 (half-precision interpolation is not available everywhere);
        the result is cast to ``dtype`` at the end.
        """
        x = frames.to(device=device).permute(0, 3, 1, 2).float().div_(255.0)
        if self.aspect == "pad":
            x = self._pad(x)
        if tuple(x.shape[-2:]) != self.size:
            if self.interpolation == "nearest":
                x = F.interpolate(x, size=self.size, mode="nearest")
            else:
                x = F.interpolate(
                    x, size=self.size, mode=self.interpolation, align_corners=False, antialias=True
                )
            x = x.clamp_(0.0, 1.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        return x if dtype is None else x.to(dtype)

    def crops(
        self,
        frames: torch.Tensor,
        boxes: Sequence[Box],
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Crop frame ``i`` to ``boxes[i]`` (fractions of the frame) and preprocess each crop."""
        if len(boxes) != frames.shape[0]:
            raise ValueError(f"one box per frame: got {len(boxes)} boxes for {frames.shape[0]} frames")
        _, h, w, _ = frames.shape
        out = []
        for frame, box in zip(frames, boxes):
            top, left, bottom, right = box_to_pixels(box, h, w)
            out.append(self(frame[None, top:bottom, left:right], device, dtype))
        return torch.cat(out) if out else self(frames[:0], device, dtype)


def chunks(total: int, size: int) -> Iterator[slice]:
    """Slices of ``range(total)`` of at most ``size`` items."""
    if size < 1:
        raise ValueError(f"a batch size must be >= 1, got {size}")
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a module's first floating parameter (CPU float32 when it has none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``"torch.float16"`` / a dtype -> a dtype (JSON specs name dtypes as strings)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return value


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------


def require_file(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors: safetensors, or a pickle through ``weights_only=True`` only.

    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and a DataParallel ``module.`` prefix
    are removed, as open_clip and timm do.
    """
    path = require_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"{path} holds more than tensors and is only read with torch.load(weights_only=True), "
                f"which refused it ({exc}); save the state_dict as safetensors instead"
            ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint strictly into ``module``, naming the keys that do not match."""
    state = load_state_dict_file(path)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not match {type(module).__name__}: missing keys {result.missing_keys[:10]}, "
            f"unexpected keys {result.unexpected_keys[:10]}"
        )
    logger.info("loaded %d tensors from %s", len(state), path)


def import_string(target: str) -> Any:
    """``"package.module:attribute"`` -> the attribute (specs name builders this way)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected 'package.module:attribute', got {target!r}")
    return getattr(importlib.import_module(module_name), attribute)


# ----------------------------------------------------------------------------------------------
# open_clip and transformers' CLIP, imported lazily
# ----------------------------------------------------------------------------------------------


def import_open_clip():
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - open_clip is a core dependency
        raise ImportError("open_clip is needed here: pip install 'open_clip_torch>=3.0'") from exc
    return open_clip


def import_transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise ImportError("transformers is needed here: pip install 'transformers>=5.0,<5.20'") from exc
    return transformers


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or value.startswith(".")
        or Path(value).suffix in (".safetensors", ".pt", ".pth", ".bin")
    )


def build_open_clip(
    model_name: str | None = None,
    pretrained: str | os.PathLike | None = None,
    model_cfg: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, Any]:
    """An open_clip model and its tokenizer, from a built-in name, a ``local-dir:``/``hf-hub:``
    name, or a config dict; weights from a pretrained tag or a local checkpoint file.

    Returns ``(model, tokenizer)``; the model is in eval mode on the CPU in float32.
    """
    open_clip = import_open_clip()
    if (model_name is None) == (model_cfg is None):
        raise ValueError("give exactly one of model_name and model_cfg")
    checkpoint = None
    if pretrained is not None and (isinstance(pretrained, os.PathLike) or _looks_like_path(str(pretrained))):
        checkpoint = require_file(pretrained)
        pretrained = None
    if model_cfg is not None:
        if pretrained is not None:
            raise ValueError(
                f"a model built from model_cfg takes weights from a file, not the tag {pretrained!r}"
            )
        model, tokenizer = _open_clip_from_cfg(open_clip, model_cfg)
    else:
        schema = model_name.split(":", 1)[0] if model_name.startswith(("local-dir:", "hf-hub:")) else None
        if schema is None:
            _check_open_clip_name(open_clip, model_name, pretrained)
        elif schema == "local-dir" and not Path(model_name.split(":", 1)[1]).expanduser().is_dir():
            raise FileNotFoundError(f"open_clip model directory {model_name.split(':', 1)[1]} does not exist")
        model = open_clip.create_model(model_name, pretrained=pretrained, weights_only=True)
        tokenizer = open_clip.get_tokenizer(model_name)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval(), tokenizer


def resolve_open_clip(
    model: str | torch.nn.Module | None,
    pretrained: str | os.PathLike | None,
    model_cfg: dict[str, Any] | None,
) -> tuple[torch.nn.Module, Any, dict[str, Any] | None]:
    """``(model, tokenizer or None, spec or None)`` for the open_clip towers and scorers: a name or
    config is built (and described by a spec); a built model is taken as is."""
    if isinstance(model, str) or model_cfg is not None:
        spec = {
            "model": model if model_cfg is None else None,
            "pretrained": None if pretrained is None else str(pretrained),
            "model_cfg": model_cfg,
        }
        built, tokenizer = build_open_clip(None if model_cfg is not None else model, pretrained, model_cfg)
        return built, tokenizer, spec
    if isinstance(model, torch.nn.Module):
        if pretrained is not None:
            raise ValueError("pretrained applies to a model built by name")
        return model, None, None
    raise ValueError("give an open_clip model name, a built model, or model_cfg")


def require_open_clip_vit(visual: torch.nn.Module, hint: str) -> torch.nn.Module:
    """Patch tokens on a grid need open_clip's ``VisionTransformer`` (not a timm trunk or a ResNet)."""
    if not isinstance(visual, import_open_clip().transformer.VisionTransformer):
        raise TypeError(
            f"an open_clip VisionTransformer image tower is needed, got {type(visual).__name__}; {hint}"
        )
    return visual


def _check_open_clip_name(open_clip, model_name: str, pretrained: str | None) -> None:
    names = open_clip.list_models()
    cleaned = model_name.replace("/", "-")
    if cleaned not in names:
        close = difflib.get_close_matches(cleaned, names, n=5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"unknown open_clip model {model_name!r}.{hint} open_clip.list_models() lists the built-in "
            "names and open_clip.list_pretrained() the (name, tag) pairs; a model saved locally is "
            "'local-dir:/path/to/folder', or pass model_cfg={...}"
        )
    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(cleaned)
        if pretrained not in tags:
            raise ValueError(
                f"unknown pretrained tag {pretrained!r} for open_clip model {model_name!r}; known tags: "
                f"{', '.join(tags) or 'none'} (or give the path of a local checkpoint)"
            )


def _open_clip_from_cfg(open_clip, model_cfg: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """Build the model class open_clip's factory would pick for this config, and its tokenizer."""
    cfg = json.loads(json.dumps(model_cfg))  # a deep copy that also proves the config is JSON-able
    text_cfg = cfg.get("text_cfg", {})
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    if "multimodal_cfg" in cfg:
        cls = open_clip.CoCa
    elif custom_text:
        cls = open_clip.CustomTextCLIP
    else:
        cls = open_clip.CLIP
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False  # weights come from our checkpoint, never a download
    model = cls(**cfg)
    visual = model.visual
    open_clip.set_model_preprocess_cfg(
        model,
        {
            "size": getattr(visual, "image_size", cfg.get("vision_cfg", {}).get("image_size", 224)),
            "mean": OPENAI_CLIP_MEAN,
            "std": OPENAI_CLIP_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    )
    context_length = text_cfg.get("context_length", 77)
    if text_cfg.get("hf_tokenizer_name"):
        tokenizer = open_clip.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length)
    else:
        tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    return model, tokenizer


def open_clip_preprocess(
    visual: torch.nn.Module, aspect: Aspect, image_size: int | Sequence[int] | None = None
) -> ImagePreprocess:
    """The :class:`ImagePreprocess` of an open_clip visual tower (its preprocess_cfg, our aspect mode)."""
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    interpolation = cfg.get("interpolation", "bicubic")
    return ImagePreprocess(
        size=to_size(image_size or cfg.get("size") or visual.image_size),
        mean=tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN),
        std=tuple(cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_CLIP_STD),
        interpolation=interpolation if interpolation in _INTERPOLATIONS else "bicubic",
        aspect=aspect,
    )


def hf_image_stats(
    path: str | os.PathLike | None,
) -> tuple[tuple[float, ...], tuple[float, ...], Interpolation]:
    """Mean, std and interpolation from a model folder's ``preprocessor_config.json`` (CLIP's when absent)."""
    if path is not None:
        config_file = Path(path) / "preprocessor_config.json"
        if config_file.is_file():
            cfg = json.loads(config_file.read_text())
            # transformers' resample codes are PIL's: 2 bilinear, 3 bicubic, 0 nearest.
            interpolation = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(cfg.get("resample", 3), "bicubic")
            return (
                tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
                tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
                interpolation,
            )
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic"


def load_hf(model: str | os.PathLike | torch.nn.Module, class_name: str):
    """``(model, local folder or None, spec or None)``: a folder or hub id is loaded with
    ``transformers.<class_name>.from_pretrained``; a built model is taken as is."""
    if isinstance(model, (str, os.PathLike)):
        source, folder = resolve_hf_source(model)
        loaded = getattr(import_transformers(), class_name).from_pretrained(source)
        return loaded, folder, {"model": str(model)}
    return model, None, None


def hf_preprocess(
    vision_config: Any,
    folder: Path | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    aspect: Aspect,
) -> ImagePreprocess:
    """Preprocessing for a transformers vision model: its config's size, the folder's statistics."""
    default_mean, default_std, interpolation = hf_image_stats(folder)
    return ImagePreprocess(
        size=to_size(vision_config.image_size),
        mean=tuple(mean or default_mean),
        std=tuple(std or default_std),
        interpolation=interpolation,
        aspect=aspect,
    )


def resolve_hf_source(model: str | os.PathLike) -> tuple[str, Path | None]:
    """Where ``from_pretrained`` should read: ``(source, local folder or None)``.

    A local folder is used as is. A string of the hub's ``org/name`` form that is not a local
    folder is passed on as a hub id (transformers' cache, or the hub where reachable). Anything
    else that looks like a path must exist: a missing folder is a ``FileNotFoundError`` naming it.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), path
    text = str(model)
    is_hub_id = (
        isinstance(model, str)
        and text.count("/") == 1
        and not text.startswith((".", "/", "~"))
        and not text.endswith("/")
    )
    if not is_hub_id:
        raise FileNotFoundError(f"model folder {path} does not exist")
    return text, None


# ----------------------------------------------------------------------------------------------
# what towers and scorers share as modules: frozen weights, batch size, specs, a kind registry
# ----------------------------------------------------------------------------------------------


class FrameModule(torch.nn.Module):
    """A module that preprocesses frames for a wrapped model, in batches, usually frozen.

    A frozen module has no gradients and keeps its wrapped models in eval mode whatever its
    parent's mode (batch-norm statistics and dropout must not change the features); ``_spec`` says
    how ``build_*`` can rebuild it from JSON, when it was built from a name or path.
    """

    kind: str = ""

    def __init__(self, *, max_batch_size: int, frozen: bool = True) -> None:
        super().__init__()
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.frozen = frozen
        self.preprocess: ImagePreprocess
        self._spec: dict[str, Any] | None = None

    def _freeze(self, *modules: torch.nn.Module) -> None:
        if self.frozen:
            for module in modules:
                module.requires_grad_(False)
                module.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            for child in self.children():
                child.eval()
        return self

    def _grad_enabled(self) -> bool:
        return torch.is_grad_enabled() and not self.frozen

    def to_spec(self) -> dict[str, Any]:
        """A JSON-able spec that the matching ``build_*`` turns back into this module.

        Only a module built from a name, path or registered builder can be described: one built
        from module instances raises, and its weights belong in the caller's own checkpoint.
        """
        if self._spec is None:
            raise ValueError(
                f"this {type(self).__name__} was built from a module instance; build it from a name, "
                "path or registered builder to describe it by a spec, or save its weights with the model"
            )
        return {
            "kind": self.kind,
            **self._spec,
            "aspect": self.preprocess.aspect,
            "max_batch_size": self.max_batch_size,
        }


def register_kind(registry: dict[str, Callable], kind: str, what: str) -> Callable:
    """A decorator adding a class or builder to ``registry`` under ``kind``."""

    def decorator(builder: Callable) -> Callable:
        if kind in registry:
            raise ValueError(f"{what} kind {kind!r} is registered twice")
        registry[kind] = builder
        return builder

    return decorator


def build_from_spec(registry: dict[str, Callable], spec: dict[str, Any], what: str) -> torch.nn.Module:
    """``registry[spec["kind"]](**rest)``, then ``.to(device, dtype)`` where the spec names them.

    Entries that are None are left out, so a spec may list every field of its kind.
    """
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in registry:
        raise ValueError(f"unknown {what} kind {kind!r}; known kinds: {', '.join(sorted(registry))}")
    device = spec.pop("device", None)
    dtype = parse_dtype(spec.pop("dtype", None))
    module = registry[kind](**{k: v for k, v in spec.items() if v is not None})
    if device is not None or dtype is not None:
        module = module.to(device=device, dtype=dtype)
    return module
