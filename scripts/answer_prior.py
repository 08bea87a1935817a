"""The answers a video or LoRA stage trains on: per template, the share of each answer.

Draws a preset's video-stage batches exactly as training does (the same layouts, the same
questions kept within ``max_lm_tokens``) and counts the trained questions' templates and
answers. An answer far above ``1 / len(answers)`` is a prior the LM can learn instead of reading
the video.

    .venv/bin/python scripts/answer_prior.py [--steps 500] [--stage lora] [--set video.balanced_extras=true]
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter

from vidllm.commands.train import parse_override
from vidllm.train.trainer import STAGE_SEEDS, make_video_batch_fn


def trained_answers(
    preset_name: str, overrides: dict, model_name: str, steps: int, stage: str = "video"
) -> Counter:
    """``(template, answer) -> trained questions`` over the first ``steps`` batches of a preset's
    ``stage`` ("video" or "lora")."""
    import vidllm
    from vidllm.train.presets import get_preset

    preset = get_preset(preset_name, overrides)
    model = vidllm.load(model_name)
    batch_fn = make_video_batch_fn(model, preset, getattr(preset, stage), stage_seed=STAGE_SEEDS[stage])
    answers: Counter = Counter()
    for step in range(steps):
        batch = batch_fn(step, 0, 1)
        for v, q in batch.selected:
            question = batch.videos[v].questions[q].question
            answers[question.template, question.answer] += 1
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--model", default="default", help="a model with the preset's layouts (vidllm.load)")
    parser.add_argument("--steps", type=int, default=500, help="batches to draw, from step 0")
    parser.add_argument("--stage", choices=sorted(STAGE_SEEDS), default="video")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="override a preset field, as `vidllm train --set` does")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    overrides = dict(args.overrides)
    answers = trained_answers(args.preset, overrides, args.model, args.steps, args.stage)

    total = sum(answers.values())
    lines = [
        f"preset {args.preset} {overrides or ''}, {args.stage} stage: {total} trained questions in {args.steps} steps",
        "",
        "| template | share of questions | answers (share within the template) |",
        "|---|---|---|",
    ]
    for template in sorted({t for t, _ in answers}):
        n = sum(c for (t, _), c in answers.items() if t == template)
        shares = sorted(((a, c / n) for (t, a), c in answers.items() if t == template), key=lambda x: -x[1])
        top = ", ".join(f"{a} {s:.0%}" for a, s in shares[:6])
        lines.append(f"| {template} | {n / total:.1%} | {top}{', ...' if len(shares) > 6 else ''} |")
    logging.getLogger("answer_prior").info("\n".join(lines))


if __name__ == "__main__":
    main()
