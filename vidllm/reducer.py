"""Prompt-guided video token reduction (Free Video-LLM) and the uniform-sampling baseline.

Free Video-LLM: Prompt-guided Visual Perception for Efficient Training-free Video LLMs
(Han et al., 2024, arXiv:2410.10441; official code github.com/contrastive/FreeVideoLLM). From
``N`` uniformly sampled frames (default 50) it builds three paths and concatenates them in this
order:

- **slow**: the ``k`` frames (default 3) whose global feature is most similar to the question
  (a text-frame relevance scorer, CLIP in the paper), in temporal order. Each frame's patch grid
  is max-pooled 1D by 2 along the width (the paper's 24x24 = 576 -> 288), then cropped to a region
  of interest: the box of ``round(h * sqrt(r)) x round(w * sqrt(r))`` cells (``r`` = crop ratio,
  default 0.8) centred on the mean grid position of the ``int(h * w * r)`` cells most similar to
  the question (230 of 288 in the paper), shifted inside the grid where it would cross a border.
- **middle**: ``m`` uniformly spaced frames (default 5) at ``linspace(0, N, m + 1)[:-1]``, same
  pooling and crop.
- **fast**: all ``N`` frames adaptive-average-pooled to a small grid (default 4x4).

With the paper's LLaVA-1.6 grid (24x24) this gives 3 * 231 + 5 * 231 + 50 * 16 = 2648 visual
tokens, the figure the paper reports. The crop in the paper is taken on the pooled token grid
(``roi_mode="tokens"``); ``roi_mode="reencode"`` instead crops the box out of the frame's pixels
and encodes it again at the tower's full input resolution (a zoom on the relevant region, for
small objects), which costs one more tower pass per kept frame and gives the full pooled grid of
tokens per frame.

Everything is decided by :class:`ReducerConfig`; :func:`plan` gives the exact token counts before
any compute, and :func:`config_for_budget` picks the configuration that fits a token budget. The
baseline, :class:`UniformConfig`, spends the same budget on uniformly spaced frames at full
resolution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F

Grid = tuple[int, int]
PATHS = ("slow", "middle", "fast", "uniform")
ROI_CENTERS = ("mean", "window")


# ----------------------------------------------------------------------------------------------
# configuration and token plans
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReducerConfig:
    """Every knob of the Free Video-LLM reducer, with the paper's defaults.

    Attributes:
        num_frames: frames sampled uniformly from the video (the fast path sees all of them).
        slow_frames: frames chosen by question relevance (slow path).
        middle_frames: uniformly spaced frames (middle path).
        fast_grid: the grid every frame is average-pooled to on the fast path.
        pool_stride: 1D max-pooling stride along the width for slow and middle frames.
        roi_ratio: area ratio of the region-of-interest box; 1.0 keeps the whole frame.
        roi_mode: ``"tokens"`` crops the pooled token grid (the paper); ``"reencode"`` crops the
            frame's pixels and encodes the crop again at full resolution.
        roi_center: where the box goes (:func:`roi_box`): ``"mean"`` centres it on the mean
            position of the top-scoring cells (the official code); ``"window"`` puts it where it
            holds the most relevance, each cell weighted ``exp((score - max) / roi_temperature)``.
            The two agree for a large box; for a small one, the mean of the top cells drifts off
            a small subject.
        roi_temperature: the ``"window"`` weights' temperature, in units of the scores (cosine
            similarities): a cell far below the frame's peak adds almost nothing.
        roi_paths: the paths whose frames are cropped to the box (the paper crops both); a path
            left out keeps its frames whole, which ``roi_mode="reencode"`` feeds at the same
            token count as a crop.
        slow_min_gap: the slow frames' least distance apart, in sampled frames (:func:`top_frames`):
            0 takes the ``k`` best frames (the paper), which are often neighbours showing the same
            moment; a gap spreads them over the moments where the question's subjects appear.
        slow_gap_margin: with ``slow_min_gap``, only frames scoring within this margin of the best
            (in the scorer's units) are spread; None spreads any frame. A subject on screen for a
            moment then keeps its neighbouring frames instead of giving them up for frames
            without it.
        roi_overlap_weight: with ``roi_center="window"``, the boxes are placed one after another
            (slow frames, then middle ones) and a cell's weight is multiplied by this for every
            earlier box that held it. 1.0 (the default) places each box on its own frame's
            relevance alone, so all of them can show the same one of two relevant objects;
            below 1, a box moves to another relevant region when that one's weights sum to more
            than this share of the covered one's. A lone subject keeps the boxes (elsewhere the
            weights are near 0). ``"mean"`` boxes ignore it.
    """

    num_frames: int = 50
    slow_frames: int = 3
    middle_frames: int = 5
    fast_grid: Grid = (4, 4)
    pool_stride: int = 2
    roi_ratio: float = 0.8
    roi_mode: Literal["tokens", "reencode"] = "tokens"
    roi_center: Literal["mean", "window"] = "mean"
    roi_temperature: float = 0.05
    roi_paths: tuple[str, ...] = ("slow", "middle")
    slow_min_gap: int = 0
    slow_gap_margin: float | None = None
    roi_overlap_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.slow_frames < 0 or self.middle_frames < 0:
            raise ValueError("slow_frames and middle_frames must be >= 0")
        if len(self.fast_grid) != 2 or min(self.fast_grid) < 0:
            raise ValueError(f"fast_grid must be two sizes >= 0, got {self.fast_grid}")
        if self.pool_stride < 1:
            raise ValueError(f"pool_stride must be >= 1, got {self.pool_stride}")
        if not 0.0 < self.roi_ratio <= 1.0:
            raise ValueError(f"roi_ratio must be in (0, 1], got {self.roi_ratio}")
        if self.roi_mode not in ("tokens", "reencode"):
            raise ValueError(f"roi_mode must be 'tokens' or 'reencode', got {self.roi_mode!r}")
        if self.roi_center not in ROI_CENTERS:
            raise ValueError(f"roi_center must be one of {ROI_CENTERS}, got {self.roi_center!r}")
        if not self.roi_temperature > 0:
            raise ValueError(f"roi_temperature must be > 0, got {self.roi_temperature}")
        if not set(self.roi_paths) <= {"slow", "middle"}:
            raise ValueError(f"roi_paths must name 'slow' and/or 'middle', got {self.roi_paths!r}")
        object.__setattr__(self, "roi_paths", tuple(self.roi_paths))
        if self.slow_min_gap < 0:
            raise ValueError(f"slow_min_gap must be >= 0, got {self.slow_min_gap}")
        if self.slow_gap_margin is not None and not self.slow_gap_margin >= 0:
            raise ValueError(f"slow_gap_margin must be None or >= 0, got {self.slow_gap_margin}")
        if not 0.0 < self.roi_overlap_weight <= 1.0:
            raise ValueError(f"roi_overlap_weight must be in (0, 1], got {self.roi_overlap_weight}")
        object.__setattr__(self, "fast_grid", tuple(int(v) for v in self.fast_grid))

    def to_dict(self) -> dict:
        return {"reducer": "free-video-llm", **asdict(self)}


@dataclass(frozen=True)
class UniformConfig:
    """The baseline: ``num_frames`` uniformly spaced frames, each at full (optionally pooled) resolution."""

    num_frames: int = 4
    pool_stride: int = 1

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.pool_stride < 1:
            raise ValueError("num_frames and pool_stride must be >= 1")

    def to_dict(self) -> dict:
        return {"reducer": "uniform", **asdict(self)}


@dataclass(frozen=True)
class TokenPlan:
    """Exact visual token counts of one reduction, per path."""

    slow: int = 0
    middle: int = 0
    fast: int = 0
    uniform: int = 0  # the baseline's frames
    frames: dict[str, int] = field(default_factory=dict)  # frames kept per path
    tokens_per_frame: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.slow + self.middle + self.fast + self.uniform


def pooled_grid(grid: Grid, stride: int) -> Grid:
    """The grid after 1D max pooling along the width (a trailing odd cell is kept)."""
    h, w = grid
    return h, math.ceil(w / stride)


def roi_size(grid: Grid, ratio: float) -> Grid:
    """Height and width, in cells, of the region-of-interest box on ``grid``."""
    h, w = grid
    if ratio >= 1.0:
        return h, w
    return max(1, min(h, round(h * math.sqrt(ratio)))), max(1, min(w, round(w * math.sqrt(ratio))))


def _kept_frames(config: ReducerConfig | UniformConfig, available: int | None) -> int:
    n = config.num_frames if available is None else min(config.num_frames, available)
    if n < 1:
        raise ValueError("a video needs at least one frame")
    return n


def plan(config: ReducerConfig | UniformConfig, grid: Grid, num_frames: int | None = None) -> TokenPlan:
    """Exact visual token counts for a tower whose patch grid is ``grid``, before any compute.

    ``num_frames`` is the number of frames the video actually yields (a short clip may have fewer
    than ``config.num_frames``); the paths never repeat a frame.
    """
    h, w = grid
    if h < 1 or w < 1:
        raise ValueError(f"grid must be at least 1x1, got {grid}")
    n = _kept_frames(config, num_frames)
    if isinstance(config, UniformConfig):
        per_frame = math.prod(pooled_grid(grid, config.pool_stride))
        return TokenPlan(
            uniform=n * per_frame, frames={"uniform": n}, tokens_per_frame={"uniform": per_frame}
        )
    pooled = pooled_grid(grid, config.pool_stride)
    cropped = pooled if config.roi_mode == "reencode" else roi_size(pooled, config.roi_ratio)
    per_frame = {
        path: math.prod(cropped if path in config.roi_paths else pooled) for path in ("slow", "middle")
    }
    k = min(config.slow_frames, n)
    m = min(config.middle_frames, n)
    fast_per_frame = math.prod((min(config.fast_grid[0], h), min(config.fast_grid[1], w)))
    return TokenPlan(
        slow=k * per_frame["slow"],
        middle=m * per_frame["middle"],
        fast=n * fast_per_frame if fast_per_frame else 0,
        frames={"slow": k, "middle": m, "fast": n if fast_per_frame else 0},
        tokens_per_frame={**per_frame, "fast": fast_per_frame},
    )


def uniform_tokens(grid: Grid, num_frames: int) -> int:
    """What uniform sampling of ``num_frames`` frames at full resolution would feed the LM."""
    return num_frames * grid[0] * grid[1]


# The ladder :func:`config_for_budget` walks: paper-shaped configurations from large to small.
_SLOW_MIDDLE_LADDER = (
    (8, 12), (6, 10), (5, 8), (4, 6), (3, 5), (3, 4), (3, 3), (2, 3), (2, 2), (1, 2), (1, 1), (1, 0), (0, 1), (0, 0),
)  # fmt: skip
_FAST_GRID_LADDER = ((6, 6), (4, 4), (3, 3), (2, 2), (1, 1), (0, 0))
_FRAME_LADDER = (50, 32, 24, 16, 8, 4, 2, 1)


def config_for_budget(
    budget: int,
    grid: Grid,
    *,
    base: ReducerConfig | None = None,
    num_frames: int | None = None,
) -> ReducerConfig:
    """The Free Video-LLM configuration with the most tokens that fit ``budget``.

    Walks a ladder of paper-shaped configurations (slow/middle frame counts, fast grid, number of
    frames), keeping ``base``'s pooling, crop ratio and crop mode. Ties go to the configuration
    that samples more frames and keeps a larger fast grid. Raises ``ValueError`` naming the
    smallest budget that works when nothing fits.
    """
    base = base or ReducerConfig()
    frame_options = sorted(
        {f for f in (base.num_frames, *_FRAME_LADDER) if f <= base.num_frames}, reverse=True
    )
    best: tuple[int, ReducerConfig] | None = None
    smallest = None
    for frames in frame_options:
        for fast in _FAST_GRID_LADDER:
            for slow, middle in _SLOW_MIDDLE_LADDER:
                if slow == middle == 0 and fast == (0, 0):
                    continue
                cfg = replace(base, num_frames=frames, slow_frames=slow, middle_frames=middle, fast_grid=fast)
                total = plan(cfg, grid, num_frames).total
                if total == 0:
                    continue
                smallest = total if smallest is None else min(smallest, total)
                if total <= budget and (best is None or total > best[0]):
                    best = (total, cfg)
    if best is None:
        raise ValueError(
            f"a budget of {budget} visual tokens is too small for any reducer configuration on a "
            f"{grid[0]}x{grid[1]} patch grid; the smallest that works is {smallest}"
        )
    return best[1]


def uniform_config_for_budget(budget: int, grid: Grid, *, num_frames: int | None = None) -> UniformConfig:
    """The uniform baseline with the most full-resolution frames that fit ``budget``.

    Falls back to 1D pooling (stride 2, 4, ...) when not even one full-resolution frame fits.
    """
    limit = num_frames or max(_FRAME_LADDER)
    stride = 1
    while True:
        per_frame = math.prod(pooled_grid(grid, stride))
        frames = min(limit, budget // per_frame)
        if frames >= 1:
            return UniformConfig(num_frames=frames, pool_stride=stride)
        if pooled_grid(grid, stride)[1] == 1:
            raise ValueError(
                f"a budget of {budget} visual tokens is too small for uniform sampling on a "
                f"{grid[0]}x{grid[1]} patch grid; the smallest that works is {per_frame}"
            )
        stride *= 2


# ----------------------------------------------------------------------------------------------
# the reduction itself
# ----------------------------------------------------------------------------------------------


@dataclass
class Segment:
    """One frame's contribution to the LM input."""

    path: str  # one of PATHS
    frame: int  # index into the sampled frames
    tokens: torch.Tensor  # (n, C)
    grid: Grid  # the tokens' grid (n == grid[0] * grid[1])
    box: tuple[float, float, float, float] | None = None  # RoI (x0, y0, x1, y1) as fractions of the frame


@dataclass
class Reduction:
    """The reduced video: segments in LM order (slow, middle, fast) and what was decided."""

    segments: list[Segment]
    config: ReducerConfig | UniformConfig
    frame_scores: torch.Tensor | None = None  # question relevance per sampled frame
    patch_scores: torch.Tensor | None = None  # (N, hs, ws) question relevance per patch, if scored
    # The tower features the reduction was made from, (N, h, w, C), and which of the N frames were
    # encoded (a uniform reduction in training gets features zero-filled at the frames it skips):
    # for models that read more of them than the reduction kept (VideoLLMConfig.motion_inputs).
    features: torch.Tensor | None = None
    encoded_frames: tuple[int, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return sum(s.tokens.shape[0] for s in self.segments)

    def frames(self, path: str) -> list[int]:
        return [s.frame for s in self.segments if s.path == path]


def max_pool_width(tokens: torch.Tensor, stride: int) -> torch.Tensor:
    """``(T, h, w, C)`` -> ``(T, h, ceil(w / stride), C)``, max over neighbouring cells of a row.

    On an even width this is exactly the paper's 1D max pool over the row-major token sequence.
    """
    if stride == 1:
        return tokens
    x = tokens.permute(0, 3, 1, 2)  # (T, C, h, w)
    x = F.max_pool2d(x, kernel_size=(1, stride), stride=(1, stride), ceil_mode=True)
    return x.permute(0, 2, 3, 1)


def adaptive_pool(tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``(T, h, w, C)`` -> ``(T, gh, gw, C)`` by adaptive average pooling (the fast path)."""
    x = tokens.permute(0, 3, 1, 2)
    x = F.adaptive_avg_pool2d(x, grid)
    return x.permute(0, 2, 3, 1)


def top_frames(scores: torch.Tensor, k: int, min_gap: int = 0, margin: float | None = None) -> list[int]:
    """Indices of the ``k`` highest scores, in temporal order (ties: the earlier frame).

    With ``min_gap``, greedily by score, a frame closer than ``min_gap`` to one already taken is
    passed over (temporal non-maximum suppression), and with ``margin`` so is any frame scoring
    more than ``margin`` below the best; the best of those passed over fill what is left.
    """
    if k <= 0:
        return []
    scores = scores.float()
    order = torch.sort(-scores, stable=True).indices.tolist()
    floor = -math.inf if margin is None else float(scores.max()) - margin
    taken: list[int] = []
    for f in order:
        if len(taken) < k and scores[f] >= floor and all(abs(f - t) >= min_gap for t in taken):
            taken.append(f)
    taken += [f for f in order if f not in taken][: k - len(taken)]
    return sorted(taken)


def middle_frames(num_frames: int, m: int) -> list[int]:
    """``m`` uniformly spaced frames, ``linspace(0, N, m + 1)[:-1]`` as in the official code."""
    if m <= 0:
        return []
    return sorted({int(v) for v in torch.linspace(0, num_frames, m + 1)[:-1].tolist()})


def roi_box(
    scores: torch.Tensor,
    ratio: float,
    center: str = "mean",
    temperature: float = 0.05,
    cell_weights: torch.Tensor | None = None,
) -> tuple[int, int, int, int]:
    """The RoI box ``(top, left, bottom, right)`` in cells on the grid of ``scores`` (h, w).

    Of size :func:`roi_size`. ``center="mean"``: centred on the mean position of the
    ``int(h * w * ratio)`` highest-scoring cells (integer truncation, as the official code),
    shifted inside the grid. ``center="window"``: of all the boxes of that size inside the grid,
    the one that holds the most relevance, a cell weighing ``exp((score - max) / temperature)``
    (the first in row-major order on a tie), times ``cell_weights`` (h, w) when given.
    """
    h, w = scores.shape
    bh, bw = roi_size((h, w), ratio)
    if (bh, bw) == (h, w):
        return 0, 0, h, w
    if center == "window":
        weights = torch.exp((scores.float() - scores.max().float()) / temperature)
        if cell_weights is not None:
            weights = weights * cell_weights
        sums = F.avg_pool2d(weights[None, None], (bh, bw), stride=1)[0, 0]
        top, left = divmod(int(sums.flatten().argmax()), sums.shape[1])
        return top, left, top + bh, left + bw
    if center != "mean":
        raise ValueError(f"center must be one of {ROI_CENTERS}, got {center!r}")
    n_top = max(1, int(h * w * ratio))
    top_idx = torch.topk(scores.flatten().float(), n_top).indices
    cy = int((top_idx // w).float().mean())
    cx = int((top_idx % w).float().mean())
    top = min(max(cy - bh // 2, 0), h - bh)
    left = min(max(cx - bw // 2, 0), w - bw)
    return top, left, top + bh, left + bw


def uniform_frames(num_frames: int, count: int) -> list[int]:
    """``count`` frames spaced uniformly over ``num_frames`` (segment centres)."""
    count = min(count, num_frames)
    return sorted({int((i + 0.5) * num_frames / count) for i in range(count)})


def reduce_uniform(
    features: torch.Tensor,
    config: UniformConfig,
    frame_scores: torch.Tensor | None = None,
    patch_scores: torch.Tensor | None = None,
) -> Reduction:
    """The baseline on tower features ``(N, h, w, C)``.

    Scores, when given, do not change what is kept; they travel with the reduction for models that
    read them (``VideoLLMConfig.relevance_inputs``).
    """
    frames = uniform_frames(features.shape[0], config.num_frames)
    pooled = max_pool_width(features[frames], config.pool_stride)
    segments = [
        Segment("uniform", f, pooled[i].flatten(0, 1), tuple(pooled.shape[1:3])) for i, f in enumerate(frames)
    ]
    return Reduction(segments, config, frame_scores, patch_scores, features, tuple(frames))


def reduce_free_video_llm(
    features: torch.Tensor,
    frame_scores: torch.Tensor,
    patch_scores: torch.Tensor | None,
    config: ReducerConfig,
    reencode=None,
) -> Reduction:
    """Free Video-LLM on tower features.

    Args:
        features: ``(N, h, w, C)`` patch features of the ``N`` sampled frames.
        frame_scores: ``(N,)`` question relevance of each frame.
        patch_scores: ``(N, hs, ws)`` question relevance of each patch at the scorer's own grid
            (resampled here to the pooled grid), or None to skip the crop.
        config: the reducer configuration.
        reencode: for ``roi_mode="reencode"``, a callable ``(frame_index, box) -> (h, w, C)``
            features of the frame's crop encoded at full resolution; ``box`` is fractional
            ``(x0, y0, x1, y1)``.
    """
    n, h, w, _ = features.shape
    if frame_scores.shape != (n,):
        raise ValueError(f"frame_scores must have shape ({n},), got {tuple(frame_scores.shape)}")
    pooled_hw = pooled_grid((h, w), config.pool_stride)
    if patch_scores is not None:
        grid_scores = F.interpolate(
            patch_scores[:, None].float(), size=(h, w), mode="bilinear", align_corners=False
        )
        grid_scores = max_pool_width(grid_scores.permute(0, 2, 3, 1), config.pool_stride)[..., 0]
    segments: list[Segment] = []
    chosen = {
        "slow": top_frames(
            frame_scores, min(config.slow_frames, n), config.slow_min_gap, config.slow_gap_margin
        ),
        "middle": middle_frames(n, min(config.middle_frames, n)),
    }
    # with roi_overlap_weight, how many earlier boxes held each cell
    spread = config.roi_overlap_weight < 1.0 and config.roi_center == "window"
    covered = torch.zeros(pooled_hw, device=features.device) if spread else None
    for path in ("slow", "middle"):
        frames = chosen[path]
        if not frames:
            continue
        pooled = max_pool_width(features[frames], config.pool_stride)
        for i, f in enumerate(frames):
            if patch_scores is None or config.roi_ratio >= 1.0 or path not in config.roi_paths:
                t0, l0, t1, l1 = 0, 0, *pooled_hw
            else:
                overlap = config.roi_overlap_weight**covered if spread else None
                t0, l0, t1, l1 = roi_box(
                    grid_scores[f], config.roi_ratio, config.roi_center, config.roi_temperature, overlap
                )
                if spread:
                    covered[t0:t1, l0:l1] += 1
            box = (l0 / pooled_hw[1], t0 / pooled_hw[0], l1 / pooled_hw[1], t1 / pooled_hw[0])
            if config.roi_mode == "reencode" and (t0, l0, t1, l1) != (0, 0, *pooled_hw):
                crop = max_pool_width(reencode(f, box)[None], config.pool_stride)[0]
            else:
                crop = pooled[i, t0:t1, l0:l1]
            segments.append(Segment(path, f, crop.flatten(0, 1), tuple(crop.shape[:2]), box))
    fast_hw = (min(config.fast_grid[0], h), min(config.fast_grid[1], w))
    if fast_hw[0] and fast_hw[1]:
        fast = adaptive_pool(features, fast_hw)
        segments.extend(Segment("fast", f, fast[f].flatten(0, 1), fast_hw) for f in range(n))
    return Reduction(segments, config, frame_scores, patch_scores, features, tuple(range(n)))


REDUCERS = ("free-video-llm", "uniform")
