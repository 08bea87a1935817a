"""Questions about synthetic scenes: templates, the answer key, targeted sampling and balancing.

Templates (the model must answer exactly these; more may be added to ``TEMPLATES``):

==========  ===================================================================  ================
name        question                                                             answer
==========  ===================================================================  ================
color       ``What color is the {shape}?``                                       a colour
shape       ``What shape is the {color} object?``                                a shape
direction   ``Which direction does the {color} {shape} move?``                   left/right/up/down
count       ``How many {shape}s appear in the video?``                           a digit 0-4
first       ``Which appears first, the {color} {shape} or the {color} {shape}?`` ``{color} {shape}``
==========  ===================================================================  ================

A question is asked only when it is well posed for its scene: ``color`` when exactly one object
of the shape appears in the whole video, ``shape`` and ``direction`` when exactly one object has
the colour (and shape), ``first`` when both objects are unique and their appearance times are at
least ``WorldConfig.first_gap`` apart; ``count`` counts every object of the shape that appears at
any time (objects enter and leave), so it is always well posed.

Multiple choice: the same question with its options appended on the same line,
``"{question} (A) {option} (B) {option} (C) {option} (D) {option}"`` (see :data:`MC_FORMAT`);
the answer is the letter. There are four options, the answer and three distractors drawn from the
template's answer space, except for ``first``, whose options are the two objects it names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from vidllm.data.synthetic.scene import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    ObjectRequest,
    Scene,
    WorldConfig,
    sample_scene,
    sample_window,
    split_rng,
)

TEMPLATES: dict[str, str] = {
    "color": "What color is the {shape}?",
    "shape": "What shape is the {color} object?",
    "direction": "Which direction does the {color} {shape} move?",
    "count": "How many {shape}s appear in the video?",
    "first": "Which appears first, the {a} or the {b}?",
}
LETTERS = "ABCD"
MC_FORMAT = "{question} (A) {0} (B) {1} (C) {2} (D) {3}"
"""How a multiple-choice question reads: the open question, a space, then ``(LETTER) option``
pairs separated by single spaces, as many as there are options (two for ``first``)."""


def answer_space(template: str, config: WorldConfig | None = None) -> tuple[str, ...]:
    """Every answer ``template`` can have (what distractors and balancing draw from)."""
    max_objects = (config or WorldConfig()).max_objects
    spaces = {
        "color": COLORS,
        "shape": SHAPES,
        "direction": DIRECTIONS,
        "count": tuple(str(k) for k in range(max_objects + 1)),
        "first": tuple(f"{c} {s}" for c in COLORS for s in SHAPES),
    }
    if template not in spaces:
        raise ValueError(f"unknown template {template!r}; expected one of {list(TEMPLATES)}")
    return spaces[template]


def format_mc(question: str, options: tuple[str, ...] | list[str]) -> str:
    """The multiple-choice form of ``question`` (see :data:`MC_FORMAT`)."""
    return " ".join([question, *(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))])


@dataclass(frozen=True)
class Question:
    """One question about one scene, with everything evaluation needs to slice the results.

    ``subjects`` are the indices in ``scene.objects`` of the objects the question is about (for
    ``count``, every object of the shape; none when the answer is 0), ``windows`` their appearance
    windows in normalised time, and ``short_lived`` / ``small`` whether any of them is.
    """

    template: str
    question: str
    answer: str
    options: tuple[str, ...]
    subjects: tuple[int, ...]
    short_lived: bool
    small: bool
    windows: tuple[tuple[float, float], ...]
    slots: dict = field(default_factory=dict, compare=False)
    video_id: str = ""
    question_id: str = ""

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.options.index(self.answer)]

    @property
    def mc_question(self) -> str:
        return format_mc(self.question, self.options)

    def prompt(self, mc: bool = False) -> str:
        return self.mc_question if mc else self.question

    def target(self, mc: bool = False) -> str:
        return self.answer_letter if mc else self.answer

    def windows_seconds(self, duration: float) -> list[list[float]]:
        return [[s * duration, e * duration] for s, e in self.windows]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["options"] = list(self.options)
        data["subjects"] = list(self.subjects)
        data["windows"] = [list(w) for w in self.windows]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Question:
        data = dict(data)
        data["options"] = tuple(data["options"])
        data["subjects"] = tuple(data["subjects"])
        data["windows"] = tuple(tuple(w) for w in data["windows"])
        return cls(**data)


# ----------------------------------------------------------------------------------------------
# the answer key
# ----------------------------------------------------------------------------------------------


def _matching(scene: Scene, color: str | None = None, shape: str | None = None) -> list[int]:
    return [
        i
        for i, o in enumerate(scene.objects)
        if (color is None or o.color == color) and (shape is None or o.shape == shape)
    ]


def _unique(scene: Scene, description: str) -> int | None:
    color, shape = description.split(" ")
    found = _matching(scene, color, shape)
    return found[0] if len(found) == 1 else None


def pose(scene: Scene, template: str, slots: dict, config: WorldConfig) -> tuple[str, tuple[int, ...]] | None:
    """The answer and subject objects of ``template`` filled with ``slots``, or None if ill-posed."""
    if template == "color":
        found = _matching(scene, shape=slots["shape"])
        return (scene.objects[found[0]].color, tuple(found)) if len(found) == 1 else None
    if template == "shape":
        found = _matching(scene, color=slots["color"])
        return (scene.objects[found[0]].shape, tuple(found)) if len(found) == 1 else None
    if template == "direction":
        found = _matching(scene, slots["color"], slots["shape"])
        return (scene.objects[found[0]].direction, tuple(found)) if len(found) == 1 else None
    if template == "count":
        found = _matching(scene, shape=slots["shape"])
        return str(len(found)), tuple(found)
    if template == "first":
        a, b = _unique(scene, slots["a"]), _unique(scene, slots["b"])
        if a is None or b is None or a == b:
            return None
        oa, ob = scene.objects[a], scene.objects[b]
        if abs(oa.start - ob.start) < config.first_gap:
            return None
        return (slots["a"] if oa.start < ob.start else slots["b"]), (a, b)
    raise ValueError(f"unknown template {template!r}")


def candidate_slots(scene: Scene) -> Iterator[tuple[str, dict]]:
    """Every (template, slots) that could be asked about ``scene``, well posed or not."""
    for shape in SHAPES:
        yield "color", {"shape": shape}
        yield "count", {"shape": shape}
    for o in scene.objects:
        yield "shape", {"color": o.color}
        yield "direction", {"color": o.color, "shape": o.shape}
    for a in scene.objects:
        for b in scene.objects:
            if a is not b:
                yield "first", {"a": a.description, "b": b.description}


def well_posed(scene: Scene, config: WorldConfig) -> list[tuple[str, dict, str, tuple[int, ...]]]:
    """``(template, slots, answer, subjects)`` of every well-posed question about ``scene``."""
    out, seen = [], set()
    for template, slots in candidate_slots(scene):
        key = (template, tuple(sorted(slots.items())))
        if key in seen:
            continue
        seen.add(key)
        posed = pose(scene, template, slots, config)
        if posed is not None:
            out.append((template, slots, *posed))
    return out


def mc_options(
    rng: np.random.Generator, template: str, answer: str, slots: dict, config: WorldConfig
) -> tuple[str, ...]:
    """The answer and its distractors in a random order."""
    if template == "first":
        options = [slots["a"], slots["b"]]
    else:
        others = [a for a in answer_space(template, config) if a != answer]
        picks = rng.choice(len(others), size=min(len(LETTERS) - 1, len(others)), replace=False)
        options = [answer, *(others[int(i)] for i in picks)]
    return tuple(options[int(i)] for i in rng.permutation(len(options)))


def make_question(
    rng: np.random.Generator,
    scene: Scene,
    template: str,
    slots: dict,
    config: WorldConfig,
    question_id: str = "",
) -> Question:
    """The question ``template(slots)`` about ``scene``; raises ``ValueError`` if it is ill-posed."""
    posed = pose(scene, template, slots, config)
    if posed is None:
        raise ValueError(f"{template} {slots} is not well posed for scene {scene.video_id}")
    answer, subjects = posed
    objs = [scene.objects[i] for i in subjects]
    return Question(
        template=template,
        question=TEMPLATES[template].format(**slots),
        answer=answer,
        options=mc_options(rng, template, answer, slots, config),
        subjects=subjects,
        short_lived=any(o.short_lived for o in objs),
        small=any(o.small for o in objs),
        windows=tuple((o.start, o.end) for o in objs),
        slots=dict(slots),
        video_id=scene.video_id,
        question_id=question_id,
    )


# ----------------------------------------------------------------------------------------------
# targeted sampling: a scene built for a question with a chosen answer
# ----------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options, exclude=()) -> str:
    pool = [o for o in options if o not in set(exclude)]
    return pool[int(rng.integers(len(pool)))]


def _first_windows(
    rng: np.random.Generator, config: WorldConfig, early_short: bool, late_short: bool
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Windows of two objects whose appearance times are at least ``first_gap`` apart."""
    while True:
        early, late = sample_window(rng, config, early_short), sample_window(rng, config, late_short)
        late_len = late[1] - late[0]
        if late_len > 1 - config.first_gap:
            continue
        late_start = rng.uniform(config.first_gap, 1 - late_len)
        early_len = early[1] - early[0]
        early_start = rng.uniform(0.0, min(late_start - config.first_gap, 1 - early_len))
        return (early_start, early_start + early_len), (late_start, late_start + late_len)


def sample_question(
    rng: np.random.Generator,
    config: WorldConfig,
    template: str,
    answer: str,
    *,
    short_lived: bool = False,
    small: bool = False,
    video_id: str = "",
    question_id: str = "",
    mention_answer_first: bool | None = None,
) -> tuple[Scene, Question]:
    """A scene built so that ``template`` is well posed with answer ``answer``, and the question.

    ``short_lived`` / ``small`` make (one of) the question's subject objects short-lived / small;
    a ``count`` question whose answer is 0 has no subject and ignores them. For ``first``,
    ``mention_answer_first`` says whether the earlier object is named first (random if None).
    """
    if answer not in answer_space(template, config):
        raise ValueError(f"{answer!r} is not an answer of {template!r}")
    tags = {"short_lived": short_lived, "small": small}
    shape, color = _pick(rng, SHAPES), _pick(rng, COLORS)
    requests, exclude, windows = [], (), None
    if template == "color":
        requests, exclude, slots = (
            [ObjectRequest(shape=shape, color=answer, **tags)],
            (shape,),
            {"shape": shape},
        )
    elif template == "shape":
        requests, slots = [ObjectRequest(shape=answer, color=color, **tags)], {"color": color}
    elif template == "direction":
        requests = [ObjectRequest(shape=shape, color=color, direction=answer, **tags)]
        slots = {"color": color, "shape": shape}
    elif template == "count":
        k = int(answer)
        # The first carries the tags; the others may be short-lived / small only if it is.
        rest = {name: (None if value else False) for name, value in tags.items()}
        requests = [ObjectRequest(shape=shape, **(tags if i == 0 else rest)) for i in range(k)]
        exclude, slots = (shape,), {"shape": shape}
    elif template == "first":
        early_color, early_shape = answer.split(" ")
        late = ObjectRequest(color=_pick(rng, COLORS, (early_color,)))
        early = ObjectRequest(color=early_color, shape=early_shape)
        tagged = early if rng.random() < 0.5 else late  # which of the two carries the tags
        tagged.short_lived, tagged.small = short_lived, small
        for req in (early, late):
            req.short_lived = bool(req.short_lived)
            req.small = bool(req.small)
        windows = list(_first_windows(rng, config, early.short_lived, late.short_lived))
        requests = [early, late]
        slots = None  # named after the scene is drawn (the late object's shape is free)
    else:
        raise ValueError(f"unknown template {template!r}")
    scene = sample_scene(
        rng, config, video_id=video_id, requests=requests, exclude_shapes=exclude, windows=windows
    )
    if template == "first":
        names = [scene.objects[0].description, scene.objects[1].description]
        if mention_answer_first is None:
            mention_answer_first = bool(rng.random() < 0.5)
        a, b = names if mention_answer_first else names[::-1]
        slots = {"a": a, "b": b}
    question = make_question(rng, scene, template, slots, config, question_id)
    if question.answer != answer:  # construction guarantees it; a mismatch is a bug here
        raise AssertionError(f"built {template} for answer {answer!r} but the key says {question.answer!r}")
    return scene, question


def template_probabilities(weights: Mapping[str, float]) -> np.ndarray:
    """The probability of each of :data:`TEMPLATES` (in order) given relative ``weights``; a
    template not named weighs 1. Raises ``ValueError`` for weights that are not a mapping of
    numbers, an unknown template, a negative or non-finite weight, or weights that are all 0."""
    if not isinstance(weights, Mapping):
        raise ValueError(f"template weights must map template names to numbers, got {weights!r}")
    unknown = sorted(set(weights) - set(TEMPLATES))
    if unknown:
        raise ValueError(f"unknown templates {unknown}; expected some of {list(TEMPLATES)}")
    try:
        values = np.array([float(weights.get(t, 1.0)) for t in TEMPLATES])
    except (TypeError, ValueError):
        raise ValueError(f"template weights must be numbers, got {dict(weights)}") from None
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise ValueError(f"template weights must be >= 0 and not all 0, got {dict(weights)}")
    return values / values.sum()


def sample_item(
    rng: np.random.Generator,
    config: WorldConfig,
    video_id: str = "",
    question_id: str = "",
    template_weights: Mapping[str, float] | None = None,
) -> tuple[Scene, Question]:
    """One training item: the template uniform (or by ``template_weights``, relative, 1 for a
    template not named), its answer uniform, subject tags drawn at the configured shares."""
    if template_weights:
        template = list(TEMPLATES)[
            int(rng.choice(len(TEMPLATES), p=template_probabilities(template_weights)))
        ]
    else:
        template = _pick(rng, TEMPLATES)
    answer = _pick(rng, answer_space(template, config))
    short_lived = bool(rng.random() < config.short_lived_share)
    small = bool(rng.random() < config.small_share)
    return sample_question(
        rng,
        config,
        template,
        answer,
        short_lived=short_lived,
        small=small,
        video_id=video_id,
        question_id=question_id,
    )


# ----------------------------------------------------------------------------------------------
# fixed question sets (validation and test): several balanced questions per video
# ----------------------------------------------------------------------------------------------


@dataclass
class _Balance:
    """Running counts that steer a question set towards uniform answers and the target shares."""

    config: WorldConfig
    templates: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)
    short_lived: int = 0
    small: int = 0
    total: int = 0

    def add(self, q: Question) -> None:
        self.templates[q.template] += 1
        self.answers[q.template, q.answer] += 1
        self.short_lived += q.short_lived
        self.small += q.small
        self.total += 1

    def deficit(self, target: tuple[str, str]) -> tuple[float, int]:
        """How far ``(template, answer)`` is below its share (templates uniform, answers uniform in each).

        Targeted questions go to the most under-represented pairs first: the answers that a
        random scene rarely offers (a count of 4, a "first" question) come mostly from them.
        """
        template, answer = target
        share = (self.total + 1) / (len(TEMPLATES) * len(answer_space(template, self.config)))
        return round(self.answers[template, answer] - share, 9), self.templates[template]

    def extra_key(self, scene: Scene, used: set[str], candidate: tuple) -> tuple:
        """Order of preference among a video's further questions: a template not yet asked about
        the video, then the rarest template, the rarest answer, the tag shares."""
        template, _, answer, subjects = candidate
        objs = [scene.objects[i] for i in subjects]
        penalty = self.tag_penalty(any(o.short_lived for o in objs), any(o.small for o in objs))
        return template in used, self.templates[template], self.answers[template, answer], penalty

    def want(self, count: int, share: float) -> bool:
        """Whether one more tagged question brings the share closer to ``share``."""
        return count + 0.5 < share * (self.total + 1)

    def tag_penalty(self, short_lived: bool, small: bool) -> float:
        n = self.total + 1
        return abs((self.short_lived + short_lived) / n - self.config.short_lived_share) + abs(
            (self.small + small) / n - self.config.small_share
        )


def _least(rng: np.random.Generator, items: list, key) -> object:
    """The item with the smallest key; ties broken at random."""
    keys = [key(x) for x in items]
    best = min(keys)
    ties = [x for x, k in zip(items, keys) if k == best]
    return ties[int(rng.integers(len(ties)))]


@dataclass
class QuestionSet:
    """A fixed, balanced set of questions over a fixed set of videos (the test and validation sets).

    Video ``v`` is drawn from the split's stream ``(split, v)``. Its first question is targeted:
    the (template, answer) pair furthest below its share so far (templates uniform, answers
    uniform within a template), its subject short-lived / small when that moves the set towards
    the configured shares, and the scene built for it. The video's other questions are its
    well-posed questions that best even out the counts (templates first, then answers, then the
    tag shares), preferring templates not yet asked about the same video and never asking the
    same thing twice. The set depends only on (split, config, seed), and a smaller set is a
    prefix of a larger one.
    """

    split: str
    config: WorldConfig
    scenes: list[Scene]
    questions: list[Question]
    world_seed: int = 0
    _by_id: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        split: str,
        num_videos: int,
        questions_per_video: int = 3,
        config: WorldConfig | None = None,
        world_seed: int = 0,
        max_questions: int | None = None,
    ) -> QuestionSet:
        """Build the set; ``max_questions`` stops early (the last video may have fewer questions).

        Three questions per video keep templates and answers near uniform: each video's targeted
        question supplies the answers random scenes rarely offer, and with more questions per
        video there are too few targeted ones for that.
        """
        config = config or WorldConfig()
        if num_videos < 1 or questions_per_video < 1:
            raise ValueError("num_videos and questions_per_video must be >= 1")
        max_questions = num_videos * questions_per_video if max_questions is None else max_questions
        balance = _Balance(config)
        targets = [(t, a) for t in TEMPLATES for a in answer_space(t, config)]
        scenes, questions = [], []
        for v in range(num_videos):
            if len(questions) >= max_questions:
                break
            rng = split_rng(split, v, world_seed)
            video_id = f"synthetic_{split}_{v:05d}"
            template, answer = _least(rng, targets, balance.deficit)
            scene, primary = sample_question(
                rng,
                config,
                template,
                answer,
                short_lived=balance.want(balance.short_lived, config.short_lived_share),
                small=balance.want(balance.small, config.small_share),
                video_id=video_id,
                question_id=f"{video_id}_q0",
            )
            scenes.append(scene)
            asked = [primary]
            balance.add(primary)
            # "first" about (a, b) and about (b, a) ask the same thing.
            same = lambda template, slots: (template, frozenset(slots.values()))
            pool = [c for c in well_posed(scene, config) if same(*c[:2]) != same(template, primary.slots)]
            quota = min(questions_per_video, max_questions - len(questions))
            while len(asked) < quota and pool:
                used = {q.template for q in asked}
                choice = _least(rng, pool, partial(balance.extra_key, scene, used))
                pool = [c for c in pool if same(*c[:2]) != same(*choice[:2])]
                q = make_question(rng, scene, choice[0], choice[1], config, f"{video_id}_q{len(asked)}")
                asked.append(q)
                balance.add(q)
            questions.extend(asked)
        return cls(split, config, scenes, questions, world_seed)

    def scene(self, video_id: str) -> Scene:
        if len(self._by_id) != len(self.scenes):
            self._by_id = {s.video_id: s for s in self.scenes}
        return self._by_id[video_id]

    def summary(self) -> dict:
        """Counts per template and answer, and the tag shares (what the writer prints)."""
        n = max(1, len(self.questions))
        return {
            "videos": len(self.scenes),
            "questions": len(self.questions),
            "templates": dict(Counter(q.template for q in self.questions)),
            "answers": {
                t: dict(sorted(Counter(q.answer for q in self.questions if q.template == t).items()))
                for t in TEMPLATES
            },
            "short_lived_share": sum(q.short_lived for q in self.questions) / n,
            "small_share": sum(q.small for q in self.questions) / n,
            "short_lived_or_small_share": sum(q.short_lived or q.small for q in self.questions) / n,
        }
