"""The two small interfaces the reducer works through: vision towers and relevance scorers.

A *vision tower* turns frames into a grid of patch features (what the LM sees after the
projector). A *relevance scorer* says how relevant each frame, and each patch of a frame, is to a
question (CLIP text-image similarity in the paper). They are separate because the paper uses
them separately: LLaVA's tower makes the tokens, a CLIP dual encoder scores them; one model may
play both parts.

Frames everywhere are ``uint8`` arrays or tensors of shape ``(T, H, W, 3)``, RGB.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

Frames = np.ndarray | torch.Tensor
Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of the frame's width and height


@runtime_checkable
class VisionTower(Protocol):
    """Frames -> patch features on a fixed grid."""

    @property
    def grid(self) -> tuple[int, int]:
        """The ``(h, w)`` patch grid of one frame at the tower's input size."""
        ...

    @property
    def hidden_size(self) -> int:
        """Channels of one patch feature."""
        ...

    def encode(self, frames: Frames) -> torch.Tensor:
        """``(T, H, W, 3)`` uint8 frames -> ``(T, h, w, C)`` features (resized to the input size)."""
        ...

    def encode_crop(self, frames: Frames, boxes: list[Box]) -> torch.Tensor:
        """Crop each frame to its box and encode the crop at full input size -> ``(T, h, w, C)``."""
        ...


@runtime_checkable
class RelevanceScorer(Protocol):
    """Question relevance of frames and of their patches."""

    def score(self, frames: Frames, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T,)`` cosine similarity of each frame to the question, and ``(T, hs, ws)`` of each patch.

        ``(hs, ws)`` is the scorer's own patch grid; the reducer resamples it to the tower's.
        """
        ...
