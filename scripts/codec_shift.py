"""Does the H.264 codec cost a model its answers? The same validation questions, raw and H.264.

Renders the same validation videos twice, as raw frames (what training mostly sees: chroma
subsampling at most) and through a real H.264 round trip (what the test split's mp4 files hold),
and prints open-ended accuracy per template for each, side by side. A template that answers well
on raw frames and badly after the codec fails on the codec shift, not on what the model learned.

    .venv/bin/python scripts/codec_shift.py [--model default] [--videos 100] [--reducer free-video-llm]
"""

from __future__ import annotations

import argparse
import logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="vidllm.load name or checkpoint directory")
    parser.add_argument("--videos", type=int, default=100, help="validation videos (3 questions each)")
    parser.add_argument("--reducer", default="free-video-llm")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import vidllm
    from vidllm.train.trainer import validate

    model = vidllm.load(args.model)
    runs = {
        codec: validate(model, num_videos=args.videos, reducers=(args.reducer,), compress=codec == "h264")
        for codec in ("raw", "h264")
    }
    key = f"{args.reducer}@default"
    raw, h264 = runs["raw"][key], runs["h264"][key]
    rows = [("all", raw["accuracy"], h264["accuracy"])]
    rows += [(t, raw["per_template"][t], h264["per_template"][t]) for t in raw["per_template"]]
    rows.append(("short-lived or small", raw["short_lived_or_small"], h264["short_lived_or_small"]))
    lines = [
        f"{args.model}, {args.reducer}, {runs['raw']['questions']} validation questions",
        "",
        "| questions | raw frames | H.264 |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {a:.1%} | {b:.1%} |" for name, a, b in rows]
    logging.getLogger("codec_shift").info("\n".join(lines))


if __name__ == "__main__":
    main()
