"""The one exception family that ``read_video`` raises for bad input.

A server that reads user uploads catches :class:`VideoError` and shows the message: every message
says what is wrong *and what the user can do about it*. Classes are looked up by name when a
decode worker reports an error (``ERRORS_BY_NAME``), so the worker never pickles exceptions.
"""

from __future__ import annotations

import errno

__all__ = [
    "ERRORS_BY_NAME",
    "CorruptVideoError",
    "DecodeTimeoutError",
    "DecoderCrashedError",
    "EmptyVideoError",
    "InvalidSamplingError",
    "InvalidVideoSourceError",
    "NoVideoStreamError",
    "TruncatedVideoError",
    "UnsupportedVideoError",
    "VideoBackendError",
    "VideoError",
    "VideoNotFoundError",
    "VideoTooLargeError",
    "VideoTooLongError",
]


class VideoError(Exception):
    """Base class: the video (or the request for it) cannot be read."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The path does not exist. Also a ``FileNotFoundError`` so generic file handling still works."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(errno.ENOENT, message, path)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self):
        return type(self), (self.strerror, self.filename)


class InvalidVideoSourceError(VideoError):
    """The source is not something we read: a URL, a directory, a device, a text-mode file, a wrong type."""


class InvalidSamplingError(VideoError, ValueError):
    """The sampling request (num_frames, fps, start, end, max_side) cannot be met for this video."""


class UnsupportedVideoError(VideoError):
    """A readable file that is not a video we can decode (a still image, a codec with no decoder)."""


class NoVideoStreamError(VideoError):
    """The container holds no video stream (an audio-only file, subtitles)."""


class CorruptVideoError(VideoError):
    """The file is damaged, truncated or not a media file at all."""


class EmptyVideoError(CorruptVideoError):
    """The file or byte string is empty."""


class TruncatedVideoError(CorruptVideoError):
    """The container's own size fields say the file is longer than it is (a cut download or copy)."""


class DecoderCrashedError(CorruptVideoError):
    """The decoder process died on this input (it was restarted; the next read is unaffected)."""


class DecodeTimeoutError(CorruptVideoError, TimeoutError):
    """Decoding took longer than ``VideoLimits.timeout_s``; the worker was killed and restarted."""


class VideoTooLongError(VideoError):
    """The video is longer (seconds or declared frames) than ``VideoLimits`` allow."""


class VideoTooLargeError(VideoError):
    """Frame size, file size, output size or decode memory is above ``VideoLimits``."""


class VideoBackendError(VideoError):
    """The decode worker could not start: an installation problem, not a problem with the video."""


ERRORS_BY_NAME: dict[str, type[VideoError]] = {
    cls.__name__: cls
    for cls in (
        VideoError,
        InvalidVideoSourceError,
        InvalidSamplingError,
        UnsupportedVideoError,
        NoVideoStreamError,
        CorruptVideoError,
        EmptyVideoError,
        TruncatedVideoError,
        DecoderCrashedError,
        DecodeTimeoutError,
        VideoTooLongError,
        VideoTooLargeError,
        VideoBackendError,
    )
}
