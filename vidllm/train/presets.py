"""Named training presets: everything ``vidllm train --preset NAME`` needs, as data.

A preset fixes the model (vision tower, relevance scorer, language model, reducer defaults), the
three training stages and the seeds; ``training_config.json`` beside a trained model is the
preset it came from. Presets:

- ``default``: the bundled model (``vidllm/checkpoints/default``); why its numbers are what they
  are is in the comments of :data:`DEFAULT`.
- ``parameternet``: the same with ParameterNet FFN layers in the LM instead of VersatileFFN.
- ``smoke``: a toy of every part, trained for a handful of steps in seconds (tests, CI).

``get_preset(name, **overrides)`` returns a copy; dotted overrides reach into the stages
(``{"video.steps": 10}``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from efficient_backbones.ghostnet import GHOSTNET_BLOCKS
from vidllm.data.synthetic.questions import template_probabilities
from vidllm.train.data import ATTRIBUTE_COUNTS


def ghostnet_blocks(groups: int) -> list[list[list[float]]]:
    """The first ``groups`` block groups of GhostNet's Table 1, as JSON-able lists.

    Five groups end at stride 8 (40 channels, expansion 120): at 64 px that is an 8x8 grid.
    """
    return [[list(block) for block in group] for group in GHOSTNET_BLOCKS[:groups]]


@dataclass
class VisionSpec:
    """A zoo backbone cut into a patch-feature extractor (the tower, and the scorer's image tower)."""

    backbone: str = "ghostnet_100"
    # head_chs: GhostNet's classifier head is not used by a tower; a small one keeps it out of the way
    backbone_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"block_cfgs": ghostnet_blocks(5), "head_chs": 16}
    )
    image_size: int = 64


@dataclass
class ModelSpec:
    """The video LLM's architecture and reducer defaults."""

    tower: VisionSpec = field(default_factory=VisionSpec)
    lm: dict[str, Any] = field(default_factory=dict)  # VidLMConfig fields besides the vocabulary
    reducer: dict[str, Any] = field(default_factory=dict)  # ReducerConfig fields
    projector_hidden: int | None = None
    visual_positions: bool = False  # vidllm.model.VisualPositions as projector inputs
    relevance_inputs: bool = False  # vidllm.model.token_relevance as a projector input
    motion_inputs: bool = False  # vidllm.model.token_motion as a projector input
    max_new_tokens: int = 8
    # The question before the video as well as after it: a causal LM's visual tokens can then
    # attend to it, so each can tell whether it shows what is asked about (for a small LM
    # trained from scratch, finding the asked object among hundreds of visual tokens otherwise
    # takes far longer to learn); the copy after the video keeps the answer next to the question.
    prompt_template: str = "Question: {question}\n{video}\nQuestion: {question}\nAnswer:"
    tokenizer_vocab_size: int = 512
    tokenizer_corpus_items: int = 1000  # training items whose questions the BPE is trained on


@dataclass
class ScorerStageSpec:
    """Stage 1: the dual encoder (relevance scorer), contrastive with patch supervision."""

    steps: int = 600
    scenes: int = 16
    frames_per_scene: int = 4
    texts: int = 96
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    patch_loss_weight: float = 1.0
    attribute_loss_weight: float = 1.0
    position_loss_weight: float = 10.0
    embed_dim: int = 64
    patch_hidden: int = 128
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    mc_prob: float = 0.3
    yuv420_prob: float = 0.5


@dataclass
class VideoStageSpec:
    """Stage 2: the video LLM end to end (tower, projector, LM), answer tokens only.

    ``reducer_mix`` lists the layouts trained on, with weights: ``{"reducer": "free-video-llm",
    "budget": None}`` is the model's default configuration, a budget goes through
    ``config_for_budget`` / ``uniform_config_for_budget`` exactly as at inference; an entry's
    other keys set fields of that ``ReducerConfig`` for it (``"roi_center": "mean"``), free-video-llm
    entries only. One layout is drawn per step, so a batch has sequences of similar length.
    """

    steps: int = 3000
    videos: int = 4
    questions: int = 3
    max_lm_tokens: int = 4800  # fewer questions in a step whose layout is long
    mc_share: float = 0.25
    # How a video's further questions are drawn (vidllm.train.data.video_item): uniformly among
    # its well-posed questions (false: 46% of the count answers are then 0), or with templates and
    # answers drawn uniformly as the targeted question's are (true).
    balanced_extras: bool = False
    # Relative weights of the templates of each video's targeted question (a template not named
    # weighs 1; empty: uniform). The further questions can only ask what a scene allows, and
    # fewer scenes allow "first" (two objects named uniquely, appearing far enough apart).
    template_weights: dict[str, float] = field(default_factory=dict)
    lr: float = 1e-3
    tower_lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # The stage ends on an exponential moving average of its trained weights with this decay per
    # step (vidllm.train.loop.WeightAverage; horizon about 1 / (1 - decay) steps); 0: on its last
    # weights.
    ema_decay: float = 0.0
    freeze_tower_bn: bool = True
    init_tower_from_scorer: bool = True
    # Parameter-name prefixes (inside the tower's backbone) that train; None: all of it. The
    # default trains GhostNet's last block group and its final 1x1 stage: most of the tower's
    # parameters at a fraction of the backward cost (the early layers run at 4-16x the cells).
    tower_trainable: list[str] | None = field(default_factory=lambda: ["blocks.4", "blocks.5"])
    yuv420_prob: float = 0.5
    compress_prob: float = 0.0
    reducer_mix: list[dict[str, Any]] = field(default_factory=list)
    # Auxiliary loss: from the LM's hidden state after ``relevance_layer`` layers, whether each
    # visual token shows a subject of the question (targets from the scene's boxes). It teaches
    # the LM where to look before it can learn what to answer; 0 turns it off.
    relevance_loss_weight: float = 0.5
    relevance_layer: int = 2
    # The loss's linear head: trained with the LM, or a fixed random direction (a frozen probe)
    # along which the LM itself must write "relevant" (the shipped models trained with it fixed).
    train_relevance_head: bool = True
    # Auxiliary loss: from the LM's hidden state after ``attribute_layer`` layers, the scene-graph
    # attributes of the object each visual token shows (colour, shape, direction of motion,
    # appearance time, how many objects share its shape: vidllm.train.data.OBJECT_ATTRIBUTES).
    # The answers are these attributes read off the subject's tokens; the loss asks every token
    # for them, hundreds of targets a sequence against one or two answer tokens; 0 turns it off.
    attribute_loss_weight: float = 0.0
    attribute_layer: int = 2
    # The same-shape count asked of each token: "scene", the objects of its shape in the whole
    # video; "seen", those shown so far in the sequence (a causal LM cannot know of objects shown
    # only by later tokens; "scene" asks 11% of the default layout's object tokens for them).
    attribute_count: str = "scene"
    # Also ask each object token whether it is its object's first in the sequence: what a causal
    # LM can know at every token, and from which a later layer counts the objects of a shape as
    # its flagged tokens (an attention average over a shape's tokens weighs objects by their
    # token counts instead, and the seen-so-far count is right only on a shape's last token).
    attribute_new_objects: bool = False
    # Auxiliary loss: next-token loss on the prompt's text after the video. With the question
    # asked before the video too (the default template), that text is a copy across the visual
    # tokens, which a from-scratch LM learns by forming the long-range attention (induction
    # heads) that reading the answer off the video needs as well; 0 turns it off.
    question_loss_weight: float = 0.0


@dataclass
class ObjectStageSpec:
    """Prompts whose visual rows are made up from the LM's own colour and shape word embeddings
    (:mod:`vidllm.train.object_tokens`): cheap practice at reading and counting objects, as a
    stage of ``steps`` before the video stage (0: none) and/or ``interleave`` sequences beside
    every video-stage step (the default recipe's)."""

    steps: int = 0
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    visual_tokens: int = 128
    tokens_per_object: list[int] = field(default_factory=lambda: [2, 12])
    noise: float = 0.5  # each row's noise, as a multiple of the word embeddings' spread
    # Also in every video-stage step, beside its videos' questions: this many made-up sequences
    # (0: none), their answer loss weighted ``interleave_weight``. With the video stage's attribute
    # loss on, their rows are asked their colour, shape and same-shape count by the same head at
    # the same layer as the visual tokens, so that what the LM learns to count on made-up rows is
    # what it reads from real ones there.
    interleave: int = 0
    interleave_weight: float = 0.5
    # Relative weights of the templates asked (vidllm.train.object_tokens.OBJECT_TEMPLATES).
    template_weights: dict[str, float] = field(
        default_factory=lambda: {"count": 2.0, "color": 1.0, "shape": 1.0}
    )


@dataclass
class LoRAStageSpec:
    """Stage 3 (optional): LoRA on the LM (vidllm.lm.apply_lora), merged into the weights after.

    Its default use: a short adaptation to H.264 frames (``compress_prob``), which the test
    videos are and the main stage can only approximate.
    """

    steps: int = 0
    r: int = 8
    alpha: int = 16
    lr: float = 5e-4
    warmup: int = 10
    videos: int = 4
    questions: int = 3
    train_projector: bool = True
    compress_prob: float = 1.0
    yuv420_prob: float = 0.0
    # The targeted questions' template weights in this stage (VideoStageSpec.template_weights);
    # None: the video stage's.
    template_weights: dict[str, float] | None = None
    # The layouts this stage trains on (VideoStageSpec.reducer_mix); None: the video stage's.
    reducer_mix: list[dict[str, Any]] | None = None


@dataclass
class ValidationSpec:
    """Accuracy after training on a fixed validation subset, both reducers at the default budget."""

    num_videos: int = 100
    questions_per_video: int = 3
    compress: bool = True
    budgets: list[int | None] = field(default_factory=lambda: [None])


@dataclass
class Preset:
    name: str
    description: str
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: torch's default)
    bf16: bool = True  # autocast in training (CPUs with AVX512-BF16 and GPUs run it fast)
    # Under bf16, the LM's attention in float32 (vidllm.lm.training.float32_attention): on a CPU
    # with AMX a default video-stage step took 0.91-0.96x as long (benchmarks/train_step.py;
    # plain float32, bf16=false, 0.91-0.97x), and the scorer stage does not use it.
    fp32_attention: bool = False
    checkpoint_every: int = 100
    log_every: int = 10
    keep_checkpoints: int = 2
    model: ModelSpec = field(default_factory=ModelSpec)
    scorer: ScorerStageSpec = field(default_factory=ScorerStageSpec)
    objects: ObjectStageSpec = field(default_factory=ObjectStageSpec)
    video: VideoStageSpec = field(default_factory=VideoStageSpec)
    lora: LoRAStageSpec = field(default_factory=LoRAStageSpec)
    validation: ValidationSpec = field(default_factory=ValidationSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preset:
        return _from_dict(cls, data)


def _from_dict(cls, data: dict[str, Any]):
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default) and isinstance(value, dict):
            value = _from_dict(type(default), value)
        kwargs[f.name] = value
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------
# the presets
# ----------------------------------------------------------------------------------------------

# The default reducer. 32 frames: the shortest-lived subjects (5% of a 50-frame video, 2.5
# frames) always fall on a sampled frame at 32 (every 1.56 frames) and not always at 24 or 16.
# With the tower's 8x8 grid, pooled 2x along the width: 3 slow + 4 middle frames of 32 tokens,
# each re-encoded on a region of interest of a quarter of the frame (crop ratio 0.25: a 2x zoom,
# what a small object needs; 0.8 zooms only 1.12x) placed where it holds the most relevance
# (roi_center "window": the official mean of the top cells leaves a small subject outside such a
# crop two times in three, scripts/roi_coverage.py), and all 32 frames pooled to 2x2 on the fast
# path: 224 + 128 = 352 visual tokens, 17% of the 2,048 of 32 full frames. Uniform sampling at the
# same budget keeps 5 frames and sees a short-lived subject in about half of the videos.
DEFAULT_REDUCER = {
    "num_frames": 32,
    "slow_frames": 3,
    "middle_frames": 4,
    "fast_grid": [2, 2],
    "pool_stride": 2,
    "roi_ratio": 0.25,
    "roi_mode": "reencode",
    "roi_center": "window",
}

# The LM: 4 VersatileFFN layers of width 128, heads of 32 (a size vLLM's CPU attention takes),
# 4 virtual experts (top 2) and up to 2 loops: big enough for the world's five templates, small
# enough that a step of 12 questions of ~400 tokens stays about a second on two cores.
DEFAULT_LM = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "ffn_type": "versatile",
    "num_width_experts": 4,
    "width_top_k": 2,
    "max_loops": 2,
    "tie_word_embeddings": False,
}

# Layouts trained on: the default configuration most, other Free Video-LLM budgets and uniform
# sampling from 1 to all 32 frames (the full-token reference) so the model reads every layout the
# evaluation sweeps ask for.
DEFAULT_MIX = [
    # the default layout on both crop placements (v12): training on the window's alone cost v11
    # its counting (27%); on both, v12 counts as v10 did and keeps the window's gains
    {"reducer": "free-video-llm", "budget": None, "weight": 0.2},
    {"reducer": "free-video-llm", "budget": None, "roi_center": "mean", "weight": 0.15},
    {"reducer": "free-video-llm", "budget": 128, "weight": 0.08},
    {"reducer": "free-video-llm", "budget": 256, "weight": 0.08},
    {"reducer": "free-video-llm", "budget": 512, "weight": 0.08},
    {"reducer": "free-video-llm", "budget": 1024, "weight": 0.04},
    {"reducer": "uniform", "budget": 64, "weight": 0.05},
    {"reducer": "uniform", "budget": 128, "weight": 0.05},
    {"reducer": "uniform", "budget": 256, "weight": 0.07},
    {"reducer": "uniform", "budget": 352, "weight": 0.07},
    {"reducer": "uniform", "budget": 512, "weight": 0.05},
    {"reducer": "uniform", "budget": 1024, "weight": 0.04},
    {"reducer": "uniform", "budget": 2048, "weight": 0.04},
]

DEFAULT = Preset(
    name="default",
    description="the bundled model: GhostNet tower (stride 8, 64 px), dual-encoder scorer, 4-layer VersatileFFN LM",
    # float32: on the AMX Xeon the shipped model was trained on, faster than bfloat16 autocast (the
    # scorer stage's convolutions above all; docs/training_runs.md, "Shorter training steps").
    bf16=False,
    model=ModelSpec(lm=DEFAULT_LM, reducer=DEFAULT_REDUCER, visual_positions=True, motion_inputs=True),
    scorer=ScorerStageSpec(steps=2000),
    # v33 (shipped before v38): every video-stage step also trains the LM on 16 made-up sequences
    # whose visual rows are its own colour and shape word embeddings (count questions half of
    # them), the rows asked their attributes by the same head as the visual tokens. On v27's
    # batches and initial weights it answered 8 points more in training from step 1,500 on, and
    # 88.0% of the test questions against v19's 84.6% (count 63.2% -> 74.6%). The same rows as a
    # stage before the video stage (v32: objects.steps=1500) set the video stage back.
    # docs/training_runs.md, "v33".
    objects=ObjectStageSpec(interleave=16),
    # The shipped model's video stage (v12's). v0, the first shipped model, trained on the answers
    # and a relevance loss through a fixed random head (train_relevance_head=False, as here); v8
    # added the attribute loss (every visual token asked, at layer 2, for its object's colour,
    # shape, direction, appearance time and same-shape count) and gave the projector each token's
    # place and time. On the same batches it answered 10 points more than v0 at equal steps from
    # step 500 on; runs that changed the learning rate or FFN, trained the relevance head or added
    # relevance inputs or a question loss did not. v9 also gave the projector each token's feature
    # change across the encoded frames around its own (motion_inputs): direction answers 25% -> 73%,
    # but count 59% -> 30%, nearly always "0", the commonest count answer in training (46%). v10
    # draws each video's further questions as its targeted one is drawn (balanced_extras; 0 is then
    # 37% of the count answers). v11 places the crops on the subject (the reducer's
    # roi_center="window"): shape and direction answers 74% -> 91%, but count 52% -> 27%, mostly
    # "1". v12 trains a share of the default layout on the official placement too (DEFAULT_MIX).
    # docs/training_runs.md has them all: v11 is this preset with the mix's default layout on the
    # window's placement alone, v10 also with model.reducer.roi_center=mean, v9 also with
    # video.balanced_extras=false, v8 also with model.motion_inputs=false; v0 also with
    # model.visual_positions=false and video.attribute_loss_weight=0.
    video=VideoStageSpec(
        # v38 (the shipped model): 4,500 steps (v33: 4,000), then v33's LoRA stage; 90.0% of the
        # test questions against v33's 88.0% (63 against 43 questions only one got right). v33's
        # video stage was still learning at its end (validation 72.7%, 79.3%, 85.0% at steps
        # 2,000, 3,000, 4,000). The same 4,500 steps without the LoRA stage (v37): 85.8%, count
        # 67.7%. docs/training_runs.md, "v37", "v38".
        steps=4500,
        reducer_mix=DEFAULT_MIX,
        train_relevance_head=False,
        attribute_loss_weight=0.25,
        balanced_extras=True,
    ),
    # v19 (shipped before v33) added a LoRA stage on H.264 frames whose targeted questions ask
    # "how many" half of the time (count 4, every other template 1): v12's count answers 55.7%
    # -> 72.1% of validation's, 85.3% -> 87.3% overall; the same stage with uniform templates
    # (v18) gave 84.3%; after seed 1's video stage it gave 73.3% against 73.7% without it.
    # docs/training_runs.md, "v18, v19". After v38's 4,500 video steps it raised count on
    # validation from v37's 67.2% to 72.1%, 87.3% -> 89.3% overall.
    lora=LoRAStageSpec(steps=600, template_weights={"count": 4}),
)

PARAMETERNET = Preset(
    name="parameternet",
    description="the default model with ParameterNet FFN layers (top-1 of 4 down-projection experts)",
    model=replace(
        copy.deepcopy(DEFAULT.model),
        lm={**DEFAULT_LM, "ffn_type": "parameternet", "num_parameternet_experts": 4},
    ),
    scorer=copy.deepcopy(DEFAULT.scorer),
    video=copy.deepcopy(DEFAULT.video),
)

SMOKE = Preset(
    name="smoke",
    description="every part at toy size, a few steps each: seconds",
    bf16=False,
    threads=1,
    checkpoint_every=4,
    log_every=2,
    model=ModelSpec(
        tower=VisionSpec(
            backbone_kwargs={"block_cfgs": ghostnet_blocks(3), "width": 0.25, "head_chs": 8}, image_size=32
        ),
        lm={
            **DEFAULT_LM,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
        },
        reducer={**DEFAULT_REDUCER, "num_frames": 6, "slow_frames": 1, "middle_frames": 1, "roi_ratio": 0.5},
        tokenizer_vocab_size=320,
        tokenizer_corpus_items=100,
        max_new_tokens=4,
        visual_positions=True,
        relevance_inputs=True,
    ),
    scorer=ScorerStageSpec(
        steps=6,
        scenes=2,
        frames_per_scene=2,
        texts=8,
        warmup=2,
        embed_dim=16,
        patch_hidden=16,
        text_width=32,
        text_layers=1,
    ),
    video=VideoStageSpec(
        steps=12,
        videos=2,
        questions=2,
        warmup=2,
        lr=3e-3,
        tower_lr=1e-3,
        max_lm_tokens=2000,
        question_loss_weight=0.5,
        tower_trainable=["blocks.2", "blocks.3"],
        reducer_mix=[
            {"reducer": "free-video-llm", "budget": None, "weight": 0.6},
            {"reducer": "uniform", "budget": 32, "weight": 0.4},
        ],
    ),
    lora=LoRAStageSpec(steps=2, videos=1, questions=2, warmup=1, compress_prob=0.5),
    validation=ValidationSpec(num_videos=2, questions_per_video=2, compress=False),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (DEFAULT, PARAMETERNET, SMOKE)}


MIX_KEYS = ("reducer", "budget", "weight")
"""A ``reducer_mix`` entry's own keys; any other key is a ``ReducerConfig`` field for its layout."""


def mix_settings(entry: dict[str, Any], reducer: dict[str, Any]) -> dict[str, Any]:
    """The ``ReducerConfig`` settings of a ``reducer_mix`` entry (its keys beyond ``MIX_KEYS``),
    checked against the model's ``reducer`` settings; ``ValueError`` says what is wrong."""
    from vidllm.reducer import ReducerConfig

    settings = {k: v for k, v in entry.items() if k not in MIX_KEYS}
    if not settings:
        return settings
    if entry.get("reducer") != "free-video-llm":
        raise ValueError(f"reducer_mix entry {entry}: only free-video-llm layouts take reducer settings")
    unknown = sorted(set(settings) - {f.name for f in fields(ReducerConfig)})
    if unknown:
        raise ValueError(f"reducer_mix entry {entry}: {unknown} are not ReducerConfig fields")
    ReducerConfig(**{**reducer, **settings})  # the values, checked as the config checks them
    return settings


def _check_object_stage(spec: ObjectStageSpec) -> None:
    from vidllm.train.object_tokens import FIRST_GAP, MAX_OBJECTS, OBJECT_TEMPLATES, last_entry_row

    unknown = sorted(set(spec.template_weights) - set(OBJECT_TEMPLATES))
    if unknown or sum(spec.template_weights.values()) <= 0 or min(spec.template_weights.values()) < 0:
        raise ValueError(
            f"objects.template_weights must weigh some of {list(OBJECT_TEMPLATES)}, none negative, "
            f"got {spec.template_weights}"
        )
    low, high = spec.tokens_per_object
    if not 1 <= low <= high or high * MAX_OBJECTS > spec.visual_tokens:
        raise ValueError(
            f"objects.tokens_per_object must be 1 <= min <= max with max * {MAX_OBJECTS} <= "
            f"objects.visual_tokens ({spec.visual_tokens}), got {spec.tokens_per_object}"
        )
    # "first" lays rows out in time (object_tokens.lay_out_in_time), objects entering at rows up to
    # last_entry_row: room for two entries first_gap of the rows apart, twice
    entries = last_entry_row(spec.visual_tokens, spec.tokens_per_object)
    if spec.template_weights.get("first", 0) > 0 and entries < 2 * FIRST_GAP * spec.visual_tokens:
        raise ValueError(
            f"objects.template_weights asks 'first', whose objects enter in the rows before the last "
            f"max * {MAX_OBJECTS} of them: objects.visual_tokens ({spec.visual_tokens}) leaves "
            f"{entries} such rows, fewer than twice the first gap ({FIRST_GAP:g} of the rows)"
        )


def get_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """A copy of the named preset with dotted ``overrides`` applied (``{"video.steps": 10}``).

    A key may also name an existing entry of a dict field (``{"model.reducer.roi_center": "mean"}``),
    or any ``ReducerConfig`` field under ``model.reducer``, which lists only the preset's own.
    Raises ``KeyError`` for an unknown preset or field, ``ValueError`` for a ``reducer_mix`` entry
    whose reducer settings are wrong, for wrong ``template_weights``, ``attribute_count`` or
    ``ema_decay``.
    """
    from vidllm.reducer import ReducerConfig

    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    preset = copy.deepcopy(PRESETS[name])
    for key, value in (overrides or {}).items():
        target = preset
        *path, last = key.split(".")
        try:
            for part in path:
                target = target[part] if isinstance(target, dict) else getattr(target, part)
        except (AttributeError, KeyError):
            raise KeyError(f"preset field {key!r} does not exist") from None
        reducer_field = target is preset.model.reducer and last in {f.name for f in fields(ReducerConfig)}
        if isinstance(target, dict) and (last in target or reducer_field):
            target[last] = value
        elif is_dataclass(target) and hasattr(target, last):
            setattr(target, last, value)
        else:
            raise KeyError(f"preset field {key!r} does not exist")
    ReducerConfig(**preset.model.reducer)  # the values, checked as the config checks them
    for entry in [*preset.video.reducer_mix, *(preset.lora.reducer_mix or [])]:  # before any training
        mix_settings(entry, preset.model.reducer)
    template_probabilities(preset.video.template_weights)
    if preset.lora.template_weights is not None:
        template_probabilities(preset.lora.template_weights)
    _check_object_stage(preset.objects)
    if not 0.0 <= preset.video.ema_decay < 1.0:
        raise ValueError(
            f"video.ema_decay must be in [0, 1) (0: no moving average), got {preset.video.ema_decay}"
        )
    if preset.video.attribute_count not in ATTRIBUTE_COUNTS:
        raise ValueError(f"video.attribute_count must be one of {ATTRIBUTE_COUNTS}")
    return preset


__all__ = [
    "DEFAULT",
    "MIX_KEYS",
    "PRESETS",
    "LoRAStageSpec",
    "ModelSpec",
    "ObjectStageSpec",
    "Preset",
    "ScorerStageSpec",
    "ValidationSpec",
    "VideoStageSpec",
    "VisionSpec",
    "get_preset",
    "ghostnet_blocks",
    "mix_settings",
]
