"""Do the reducer's crops show what the question is about? RoI box placement, measured.

For each question of a fixed question set (validation or test split, rendered as the test
videos are: 96x96, 50 frames, H.264), runs a model's scorer and Free Video-LLM reducer, and for
each way of placing the region-of-interest box (``ReducerConfig.roi_center``: the official mean
of the top cells, or the window holding the most relevance) reports, side by side:

- per template, the share of (kept slow or middle frame, visible subject) pairs whose subject's
  centre lies inside the frame's crop, for all subjects and for small ones;
- for count questions about two or more objects, the share whose crops together show them all.

The model's own answers are not involved: only its scorer, its reducer settings and the boxes.

    .venv/bin/python scripts/roi_coverage.py [--model default] [--split test] [--videos 334]
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from dataclasses import replace

logger = logging.getLogger("roi_coverage")

CENTERS = ("mean", "window")


def coverage(model, split: str, videos: int, questions_per_video: int = 3) -> dict:
    """``{center: {row: [hits, total]}}`` over the question set (see the module docstring)."""
    import torch

    from vidllm.data.synthetic import QuestionSet, render
    from vidllm.data.synthetic.writer import h264_roundtrip
    from vidllm.reducer import ReducerConfig, reduce_free_video_llm
    from vidllm.train.trainer import as_video

    base = model.resolve_reducer("free-video-llm", None)
    if not isinstance(base, ReducerConfig) or base.roi_ratio >= 1.0:
        raise SystemExit("the model's default reducer crops nothing (roi_ratio 1.0): nothing to measure")
    qset = QuestionSet.build(split, videos, questions_per_video)
    counts: dict[str, dict[str, list[int]]] = {c: defaultdict(lambda: [0, 0]) for c in CENTERS}
    by_video = defaultdict(list)
    for q in qset.questions:
        by_video[q.video_id].append(q)
    with torch.no_grad():
        for video_id, questions in by_video.items():
            scene = qset.scene(video_id)
            frames = h264_roundtrip(render(scene, 50, (96, 96)), fps=50 / scene.duration)
            video = as_video(frames, scene.timestamps(50), base.num_frames, codec="h264")
            times = scene.frame_times(50)
            for q in questions:
                prepared = model.prepare(video, q.question)
                r = prepared.reduction
                blank = torch.zeros_like(r.features[0])  # the crops' features are not needed
                for center in CENTERS:
                    config = replace(base, roi_center=center)
                    reduction = reduce_free_video_llm(
                        r.features, r.frame_scores, r.patch_scores, config, lambda f, box, blank=blank: blank
                    )
                    seen = set()
                    for seg in reduction.segments:
                        if seg.path == "fast":
                            continue
                        t = float(times[prepared.sampled_indices[seg.frame]])
                        x0, y0, x1, y1 = seg.box if seg.box is not None else (0.0, 0.0, 1.0, 1.0)
                        for i in q.subjects:
                            obj = scene.objects[i]
                            if not obj.visible(t):
                                continue
                            bx0, by0, bx1, by1 = obj.box(t)
                            inside = x0 <= (bx0 + bx1) / 2 <= x1 and y0 <= (by0 + by1) / 2 <= y1
                            seen.update([i] if inside else [])
                            rows = [q.template] + ([f"{q.template}, small subject"] if obj.small else [])
                            for row in rows:
                                counts[center][row][0] += inside
                                counts[center][row][1] += 1
                    if q.template == "count" and len(q.subjects) >= 2:
                        row = "count >= 2: every subject in some crop"
                        counts[center][row][0] += len(seen) == len(q.subjects)
                        counts[center][row][1] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="vidllm.load name or checkpoint directory")
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--videos", type=int, default=334, help="videos of the split (3 questions each)")
    args = parser.parse_args()
    if args.videos < 1:
        parser.error("--videos must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import vidllm

    model = vidllm.load(args.model)
    counts = coverage(model, args.split, args.videos)
    rows = sorted(set().union(*(c.keys() for c in counts.values())))
    lines = [
        f"{args.model}, {args.split} split, {args.videos} videos: subject centres inside the crops of the"
        " kept slow and middle frames",
        "",
        "| questions | " + " | ".join(f"roi_center={c}" for c in CENTERS) + " | n |",
        "|---|" + "---|" * (len(CENTERS) + 1),
    ]
    for row in rows:
        cells = [counts[c][row] for c in CENTERS]
        lines.append(f"| {row} | " + " | ".join(f"{h / n:.1%}" for h, n in cells) + f" | {cells[0][1]} |")
    logger.info("\n".join(lines))


if __name__ == "__main__":
    main()
