"""``read_video``: sampled RGB frames from a local video path, bytes or a binary file object.

The parent process only checks the source (local, a regular file, not empty, not too big) and
turns bytes or file objects into a private temporary file; probing and decoding happen in a
supervised worker process (:mod:`vidllm.video._pool`), so a corrupt file can never take the
caller's interpreter down. URLs are refused, never fetched: FFmpeg, and so both decord and PyAV,
would happily open ``http://`` paths (REFERENCE.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Union

import numpy as np

from vidllm.video import _pool
from vidllm.video.errors import (
    EmptyVideoError,
    InvalidSamplingError,
    InvalidVideoSourceError,
    VideoError,
    VideoNotFoundError,
    VideoTooLargeError,
)
from vidllm.video.limits import VideoLimits, get_default_limits
from vidllm.video.sampling import SamplingRequest

__all__ = ["Video", "VideoMeta", "VideoSource", "read_video"]

VideoSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_CHUNK = 1 << 20
_TEMP_PREFIX = "vidllm-video-"


@dataclass(frozen=True)
class VideoMeta:
    """What the source video is (not what was sampled from it)."""

    fps: float
    """Average frame rate."""
    duration: float
    """Seconds from the first frame's start to the last frame's end."""
    width: int
    height: int
    num_frames: int
    """Frames in the whole video."""
    codec: str
    """FFmpeg codec name, e.g. ``h264``, ``vp9``, ``av1``."""
    backend: str
    """Decoder that produced the frames: ``decord`` or ``pyav`` (the fallback)."""
    container: str = ""
    """FFmpeg demuxer name, e.g. ``mov,mp4,m4a,3gp,3g2,mj2`` or ``matroska,webm``."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the source frames."""
        return self.width, self.height


@dataclass(frozen=True, eq=False)
class Video:
    """Sampled frames and where they come from."""

    frames: np.ndarray
    """uint8 array (T, H, W, 3), RGB."""
    timestamps: np.ndarray
    """float64 (T,): each frame's presentation time in seconds from the start of the video."""
    indices: np.ndarray
    """int64 (T,): each frame's index in the source, increasing."""
    meta: VideoMeta

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _label(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"video bytes ({memoryview(source).nbytes:,} bytes)"
    if isinstance(source, (str, os.PathLike)):
        return f"video {os.fspath(source)!r}"
    name = getattr(source, "name", None)
    return f"video file object {name!r}" if isinstance(name, str) else "video file object"


def _local_path(source: str | os.PathLike, limits: VideoLimits) -> str:
    text = os.fsdecode(os.fspath(source))
    if _URL.match(text):
        raise InvalidVideoSourceError(
            "is a URL; read_video reads local files only and never downloads. Download the video "
            "first and pass the local path (or its bytes)"
        )
    if not text or "\0" in text:
        raise InvalidVideoSourceError("is not a valid path: pass the path of a video file")
    # An absolute path also stops FFmpeg from reading "concat:...", "pipe:..." etc. as protocols.
    path = os.path.abspath(text)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise VideoNotFoundError(
            f"video {text!r} does not exist: check the path (relative paths start at {os.getcwd()})",
            text,
        ) from None
    except OSError as exc:
        raise InvalidVideoSourceError(
            f"cannot be read ({exc.strerror}): check the path and its permissions"
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidVideoSourceError("is a directory: pass the path of a video file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidVideoSourceError(
            "is not a regular file (a device, pipe or socket): save the video to a file and pass its path"
        )
    if not os.access(path, os.R_OK):
        raise InvalidVideoSourceError("cannot be read (permission denied): check the file's permissions")
    _check_size(info.st_size, limits)
    return path


def _check_size(nbytes: int, limits: VideoLimits) -> None:
    if nbytes == 0:
        raise EmptyVideoError("is empty (0 bytes): the upload or copy did not complete; send the file again")
    if nbytes > limits.max_file_bytes:
        raise VideoTooLargeError(
            f"is {nbytes / 2**20:,.0f} MiB or more, above the limit of {limits.max_file_bytes / 2**20:,.0f} "
            "MiB: cut or compress the video, or raise VideoLimits.max_file_bytes"
        )


def _suffix(source) -> str:
    """The file object's extension, as a hint for FFmpeg's probing of raw formats."""
    name = getattr(source, "name", None)
    suffix = os.path.splitext(name)[1] if isinstance(name, str) else ""
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


@contextlib.contextmanager
def _materialize(source, limits: VideoLimits) -> Iterator[str]:
    """A path the worker can open: the source's own path, or a temporary copy removed afterwards."""
    if isinstance(source, (str, os.PathLike)):
        yield _local_path(source, limits)
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = memoryview(source)
        data = (data if data.c_contiguous else memoryview(data.tobytes())).cast("B")
        _check_size(data.nbytes, limits)
        chunks: Iterator = iter((data,))
    elif callable(getattr(source, "read", None)):
        chunks = _read_chunks(source, limits)
    else:
        raise InvalidVideoSourceError(
            f"has unsupported type {type(source).__name__}: pass a path (str or os.PathLike), bytes, "
            "or a file object opened in binary mode"
        )
    fd, path = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_suffix(source))
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _read_chunks(fileobj, limits: VideoLimits) -> Iterator[bytes]:
    """Chunks of a file object, refusing it as soon as it exceeds ``max_file_bytes``."""
    total = 0
    while True:
        try:
            chunk = fileobj.read(_CHUNK)
        except OSError as exc:
            raise InvalidVideoSourceError(f"could not be read ({exc}): pass a readable binary file") from None
        if isinstance(chunk, str):
            raise InvalidVideoSourceError("is open in text mode: open the file with mode 'rb'")
        if not chunk:
            break
        total += len(chunk)
        if total > limits.max_file_bytes:
            _check_size(total, limits)
        yield chunk
    if total == 0:
        _check_size(0, limits)


def read_video(
    source: VideoSource,
    num_frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    max_side: int | None = None,
    *,
    limits: VideoLimits | None = None,
) -> Video:
    """Decode frames sampled uniformly from a local video.

    Args:
        source: a local path (``str`` or ``os.PathLike``; URLs are refused), the file's bytes, or a
            binary file object (read once, up to ``limits.max_file_bytes``).
        num_frames: at most this many frames, at the centres of equal segments of the window;
            fewer when the window holds fewer frames (frames are never repeated).
        fps: sample at this rate (frames on screen at the centres of 1/fps-second slots); with
            ``num_frames`` too, the rate's frames are thinned to at most ``num_frames``.
            With neither, every frame in the window.
        start, end: the window in seconds from the start of the video (default: all of it).
        max_side: shrink so the longer side is at most this, keeping the aspect ratio.
        limits: per-call :class:`VideoLimits` (default: :func:`get_default_limits`).

    Returns:
        A :class:`Video` with ``frames`` (T, H, W, 3) uint8 RGB, ``timestamps``, ``indices``, ``meta``.

    Raises:
        VideoError: a subclass that names the problem, for any bad source, bad request or
            undecodable file; the message says what to do about it. Safe to call from many threads.
    """
    limits = get_default_limits() if limits is None else limits
    if not isinstance(limits, VideoLimits):
        raise TypeError(f"limits must be a VideoLimits, got {type(limits).__name__}")
    request = SamplingRequest.create(num_frames, fps, start, end, max_side)
    label = _label(source)
    try:
        with _materialize(source, limits) as path:
            message = {"op": "read", "path": path, "request": request.to_dict(), "limits": limits.to_dict()}
            header, frames = _pool.get_pool().run(message, limits.timeout_s, limits.max_output_bytes)
    except VideoNotFoundError:
        raise
    except InvalidSamplingError as exc:
        raise InvalidSamplingError(f"{label}: {exc}") from None
    except VideoError as exc:  # messages read on from the label: "video 'a.mp4' is empty ..."
        raise type(exc)(f"{label} {exc}") from None
    meta = header["meta"]
    return Video(
        frames=frames,
        timestamps=np.asarray(header["timestamps"], dtype=np.float64),
        indices=np.asarray(header["indices"], dtype=np.int64),
        meta=VideoMeta(
            fps=float(meta["fps"]),
            duration=float(meta["duration"]),
            width=int(meta["width"]),
            height=int(meta["height"]),
            num_frames=int(meta["num_frames"]),
            codec=str(meta["codec"]),
            backend=str(meta["backend"]),
            container=str(meta.get("container", "")),
        ),
    )
