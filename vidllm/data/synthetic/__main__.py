# ruff: noqa: T201  (a command-line entry point: it prints)
"""Command line of the synthetic world.

``python -m vidllm.data.synthetic write --split test --out DIR [--num-videos N] [--size HxW]
[--fps F] [--seconds S]`` writes a split (defaults: the fixed test split, 1,000 questions over
334 videos of 5 s at 96x96, 10 fps); ``show`` prints a few of a split's questions; ``stats``
prints a split's balance and how often uniform sampling sees the questions' subjects; ``bench``
times on-the-fly training items.
"""

from __future__ import annotations

import argparse
import json
import sys

from vidllm.data.synthetic.questions import TEMPLATES, QuestionSet
from vidllm.data.synthetic.scene import SPLITS, WorldConfig
from vidllm.data.synthetic.writer import DEFAULT_CRF, write_split


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 96x96, got {text!r}") from None
    if h < 4 or w < 4 or h % 2 or w % 2:
        raise argparse.ArgumentTypeError(f"H.264 yuv420p needs even sizes >= 4, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vidllm.data.synthetic", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    write = sub.add_parser("write", help="render a split to mp4 files and benchmark-layout JSON")
    write.add_argument("--split", choices=sorted(SPLITS), default="test")
    write.add_argument("--out", required=True, help="output directory")
    write.add_argument("--num-videos", type=int, default=334)
    write.add_argument("--questions-per-video", type=int, default=3)
    write.add_argument("--max-questions", type=int, default=1000, help="0: no cap")
    write.add_argument("--size", type=_size, default=(96, 96), help="HxW, even")
    write.add_argument("--fps", type=float, default=10.0)
    write.add_argument("--seconds", type=float, default=5.0)
    write.add_argument("--crf", type=int, default=DEFAULT_CRF, help="x264 quality (lower is better)")
    write.add_argument("--seed", type=int, default=0, help="world seed (0 is the project's test split)")

    show = sub.add_parser("show", help="print questions of a split")
    show.add_argument("--split", choices=sorted(SPLITS), default="test")
    show.add_argument("--num-videos", type=int, default=5)
    show.add_argument("--seed", type=int, default=0)

    stats = sub.add_parser(
        "stats", help="balance of a fixed split, and how often uniform sampling sees its subjects"
    )
    stats.add_argument("--split", choices=sorted(SPLITS), default="test")
    stats.add_argument("--num-videos", type=int, default=334)
    stats.add_argument("--max-questions", type=int, default=1000)
    stats.add_argument("--num-frames", type=int, default=50, help="frames the model samples")

    bench = sub.add_parser("bench", help="time on-the-fly training items (sampling + rendering)")
    bench.add_argument("--items", type=int, default=200)
    bench.add_argument("--num-frames", type=int, default=50)
    bench.add_argument("--size", type=_size, default=(64, 64))
    bench.add_argument("--compress", action="store_true", help="include the H.264 round trip")
    return parser


def _stats(args) -> None:
    """Per subset (short-lived, small only, neither), the share of questions whose subjects are on
    screen in the frames ``k`` uniform frames keep (two frames for ``direction``) versus in the
    ``num_frames`` sampled frames (what a perfect frame selector can reach)."""
    import numpy as np

    from vidllm.reducer import uniform_frames

    qset = QuestionSet.build(args.split, args.num_videos, max_questions=args.max_questions or None)
    print(json.dumps(qset.summary()["templates"]), f"{len(qset.questions)} questions")
    times = np.arange(args.num_frames) / args.num_frames
    subsets = {
        "short-lived": lambda q: q.short_lived,
        "small only": lambda q: q.small and not q.short_lived,
        "neither": lambda q: not (q.short_lived or q.small),
    }
    budgets = [k for k in (1, 2, 4, 8, 16, 32) if k < args.num_frames] + [args.num_frames]
    print(f"{'subset':12s} {'n':>5s}  " + "  ".join(f"k={k:<4d}" for k in budgets))
    for name, keep in subsets.items():
        chosen = [q for q in qset.questions if keep(q) and q.subjects]
        row = []
        for k in budgets:
            frames = times[uniform_frames(args.num_frames, k)]
            seen = 0
            for q in chosen:
                scene = qset.scene(q.video_id)
                need = 2 if q.template == "direction" else 1
                seen += all(scene.objects[i].visible(frames).sum() >= need for i in q.subjects)
            row.append(f"{seen / max(1, len(chosen)):6.3f}")
        print(f"{name:12s} {len(chosen):5d}  " + "  ".join(row))


def _bench(args) -> None:
    import time

    from vidllm.data.synthetic.dataset import SyntheticVideoQA

    data = SyntheticVideoQA(
        "train", args.items, num_frames=args.num_frames, size=args.size, compress=args.compress
    )
    t0 = time.perf_counter()
    for i in range(args.items):
        data.item(i)
    t1 = time.perf_counter()
    for i in range(args.items):
        data[i]
    t2 = time.perf_counter()
    sampling = (t1 - t0) / args.items * 1e3
    total = (t2 - t1) / args.items * 1e3
    h, w = args.size
    print(
        f"{args.items} items, {args.num_frames} frames at {h}x{w}{' + H.264 round trip' if args.compress else ''}: "
        f"scene and question {sampling:.2f} ms, whole item {total:.2f} ms, rendering about {total - sampling:.2f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "write":
        manifest = write_split(
            args.out,
            args.split,
            num_videos=args.num_videos,
            questions_per_video=args.questions_per_video,
            max_questions=args.max_questions or None,
            size=args.size,
            fps=args.fps,
            seconds=args.seconds,
            crf=args.crf,
            world_seed=args.seed,
            progress=True,
        )
        summary = manifest["summary"]
        print(f"wrote {summary['videos']} videos, {summary['questions']} questions to {args.out}")
        print(f"video bytes: {manifest['video_bytes']:,} ({manifest['video_bytes'] / 1e6:.2f} MB)")
        print("questions per template:", json.dumps(summary["templates"]))
        for template in TEMPLATES:
            print(f"  {template:9s} answers: {json.dumps(summary['answers'][template])}")
        print(
            f"short-lived share {summary['short_lived_share']:.3f}, small share {summary['small_share']:.3f}, "
            f"either {summary['short_lived_or_small_share']:.3f}"
        )
        return 0
    if args.command == "stats":
        _stats(args)
        return 0
    if args.command == "bench":
        _bench(args)
        return 0
    qset = QuestionSet.build(args.split, args.num_videos, config=WorldConfig(), world_seed=args.seed)
    for q in qset.questions:
        tags = ",".join(t for t in ("short_lived", "small") if getattr(q, t)) or "-"
        print(f"{q.question_id}  [{q.template}/{tags}]  {q.mc_question}  ->  {q.answer} ({q.answer_letter})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
