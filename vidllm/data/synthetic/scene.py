"""Scenes of the synthetic world: objects, their motion and appearance windows, and the backgrounds.

A scene lives in normalised continuous time and space: time ``t`` runs over ``[0, 1)`` (the whole
video; ``Scene.duration`` only turns it into seconds) and positions are fractions of the frame's
width (x) and height (y), so one scene renders the same motion at any frame count, fps or frame
size. Frame ``i`` of ``T`` shows the scene at ``t = i / T`` (its presentation time), and an object
is on screen in that frame exactly when ``start <= i / T < end``.

Objects appear and disappear abruptly (no fade), never overlap one another while both are on
screen, and stay wholly inside the frame, so the object a question is about can be seen only in
the frames of its window and is never hidden.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
DIRECTIONS = ("left", "right", "up", "down")

# Fixed object colours, at least 100 apart in RGB from each other (yellow-orange, the closest
# pair, are 113 apart) so that a small model tells them apart even after H.264 chroma subsampling.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (200, 20, 40),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 230, 40),
    "purple": (145, 45, 190),
    "orange": (245, 120, 15),
}

# Unit displacement of each direction in image coordinates (y grows downwards).
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}

SPLITS = {"train": 0, "validation": 1, "test": 2}
"""Each split draws from its own seed stream: ``SeedSequence([world_seed, SPLITS[split], index])``."""


def split_rng(split: str, index: int, world_seed: int = 0) -> np.random.Generator:
    """The generator of item ``index`` of ``split``: independent streams per split and per item."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng(np.random.SeedSequence([world_seed, SPLITS[split], index]))


@dataclass(frozen=True)
class WorldConfig:
    """The distributions scenes and questions are drawn from.

    Attributes:
        duration: seconds the normalised time axis spans (turns windows into timestamps).
        max_objects: most objects in one video (at least one always appears).
        min_size / max_size: object size, the width of its bounding box as a fraction of the
            frame width; sizes up to ``small_size`` are drawn for small objects, above
            ``normal_min_size`` for the others, so the "small" tag is never a borderline call.
        min_window / short_window: an object tagged short-lived is on screen for a fraction of
            the video in ``[min_window, short_window]``; the others for ``[long_window, 1]``.
        min_displacement: the least distance an object travels during its window (a fraction of
            the frame side along its motion), so its direction is visible even in a short window.
        first_gap: the least gap between the appearance times of the two objects a "which
            appears first" question compares.
        short_lived_share / small_share: the share of questions whose subject is short-lived /
            small (drawn independently); where frame selection and RoI cropping should matter.
        other_short_lived / other_small: probability that an object the question is not about is
            short-lived / small.
        noisy_background: probability of a background with a static texture (pixel noise and a
            brightness ramp) rather than a plain colour.
        min_background_distance: least RGB distance between the background colour and any object
            colour.
    """

    duration: float = 5.0
    max_objects: int = 4
    min_size: float = 1 / 12
    small_size: float = 1 / 8
    normal_min_size: float = 0.14
    max_size: float = 0.25
    min_window: float = 0.05
    short_window: float = 0.15
    long_window: float = 0.3
    min_displacement: float = 0.25
    first_gap: float = 0.2
    short_lived_share: float = 0.3
    small_share: float = 0.3
    other_short_lived: float = 0.2
    other_small: float = 0.3
    noisy_background: float = 0.5
    min_background_distance: float = 110.0

    def __post_init__(self) -> None:
        if self.duration <= 0:
            raise ValueError(f"duration must be > 0, got {self.duration}")
        if not 1 <= self.max_objects <= len(COLORS):
            raise ValueError(f"max_objects must be in [1, {len(COLORS)}], got {self.max_objects}")
        if not 0 < self.min_size <= self.small_size < self.normal_min_size <= self.max_size <= 0.3:
            raise ValueError(
                "sizes must satisfy 0 < min_size <= small_size < normal_min_size <= max_size <= 0.3"
            )
        if not 0 < self.min_window <= self.short_window < self.long_window <= 1:
            raise ValueError("windows must satisfy 0 < min_window <= short_window < long_window <= 1")
        if not 0 < self.min_displacement <= 1 - 2 * self.max_size - 2 * _EDGE:
            raise ValueError("min_displacement must leave room for the largest object to move")
        if not 0 < self.first_gap < 1 - self.min_window:
            raise ValueError(f"first_gap must be in (0, {1 - self.min_window}), got {self.first_gap}")
        for name in (
            "short_lived_share",
            "small_share",
            "other_short_lived",
            "other_small",
            "noisy_background",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorldConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_EDGE = 0.02  # least gap between an object and the frame border, as a fraction of the frame
_SEPARATION = 0.03  # least gap between two objects on screen together


@dataclass(frozen=True)
class SceneObject:
    """One moving shape: what it is, where it goes and when it is on screen.

    Positions are the centre of the shape's bounding box as fractions of the frame width (x) and
    height (y); the shape moves in a straight line at constant speed from ``(x0, y0)`` at
    ``start`` towards ``(x1, y1)`` at ``end`` and is on screen for ``start <= t < end``.
    """

    shape: str
    color: str
    size: float
    direction: str
    start: float
    end: float
    x0: float
    y0: float
    x1: float
    y1: float
    short_lived: bool
    small: bool

    @property
    def description(self) -> str:
        """``"{color} {shape}"``, how questions name the object (and a dual encoder's caption)."""
        return f"{self.color} {self.shape}"

    @property
    def radius(self) -> float:
        return self.size / 2

    def visible(self, t: float | np.ndarray) -> bool | np.ndarray:
        return (self.start <= t) & (t < self.end)

    def position(self, t: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre at time ``t`` (extrapolated linearly outside the window)."""
        u = (np.asarray(t, dtype=np.float64) - self.start) / (self.end - self.start)
        return self.x0 + (self.x1 - self.x0) * u, self.y0 + (self.y1 - self.y0) * u

    def box(self, t: float) -> tuple[float, float, float, float]:
        """Bounding box ``(x0, y0, x1, y1)`` at time ``t`` as fractions of the frame."""
        x, y = (float(v) for v in self.position(t))
        r = self.radius
        return x - r, y - r, x + r, y + r


@dataclass(frozen=True)
class Scene:
    """A video of the world: objects over a background, in normalised time.

    The background is a plain colour, or (``noise > 0`` or ``ramp > 0``) that colour with a
    static texture drawn from ``texture_seed``: per-pixel Gaussian noise of std ``noise`` and a
    linear brightness ramp of amplitude ``ramp`` along ``ramp_angle``. It never changes over time.
    """

    video_id: str
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    noise: float = 0.0
    ramp: float = 0.0
    ramp_angle: float = 0.0
    texture_seed: int = 0
    duration: float = 5.0

    def visible_objects(self, t: float) -> list[int]:
        """Indices of the objects on screen at normalised time ``t``."""
        return [i for i, o in enumerate(self.objects) if o.visible(t)]

    def annotations(self, num_frames: int) -> list[list[tuple[str, tuple[float, float, float, float]]]]:
        """Per frame, ``(description, box)`` of each object on screen: captions and regions for
        training a text-frame relevance scorer (boxes are fractions of the frame, see :meth:`SceneObject.box`)."""
        return [
            [(o.description, o.box(float(t))) for o in self.objects if o.visible(t)]
            for t in self.frame_times(num_frames)
        ]

    def frame_times(self, num_frames: int) -> np.ndarray:
        """Normalised times of ``num_frames`` frames spanning the video (frame ``i`` at ``i / T``)."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        return np.arange(num_frames, dtype=np.float64) / num_frames

    def timestamps(self, num_frames: int) -> np.ndarray:
        """Presentation times in seconds of ``num_frames`` frames (what a decoder reports)."""
        return self.frame_times(num_frames) * self.duration

    def to_dict(self) -> dict:
        data = asdict(self)
        data["background"] = list(self.background)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        objects = tuple(SceneObject(**o) for o in data["objects"])
        rest = {k: v for k, v in data.items() if k not in ("objects", "background")}
        return cls(objects=objects, background=tuple(int(c) for c in data["background"]), **rest)


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------


@dataclass
class ObjectRequest:
    """Attributes a question needs one object to have; ``None`` fields are drawn freely."""

    shape: str | None = None
    color: str | None = None
    direction: str | None = None
    short_lived: bool | None = None
    small: bool | None = None


class SceneSamplingError(RuntimeError):
    """The requested objects could not be placed without overlapping (after many attempts)."""


def sample_window(rng: np.random.Generator, config: WorldConfig, short_lived: bool) -> tuple[float, float]:
    """An appearance window ``[start, end)`` in normalised time."""
    if short_lived:
        length = rng.uniform(config.min_window, config.short_window)
    else:
        length = rng.uniform(config.long_window, 1.0)
    start = rng.uniform(0.0, 1.0 - length)
    return float(start), float(start + length)


def sample_size(rng: np.random.Generator, config: WorldConfig, small: bool) -> float:
    if small:
        return float(rng.uniform(config.min_size, config.small_size))
    return float(rng.uniform(config.normal_min_size, config.max_size))


def sample_path(
    rng: np.random.Generator, config: WorldConfig, size: float, direction: str
) -> tuple[float, float, float, float]:
    """Start and end centres of a straight move in ``direction`` that keeps the shape inside."""
    r = size / 2
    lo, hi = r + _EDGE, 1.0 - r - _EDGE
    distance = rng.uniform(config.min_displacement, hi - lo)
    along = rng.uniform(lo, hi - distance)
    across = rng.uniform(lo, hi)
    dx, dy = DIRECTION_VECTORS[direction]
    if dx:
        a0 = along if dx > 0 else along + distance
        return a0, across, a0 + dx * distance, across
    a0 = along if dy > 0 else along + distance
    return across, a0, across, a0 + dy * distance


def overlaps(a: SceneObject, b: SceneObject, steps: int = 48) -> bool:
    """Whether the two shapes' boxes (plus a small gap) meet while both are on screen."""
    lo, hi = max(a.start, b.start), min(a.end, b.end)
    if lo >= hi:
        return False
    t = np.linspace(lo, hi, steps)
    ax, ay = a.position(t)
    bx, by = b.position(t)
    gap = a.radius + b.radius + _SEPARATION
    return bool(np.any((np.abs(ax - bx) < gap) & (np.abs(ay - by) < gap)))


def _draw(rng: np.random.Generator, options: Iterable[str], exclude: Iterable[str] = ()) -> str:
    pool = [o for o in options if o not in set(exclude)]
    return pool[int(rng.integers(len(pool)))]


def sample_background(
    rng: np.random.Generator, config: WorldConfig
) -> tuple[tuple[int, int, int], float, float, float]:
    """A background colour far from every object colour, and its texture (noise, ramp, angle)."""
    objects = np.array(list(COLOR_RGB.values()), dtype=np.float64)
    while True:
        rgb = rng.integers(0, 256, 3)
        if np.min(np.linalg.norm(objects - rgb, axis=1)) >= config.min_background_distance:
            break
    if rng.random() < config.noisy_background:
        noise, ramp, angle = rng.uniform(3.0, 10.0), rng.uniform(0.0, 30.0), rng.uniform(0, 2 * math.pi)
    else:
        noise, ramp, angle = 0.0, 0.0, 0.0
    return (int(rgb[0]), int(rgb[1]), int(rgb[2])), float(noise), float(ramp), float(angle)


def sample_scene(
    rng: np.random.Generator,
    config: WorldConfig,
    *,
    video_id: str,
    requests: Sequence[ObjectRequest] = (),
    num_objects: int | None = None,
    exclude_shapes: Iterable[str] = (),
    windows: list[tuple[float, float]] | None = None,
    max_attempts: int = 200,
) -> Scene:
    """A scene whose first objects satisfy ``requests`` (in order), completed with free objects.

    Colours are distinct within a scene, so a colour names one object. Free objects never take a
    shape in ``exclude_shapes`` (how a question keeps its shape unique, or its count exact).
    ``windows`` fixes the appearance windows of the requested objects. Objects are placed one at
    a time, each path redrawn until it overlaps no earlier object; a scene that cannot be
    completed is redrawn whole, so the result depends only on the generator's state.
    """
    if num_objects is None:
        num_objects = int(rng.integers(max(1, len(requests)), config.max_objects + 1))
    if not len(requests) <= num_objects <= config.max_objects or num_objects < 1:
        raise ValueError(f"cannot place {len(requests)} requested objects in {num_objects}")
    requested_colors = [r.color for r in requests if r.color is not None]
    if len(set(requested_colors)) != len(requested_colors):
        raise ValueError("requested colours must be distinct")
    free_shapes = [s for s in SHAPES if s not in set(exclude_shapes)]
    if num_objects > len(requests) and not free_shapes:
        raise ValueError("every shape is excluded but free objects are needed")

    for _ in range(max_attempts):
        used_colors = set(requested_colors)
        objects: list[SceneObject] = []
        for i in range(num_objects):
            req = requests[i] if i < len(requests) else ObjectRequest()
            color = req.color or _draw(rng, COLORS, used_colors)
            used_colors.add(color)
            shape = req.shape or _draw(rng, free_shapes)
            direction = req.direction or _draw(rng, DIRECTIONS)
            short = (
                req.short_lived
                if req.short_lived is not None
                else bool(rng.random() < config.other_short_lived)
            )
            small = req.small if req.small is not None else bool(rng.random() < config.other_small)
            size = sample_size(rng, config, small)
            if windows is not None and i < len(windows):
                start, end = windows[i]
            else:
                start, end = sample_window(rng, config, short)
            for _ in range(max_attempts):
                x0, y0, x1, y1 = sample_path(rng, config, size, direction)
                obj = SceneObject(
                    shape, color, size, direction, start, end, x0, y0, x1, y1,
                    short_lived=end - start <= config.short_window,
                    small=size <= config.small_size,
                )  # fmt: skip
                if not any(overlaps(obj, other) for other in objects):
                    objects.append(obj)
                    break
            else:
                break  # this object cannot be placed: redraw the scene
        if len(objects) == num_objects:
            background, noise, ramp, angle = sample_background(rng, config)
            return Scene(
                video_id=video_id,
                objects=tuple(objects),
                background=background,
                noise=noise,
                ramp=ramp,
                ramp_angle=angle,
                texture_seed=int(rng.integers(2**31)),
                duration=config.duration,
            )
    raise SceneSamplingError(f"could not place {num_objects} objects without overlaps")
