"""Vectorised numpy rasterisation of scenes, fast enough to render training videos on the fly.

Each shape is an approximate signed distance field in units of its radius, evaluated only on a
small patch around the shape in the frames where it is on screen, for all of those frames at once;
the pixel's coverage ``clip(0.5 - d, 0, 1)`` (``d`` in pixels) gives one-pixel anti-aliased edges.
The scene lives in normalised coordinates, so a shape stretches with the frame: rendering at any
``(H, W)`` matches resizing a square render.
"""

from __future__ import annotations

import math

import numpy as np

from vidllm.data.synthetic.scene import COLOR_RGB, Scene, SceneObject

STAR_INNER = 0.5
"""Inner radius of the five-pointed star relative to its outer radius (a regular star has 0.38;
fatter arms keep it recognisable at 8 pixels)."""

_SECTOR = 2 * math.pi / 5
# The star's edge from its apex (1, 0) to the next inner vertex, as plain floats (a numpy float64
# scalar would promote the float32 arrays).
_STAR_EX = STAR_INNER * math.cos(math.pi / 5) - 1.0
_STAR_EY = STAR_INNER * math.sin(math.pi / 5)
_STAR_EDGE_LEN = math.hypot(_STAR_EX, _STAR_EY)


def shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) to a shape of radius 1 centred at the origin.

    ``u`` grows rightwards and ``v`` downwards. The circle and the star (apex up) are exact; the
    square and the triangle (apex up, base and height 2) are exact along their edges and
    underestimate the distance beyond corners, which the renderer bounds by intersecting every
    shape with its bounding box.
    """
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 1.0
    if shape == "triangle":
        return np.maximum(v - 1.0, (2.0 * np.abs(u) - v - 1.0) / math.sqrt(5.0))
    if shape == "star":
        # Fold the angle (measured from the upper apex) into one half-sector [0, pi/5]; there the
        # boundary is the segment from the apex (1, 0) to the inner vertex, and the inside is the
        # side of that segment's line that holds the origin.
        rho = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u) + math.pi / 2  # in [-pi/2, 3pi/2]
        theta -= np.floor(theta / _SECTOR) * _SECTOR
        theta = np.minimum(theta, _SECTOR - theta)
        qx, qy = rho * np.cos(theta) - 1.0, rho * np.sin(theta)
        along = np.clip((qx * _STAR_EX + qy * _STAR_EY) / _STAR_EDGE_LEN**2, 0.0, 1.0)
        distance = np.sqrt((qx - along * _STAR_EX) ** 2 + (qy - along * _STAR_EY) ** 2)
        return np.where(_STAR_EY * qx - _STAR_EX * qy > 0, distance, -distance)
    raise ValueError(f"unknown shape {shape!r}")


def render_background(scene: Scene, size: tuple[int, int]) -> np.ndarray:
    """The scene's static background, ``(H, W, 3)`` uint8."""
    h, w = size
    bg = np.empty((h, w, 3), dtype=np.float32)
    bg[:] = np.asarray(scene.background, dtype=np.float32)
    if scene.ramp > 0:
        ys = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
        xs = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
        ramp = scene.ramp * (
            xs[None, :] * math.cos(scene.ramp_angle) + ys[:, None] * math.sin(scene.ramp_angle)
        )
        bg += ramp[..., None]
    if scene.noise > 0:
        rng = np.random.default_rng(scene.texture_seed)
        bg += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(scene.noise)
    return np.clip(np.rint(bg), 0, 255).astype(np.uint8)


def _draw_object(frames: np.ndarray, obj: SceneObject, times: np.ndarray) -> None:
    """Composite ``obj`` into ``frames`` (in place) in the frames where it is on screen."""
    on = np.flatnonzero(obj.visible(times))
    if on.size == 0:
        return
    _, h, w, _ = frames.shape
    rx, ry = obj.radius * w, obj.radius * h  # radius in pixels along x and y
    cx, cy = (c * s for c, s in zip(obj.position(times[on]), (w, h)))
    # A patch covering the shape plus one pixel of anti-aliasing, shifted inside the frame (the
    # shape itself is always inside, so the shift never cuts it).
    pw, ph = min(w, math.ceil(2 * rx) + 3), min(h, math.ceil(2 * ry) + 3)
    left = np.clip(np.floor(cx - pw / 2).astype(np.int64), 0, w - pw)
    top = np.clip(np.floor(cy - ph / 2).astype(np.int64), 0, h - ph)
    xs = left[:, None] + np.arange(pw)  # (n, pw) pixel columns
    ys = top[:, None] + np.arange(ph)  # (n, ph) pixel rows
    u = ((xs + 0.5 - cx[:, None]) / rx).astype(np.float32)
    v = ((ys + 0.5 - cy[:, None]) / ry).astype(np.float32)
    d = shape_distance(obj.shape, u[:, None, :], v[:, :, None]) * np.float32(min(rx, ry))
    # Intersect with the bounding box, measured in pixels along each axis: no shape's
    # anti-aliasing reaches more than half a pixel beyond its box, whatever the frame's aspect.
    box = np.maximum((np.abs(u) * rx - rx)[:, None, :], (np.abs(v) * ry - ry)[:, :, None]).astype(np.float32)
    alpha = np.clip(np.float32(0.5) - np.maximum(d, box), 0.0, 1.0)[..., None]  # (n, ph, pw, 1)
    # One flat index per pixel: numpy gathers and scatters rows of a 2D array much faster than
    # it handles three broadcast index arrays.
    pixels = frames.reshape(-1, 3)
    index = (on[:, None, None] * h + ys[:, :, None]) * w + xs[:, None, :]
    patch = pixels[index].astype(np.float32)
    color = np.asarray(COLOR_RGB[obj.color], dtype=np.float32)
    pixels[index] = np.rint(patch + alpha * (color - patch)).astype(np.uint8)


def render(scene: Scene, num_frames: int, size: tuple[int, int] | int = (96, 96)) -> np.ndarray:
    """Render ``num_frames`` frames spanning the whole video at ``size = (H, W)``.

    Frame ``i`` shows the scene at normalised time ``i / num_frames`` (``scene.timestamps`` gives
    it in seconds). Returns ``(T, H, W, 3)`` uint8 RGB.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if h < 4 or w < 4:
        raise ValueError(f"frames must be at least 4x4, got {h}x{w}")
    times = scene.frame_times(num_frames)
    frames = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    frames[:] = render_background(scene, (h, w))
    for obj in scene.objects:
        _draw_object(frames, obj, times)
    return frames
