"""The Free Video-LLM reducer and the uniform baseline: token plans, frame choice, RoI boxes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vidllm.reducer import (
    ReducerConfig,
    UniformConfig,
    config_for_budget,
    middle_frames,
    plan,
    reduce_free_video_llm,
    reduce_uniform,
    roi_box,
    roi_size,
    uniform_config_for_budget,
)


def test_paper_configuration_gives_the_papers_token_count():
    """LLaVA-1.6's 24x24 grid: 3 * 231 + 5 * 231 + 50 * 16 = 2648 (REFERENCE.md)."""
    p = plan(ReducerConfig(), (24, 24))
    assert (p.slow, p.middle, p.fast, p.total) == (693, 1155, 800, 2648)
    assert p.tokens_per_frame["slow"] == 231  # 24x12 pooled, RoI 21x11


configs = st.builds(
    ReducerConfig,
    num_frames=st.integers(1, 24),
    slow_frames=st.integers(0, 6),
    middle_frames=st.integers(0, 6),
    fast_grid=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    pool_stride=st.integers(1, 3),
    roi_ratio=st.floats(0.05, 1.0),
    roi_mode=st.sampled_from(["tokens", "reencode"]),
    roi_center=st.sampled_from(["mean", "window"]),
    roi_paths=st.sampled_from([("slow", "middle"), ("slow",), ("middle",), ()]),
    slow_min_gap=st.integers(0, 4),
    slow_gap_margin=st.one_of(st.none(), st.floats(0.0, 1.0)),
)


@settings(max_examples=150, deadline=None)
@given(
    config=configs,
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    available=st.integers(1, 30),
    seed=st.integers(0, 99),
)
def test_plan_equals_tokens_produced(config, h, w, available, seed):
    n = min(config.num_frames, available)
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, h, w, 4, generator=g)
    frame_scores = torch.randn(n, generator=g)
    patch_scores = torch.randn(n, 5, 7, generator=g)

    def reencode(frame, box):
        return torch.randn(h, w, 4, generator=g)

    reduction = reduce_free_video_llm(features, frame_scores, patch_scores, config, reencode=reencode)
    expected = plan(config, (h, w), num_frames=available)
    assert reduction.num_tokens == expected.total
    for path in ("slow", "middle", "fast"):
        got = sum(s.tokens.shape[0] for s in reduction.segments if s.path == path)
        assert got == getattr(expected, path)
        assert len(reduction.frames(path)) == expected.frames.get(path, 0)
    assert [s.path for s in reduction.segments] == sorted(
        (s.path for s in reduction.segments), key=("slow", "middle", "fast").index
    )


@settings(max_examples=60, deadline=None)
@given(frames=st.integers(1, 60), count=st.integers(1, 8), h=st.integers(1, 8), w=st.integers(1, 8))
def test_uniform_plan_equals_tokens_produced(frames, count, h, w):
    config = UniformConfig(num_frames=count)
    reduction = reduce_uniform(torch.zeros(frames, h, w, 3), config)
    assert reduction.num_tokens == plan(config, (h, w), num_frames=frames).total


def test_slow_path_picks_exactly_the_top_k_frames_in_time_order():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 0.95, 0.0, 0.5])
    features = torch.randn(8, 4, 4, 2)
    config = ReducerConfig(num_frames=8, slow_frames=3, middle_frames=0)
    reduction = reduce_free_video_llm(features, scores, None, config)
    assert reduction.frames("slow") == [1, 3, 5]


def test_slow_min_gap_spreads_the_slow_frames_over_the_moments_they_show():
    """Temporal non-maximum suppression: the best frame, then the best at least ``slow_min_gap``
    from those taken; the best passed over fill in when the gap leaves too few."""
    scores = torch.tensor([0.1, 0.9, 0.85, 0.8, 0.2, 0.3, 0.0, 0.5])
    features = torch.randn(8, 4, 4, 2)

    def slow(gap: int, k: int = 3) -> list[int]:
        config = ReducerConfig(num_frames=8, slow_frames=k, middle_frames=0, slow_min_gap=gap)
        return reduce_free_video_llm(features, scores, None, config).frames("slow")

    assert slow(0) == slow(1) == [1, 2, 3]  # the paper's top-k: three neighbours
    assert slow(2) == [1, 3, 7]
    assert slow(4) == [1, 2, 7]  # 1 and 7, then the best passed over
    assert slow(8) == [1, 2, 3]  # no frame is 8 away: the best passed over
    # with a margin, only frames near the best score are spread: 7 (0.5) is too far below 0.9
    config = ReducerConfig(num_frames=8, slow_frames=3, middle_frames=0, slow_min_gap=2, slow_gap_margin=0.2)
    assert reduce_free_video_llm(features, scores, None, config).frames("slow") == [1, 2, 3]
    assert reduce_free_video_llm(features, scores, None, replace(config, slow_gap_margin=0.45)).frames(
        "slow"
    ) == [1, 3, 7]
    with pytest.raises(ValueError, match="slow_min_gap"):
        ReducerConfig(slow_min_gap=-1)
    with pytest.raises(ValueError, match="slow_gap_margin"):
        ReducerConfig(slow_gap_margin=-0.1)


@pytest.mark.parametrize("roi_mode", ["tokens", "reencode"])
def test_roi_paths_keep_the_other_paths_frames_whole(roi_mode):
    """A path left out of ``roi_paths`` feeds its whole pooled frame (box = the frame); the
    plan counts its tokens so."""
    features, scores = torch.randn(8, 6, 6, 2), torch.linspace(0, 1, 8)
    patch_scores = torch.zeros(8, 6, 6)
    patch_scores[:, :2, :2] = 1.0  # the subject in the top-left corner
    config = ReducerConfig(num_frames=8, slow_frames=2, middle_frames=2, fast_grid=(0, 0), pool_stride=1,
                           roi_ratio=0.25, roi_mode=roi_mode, roi_center="window", roi_paths=["slow"])  # fmt: skip
    reencode = lambda f, box: features[f]
    reduction = reduce_free_video_llm(features, scores, patch_scores, config, reencode=reencode)
    boxes = {s.path: s.box for s in reduction.segments}
    assert boxes["middle"] == (0.0, 0.0, 1.0, 1.0)
    assert boxes["slow"] == (0.0, 0.0, 0.5, 0.5)
    p = plan(config, (6, 6))
    assert p.tokens_per_frame["middle"] == 36
    assert p.tokens_per_frame["slow"] == (36 if roi_mode == "reencode" else 9)
    assert p.total == sum(s.tokens.shape[0] for s in reduction.segments)
    assert config.roi_paths == ("slow",)
    with pytest.raises(ValueError, match="roi_paths"):
        ReducerConfig(roi_paths=("fast",))


def test_middle_path_matches_the_official_spacing():
    assert middle_frames(50, 5) == [0, 10, 20, 30, 40]
    assert middle_frames(7, 3) == [0, 2, 4]


def test_roi_box_is_centred_on_the_mean_of_the_top_patches():
    scores = torch.zeros(10, 10)
    hot = [(2, 3), (2, 5), (4, 3), (4, 5)]  # mean (3, 4)
    for y, x in hot:
        scores[y, x] = 1.0
    ratio = 0.04  # int(100 * 0.04) = 4 top patches, box round(10 * 0.2) = 2 cells a side
    top, left, bottom, right = roi_box(scores, ratio)
    assert (bottom - top, right - left) == roi_size((10, 10), ratio) == (2, 2)
    assert (top, left) == (3 - 1, 4 - 1)


def test_window_box_stays_on_a_small_subject_where_the_mean_of_the_top_cells_drifts_off():
    """The default reducer's grid (8x4 pooled) and crop (0.25: a 4x2 box): one subject cell
    scores high, the rest of the frame a little above background here and there (cosine
    similarities, as the scorer's). The mean of the top 8 cells lands between the noise cells
    and the box misses the subject; the window holding the most relevance keeps it."""
    scores = torch.full((8, 4), 0.10)
    scores[1, 0] = 0.60  # the subject
    for cell in [(6, 3), (7, 3), (7, 2), (6, 2), (5, 3), (7, 1), (5, 2)]:
        scores[cell] = 0.25
    top, left, bottom, right = roi_box(scores, 0.25, "mean")
    assert not (top <= 1 < bottom and left <= 0 < right)
    top, left, bottom, right = roi_box(scores, 0.25, "window")
    assert (bottom - top, right - left) == roi_size((8, 4), 0.25) == (4, 2)
    assert top <= 1 < bottom
    assert left <= 0 < right


def test_window_box_holds_as_many_subjects_as_fit():
    """Two subjects of a count question that fit in one box are both kept, not a lone higher cell."""
    scores = torch.zeros(8, 4)
    scores[4, 2], scores[6, 3] = 0.5, 0.5
    scores[0, 0] = 0.52  # a lone cell a little higher than either
    top, left, bottom, right = roi_box(scores, 0.25, "window", temperature=0.05)
    assert top <= 4
    assert bottom > 6
    assert left <= 2
    assert right > 3


def test_roi_overlap_weight_moves_later_boxes_to_a_second_subject_and_keeps_a_lone_one():
    """Two subjects far apart on every frame, one a little more relevant: each box goes to it
    alone (the default); with ``roi_overlap_weight`` the boxes alternate. A lone subject keeps
    every box."""
    features = torch.randn(4, 8, 8, 2)
    patch_scores = torch.zeros(4, 8, 8)
    patch_scores[:, 1, 1], patch_scores[:, 6, 6] = 0.60, 0.58  # weights 1 and exp(-0.4) = 0.67
    config = ReducerConfig(num_frames=4, slow_frames=2, middle_frames=2, fast_grid=(0, 0), pool_stride=1,
                           roi_ratio=0.25, roi_center="window")  # fmt: skip

    def shown(config, patch_scores):  # per box, the subjects (cells (1, 1), (6, 6)) inside it
        reduction = reduce_free_video_llm(features, torch.linspace(0, 1, 4), patch_scores, config)
        inside = lambda box, y, x: box[0] * 8 <= x < box[2] * 8 and box[1] * 8 <= y < box[3] * 8
        return [tuple(name for name, (y, x) in {"a": (1, 1), "b": (6, 6)}.items() if inside(s.box, y, x))
                for s in reduction.segments]  # fmt: skip

    assert shown(config, patch_scores) == [("a",)] * 4
    spread = replace(config, roi_overlap_weight=0.5)
    assert shown(spread, patch_scores) == [("a",), ("b",), ("a",), ("b",)]
    lone = patch_scores.clone()
    lone[:, 6, 6] = 0.0
    assert shown(spread, lone) == [("a",)] * 4
    with pytest.raises(ValueError, match="roi_overlap_weight"):
        ReducerConfig(roi_center="window", roi_overlap_weight=0.0)
    # the official placement ignores it
    mean = replace(config, roi_center="mean")
    assert shown(replace(mean, roi_overlap_weight=0.5), patch_scores) == shown(mean, patch_scores)


def test_roi_center_and_temperature_are_checked():
    with pytest.raises(ValueError, match="roi_center"):
        ReducerConfig(roi_center="median")
    with pytest.raises(ValueError, match="roi_temperature"):
        ReducerConfig(roi_center="window", roi_temperature=0.0)
    with pytest.raises(ValueError, match="center"):
        roi_box(torch.zeros(4, 4), 0.25, "median")


@pytest.mark.parametrize("center", ["mean", "window"])
@pytest.mark.parametrize("corner", [(0, 0), (0, 9), (9, 0), (9, 9)])
def test_roi_box_is_clipped_inside_the_frame(corner, center):
    scores = torch.zeros(10, 10)
    scores[corner] = 1.0
    top, left, bottom, right = roi_box(scores, 0.01, center)
    assert 0 <= top < bottom <= 10
    assert 0 <= left < right <= 10
    bh, bw = roi_size((10, 10), 0.01)
    assert (bottom - top, right - left) == (bh, bw)
    # the box still covers the hot cell, pushed against the border it sits on
    assert top <= corner[0] < bottom
    assert left <= corner[1] < right


def test_roi_crop_takes_the_boxed_cells():
    features = torch.arange(1 * 6 * 6, dtype=torch.float).reshape(1, 6, 6, 1).repeat(2, 1, 1, 1)
    patch_scores = torch.zeros(2, 6, 6)
    patch_scores[:, :3, :3] = 5.0  # the 9 = int(36 * 0.25) top cells: mean (1, 1)
    config = ReducerConfig(
        num_frames=2, slow_frames=1, middle_frames=0, pool_stride=1, roi_ratio=0.25, fast_grid=(0, 0)
    )
    reduction = reduce_free_video_llm(features, torch.tensor([1.0, 0.0]), patch_scores, config)
    (segment,) = reduction.segments
    assert segment.grid == (3, 3)
    assert segment.box == (0.0, 0.0, 0.5, 0.5)
    assert segment.tokens[:, 0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]


@pytest.mark.parametrize("budget", [16, 100, 500, 1000, 2648, 4000, 20000])
def test_budget_picks_the_largest_config_that_fits(budget):
    cfg = config_for_budget(budget, (24, 24))
    assert plan(cfg, (24, 24)).total <= budget
    if budget == 2648:
        assert cfg == ReducerConfig()


def test_budget_too_small_names_the_smallest_that_works():
    with pytest.raises(ValueError, match=r"smallest that works is (\d+)") as info:
        config_for_budget(0, (24, 24))
    smallest = int(info.value.args[0].rsplit(" ", 1)[-1])
    assert plan(config_for_budget(smallest, (24, 24)), (24, 24)).total == smallest


@pytest.mark.parametrize("budget", [12, 100, 144, 1000, 2648, 10000])
def test_uniform_budget_spends_full_resolution_frames_first(budget):
    cfg = uniform_config_for_budget(budget, (12, 12))
    assert plan(cfg, (12, 12)).total <= budget
    if budget >= 144:
        assert cfg.pool_stride == 1
        assert cfg.num_frames == min(50, budget // 144)
    else:
        assert cfg.pool_stride > 1


def test_uniform_budget_too_small_names_the_smallest_that_works():
    with pytest.raises(ValueError, match="smallest that works is 12"):
        uniform_config_for_budget(11, (12, 12))
