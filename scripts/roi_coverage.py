"""Do the reducer's crops show what the question is about? RoI box placement, measured.

For each question of a fixed question set (validation or test split, rendered as the test
videos are: 96x96, 50 frames, H.264), runs a model's scorer and Free Video-LLM reducer, and for
each way of placing the region-of-interest box (``ReducerConfig.roi_center``: the official mean
of the top cells, or the window holding the most relevance, and with ``--set``, the window with
other ``ReducerConfig`` settings) reports, side by side:

- per template, the share of (kept slow or middle frame, visible subject) pairs whose subject's
  centre lies inside the frame's crop, for all subjects and for small ones;
- for count questions about two or more objects, the share whose crops together show them all.

The model's own answers are not involved: only its scorer, its reducer settings and the boxes.

    .venv/bin/python scripts/roi_coverage.py [--model default] [--split test] [--videos 334] \
        [--set roi_overlap_weight=0.5]
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from dataclasses import replace

logger = logging.getLogger("roi_coverage")

CENTERS = ("mean", "window")


def count_in_crops(counts: dict, reduction, question, scene, times) -> None:
    """Add one reduction's crops of one question to ``counts`` (``{row: [hits, total]}``)."""
    seen = set()
    for seg in reduction.segments:
        if seg.path == "fast":
            continue
        t = float(times[seg.frame])
        x0, y0, x1, y1 = seg.box if seg.box is not None else (0.0, 0.0, 1.0, 1.0)
        for i in question.subjects:
            obj = scene.objects[i]
            if not obj.visible(t):
                continue
            bx0, by0, bx1, by1 = obj.box(t)
            inside = x0 <= (bx0 + bx1) / 2 <= x1 and y0 <= (by0 + by1) / 2 <= y1
            if inside:
                seen.add(i)
            rows = [question.template] + ([f"{question.template}, small subject"] if obj.small else [])
            for row in rows:
                counts[row][0] += inside
                counts[row][1] += 1
    if question.template == "count" and len(question.subjects) >= 2:
        row = "count >= 2: every subject in some crop"
        counts[row][0] += len(seen) == len(question.subjects)
        counts[row][1] += 1


def coverage(
    model, split: str, videos: int, questions_per_video: int = 3, overrides: dict | None = None
) -> dict:
    """``{column: {row: [hits, total]}}`` over the question set (see the module docstring): one
    column per ``roi_center``, and one for the window with ``overrides`` when given."""
    import torch

    from vidllm.reducer import ReducerConfig, reduce_free_video_llm
    from vidllm.train.trainer import question_set_videos

    base = model.resolve_reducer("free-video-llm", None)
    if not isinstance(base, ReducerConfig) or base.roi_ratio >= 1.0:
        raise SystemExit("the model's default reducer crops nothing (roi_ratio 1.0): nothing to measure")
    variants = {f"roi_center={c}": replace(base, roi_center=c) for c in CENTERS}
    if overrides:
        name = "window, " + ", ".join(f"{k}={v}" for k, v in overrides.items())
        variants[name] = replace(base, roi_center="window", **overrides)
    counts: dict[str, dict[str, list[int]]] = {c: defaultdict(lambda: [0, 0]) for c in variants}
    with torch.no_grad():
        for scene, video, questions in question_set_videos(
            split, videos, questions_per_video, base.num_frames
        ):
            all_times = scene.frame_times(50)
            for q in questions:
                # features and scores only: with roi_ratio 1.0 the model re-encodes no crop here
                prepared = model.prepare(video, q.question, roi_ratio=1.0)
                r = prepared.reduction
                times = [all_times[i] for i in prepared.sampled_indices]
                blank = torch.zeros_like(r.features[0])  # the crops' features are not needed
                for name, config in variants.items():
                    reduction = reduce_free_video_llm(
                        r.features, r.frame_scores, r.patch_scores, config, lambda f, box, blank=blank: blank
                    )
                    count_in_crops(counts[name], reduction, q, scene, times)
    return counts


def main() -> None:
    from vidllm.commands.train import parse_override

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="vidllm.load name or checkpoint directory")
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--videos", type=int, default=334, help="videos of the split (3 questions each)")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="a ReducerConfig field for an extra window column (repeatable)")  # fmt: skip
    args = parser.parse_args()
    if args.videos < 1:
        parser.error("--videos must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import vidllm

    model = vidllm.load(args.model)
    try:
        counts = coverage(model, args.split, args.videos, overrides=dict(args.overrides))
    except (TypeError, ValueError) as exc:
        parser.error(f"not a reducer setting: {exc}")
    rows = sorted(set().union(*(c.keys() for c in counts.values())))
    lines = [
        f"{args.model}, {args.split} split, {args.videos} videos: subject centres inside the crops of the"
        " kept slow and middle frames",
        "",
        "| questions | " + " | ".join(counts) + " | n |",
        "|---|" + "---|" * (len(counts) + 1),
    ]
    for row in rows:
        cells = [counts[c][row] for c in counts]
        lines.append(f"| {row} | " + " | ".join(f"{h / n:.1%}" for h, n in cells) + f" | {cells[0][1]} |")
    logger.info("\n".join(lines))


if __name__ == "__main__":
    main()
