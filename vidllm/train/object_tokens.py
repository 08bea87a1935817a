"""Made-up object tokens for the LM: beside every video-stage step (``objects.interleave``, the
default recipe's since v33), or as a stage of their own before it (``objects.steps``, which v32
found to set the video stage back).

Counting the objects of a shape is the skill the LM learns slowest: handed clean object tokens, a
fresh LM of the default size needs about 40,000 count questions to answer 90% of them
(``scripts/count_probe.py``, docs/training_runs.md "Counting is slow to learn even from clean
tokens"), where the video stage asks about 6,700, each at the cost of a whole video's tower and
LM passes. These sequences give the LM that practice at the cost of short LM passes only: each
sequence is the video LLM's prompt (the real template, tokenizer and markers:
the question, ``<|video_start|>``, visual rows, ``<|video_end|>``, the question again) and the
answer, whose visual rows are made up. Each object of a drawn scene is shown by a few rows, each
the LM's own input embeddings of the object's colour word and shape word summed, plus noise; the
other rows are noise alone. The objects' rows lie at random places among them, except for a
"which appears first" question, whose rows read as time, as the fast path lays out its frames:
the objects enter one after another and the answer is the one of the two asked that enters first.

The rows are built from the LM's word embeddings so that what the LM learns to read here is a
place the video stage's projector can map the tower's features to: the words the questions and
answers use. Questions are drawn as the world asks them (``What color is the {shape}?``, ``What
shape is the {color} object?``, ``How many {shape}s appear in the video?``, ``Which appears
first, the {a} or the {b}?``), count answers uniform over 0-4, colours distinct within a scene.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vidllm.data.synthetic.questions import TEMPLATES
from vidllm.data.synthetic.scene import COLORS, SHAPES, WorldConfig
from vidllm.train.data import OBJECT_ATTRIBUTES
from vidllm.train.loop import Stage, decay_groups

PLACE_FREE_TEMPLATES = ("color", "shape", "count")
"""The templates answered from what each object is, wherever its rows are."""
OBJECT_TEMPLATES = (*PLACE_FREE_TEMPLATES, "first")
"""The templates these sequences ask: those not answered from motion; "first" from the order of
rows laid out in time."""

SAME_SHAPE_COUNT = list(OBJECT_ATTRIBUTES).index("same_shape_count")
MAX_OBJECTS = WorldConfig().max_objects  # the world's most objects, so its largest count answer
FIRST_GAP = WorldConfig().first_gap  # the least gap between the entries a "first" question compares
OBJECT_METRICS = ("lm_loss", "answer_acc", "count_acc", "questions")


def draw_scene(rng: np.random.Generator, count: int | None = None) -> list[tuple[int, int]]:
    """``(colour, shape)`` index pairs of a scene of 1-``MAX_OBJECTS`` objects, colours distinct;
    with ``count``, a count question's scene: ``count`` objects of shape 0 (the caller names the
    asked shape), up to ``MAX_OBJECTS`` in all, the others of other shapes."""
    if count is None:
        total = int(rng.integers(1, MAX_OBJECTS + 1))
        shapes = rng.integers(len(SHAPES), size=total).tolist()
    else:
        total = int(rng.integers(max(1, count), MAX_OBJECTS + 1))
        shapes = [0] * count + rng.integers(1, len(SHAPES), size=total - count).tolist()
    colors = rng.permutation(len(COLORS))[:total].tolist()
    return list(zip(colors, shapes))


def draw_question(rng: np.random.Generator, template: str) -> tuple[list[tuple[int, int]], str, str]:
    """``(objects, question, answer)`` for one of :data:`PLACE_FREE_TEMPLATES`, well posed as the
    world poses it: a colour question names a shape the scene holds once."""
    if template == "count":
        answer = int(rng.integers(0, MAX_OBJECTS + 1))
        shape = int(rng.integers(len(SHAPES)))
        # draw_scene puts the asked objects on shape 0: swap shape 0 and the asked shape
        objects = [(c, shape if s == 0 else (0 if s == shape else s)) for c, s in draw_scene(rng, answer)]
        return objects, TEMPLATES["count"].format(shape=SHAPES[shape]), str(answer)
    while True:
        objects = draw_scene(rng)
        if template == "shape":
            color, shape = objects[int(rng.integers(len(objects)))]
            return objects, TEMPLATES["shape"].format(color=COLORS[color]), SHAPES[shape]
        shapes = [s for _, s in objects]
        unique = [i for i, s in enumerate(shapes) if shapes.count(s) == 1]
        if unique:
            color, shape = objects[unique[int(rng.integers(len(unique)))]]
            return objects, TEMPLATES["color"].format(shape=SHAPES[shape]), COLORS[color]


def lay_out_anywhere(
    rng: np.random.Generator, num_objects: int, visual_tokens: int, tokens_per_object: list[int]
) -> torch.Tensor:
    """``(visual_tokens,)`` object index per row (-1: none): each object on ``tokens_per_object``
    rows at random places."""
    rows = torch.full((visual_tokens,), -1, dtype=torch.long)
    slots = torch.from_numpy(rng.permutation(visual_tokens))
    used = 0
    for k in range(num_objects):
        n = int(rng.integers(tokens_per_object[0], tokens_per_object[1] + 1))
        rows[slots[used : used + n]] = k
        used += n
    return rows


def last_entry_row(visual_tokens: int, tokens_per_object: list[int]) -> int:
    """The last row at which :func:`lay_out_in_time` lets an object enter: late enough that every
    object still finds its rows after its entry, whatever the others took."""
    return visual_tokens - tokens_per_object[1] * MAX_OBJECTS


def lay_out_in_time(
    rng: np.random.Generator, num_objects: int, visual_tokens: int, tokens_per_object: list[int]
) -> torch.Tensor:
    """``(visual_tokens,)`` object index per row (-1: none), the rows read as time, as the fast
    path's frames are laid out: object ``k`` enters ``k``-th, at a random row, and its
    ``tokens_per_object`` rows are its first free row there and others at random in its window (the
    rows from its entry to a random exit; or the first free rows after its entry, should those be
    too few). Entries stop early enough that every object finds its rows after its entry."""
    low, high = tokens_per_object
    rows = torch.full((visual_tokens,), -1, dtype=torch.long)
    entries = np.sort(rng.integers(0, last_entry_row(visual_tokens, tokens_per_object) + 1, size=num_objects))
    for k, entry in enumerate(entries.tolist()):
        n = int(rng.integers(low, high + 1))
        exit_ = int(rng.integers(entry + high, visual_tokens + 1))
        free = (rows[entry:] < 0).nonzero().flatten() + entry
        window = free[free < exit_]
        candidates = window if len(window) >= n else free[:n]
        rest = candidates[1:][torch.from_numpy(rng.permutation(len(candidates) - 1)[: n - 1])]
        rows[candidates[0]] = k
        rows[rest] = k
    return rows


def draw_first_question(
    rng: np.random.Generator, visual_tokens: int, tokens_per_object: list[int]
) -> tuple[list[tuple[int, int]], torch.Tensor, str, str]:
    """``(objects, rows, question, answer)`` of a "which appears first" question on rows laid out
    in time (:func:`lay_out_in_time`), well posed as the world poses it: two objects of the scene,
    whose first rows are at least the world's ``first_gap`` of the rows apart, named in random
    order; the answer names the one whose first row comes first."""
    gap = FIRST_GAP * visual_tokens
    while True:
        objects = draw_scene(rng)
        if len(objects) < 2:
            continue
        rows = lay_out_in_time(rng, len(objects), visual_tokens, tokens_per_object)
        first = [int((rows == k).nonzero()[0]) for k in range(len(objects))]
        pairs = [
            (a, b) for a in range(len(objects)) for b in range(len(objects)) if first[b] - first[a] >= gap
        ]
        if not pairs:
            continue
        early, late = pairs[int(rng.integers(len(pairs)))]
        names = [f"{COLORS[c]} {SHAPES[s]}" for c, s in objects]
        a, b = (early, late) if rng.random() < 0.5 else (late, early)
        return objects, rows, TEMPLATES["first"].format(a=names[a], b=names[b]), names[early]


def draw_sequence(
    rng: np.random.Generator, template: str, visual_tokens: int, tokens_per_object: list[int]
) -> tuple[list[tuple[int, int]], torch.Tensor, str, str]:
    """``(objects, rows, question, answer)`` of one made-up sequence asking ``template``: its
    objects, each row's object (-1: none), the question and the answer."""
    if template == "first":
        return draw_first_question(rng, visual_tokens, tokens_per_object)
    objects, question, answer = draw_question(rng, template)
    return objects, lay_out_anywhere(rng, len(objects), visual_tokens, tokens_per_object), question, answer


@dataclass
class ObjectStepBatch:
    """One step's sequences: the prompt text around the video, each visual row's object (an
    index into ``objects`` or -1), the objects' ``(colour, shape)``, the answer and the noise."""

    before: list[list[int]]  # text ids up to and including the video's opening markers
    after: list[list[int]]  # ``<|video_end|>`` and the prompt's text after the video
    rows: torch.Tensor  # (B, visual_tokens) object index per row, -1 for none
    objects: list[list[tuple[int, int]]]
    targets: list[list[int]]  # answer ids and end of sequence
    noise: torch.Tensor  # (B, visual_tokens, H), standard normal
    templates: list[str]
    questions: list[str]
    answers: list[str]


class ObjectWords:
    """The LM's input embeddings of the colour and shape words, from which the made-up rows are
    built (each word's token embeddings averaged)."""

    def __init__(self, tokenizer) -> None:
        def word(text: str) -> list[int]:
            return tokenizer(" " + text, add_special_tokens=False)["input_ids"]

        self.colors = [word(c) for c in COLORS]
        self.shapes = [word(s) for s in SHAPES]

    @staticmethod
    def _embed(embed: nn.Embedding, ids: list[list[int]]) -> torch.Tensor:
        return torch.stack([embed(torch.tensor(w, device=embed.weight.device)).mean(0) for w in ids])

    def prompts(self, embed: nn.Embedding, batch: ObjectStepBatch, noise: float) -> list[torch.Tensor]:
        """Each sequence's prompt embeddings ``(L_i, H)``; its visual rows start at
        ``len(batch.before[i])``."""
        device = embed.weight.device
        colors, shapes = self._embed(embed, self.colors), self._embed(embed, self.shapes)
        scale = noise * torch.cat([colors, shapes]).detach().std()
        prompts = []
        for i, objects in enumerate(batch.objects):
            table = torch.stack([colors[c] + shapes[s] for c, s in objects])
            index = batch.rows[i].to(device)
            visual = torch.where(
                (index >= 0)[:, None], table[index.clamp(min=0)], torch.zeros((), device=device)
            )
            visual = visual + scale * batch.noise[i].to(device)
            before = embed(torch.tensor(batch.before[i], device=device))
            after = embed(torch.tensor(batch.after[i], device=device))
            prompts.append(torch.cat([before, visual, after]))
        return prompts


def object_forward(lm: nn.Module, words: ObjectWords, batch: ObjectStepBatch, noise: float, **kwargs):
    """The LM's output on ``batch`` (``kwargs`` go to the LM) and the stage's metrics."""
    from vidllm.train.trainer import answer_accuracy, pad_answer_batch

    embed = lm.get_input_embeddings()
    prompts = words.prompts(embed, batch, noise)
    inputs, mask, labels = pad_answer_batch(prompts, batch.targets, embed)
    out = lm(inputs_embeds=inputs, attention_mask=mask, labels=labels, use_cache=False, **kwargs)
    right = answer_accuracy(out.logits, labels)
    count = torch.tensor([t == "count" for t in batch.templates])
    lm_loss = out.lm_loss if getattr(out, "lm_loss", None) is not None else out.loss
    metrics = {
        "lm_loss": float(lm_loss.detach()),
        "answer_acc": float(right.float().mean()),
        "count_acc": float(right[count].float().mean()) if count.any() else float("nan"),
        "questions": len(prompts),
    }
    return out, metrics


def object_row_attributes(batch: ObjectStepBatch, columns: int, count: bool) -> torch.Tensor:
    """``(B * visual_tokens, columns)`` targets of the video stage's attribute loss
    (:func:`vidllm.train.data.attribute_columns`) for the made-up rows: colour and shape (their
    "none" class on a row of no object), the same-shape count in the scene less one where
    ``count``, the rest ignored (-100)."""
    out = torch.full((*batch.rows.shape, columns), -100, dtype=torch.long)
    out[..., 0], out[..., 1] = len(COLORS), len(SHAPES)
    for i, objects in enumerate(batch.objects):
        for k, (color, shape) in enumerate(objects):
            on = batch.rows[i] == k
            out[i, on, 0], out[i, on, 1] = color, shape
            if count:
                out[i, on, SAME_SHAPE_COUNT] = sum(s == shape for _, s in objects) - 1
    return out.flatten(0, 1)


class ObjectTokenLM(nn.Module):
    """The object stage's trained module: the video LLM's LM (trained in place) and the loss of a
    batch."""

    def __init__(self, model, noise: float) -> None:
        super().__init__()
        self.lm = model.lm
        self.noise = noise
        self.words = ObjectWords(model.tokenizer)

    def forward(self, batch: ObjectStepBatch) -> tuple[torch.Tensor, dict]:
        out, metrics = object_forward(self.lm, self.words, batch, self.noise)
        return out.loss, metrics


def make_object_batch_fn(model, spec, *, seed: int, stage_seed: int):
    """``(step, rank, world_size) -> ObjectStepBatch``, a pure function of its arguments: each
    process draws its own ``spec.batch // world_size`` sequences."""
    tokenizer = model.tokenizer
    hidden = model.lm.get_input_embeddings().embedding_dim
    markers = model.marker_ids
    weights = np.array([float(spec.template_weights.get(t, 0.0)) for t in OBJECT_TEMPLATES])
    probabilities = weights / weights.sum()

    @functools.cache
    def prompt_ids(question: str) -> tuple[list[int], list[int]]:
        before, after = model.prompt_text_ids(question)
        return [*before, markers["start"], markers["slow"], markers["frame"]], [markers["end"], *after]

    @functools.cache
    def target_ids(answer: str) -> list[int]:
        return [*tokenizer(" " + answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]

    def batch_fn(step: int, rank: int, world_size: int) -> ObjectStepBatch:
        rng = np.random.default_rng([seed, stage_seed, step, rank])
        size = max(1, spec.batch // world_size)
        before, after, objects, targets, templates, questions, answers = [], [], [], [], [], [], []
        rows = torch.full((size, spec.visual_tokens), -1, dtype=torch.long)
        for i in range(size):
            template = OBJECT_TEMPLATES[int(rng.choice(len(OBJECT_TEMPLATES), p=probabilities))]
            scene, rows[i], question, answer = draw_sequence(
                rng, template, spec.visual_tokens, spec.tokens_per_object
            )
            b, a = prompt_ids(question)
            before.append(b)
            after.append(a)
            objects.append(scene)
            targets.append(target_ids(answer))
            templates.append(template)
            questions.append(question)
            answers.append(answer)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = torch.randn(size, spec.visual_tokens, hidden, generator=generator)
        return ObjectStepBatch(before, after, rows, objects, targets, noise, templates, questions, answers)

    return batch_fn


def _object_loss(module: nn.Module, batch: ObjectStepBatch, step: int):
    return module(batch)


def object_stage(preset, model, *, stage_seed: int) -> Stage:
    """The stage :func:`vidllm.train.run_stage` trains: ``model``'s LM (in place) on made-up object
    tokens, ``preset.objects`` giving its size."""
    spec = preset.objects
    module = ObjectTokenLM(model, spec.noise)
    return Stage(
        name="objects",
        module=module,
        param_groups=decay_groups(module.named_parameters(), spec.lr, spec.weight_decay),
        steps=spec.steps,
        batch_fn=make_object_batch_fn(model, spec, seed=preset.seed, stage_seed=stage_seed),
        loss_fn=_object_loss,
        warmup=spec.warmup,
        metric_names=OBJECT_METRICS,
    )


__all__ = [
    "FIRST_GAP",
    "MAX_OBJECTS",
    "OBJECT_TEMPLATES",
    "ObjectStepBatch",
    "ObjectTokenLM",
    "ObjectWords",
    "draw_first_question",
    "draw_question",
    "draw_scene",
    "draw_sequence",
    "last_entry_row",
    "lay_out_anywhere",
    "lay_out_in_time",
    "make_object_batch_fn",
    "object_forward",
    "object_row_attributes",
    "object_stage",
]
