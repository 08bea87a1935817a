"""What every hub-model adapter shares: frame sampling, scoring, reduction, prompt splicing, generation.

An adapter applies the project's Free Video-LLM reducer (:mod:`vidllm.reducer`; Han et al., 2024,
arXiv:2410.10441) to a video-LLM from transformers without touching its weights:

1. sample frames uniformly from the decoded array and group them into the model's temporal units
   (one frame for LLaVA-family models, ``temporal_patch_size`` frames for Qwen2-VL);
2. encode every unit exactly as the model encodes video (its own vision tower, feature layer,
   projector) and lay the visual tokens on their ``(h, w)`` grid;
3. score the frames against the question (any :class:`vidllm.interfaces.RelevanceScorer`) and
   run the reducer (slow / middle / fast paths with RoI crops, or the uniform baseline);
4. render the model's own chat prompt with one video placeholder, embed it with the model's
   input embeddings, and put the reduced visual tokens, in path order, where the placeholder was;
5. generate from ``inputs_embeds`` (plus the 3D rotary positions Qwen2-VL needs).

The number of visual embeddings fed is exactly ``plan(config, grid, units).total``.
Family specifics (how a unit is encoded, the token grid, the prompt, positions) live in the
subclasses in :mod:`vidllm.adapters.llava` and :mod:`vidllm.adapters.qwen2_vl`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from vidllm.interfaces import Box, RelevanceScorer
from vidllm.reducer import (
    ReducerConfig,
    Reduction,
    Segment,
    TokenPlan,
    UniformConfig,
    config_for_budget,
    plan,
    pooled_grid,
    reduce_free_video_llm,
    reduce_uniform,
    uniform_config_for_budget,
    uniform_frames,
    uniform_tokens,
)

logger = logging.getLogger(__name__)

Grid = tuple[int, int]
PixelBox = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels of the input frame
ReducerArg = ReducerConfig | UniformConfig | str | None


@dataclass
class PreparedInputs:
    """One question about one video, turned into the model's input embeddings.

    ``inputs_embeds[:, visual_span[0]:visual_span[1]]`` are the reduced visual tokens, in path
    order; everything else comes from the model's own chat prompt.
    """

    inputs_embeds: torch.Tensor  # (1, L, D)
    attention_mask: torch.Tensor  # (1, L)
    position_ids: torch.Tensor | None  # (4, 1, L) for Qwen2-VL's M-RoPE, None for 1D RoPE models
    visual_span: tuple[int, int]
    reduction: Reduction
    plan: TokenPlan
    grid: Grid
    unit_frames: list[list[int]]  # input-frame indices each reducer unit covers
    frame_size: tuple[int, int]  # (H, W) of the input frames
    visible_region: PixelBox  # the part of the frame the vision tower sees

    @property
    def visual_tokens(self) -> int:
        return self.visual_span[1] - self.visual_span[0]


@dataclass
class AdapterAnswer:
    """An answer and what the reducer kept to get it."""

    text: str
    reduction: Reduction
    frames: dict[str, list[int]]  # per path: input-frame indices of the kept units, in LM order
    boxes: dict[int, PixelBox]  # input-frame index -> RoI box in pixels (slow and middle paths)
    visual_tokens: int  # visual embeddings fed to the LM (== plan(...).total)
    uniform_tokens: int  # what the same units at the model's full resolution would have cost
    prompt_tokens: int  # everything fed to the LM
    generated_ids: list[int] = field(default_factory=list)


class VideoReducerAdapter:
    """Base class: a transformers video-LLM, its processor, a relevance scorer and a reducer config.

    Args:
        model: the ``...ForConditionalGeneration`` model (weights untouched; put it in eval mode).
        processor: the model's processor (tokenizer, video processor and chat template).
        scorer: question relevance of frames and patches; required for the slow path and the RoI
            crop of :class:`ReducerConfig`, unused by :class:`UniformConfig`.
        reducer: a :class:`ReducerConfig` (default: the paper's), a :class:`UniformConfig`, or the
            names ``"free-video-llm"`` / ``"uniform"``.
        budget: a visual-token budget; the configuration that fits it is chosen per video (its
            frame count and size decide the grid) from ``reducer`` as the base.
        max_question_chars: longer questions are refused with ``ValueError``.
    """

    #: model_type -> transformers class name, for :meth:`from_pretrained`.
    model_classes: ClassVar[dict[str, str]] = {}
    #: the prompt when the processor carries no chat template ({video} is the placeholder token).
    fallback_template: ClassVar[str] = "{video}\n{question}"
    default_max_new_tokens: ClassVar[int] = 32

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        scorer: RelevanceScorer | None = None,
        reducer: ReducerArg = None,
        budget: int | None = None,
        max_question_chars: int = 2000,
    ) -> None:
        model_type = getattr(model.config, "model_type", None)
        if self.model_classes and model_type not in self.model_classes:
            raise TypeError(
                f"{type(self).__name__} supports model types {sorted(self.model_classes)}, got {model_type!r}"
            )
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.scorer = scorer
        self.reducer = _as_config(reducer)
        self.budget = budget
        self.max_question_chars = max_question_chars

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        scorer: RelevanceScorer | None = None,
        reducer: ReducerArg = None,
        budget: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        **adapter_kwargs: Any,
    ) -> VideoReducerAdapter:
        """Load a model and its processor from a local directory (or a hub name, where reachable).

        ``model_kwargs`` go to the model's ``from_pretrained`` (``attn_implementation``, ...);
        ``adapter_kwargs`` to the adapter's constructor.
        """
        import transformers

        config = transformers.AutoConfig.from_pretrained(path)
        class_name = cls.model_classes.get(config.model_type)
        if class_name is None:
            raise ValueError(
                f"{path} holds a {config.model_type!r} model; {cls.__name__} loads {sorted(cls.model_classes)}"
            )
        model_cls = getattr(transformers, class_name)
        model = model_cls.from_pretrained(path, dtype=dtype, **(model_kwargs or {})).eval()
        if device is not None:
            model = model.to(device)
        processor = transformers.AutoProcessor.from_pretrained(path)
        return cls(model, processor, scorer=scorer, reducer=reducer, budget=budget, **adapter_kwargs)

    # ------------------------------------------------------------------------------------------
    # what a family defines
    # ------------------------------------------------------------------------------------------

    @property
    def frames_per_unit(self) -> int:
        """Frames one reducer unit (one step of the model's temporal axis) covers."""
        return 1

    def grid_for(self, frame_size: tuple[int, int], num_frames: int) -> Grid:
        """The ``(h, w)`` token grid of one unit for frames of ``frame_size`` (H, W)."""
        raise NotImplementedError

    def visible_region(self, frame_size: tuple[int, int]) -> PixelBox:
        """The part of an ``(H, W)`` frame the vision tower sees after the processor's resize/crop."""
        height, width = frame_size
        return 0.0, 0.0, float(width), float(height)

    def encode_units(self, frames: np.ndarray) -> torch.Tensor:
        """``(F, H, W, 3)`` uint8 sampled frames -> ``(F // frames_per_unit, h, w, D)`` LM-space tokens."""
        raise NotImplementedError

    @property
    def video_token_id(self) -> int:
        return self.model.config.video_token_id

    def prompt_text(self, question: str) -> str:
        """The model's own chat prompt for ``question`` with one video placeholder."""
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
        logger.info("the processor has no chat template; using %r", self.fallback_template)
        return self.fallback_template.format(video=self.processor.video_token, question=question)

    def prompt_ids(self, question: str) -> torch.Tensor:
        """:meth:`prompt_text`, tokenized as the processor tokenizes text (placeholder not expanded)."""
        return self.tokenizer(self.prompt_text(question), return_tensors="pt")["input_ids"][0]

    def video_suffix(self) -> torch.Tensor | None:
        """Embeddings the model puts after a video's tokens (LLaVA-OneVision's newline), or None."""
        return None

    def position_ids(
        self, input_ids: torch.Tensor, placeholder: int, reduction: Reduction, grid: Grid, suffix: int, **kw
    ) -> torch.Tensor | None:
        """Position ids for the spliced sequence; None lets the model count 0, 1, 2, ..."""
        return None

    # ------------------------------------------------------------------------------------------
    # the shared pipeline
    # ------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def validate_question(self, question: str) -> str:
        if not isinstance(question, str):
            raise TypeError(f"the question must be a string, got {type(question).__name__}")
        question = question.strip()
        if not question:
            raise ValueError("the question is empty: ask something about the video")
        if len(question) > self.max_question_chars:
            raise ValueError(
                f"the question is {len(question)} characters long; the limit is {self.max_question_chars}"
            )
        return question

    def resolve_config(
        self,
        frame_size: tuple[int, int],
        available_units: int,
        *,
        reducer: ReducerArg = None,
        budget: int | None = None,
    ) -> tuple[ReducerConfig | UniformConfig, Grid]:
        """The reducer configuration for one video, and the unit grid it was planned on.

        A budget picks, from the base configuration, the largest one whose plan fits; the grid can
        depend on the frame count (Qwen2-VL's per-frame pixel cap), so the choice is repeated
        until the two agree.
        """
        base = _as_config(reducer) if reducer is not None else self.reducer
        budget = self.budget if budget is None else budget
        config: ReducerConfig | UniformConfig = base
        grid = self.grid_for(frame_size, self._sampled_frame_count(config, available_units))
        for _ in range(4):
            if budget is not None:
                if isinstance(base, UniformConfig):
                    config = uniform_config_for_budget(budget, grid, num_frames=available_units)
                else:
                    config = config_for_budget(budget, grid, base=base, num_frames=available_units)
            new_grid = self.grid_for(frame_size, self._sampled_frame_count(config, available_units))
            if new_grid == grid:
                return config, grid
            grid = new_grid
        return config, grid

    def _sampled_frame_count(self, config: ReducerConfig | UniformConfig, available_units: int) -> int:
        return min(config.num_frames, available_units) * self.frames_per_unit

    def sample_units(self, num_frames: int, units: int) -> list[list[int]]:
        """Input-frame indices of ``units`` uniformly spaced units over ``num_frames`` frames.

        A unit is ``frames_per_unit`` consecutive samples; a clip too short to fill the last unit
        repeats its last frame, as the Qwen2-VL processor pads.
        """
        per = self.frames_per_unit
        wanted = units * per
        if num_frames >= wanted:
            indices = uniform_frames(num_frames, wanted)
        else:
            indices = list(range(num_frames))
            indices += [indices[-1]] * (wanted - len(indices))
        return [indices[i * per : (i + 1) * per] for i in range(units)]

    @torch.inference_mode()
    def prepare(
        self,
        frames: np.ndarray | torch.Tensor,
        question: str,
        *,
        reducer: ReducerArg = None,
        budget: int | None = None,
        fps: float | None = None,
    ) -> PreparedInputs:
        """Sample, encode, score and reduce the video, and splice it into the model's prompt.

        ``fps`` is the frame rate of ``frames`` (only Qwen2.5-VL's temporal positions use it).
        """
        frames = as_frame_array(frames)
        question = self.validate_question(question)
        frame_size = (int(frames.shape[1]), int(frames.shape[2]))
        available = math.ceil(frames.shape[0] / self.frames_per_unit)
        config, grid = self.resolve_config(frame_size, available, reducer=reducer, budget=budget)
        n_units = min(config.num_frames, available)
        unit_frames = self.sample_units(frames.shape[0], n_units)
        flat = [i for unit in unit_frames for i in unit]
        sampled = frames[flat]

        features = self.encode_units(sampled)
        if tuple(features.shape[1:3]) != grid or features.shape[0] != n_units:
            raise RuntimeError(
                f"the vision tower gave {tuple(features.shape[:3])} tokens, the plan expected "
                f"({n_units}, {grid[0]}, {grid[1]}): the processor's resize differs from grid_for()"
            )
        region = self.visible_region(frame_size)
        if isinstance(config, UniformConfig):
            reduction = reduce_uniform(features, config)
        else:
            reduction = self._reduce(features, sampled, unit_frames, question, config, region)
        expected = plan(config, grid, n_units)
        if reduction.num_tokens != expected.total:  # a reducer bug, never a user error
            raise RuntimeError(f"reduction made {reduction.num_tokens} tokens, plan() said {expected.total}")

        visual = torch.cat([s.tokens for s in reduction.segments]).to(self.device, self.dtype)
        input_ids = self.prompt_ids(question).to(self.device)
        hits = (input_ids == self.video_token_id).nonzero().flatten().tolist()
        if len(hits) != 1:
            raise ValueError(f"the prompt must hold exactly one video placeholder, found {len(hits)}")
        p = hits[0]
        embed = self.model.get_input_embeddings()
        text = embed(input_ids[None])[0]
        suffix = self.video_suffix()
        pieces = [text[:p], visual]
        if suffix is not None:
            pieces.append(suffix.to(self.device, self.dtype))
        pieces.append(text[p + 1 :])
        inputs_embeds = torch.cat(pieces)[None]
        n_suffix = 0 if suffix is None else suffix.shape[0]
        sampled_fps = fps * len(flat) / frames.shape[0] if fps else None
        position_ids = self.position_ids(
            input_ids, p, reduction, grid, n_suffix, units=n_units, sampled_fps=sampled_fps
        )
        return PreparedInputs(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=self.device),
            position_ids=position_ids,
            visual_span=(p, p + visual.shape[0]),
            reduction=reduction,
            plan=expected,
            grid=grid,
            unit_frames=unit_frames,
            frame_size=frame_size,
            visible_region=region,
        )

    def _reduce(
        self,
        features: torch.Tensor,
        sampled: np.ndarray,
        unit_frames: list[list[int]],
        question: str,
        config: ReducerConfig,
        region: PixelBox,
    ) -> Reduction:
        n = features.shape[0]
        needs_scores = (config.slow_frames > 0) or (config.roi_ratio < 1.0)
        if needs_scores and self.scorer is None:
            raise ValueError(
                "the Free Video-LLM reducer needs a relevance scorer for its slow path and RoI crop: "
                "pass scorer=... (e.g. vidllm.scorers.HFCLIPScorer), or use UniformConfig, or a "
                "ReducerConfig with slow_frames=0 and roi_ratio=1.0"
            )
        if needs_scores:
            frame_scores, patch_scores = self.scorer.score(crop_frames(sampled, region), question)
            per = self.frames_per_unit
            frame_scores = torch.as_tensor(frame_scores).float().reshape(n, per).mean(1)
            patch_scores = torch.as_tensor(patch_scores).float()
            patch_scores = patch_scores.reshape(n, per, *patch_scores.shape[1:]).mean(1)
        else:
            frame_scores, patch_scores = torch.zeros(n), None

        def reencode(unit: int, box: Box) -> torch.Tensor:
            per = self.frames_per_unit
            unit_pixels = sampled[unit * per : (unit + 1) * per]
            return self.encode_units(zoom_frames(unit_pixels, region, box))[0]

        return reduce_free_video_llm(features, frame_scores.cpu(), patch_scores, config, reencode=reencode)

    def generation_kwargs(self, prepared: PreparedInputs) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "inputs_embeds": prepared.inputs_embeds,
            "attention_mask": prepared.attention_mask,
        }
        if prepared.position_ids is not None:
            kwargs["position_ids"] = prepared.position_ids
        return kwargs

    @torch.inference_mode()
    def answer(
        self,
        frames: np.ndarray | torch.Tensor,
        question: str,
        *,
        max_new_tokens: int | None = None,
        reducer: ReducerArg = None,
        budget: int | None = None,
        fps: float | None = None,
        **generate_kwargs: Any,
    ) -> AdapterAnswer:
        """Answer ``question`` about ``frames`` (uint8 ``(T, H, W, 3)``), greedy unless told otherwise."""
        prepared = self.prepare(frames, question, reducer=reducer, budget=budget, fps=fps)
        generate_kwargs.setdefault("do_sample", False)
        if self.tokenizer.pad_token_id is not None:
            generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        out = self.model.generate(
            **self.generation_kwargs(prepared),
            max_new_tokens=max_new_tokens or self.default_max_new_tokens,
            **generate_kwargs,
        )
        new_ids = out[0].tolist()  # inputs_embeds without input_ids: generate returns new tokens only
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        return self._answer(prepared, text, new_ids)

    def _answer(self, prepared: PreparedInputs, text: str, new_ids: list[int]) -> AdapterAnswer:
        frames: dict[str, list[int]] = {}
        boxes: dict[int, PixelBox] = {}
        x0, y0, x1, y1 = prepared.visible_region
        for segment in prepared.reduction.segments:
            covered = prepared.unit_frames[segment.frame]
            frames.setdefault(segment.path, []).extend(dict.fromkeys(covered))
            if segment.box is not None and segment.path in ("slow", "middle"):
                bx0, by0, bx1, by1 = segment.box
                pixel = (
                    x0 + bx0 * (x1 - x0),
                    y0 + by0 * (y1 - y0),
                    x0 + bx1 * (x1 - x0),
                    y0 + by1 * (y1 - y0),
                )
                for index in covered:
                    boxes[index] = pixel
        units = len(prepared.unit_frames)
        return AdapterAnswer(
            text=text,
            reduction=prepared.reduction,
            frames=frames,
            boxes=boxes,
            visual_tokens=prepared.visual_tokens,
            uniform_tokens=uniform_tokens(prepared.grid, units),
            prompt_tokens=prepared.inputs_embeds.shape[1],
            generated_ids=new_ids,
        )


# ----------------------------------------------------------------------------------------------
# helpers shared by the families
# ----------------------------------------------------------------------------------------------


def _as_config(reducer: ReducerArg) -> ReducerConfig | UniformConfig:
    if reducer is None or reducer == "free-video-llm":
        return ReducerConfig()
    if reducer == "uniform":
        return UniformConfig()
    if isinstance(reducer, ReducerConfig | UniformConfig):
        return reducer
    raise ValueError(
        f"unknown reducer {reducer!r}; pass a ReducerConfig, a UniformConfig, 'free-video-llm' or 'uniform'"
    )


def as_frame_array(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Check and convert decoded frames to a uint8 ``(T, H, W, 3)`` numpy array."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a uint8 array of shape (T, H, W, 3), got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"the frame array is empty: {frames.shape}")
    return frames


def crop_frames(frames: np.ndarray, region: PixelBox) -> np.ndarray:
    """The pixels of ``region`` (rounded to whole pixels) of every frame."""
    x0, y0, x1, y1 = (round(v) for v in region)
    return np.ascontiguousarray(frames[:, y0:y1, x0:x1])


def zoom_frames(frames: np.ndarray, region: PixelBox, box: Box) -> np.ndarray:
    """Crop ``box`` (fractions of ``region``) out of the frames and resize it to the region's size.

    The RoI re-encoding of :func:`vidllm.reducer.reduce_free_video_llm`: the crop then goes
    through the model's own processor, so it is seen at the tower's full input resolution.
    """
    rx0, ry0, rx1, ry1 = region
    bx0, by0, bx1, by1 = box
    x0, x1 = round(rx0 + bx0 * (rx1 - rx0)), round(rx0 + bx1 * (rx1 - rx0))
    y0, y1 = round(ry0 + by0 * (ry1 - ry0)), round(ry0 + by1 * (ry1 - ry0))
    crop = torch.from_numpy(np.ascontiguousarray(frames[:, y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]))
    size = (round(ry1 - ry0), round(rx1 - rx0))
    x = F.interpolate(crop.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ----------------------------------------------------------------------------------------------
# where each kept token came from (for position ids)
# ----------------------------------------------------------------------------------------------


def _spans_identity(n: int, stride: int = 1) -> list[tuple[float, float]]:
    """Cell spans of a grid axis of ``n`` cells max-pooled by ``stride`` (a short last cell kept)."""
    return [(c * stride, min(c * stride + stride, n)) for c in range(math.ceil(n / stride))]


def _spans_adaptive(n: int, g: int) -> list[tuple[float, float]]:
    """Cell spans of adaptive pooling of ``n`` cells to ``g`` (torch's start/end rule)."""
    return [(math.floor(i * n / g), math.ceil((i + 1) * n / g)) for i in range(g)]


def _centres(spans: list[tuple[float, float]], n: int) -> list[int]:
    """The cell at the middle of each span (the lower of two middles), clipped to the axis."""
    return [min(n - 1, max(0, math.floor((a + b) / 2 - 0.5 + 1e-9))) for a, b in spans]


def segment_cells(segment: Segment, grid: Grid, config: ReducerConfig | UniformConfig) -> torch.Tensor:
    """``(n, 2)`` (row, col) on the unit's full token grid of each token of ``segment``, row-major.

    Pooled and cropped tokens take the middle cell of the region they summarise, so a kept token
    keeps its place in the frame: with nothing pooled or cropped this is the identity layout.
    Mirrors the geometry of :func:`vidllm.reducer.reduce_free_video_llm` / ``reduce_uniform``.
    """
    h, w = grid
    gh, gw = segment.grid
    if isinstance(config, UniformConfig):
        rows, cols = _spans_identity(h), _spans_identity(w, config.pool_stride)
    elif segment.path == "fast":
        rows, cols = _spans_adaptive(h, gh), _spans_adaptive(w, gw)
    else:
        ph, pw = pooled_grid(grid, config.pool_stride)
        bx0, by0, bx1, by1 = segment.box if segment.box is not None else (0.0, 0.0, 1.0, 1.0)
        t0, l0, t1, l1 = round(by0 * ph), round(bx0 * pw), round(by1 * ph), round(bx1 * pw)
        full_rows, full_cols = _spans_identity(h), _spans_identity(w, config.pool_stride)
        reencoded = config.roi_mode == "reencode" and (t0, l0, t1, l1) != (0, 0, ph, pw)
        if reencoded:  # the whole pooled layout, squeezed into the box
            rows = [(by0 * h + a * (by1 - by0), by0 * h + b * (by1 - by0)) for a, b in full_rows]
            cols = [(bx0 * w + a * (bx1 - bx0), bx0 * w + b * (bx1 - bx0)) for a, b in full_cols]
        else:
            rows, cols = full_rows[t0:t1], full_cols[l0:l1]
    r, c = _centres(rows, h), _centres(cols, w)
    if (len(r), len(c)) != (gh, gw):
        raise RuntimeError(
            f"segment grid {segment.grid} does not match its derived layout {(len(r), len(c))}"
        )
    rr, cc = torch.meshgrid(torch.tensor(r), torch.tensor(c), indexing="ij")
    return torch.stack([rr.flatten(), cc.flatten()], dim=1)
