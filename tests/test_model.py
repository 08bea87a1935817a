"""The VideoLLM pipeline end to end on tiny random models: token accounting, determinism,
save/load, budgets, streaming, batching, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidllm.lm import FFN_TYPES
from vidllm.model import VideoLLM
from vidllm.reducer import ReducerConfig, plan
from vidllm.testing.tiny import tiny_video_llm
from vidllm.video import VideoError

QUESTION = "what color is the square ?"


@pytest.fixture(scope="module")
def model():
    return tiny_video_llm(seed=0)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, 40, 48, 3), dtype=np.uint8)


def test_visual_tokens_equal_the_plan_and_the_embeddings_fed(model, frames):
    prepared = model.prepare(frames, QUESTION)
    config = model.config.reducer_config()
    expected = plan(config, model.tower.grid, num_frames=len(frames))
    assert prepared.reduction.num_tokens == expected.total
    segments = prepared.reduction.segments
    paths = len({s.path for s in segments})
    markers = 2 + paths + len(segments)  # start and end, one per path, one per frame
    text = prepared.embeds.shape[0] - expected.total - markers
    stamps = len([s for s in segments if s.path != "fast"])
    assert text >= stamps + len(model.tokenizer(QUESTION)["input_ids"])  # template, timestamps, question
    answer = model.answer(frames, QUESTION)
    assert answer.visual_tokens == expected.total
    assert answer.prompt_tokens == prepared.embeds.shape[0]
    assert answer.uniform_tokens == config.num_frames * 16


def test_same_input_same_answer_and_frames(model, frames):
    first, second = model.answer(frames, QUESTION), model.answer(frames, QUESTION)
    assert first.text == second.text
    assert first.frames == second.frames
    assert first.boxes == second.boxes


def test_answer_reports_frames_boxes_and_relevance(model, frames):
    answer = model.answer(frames, QUESTION)
    assert [len(answer.frames[p]) for p in ("slow", "middle", "fast")] == [2, 2, 8]
    assert len(answer.relevance) == len(answer.sampled_timestamps) == 8
    sampled = {f.index for f in answer.frames["fast"]}
    assert {f.index for f in answer.frames["slow"]} <= sampled
    height, width = frames.shape[1:3]
    for x0, y0, x1, y1 in answer.boxes.values():
        assert 0 <= x0 < x1 <= width
        assert 0 <= y0 < y1 <= height
    assert {"decode", "encode", "score", "reduce", "generate", "total"} <= set(answer.timings)


@pytest.mark.parametrize("lm_kind", ["llama", *FFN_TYPES])
def test_save_and_load_round_trip(lm_kind, frames, tmp_path):
    """Any causal LM works, the project's VidLM of every FFN type included (loaded by Auto class)."""
    model = tiny_video_llm(lm_kind, seed=2)
    model.save_pretrained(tmp_path / "m")
    loaded = VideoLLM.from_pretrained(tmp_path / "m")
    a, b = model.prepare(frames, QUESTION), loaded.prepare(frames, QUESTION)
    torch.testing.assert_close(a.embeds, b.embeds, rtol=0, atol=0)
    assert loaded.answer(frames, QUESTION).text == model.answer(frames, QUESTION).text


def test_loading_a_directory_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vidllm_config\.json is missing"):
        VideoLLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("budget", [16, 40, 100])
def test_budget_is_respected(model, frames, budget):
    answer = model.answer(frames, QUESTION, budget=budget)
    assert answer.visual_tokens <= budget
    uniform = model.answer(frames, QUESTION, budget=budget, reducer="uniform")
    assert uniform.visual_tokens <= budget
    assert set(uniform.frames) == {"uniform"}


def test_budget_too_small_names_the_smallest_that_works(model, frames):
    with pytest.raises(ValueError, match="smallest that works is"):
        model.answer(frames, QUESTION, budget=0)


def test_stream_yields_the_answer(model, frames):
    pieces = list(model.stream(frames, QUESTION, max_new_tokens=6))
    assert "".join(pieces).strip() == model.answer(frames, QUESTION, max_new_tokens=6).text


def test_answer_batch_equals_one_by_one(model, frames):
    videos = [frames, frames[:7], frames[::-1].copy()]
    questions = [QUESTION, "how many circle s appear in the video ?", "which appears first ?"]
    batch = model.answer_batch(videos, questions, max_new_tokens=5)
    single = [model.answer(v, q, max_new_tokens=5) for v, q in zip(videos, questions, strict=True)]
    assert [a.text for a in batch] == [a.text for a in single]
    assert [a.frames for a in batch] == [a.frames for a in single]


@pytest.mark.parametrize("question", ["", "   ", "x" * 5000])
def test_bad_questions_are_value_errors(model, frames, question):
    with pytest.raises(ValueError, match="question"):
        model.answer(frames, question)


def test_video_errors_reach_the_caller(model, tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_text("this is not a video")
    with pytest.raises(VideoError, match=r"\S"):
        model.answer(bad, QUESTION)
    with pytest.raises(VideoError):
        model.answer(tmp_path / "missing.mp4", QUESTION)


def test_reads_video_files(model, make_clip):
    path = make_clip(num_frames=30, fps=10, width=64, height=48)
    answer = model.answer(path, QUESTION)
    assert answer.visual_tokens == plan(model.config.reducer_config(), model.tower.grid).total
    assert [f.timestamp for f in answer.frames["fast"]] == pytest.approx(
        sorted(f.timestamp for f in answer.frames["fast"])
    )
    assert answer.sampled_timestamps[-1] < 3.0


def test_unknown_reducer_is_a_value_error(model, frames):
    with pytest.raises(ValueError, match="unknown reducer"):
        model.answer(frames, QUESTION, reducer="random")


def test_reencode_mode_runs_and_matches_its_plan(frames):
    reducer = {
        "num_frames": 8,
        "slow_frames": 2,
        "middle_frames": 1,
        "roi_mode": "reencode",
        "pool_stride": 1,
    }
    m = tiny_video_llm(seed=1, reducer=reducer)
    answer = m.answer(frames, QUESTION)
    assert answer.visual_tokens == plan(ReducerConfig(**reducer), m.tower.grid).total


ROI_REDUCER = {"num_frames": 8, "slow_frames": 2, "middle_frames": 2, "fast_grid": [2, 2]}


def test_visual_positions_say_where_and_when_every_token_is(frames):
    """Full frames, pooled fast-path grids and re-encoded RoI crops: each token's coordinates are
    its cell's centre and size in frame fractions, and its frame's place among the sampled ones;
    their Fourier features go into the projector beside the tower's features."""
    from vidllm.model import VisualPositions

    model = tiny_video_llm(seed=4, visual_positions=True, reducer={**ROI_REDUCER, "roi_mode": "reencode"})
    prepared = model.prepare(frames, QUESTION)
    segments = prepared.reduction.segments
    coords = VisualPositions.coordinates(segments, len(prepared.sampled_indices))
    assert coords.shape == (prepared.reduction.num_tokens, VisualPositions.num_coordinates)
    assert {s.path for s in segments} == {"slow", "middle", "fast"}
    assert any(s.box is not None for s in segments)
    offset = 0
    for segment in segments:
        gh, gw = segment.grid
        rows = coords[offset : offset + gh * gw]
        offset += gh * gw
        x0, y0, x1, y1 = segment.box or (0.0, 0.0, 1.0, 1.0)
        torch.testing.assert_close(rows[:, 2], torch.full((gh * gw,), (x1 - x0) / gw))
        torch.testing.assert_close(rows[:, 3], torch.full((gh * gw,), (y1 - y0) / gh))
        # the cells tile the region exactly: first and last centres half a cell in from its edges
        assert rows[0, 0].item() == pytest.approx(x0 + rows[0, 2].item() / 2)
        assert rows[-1, 1].item() == pytest.approx(y1 - rows[0, 3].item() / 2)
        assert (rows[:, 4] == segment.frame / (len(prepared.sampled_indices) - 1)).all()
    features = model.positions(coords)
    assert features.shape == (len(coords), model.positions.num_features)
    tokens = torch.cat([s.tokens for s in segments])
    embeds, positions = model.layout(prepared.reduction, prepared.sampled_timestamps, QUESTION)
    torch.testing.assert_close(embeds[positions], model.projector(torch.cat([tokens, features], dim=1)))


def test_visual_positions_relevance_and_motion_survive_save_and_load(frames, tmp_path):
    model = tiny_video_llm(seed=6, visual_positions=True, relevance_inputs=True, motion_inputs=True)
    model.save_pretrained(tmp_path / "m")
    loaded = VideoLLM.from_pretrained(tmp_path / "m")
    assert loaded.config.visual_positions
    assert loaded.config.relevance_inputs
    assert loaded.config.motion_inputs
    for reducer in ("free-video-llm", "uniform"):
        expected = model.prepare(frames, QUESTION, reducer=reducer).embeds
        torch.testing.assert_close(
            loaded.prepare(frames, QUESTION, reducer=reducer).embeds, expected, rtol=0, atol=0
        )


@pytest.mark.parametrize("reducer", ["free-video-llm", "uniform"])
def test_relevance_inputs_give_the_projector_the_scorers_patch_relevance(frames, reducer):
    """Each visual token gets its frame's standardised patch relevance at its cell centre; the
    uniform reducer scores frames for such a model but keeps what it always keeps."""
    from vidllm.model import VisualPositions, token_relevance

    model = tiny_video_llm(seed=7, relevance_inputs=True, reducer={**ROI_REDUCER, "roi_mode": "reencode"})
    plain = tiny_video_llm(seed=7, reducer={**ROI_REDUCER, "roi_mode": "reencode"})
    prepared = model.prepare(frames, QUESTION, reducer=reducer)
    reduction = prepared.reduction
    assert reduction.patch_scores is not None
    assert [s.frame for s in reduction.segments] == [
        s.frame for s in plain.prepare(frames, QUESTION, reducer=reducer).reduction.segments
    ]
    coords = VisualPositions.coordinates(reduction.segments, len(prepared.sampled_indices))
    relevance = token_relevance(reduction, coords)
    maps = reduction.patch_scores
    z = (maps - maps.mean()) / maps.std()
    offset, checked = 0, 0
    for segment in reduction.segments:  # a whole-frame grid reads the map resized to that grid
        n = segment.tokens.shape[0]
        if segment.box is None:
            expected = torch.nn.functional.interpolate(
                z[segment.frame][None, None], size=segment.grid, mode="bilinear", align_corners=False
            )
            torch.testing.assert_close(relevance[offset : offset + n], expected.flatten())
            checked += 1
        offset += n
    assert checked > 0
    embeds, positions = model.layout(reduction, prepared.sampled_timestamps, QUESTION)
    tokens = torch.cat([s.tokens for s in reduction.segments])
    torch.testing.assert_close(
        embeds[positions], model.projector(torch.cat([tokens, relevance[:, None]], dim=1))
    )


def test_a_model_that_reads_relevance_refuses_a_reduction_without_it(frames):
    from vidllm.reducer import reduce_uniform

    model = tiny_video_llm(seed=8, relevance_inputs=True)
    config = model.resolve_reducer("uniform", None)
    reduction = reduce_uniform(model.tower.encode(frames), config)
    with pytest.raises(ValueError, match="patch relevance"):
        model.layout(reduction, [0.0] * len(frames), QUESTION)


def test_a_model_that_reads_relevance_needs_a_scorer():
    from dataclasses import replace

    model = tiny_video_llm(seed=9, relevance_inputs=True)
    with pytest.raises(ValueError, match="needs a scorer"):
        VideoLLM(replace(model.config, scorer=None), model.tower, model.lm, model.tokenizer, None)


@pytest.mark.parametrize("reducer", ["free-video-llm", "uniform"])
def test_motion_inputs_give_each_token_the_feature_change_at_its_cell(frames, reducer):
    """A whole-frame token reads the tower's features of the encoded frames around its own, later
    minus earlier, pooled to its grid; RoI tokens read the same map cropped to their box."""
    from vidllm.model import token_motion

    model = tiny_video_llm(seed=10, motion_inputs=True, reducer={**ROI_REDUCER, "roi_mode": "reencode"})
    prepared = model.prepare(frames, QUESTION, reducer=reducer)
    reduction = prepared.reduction
    features, encoded = reduction.features, reduction.encoded_frames
    assert encoded == tuple(range(len(prepared.sampled_indices)))
    motion = token_motion(reduction)
    assert motion.shape == (reduction.num_tokens, model.tower.hidden_size)
    offset, checked = 0, 0
    for segment in reduction.segments:
        n = segment.tokens.shape[0]
        if segment.box in (None, (0.0, 0.0, 1.0, 1.0)):
            i = encoded.index(segment.frame)
            change = features[encoded[min(i + 1, len(encoded) - 1)]] - features[encoded[max(i - 1, 0)]]
            expected = torch.nn.functional.adaptive_avg_pool2d(change.permute(2, 0, 1)[None], segment.grid)
            torch.testing.assert_close(motion[offset : offset + n], expected[0].flatten(1).T)
            checked += 1
        offset += n
    assert checked > 0
    embeds, positions = model.layout(reduction, prepared.sampled_timestamps, QUESTION)
    tokens = torch.cat([s.tokens for s in reduction.segments])
    torch.testing.assert_close(embeds[positions], model.projector(torch.cat([tokens, motion], dim=1)))


def test_motion_is_zero_on_a_still_video_and_not_where_something_moves():
    from vidllm.model import token_motion

    model = tiny_video_llm(seed=11, motion_inputs=True)
    still = np.full((8, 32, 32, 3), 40, dtype=np.uint8)
    assert token_motion(model.prepare(still, QUESTION).reduction).abs().max() == 0
    moving = still.copy()
    for t in range(8):  # a bright square crossing the frame left to right
        moving[t, 12:20, 3 * t : 3 * t + 8] = 230
    assert token_motion(model.prepare(moving, QUESTION).reduction).abs().max() > 0


def test_motion_reads_only_the_frames_a_uniform_reduction_encoded():
    """Training encodes only the frames uniform sampling keeps and zero-fills the rest: the
    neighbours a token's motion compares are the kept frames, as at inference."""
    from vidllm.model import token_motion
    from vidllm.reducer import UniformConfig, reduce_uniform, uniform_frames

    torch.manual_seed(0)
    features = torch.zeros(16, 4, 4, 8)
    kept = uniform_frames(16, 4)
    features[kept] = torch.randn(len(kept), 4, 4, 8)
    reduction = reduce_uniform(features, UniformConfig(num_frames=4, pool_stride=1))
    assert reduction.encoded_frames == tuple(kept)
    motion = token_motion(reduction)
    first = features[kept[1]] - features[kept[0]]  # the first kept frame: itself to the next kept one
    torch.testing.assert_close(motion[:16], first.flatten(0, 1))


def test_a_model_that_reads_motion_refuses_a_reduction_without_features(frames):
    from dataclasses import replace

    model = tiny_video_llm(seed=12, motion_inputs=True)
    reduction = replace(model.prepare(frames, QUESTION).reduction, features=None)
    with pytest.raises(ValueError, match="motion"):
        model.layout(reduction, [0.0] * len(frames), QUESTION)
