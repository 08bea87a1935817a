"""Relevance scorers: how relevant each frame, and each patch of a frame, is to the question.

Free Video-LLM (Han et al., 2024, arXiv:2410.10441, Sec. 3.2) picks the slow-path frames by the
cosine similarity of CLIP's image embedding to the question's text embedding, and places the RoI
around the patches whose tokens, projected with CLIP's visual projection, are most similar to the
same text embedding. Every scorer here returns exactly those two things
(:class:`vidllm.interfaces.RelevanceScorer`):

- frame scores ``(T,)``: ``cos(text, image)``;
- patch scores ``(T, hs, ws)``: ``cos(text, proj(norm(patch token)))`` on the scorer's own grid.

Three scorers share one implementation (:class:`EmbeddingScorer`: preprocessing, batching, a
per-question text-embedding cache, the cosines) and differ only in how they embed:

- :class:`OpenCLIPScorer`: an open_clip CLIP. open_clip's ``output_tokens`` gives the patch tokens
  after ``ln_post`` but *before* the projection; we take them from ``forward_intermediates`` with
  ``normalize_intermediates=True`` (the same ``ln_post``) and apply ``visual.proj``, in the same
  pass that gives the pooled image embedding.
- :class:`HFCLIPScorer`: a transformers ``CLIPModel``: ``visual_projection(post_layernorm(token))``.
- :class:`DualEncoderScorer`: any image encoder returning ``(global, patch map)`` with any text
  encoder and tokenizer: the project's own dual encoder (trained in another issue) plugs in here.

:func:`build_scorer` builds any of them from a JSON-able spec, so they are interchangeable in a
saved model's config.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
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
    import_string,
    import_transformers,
    load_hf,
    module_device_dtype,
    open_clip_preprocess,
    register_kind,
    require_open_clip_vit,
    resolve_open_clip,
    to_size,
)
from vidllm.interfaces import Frames

logger = logging.getLogger(__name__)

__all__ = [
    "SCORERS",
    "DualEncoderScorer",
    "EmbeddingScorer",
    "HFCLIPScorer",
    "OpenCLIPScorer",
    "build_scorer",
    "register_scorer",
]


class EmbeddingScorer(FrameModule):
    """Cosine relevance from an image embedder and a text embedder (the shared machinery).

    Subclasses set ``self.preprocess`` and ``self._patch_grid`` and implement
    :meth:`embed_images` (normalised pixels -> ``(global (B, D), patches (B, hs, ws, D))``) and
    :meth:`embed_text` (one question -> ``(D,)``). Embeddings need not be normalised.
    """

    def __init__(self, *, max_batch_size: int = 32, text_cache_size: int = 64, frozen: bool = True) -> None:
        super().__init__(max_batch_size=max_batch_size, frozen=frozen)
        self.text_cache_size = text_cache_size
        self._patch_grid: tuple[int, int] = (0, 0)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def patch_grid(self) -> tuple[int, int]:
        """The ``(hs, ws)`` grid of the patch scores."""
        return self._patch_grid

    def embed_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def embed_text(self, question: str) -> torch.Tensor:
        raise NotImplementedError

    # -- the RelevanceScorer interface ---------------------------------------------------------

    def text_embedding(self, question: str) -> torch.Tensor:
        """The question's unit-norm text embedding ``(D,)`` in float32, cached per question.

        The reducer scores one question against many frames, and a batch of questions often
        repeats one; the cache is dropped whenever weights are loaded or the mode changes.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question must be a non-empty string")
        cached = self._text_cache.get(question)
        if cached is not None:
            self._text_cache.move_to_end(question)
            return cached
        with torch.set_grad_enabled(self._grad_enabled()):
            embedding = F.normalize(self.embed_text(question).float().reshape(-1), dim=0)
        if self.text_cache_size > 0 and not embedding.requires_grad:
            self._text_cache[question] = embedding
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return embedding

    def score(self, frames: Frames, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T,)`` frame and ``(T, hs, ws)`` patch cosine similarities to the question (float32)."""
        frames = as_frames(frames)
        text = self.text_embedding(question)
        device, dtype = module_device_dtype(self)
        hs, ws = self._patch_grid
        frame_scores, patch_scores = [], []
        with torch.set_grad_enabled(self._grad_enabled()):
            for sl in chunks(frames.shape[0], self.max_batch_size):
                image, patches = self.embed_images(self.preprocess(frames[sl], device, dtype))
                t = text.to(image.device)
                frame_scores.append(F.normalize(image.float(), dim=-1) @ t)
                patch_scores.append(F.normalize(patches.float(), dim=-1) @ t)
        if not frame_scores:
            return torch.empty(0, device=device), torch.empty(0, hs, ws, device=device)
        return torch.cat(frame_scores), torch.cat(patch_scores)

    # -- housekeeping --------------------------------------------------------------------------

    def clear_cache(self) -> None:
        self._text_cache.clear()

    def train(self, mode: bool = True) -> EmbeddingScorer:
        self.clear_cache()
        return super().train(mode)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        self.clear_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"patch_grid={self.patch_grid}, input_size={self.preprocess.size}, aspect={self.preprocess.aspect!r}"


def _tokenize(
    tokenizer: Callable, question: str, device: torch.device, max_length: int | None = None
) -> dict[str, torch.Tensor] | torch.Tensor:
    """Tokenize one question with an open_clip-style tokenizer (returns a tensor) or a
    transformers tokenizer (called for tensors; ``input_ids`` and ``attention_mask`` kept)."""
    if hasattr(tokenizer, "model_input_names"):  # transformers
        tokens = tokenizer(
            [question],
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
        return {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
    tokens = tokenizer([question])
    if isinstance(tokens, torch.Tensor):
        return tokens.to(device)
    if isinstance(tokens, Mapping):
        return {k: v.to(device) for k, v in tokens.items() if isinstance(v, torch.Tensor)}
    raise TypeError(f"a tokenizer must return a tensor or a mapping of tensors, got {type(tokens).__name__}")


# ----------------------------------------------------------------------------------------------
# open_clip
# ----------------------------------------------------------------------------------------------


class OpenCLIPScorer(EmbeddingScorer):
    """CLIP relevance from an open_clip model.

    Args:
        model: an open_clip model name (``"ViT-B-16"``, ``"local-dir:/path"``, ``"hf-hub:org/repo"``)
            or a built open_clip model; ignored when ``model_cfg`` is given.
        pretrained: a pretrained tag of that name, or a local checkpoint file (safetensors
            preferred; a pickle is read only with ``weights_only=True``).
        model_cfg: an open_clip model config dict to build instead of a named model.
        tokenizer: required with a built model; by default the name's or config's tokenizer.
        aspect: ``"resize"`` (default: the patch grid then covers the whole frame, as the
            reducer's boxes assume) or ``"pad"``.
        max_batch_size: frames per forward pass.
        text_cache_size: questions whose text embedding is kept.
    """

    kind = "open_clip"

    def __init__(
        self,
        model: str | nn.Module | None = None,
        pretrained: str | os.PathLike | None = None,
        *,
        model_cfg: dict[str, Any] | None = None,
        tokenizer: Callable | None = None,
        aspect: Aspect = "resize",
        max_batch_size: int = 32,
        text_cache_size: int = 64,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, text_cache_size=text_cache_size)
        model, default_tokenizer, self._spec = resolve_open_clip(model, pretrained, model_cfg)
        tokenizer = tokenizer or default_tokenizer
        if tokenizer is None:
            raise ValueError("a built open_clip model needs its tokenizer (open_clip.get_tokenizer(name))")
        visual = require_open_clip_vit(model.visual, "patch scores project its patch tokens")
        if visual.attn_pool is not None:
            raise TypeError("an attentional-pooling image tower (CoCa) has no per-patch projection to score")
        self.model = model
        self.tokenizer = tokenizer
        self._freeze(model)
        self._last_block = len(visual.transformer.resblocks) - 1
        self.preprocess = open_clip_preprocess(visual, aspect)
        self._patch_grid = tuple(int(v) for v in visual.grid_size)

    def embed_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual = self.model.visual
        out = visual.forward_intermediates(
            pixels, indices=[self._last_block], normalize_intermediates=True, output_fmt="NLC"
        )
        tokens = out["image_intermediates"][0]  # ln_post(last block), class token split off
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        hs, ws = self._patch_grid
        return out["image_features"], tokens.reshape(tokens.shape[0], hs, ws, -1)

    def embed_text(self, question: str) -> torch.Tensor:
        device, _ = module_device_dtype(self.model)
        tokens = _tokenize(self.tokenizer, question, device)
        return self.model.encode_text(tokens if isinstance(tokens, torch.Tensor) else tokens["input_ids"])[0]


# ----------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------


class HFCLIPScorer(EmbeddingScorer):
    """CLIP relevance from a transformers ``CLIPModel``.

    Args:
        model: a local model folder (or a hub id where a hub is reachable), or a built ``CLIPModel``.
        tokenizer: required with a built model; by default the folder's tokenizer.
        mean, std: normalisation; by default the folder's ``preprocessor_config.json``, else CLIP's.
        aspect, max_batch_size, text_cache_size: as :class:`OpenCLIPScorer`.
    """

    kind = "hf_clip"

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        *,
        tokenizer: Callable | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        aspect: Aspect = "resize",
        max_batch_size: int = 32,
        text_cache_size: int = 64,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, text_cache_size=text_cache_size)
        source = model
        model, folder, self._spec = load_hf(model, "CLIPModel")
        if self._spec is not None:
            self._spec.update(mean=mean, std=std)
        if tokenizer is None and self._spec is not None:  # loaded from a folder or hub id
            tokenizer = import_transformers().AutoTokenizer.from_pretrained(str(folder or source))
        if tokenizer is None:
            raise ValueError("a built CLIPModel needs its tokenizer")
        self.model = model
        self.tokenizer = tokenizer
        self._freeze(model)
        vision_config = model.config.vision_config
        self._max_text_length = int(model.config.text_config.max_position_embeddings)
        self.preprocess = hf_preprocess(vision_config, folder, mean, std, aspect)
        self._patch_grid = (vision_config.image_size // vision_config.patch_size,) * 2

    def embed_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vision = self.model.vision_model
        out = vision(pixel_values=pixels)
        hs, ws = self._patch_grid
        tokens = out.last_hidden_state
        tokens = tokens[:, tokens.shape[1] - hs * ws :]
        patches = self.model.visual_projection(vision.post_layernorm(tokens))
        image = self.model.visual_projection(out.pooler_output)
        return image, patches.reshape(patches.shape[0], hs, ws, -1)

    def embed_text(self, question: str) -> torch.Tensor:
        device, _ = module_device_dtype(self.model)
        tokens = _tokenize(self.tokenizer, question, device, max_length=self._max_text_length)
        if isinstance(tokens, torch.Tensor):
            tokens = {"input_ids": tokens}
        out = self.model.get_text_features(**tokens)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output)[0]


# ----------------------------------------------------------------------------------------------
# any dual encoder
# ----------------------------------------------------------------------------------------------


class DualEncoderScorer(EmbeddingScorer):
    """Relevance from any pair of image and text encoders sharing one embedding space.

    The contract the project's own dual encoder (a zoo backbone image tower and a small text
    tower) implements to plug in:

    - ``image_encoder(pixels (B, 3, H, W)) -> (global (B, D), patches (B, D, hs, ws))``: the
      patch map is in the same space as the global embedding (the equivalent of CLIP's
      projected patch tokens), laid out like a CNN feature map;
    - ``tokenizer([question])`` -> a ``(1, L)`` tensor or a mapping of tensors;
      ``text_encoder(tensor)`` or ``text_encoder(**mapping)`` -> ``(1, D)``.

    The patch grid is measured by one dry run at construction.

    Args:
        image_encoder, text_encoder, tokenizer: as above.
        image_size: input size of the image encoder.
        mean, std, interpolation, aspect: preprocessing (ImageNet statistics by default, as the
            zoo's backbones).
        max_batch_size, text_cache_size, frozen: as :class:`OpenCLIPScorer`; ``frozen=False``
            keeps gradients and train mode for fine-tuning through the scorer.
    """

    kind = "dual_encoder"

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Callable,
        *,
        image_size: int | Sequence[int] = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bicubic",
        aspect: Aspect = "resize",
        max_batch_size: int = 32,
        text_cache_size: int = 64,
        frozen: bool = True,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, text_cache_size=text_cache_size, frozen=frozen)
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self._freeze(image_encoder, text_encoder)
        self.preprocess = ImagePreprocess(
            size=to_size(image_size),
            mean=tuple(mean),
            std=tuple(std),
            interpolation=interpolation,
            aspect=aspect,
        )
        device, dtype = module_device_dtype(image_encoder)
        with torch.no_grad():
            image, patches = self._run_image_encoder(
                torch.zeros(1, 3, *self.preprocess.size, device=device, dtype=dtype)
            )
        self._patch_grid = (int(patches.shape[1]), int(patches.shape[2]))
        self.embed_dim = int(image.shape[-1])

    def _run_image_encoder(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.image_encoder(pixels)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError("image_encoder must return (global (B, D), patches (B, D, hs, ws))")
        image, patch_map = out
        if image.ndim != 2 or patch_map.ndim != 4 or patch_map.shape[1] != image.shape[1]:
            raise ValueError(
                f"image_encoder returned shapes {tuple(image.shape)} and {tuple(patch_map.shape)}; "
                "expected (B, D) and (B, D, hs, ws)"
            )
        return image, patch_map.permute(0, 2, 3, 1)

    def embed_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run_image_encoder(pixels)

    def embed_text(self, question: str) -> torch.Tensor:
        device, _ = module_device_dtype(self.text_encoder)
        tokens = _tokenize(self.tokenizer, question, device)
        out = self.text_encoder(**tokens) if isinstance(tokens, dict) else self.text_encoder(tokens)
        if out.ndim != 2 or out.shape[-1] != self.embed_dim:
            raise ValueError(
                f"text_encoder returned shape {tuple(out.shape)}; expected (1, {self.embed_dim})"
            )
        return out[0]


# ----------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------


def _build_dual_encoder(
    builder: str, aspect: Aspect | None = None, max_batch_size: int | None = None, **kwargs: Any
) -> nn.Module:
    """``{"kind": "dual_encoder", "builder": "package.module:function", ...}``: the function,
    given the other spec entries (a checkpoint path, ...), returns a ready scorer; ``aspect`` and
    ``max_batch_size`` are applied to it here."""
    scorer = import_string(builder)(**kwargs)
    if not isinstance(scorer, EmbeddingScorer):
        raise TypeError(f"{builder} returned a {type(scorer).__name__}, not an EmbeddingScorer")
    if aspect is not None:
        scorer.preprocess = replace(scorer.preprocess, aspect=aspect)
    if max_batch_size is not None:
        scorer.max_batch_size = max_batch_size
    if scorer._spec is None:
        scorer._spec = {"builder": builder, **kwargs}
    return scorer


SCORERS: dict[str, Callable[..., nn.Module]] = {
    "open_clip": OpenCLIPScorer,
    "hf_clip": HFCLIPScorer,
    "dual_encoder": _build_dual_encoder,
}


def register_scorer(kind: str) -> Callable:
    """Register a scorer class or builder under ``kind`` for :func:`build_scorer`."""
    return register_kind(SCORERS, kind, "scorer")


def build_scorer(spec: dict[str, Any] | str) -> nn.Module:
    """A relevance scorer from a JSON-able spec.

    ``spec`` is a dict ``{"kind": "open_clip" | "hf_clip" | "dual_encoder" | ..., **constructor
    arguments, "device": ..., "dtype": ...}`` (what a scorer's ``to_spec()`` returns), or a string
    ``"kind:model"`` (``"open_clip:ViT-B-16"``, ``"hf_clip:/models/clip"``).
    """
    if isinstance(spec, str):
        kind, sep, rest = spec.partition(":")
        if not sep or kind not in SCORERS:
            raise ValueError(f"a scorer string is 'kind:model' with kind in {sorted(SCORERS)}, got {spec!r}")
        spec = {"kind": kind, "model": rest}
    return build_from_spec(SCORERS, spec, "scorer")
