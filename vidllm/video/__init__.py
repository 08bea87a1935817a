"""Robust video reading: ``read_video`` and its exception family.

Decoding runs in supervised worker processes (see :mod:`vidllm.video._pool` for why); everything
here is safe to call from several threads at once. Never create a ``decord.VideoReader`` outside
the worker (DEVELOPERS.md).
"""

from vidllm.video._pool import shutdown_pool as shutdown_workers
from vidllm.video.errors import (
    CorruptVideoError,
    DecoderCrashedError,
    DecodeTimeoutError,
    EmptyVideoError,
    InvalidSamplingError,
    InvalidVideoSourceError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnsupportedVideoError,
    VideoBackendError,
    VideoError,
    VideoNotFoundError,
    VideoTooLargeError,
    VideoTooLongError,
)
from vidllm.video.limits import VideoLimits, get_default_limits, set_default_limits
from vidllm.video.reader import Video, VideoMeta, VideoSource, read_video

__all__ = [
    "CorruptVideoError",
    "DecodeTimeoutError",
    "DecoderCrashedError",
    "EmptyVideoError",
    "InvalidSamplingError",
    "InvalidVideoSourceError",
    "NoVideoStreamError",
    "TruncatedVideoError",
    "UnsupportedVideoError",
    "Video",
    "VideoBackendError",
    "VideoError",
    "VideoLimits",
    "VideoMeta",
    "VideoNotFoundError",
    "VideoSource",
    "VideoTooLargeError",
    "VideoTooLongError",
    "get_default_limits",
    "read_video",
    "set_default_limits",
    "shutdown_workers",
]
