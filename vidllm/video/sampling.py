"""Which frames to decode: uniform sampling by count or by rate inside a time window.

Pure functions of the frame timestamps, shared by both decode backends and tested on their own.

- A frame belongs to the window ``[start, end)`` when its display interval overlaps it, so a
  window shorter than one frame still shows the frame on screen at that time.
- ``num_frames=N`` takes the frame at the centre of each of N equal segments of the frames in the
  window (the TSN-style "segment centre" rule); with N >= the frames available, every frame once.
- ``fps=r`` takes the frame on screen at the centres of consecutive 1/r-second slots from
  ``start``; a rate above the video's gives every frame once (never a duplicate).
- Both: the rate's frames, thinned uniformly to at most N (as in "1 fps, at most 64 frames").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vidllm.video.errors import InvalidSamplingError

__all__ = ["SamplingRequest", "output_size", "select_frames"]


@dataclass(frozen=True)
class SamplingRequest:
    """A validated sampling request; build it with :meth:`create` so bad values fail early."""

    num_frames: int | None = None
    fps: float | None = None
    start: float | None = None
    end: float | None = None
    max_side: int | None = None

    @classmethod
    def create(
        cls,
        num_frames: int | None = None,
        fps: float | None = None,
        start: float | None = None,
        end: float | None = None,
        max_side: int | None = None,
    ) -> SamplingRequest:
        def _int(name: str, value, minimum: int) -> int | None:
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise InvalidSamplingError(f"{name} must be an integer >= {minimum} or None, got {value!r}")
            return int(value)

        def _seconds(name: str, value, *, positive: bool = False) -> float | None:
            if value is None:
                return None
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if ok:
                value = float(value)
                ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
            if not ok:
                bound = "> 0" if positive else ">= 0"
                raise InvalidSamplingError(f"{name} must be a finite number {bound} or None, got {value!r}")
            return value

        request = cls(
            num_frames=_int("num_frames", num_frames, 1),
            fps=_seconds("fps", fps, positive=True),
            start=_seconds("start", start),
            end=_seconds("end", end, positive=True),
            max_side=_int("max_side", max_side, 1),
        )
        if request.start is not None and request.end is not None and request.end <= request.start:
            raise InvalidSamplingError(
                f"end ({request.end:g} s) must be after start ({request.start:g} s): pass a non-empty window"
            )
        return request

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("num_frames", "fps", "start", "end", "max_side")}


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) after shrinking so the longer side is at most ``max_side``; never enlarges."""
    longest = max(width, height)
    if max_side is None or longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def select_frames(frame_starts: np.ndarray, frame_ends: np.ndarray, request: SamplingRequest) -> np.ndarray:
    """Indices (sorted, unique, int64) of the frames to decode.

    ``frame_starts`` / ``frame_ends`` are each frame's display interval in seconds from the start
    of the video, in presentation order. Raises :class:`InvalidSamplingError` when the window holds
    no frame (``start`` past the end of the video).
    """
    starts = np.asarray(frame_starts, dtype=np.float64)
    ends = np.asarray(frame_ends, dtype=np.float64)
    if starts.size == 0:
        raise InvalidSamplingError("the video has no frames to sample")
    duration = float(ends.max())
    start = 0.0 if request.start is None else request.start
    end = duration if request.end is None else min(request.end, duration)
    if start >= duration:
        raise InvalidSamplingError(
            f"start={start:g} s is at or past the end of the video ({duration:.3f} s): "
            "pass a start inside the video"
        )
    window = np.nonzero((ends > start) & (starts < end))[0]
    if window.size == 0:
        raise InvalidSamplingError(f"no frame is shown between {start:g} s and {end:g} s: widen the window")
    chosen = window
    # A rate far above the frame count (fps=1000) means "every frame"; skip building huge slot arrays.
    if request.fps is not None and (end - start) * request.fps < 8 * window.size + 1000:
        slots = math.ceil((end - start) * request.fps)
        times = start + (np.arange(slots) + 0.5) / request.fps
        times = times[times < end]
        if times.size == 0:
            times = np.array([(start + end) / 2])
        # The frame on screen at time t is the last one (in the window) that started at or before t.
        pos = np.searchsorted(starts[window], times, side="right") - 1
        chosen = window[np.unique(np.clip(pos, 0, window.size - 1))]
    if request.num_frames is not None and request.num_frames < chosen.size:
        count = chosen.size
        pos = ((np.arange(request.num_frames) + 0.5) * count / request.num_frames).astype(np.int64)
        chosen = chosen[pos]
    return chosen.astype(np.int64)
