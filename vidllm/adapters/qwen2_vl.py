"""Free Video-LLM on transformers' Qwen2-VL and Qwen2.5-VL, with 3D rotary positions for the kept tokens.

The reducer is the paper's (Han et al., 2024, arXiv:2410.10441, section 3); what needs care here
is Qwen2-VL's video encoding (Wang et al., 2024, arXiv:2409.12191, section 2.1):

- the vision encoder cuts the video into temporal patches of ``temporal_patch_size`` (2) frames and
  merges 2x2 neighbouring patches into one LLM token, so a *unit* of the reducer is one temporal
  patch and its grid is the merged ``(H / 28, W / 28)`` grid; attention inside the encoder never
  crosses temporal patches, so encoding the sampled units together equals encoding each alone;
- the LLM uses M-RoPE: every visual token has a (t, h, w) position offset by the text before the
  video, and the text after the video continues at the largest vision position + 1.

Dropping tokens from the middle of that sequence would shift every later position, so the adapter
computes the position ids itself: each kept token keeps the (t, h, w) of the place it came from
(a pooled or cropped token takes the middle cell of the region it summarises; see
:func:`vidllm.adapters.base.segment_cells`), and the text after the video continues from the
largest kept position + 1, the rule of Qwen's reference ``get_rope_index``. (transformers 5.x
continues from ``max(h, w)`` instead, which is the same whenever the video has no more temporal
patches than rows or columns; the keep-all test compares within that range.) The ids are passed
to ``generate`` as a ``(4, 1, L)`` tensor - a plain text row and the three M-RoPE rows - which
generation extends by one per new token, exactly as the model's own first step does.

Qwen2.5-VL spaces temporal positions by ``tokens_per_second * seconds_per_temporal_patch``; the
adapter does the same from the ``fps`` of the frames (the processor's own default of 24 frames a
second when it is not given).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from vidllm.adapters.base import Grid, VideoReducerAdapter, segment_cells
from vidllm.reducer import Reduction

logger = logging.getLogger(__name__)

#: What the Qwen2-VL processors assume for a frame array with no frame rate.
DEFAULT_FPS = 24.0


class Qwen2VLReducerAdapter(VideoReducerAdapter):
    """The Free Video-LLM reducer in front of a transformers Qwen2-VL or Qwen2.5-VL model.

    Args:
        model: a ``Qwen2VLForConditionalGeneration`` or ``Qwen2_5_VLForConditionalGeneration``.
        processor: its processor (``Qwen2VLVideoProcessor``, tokenizer, chat template).
        **kwargs: ``scorer``, ``reducer``, ``budget``, ``max_question_chars`` of
            :class:`~vidllm.adapters.base.VideoReducerAdapter`.

    ``ReducerConfig.num_frames`` counts temporal patches: the paper's 50 units are 100 frames.
    """

    model_classes: ClassVar[dict[str, str]] = {
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    }
    fallback_template: ClassVar[str] = (
        "<|im_start|>user\n<|vision_start|>{video}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    )

    def __init__(self, model: Any, processor: Any, **kwargs: Any) -> None:
        super().__init__(model, processor, **kwargs)
        self.video_processor = processor.video_processor
        vision = model.config.vision_config
        if self.video_processor.temporal_patch_size != vision.temporal_patch_size:
            raise ValueError(
                f"processor temporal_patch_size {self.video_processor.temporal_patch_size} != model's "
                f"{vision.temporal_patch_size}"
            )
        self.merge = vision.spatial_merge_size
        self.tokens_per_second = getattr(vision, "tokens_per_second", None)  # Qwen2.5-VL only

    @property
    def frames_per_unit(self) -> int:
        return self.video_processor.temporal_patch_size

    # -- geometry ---------------------------------------------------------------------------------

    def grid_for(self, frame_size: tuple[int, int], num_frames: int) -> Grid:
        """The processor's dynamic resize (``smart_resize``, with its per-frame cap when enabled)."""
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

        vp = self.video_processor
        size = dict(vp.size)
        factor = vp.patch_size * vp.merge_size
        max_pixels = size["longest_edge"]
        if getattr(vp, "cap_pixels_per_frame", None):
            total_pixels = int(vp.max_video_tokens * factor * factor * 0.9)
            per_frame = total_pixels * vp.temporal_patch_size // max(num_frames, 1)
            max_pixels = max(min(max_pixels, per_frame), int(size["shortest_edge"] * 1.05))
        height, width = smart_resize(
            *frame_size, factor=factor, min_pixels=size["shortest_edge"], max_pixels=max_pixels
        )
        return height // factor, width // factor

    # -- encoding ---------------------------------------------------------------------------------

    def encode_units(self, frames: np.ndarray) -> torch.Tensor:
        out = self.video_processor(videos=[frames], return_tensors="pt")
        pixel_values = out["pixel_values_videos"].to(self.device)
        grid_thw = out["video_grid_thw"].to(self.device)
        tokens = self.model.model.get_video_features(pixel_values, grid_thw, return_dict=True).pooler_output[
            0
        ]
        t, h, w = grid_thw[0].tolist()
        return tokens.reshape(t, h // self.merge, w // self.merge, tokens.shape[-1])

    # -- positions --------------------------------------------------------------------------------

    def unit_time_positions(self, units: int, sampled_fps: float | None) -> list[int]:
        """The temporal M-RoPE index of each unit (before the text offset)."""
        if self.tokens_per_second is None:  # Qwen2-VL: one step per temporal patch
            return list(range(units))
        fps = sampled_fps or DEFAULT_FPS
        interval = self.tokens_per_second * self.frames_per_unit / fps
        return [int(u * interval) for u in range(units)]

    def position_ids(
        self,
        input_ids: torch.Tensor,
        placeholder: int,
        reduction: Reduction,
        grid: Grid,
        suffix: int,
        *,
        units: int,
        sampled_fps: float | None = None,
        **kw: Any,
    ) -> torch.Tensor:
        """``(4, 1, L)``: a text row (0..L-1), then the (t, h, w) M-RoPE rows of the spliced sequence."""
        times = self.unit_time_positions(units, sampled_fps)
        vision = []
        for segment in reduction.segments:
            cells = segment_cells(segment, grid, reduction.config)
            t = torch.full((cells.shape[0],), times[segment.frame], dtype=torch.long)
            vision.append(torch.stack([t, cells[:, 0], cells[:, 1]]))
        vision_pos = torch.cat(vision, dim=1) + placeholder
        after = input_ids.shape[0] - placeholder - 1
        before_pos = torch.arange(placeholder).expand(3, -1)
        after_pos = torch.arange(after).expand(3, -1) + vision_pos.max() + 1
        mrope = torch.cat([before_pos, vision_pos, after_pos], dim=1)
        text = torch.arange(mrope.shape[1])[None]
        return torch.cat([text, mrope]).unsqueeze(1).to(self.device)
