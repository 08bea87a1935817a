"""``vidllm answer VIDEO QUESTION``: answer a question about a video file."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="path to a video file")
    parser.add_argument("question", help="the question to ask")
    parser.add_argument(
        "--model", default="default", help="bundled model name or model directory (default: default)"
    )
    parser.add_argument("--budget", type=int, default=None, help="visual token budget")
    parser.add_argument("--reducer", default="free-video-llm", choices=["free-video-llm", "uniform"])
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument(
        "--num-frames", type=int, default=None, help="frames to sample (default: the model's)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true", help="print the full answer record as JSON")


def run(args: argparse.Namespace) -> int:
    import vidllm
    from vidllm.video import VideoError

    try:
        model = vidllm.load(args.model, backend=args.backend, device=args.device)
        answer = model.answer(
            args.video,
            args.question,
            budget=args.budget,
            reducer=args.reducer,
            num_frames=args.num_frames,
            max_new_tokens=args.max_new_tokens,
        )
    except (VideoError, ValueError, FileNotFoundError, ImportError) as exc:
        print(f"vidllm answer: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2))
        return 0
    print(answer.text)
    kept = ", ".join(f"{path} {len(frames)}" for path, frames in answer.frames.items())
    print(
        f"[{answer.visual_tokens} visual tokens instead of {answer.uniform_tokens} "
        f"({answer.visual_tokens / answer.uniform_tokens:.1%}); frames kept: {kept}; "
        f"{answer.timings['total']:.2f} s]",
        file=sys.stderr,
    )
    return 0
