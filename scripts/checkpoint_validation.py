"""Does a run's answer accuracy still move at its end? Validation of its kept checkpoints and their mean.

A video-stage run keeps its last ``keep_checkpoints`` checkpoints (every ``checkpoint_every``
steps). This loads the run's exported model, puts each kept checkpoint's weights into it in turn,
and then their element-wise mean (checkpoint averaging), and answers the fixed validation
questions with the model's default reducer (what ``vidllm train`` reports after training), per
template. A template whose accuracy differs a lot between checkpoints a few hundred steps apart
is still moving; one that differs between runs but not between checkpoints is the run's.

    .venv/bin/python scripts/checkpoint_validation.py --run runs/default [--videos 100]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger("checkpoint_validation")

PREFIX = "model."  # the training wrapper's video LLM; its loss heads are not in the exported model


def model_weights(checkpoint: Path) -> dict:
    """The video LLM's weights in a video-stage checkpoint, named as in the exported model."""
    from vidllm.train.checkpoint import checkpoint_weights

    state = checkpoint_weights(checkpoint)
    return {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}


def mean_weights(states: list[dict]) -> dict:
    """Element-wise mean of floating-point tensors (others, e.g. counters, from the last state)."""
    return {
        k: sum(s[k].float() for s in states).div(len(states)).to(v.dtype) if v.is_floating_point() else v
        for k, v in states[-1].items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a `vidllm train` output directory")
    parser.add_argument("--videos", type=int, default=100, help="validation videos (3 questions each)")
    args = parser.parse_args()
    if args.videos < 1:
        parser.error("--videos must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import vidllm
    from vidllm.train.checkpoint import list_checkpoints
    from vidllm.train.loop import CHECKPOINT_DIR
    from vidllm.train.trainer import validate

    run = Path(args.run)
    kept = list_checkpoints(run / "video" / CHECKPOINT_DIR)
    if not kept or not (run / "model").is_dir():
        parser.error(f"{run} has no video-stage checkpoints and exported model")
    states = {f"step {step}": model_weights(path) for step, path in kept}
    if len(states) > 1:
        states[f"mean of steps {', '.join(str(step) for step, _ in kept)}"] = mean_weights(
            list(states.values())
        )

    model = vidllm.load(run / "model")
    rows = {}
    for name, state in states.items():
        model.load_state_dict(state, strict=True)  # every weight and buffer: nothing of the last stays
        rows[name] = validate(model, num_videos=args.videos, reducers=("free-video-llm",))[
            "free-video-llm@default"
        ]
    templates = list(next(iter(rows.values()))["per_template"])
    lines = [
        f"{run}, free-video-llm at the default budget, {3 * args.videos} validation questions (H.264)",
        "",
        f"| weights | all | {' | '.join(templates)} |",
        f"|---|---|{'---|' * len(templates)}",
    ]
    for name, r in rows.items():
        cells = " | ".join(f"{r['per_template'][t]:.1%}" for t in templates)
        lines.append(f"| {name} | {r['accuracy']:.1%} | {cells} |")
    logger.info("\n".join(lines))


if __name__ == "__main__":
    main()
