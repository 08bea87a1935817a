"""Test media with known content, written with PyAV at test time (nothing is committed).

Every generated frame carries its own index: a band of ``digits`` vertical stripes, stripe ``d``
coloured ``PALETTE[(i // P**d) % P]`` with the ``P = 8`` corners of the RGB cube. The corners stay
far apart after YUV 4:2:0 subsampling, lossy compression and resizing, so
:func:`frame_index` recovers ``i`` from a decoded frame (up to ``P**digits`` distinct frames) and
a test can check that "frame i" really is frame i, not a neighbour.

Patterns:
- ``"index"``: the stripes fill the frame (small clips for correctness tests).
- ``"motion"``: the stripes fill the top quarter; below, a moving textured gradient gives the
  encoder realistic motion to predict (benchmark clips: decode cost like natural video, not like
  flat colour).

Also here: an audio-only file, a still image, random bytes, text, truncated copies, and the
header mutations of the fuzz test (bit flips, zeroed runs, inserted and overwritten bytes).
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = [
    "MUTATIONS",
    "PALETTE",
    "corrupted_variants",
    "frame_index",
    "header_regions",
    "make_frame",
    "mutate",
    "with_declared_frame_count",
    "write_audio_only",
    "write_clip",
    "write_image",
    "write_random_bytes",
    "write_text",
    "write_truncated",
]

PALETTE = np.array(
    [
        [0, 0, 0],
        [255, 255, 255],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
    ],
    dtype=np.uint8,
)
"""The eight corners of the RGB cube: pairwise distance >= 255 in RGB."""

_BAND = {"index": 1.0, "motion": 0.25}
# Encoder settings that keep generation fast; libx264's veryfast still uses B-frames and CABAC,
# so decoders must reorder frames as they would for real footage.
_CODEC_OPTIONS = {
    "libx264": {"preset": "veryfast"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8"},
    "libsvtav1": {"preset": "12"},
}


def _digits_of(index: int, digits: int) -> list[int]:
    p = len(PALETTE)
    return [(index // p**d) % p for d in range(digits)]


@functools.lru_cache(maxsize=4)
def _layers(rows: int, width: int) -> tuple[int, np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:rows, 0 : 2 * width].astype(np.float32)
    across = np.stack(
        [
            127 + 100 * np.sin(x / 37.0) * np.cos(y / 23.0),
            127 + 90 * np.sin((x + y) / 51.0),
            127 + 80 * np.cos(x / 19.0),
        ],
        axis=-1,
    )
    across += (((x.astype(np.int64) * 7 + y.astype(np.int64) * 13) % 17 - 8) * 2)[..., None]
    y, x = np.mgrid[0 : 2 * rows, 0:width].astype(np.float32)
    down = np.stack(
        [127 + 100 * np.cos(y / 29.0), 127 + 100 * np.sin(x / 41.0 + y / 17.0), 127 + 90 * np.sin(y / 11.0)],
        axis=-1,
    )
    return rows, np.clip(across, 0, 255).astype(np.uint8), np.clip(down, 0, 255).astype(np.uint8)


def make_frame(index: int, width: int, height: int, *, digits: int = 2, pattern: str = "index") -> np.ndarray:
    """The RGB frame (H, W, 3) uint8 that :func:`write_clip` writes as frame ``index``."""
    if pattern not in _BAND:
        raise ValueError(f"pattern must be one of {sorted(_BAND)}, got {pattern!r}")
    frame = np.empty((height, width, 3), dtype=np.uint8)
    band = max(1, round(height * _BAND[pattern]))
    edges = np.linspace(0, width, digits + 1).round().astype(int)
    for d, colour in enumerate(_digits_of(index, digits)):
        frame[:band, edges[d] : edges[d + 1]] = PALETTE[colour]
    if band < height:
        # Two textured layers sliding right and down at different speeds: motion an encoder can
        # predict, as in real footage, at the cost of two slices per frame.
        rows, across, down = _layers(height - band, width)
        dx, dy = (index * 3) % width, (index * 2) % rows
        frame[band:] = across[:, dx : dx + width] // 2 + down[dy : dy + rows] // 2
    return frame


def frame_index(frame: np.ndarray, *, digits: int = 2, pattern: str = "index") -> int:
    """Recover the index that :func:`make_frame` encoded in a decoded (possibly resized) frame."""
    height, width = frame.shape[:2]
    band = max(1, round(height * _BAND[pattern]))
    edges = np.linspace(0, width, digits + 1)
    # Sample the middle half of each stripe: stripe borders bleed chroma after 4:2:0 and scaling.
    y0, y1 = band // 4, max(band // 4 + 1, 3 * band // 4)
    index = 0
    for d in range(digits):
        x0 = int(edges[d] + (edges[d + 1] - edges[d]) / 4)
        x1 = max(x0 + 1, int(edges[d] + 3 * (edges[d + 1] - edges[d]) / 4))
        mean = frame[y0:y1, x0:x1].reshape(-1, 3).astype(np.float64).mean(axis=0)
        colour = int(np.argmin(((PALETTE.astype(np.float64) - mean) ** 2).sum(axis=1)))
        index += colour * len(PALETTE) ** d
    return index


def write_clip(
    path: str | os.PathLike,
    *,
    num_frames: int = 32,
    fps: float | Fraction = 10,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    keyframe_interval: int | None = None,
    digits: int = 2,
    pattern: str = "index",
    faststart: bool = False,
) -> Path:
    """Write a clip whose frame ``i`` is ``make_frame(i, ...)``; the container follows the suffix.

    ``keyframe_interval`` fixes the GOP (with libx264, scene-cut keyframes are turned off so the
    interval is exact: ``num_frames`` gives a single keyframe). ``faststart`` puts an mp4's index
    (``moov``) before the media data, as web-optimised files have it.
    """
    import av

    if num_frames > len(PALETTE) ** digits and pattern == "index":
        raise ValueError(f"{num_frames} frames need more than {digits} digits to stay distinguishable")
    if codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr otherwise
    path = Path(path)
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001000)
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        options = dict(_CODEC_OPTIONS.get(codec, {}))
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
            if codec == "libx264":
                k = keyframe_interval
                options["x264-params"] = f"keyint={k}:min-keyint={k}:scenecut=0"
        stream.options = options
        frames = (
            av.VideoFrame.from_ndarray(
                make_frame(i, width, height, digits=digits, pattern=pattern), format="rgb24"
            )
            for i in range(num_frames)
        )
        _encode(container, stream, frames)
    return path


def _encode(container, stream, frames) -> None:
    """Encode and mux ``frames`` (numbered from 0 when they carry no pts), then flush the encoder."""
    for i, frame in enumerate(frames):
        if frame.pts is None:
            frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: str | os.PathLike, *, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """An AAC file with no video stream (a 440 Hz tone); name it ``.mp4`` to make it tempting."""
    import av

    path = Path(path)
    with av.open(str(path), "w", format="mp4" if path.suffix in (".mp4", ".m4a") else None) as container:
        stream = container.add_stream("aac", rate=sample_rate)
        _encode(container, stream, _tone(seconds, sample_rate))
    return path


def _tone(seconds: float, sample_rate: int, block: int = 1024):
    import av

    for start in range(0, int(seconds * sample_rate), block):
        t = (start + np.arange(block)) / sample_rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start
        yield frame


def write_image(path: str | os.PathLike, *, width: int = 64, height: int = 48) -> Path:
    """A still image in the format of the suffix (``.png``, ``.jpg``), made from frame 0."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(make_frame(0, width, height)).save(path)
    return path


def write_random_bytes(path: str | os.PathLike, nbytes: int = 4096, *, seed: int = 0) -> Path:
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).bytes(nbytes))
    return path


def write_text(path: str | os.PathLike) -> Path:
    """Plain text, e.g. saved under a ``.mp4`` name by mistake."""
    path = Path(path)
    path.write_text("This is not a video. It is a text file with a video's name.\n" * 40)
    return path


def write_truncated(src: str | os.PathLike, dst: str | os.PathLike, fraction: float) -> Path:
    """The first ``fraction`` of ``src``'s bytes, as an interrupted download leaves them."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


# -- fuzzing ---------------------------------------------------------------------------------

MUTATIONS = ("flip", "zero", "insert", "overwrite")
# Overwrites favour values that turn size and count fields absurd: the kind of header damage that
# made decord abort with std::bad_alloc (frame counts of 2-4 billion, REFERENCE.md).
_INTERESTING = (
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\x00\x00\x00\x01",
    b"\xff\xff",
)


# mp4 boxes whose first fields are entry counts, durations and sizes (ISO/IEC 14496-12).
_TABLE_BOXES = (b"mvhd", b"tkhd", b"mdhd", b"stts", b"ctts", b"stsc", b"stsz", b"stco", b"co64", b"stss")


def _count_fields(data: bytes) -> list[int]:
    """Offsets of the 4-byte fields just after each sample-table box's type and version/flags."""
    fields = []
    for tag in _TABLE_BOXES:
        at = data.find(tag)
        while at >= 4:
            fields.extend(at + 4 + 4 * k for k in range(1, 5) if at + 8 + 4 * k <= len(data))
            at = data.find(tag, at + 4)
    return fields


def header_regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of a clip's container metadata, where header mutations land.

    mp4/mov: every top-level box except the payload of ``mdat`` (so ``ftyp`` and ``moov``, wherever
    it is); webm/mkv: everything before the first Cluster. Otherwise the first 1 KiB.
    """
    if data[4:8] == b"ftyp":
        regions, offset = [], 0
        while offset + 8 <= len(data):
            size, kind = struct.unpack(">I4s", data[offset : offset + 8])
            if size == 1:
                size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
            if size < 8 or offset + size > len(data):
                size = len(data) - offset
            regions.append((offset, offset + (16 if kind == b"mdat" else size)))
            offset += size
        return regions
    if data[:4] == b"\x1a\x45\xdf\xa3":
        cluster = data.find(b"\x1f\x43\xb6\x75")
        return [(0, cluster if cluster > 0 else min(len(data), 1024))]
    return [(0, min(len(data), 1024))]


def mutate(data: bytes, rng: np.random.Generator, kind: str | None = None) -> tuple[str, bytes]:
    """One random header mutation of ``data``: returns (kind, mutated bytes)."""
    kind = kind or MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    regions = header_regions(data)
    lengths = np.array([end - start for start, end in regions], dtype=np.float64)
    start, end = regions[int(rng.choice(len(regions), p=lengths / lengths.sum()))]
    pos = int(rng.integers(start, end))
    out = bytearray(data)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            at = min(len(out) - 1, pos + int(rng.integers(0, 16)))
            out[at] ^= 1 << int(rng.integers(8))
    elif kind == "zero":
        run = int(rng.integers(1, 17))
        out[pos : pos + run] = bytes(len(out[pos : pos + run]))
    elif kind == "insert":
        out[pos:pos] = rng.bytes(int(rng.integers(1, 17)))
    elif kind == "overwrite":
        fields = _count_fields(data)
        if fields and rng.random() < 0.5:
            # A size or count field of a sample table: where absurd frame counts come from.
            value = _INTERESTING[int(rng.integers(len(_INTERESTING)))]
            pos = fields[int(rng.integers(len(fields)))]
        elif rng.random() < 0.5:
            value = _INTERESTING[int(rng.integers(len(_INTERESTING)))]
        else:
            value = rng.bytes(int(rng.integers(1, 9)))
        out[pos : pos + len(value)] = value
    else:
        raise ValueError(f"unknown mutation {kind!r}; choose from {MUTATIONS}")
    return kind, bytes(out)


def with_declared_frame_count(data: bytes, count: int) -> bytes:
    """An mp4 whose sample table (first ``stts`` entry) declares ``count`` frames.

    With 2-4 billion this is the header damage that makes decord 0.6 abort the interpreter with
    ``std::bad_alloc`` inside ``VideoReader()`` (REFERENCE.md); it was found by the fuzzer here.
    """
    at = data.find(b"stts")
    if at < 4 or at + 20 > len(data):
        raise ValueError("not an mp4 with a sample table (no 'stts' box)")
    out = bytearray(data)
    out[at + 12 : at + 16] = struct.pack(">I", count)  # after version/flags and entry_count
    return bytes(out)


def corrupted_variants(seeds: dict[str, bytes], count: int, *, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` corrupted copies of the seed clips, cycling through them; 1-3 mutations each.

    Yields (description, bytes); the same ``seed`` gives the same variants.
    """
    rng = np.random.default_rng(seed)
    names = sorted(seeds)
    for n in range(count):
        name = names[n % len(names)]
        data, kinds = seeds[name], []
        for _ in range(int(rng.integers(1, 4))):
            kind, data = mutate(data, rng)
            kinds.append(kind)
        yield f"{n}:{name}:{'+'.join(kinds)}", data
