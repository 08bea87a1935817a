"""What the page shows about a request: kept frames with their RoI boxes, the relevance plot, the cost.

The frames are the ones the model was fed (``DemoResult.video``); the boxes are the reducer's
regions of interest (Free Video-LLM, arXiv 2410.10441, Sec. 3: a box of area ratio ``roi_ratio``
around the patches most similar to the question) in pixels of those frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: path -> (title on the page, colour of its marks in the plot and of its boxes)
PATH_STYLE = {
    "slow": ("Slow path: the frames most relevant to the question", (230, 57, 70)),
    "middle": ("Middle path: uniformly spaced frames", (244, 162, 97)),
    "fast": ("Fast path: every sampled frame, pooled", (42, 157, 143)),
    "uniform": ("Uniform sampling at full resolution", (69, 123, 157)),
}
BOX_COLOUR = (255, 230, 0)  # yellow reads on the synthetic world's saturated shapes and on real footage
DETAIL_SIDE = 256  # slow / middle frames are shown at least this large, so a box is visible
THUMB_SIDE = 160  # fast-path frames are many: thumbnails


def _resize(image, side: int, *, grow: bool):
    from PIL import Image

    scale = side / max(image.size)
    if scale > 1 and not grow:
        return image, 1.0
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR), scale


def frame_image(
    frame: np.ndarray, box: tuple[float, float, float, float] | None = None, *, side: int = DETAIL_SIDE
):
    """One RGB frame as a PIL image scaled to ``side`` (small frames grow), with ``box`` drawn on it."""
    from PIL import Image, ImageDraw

    image, scale = _resize(Image.fromarray(np.ascontiguousarray(frame)), side, grow=box is not None)
    if box is not None:
        x0, y0, x1, y1 = (v * scale for v in box)
        width = max(2, round(max(image.size) / 100))
        ImageDraw.Draw(image).rectangle(
            [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=BOX_COLOUR, width=width
        )
    return image


def gallery_items(result, path: str) -> list[tuple[Any, str]]:
    """``(image, caption)`` for each frame ``path`` kept; captions give time and relevance."""
    answer, video = result.answer, result.video
    position = {int(index): k for k, index in enumerate(video.indices)}
    relevance = answer.relevance
    items = []
    for kept in answer.frames.get(path, []):
        k = position[int(kept.index)]
        box = answer.boxes.get(kept.index) if path in ("slow", "middle") else None
        caption = f"{kept.timestamp:.1f} s"
        if path in ("slow", "middle") and k < len(relevance):
            caption += f" · rel {relevance[k]:.2f}"
        if box is not None:
            caption += " · RoI"
        side = THUMB_SIDE if path == "fast" else DETAIL_SIDE
        items.append((frame_image(video.frames[k], box, side=side), caption))
    return items


def relevance_figure(result):
    """Question-frame relevance over time, with the frames each path kept marked (a matplotlib Figure).

    Built with ``matplotlib.figure.Figure`` rather than pyplot: no global state, so requests in
    different threads do not share a current figure.
    """
    from matplotlib.figure import Figure

    answer = result.answer
    times = np.asarray(answer.sampled_timestamps, dtype=float)
    relevance = np.asarray(answer.relevance, dtype=float)
    fig = Figure(figsize=(8, 3), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    scored = relevance.size == times.size and times.size > 0
    if scored:
        ax.plot(times, relevance, color="0.35", marker=".", lw=1.2, label="sampled frames")
    by_time = dict(zip(times.tolist(), relevance.tolist())) if scored else {}
    for path in ("slow", "middle", "uniform"):
        kept = [f.timestamp for f in answer.frames.get(path, [])]
        if not kept:
            continue
        colour = tuple(c / 255 for c in PATH_STYLE[path][1])
        for t in kept:
            ax.axvline(t, color=colour, alpha=0.35, lw=1)
        if scored:
            ax.scatter(
                kept, [by_time[t] for t in kept], s=70, color=colour, zorder=3, label=f"{path} ({len(kept)})"
            )
        else:
            ax.plot([], [], color=colour, label=f"{path} ({len(kept)})")
    if not scored:
        ax.text(
            0.5,
            0.5,
            "the uniform reducer does not score frames against the question",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
        ax.set_yticks([])
    duration = float(result.video.meta.duration) or (float(times.max()) if times.size else 1.0)
    ax.set_xlim(0, duration)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("relevance to the question" if scored else "")
    ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    ax.grid(alpha=0.3)
    return fig


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def cost_markdown(result, backend_label: str) -> str:
    """The cost of the answer: visual tokens against uniform sampling at full resolution, and time."""
    answer, timings = result.answer, result.timings
    frames = len(answer.sampled_timestamps)
    reducer = result.settings.reducer
    share = answer.visual_tokens / answer.uniform_tokens if answer.uniform_tokens else float("nan")
    stages = ", ".join(
        f"{name} {answer.timings[name]:.2f} s"
        for name in ("encode", "score", "reduce", "project", "generate")
        if name in answer.timings
    )
    return "\n".join(
        [
            "| | visual tokens |",
            "|---|---:|",
            f"| this answer ({reducer}) | **{answer.visual_tokens:,}** |",
            f"| uniform sampling of the same {frames} frames at full resolution | {answer.uniform_tokens:,} |",
            f"| share | **{share:.1%}** |",
            "",
            f"Time to first token **{_seconds(timings.get('first_token'))}**, total "
            f"**{_seconds(timings.get('total'))}** (decode {timings['decode']:.2f} s, {stages}); "
            f"waited {timings['queue_wait']:.2f} s for the model. {answer.prompt_tokens:,} prompt "
            f"tokens in all, {backend_label} backend.",
        ]
    )
