"""A trained model's answers with its reducer changed at inference only (no retraining).

Free Video-LLM is training-free: the reducer's settings can change under a trained model. This
answers the same validation questions with the model's saved reducer and with some of its
``ReducerConfig`` fields overridden, and prints open-ended accuracy per template side by side.

    .venv/bin/python scripts/reducer_variants.py --model default --set roi_center=mean [--videos 100]
"""

from __future__ import annotations

import argparse
import logging


def main() -> None:
    from vidllm.commands.train import parse_override

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="vidllm.load name or checkpoint directory")
    parser.add_argument("--videos", type=int, default=100, help="validation videos (3 questions each)")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", required=True,
                        metavar="KEY=VALUE", help="a ReducerConfig field, e.g. roi_center=mean (repeatable)")  # fmt: skip
    args = parser.parse_args()
    if args.videos < 1:
        parser.error("--videos must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import vidllm
    from vidllm.train.trainer import validate

    model = vidllm.load(args.model)
    saved = dict(model.config.reducer)
    changed = {**saved, **dict(args.overrides)}
    try:
        model.config.reducer = changed
        model.config.reducer_config()
    except (TypeError, ValueError) as exc:
        parser.error(f"not a reducer setting: {exc}")
    runs = {}
    for name, reducer in (("saved", saved), ("changed", changed)):
        model.config.reducer = reducer
        runs[name] = validate(model, num_videos=args.videos, reducers=("free-video-llm",))[
            "free-video-llm@default"
        ]
    a, b = runs["saved"], runs["changed"]
    rows = [("all", a["accuracy"], b["accuracy"])]
    rows += [(t, a["per_template"][t], b["per_template"][t]) for t in a["per_template"]]
    rows.append(("short-lived or small", a["short_lived_or_small"], b["short_lived_or_small"]))
    change = ", ".join(f"{k}={v}" for k, v in args.overrides)
    lines = [
        f"{args.model}, free-video-llm, {3 * args.videos} validation questions (H.264)",
        "",
        f"| questions | as saved | {change} |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {x:.1%} | {y:.1%} |" for name, x, y in rows]
    logging.getLogger("reducer_variants").info("\n".join(lines))


if __name__ == "__main__":
    main()
