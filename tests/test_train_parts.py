"""vidllm.train parts: tokenizer, training data, checkpoints, schedule, presets (no training run)."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vidllm.data.synthetic import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    TEMPLATES,
    Scene,
    SceneObject,
    WorldConfig,
    render,
    sample_item,
    split_rng,
    template_probabilities,
    well_posed,
)
from vidllm.model import MARKERS
from vidllm.reducer import uniform_frames
from vidllm.train import checkpoint as ckpt
from vidllm.train.data import (
    OBJECT_ATTRIBUTES,
    START_BINS,
    TrainVideo,
    attribute_columns,
    cell_attributes,
    cell_coverage,
    scorer_batch,
    subject_predicate,
    video_batch,
    video_item,
    yuv420_roundtrip,
)
from vidllm.train.loop import Stage, _truncate_log, lr_factor, read_log, run_stage
from vidllm.train.presets import PRESETS, Preset, get_preset
from vidllm.train.tokenizer import train_tokenizer, world_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(world_corpus(num_items=60), vocab_size=400)


# ----------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------


def test_tokenizer_keeps_world_words_whole(tokenizer):
    for shape in SHAPES:
        ids = tokenizer(TEMPLATES["color"].format(shape=shape))["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert len(ids) <= 7, tokenizer.convert_ids_to_tokens(ids)  # <s> What color is the shape ?
    for color in COLORS:
        for shape in SHAPES:
            assert len(tokenizer(f" {color} {shape}", add_special_tokens=False)["input_ids"]) == 2


def test_tokenizer_markers_are_single_special_tokens(tokenizer):
    vocab = tokenizer.get_vocab()
    for marker in MARKERS.values():
        assert marker in vocab
        assert tokenizer(marker, add_special_tokens=False)["input_ids"] == [vocab[marker]]
        assert marker in tokenizer.all_special_tokens
    assert (
        tokenizer.decode(
            [vocab[MARKERS["frame"]], *tokenizer(" red")["input_ids"][1:]], skip_special_tokens=True
        )
        == " red"
    )


@pytest.mark.parametrize(
    "text", ["What is happening in the video?", "Ünïcode 🐰 text", "12.5s", "  spaces\tand\nlines "]
)
def test_tokenizer_round_trips_any_text(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_splits_digits_and_is_deterministic(tokenizer, tmp_path):
    assert tokenizer.convert_ids_to_tokens(tokenizer("2024", add_special_tokens=False)["input_ids"]) == list(
        "2024"
    )
    again = train_tokenizer(world_corpus(num_items=60), vocab_size=400)
    assert again.get_vocab() == tokenizer.get_vocab()
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Which appears first, the red star or the blue circle? (A) red star (B) blue circle"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_tokenizer_rejects_a_vocabulary_without_merges():
    with pytest.raises(ValueError, match="no room for merges"):
        train_tokenizer(["a b"], vocab_size=200)


# ----------------------------------------------------------------------------------------------
# training data
# ----------------------------------------------------------------------------------------------


def test_subject_predicate_matches_the_answer_key():
    """The scorer's notion of "what a question is about" is the world's answer key's subjects."""
    config = WorldConfig()
    checked = 0
    for index in range(40):
        scene, _ = sample_item(split_rng("train", index), config)
        for template, slots, _, subjects in well_posed(scene, config):
            predicate = subject_predicate(template, slots)
            matching = {i for i, o in enumerate(scene.objects) if predicate(o)}
            assert matching == set(subjects), (template, slots)
            checked += 1
    assert checked > 100


def test_cell_coverage():
    grid = (8, 8)
    small = cell_coverage((0.26, 0.26, 0.36, 0.36), grid)  # inside cell (2, 2)
    assert small[2, 2] == pytest.approx(1.0)
    assert small.sum() == pytest.approx(1.0)
    whole = cell_coverage((0.0, 0.0, 1.0, 1.0), grid)
    assert np.allclose(whole, 1.0)
    half = cell_coverage((0.0, 0.0, 0.0625, 0.125), grid)  # half of cell (0, 0), a box bigger than nothing
    assert half[0, 0] == pytest.approx(1.0)  # the whole box is in the cell
    straddle = cell_coverage((0.1, 0.1, 0.15, 0.15), grid)
    assert straddle[0, 0] > 0
    assert straddle[1, 1] > 0
    assert straddle.sum() == pytest.approx(1.0)


def test_subject_coverage_follows_the_segments_grids_and_boxes():
    from vidllm.reducer import Segment

    item = video_item(7, seed=0, num_frames=8, questions=1, mc_share=0.0)
    qa = item.questions[0]
    frame = next(f for f in range(8) if item.subject_boxes(qa, f))
    box = item.subject_boxes(qa, frame)[0]
    crop = (max(box[0] - 0.1, 0.0), max(box[1] - 0.1, 0.0), min(box[2] + 0.1, 1.0), min(box[3] + 0.1, 1.0))
    segments = [
        Segment("slow", frame, torch.zeros(16, 1), (4, 4)),
        Segment("middle", frame, torch.zeros(4, 1), (2, 2), box=crop),
    ]
    coverage = item.subject_coverage(qa, segments)
    assert coverage.shape == (20,)
    assert np.array_equal(coverage[:16], np.maximum.reduce(
        [cell_coverage(b, (4, 4)).ravel() for b in item.subject_boxes(qa, frame)]
    ))  # fmt: skip
    assert np.array_equal(coverage[16:], np.maximum.reduce(
        [cell_coverage(b, (2, 2), crop).ravel() for b in item.subject_boxes(qa, frame)]
    ))  # fmt: skip
    assert coverage[16:].max() > 0  # the crop is around a subject
    empty = next((f for f in range(8) if not item.subject_boxes(qa, f)), None)
    if empty is not None:
        assert not item.subject_coverage(qa, [Segment("fast", empty, torch.zeros(4, 1), (2, 2))]).any()


def test_cell_attributes_name_the_object_in_each_cell():
    from vidllm.data.synthetic import SceneObject

    def obj(color, shape, x, y, size):
        return SceneObject(shape, color, size, "left", 0.0, 1.0, x, y, x, y, short_lived=False, small=False)

    small = obj("red", "star", 0.31, 0.31, 0.08)  # inside cell (2, 2) of an 8x8 grid
    big = obj("blue", "square", 0.75, 0.75, 0.25)  # covers cells 5 and 6 of both axes
    colors, shapes = cell_attributes([(small, small.box(0.5)), (big, big.box(0.5))], (8, 8))
    assert colors[2, 2] == COLORS.index("red")
    assert shapes[2, 2] == SHAPES.index("star")
    assert colors[5, 5] == COLORS.index("blue")
    assert shapes[6, 6] == SHAPES.index("square")
    assert colors[0, 0] == len(COLORS)
    assert shapes[0, 0] == len(SHAPES)
    assert (colors < len(COLORS)).sum() == 1 + 4


def test_object_attributes_give_each_token_the_scene_graph_of_its_object():
    from vidllm.reducer import Segment

    # a red star (cell (1, 1) of a 4x4 grid) on screen in the first half, moving right; two blue
    # squares, the second (top right) entering in the second half, moving up
    star = SceneObject("star", "red", 0.2, "right", 0.0, 0.5, 0.35, 0.375, 0.4, 0.375, False, False)
    square = SceneObject("square", "blue", 0.25, "down", 0.0, 1.0, 0.625, 0.625, 0.625, 0.7, False, False)
    late = SceneObject("square", "green", 0.2, "up", 0.6, 1.0, 0.875, 0.2, 0.875, 0.1, True, False)
    scene = Scene("t", (star, square, late), (0, 0, 0))
    item = TrainVideo(np.zeros((2, 8, 8, 3), np.uint8), [0.0, 4.0], scene, [], [0.1, 0.8])
    zoom = (0.5, 0.5, 1.0, 1.0)  # the bottom-right quarter, where the blue square is
    segments = [
        Segment("slow", 0, torch.zeros(16, 1), (4, 4)),
        Segment("middle", 1, torch.zeros(16, 1), (4, 4)),
        Segment("middle", 0, torch.zeros(4, 1), (2, 2), box=zoom),
    ]
    table = item.object_attributes(segments)
    assert table.shape == (36, len(OBJECT_ATTRIBUTES))
    names = list(OBJECT_ATTRIBUTES)

    def row(obj, count):
        return [COLORS.index(obj.color), SHAPES.index(obj.shape), DIRECTIONS.index(obj.direction),
                min(int(obj.start * START_BINS), START_BINS - 1), count - 1]  # fmt: skip

    none = [len(COLORS), len(SHAPES), -100, -100, -100]
    first, second, crop = table[:16].reshape(4, 4, -1), table[16:32].reshape(4, 4, -1), table[32:]
    assert first[1, 1].tolist() == row(star, 1)  # the star at t=0.1
    assert first[2, 2].tolist() == row(square, 2)  # two squares in the video, one at a time
    assert first[0, 0].tolist() == none
    assert first[0, 3].tolist() == none  # the late square is not there yet
    assert second[1, 1].tolist() == none  # the star has left at t=0.8
    assert second[0, 3].tolist() == row(late, 2)
    assert (crop[:, names.index("color")] == COLORS.index("blue")).sum() >= 1  # the crop tiles its box
    assert row(late, 2)[names.index("start")] == int(0.6 * START_BINS)
    for k, classes in enumerate(OBJECT_ATTRIBUTES.values()):
        assert table[:, k].max() < classes

    # "seen": the squares shown so far in the sequence; the blue one alone in the first frame,
    # both from the late one's first token on (the crop of frame 0 comes after it)
    seen = item.object_attributes(segments, count="seen")
    assert np.array_equal(seen[:, :-1], table[:, :-1])
    first, second, crop = seen[:16].reshape(4, 4, -1), seen[16:32].reshape(4, 4, -1), seen[32:]
    assert first[1, 1].tolist() == row(star, 1)
    assert first[2, 2].tolist() == row(square, 1)
    assert second[0, 3].tolist() == row(late, 2)
    assert set(crop[crop[:, 0] == COLORS.index("blue"), -1].tolist()) == {1}
    with pytest.raises(ValueError, match="count must be one of"):
        item.object_attributes(segments, count="all")

    # new_objects: a last column flags each object's first token in the sequence, 0 its later ones
    flagged = item.object_attributes(segments, new_objects=True)
    assert flagged.shape == (36, len(attribute_columns(new_objects=True)))
    assert list(attribute_columns(new_objects=True))[-1] == "new_object"
    assert np.array_equal(flagged[:, :-1], table)
    new, colors = flagged[:, -1], flagged[:, 0]
    assert np.array_equal(new == -100, colors == len(COLORS))  # asked of object tokens only
    assert sorted(colors[new == 1].tolist()) == sorted(COLORS.index(o.color) for o in (star, square, late))
    for k in np.flatnonzero(new == 1):
        assert colors[k] not in colors[:k]  # no earlier token shows its object
    assert new[32:].max() == 0  # the crop shows the blue square again


def test_yuv420_roundtrip_halves_chroma_and_keeps_grey():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8), 3, axis=-1)
    assert np.abs(yuv420_roundtrip(grey).astype(int) - grey).max() <= 1
    frames = rng.integers(96, 160, (2, 8, 8, 3), dtype=np.uint8)  # no clipping at the gamut's edge
    out = yuv420_roundtrip(frames).astype(np.float32)
    to_yuv = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    yuv_in, yuv_out = frames @ to_yuv.T, out @ to_yuv.T
    assert np.abs(yuv_in[..., 0] - yuv_out[..., 0]).max() < 1.5  # luma kept (up to rounding)
    block = yuv_out[0, 2:4, 4:6, 1:]
    assert np.abs(block - block.mean(axis=(0, 1))).max() < 1.5  # one chroma value per 2x2 block


def test_scorer_batch_is_deterministic_and_consistent():
    kwargs = dict(seed=0, scenes=3, frames_per_scene=2, texts=10, grid=(4, 4))
    a, b = scorer_batch(5, **kwargs), scorer_batch(5, **kwargs)
    assert np.array_equal(a.frames, b.frames)
    assert a.texts == b.texts
    assert np.array_equal(a.patch_labels, b.patch_labels)
    other = scorer_batch(5, rank=1, world_size=2, **kwargs)
    assert not np.array_equal(a.frames, other.frames)
    assert a.frames.shape == (6, 96, 96, 3)
    assert len(a.texts) == 10
    assert a.frame_labels.shape == (6, 10)
    assert a.patch_labels.shape == (6, 10, 4, 4)
    # a cell is positive only where the frame is
    assert np.all(a.patch_labels.max(axis=(2, 3)) <= a.frame_labels + 1e-6)
    assert np.all((a.patch_labels.max(axis=(2, 3)) > 0) == (a.frame_labels > 0))
    assert a.cell_colors.shape == a.cell_shapes.shape == (6, 4, 4)
    assert np.array_equal(a.cell_colors == len(COLORS), a.cell_shapes == len(SHAPES))


def test_video_item_is_deterministic_and_sampled_like_a_file():
    kwargs = dict(seed=0, num_frames=8, questions=4, mc_share=0.5, yuv420_prob=0.0)
    a, b = video_item(7, **kwargs), video_item(7, **kwargs)
    assert np.array_equal(a.frames, b.frames)
    assert [(q.prompt, q.target) for q in a.questions] == [(q.prompt, q.target) for q in b.questions]
    keep = uniform_frames(50, 8)
    assert np.array_equal(a.frames, render(a.scene, 50, (96, 96))[keep])
    assert a.timestamps == pytest.approx([a.scene.timestamps(50)[i] for i in keep])
    asked = [(q.question.template, frozenset(q.question.slots.values())) for q in a.questions]
    assert len(set(asked)) == len(asked)  # never the same question twice
    for qa in a.questions:
        assert qa.target == (qa.question.answer_letter if qa.mc else qa.question.answer)
    batch = video_batch(3, videos=2, **kwargs)
    assert [v.scene.video_id for v in batch] == ["synthetic_train_0000006", "synthetic_train_0000007"]


def test_balanced_extras_ask_other_templates_and_fewer_absent_shape_counts():
    """Uniform further questions are mostly counts of absent shapes (answer 0); balanced ones
    ask each video a template it has not been asked while one is left, answers drawn uniformly."""
    kwargs = dict(seed=0, num_frames=2, questions=3, mc_share=0.0, size=(16, 16), source_frames=4)
    zero_counts = {}
    for balanced in (False, True):
        items = [video_item(i, balanced_extras=balanced, **kwargs) for i in range(300)]
        extras = [qa.question for item in items for qa in item.questions[1:]]
        zero_counts[balanced] = sum(q.template == "count" and q.answer == "0" for q in extras) / len(extras)
        if balanced:
            for item in items:
                templates = [qa.question.template for qa in item.questions]
                offered = {c[0] for c in well_posed(item.scene, WorldConfig())}
                assert len(set(templates)) == min(len(templates), len(offered | {templates[0]}))
    assert zero_counts[True] < 0.6 * zero_counts[False]
    same = video_item(5, balanced_extras=True, **kwargs), video_item(5, balanced_extras=True, **kwargs)
    assert [q.prompt for q in same[0].questions] == [q.prompt for q in same[1].questions]


def test_template_weights_draw_the_targeted_questions_templates():
    """``template_weights`` sets the targeted question's template shares (1 for a template not
    named); without them the draw is the uniform one the shipped runs trained on."""
    kwargs = dict(seed=0, num_frames=2, questions=1, mc_share=0.0, size=(16, 16), source_frames=4)
    uniform = [video_item(i, **kwargs).questions[0].question for i in range(200)]
    assert [q.question for q in uniform] == [
        video_item(i, template_weights={}, **kwargs).questions[0].question.question for i in range(200)
    ]
    only = Counter(video_item(i, template_weights={t: 0 for t in TEMPLATES if t != "first"}, **kwargs)
                   .questions[0].question.template for i in range(50))  # fmt: skip
    assert only == {"first": 50}
    heavy = Counter(video_item(i, template_weights={"first": 4}, **kwargs).questions[0].question.template
                    for i in range(400))  # fmt: skip
    assert heavy["first"] / 400 == pytest.approx(0.5, abs=0.08)  # 4 / (4 + 4)
    assert Counter(q.template for q in uniform)["first"] / 200 == pytest.approx(0.2, abs=0.08)
    for bad in ({"firsts": 2}, {"first": -1}, {"first": "many"}, {t: 0 for t in TEMPLATES}, 2, ["first"]):
        with pytest.raises(ValueError):
            template_probabilities(bad)


# ----------------------------------------------------------------------------------------------
# checkpoints, schedule, log
# ----------------------------------------------------------------------------------------------


def _trained_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_checkpoint_round_trip_and_rotation(tmp_path):
    model, opt = _trained_optimizer()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    opt.step()
    sched.step()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(
            tmp_path, step, module=model, optimizer=opt, scheduler=sched, state={"x": step}, keep=2
        )
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    (tmp_path / ".tmp_step_000009").mkdir()  # a write that was killed does not count
    (tmp_path / "step_000010").mkdir()  # nor does a directory without state
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000003"
    expected = torch.rand(3)
    fresh, fresh_opt = _trained_optimizer(seed=1)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda s: 0.5**s)
    state = ckpt.load_checkpoint(
        tmp_path / "step_000003", module=fresh, optimizer=fresh_opt, scheduler=fresh_sched
    )
    assert state["step"] == 3
    assert state["x"] == 3
    assert torch.equal(torch.rand(3), expected)  # the generator is back where it was at the save
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    weights = ckpt.checkpoint_weights(tmp_path / "step_000003")  # the weights alone, nothing restored
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    sa, sb = opt.state_dict(), fresh_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for index, values in sa["state"].items():
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][index][name])), name
    assert fresh_sched.last_epoch == sched.last_epoch
    assert fresh_sched.get_last_lr() == sched.get_last_lr()


def test_rng_state_round_trip():
    import random

    tensors, meta = ckpt.rng_state()
    expected = (torch.rand(2), np.random.rand(2), random.random())
    ckpt.set_rng_state(tensors, meta)
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_lr_factor_warms_up_then_decays():
    values = [lr_factor(s, 100, 10, 0.1) for s in range(101)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))  # decays after the warm-up
    assert values[100] == pytest.approx(0.1)


def test_truncate_log_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,loss,layout\n10,1.0,a\n20,0.5,b\n30,0.25,c\n")
    _truncate_log(path, 20)
    log = read_log(path)
    assert log["step"] == [10.0, 20.0]
    assert log["layout"] == ["a", "b"]


_ONE_RANK_DEADLINE = """
import json, sys, time
import torch
from accelerate import Accelerator
from vidllm.train.loop import Stage, run_stage

accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
module = torch.nn.Linear(4, 1)
stage = Stage(
    name="tiny", module=module, param_groups=[{"params": list(module.parameters()), "lr": 0.01}], steps=1000,
    batch_fn=lambda step, rank, world: torch.full((2, 4), float(step + rank)),
    loss_fn=lambda m, x, step: (m(x).square().mean(), {}),
)
# only rank 0 has a time limit, and it has passed already
deadline = time.monotonic() if accelerator.process_index == 0 else None
result = run_stage(stage, sys.argv[1], accelerator=accelerator, deadline=deadline, progress=False)
with open(f"{sys.argv[1]}/rank{accelerator.process_index}.json", "w") as f:
    json.dump({"status": result.status, "step": result.step}, f)
"""


def test_a_time_limit_on_one_process_stops_every_process_after_the_same_step(tmp_path):
    """Under ``torchrun``, a stop that only one process sees (its time limit, a signal) reaches
    the others through the loss's all-reduce: both stop after step 1 with one checkpoint, none
    waits forever in a collective the other never joins."""
    import sys

    from vidllm.testing.processes import run_process_group

    script = tmp_path / "one_rank_deadline.py"
    script.write_text(_ONE_RANK_DEADLINE)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(tmp_path / "stage")]  # fmt: skip
    done = run_process_group(command, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / "stage" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results == [{"status": "stopped", "step": 1}] * 2
    assert [p.name for p in (tmp_path / "stage" / "checkpoints").iterdir()] == ["step_000001"]


def _regression_stage(ema_decay: float = 0.0, weights: list | None = None) -> Stage:
    """A linear regression trained for 30 steps; ``weights`` collects the weights before each step."""
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 1)
    target = torch.tensor([[1.0, -2.0, 0.5, 3.0]])

    def batch_fn(step, rank, world):
        return torch.randn(8, 4, generator=torch.Generator().manual_seed(step))

    def record(m, step):
        if weights is not None:
            weights.append([p.detach().clone() for p in m.parameters()])

    return Stage(
        name="regression", module=module, param_groups=[{"params": list(module.parameters()), "lr": 0.05}],
        steps=30, batch_fn=batch_fn, loss_fn=lambda m, x, step: ((m(x) - x @ target.T).square().mean(), {}),
        on_step=record, ema_decay=ema_decay,
    )  # fmt: skip


def test_a_stage_with_a_moving_average_ends_on_it_and_resumes_to_it(tmp_path):
    """The average does not change training (the same losses), the stage ends holding the
    average of its weights after every step as WeightAverage defines it, the final checkpoint
    stores it, and a run stopped half-way resumes to the same average, bit for bit."""
    common = dict(progress=False, checkpoint_every=5, log_every=1)
    weights: list = []
    raw = _regression_stage(weights=weights)
    run_stage(raw, tmp_path / "raw", **common)
    trajectory = [*weights[1:], [p.detach().clone() for p in raw.module.parameters()]]  # after steps 1-30
    expected = [p.clone() for p in weights[0]]
    for n, after in enumerate(trajectory, start=1):
        decay = min(0.8, (1 + n) / (10 + n))
        expected = [e + (1 - decay) * (w - e) for e, w in zip(expected, after)]

    averaged = _regression_stage(ema_decay=0.8)
    result = run_stage(averaged, tmp_path / "ema", **common)
    assert result.status == "done"
    assert read_log(tmp_path / "ema" / "log.csv")["loss"] == read_log(tmp_path / "raw" / "log.csv")["loss"]
    final = [p.detach() for p in averaged.module.parameters()]
    for got, want, last in zip(final, expected, trajectory[-1]):
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, last)  # the average, not the last weights
    stored = ckpt.checkpoint_average(result.checkpoint)
    assert all(torch.equal(stored[n], p) for n, p in averaged.module.named_parameters())
    weights = ckpt.checkpoint_weights(result.checkpoint)
    assert all(torch.equal(weights[n], p) for n, p in averaged.module.named_parameters())

    first = run_stage(_regression_stage(ema_decay=0.8), tmp_path / "resumed", stop_at=15, **common)
    assert first.status == "stopped"
    assert ckpt.checkpoint_average(first.checkpoint) is not None
    resumed = _regression_stage(ema_decay=0.8)
    assert run_stage(resumed, tmp_path / "resumed", **common).status == "done"
    assert all(torch.equal(a, b) for a, b in zip(resumed.module.parameters(), final))


# ----------------------------------------------------------------------------------------------
# presets (the registry)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_and_fits_the_limits(name):
    from vidllm.lm import VLLM_CPU_HEAD_SIZES, VidLMConfig
    from vidllm.reducer import ReducerConfig, plan

    preset = get_preset(name)
    assert Preset.from_dict(preset.to_dict()) == preset
    lm = VidLMConfig(vocab_size=preset.model.tokenizer_vocab_size, **preset.model.lm)
    assert lm.head_dim in VLLM_CPU_HEAD_SIZES  # the same checkpoint serves through vLLM
    reducer = ReducerConfig(**preset.model.reducer)
    assert plan(reducer, (8, 8)).total > 0
    weights = [e["weight"] for e in preset.video.reducer_mix]
    assert weights
    assert min(weights) > 0
    # the LM's parameters alone, in float32, stay far under the 20 MB checkpoint limit
    hidden, inter, layers = lm.hidden_size, lm.intermediate_size, lm.num_hidden_layers
    params = 2 * lm.vocab_size * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter)
    assert 4 * params < 10e6


def test_preset_overrides():
    preset = get_preset("default", {"video.steps": 7, "seed": 3})
    assert preset.video.steps == 7
    assert preset.seed == 3
    assert PRESETS["default"].video.steps != 7  # a copy
    with pytest.raises(KeyError):
        get_preset("default", {"video.nope": 1})
    # an entry of a dict field: the official RoI placement for the whole model (with v11's mix, v10)
    v10 = get_preset("default", {"model.reducer.roi_center": "mean"})
    assert v10.model.reducer["roi_center"] == "mean"
    assert PRESETS["default"].model.reducer["roi_center"] == "window"
    for key in ("model.reducer.nope", "model.nope.roi_center", "model.reducer.roi_center.upper"):
        with pytest.raises(KeyError, match="does not exist"):
            get_preset("default", {key: 1})
    # a ReducerConfig field the preset leaves at its default, checked as the config checks it
    spread = get_preset("default", {"model.reducer.roi_overlap_weight": 0.5})
    assert spread.model.reducer["roi_overlap_weight"] == 0.5
    assert "roi_overlap_weight" not in PRESETS["default"].model.reducer
    with pytest.raises(ValueError, match="roi_overlap_weight"):
        get_preset("default", {"model.reducer.roi_overlap_weight": 2.0})
    # the object stage's templates and rows, checked before any training
    assert get_preset("default", {"objects.steps": 10}).objects.steps == 10
    assert PRESETS["default"].objects.steps == 0  # off in the shipped recipe
    for key, value in (
        ("objects.template_weights", {"direction": 1.0}),
        ("objects.template_weights", {"count": 0.0}),
        ("objects.tokens_per_object", [2, 40]),
        ("objects.tokens_per_object", [0, 4]),
    ):
        with pytest.raises(ValueError, match=key):
            get_preset("default", {key: value})
    # "first" needs room for its objects' entries before the last rows
    first = {"objects.template_weights": {"count": 1.0, "first": 1.0}}
    assert get_preset("default", first).objects.template_weights["first"] == 1.0
    with pytest.raises(ValueError, match="first gap"):
        get_preset("default", {**first, "objects.visual_tokens": 64})
    # the moving average's decay, checked before the scorer stage's minutes
    assert get_preset("default", {"video.ema_decay": 0.998}).video.ema_decay == 0.998
    for decay in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"video\.ema_decay"):
            get_preset("default", {"video.ema_decay": decay})
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("nope")
    assert math.isclose(sum(e["weight"] for e in PRESETS["default"].video.reducer_mix), 1.0)
