"""Training data from the synthetic world, deterministic per index, for both training stages.

Everything is drawn from the world's seeded streams (:func:`vidllm.data.synthetic.split_rng`),
so batch ``s`` of a run is a pure function of ``(seed, s)``: a resumed run sees exactly the data
the uninterrupted run would have seen, and ``k`` processes read disjoint slices of it.

- Stage 1 (:func:`scorer_batch`): frames of several scenes, texts (object descriptions and
  questions about those scenes, open and multiple choice), and for every frame-text pair whether
  a subject of the text is on screen, and how much of each cell of the score grid it covers.
- Stage 2 (:func:`video_batch`): videos rendered like the test split (96x96, 50 frames over 5 s),
  sampled to the model's frame count as the decoder samples a file (segment centres), each with
  a few questions: the item's targeted question (:func:`vidllm.data.synthetic.sample_item`,
  templates and answers uniform, subjects short-lived / small at the world's shares) and other
  well-posed questions about the same scene, so one pass of the vision tower serves several.

Test videos are H.264 (yuv420p): :func:`yuv420_roundtrip` reproduces its largest systematic
change, the halved chroma resolution, at a tiny fraction of an encode's cost; a real H.264 round
trip (``compress=True``) is available where its cost is affordable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vidllm.data.synthetic import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    TEMPLATES,
    Question,
    Scene,
    SceneObject,
    WorldConfig,
    make_question,
    render,
    sample_item,
    split_rng,
    well_posed,
)
from vidllm.data.synthetic.questions import candidate_slots, pose
from vidllm.reducer import uniform_frames

# ----------------------------------------------------------------------------------------------
# what a text is about
# ----------------------------------------------------------------------------------------------


def subject_predicate(template: str, slots: dict) -> Callable[[SceneObject], bool]:
    """Which objects a question (or a plain ``"object"`` description) is about, whatever the scene.

    The relevance the scorer learns: a frame is relevant to "What color is the star?" when a star
    is on screen, to "Which appears first, the A or the B?" when A or B is.
    """
    if template in ("color", "count"):
        return lambda o: o.shape == slots["shape"]
    if template == "shape":
        return lambda o: o.color == slots["color"]
    if template in ("direction", "object"):
        return lambda o: o.color == slots["color"] and o.shape == slots["shape"]
    if template == "first":
        names = {slots["a"], slots["b"]}
        return lambda o: o.description in names
    raise ValueError(f"unknown template {template!r}")


def cell_coverage(
    box: tuple[float, float, float, float],
    grid: tuple[int, int],
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
) -> np.ndarray:
    """``(h, w)``: the share of each cell (or of the box, when it is smaller) the box overlaps.

    The grid tiles ``region`` (fractions of the frame, ``(x0, y0, x1, y1)``: the whole frame, or
    the crop a reducer re-encoded). A small object inside one cell gives that cell 1; a large one
    gives 1 to the cells it fills.
    """
    h, w = grid
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in box)
    rx0, ry0, rx1, ry1 = region
    xs = rx0 + (rx1 - rx0) * np.arange(w + 1) / w
    ys = ry0 + (ry1 - ry0) * np.arange(h + 1) / h
    ox = np.clip(np.minimum(xs[1:], x1) - np.maximum(xs[:-1], x0), 0, None)
    oy = np.clip(np.minimum(ys[1:], y1) - np.maximum(ys[:-1], y0), 0, None)
    overlap = oy[:, None] * ox[None, :]
    cell_area = (rx1 - rx0) * (ry1 - ry0) / (h * w)
    area = min(cell_area, max((x1 - x0) * (y1 - y0), 1e-9))
    return np.clip(overlap / area, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------

_RGB_TO_YUV = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float32
)
_YUV_TO_RGB = np.linalg.inv(_RGB_TO_YUV).astype(np.float32)


def yuv420_roundtrip(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 with the chroma planes averaged over 2x2 blocks (H.264's yuv420p).

    The luma plane is kept, the two chroma planes are box-filtered to half size and repeated
    back: the colour bleeding a small object suffers in the encoded test videos.
    """
    _, h, w, _ = frames.shape
    yuv = frames.astype(np.float32) @ _RGB_TO_YUV.T
    hh, ww = h - h % 2, w - w % 2
    uv = yuv[:, :hh, :ww, 1:]
    mean = (uv[:, 0::2, 0::2] + uv[:, 1::2, 0::2] + uv[:, 0::2, 1::2] + uv[:, 1::2, 1::2]) * 0.25
    for dy in (0, 1):
        for dx in (0, 1):
            uv[:, dy::2, dx::2] = mean
    return np.clip(np.rint(yuv @ _YUV_TO_RGB.T), 0, 255).astype(np.uint8)


def augment(frames: np.ndarray, rng: np.random.Generator, yuv420_prob: float, compress_prob: float,
            fps: float) -> np.ndarray:  # fmt: skip
    """Chroma subsampling or a real H.264 round trip, at the given probabilities."""
    if compress_prob > 0 and rng.random() < compress_prob:
        from vidllm.data.synthetic.writer import h264_roundtrip

        return h264_roundtrip(frames, fps=fps)
    if yuv420_prob > 0 and rng.random() < yuv420_prob:
        return yuv420_roundtrip(frames)
    return frames


# ----------------------------------------------------------------------------------------------
# stage 1: frames and texts for the dual encoder
# ----------------------------------------------------------------------------------------------


@dataclass
class ScorerBatch:
    frames: np.ndarray  # (F, H, W, 3) uint8
    texts: list[str]  # T texts
    frame_labels: np.ndarray  # (F, T) float32: a subject of the text is on screen
    patch_labels: np.ndarray  # (F, T, h, w) float32: share of each cell a subject covers
    cell_colors: np.ndarray  # (F, h, w) int64: COLORS index of the object in the cell, len(COLORS) if none
    cell_shapes: np.ndarray  # (F, h, w) int64: SHAPES index, len(SHAPES) if none


def cell_attributes(
    visible: list[tuple[SceneObject, tuple[float, float, float, float]]], grid: tuple[int, int],
    min_coverage: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per cell, the colour and shape of the object covering it most (at least ``min_coverage``)."""
    owners = cell_owners([box for _, box in visible], grid, min_coverage=min_coverage)
    colors = np.array([COLORS.index(o.color) for o, _ in visible] + [len(COLORS)], dtype=np.int64)
    shapes = np.array([SHAPES.index(o.shape) for o, _ in visible] + [len(SHAPES)], dtype=np.int64)
    return colors[owners], shapes[owners]  # owner -1 picks the last entry: none


def cell_owners(
    boxes: Sequence[tuple[float, float, float, float]],
    grid: tuple[int, int],
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
    min_coverage: float = 0.3,
) -> np.ndarray:
    """``(h, w)`` int64: per cell of ``grid`` over ``region``, the index of the box covering it
    most (:func:`cell_coverage`, at least ``min_coverage``; a later box wins a tie), -1 if none."""
    owners = np.full(grid, -1, dtype=np.int64)
    best = np.full(grid, min_coverage, dtype=np.float64)
    for i, box in enumerate(boxes):
        coverage = cell_coverage(box, grid, region)
        owners[coverage >= best] = i
        best = np.maximum(best, coverage)
    return owners


def _text_pool(scene: Scene, rng: np.random.Generator, world: WorldConfig, mc_prob: float) -> list[tuple]:
    """``(text, template, slots)`` candidates about a scene: its questions and object descriptions."""
    pool = []
    for template, slots in candidate_slots(scene):
        text = TEMPLATES[template].format(**slots)
        if rng.random() < mc_prob and pose(scene, template, slots, world) is not None:
            text = make_question(rng, scene, template, slots, world).mc_question  # ill-posed: open only
        pool.append((text, template, slots))
    for obj in scene.objects:
        pool.append((obj.description, "object", {"color": obj.color, "shape": obj.shape}))
    return pool


def scorer_batch(
    step: int,
    *,
    seed: int,
    scenes: int,
    frames_per_scene: int,
    texts: int,
    grid: tuple[int, int],
    size: tuple[int, int] = (96, 96),
    num_frames: int = 50,
    mc_prob: float = 0.3,
    yuv420_prob: float = 0.5,
    world: WorldConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> ScorerBatch:
    """Stage 1's batch ``step`` (for process ``rank`` of ``world_size``).

    Half the texts are about the batch's scenes (questions of every template, some in their
    multiple-choice form, and object descriptions), half are descriptions and questions about
    random objects, which are mostly negatives; labels follow :func:`subject_predicate`.
    """
    world = world or WorldConfig()
    rng = np.random.default_rng([seed, 1, step, rank])
    frames, visible_sets, pool = [], [], []
    for s in range(scenes):
        index = (step * world_size + rank) * scenes + s
        scene_rng = split_rng("train", index, seed)
        scene, _ = sample_item(scene_rng, world, video_id=f"scorer_{index}")
        video = render(scene, num_frames, size)
        # Half the frames anywhere, half where a short-lived object is on screen (if any).
        times = scene.frame_times(num_frames)
        short = [
            i for i in range(num_frames) if any(o.short_lived and o.visible(times[i]) for o in scene.objects)
        ]
        picks = [int(i) for i in rng.choice(num_frames, size=frames_per_scene, replace=False)]
        if short:
            for j in range(frames_per_scene // 2):
                picks[j] = int(short[int(rng.integers(len(short)))])
        video = augment(video[picks], rng, yuv420_prob, 0.0, num_frames / scene.duration)
        for k, f in enumerate(picks):
            frames.append(video[k])
            t = float(times[f])
            visible_sets.append([(o, o.box(t)) for o in scene.objects if o.visible(t)])
        pool.extend(_text_pool(scene, rng, world, mc_prob))
    chosen = [pool[int(i)] for i in rng.choice(len(pool), size=min(texts // 2, len(pool)), replace=False)]
    while len(chosen) < texts:  # random objects: mostly negatives, sometimes matching by chance
        color, shape = COLORS[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(len(SHAPES)))]
        kind = int(rng.integers(5))
        if kind == 0:
            chosen.append((f"{color} {shape}", "object", {"color": color, "shape": shape}))
        elif kind == 1:
            chosen.append((TEMPLATES["color"].format(shape=shape), "color", {"shape": shape}))
        elif kind == 2:
            chosen.append((TEMPLATES["shape"].format(color=color), "shape", {"color": color}))
        elif kind == 3:
            slots = {"color": color, "shape": shape}
            chosen.append((TEMPLATES["direction"].format(**slots), "direction", slots))
        else:
            chosen.append((TEMPLATES["count"].format(shape=shape), "count", {"shape": shape}))
    predicates = [subject_predicate(template, slots) for _, template, slots in chosen]
    frame_labels = np.zeros((len(frames), len(chosen)), dtype=np.float32)
    patch_labels = np.zeros((len(frames), len(chosen), *grid), dtype=np.float32)
    for f, visible in enumerate(visible_sets):
        for obj, box in visible:
            coverage = None
            for t, predicate in enumerate(predicates):
                if predicate(obj):
                    frame_labels[f, t] = 1.0
                    coverage = cell_coverage(box, grid) if coverage is None else coverage
                    np.maximum(patch_labels[f, t], coverage, out=patch_labels[f, t])
    attributes = [cell_attributes(visible, grid) for visible in visible_sets]
    return ScorerBatch(
        np.stack(frames),
        [c[0] for c in chosen],
        frame_labels,
        patch_labels,
        np.stack([a[0] for a in attributes]),
        np.stack([a[1] for a in attributes]),
    )


# ----------------------------------------------------------------------------------------------
# stage 2: videos and questions for the video LLM
# ----------------------------------------------------------------------------------------------


@dataclass
class QA:
    prompt: str  # the question as asked (open, or with its options)
    target: str  # the answer the LM must write
    question: Question
    mc: bool


@dataclass
class TrainVideo:
    frames: np.ndarray  # (N, H, W, 3) uint8, the sampled frames
    timestamps: list[float]  # seconds
    scene: Scene
    questions: list[QA] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # normalised scene time of each sampled frame

    def subject_boxes(self, qa: QA, frame: int) -> list[tuple[float, float, float, float]]:
        """Boxes of the question's subjects on screen in sampled frame ``frame``."""
        t = self.times[frame]
        subjects = (self.scene.objects[i] for i in qa.question.subjects)
        return [o.box(t) for o in subjects if o.visible(t)]

    def subject_coverage(self, qa: QA, segments) -> np.ndarray:
        """:func:`cell_coverage` of the question's subjects on screen, the most of any subject,
        for every token of a reduction's ``segments`` in order (each segment's grid tiles its RoI
        box, or the whole frame): the relevance targets of a reduction's visual tokens."""
        labels = []
        for segment in segments:
            coverage = np.zeros(segment.grid, dtype=np.float32)
            region = segment.box or (0.0, 0.0, 1.0, 1.0)
            for box in self.subject_boxes(qa, segment.frame):
                np.maximum(coverage, cell_coverage(box, segment.grid, region), out=coverage)
            labels.append(coverage.ravel())
        return np.concatenate(labels)

    def object_attributes(
        self, segments, min_coverage: float = 0.3, count: str = "scene", new_objects: bool = False
    ) -> np.ndarray:
        """``(N, len(attribute_columns(new_objects)))`` int64: per token of a reduction's
        ``segments``, the scene-graph attributes of the object covering its cell most (at least
        ``min_coverage``): targets of the trainer's attribute loss (:func:`attribute_columns`
        lists the columns).

        A token showing no object gets each attribute's "none" class (the last) for colour and
        shape and ``-100`` (ignored) for the rest.

        ``count`` picks the same-shape count column: ``"scene"``, the objects of the token's shape
        in the whole scene, less one; ``"seen"``, those shown by this token or an earlier one in
        the sequence, less one: what a causal LM can know at that token (the scene's count is
        then on the last token of each shape).

        ``new_objects`` adds a last column: 1 on the first token in the sequence that shows each
        object, 0 on its later tokens. A causal LM can know it at every token (no earlier token
        shows the same colour and shape, one object a colour), and the objects of a shape are then
        counted as its flagged tokens, however many tokens each object has.
        """
        if count not in ATTRIBUTE_COUNTS:
            raise ValueError(f"count must be one of {ATTRIBUTE_COUNTS}, got {count!r}")
        objects = self.scene.objects
        shape_counts = {shape: sum(o.shape == shape for o in objects) for shape in SHAPES}
        rows = []
        for segment in segments:
            t = self.times[segment.frame]
            shown = [i for i, obj in enumerate(objects) if obj.visible(t)]
            owner = cell_owners(
                [objects[i].box(t) for i in shown], segment.grid, segment.box or (0.0, 0.0, 1.0, 1.0),
                min_coverage,
            )  # fmt: skip
            rows.append(np.array([*shown, -1], dtype=np.int64)[owner.ravel()])
        owners = np.concatenate(rows)
        table = np.array(
            [
                [
                    COLORS.index(o.color),
                    SHAPES.index(o.shape),
                    DIRECTIONS.index(o.direction),
                    min(int(o.start * START_BINS), START_BINS - 1),
                    shape_counts[o.shape] - 1,
                ]
                for o in objects
            ]
            + [[len(COLORS), len(SHAPES), -100, -100, -100]],
            dtype=np.int64,
        )
        attributes = table[owners]  # owner -1 picks the last row: no object
        if count == "seen":
            seen: set[int] = set()
            for k, owner in enumerate(owners.tolist()):
                if owner >= 0:
                    seen.add(owner)
                    attributes[k, -1] = sum(objects[j].shape == objects[owner].shape for j in seen) - 1
        if new_objects:
            new = np.full((len(owners), 1), -100, dtype=np.int64)
            on_object = owners >= 0
            new[on_object] = 0
            _, first = np.unique(owners[on_object], return_index=True)
            new[np.flatnonzero(on_object)[first]] = 1
            attributes = np.concatenate([attributes, new], axis=1)
        return attributes


# The attribute loss's columns and their class counts. The first WITH_NONE columns (colour and
# shape) have a "none" class, asked of every token; the rest are -100 (ignored) on a token that
# shows no object, so a column past them tells object tokens from the others.
START_BINS = 8
WITH_NONE = 2
ATTRIBUTE_COUNTS = ("scene", "seen")  # what the same-shape count column counts (object_attributes)
OBJECT_ATTRIBUTES = {
    "color": len(COLORS) + 1,
    "shape": len(SHAPES) + 1,
    "direction": len(DIRECTIONS),
    "start": START_BINS,
    "same_shape_count": len(COLORS),  # at most one object per colour
}


def attribute_columns(new_objects: bool = False) -> dict[str, int]:
    """The attribute loss's columns and their class counts: :data:`OBJECT_ATTRIBUTES`, and with
    ``new_objects`` whether the token is its object's first in the sequence
    (:meth:`TrainVideo.object_attributes`)."""
    return {**OBJECT_ATTRIBUTES, "new_object": 2} if new_objects else dict(OBJECT_ATTRIBUTES)


def balanced_pick(rng: np.random.Generator, candidates: Sequence[tuple], asked: set[str]) -> tuple:
    """One of ``(template, slots, answer, subjects)`` candidates: a template uniformly among those
    not in ``asked`` (among all when every one is), then an answer uniformly among that
    template's, then a candidate with it."""
    templates = sorted({c[0] for c in candidates})
    templates = [t for t in templates if t not in asked] or templates
    template = templates[int(rng.integers(len(templates)))]
    answers = sorted({c[2] for c in candidates if c[0] == template})
    answer = answers[int(rng.integers(len(answers)))]
    matching = [c for c in candidates if c[0] == template and c[2] == answer]
    return matching[int(rng.integers(len(matching)))]


def video_item(
    index: int,
    *,
    seed: int,
    num_frames: int,
    questions: int,
    mc_share: float,
    size: tuple[int, int] = (96, 96),
    source_frames: int = 50,
    yuv420_prob: float = 0.5,
    compress_prob: float = 0.0,
    world: WorldConfig | None = None,
    balanced_extras: bool = False,
    template_weights: Mapping[str, float] | None = None,
) -> TrainVideo:
    """Training video ``index``: the targeted item and up to ``questions - 1`` more about its scene.

    The targeted item's template is drawn uniformly, or by ``template_weights``
    (:func:`~vidllm.data.synthetic.questions.sample_item`).

    The further questions are drawn from every well-posed question about the scene: uniformly
    (``balanced_extras=False``), which asks mostly ``count`` (one candidate per shape) and mostly
    about absent shapes (answer 0); or with the template drawn uniformly among those the video
    has not been asked yet, then the answer uniformly among that template's, as the primary
    question's template and answer are (:func:`balanced_pick`).
    """
    world = world or WorldConfig()
    rng = split_rng("train", index, seed)
    video_id = f"synthetic_train_{index:07d}"
    scene, primary = sample_item(
        rng, world, video_id=video_id, question_id=f"{video_id}_q0", template_weights=template_weights
    )
    asked = [primary]
    key = lambda template, slots: (template, frozenset(slots.values()))
    seen = {key(primary.template, primary.slots)}
    extra = [c for c in well_posed(scene, world) if key(c[0], c[1]) not in seen]
    if balanced_extras:
        while extra and len(asked) < questions:
            template, slots = balanced_pick(rng, extra, {q.template for q in asked})[:2]
            extra = [c for c in extra if key(c[0], c[1]) != key(template, slots)]
            asked.append(make_question(rng, scene, template, slots, world, f"{video_id}_q{len(asked)}"))
    else:
        for i in rng.permutation(len(extra)):
            if len(asked) >= questions:
                break
            template, slots = extra[int(i)][:2]
            if key(template, slots) in seen:
                continue
            seen.add(key(template, slots))
            asked.append(make_question(rng, scene, template, slots, world, f"{video_id}_q{len(asked)}"))
    video = render(scene, source_frames, size)
    keep = uniform_frames(source_frames, num_frames)
    if compress_prob > 0 and rng.random() < compress_prob:  # the codec sees the whole video
        video = augment(video, rng, 0.0, 1.0, source_frames / scene.duration)
    else:  # per-frame chroma subsampling: only the kept frames need it
        video = video.copy()
        video[keep] = augment(video[keep], rng, yuv420_prob, 0.0, source_frames / scene.duration)
    stamps = scene.timestamps(source_frames)
    qas = []
    for q in asked:
        mc = bool(rng.random() < mc_share)
        qas.append(QA(q.prompt(mc), q.target(mc), q, mc))
    times = scene.frame_times(source_frames)
    return TrainVideo(
        video[keep], [float(stamps[i]) for i in keep], scene, qas, [float(times[i]) for i in keep]
    )


def video_batch(step: int, *, videos: int, rank: int = 0, world_size: int = 1, **kwargs) -> list[TrainVideo]:
    """Stage 2's batch ``step`` for process ``rank``: ``videos`` consecutive items of its slice."""
    first = (step * world_size + rank) * videos
    return [video_item(first + v, **kwargs) for v in range(videos)]


def question_sets_balance(items: Sequence[TrainVideo]) -> dict[str, int]:
    """Questions per template in some items (for logs)."""
    counts: dict[str, int] = {}
    for item in items:
        for qa in item.questions:
            counts[qa.question.template] = counts.get(qa.question.template, 0) + 1
    return counts


__all__ = [
    "ATTRIBUTE_COUNTS",
    "QA",
    "ScorerBatch",
    "TrainVideo",
    "augment",
    "balanced_pick",
    "cell_attributes",
    "cell_coverage",
    "question_sets_balance",
    "scorer_batch",
    "subject_predicate",
    "video_batch",
    "video_item",
    "yuv420_roundtrip",
]
