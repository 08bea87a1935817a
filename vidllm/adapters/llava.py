"""Free Video-LLM on transformers' LLaVA video models (LLaVA-NeXT-Video, LLaVA-OneVision).

The paper (Han et al., 2024, arXiv:2410.10441, section 3) runs its reducer on LLaVA-1.6: every
frame is encoded by the CLIP tower at its full 24x24 patch grid, projected by the multimodal
projector, and the slow / middle / fast paths are taken from those 576 tokens per frame. Here the
same happens on a transformers model, with two choices of what a frame's tokens are:

- ``features="full"`` (default, the paper's): vision tower -> feature layer / select strategy ->
  projector, on the tower's full patch grid (what the model's image path sees at base resolution);
- ``features="native"``: exactly the model's own video tokens - LLaVA-NeXT-Video pools the tower
  features 2x2 (``vision_resampler``) before the projector, LLaVA-OneVision bilinearly halves the
  projected grid. With a keep-everything configuration the adapter then feeds the model exactly
  what its own video path does (the tests check the logits agree).

LLaVA-OneVision ends every video with its learned ``image_newline`` embedding; the adapter keeps it
after the reduced tokens. It is a separator, not a visual token, so the count of visual tokens is
still ``plan(...).total``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from vidllm.adapters.base import Grid, PixelBox, VideoReducerAdapter

logger = logging.getLogger(__name__)

FeatureMode = Literal["full", "native"]


class LlavaVideoReducerAdapter(VideoReducerAdapter):
    """The Free Video-LLM reducer in front of a transformers LLaVA video model.

    Args:
        model: a ``LlavaNextVideoForConditionalGeneration`` or ``LlavaOnevisionForConditionalGeneration``.
        processor: its processor (video processor, tokenizer, chat template).
        features: ``"full"`` (the tower's full patch grid, the paper) or ``"native"`` (the model's
            own pooled video tokens); see the module docstring.
        **kwargs: ``scorer``, ``reducer``, ``budget``, ``max_question_chars`` of
            :class:`~vidllm.adapters.base.VideoReducerAdapter`.

    Example::

        adapter = LlavaVideoReducerAdapter.from_pretrained(
            "path/to/LLaVA-NeXT-Video-7B-hf", scorer=HFCLIPScorer("path/to/clip"), budget=1500
        )
        result = adapter.answer(frames, "What is the man holding?")
        result.text, result.frames["slow"], result.boxes
    """

    model_classes: ClassVar[dict[str, str]] = {
        "llava_next_video": "LlavaNextVideoForConditionalGeneration",
        "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    }
    fallback_template: ClassVar[str] = "USER: {video}\n{question} ASSISTANT:"

    def __init__(self, model: Any, processor: Any, *, features: FeatureMode = "full", **kwargs: Any) -> None:
        super().__init__(model, processor, **kwargs)
        if features not in ("full", "native"):
            raise ValueError(f"features must be 'full' or 'native', got {features!r}")
        self.features = features
        self.video_processor = processor.video_processor
        config = model.config
        vision = config.vision_config
        self.tower_grid = vision.image_size // vision.patch_size
        self.feature_layer = config.vision_feature_layer
        self.select_strategy = config.vision_feature_select_strategy

    @property
    def is_onevision(self) -> bool:
        return self.model.config.model_type == "llava_onevision"

    # -- geometry ---------------------------------------------------------------------------------

    def grid_for(self, frame_size: tuple[int, int], num_frames: int) -> Grid:
        g = self.tower_grid
        if self.features == "full":
            return g, g
        if self.is_onevision:  # apply_pooling: bilinear to ceil(g / 2)
            return math.ceil(g / 2), math.ceil(g / 2)
        stride = self.model.config.spatial_pool_stride  # vision_resampler: a stride-s pool or conv
        return g // stride, g // stride

    def visible_region(self, frame_size: tuple[int, int]) -> PixelBox:
        return processor_visible_region(self.video_processor, frame_size)

    # -- encoding ---------------------------------------------------------------------------------

    def _pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        out = self.video_processor(videos=[frames], return_tensors="pt")
        return out["pixel_values_videos"].to(self.device, self.model.dtype)  # (1, F, 3, S, S)

    def _select(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tower features at the configured layer(s), CLS dropped under the "default" strategy."""
        out = self.model.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        if isinstance(self.feature_layer, int):
            selected = out.hidden_states[self.feature_layer]
        else:
            selected = torch.cat([out.hidden_states[i] for i in self.feature_layer], dim=-1)
        if self.select_strategy == "default":
            selected = selected[:, 1:]
        return selected

    def encode_units(self, frames: np.ndarray) -> torch.Tensor:
        pixel_values = self._pixel_values(frames)
        num_frames = pixel_values.shape[1]
        inner = self.model.model
        if self.features == "native":
            pooled = inner.get_video_features(pixel_values, return_dict=True).pooler_output
            if self.is_onevision:  # (1, F * n + 1, D): the trailing newline is added back as the suffix
                tokens = pooled[0, :-1].reshape(num_frames, -1, pooled.shape[-1])
            else:  # one (F, n, D) tensor per video
                tokens = pooled[0]
        else:
            flat = pixel_values.flatten(0, 1)
            tokens = inner.multi_modal_projector(self._select(flat))
        h, w = self.grid_for((0, 0), num_frames)
        return tokens.reshape(num_frames, h, w, tokens.shape[-1])

    def video_suffix(self) -> torch.Tensor | None:
        if self.is_onevision:
            return self.model.model.image_newline[None]
        return None


def processor_visible_region(video_processor: Any, frame_size: tuple[int, int]) -> PixelBox:
    """The pixels of an ``(H, W)`` frame left after a LLaVA video processor's resize and centre crop.

    Scores and RoI boxes are computed on this region, so they line up with the tower's tokens.
    """
    height, width = frame_size
    full = (0.0, 0.0, float(width), float(height))
    size = getattr(video_processor, "size", None) or {}
    crop = getattr(video_processor, "crop_size", None) or {}
    size, crop = dict(size), dict(crop)
    if not getattr(video_processor, "do_center_crop", False) or "height" not in crop:
        return full
    if getattr(video_processor, "do_resize", False) and size.get("shortest_edge"):
        sx = sy = size["shortest_edge"] / min(height, width)
    elif getattr(video_processor, "do_resize", False) and size.get("height"):
        sx, sy = size["width"] / width, size["height"] / height
    else:
        sx = sy = 1.0
    cw, ch = min(width, crop["width"] / sx), min(height, crop["height"] / sy)
    x0, y0 = (width - cw) / 2, (height - ch) / 2
    return x0, y0, x0 + cw, y0 + ch
