"""Seeded fuzzing of container headers: whatever the damage, the caller's interpreter survives and
every failure is a VideoError (decodes that still succeed are fine, and must be well-formed)."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

from vidllm.testing.media import corrupted_variants
from vidllm.video import VideoError, VideoLimits, read_video

logger = logging.getLogger(__name__)

# Small clips so that each variant costs milliseconds; the mp4 index sits at the end (as PyAV
# writes it) and, with faststart, at the front, so mutations reach both layouts.
SEED_CLIPS = {
    "h264.mp4": {"codec": "libx264"},
    "h264-faststart.mp4": {"codec": "libx264", "faststart": True},
    "vp9.webm": {"codec": "libvpx-vp9"},
    "vp8.webm": {"codec": "libvpx"},
}


def _fuzz(make_clip, count: int, seed: int) -> Counter:
    seeds = {
        name: make_clip(f"fuzz-{name}", num_frames=16, **kwargs).read_bytes()
        for name, kwargs in SEED_CLIPS.items()
    }
    # A generous timeout: a damaged file may decode slowly, and a loaded test machine is slower still.
    limits = VideoLimits(timeout_s=60.0)
    outcomes: Counter = Counter()
    for description, data in corrupted_variants(seeds, count, seed=seed):
        try:
            video = read_video(data, num_frames=4, limits=limits)
        except VideoError as exc:
            outcomes[type(exc).__name__] += 1
            continue
        except Exception as exc:  # anything else is a bug: name the variant that caused it
            raise AssertionError(f"variant {description} raised {type(exc).__name__}: {exc}") from exc
        t = len(video)
        assert 1 <= t <= 4, description
        assert video.frames.dtype == np.uint8
        assert video.frames.ndim == 4
        assert video.frames.shape[3] == 3, description
        assert video.timestamps.shape == video.indices.shape == (t,), description
        assert np.all(np.diff(video.indices) > 0), description
        outcomes["decoded"] += 1
    logger.info("fuzz outcomes over %d variants (seed %d): %s", count, seed, dict(outcomes))
    assert sum(outcomes.values()) == count
    return outcomes


def test_fuzzed_headers_default(make_clip, record_property):
    outcomes = _fuzz(make_clip, count=100, seed=0)
    record_property("outcomes", dict(outcomes))
    # The corpus is doing its job: some variants still decode, some do not.
    assert outcomes["decoded"] > 0
    assert outcomes["decoded"] < 100


@pytest.mark.slow
def test_fuzzed_headers_full(make_clip, record_property):
    outcomes = _fuzz(make_clip, count=2000, seed=1)
    record_property("outcomes", dict(outcomes))
    assert outcomes["decoded"] > 0
    assert len(set(outcomes) - {"decoded"}) >= 3  # several distinct kinds of failure were met
