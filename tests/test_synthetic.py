"""The synthetic video-QA world: seeds, pixels, the answer key, well-posedness, MC, the writer.

The answer checks recompute each template's answer from the rendered pixels (colours, pixel
centroids, first appearance, filled area) rather than from the generator's own bookkeeping.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import av
import numpy as np
import pytest
import torch

from vidllm.data.synthetic import (
    COLOR_RGB,
    COLORS,
    DIRECTIONS,
    LETTERS,
    SHAPES,
    TEMPLATES,
    QuestionSet,
    QuestionSetDataset,
    Scene,
    SceneObject,
    SyntheticVideoQA,
    WorldConfig,
    answer_space,
    collate,
    load_split,
    make_question,
    render,
    render_background,
    sample_question,
    split_rng,
    video_path,
    well_posed,
    write_split,
)
from vidllm.data.synthetic.__main__ import main as cli_main
from vidllm.reducer import uniform_frames

CONFIG = WorldConfig()
PALETTE = np.array([COLOR_RGB[c] for c in COLORS], dtype=np.float64)


@pytest.fixture(scope="module")
def test_set() -> QuestionSet:
    return QuestionSet.build("test", 334, 3, max_questions=1000)


@pytest.fixture(scope="module")
def train_items() -> list:
    data = SyntheticVideoQA("train", 600)
    return [data.item(i) for i in range(len(data))]


def nearest_color(rgb) -> str:
    return COLORS[int(np.argmin(np.linalg.norm(PALETTE - np.asarray(rgb, dtype=np.float64), axis=1)))]


def color_mask(frames: np.ndarray, color: str, tol: float = 60.0) -> np.ndarray:
    """Pixels (of one frame or many) within ``tol`` of ``color`` in RGB."""
    diff = frames.astype(np.int32) - np.array(COLOR_RGB[color], dtype=np.int32)
    return (diff * diff).sum(axis=-1) < tol * tol


def centre_pixel(obj: SceneObject, t: float, size: tuple[int, int]) -> tuple[int, int]:
    x, y = obj.position(t)
    return int(y * size[0]), int(x * size[1])


def one_object_scene(shape: str, size: float = 0.25, **overrides) -> Scene:
    obj = SceneObject(shape, "red", size, "right", 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, False, False)
    return Scene("probe", (replace(obj, **overrides),), background=(20, 20, 20))


# ----------------------------------------------------------------------------------------------
# seeds and splits
# ----------------------------------------------------------------------------------------------


def test_items_are_deterministic_per_index():
    a, b = SyntheticVideoQA("train", 50), SyntheticVideoQA("train", 50)
    for i in (0, 7, 49):
        sa, sb = a[i], b[i]
        assert np.array_equal(sa.frames, sb.frames)
        assert (sa.question, sa.answer, sa.meta) == (sb.question, sb.answer, sb.meta)
    assert a.item(3)[0] == b.item(3)[0]
    assert a.item(3)[0] != a.item(4)[0]
    assert QuestionSet.build("test", 12).questions == QuestionSet.build("test", 12).questions


def test_splits_draw_from_disjoint_streams(test_set, train_items):
    draws = {s: split_rng(s, 5).integers(2**62, size=4).tolist() for s in ("train", "validation", "test")}
    assert len({tuple(v) for v in draws.values()}) == 3
    key = lambda scene: tuple((o.shape, o.color, round(o.x0, 9), round(o.start, 9)) for o in scene.objects)
    train = {key(scene) for scene, _, _ in train_items}
    validation = {key(s) for s in QuestionSet.build("validation", 200).scenes}
    test = {key(s) for s in test_set.scenes}
    assert len(test) == len(test_set.scenes)
    assert not train & test
    assert not validation & test
    assert not train & validation
    with pytest.raises(ValueError, match="unknown split"):
        split_rng("dev", 0)


def test_smaller_sets_are_prefixes(test_set):
    small = QuestionSet.build("test", 20, 3)
    assert small.questions == test_set.questions[: len(small.questions)]
    assert small.scenes == test_set.scenes[:20]


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(96, 96), (64, 112), (80, 48)])
def test_pixels_match_the_scene(train_items, size):
    """Object colour at its centre while on screen; elsewhere exactly the background."""
    num_frames = 40
    times = np.arange(num_frames) / num_frames
    h, w = size
    for scene, _, _ in train_items[:40]:
        frames = render(scene, num_frames, size)
        assert frames.shape == (num_frames, h, w, 3)
        assert frames.dtype == np.uint8
        background = render_background(scene, size)
        for f, t in enumerate(times):
            covered = np.zeros((h, w), dtype=bool)
            for obj in scene.objects:
                if not obj.visible(t):
                    continue
                x0, y0, x1, y1 = obj.box(t)
                covered[
                    max(0, int(y0 * h) - 1) : int(y1 * h) + 2, max(0, int(x0 * w) - 1) : int(x1 * w) + 2
                ] = True
                pixel = frames[f][centre_pixel(obj, t, size)]
                if obj.radius * min(h, w) >= 4:  # well inside: the exact colour
                    assert tuple(pixel) == COLOR_RGB[obj.color]
                else:  # a tiny shape's centre pixel may be partly covered
                    assert nearest_color(pixel) == obj.color
            # Outside the boxes of the objects on screen (so also where absent objects would be).
            assert np.array_equal(frames[f][~covered], background[~covered])


def test_same_time_renders_the_same_frame_at_any_frame_count(train_items):
    for scene, _, _ in train_items[:10]:
        assert np.array_equal(render(scene, 25, 64), render(scene, 100, 64)[::4])


# Areas of the unit shapes: circle pi, square 4, triangle (base 2, height 2) 2, and the star with
# inner radius 0.5: ten triangles of sides 1 and 0.5 at 36 degrees.
UNIT_AREA = {
    "circle": math.pi,
    "square": 4.0,
    "triangle": 2.0,
    "star": 10 * 0.5 * 0.5 * math.sin(math.pi / 5),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_rasterised_area_matches_the_geometry(shape):
    frame = render(one_object_scene(shape, size=0.5), 1, 200)[0].astype(np.float64)
    red, bg = np.array(COLOR_RGB["red"], float), np.array((20.0, 20.0, 20.0))
    coverage = ((frame - bg) @ (red - bg)) / ((red - bg) @ (red - bg))
    radius_px = 0.25 * 200
    assert coverage.sum() == pytest.approx(UNIT_AREA[shape] * radius_px**2, rel=0.02)
    assert coverage.min() > -0.01
    assert coverage.max() < 1.01


def test_annotations_locate_the_objects(train_items):
    for scene, _, _ in train_items[:20]:
        frames = render(scene, 20, (60, 90))
        for frame, objects in zip(frames, scene.annotations(20)):
            on_screen = {c for c in COLORS if color_mask(frame, c, tol=30).any()}
            assert on_screen == {name.split(" ")[0] for name, _ in objects}
            for name, (x0, y0, x1, y1) in objects:
                ys, xs = np.nonzero(color_mask(frame, name.split(" ")[0], tol=30))
                assert x0 * 90 - 1 <= xs.min()
                assert xs.max() <= x1 * 90 + 1
                assert y0 * 60 - 1 <= ys.min()
                assert ys.max() <= y1 * 60 + 1


def test_scene_serialises_exactly(train_items):
    for scene, _, _ in train_items[:5]:
        again = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
        assert again == scene
        assert np.array_equal(render(again, 10, 48), render(scene, 10, 48))


# ----------------------------------------------------------------------------------------------
# the answer key, recomputed from pixels
# ----------------------------------------------------------------------------------------------


def measured_shape(scene: Scene, index: int) -> str:
    """Classify a shape by the share of its bounding box it fills, rendered alone and large."""
    obj, side = scene.objects[index], 240
    x, y = (float(v) for v in obj.position((obj.start + obj.end) / 2))
    alone = replace(obj, start=0.0, end=1.0, x0=x, y0=y, x1=x, y1=y)
    frame = render(replace(scene, objects=(alone,), noise=0.0, ramp=0.0), 1, side)[0]
    fill = color_mask(frame, obj.color).sum() / (obj.size * side) ** 2
    ratios = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "star": UNIT_AREA["star"] / 4}
    return min(ratios, key=lambda s: abs(ratios[s] - fill))


def recompute_answer(scene: Scene, template: str, slots: dict) -> str:
    num_frames, size = 100, (96, 96)
    frames = render(scene, num_frames, size)
    times = np.arange(num_frames) / num_frames

    shapes = [measured_shape(scene, i) for i in range(len(scene.objects))]

    def find(color=None, shape=None) -> int:
        found = [
            i for i, o in enumerate(scene.objects) if color in (None, o.color) and shape in (None, shapes[i])
        ]
        assert len(found) == 1, f"{template} {slots} is ambiguous"
        return found[0]

    def on_screen(color: str) -> np.ndarray:
        return color_mask(frames, color, tol=40).sum(axis=(1, 2)) >= 4

    if template == "color":
        obj = scene.objects[find(shape=slots["shape"])]
        f = int(np.flatnonzero(obj.visible(times))[0])
        return nearest_color(frames[f][centre_pixel(obj, times[f], size)])
    if template == "shape":
        return shapes[find(color=slots["color"])]
    if template == "direction":
        color = slots["color"]
        find(color=color, shape=slots["shape"])
        visible = np.flatnonzero(on_screen(color))
        centroids = []
        for f in (visible[0], visible[-1]):
            ys, xs = np.nonzero(color_mask(frames[f], color))
            centroids.append((xs.mean(), ys.mean()))
        dx, dy = np.subtract(centroids[1], centroids[0])
        if abs(dx) > abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"
    if template == "count":
        return str(shapes.count(slots["shape"]))
    if template == "first":
        firsts = {}
        for name in (slots["a"], slots["b"]):
            color, shape = name.split(" ")
            find(color=color, shape=shape)
            firsts[name] = int(np.argmax(on_screen(color)))
        return min(firsts, key=firsts.get)
    raise AssertionError(template)


def test_answers_recomputed_from_pixels(test_set, train_items):
    questions = [(q, test_set.scene(q.video_id)) for q in test_set.questions[:45]]
    questions += [(q, s) for s, q, _ in train_items[:45]]
    seen = Counter()
    for q, scene in questions:
        assert recompute_answer(scene, q.template, q.slots) == q.answer, q.question
        seen[q.template] += 1
    assert set(seen) == set(TEMPLATES)


# ----------------------------------------------------------------------------------------------
# well-posedness, tags and the world's invariants, over many seeds
# ----------------------------------------------------------------------------------------------


def check_question(scene: Scene, q) -> None:
    objs = scene.objects
    described = Counter(o.description for o in objs)
    if q.template == "color":
        assert sum(o.shape == q.slots["shape"] for o in objs) == 1
    elif q.template == "shape":
        assert sum(o.color == q.slots["color"] for o in objs) == 1
    elif q.template == "direction":
        assert described[f"{q.slots['color']} {q.slots['shape']}"] == 1
    elif q.template == "count":
        assert q.answer == str(sum(o.shape == q.slots["shape"] for o in objs))
        assert len(q.subjects) == int(q.answer)
    elif q.template == "first":
        assert described[q.slots["a"]] == described[q.slots["b"]] == 1
        assert q.slots["a"] != q.slots["b"]
        a, b = (next(o for o in objs if o.description == q.slots[k]) for k in "ab")
        assert abs(a.start - b.start) >= CONFIG.first_gap
    assert q.question == TEMPLATES[q.template].format(**q.slots)
    assert q.answer in answer_space(q.template)
    subjects = [objs[i] for i in q.subjects]
    assert q.short_lived == any(o.short_lived for o in subjects)
    assert q.small == any(o.small for o in subjects)
    assert q.windows == tuple((o.start, o.end) for o in subjects)


def check_scene(scene: Scene) -> None:
    objs = scene.objects
    assert 1 <= len(objs) <= CONFIG.max_objects
    assert len({o.color for o in objs}) == len(objs)  # a colour names one object
    for o in objs:
        length = o.end - o.start
        assert 0 <= o.start < o.end <= 1
        assert length >= CONFIG.min_window - 1e-12
        assert o.short_lived == (length <= CONFIG.short_window)
        assert o.short_lived or length >= CONFIG.long_window
        assert CONFIG.min_size <= o.size <= CONFIG.max_size
        assert o.small == (o.size <= CONFIG.small_size)
        for t in (o.start, o.end):  # inside the frame for the whole window
            x0, y0, x1, y1 = o.box(t)
            assert x0 > 0
            assert y0 > 0
            assert x1 < 1
            assert y1 < 1
        dx, dy = o.x1 - o.x0, o.y1 - o.y0
        assert DIRECTIONS[int(np.argmax([-dx, dx, -dy, dy]))] == o.direction
        assert max(abs(dx), abs(dy)) >= CONFIG.min_displacement
        assert min(abs(dx), abs(dy)) == 0
    t = np.linspace(0, 1, 401)
    for i, a in enumerate(objs):  # no two objects on screen together ever touch
        for b in objs[i + 1 :]:
            both = a.visible(t) & b.visible(t)
            (ax, ay), (bx, by) = a.position(t[both]), b.position(t[both])
            gap = a.radius + b.radius
            assert not np.any((np.abs(ax - bx) < gap) & (np.abs(ay - by) < gap))
    assert min(np.linalg.norm(PALETTE - scene.background, axis=1)) >= CONFIG.min_background_distance


def test_every_question_is_well_posed(test_set, train_items):
    for scene in test_set.scenes:
        check_scene(scene)
    for q in test_set.questions:
        check_question(test_set.scene(q.video_id), q)
    for scene, q, _ in train_items:
        check_scene(scene)
        check_question(scene, q)
    asked = Counter((q.video_id, q.template, frozenset(q.slots.values())) for q in test_set.questions)
    assert max(asked.values()) == 1  # never the same question twice about one video
    ids = [q.question_id for q in test_set.questions]
    assert len(set(ids)) == len(ids) == 1000


def test_enumerated_questions_are_well_posed(train_items):
    for scene, _, _ in train_items[:100]:
        posed = well_posed(scene, CONFIG)
        assert sum(t == "count" for t, *_ in posed) == len(SHAPES)  # always askable
        for template, slots, answer, subjects in posed:
            q = make_question(np.random.default_rng(0), scene, template, slots, CONFIG)
            assert (q.answer, q.subjects) == (answer, subjects)
            check_question(scene, q)


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_targeted_sampling_gives_the_requested_answer_and_tags(template):
    for i, answer in enumerate(answer_space(template) * 2):
        for short_lived, small in ((True, False), (False, True), (False, False)):
            rng = np.random.default_rng([i, short_lived, small])
            scene, q = sample_question(rng, CONFIG, template, answer, short_lived=short_lived, small=small)
            assert q.answer == answer
            check_scene(scene)
            check_question(scene, q)
            if q.subjects:  # a count of 0 is about nothing
                assert (q.short_lived, q.small) == (short_lived, small)
    with pytest.raises(ValueError, match="not an answer"):
        sample_question(np.random.default_rng(0), CONFIG, template, "maybe")


def test_short_lived_subjects_are_seen_only_in_their_window_and_missed_by_sparse_uniform_sampling(test_set):
    """The design contract: a selector can find every short-lived subject among 50 frames
    (it is on screen in >= 2 of them), while 4 uniform frames miss most of them."""
    times = np.arange(50) / 50
    uniform4 = uniform_frames(50, 4)
    short = [q for q in test_set.questions if q.short_lived]
    assert len(short) >= 250
    seen_by_uniform = 0
    for q in short:
        scene = test_set.scene(q.video_id)
        tagged = [scene.objects[i] for i in q.subjects if scene.objects[i].short_lived]
        for o in tagged:
            assert o.visible(times).sum() >= 2
            assert not o.visible(times[~o.visible(times)]).any()
        seen_by_uniform += all(o.visible(times[uniform4]).any() for o in tagged)
    assert seen_by_uniform / len(short) < 0.5


# ----------------------------------------------------------------------------------------------
# balance and multiple choice
# ----------------------------------------------------------------------------------------------


def test_fixed_set_is_balanced(test_set):
    summary = test_set.summary()
    assert summary["questions"] == 1000
    assert summary["videos"] == 334
    assert all(190 <= n <= 210 for n in summary["templates"].values()), summary["templates"]
    for template, answers in summary["answers"].items():
        assert set(answers) == set(answer_space(template)), template
        assert max(answers.values()) <= 1.3 * min(answers.values()), (template, answers)
    assert summary["short_lived_share"] == pytest.approx(CONFIG.short_lived_share, abs=0.02)
    assert summary["small_share"] == pytest.approx(CONFIG.small_share, abs=0.02)
    first = [q for q in test_set.questions if q.template == "first"]
    named_first = sum(q.slots["a"] == q.answer for q in first) / len(first)
    assert 0.4 <= named_first <= 0.6  # the answer is not simply the object named first


def test_training_items_are_balanced(train_items):
    templates = Counter(q.template for _, q, _ in train_items)
    assert set(templates) == set(TEMPLATES)
    assert min(templates.values()) >= 80
    directions = Counter(q.answer for _, q, _ in train_items if q.template == "direction")
    assert set(directions) == set(DIRECTIONS)
    assert min(directions.values()) >= 15
    shares = np.mean([[q.short_lived, q.small, mc] for _, q, mc in train_items], axis=0)
    assert shares[0] == pytest.approx(0.3, abs=0.06)
    assert shares[1] == pytest.approx(0.3, abs=0.08)
    assert shares[2] == pytest.approx(0.5, abs=0.06)


def test_multiple_choice_options(test_set, train_items):
    import re

    letters = Counter()
    questions = test_set.questions + [q for _, q, _ in train_items]
    for q in questions:
        expected = 2 if q.template == "first" else 4
        assert len(q.options) == expected
        assert len(set(q.options)) == expected
        assert q.options.count(q.answer) == 1
        assert all(o in answer_space(q.template) for o in q.options)
        assert q.options[LETTERS.index(q.answer_letter)] == q.answer
        # The documented format: the question, then " (A) option (B) option ...".
        parsed = re.findall(r"\(([A-D])\) (.+?)(?= \([A-D]\) |$)", q.mc_question[len(q.question) :])
        assert q.mc_question.startswith(q.question + " (A) ")
        assert [p[1] for p in parsed] == list(q.options)
        assert "".join(p[0] for p in parsed) == LETTERS[:expected]
        if expected == 4:
            letters[q.answer_letter] += 1
    assert min(letters.values()) / max(letters.values()) > 0.75, letters


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------


def test_training_dataset_samples():
    data = SyntheticVideoQA("train", 40, num_frames=30, size=(48, 64), mc_share=0.5)
    samples = [data[i] for i in range(len(data))]
    for index, s in enumerate(samples):
        frames, timestamps, question, answer, meta = s
        assert frames.shape == (30, 48, 64, 3)
        assert frames.dtype == np.uint8
        assert np.allclose(timestamps, np.arange(30) / 30 * CONFIG.duration)
        scene, q, mc = data.item(index)
        assert meta["mc"] == mc
        assert meta["template"] == q.template
        assert question == (q.mc_question if mc else q.question)
        assert answer == (q.answer_letter if mc else q.answer)
        for obj, visible, (start, end) in zip(
            (scene.objects[i] for i in q.subjects), meta["visible_frames"], meta["windows"]
        ):
            assert visible == [i for i, t in enumerate(timestamps) if start <= t < end]
            for f in visible:  # the subject's colour is at its centre in exactly those frames
                t = f / 30
                assert nearest_color(frames[f][centre_pixel(obj, t, (48, 64))]) == obj.color
    assert {s.meta["mc"] for s in samples} == {True, False}
    batch = collate(samples[:4])
    assert batch["frames"].shape == (4, 30, 48, 64, 3)
    assert batch["frames"].dtype == torch.uint8
    assert batch["timestamps"].shape == (4, 30)
    assert len(batch["meta"]) == 4
    loader = torch.utils.data.DataLoader(data, batch_size=5, collate_fn=collate)
    assert len(list(loader)) == 8
    with pytest.raises(IndexError):
        data[40]


def test_question_set_dataset_follows_the_set():
    data = QuestionSetDataset.build("validation", num_videos=5, num_frames=20, size=(32, 32), mc=True)
    assert len(data) == 15
    for i in range(len(data)):
        s, q = data[i], data.question_set.questions[i]
        assert (s.question, s.answer, s.meta["question_id"]) == (
            q.mc_question,
            q.answer_letter,
            q.question_id,
        )
        assert np.array_equal(s.frames, render(data.question_set.scene(q.video_id), 20, (32, 32)))
        s.frames[:] = 0  # a consumer writing into its frames does not change the next sample
    assert data[1].frames.any()


# ----------------------------------------------------------------------------------------------
# the writer
# ----------------------------------------------------------------------------------------------


def decode(path) -> tuple[np.ndarray, list[float]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        frames = list(container.decode(stream))
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [float(f.time) for f in frames]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    dirs = [tmp_path_factory.mktemp(f"split{i}") for i in range(2)]
    kwargs = dict(num_videos=6, questions_per_video=3, max_questions=None, size=(64, 80), fps=8, seconds=2.5)
    manifests = [write_split(d, "test", **kwargs) for d in dirs]
    return dirs, manifests


def test_writer_is_deterministic(written):
    (a, b), (ma, mb) = written
    assert ma == mb
    for name in (
        "synthetic_qa_questions.json",
        "synthetic_qa_answers.json",
        "synthetic_mc.json",
        "scenes.json",
    ):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for video in sorted((a / "videos").iterdir()):
        assert np.array_equal(decode(video)[0], decode(b / "videos" / video.name)[0])


def test_writer_layouts_and_pixels(written):
    (out, _), (manifest, _) = written
    manifest2, questions, answers, mc = load_split(out)
    assert manifest2 == manifest
    assert manifest["num_frames"] == 20
    assert len(questions) == 18
    qset = QuestionSet.build("test", 6, 3, replace(CONFIG, duration=2.5))
    for qa, ans, item, q in zip(questions, answers, mc, qset.questions):
        assert set(qa) == {"video_name", "question", "question_id"}
        assert {"answer", "type", "question_id"} <= set(ans)
        assert {
            "video",
            "question",
            "candidates",
            "answer",
        } <= set(item)
        assert qa["question_id"] == ans["question_id"] == item["question_id"] == q.question_id
        assert (qa["question"], ans["answer"], ans["type"]) == (q.question, q.answer, q.template)
        assert (item["question"], item["candidates"], item["answer"]) == (
            q.question,
            list(q.options),
            q.answer,
        )
        assert item["prompt"] == q.mc_question
        assert item["answer_letter"] == q.answer_letter
        assert ans["windows"] == [[s * 2.5, e * 2.5] for s, e in q.windows]
        assert (ans["short_lived"], ans["small"]) == (q.short_lived, q.small)
        assert video_path(out, qa["video_name"]).exists()
        assert video_path(out, item["video"]).exists()
    for scene in qset.scenes:
        frames, times = decode(video_path(out, scene.video_id))
        assert frames.shape == (20, 64, 80, 3)
        assert np.allclose(times, np.arange(20) / 8)
        reference = render(scene, 20, (64, 80))
        assert np.abs(frames.astype(int) - reference).mean() < 6  # codec tolerance
        for f, t in enumerate(np.arange(20) / 20):
            for obj in scene.objects:
                if obj.visible(t) and obj.radius * 64 >= 4:
                    y, x = centre_pixel(obj, t, (64, 80))
                    patch = frames[f, y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(axis=0)
                    assert nearest_color(patch) == obj.color
                    assert np.abs(patch - COLOR_RGB[obj.color]).max() < 40


def test_written_windows_match_what_the_reader_decodes(written):
    """Through the project's reader: a subject is at its centre exactly in the frames whose
    timestamp falls in its written window (the rule the reducer's coverage checks use)."""
    from vidllm.video import read_video

    (out, _), _ = written
    _, _, answers, mc = load_split(out)
    scenes = {s["video_id"]: Scene.from_dict(s) for s in json.loads((out / "scenes.json").read_text())}
    checked = 0
    for ans, item in zip(answers, mc):
        video = read_video(video_path(out, item["video"]))
        assert np.array_equal(video.frames, decode(video_path(out, item["video"]))[0])
        scene = scenes[item["video"].removesuffix(".mp4")]
        by_name = {o.description: o for o in scene.objects}
        for name, (start, end) in zip(ans["subjects"], ans["windows"], strict=True):
            obj = by_name[name]
            if obj.radius * 64 < 4:
                continue
            for frame, ts in zip(video.frames, video.timestamps):
                # Where it is, or (outside its window) where it enters or leaves.
                x, y = obj.position(np.clip(ts / scene.duration, obj.start, obj.end))
                shown = bool(color_mask(frame[int(y * 64), int(x * 80)], obj.color, tol=50))
                assert shown == (start <= ts < end), (item["question_id"], obj.description, ts)
                checked += 1
    assert checked > 100


def test_cli_writes_a_split(tmp_path, capsys):
    assert (
        cli_main(
            [
                "write",
                "--out",
                str(tmp_path),
                "--num-videos",
                "2",
                "--size",
                "32x48",
                "--fps",
                "4",
                "--seconds",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "wrote 2 videos, 6 questions" in out
    assert "questions per template" in out
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2
    with pytest.raises(SystemExit):
        cli_main(["write", "--out", str(tmp_path), "--size", "33x48"])


def test_cli_show_stats_and_bench(capsys):
    assert cli_main(["show", "--num-videos", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert lines[0].startswith("synthetic_test_00000_q0")
    assert cli_main(["stats", "--num-videos", "40", "--max-questions", "120"]) == 0
    out = capsys.readouterr().out
    assert "120 questions" in out
    assert "short-lived" in out
    assert cli_main(["bench", "--items", "3", "--size", "32x32", "--num-frames", "10"]) == 0
    assert "whole item" in capsys.readouterr().out
