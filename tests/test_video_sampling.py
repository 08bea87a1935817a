"""Frame selection on its own: any frame timing (variable frame rate included), any request."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidllm.video import InvalidSamplingError
from vidllm.video.sampling import SamplingRequest, output_size, select_frames


@st.composite
def timings(draw):
    durations = draw(st.lists(st.floats(0.001, 0.5), min_size=1, max_size=300))
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    return starts, starts + np.asarray(durations)


@st.composite
def requests(draw, duration: float):
    start = draw(st.one_of(st.none(), st.floats(0, duration * 0.99)))
    end = draw(st.one_of(st.none(), st.floats((start or 0) + 1e-3, duration * 1.5 + 1)))
    return SamplingRequest.create(
        num_frames=draw(st.one_of(st.none(), st.integers(1, 400))),
        fps=draw(st.one_of(st.none(), st.floats(0.01, 200))),
        start=start,
        end=end,
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_selection_properties(data):
    starts, ends = data.draw(timings())
    request = data.draw(requests(float(ends[-1])))
    chosen = select_frames(starts, ends, request)
    lo = request.start or 0.0
    hi = min(request.end or math.inf, ends[-1])
    in_window = np.nonzero((ends > lo) & (starts < hi))[0]
    assert chosen.dtype == np.int64
    assert len(chosen) >= 1
    assert np.all(np.diff(chosen) > 0)  # sorted, never a duplicate
    assert set(chosen.tolist()) <= set(in_window.tolist())  # every frame is on screen in the window
    if request.num_frames is not None:
        assert len(chosen) <= request.num_frames
    if request.fps is None:
        expected = len(in_window) if request.num_frames is None else min(request.num_frames, len(in_window))
        assert len(chosen) == expected
    else:
        assert len(chosen) <= math.ceil((hi - lo) * request.fps) + 1


def test_variable_frame_rate_uses_real_timestamps():
    # Frames 0-9 last 0.1 s each, frames 10-14 last 1 s each (a slide-show tail).
    durations = np.array([0.1] * 10 + [1.0] * 5)
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    chosen = select_frames(starts, starts + durations, SamplingRequest.create(fps=1.0))
    # Slots centred at 0.5, 1.5, ..., 5.5 s: frame 5 at 0.5 s, then one slide per second.
    assert chosen.tolist() == [5, 10, 11, 12, 13, 14]


def test_start_past_the_end():
    starts = np.arange(10) / 10
    with pytest.raises(InvalidSamplingError, match="past the end"):
        select_frames(starts, starts + 0.1, SamplingRequest.create(start=1.0))


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1920, 1080), 448, (448, 252)),
        ((1080, 1920), 448, (252, 448)),
        ((640, 360), None, (640, 360)),
        ((640, 360), 640, (640, 360)),
        ((640, 360), 10_000, (640, 360)),  # never enlarged
        ((10_000, 3), 100, (100, 1)),  # never below one pixel
    ],
)
def test_output_size(size, max_side, expected):
    assert output_size(*size, max_side) == expected
