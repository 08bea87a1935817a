"""The video LLM: vision tower -> token reducer -> projector -> language model.

The path from a video file to an answer, top to bottom (:meth:`VideoLLM.answer`):

1. decode ``num_frames`` uniformly sampled frames (:func:`vidllm.video.read_video`, crash-isolated);
2. encode them with the vision tower into a patch grid per frame;
3. score the frames and their patches against the question (the relevance scorer);
4. reduce: Free Video-LLM's slow / middle / fast paths, or the uniform baseline
   (:mod:`vidllm.reducer`), within a token budget if one is given;
5. project the kept tokens into the LM's embedding space (a 2-layer MLP, as LLaVA);
6. lay them out between marker tokens that say which path and which time each frame comes from,
   followed by the question, and generate from these input embeddings.

The language model is any transformers causal LM that accepts ``inputs_embeds``; the project's
own is :class:`vidllm.lm.VidLMForCausalLM` (VersatileFFN / ParameterNet layers).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vidllm.reducer import (
    ReducerConfig,
    Reduction,
    Segment,
    UniformConfig,
    config_for_budget,
    plan,
    reduce_free_video_llm,
    reduce_uniform,
    uniform_config_for_budget,
    uniform_frames,
    uniform_tokens,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "vidllm_config.json"
WEIGHTS_NAME = "vision.safetensors"
LM_DIR = "lm"

#: Special tokens that frame the video in the prompt; their embeddings are rows of the LM's table.
MARKERS = {
    "start": "<|video_start|>",
    "end": "<|video_end|>",
    "slow": "<|slow|>",
    "middle": "<|middle|>",
    "fast": "<|fast|>",
    "uniform": "<|uniform|>",
    "frame": "<|frame|>",
}


@dataclass
class VideoLLMConfig:
    """What a saved :class:`VideoLLM` is made of, besides its weights (``vidllm_config.json``)."""

    tower: dict[str, Any]
    scorer: dict[str, Any] | None = None
    reducer: dict[str, Any] = field(default_factory=lambda: asdict(ReducerConfig()))
    projector_hidden: int | None = None  # defaults to the LM's hidden size
    prompt_template: str = "{video}\nQuestion: {question}\nAnswer:"
    max_question_chars: int = 1000
    max_new_tokens: int = 16
    decode_max_side: int | None = 512  # frames are decoded no larger than this (the tower resizes anyway)
    # Give the projector where and when each visual token is (:class:`VisualPositions`); hub
    # models (LLaVA-family) have projectors of their own and leave it off.
    visual_positions: bool = False
    # Give the projector the scorer's question relevance of each visual token
    # (:func:`token_relevance`); the uniform reducer then scores the frames too (what it keeps
    # does not change).
    relevance_inputs: bool = False
    # Give the projector how each visual token's place changes over time (:func:`token_motion`):
    # the tower's features there a little later minus a little earlier.
    motion_inputs: bool = False

    def reducer_config(self) -> ReducerConfig:
        return ReducerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.reducer.items()})


@dataclass
class KeptFrame:
    index: int  # frame index in the source video
    timestamp: float  # seconds


@dataclass
class Answer:
    """An answer and what the reducer did to get it."""

    text: str
    frames: dict[str, list[KeptFrame]]  # per path: the frames kept
    boxes: dict[
        int, tuple[float, float, float, float]
    ]  # source frame index -> RoI box in pixels (x0, y0, x1, y1)
    visual_tokens: int  # visual embeddings fed to the LM
    uniform_tokens: int  # what uniform sampling of the same frames at full resolution would have fed
    prompt_tokens: int  # everything fed to the LM (visual + markers + question)
    timings: dict[str, float]  # seconds per stage
    relevance: list[float] = field(default_factory=list)  # question relevance of each sampled frame
    sampled_timestamps: list[float] = field(default_factory=list)
    reducer: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedInput:
    """A video and question turned into LM input embeddings (what ``answer`` generates from)."""

    embeds: torch.Tensor  # (L, H)
    reduction: Reduction
    sampled_indices: list[int]
    sampled_timestamps: list[float]
    frame_size: tuple[int, int]  # (height, width) of the decoded frames
    uniform_tokens: int
    timings: dict[str, float]


class _Timer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.start


def _as_frames(
    video: Any, num_frames: int, max_side: int | None
) -> tuple[np.ndarray, list[int], list[float]]:
    """Frames ``(T, H, W, 3)`` uint8, their source indices and timestamps, from any accepted input."""
    if isinstance(video, np.ndarray | torch.Tensor):
        frames = video.numpy() if isinstance(video, torch.Tensor) else video
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"a frame array must be uint8 of shape (T, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        if frames.shape[0] == 0:
            raise ValueError("the frame array is empty")
        keep = uniform_frames(frames.shape[0], num_frames) if frames.shape[0] > num_frames else None
        indices = keep if keep is not None else list(range(frames.shape[0]))
        return frames[indices], indices, [float(i) for i in indices]  # no clock: one frame a second
    from vidllm.video import Video, read_video

    if not isinstance(video, Video):
        video = read_video(video, num_frames=num_frames, max_side=max_side)
    return video.frames, [int(i) for i in video.indices], [float(t) for t in video.timestamps]


class VisualPositions(nn.Module):
    """Where and when each visual token is, as extra projector inputs.

    A token's cell (its centre and size, as fractions of the frame: RoI crops and pooled grids
    say where their cells really are) and its frame's place among the sampled frames (0 to 1)
    go through Fourier features (NeRF's encoding, ``sin``/``cos`` at ``num_bands`` octaves),
    concatenated to the tower's features before the projector. Without them a token's place in
    the frame is only its place in the row-major sequence, which a small LM trained from scratch
    learns to read late, if at all; questions about motion and order need it.
    """

    num_coordinates = 5  # x centre, y centre, width, height, time

    def __init__(self, num_bands: int = 6) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.pi * 2.0 ** torch.arange(num_bands), persistent=False)

    @property
    def num_features(self) -> int:
        return self.num_coordinates * (1 + 2 * len(self.frequencies))

    @staticmethod
    def coordinates(segments: Sequence[Segment], num_frames: int) -> torch.Tensor:
        """``(N, 5)`` cell centre x, y, cell width, height and time of every token of ``segments``."""
        rows = []
        for segment in segments:
            x0, y0, x1, y1 = segment.box or (0.0, 0.0, 1.0, 1.0)
            gh, gw = segment.grid
            cy, cx = torch.meshgrid(
                (torch.arange(gh) + 0.5) / gh, (torch.arange(gw) + 0.5) / gw, indexing="ij"
            )
            time = segment.frame / max(num_frames - 1, 1)
            rows.append(
                torch.stack(
                    [
                        x0 + cx.flatten() * (x1 - x0),
                        y0 + cy.flatten() * (y1 - y0),
                        torch.full((gh * gw,), (x1 - x0) / gw),
                        torch.full((gh * gw,), (y1 - y0) / gh),
                        torch.full((gh * gw,), time),
                    ],
                    dim=1,
                )
            )
        return torch.cat(rows)

    def forward(self, coordinates: torch.Tensor) -> torch.Tensor:
        """``(N, num_features)`` Fourier features of ``(N, 5)`` coordinates."""
        coordinates = coordinates.to(self.frequencies.device, torch.float32)
        angles = coordinates[..., None] * self.frequencies
        return torch.cat([coordinates[..., None], angles.sin(), angles.cos()], dim=-1).flatten(-2)


def token_relevance(reduction: Reduction, coordinates: torch.Tensor) -> torch.Tensor:
    """``(N,)`` the scorer's patch relevance at each visual token's cell centre, standardised.

    The scorer already knows which patches show what the question asks about (it chose the
    frames and regions); a small LM trained from scratch otherwise has to relearn that from the
    answers alone. Bilinear, so RoI crops and pooled grids read the map where their cells are;
    standardised over the whole video, as cosine scores differ in scale between questions.
    """
    if reduction.patch_scores is None:
        raise ValueError("this model reads the scorer's patch relevance; the reduction has none")
    maps = reduction.patch_scores.float()
    maps = (maps - maps.mean()) / maps.std().clamp_min(1e-6)
    frames = torch.cat(
        [torch.full((s.tokens.shape[0],), s.frame, dtype=torch.long) for s in reduction.segments]
    )
    points = (coordinates[:, :2].to(maps.device) * 2 - 1)[:, None, None, :]  # grid_sample's [-1, 1]
    sampled = F.grid_sample(
        maps[frames.to(maps.device), None],
        points,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return sampled.flatten()


def token_motion(reduction: Reduction, span: float = 1 / 16) -> torch.Tensor:
    """``(N, C)`` per visual token, the tower's features at its cell a little later minus a little
    earlier (TSN's RGB difference, on features).

    A token of one frame cannot tell which way its object moves; comparing its place across frames
    is attention a small LM trained from scratch learns late, if at all. The difference of the
    features of the encoded frames ``span`` of them before and after (at least the neighbours,
    clamped at the ends), cropped to the token's box and pooled to its grid as the token was, says
    where an edge arrives and where one leaves. Reads ``reduction.features``: every encoded frame,
    not only the kept ones.
    """
    if reduction.features is None or reduction.encoded_frames is None:
        raise ValueError(
            "this model reads motion features; the reduction does not carry the tower's features"
        )
    features, encoded = reduction.features, reduction.encoded_frames
    _, h, w, channels = features.shape
    step = max(1, round(len(encoded) * span))
    where = {f: i for i, f in enumerate(encoded)}
    # Segments with the same crop window and grid (all the fast path's, for one) are pooled in one
    # call, and each feature map is read by one indexing op: per-segment slices would cost a
    # backward pass a zero-filled copy of ``features`` each.
    groups: dict[tuple[int, int, int, int, tuple[int, int]], list[int]] = {}
    later, earlier = [], []
    for k, segment in enumerate(reduction.segments):
        i = where[segment.frame]
        later.append(encoded[min(i + step, len(encoded) - 1)])
        earlier.append(encoded[max(i - step, 0)])
        x0, y0, x1, y1 = segment.box or (0.0, 0.0, 1.0, 1.0)
        r0, c0 = round(y0 * h), round(x0 * w)
        window = (r0, max(round(y1 * h), r0 + 1), c0, max(round(x1 * w), c0 + 1))
        groups.setdefault((*window, tuple(segment.grid)), []).append(k)
    pooled, offset = [], 0
    rows_of = [None] * len(later)  # rows_of[k]: segment k's rows in torch.cat(pooled)
    for (r0, r1, c0, c1, grid), members in groups.items():
        after = features[[later[k] for k in members], r0:r1, c0:c1]
        before = features[[earlier[k] for k in members], r0:r1, c0:c1]
        out = F.adaptive_avg_pool2d((after - before).permute(0, 3, 1, 2).float(), grid)  # (k, C, gh, gw)
        pooled.append(out.flatten(2).transpose(1, 2).reshape(-1, channels))
        for k in members:
            rows_of[k] = torch.arange(offset, offset + grid[0] * grid[1], device=features.device)
            offset += grid[0] * grid[1]
    return torch.cat(pooled)[torch.cat(rows_of)]


class VideoLLM(nn.Module):
    """A vision tower, the token reducer, a projector and a causal LM, answering questions about videos."""

    def __init__(self, config: VideoLLMConfig, tower: nn.Module, lm: nn.Module, tokenizer, scorer=None):
        super().__init__()
        self.config = config
        self.tower = tower
        self.lm = lm
        self.tokenizer = tokenizer
        self.scorer = scorer
        self._ensure_markers()
        hidden = lm.get_input_embeddings().embedding_dim
        mid = config.projector_hidden or hidden
        if config.relevance_inputs and scorer is None:
            raise ValueError(
                "this model's projector reads relevance scores (relevance_inputs); it needs a scorer"
            )
        self.positions = VisualPositions() if config.visual_positions else None
        inputs = tower.hidden_size + (self.positions.num_features if self.positions is not None else 0)
        inputs += 1 if config.relevance_inputs else 0
        inputs += tower.hidden_size if config.motion_inputs else 0
        self.projector = nn.Sequential(nn.Linear(inputs, mid), nn.GELU(), nn.Linear(mid, hidden))

    # -- construction ---------------------------------------------------------------------------

    def _ensure_markers(self) -> None:
        missing = [m for m in MARKERS.values() if m not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_special_tokens({"additional_special_tokens": missing})
            self.lm.resize_token_embeddings(len(self.tokenizer))
        self.marker_ids = {k: self.tokenizer.convert_tokens_to_ids(v) for k, v in MARKERS.items()}

    @classmethod
    def from_config(cls, config: VideoLLMConfig, lm: nn.Module, tokenizer) -> VideoLLM:
        """Build tower and scorer from their specs around an existing LM (weights as initialised)."""
        from vidllm.scorers import build_scorer
        from vidllm.towers import build_tower

        tower = build_tower(config.tower)
        scorer = build_scorer(config.scorer) if config.scorer else None
        return cls(config, tower, lm, tokenizer, scorer)

    def save_pretrained(self, directory: str | Path) -> None:
        """One directory: config JSON, tower+projector(+scorer) safetensors, and the LM + tokenizer under ``lm/``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("lm.")}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        self.lm.save_pretrained(directory / LM_DIR, safe_serialization=True)
        self.tokenizer.save_pretrained(directory / LM_DIR)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None) -> VideoLLM:
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import vidllm.lm  # noqa: F401  (registers VidLM with the Auto classes)

        directory = Path(directory)
        config_file = directory / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{directory} is not a vidllm model directory: {CONFIG_NAME} is missing "
                "(save one with VideoLLM.save_pretrained, or pass a model name such as 'default')"
            )
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing; vidllm checkpoints are safetensors files")
        config = VideoLLMConfig(**json.loads(config_file.read_text()))
        tokenizer = AutoTokenizer.from_pretrained(directory / LM_DIR)
        lm = AutoModelForCausalLM.from_pretrained(directory / LM_DIR, use_safetensors=True)
        model = cls.from_config(config, lm, tokenizer)
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        missing = [k for k in missing if not k.startswith("lm.")]
        if missing or unexpected:
            raise RuntimeError(
                f"{weights} does not match the model: missing {missing}, unexpected {unexpected}"
            )
        model.eval()
        return model.to(device) if device is not None else model

    # -- the pipeline ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def validate_question(self, question: str) -> str:
        if not isinstance(question, str):
            raise TypeError(f"the question must be a string, got {type(question).__name__}")
        question = question.strip()
        if not question:
            raise ValueError("the question is empty: ask something about the video")
        if len(question) > self.config.max_question_chars:
            raise ValueError(
                f"the question is {len(question)} characters long; the limit is "
                f"{self.config.max_question_chars} (VideoLLMConfig.max_question_chars)"
            )
        return question

    def resolve_reducer(
        self,
        reducer: str,
        budget: int | None,
        num_frames: int | None = None,
        roi_ratio: float | None = None,
    ) -> ReducerConfig | UniformConfig:
        """The reducer configuration a request asks for (name, optional token budget).

        ``num_frames`` and ``roi_ratio`` override the model's configuration for this request only
        (the demo's advanced settings); ``roi_ratio`` has no effect on the uniform baseline.
        """
        base = self.config.reducer_config()
        overrides = {k: v for k, v in (("num_frames", num_frames), ("roi_ratio", roi_ratio)) if v is not None}
        if overrides:
            base = ReducerConfig(**{**asdict(base), **overrides})
        if reducer == "free-video-llm":
            return base if budget is None else config_for_budget(budget, self.tower.grid, base=base)
        if reducer == "uniform":
            budget = plan(base, self.tower.grid).total if budget is None else budget
            return uniform_config_for_budget(budget, self.tower.grid, num_frames=base.num_frames)
        raise ValueError(f"unknown reducer {reducer!r}; choose 'free-video-llm' or 'uniform'")

    @torch.inference_mode()
    def prepare(
        self,
        video: Any,
        question: str,
        *,
        budget: int | None = None,
        reducer: str = "free-video-llm",
        num_frames: int | None = None,
        roi_ratio: float | None = None,
    ) -> PreparedInput:
        """Steps 1-6 of the pipeline: the LM input embeddings for one video and question."""
        question = self.validate_question(question)
        config = self.resolve_reducer(reducer, budget, num_frames, roi_ratio)
        timings: dict[str, float] = {}
        with _Timer(timings, "decode"):
            frames, indices, timestamps = _as_frames(video, config.num_frames, self.config.decode_max_side)
        with _Timer(timings, "encode"):
            features = self.tower.encode(frames).to(self.device)
        if isinstance(config, UniformConfig):
            scores = (None, None)
            if self.config.relevance_inputs:
                with _Timer(timings, "score"):
                    scores = self._score(frames, question)
            with _Timer(timings, "reduce"):
                reduction = reduce_uniform(features, config, *scores)
        else:
            with _Timer(timings, "score"):
                scores = self._score(frames, question)
            with _Timer(timings, "reduce"):
                reduction = reduce_free_video_llm(
                    features,
                    *scores,
                    config,
                    reencode=lambda f, box: self.tower.encode_crop(frames[f : f + 1], [box])[0].to(
                        self.device
                    ),
                )
        with _Timer(timings, "project"):
            embeds, _ = self.layout(reduction, timestamps, question)
        return PreparedInput(
            embeds=embeds,
            reduction=reduction,
            sampled_indices=indices,
            sampled_timestamps=timestamps,
            frame_size=tuple(frames.shape[1:3]),
            uniform_tokens=uniform_tokens(self.tower.grid, len(indices)),
            timings=timings,
        )

    def _score(self, frames: torch.Tensor, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T,)`` frame and ``(T, hs, ws)`` patch relevance of ``frames`` to ``question``."""
        if self.scorer is None:
            raise RuntimeError(
                "the free-video-llm reducer (and a model's relevance inputs) needs a relevance scorer; "
                "this model has none"
            )
        frame_scores, patch_scores = self.scorer.score(frames, question)
        return frame_scores.to(self.device), patch_scores.to(self.device)

    def project(self, reduction: Reduction, num_frames: int) -> torch.Tensor:
        """The reduction's visual tokens in the LM's embedding space, ``(N, H)`` in segment order."""
        inputs = [torch.cat([s.tokens for s in reduction.segments]).to(self.device, torch.float32)]
        if self.positions is not None or self.config.relevance_inputs:
            coordinates = VisualPositions.coordinates(reduction.segments, num_frames)
            if self.positions is not None:
                inputs.append(self.positions(coordinates).to(self.device))
            if self.config.relevance_inputs:
                inputs.append(token_relevance(reduction, coordinates)[:, None].to(self.device))
        if self.config.motion_inputs:
            inputs.append(token_motion(reduction).to(self.device, torch.float32))
        return self.projector(torch.cat(inputs, dim=1).to(self.projector[0].weight.dtype))

    def prompt_text_ids(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids of the prompt template's text before and after ``{video}`` for ``question``
        (the text after the video is the end of the prompt: :meth:`layout` ends with it)."""
        before, after = self.config.prompt_template.split("{video}")
        # ``{question}`` may also come before the video (then a causal LM's visual tokens can
        # attend to it); the text before the video has no other field, so a plain replace.
        before = before.replace("{question}", question)
        return (
            self.tokenizer(before, add_special_tokens=True)["input_ids"],
            self.tokenizer(after.format(question=question), add_special_tokens=False)["input_ids"],
        )

    def layout(
        self, reduction: Reduction, timestamps: Sequence[float], question: str
    ) -> tuple[torch.Tensor, list[int]]:
        """Input embeddings ``(L, H)`` of the prompt template with the video in place of
        ``{video}``, and the rows of them that are visual tokens.

        The video is ``<|video_start|>``, then for each path a path marker (``<|slow|>``, ...)
        followed by its frames, each a ``<|frame|>`` separator, the frame's time as text
        (``"12.5s"``; left out on the fast path, whose frames are all the sampled frames in
        order, to keep the overhead at one token a frame) and its visual tokens; then
        ``<|video_end|>``.
        """
        text_ids, tail = self.prompt_text_ids(question)
        pieces: list[torch.Tensor | list[int]] = [[*text_ids, self.marker_ids["start"]]]
        visual = self.project(reduction, len(timestamps))
        positions: list[int] = []
        length, offset, path = len(pieces[0]), 0, None
        for segment in reduction.segments:
            ids = [] if segment.path == path else [self.marker_ids[segment.path]]
            path = segment.path
            ids.append(self.marker_ids["frame"])
            if path != "fast":
                ids += self.tokenizer(f"{timestamps[segment.frame]:.1f}s", add_special_tokens=False)[
                    "input_ids"
                ]
            pieces.append(ids)
            length += len(ids)
            n = segment.tokens.shape[0]
            pieces.append(visual[offset : offset + n])
            positions.extend(range(length, length + n))
            offset += n
            length += n
        pieces.append([self.marker_ids["end"], *tail])
        embed = self.lm.get_input_embeddings()
        embeds = torch.cat(
            [p if isinstance(p, torch.Tensor) else embed(torch.tensor(p, device=self.device)) for p in pieces]
        )
        return embeds, positions

    def _answer_from(self, prepared: PreparedInput, text: str, timings: dict[str, float]) -> Answer:
        reduction = prepared.reduction
        height, width = prepared.frame_size
        frames: dict[str, list[KeptFrame]] = {}
        boxes: dict[int, tuple[float, float, float, float]] = {}
        for segment in reduction.segments:
            source = prepared.sampled_indices[segment.frame]
            kept = frames.setdefault(segment.path, [])
            if not kept or kept[-1].index != source:
                kept.append(KeptFrame(source, prepared.sampled_timestamps[segment.frame]))
            if segment.box is not None and segment.box != (0.0, 0.0, 1.0, 1.0):
                x0, y0, x1, y1 = segment.box
                boxes[source] = (x0 * width, y0 * height, x1 * width, y1 * height)
        scores = reduction.frame_scores
        return Answer(
            text=text,
            frames=frames,
            boxes=boxes,
            visual_tokens=reduction.num_tokens,
            uniform_tokens=prepared.uniform_tokens,
            prompt_tokens=int(prepared.embeds.shape[0]),
            timings={**prepared.timings, **timings},
            relevance=[] if scores is None else [float(s) for s in scores],
            sampled_timestamps=list(prepared.sampled_timestamps),
            reducer=reduction.config.to_dict(),
        )

    def _generation_kwargs(self, max_new_tokens: int | None) -> dict[str, Any]:
        eos = self.tokenizer.eos_token_id
        return {
            "max_new_tokens": max_new_tokens or self.config.max_new_tokens,
            "do_sample": False,
            "eos_token_id": eos,
            "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
        }

    def _generate(
        self, prepared: Sequence[PreparedInput], max_new_tokens: int | None, streamer=None
    ) -> torch.Tensor:
        """Greedy generation from one or more prepared inputs (left padded into one batch)."""
        length = max(p.embeds.shape[0] for p in prepared)
        hidden = prepared[0].embeds.shape[1]
        embeds = torch.zeros(
            len(prepared), length, hidden, dtype=prepared[0].embeds.dtype, device=self.device
        )
        mask = torch.zeros(len(prepared), length, dtype=torch.long, device=self.device)
        for i, p in enumerate(prepared):
            n = p.embeds.shape[0]
            embeds[i, length - n :] = p.embeds
            mask[i, length - n :] = 1
        return self.lm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            streamer=streamer,
            **self._generation_kwargs(max_new_tokens),
        )

    def answer(
        self,
        video: Any,
        question: str,
        *,
        budget: int | None = None,
        reducer: str = "free-video-llm",
        max_new_tokens: int | None = None,
        num_frames: int | None = None,
    ) -> Answer:
        """Answer a question about a video (a path, bytes, a file object, a decoded ``Video`` or frames)."""
        (answer,) = self.answer_batch(
            [video],
            [question],
            budget=budget,
            reducer=reducer,
            max_new_tokens=max_new_tokens,
            num_frames=num_frames,
        )
        return answer

    def stream(
        self,
        video: Any,
        question: str,
        *,
        budget: int | None = None,
        reducer: str = "free-video-llm",
        max_new_tokens: int | None = None,
        num_frames: int | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text as it is generated (the reduction runs before the first piece)."""
        yield from self.stream_answer(
            video,
            question,
            budget=budget,
            reducer=reducer,
            max_new_tokens=max_new_tokens,
            num_frames=num_frames,
        )

    def stream_answer(self, video: Any, question: str, **kwargs) -> Iterator[str]:
        """As :meth:`stream`; the generator's return value (``StopIteration.value``) is the full :class:`Answer`."""
        from transformers import TextIteratorStreamer

        max_new_tokens = kwargs.pop("max_new_tokens", None)
        start = time.perf_counter()
        prepared = self.prepare(video, question, **kwargs)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True)
        errors: list[BaseException] = []

        def generate() -> None:
            try:
                with torch.inference_mode():
                    self._generate([prepared], max_new_tokens, streamer)
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        gen_start = time.perf_counter()
        thread.start()
        pieces: list[str] = []
        first: float | None = None
        for piece in streamer:
            if not piece:
                continue
            if first is None:
                first = time.perf_counter()
            pieces.append(piece)
            yield piece
        thread.join()
        if errors:
            raise errors[0]
        end = time.perf_counter()
        timings = {"generate": end - gen_start, "total": end - start}
        if first is not None:
            timings["first_token"] = first - start
        return self._answer_from(prepared, "".join(pieces).strip(), timings)

    @torch.inference_mode()
    def answer_batch(
        self,
        videos: Sequence[Any],
        questions: Sequence[str],
        *,
        budget: int | None = None,
        reducer: str = "free-video-llm",
        max_new_tokens: int | None = None,
        num_frames: int | None = None,
    ) -> list[Answer]:
        """Answer several (video, question) pairs with one batched generation (left padding)."""
        if len(videos) != len(questions):
            raise ValueError(f"{len(videos)} videos but {len(questions)} questions")
        if not videos:
            return []
        start = time.perf_counter()
        prepared = [
            self.prepare(v, q, budget=budget, reducer=reducer, num_frames=num_frames)
            for v, q in zip(videos, questions, strict=True)
        ]
        timings: dict[str, float] = {}
        with _Timer(timings, "generate"):
            output = self._generate(prepared, max_new_tokens)
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        timings["total"] = time.perf_counter() - start
        return [self._answer_from(p, t.strip(), timings) for p, t in zip(prepared, texts, strict=True)]
