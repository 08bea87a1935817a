"""The decode worker: a fresh interpreter that probes and decodes one request at a time.

Run as ``python -m vidllm.video._worker FD`` by :mod:`vidllm.video._pool`, never imported by user
code. It imports numpy, PyAV and decord only (no torch), so it starts in about 0.2 s.

Why a separate process (measured facts in REFERENCE.md, decord 0.6.0 / PyAV 18.1.0): decord
aborts the interpreter (``std::bad_alloc`` -> SIGABRT) on some corrupted headers, on a reader
shared by threads and on a reader created before ``fork``. Here each request gets its own reader,
used by one thread, in a process that was never forked from one holding readers. If decord still
dies, only this process dies and the parent reports ``DecoderCrashedError``.

Order of work for one request:
1. probe with PyAV (which never crashed on 1,148 corrupted files): a video stream exists, the
   container is not a still image, width x height, declared frame count and duration are within
   the limits -- absurd headers are refused before decord touches the file;
2. decode with decord (fast frame-accurate sampling, resizing inside FFmpeg when ``max_side`` asks
   for it, which keeps an 8000x8000 source from costing 1.7 GB), then ``vr.seek(0)`` because an
   idle reader keeps decoding after ``get_batch``;
3. fall back to PyAV where decord cannot open or decode the file (AV1: decord's FFmpeg 4.1 has
   no AV1 decoder), decoding sequentially and keeping the sampled frames.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np

from vidllm.video import _protocol
from vidllm.video.errors import (
    CorruptVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnsupportedVideoError,
    VideoError,
    VideoTooLargeError,
    VideoTooLongError,
)
from vidllm.video.sampling import SamplingRequest, output_size, select_frames

logger = logging.getLogger("vidllm.video.worker")

# Codecs decord's bundled FFmpeg 4.1 cannot decode: go straight to PyAV instead of failing first.
DECORD_SKIP_CODECS = frozenset({"av1"})
# Demuxers of single still images; PyAV opens them as one-frame "videos".
_IMAGE_FORMAT_SUFFIX = "_pipe"
_IMAGE_FORMATS = frozenset({"image2", "image2pipe"})


_fresh = True
"""No request served yet: the address space is the interpreter's and its libraries' alone."""


class _StaleWorkerError(Exception):
    """This worker's address space has grown too much for the request's memory limit."""


@dataclass
class Probe:
    """What the container header says about the first real video stream."""

    container: str
    codec: str
    width: int
    height: int
    declared_frames: int
    duration: float | None
    fps: float | None


_DECORD_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: (Check failed: )?")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # decord prefixes messages with a timestamp and its source location; keep the reason.
    text = text.split("ERROR ", 1)[1] if "ERROR " in text else _DECORD_PREFIX.sub("", text)
    return f"{type(exc).__name__}: {text[:300]}"


def _read_at(f, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _isobmff_truncation(f, file_size: int) -> str | None:
    """How an mp4/mov file is cut short, from its top-level boxes, or None if it is whole."""
    offset, boxes = 0, 0
    while offset + 8 <= file_size and boxes < 100_000:
        head = _read_at(f, offset, 16)
        size, kind = struct.unpack(">I4s", head[:8])
        if not all(32 < c < 127 for c in kind):
            return None  # not box structure (trailing garbage): leave it to FFmpeg
        if size == 1 and len(head) == 16:
            size = struct.unpack(">Q", head[8:16])[0]
        elif size == 0:
            return None  # "extends to the end of the file"
        if size < 8:
            return None
        if offset + size > file_size:
            return f"its '{kind.decode()}' box needs {offset + size:,} bytes but the file has {file_size:,}"
        offset += size
        boxes += 1
    return None


def _read_vint(f) -> tuple[int, int] | None:
    """An EBML variable-length integer: (value, length), value -1 when all bits are set (unknown)."""
    first = f.read(1)
    if not first or first[0] == 0:
        return None
    length = 8 - first[0].bit_length() + 1
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = first[0] & (0xFF >> length)
    for byte in rest:
        value = (value << 8) | byte
    return (-1 if value == (1 << (7 * length)) - 1 else value), length


def _matroska_truncation(f, file_size: int) -> str | None:
    """How a webm/mkv file is cut short, from its Segment size, or None if it is whole (or unknown)."""
    f.seek(4)
    header = _read_vint(f)
    if header is None or header[0] < 0:
        return None
    f.seek(4 + header[1] + header[0])
    if f.read(4) != b"\x18\x53\x80\x67":  # Segment
        return None
    segment = _read_vint(f)
    if segment is None or segment[0] < 0:
        return None  # live recordings leave the size unknown
    end = f.tell() + segment[0]
    if end > file_size:
        return f"its Segment needs {end:,} bytes but the file has {file_size:,}"
    return None


def check_truncation(path: str) -> None:
    """Refuse an mp4/mov or webm/mkv file whose own structure says it is longer than it is.

    FFmpeg reports such files inconsistently: a cut mp4 with its index at the end does not open,
    one with the index first decodes up to the cut, and a cut webm decodes the frames it has
    without any error (REFERENCE.md). Checking the container's size fields names the problem.
    """
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        magic = f.read(12)
        if magic[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
            reason = _isobmff_truncation(f, file_size)
        elif magic[:4] == b"\x1a\x45\xdf\xa3":  # EBML
            reason = _matroska_truncation(f, file_size)
        else:
            reason = None
    if reason:
        raise TruncatedVideoError(
            f"is truncated ({reason}): the download or copy was cut short; get the complete file again"
        )


def _video_stream(container):
    """First video stream that is not cover art (an attached picture of an audio file)."""
    import av

    attached = getattr(av.stream.Disposition, "attached_pic", None)
    streams = list(container.streams.video)
    for stream in streams:
        if attached is None or not (stream.disposition & attached):
            return stream
    other = sorted({s.type for s in container.streams})
    kinds = ", ".join(other) if other else "no streams"
    detail = " (only cover art)" if streams else ""
    raise NoVideoStreamError(
        f"has no video stream{detail} (it contains: {kinds}): pass a file with a video track"
    )


def probe(path: str, limits: dict) -> Probe:
    """Read the header with PyAV and refuse what decord must not see; raises ``VideoError`` only."""
    import av

    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as exc:
        raise CorruptVideoError(
            f"could not be opened as a video ({_short(exc)}): it is damaged, truncated or not a video "
            "file. Re-export or re-download it, or convert it with ffmpeg to mp4 (H.264)"
        ) from None
    try:
        with container:
            fmt = container.format.name if container.format is not None else ""
            if fmt.endswith(_IMAGE_FORMAT_SUFFIX) or fmt in _IMAGE_FORMATS:
                raise UnsupportedVideoError(
                    f"is a still image ({fmt.removesuffix(_IMAGE_FORMAT_SUFFIX)}), not a video: "
                    "pass a video file, or load the image with an image reader"
                )
            stream = _video_stream(container)
            ctx = stream.codec_context
            if ctx is None:
                raise UnsupportedVideoError(
                    "has a video stream that no decoder here can read (an unknown codec, or a damaged "
                    "header): re-encode it to H.264, e.g. ffmpeg -i in -c:v libx264 out.mp4"
                )
            codec = ctx.codec.canonical_name
            width, height = int(ctx.width or 0), int(ctx.height or 0)
            if width <= 0 or height <= 0:
                raise CorruptVideoError(
                    f"declares an invalid frame size {width}x{height}: the header is damaged; "
                    "re-export the video"
                )
            if width * height > limits["max_pixels"]:
                raise VideoTooLargeError(
                    f"frames are {width}x{height} = {width * height:,} pixels, above the limit of "
                    f"{limits['max_pixels']:,}: downscale the video (e.g. ffmpeg -vf scale=-2:1080) "
                    "or raise VideoLimits.max_pixels"
                )
            declared = int(stream.frames or 0)
            if declared > limits["max_frames"]:
                raise VideoTooLongError(
                    f"declares {declared:,} frames, above the limit of {limits['max_frames']:,}: the "
                    "video is extremely long or its header is damaged; cut or re-export it"
                )
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            if duration is not None and duration > limits["max_duration_s"]:
                raise VideoTooLongError(
                    f"is {duration:,.0f} s long, above the limit of {limits['max_duration_s']:,.0f} s: "
                    "cut the part you need (e.g. ffmpeg -ss START -t LENGTH) or raise "
                    "VideoLimits.max_duration_s"
                )
            rate = stream.average_rate or stream.base_rate
            fps = float(rate) if rate else None
            return Probe(fmt, codec, width, height, declared, duration, fps)
    except VideoError:
        raise
    except Exception as exc:  # PyAV raises a variety of errors on damaged headers
        raise CorruptVideoError(
            f"has a damaged header ({_short(exc)}): re-export or re-download the video"
        ) from None


def _address_space() -> int:
    """This process's virtual size (what RLIMIT_AS caps), from /proc; 0 where there is none."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _check_output(count: int, width: int, height: int, info: Probe, limits: dict) -> None:
    """Refuse a request whose frames exceed ``max_output_bytes`` or, by estimate, the memory limit.

    decord holds its own copy of the batch before ``asnumpy`` copies it, and FFmpeg keeps reference
    frames at the source size: decoding all 132 frames of bigbuckbunny (1280x720) grows the address
    space by about three times the output (``benchmarks/video_decode.py``); we budget 3.5x. Over
    the limit decord dies of ``std::bad_alloc``, so refusing early gives a clear VideoTooLargeError.
    """
    nbytes = count * width * height * 3
    if nbytes > limits["max_output_bytes"]:
        raise VideoTooLargeError(
            f"would give {count} frames of {width}x{height} ({nbytes / 2**20:,.0f} MiB), "
            f"above the limit of {limits['max_output_bytes'] / 2**20:,.0f} MiB: ask for fewer frames "
            "(num_frames or fps) or a smaller max_side"
        )
    memory = limits["worker_memory_bytes"]
    need = _address_space() + 7 * nbytes // 2 + 16 * info.width * info.height * 3 // 2
    if memory is not None and need > memory:
        if not _fresh:
            # Earlier requests left malloc arenas and thread stacks mapped (reserved address space
            # that RLIMIT_AS counts though little of it is resident): a fresh worker may fit.
            raise _StaleWorkerError
        raise VideoTooLargeError(
            f"would need about {need / 2**30:.1f} GiB to decode {count} frames of {width}x{height}, "
            f"above the worker memory limit of {memory / 2**30:.1f} GiB: ask for fewer frames or a "
            "smaller max_side, or raise VideoLimits.worker_memory_bytes"
        )


def _check_count(count: int, duration: float, limits: dict) -> None:
    if count > limits["max_frames"]:
        raise VideoTooLongError(
            f"has {count:,} frames, above the limit of {limits['max_frames']:,}: cut the part you need"
        )
    if duration > limits["max_duration_s"]:
        raise VideoTooLongError(
            f"is {duration:,.0f} s long, above the limit of {limits['max_duration_s']:,.0f} s: cut "
            "the part you need or raise VideoLimits.max_duration_s"
        )


def decode_decord(path: str, info: Probe, request: SamplingRequest, limits: dict):
    import decord

    out_w, out_h = output_size(info.width, info.height, request.max_side)
    resize = (out_w, out_h) != (info.width, info.height)
    reader = decord.VideoReader(
        path, ctx=decord.cpu(0), width=out_w if resize else -1, height=out_h if resize else -1, num_threads=0
    )
    try:
        count = len(reader)
        if count <= 0:
            raise RuntimeError("decord found no frames")
        _check_count(count, 0.0, limits)
        stamps = np.asarray(reader.get_frame_timestamp(np.arange(count)), dtype=np.float64).reshape(count, 2)
        stamps = stamps.round(6)  # decord keeps float32 seconds: 0.1 arrives as 0.10000000149
        _check_count(count, float(stamps[:, 1].max()), limits)
        indices = select_frames(stamps[:, 0], stamps[:, 1], request)
        _check_output(len(indices), out_w, out_h, info, limits)
        batch = reader.get_batch(indices)
        reader.seek(0)  # an idle reader keeps decoding ahead after get_batch (REFERENCE.md)
        frames = batch.asnumpy()
        del batch
        fps = float(reader.get_avg_fps())
    finally:
        del reader
    if frames.shape != (len(indices), out_h, out_w, 3) or frames.dtype != np.uint8:
        raise RuntimeError(f"decord returned {frames.shape} {frames.dtype}")
    meta = {"fps": fps, "duration": float(stamps[:, 1].max()), "num_frames": count, "backend": "decord"}
    return frames, indices, stamps[indices, 0], meta


def decode_pyav(path: str, info: Probe, request: SamplingRequest, limits: dict):
    import av

    out_w, out_h = output_size(info.width, info.height, request.max_side)
    with av.open(path, metadata_errors="ignore") as container:
        stream = _video_stream(container)
        # Pass 1: demux only (no decoding) to learn every frame's presentation time.
        ticks = []
        for packet in container.demux(stream):
            t = packet.pts if packet.pts is not None else packet.dts
            if t is None or packet.size == 0:
                continue
            ticks.append(t)
            if len(ticks) > limits["max_frames"]:
                _check_count(len(ticks), 0.0, limits)
        if not ticks:
            raise CorruptVideoError(
                "holds no decodable video frames: it is truncated or damaged; re-export or re-download it"
            )
        tb = float(stream.time_base)
        ticks_arr = np.sort(np.asarray(ticks, dtype=np.int64))
        origin = int(ticks_arr[0])
        starts = (ticks_arr - origin) * tb
        gaps = np.diff(starts)
        step = float(np.median(gaps)) if gaps.size else (1.0 / info.fps if info.fps else 1.0)
        if step <= 0:
            step = 1.0 / info.fps if info.fps else 1.0
        ends = np.append(starts[1:], starts[-1] + step)
        count = len(starts)
        _check_count(count, float(ends.max()), limits)
        indices = select_frames(starts, ends, request)
        _check_output(len(indices), out_w, out_h, info, limits)

    # Pass 2, on a fresh demuxer: decode from the start and keep the sampled frames. Frames leave
    # the decoder in presentation order, so the k-th decoded frame is frame k.
    frames = np.empty((len(indices), out_h, out_w, 3), dtype=np.uint8)
    stamps = np.empty(len(indices), dtype=np.float64)
    wanted = {int(i): k for k, i in enumerate(indices)}
    last = int(indices[-1])
    found = 0
    with av.open(path, metadata_errors="ignore") as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        for ordinal, frame in enumerate(container.decode(stream)):
            k = wanted.get(ordinal)
            if k is not None:
                frames[k] = frame.reformat(width=out_w, height=out_h, format="rgb24").to_ndarray()
                pts = frame.pts if frame.pts is not None else ticks_arr[min(ordinal, count - 1)]
                stamps[k] = (int(pts) - origin) * tb
                found += 1
            if ordinal >= last:
                break
    if found < len(indices):
        raise CorruptVideoError(
            f"only {found} of the {len(indices)} requested frames could be decoded: the file is "
            "truncated or damaged; re-export or re-download it"
        )
    fps = info.fps or 1.0 / step
    meta = {"fps": fps, "duration": float(ends.max()), "num_frames": count, "backend": "pyav"}
    return frames, indices, stamps, meta


def _have_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def read(path: str, request: SamplingRequest, limits: dict, *, use_decord: bool):
    """Probe, then decode with decord, falling back to PyAV; raises ``VideoError`` only."""
    try:
        check_truncation(path)
    except OSError as exc:
        raise CorruptVideoError(f"could not be read ({_short(exc)})") from None
    info = probe(path, limits)
    decord_failure = None
    if use_decord and info.codec not in DECORD_SKIP_CODECS:
        try:
            result = decode_decord(path, info, request, limits)
        except (VideoError, MemoryError, _StaleWorkerError):
            raise
        except Exception as exc:  # RuntimeError, DECORDError, IndexError, AssertionError (REFERENCE.md)
            decord_failure = _short(exc)
            logger.debug("decord failed (%s); trying PyAV", decord_failure)
        else:
            return info, result
    try:
        return info, decode_pyav(path, info, request, limits)
    except (VideoError, MemoryError, _StaleWorkerError):
        raise
    except Exception as exc:
        tried = f"decord: {decord_failure}; PyAV: {_short(exc)}" if decord_failure else _short(exc)
        raise CorruptVideoError(
            f"could not be decoded ({tried}): the file is damaged or truncated; re-export or re-download it"
        ) from None


def _set_memory_limit(nbytes: int | None) -> None:
    """Cap this process's address space for one request (the soft limit; the hard one stays)."""
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = resource.RLIM_INFINITY if nbytes is None else nbytes
        if hard != resource.RLIM_INFINITY:
            soft = hard if soft == resource.RLIM_INFINITY else min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIMIT_AS below the current size
        logger.warning("could not set the decode worker's memory limit: %s", exc)


def _handle(sock: socket.socket, message: dict, use_decord: bool) -> bool:
    """Serve one read request; returns False when the worker should exit after replying."""
    limits = message["limits"]
    request = SamplingRequest(**message["request"])
    try:
        _set_memory_limit(limits["worker_memory_bytes"])
        try:
            info, (frames, indices, stamps, meta) = read(
                message["path"], request, limits, use_decord=use_decord
            )
        finally:
            _set_memory_limit(None)
    except VideoError as exc:
        _protocol.send_json(sock, {"ok": False, "error": type(exc).__name__, "message": str(exc)})
        return True
    except _StaleWorkerError:
        _protocol.send_json(sock, {"ok": False, "retry": True, "restart": True})
        return False
    except MemoryError:
        # The heap may be fragmented or half-freed after an allocation failure: start afresh.
        mem = limits["worker_memory_bytes"]
        _protocol.send_json(
            sock,
            {
                "ok": False,
                "error": "VideoTooLargeError",
                "restart": True,
                "message": f"needs more memory to decode than the worker limit of {mem / 2**30:.1f} GiB: "
                "ask for fewer frames or a smaller max_side, or raise VideoLimits.worker_memory_bytes",
            },
        )
        return False
    except Exception as exc:  # a bug of ours or an unexpected library error: report, don't die
        traceback.print_exc()
        _protocol.send_json(
            sock,
            {
                "ok": False,
                "error": "CorruptVideoError",
                "restart": True,
                "unexpected": True,
                "message": f"could not be decoded (unexpected {_short(exc)}); re-export the video",
            },
        )
        return False
    header = {
        "ok": True,
        "shape": list(frames.shape),
        "indices": indices.tolist(),
        "timestamps": [float(t) for t in stamps],
        "meta": {
            **meta,
            "width": info.width,
            "height": info.height,
            "codec": info.codec,
            "container": info.container,
        },
    }
    _protocol.send_json(sock, header)
    _protocol.send_payload(sock, np.ascontiguousarray(frames))
    return True


def _exit_with_parent(parent: int) -> None:
    # The parent's socket closes when it dies, but a decode in progress would not notice; this
    # keeps an orphaned worker from decoding on for minutes.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str]) -> int:
    fd = int(argv[1])
    os.dup2(2, 1)  # stray C-level prints must not reach the protocol (which is on fd, not stdout)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    sock = socket.socket(fileno=fd)
    _protocol.configure(sock)
    import av

    use_decord = _have_decord()
    decord_version = None
    if use_decord:
        import decord

        decord_version = decord.__version__
    _protocol.send_json(
        sock, {"ready": True, "pid": os.getpid(), "decord": decord_version, "av": av.__version__}
    )
    while True:
        try:
            message = _protocol.recv_json(sock)
        except _protocol.WorkerGoneError:
            return 0
        op = message.get("op")
        if op == "read":
            keep_going = _handle(sock, message, use_decord)
            global _fresh
            _fresh = False
            if not keep_going:
                return 0
        elif op == "stop":
            return 0
        else:
            _protocol.send_json(sock, {"ok": False, "error": "VideoError", "message": f"unknown op {op!r}"})


if __name__ == "__main__":
    sys.exit(main(sys.argv))
