"""Every kind of bad input gets its own VideoError subclass, and the interpreter carries on."""

from __future__ import annotations

import io
import os

import pytest

from vidllm.testing import media
from vidllm.video import (
    CorruptVideoError,
    EmptyVideoError,
    InvalidSamplingError,
    InvalidVideoSourceError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnsupportedVideoError,
    VideoError,
    VideoLimits,
    VideoNotFoundError,
    VideoTooLargeError,
    VideoTooLongError,
    read_video,
)


@pytest.fixture
def good(make_clip):
    """4 s, 10 fps, 64x48 H.264 (index at the end of the file, as PyAV writes mp4)."""
    return make_clip("good.mp4", num_frames=40, fps=10)


def _empty(d, good):
    path = d / "empty.mp4"
    path.write_bytes(b"")
    return path


def _png_named_mp4(d, good):
    return media.write_image(d / "still.png").rename(d / "still.mp4")


BAD_FILES = {
    "zero-length": (_empty, EmptyVideoError),
    "random-bytes": (lambda d, g: media.write_random_bytes(d / "random.mp4", 5000), CorruptVideoError),
    "random-bytes-no-suffix": (
        lambda d, g: media.write_random_bytes(d / "blob", 5000, seed=1),
        CorruptVideoError,
    ),
    "text-named-mp4": (lambda d, g: media.write_text(d / "notes.mp4"), CorruptVideoError),
    "png": (lambda d, g: media.write_image(d / "still.png"), UnsupportedVideoError),
    "png-named-mp4": (_png_named_mp4, UnsupportedVideoError),
    "jpeg": (lambda d, g: media.write_image(d / "still.jpg"), UnsupportedVideoError),
    "audio-only-mp4": (lambda d, g: media.write_audio_only(d / "voice.mp4"), NoVideoStreamError),
    **{
        f"mp4-truncated-{pct}%": (
            lambda d, g, pct=pct: media.write_truncated(g, d / f"cut{pct}.mp4", pct / 100),
            TruncatedVideoError,
        )
        for pct in (10, 50, 90)
    },
    **{
        f"faststart-mp4-truncated-{pct}%": (
            lambda d, g, pct=pct: media.write_truncated(
                media.write_clip(d / "fast.mp4", num_frames=40, faststart=True),
                d / f"fcut{pct}.mp4",
                pct / 100,
            ),
            TruncatedVideoError,
        )
        for pct in (10, 50, 90)
    },
    "webm-truncated-50%": (
        lambda d, g: media.write_truncated(
            media.write_clip(d / "w.webm", num_frames=40, codec="libvpx-vp9"), d / "wcut.webm", 0.5
        ),
        TruncatedVideoError,
    ),
    "directory": (lambda d, g: d, InvalidVideoSourceError),
    "missing-path": (lambda d, g: d / "no-such-video.mp4", VideoNotFoundError),
    "path-under-a-file": (lambda d, g: g / "inside.mp4", VideoNotFoundError),
    "ffmpeg-protocol-is-a-plain-name": (lambda d, g: "concat:a.mp4|b.mp4", VideoNotFoundError),
    "character-device": (lambda d, g: "/dev/zero", InvalidVideoSourceError),
}


@pytest.mark.parametrize(("build", "expected"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_file_gets_its_own_error(tmp_path, good, build, expected):
    source = build(tmp_path, good)
    with pytest.raises(VideoError) as info:
        read_video(source, num_frames=4)
    assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
    assert os.path.basename(str(source)) in str(info.value)  # the message names the source
    assert len(read_video(good, num_frames=2)) == 2  # and reading carries on


@pytest.mark.parametrize(
    "url",
    ["http://example.com/v.mp4", "https://example.com/v.webm", "rtsp://camera/stream", "file:///etc/hosts"],
)
def test_urls_are_refused_not_fetched(url):
    with pytest.raises(InvalidVideoSourceError, match="URL"):
        read_video(url)


def test_missing_path_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_video(tmp_path / "gone.mp4")
    assert isinstance(info.value, VideoNotFoundError)
    assert info.value.filename == str(tmp_path / "gone.mp4")


@pytest.mark.parametrize("source", [123, None, ["clip.mp4"], object()], ids=["int", "None", "list", "object"])
def test_wrong_source_types(source):
    with pytest.raises(InvalidVideoSourceError, match="unsupported type"):
        read_video(source)


def test_text_mode_file_object(good):
    with open(good, encoding="latin-1") as handle, pytest.raises(InvalidVideoSourceError, match="'rb'"):
        read_video(handle)


@pytest.mark.parametrize("source", [b"", bytearray(), io.BytesIO()], ids=["bytes", "bytearray", "BytesIO"])
def test_empty_bytes_and_streams(source):
    with pytest.raises(EmptyVideoError):
        read_video(source)


def test_random_bytes_in_memory(tmp_path):
    # seeded bytes: unseeded ones once probed as a container with a subtitle stream
    # (NoVideoStreamError, a clear error too, but not the one this test is about)
    data = media.write_random_bytes(tmp_path / "random.bin", 10_000).read_bytes()
    with pytest.raises(CorruptVideoError):
        read_video(data)


LIMIT_CASES = {
    "resolution": (VideoLimits(max_pixels=64 * 48 - 1), {}, VideoTooLargeError, "pixels"),
    "duration": (VideoLimits(max_duration_s=3.0), {}, VideoTooLongError, "long"),
    "declared-frames": (VideoLimits(max_frames=39), {}, VideoTooLongError, "frames"),
    "file-size": (VideoLimits(max_file_bytes=100), {}, VideoTooLargeError, "MiB"),
    "output-size": (
        VideoLimits(max_output_bytes=64 * 48 * 3 * 4),
        {"num_frames": 5},
        VideoTooLargeError,
        "frames",
    ),
}


@pytest.mark.parametrize(
    ("limits", "kwargs", "expected", "words"), LIMIT_CASES.values(), ids=LIMIT_CASES.keys()
)
def test_over_limit_input(good, limits, kwargs, expected, words):
    with pytest.raises(VideoError) as info:
        read_video(good, limits=limits, **kwargs)
    assert type(info.value) is expected
    assert words in str(info.value)
    # Within the limits the same clip reads fine.
    assert len(read_video(good, num_frames=4)) == 4


@pytest.mark.parametrize("as_type", [bytes, io.BytesIO])
def test_size_limit_applies_while_reading_bytes_and_streams(good, as_type):
    data = good.read_bytes()
    with pytest.raises(VideoTooLargeError):
        read_video(as_type(data), limits=VideoLimits(max_file_bytes=len(data) - 1))
    assert len(read_video(as_type(data), limits=VideoLimits(max_file_bytes=len(data)))) == 40


def test_output_limit_is_met_by_asking_for_less(good):
    limits = VideoLimits(max_output_bytes=64 * 48 * 3 * 4)
    assert read_video(good, num_frames=4, limits=limits).frames.nbytes == 64 * 48 * 3 * 4
    assert len(read_video(good, max_side=16, limits=limits)) == 40


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0},
        {"num_frames": -3},
        {"num_frames": 2.5},
        {"num_frames": True},
        {"fps": 0},
        {"fps": float("nan")},
        {"fps": float("inf")},
        {"start": -1.0},
        {"start": 2.0, "end": 1.0},
        {"start": 1.0, "end": 1.0},
        {"max_side": 0},
        {"start": 10.0},
    ],
    ids=str,
)
def test_bad_sampling_requests(good, kwargs):
    with pytest.raises(InvalidSamplingError) as info:
        read_video(good, **kwargs)
    assert isinstance(info.value, ValueError)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_pixels"):
        VideoLimits(max_pixels=0)
    with pytest.raises(ValueError, match="timeout_s"):
        VideoLimits(timeout_s=float("nan"))
    with pytest.raises(ValueError, match="worker_memory_bytes"):
        VideoLimits(worker_memory_bytes=1000)
