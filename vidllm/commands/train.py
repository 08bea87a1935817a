"""``vidllm train --preset NAME``: train a model from a preset, resuming where a run stopped.

    vidllm train --preset default                      # -> runs/default/model
    vidllm train --preset default --max-minutes 30     # stop cleanly after 30 minutes; rerun to go on
    vidllm train --preset default --export-to vidllm/checkpoints/default
    vidllm train --preset smoke --output-dir /tmp/smoke
    torchrun --nproc_per_node 2 -m vidllm.cli train --preset default    # several processes (CPU: gloo)
    accelerate launch --multi_gpu --num_processes 2 -m vidllm.cli train ...  # several GPUs

The output directory holds the tokenizer, one folder per stage (checkpoints, ``log.csv``) and the
exported model (``model/``, with ``training_config.json`` and ``loss_curve.png``). Started again
on the same directory, a run resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys


def parse_override(text: str) -> tuple[str, object]:
    """``--set KEY=VALUE``: the dotted preset field and its value (JSON where it parses, else the text)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"an override is KEY=VALUE (e.g. video.steps=100), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="preset name (default: default)")
    parser.add_argument("--output-dir", default=None, help="run directory (default: runs/<preset>)")
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this many minutes"
    )
    parser.add_argument("--export-to", default=None, help="also copy the exported model to this directory")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the preset's)")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="override a preset field, e.g. video.steps=500 (repeatable)")  # fmt: skip
    parser.add_argument(
        "--no-validation", action="store_true", help="skip the validation accuracy at the end"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")


def run(args: argparse.Namespace) -> int:
    from vidllm.train.presets import PRESETS, get_preset

    if args.list:
        for name, preset in PRESETS.items():
            print(f"{name:<14} {preset.description}")
        return 0
    try:
        preset = get_preset(args.preset, dict(args.overrides))
    except (KeyError, AttributeError, ValueError) as exc:
        print(f"vidllm train: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        preset.threads = args.threads
    from vidllm.train.trainer import train

    output_dir = args.output_dir or f"runs/{preset.name}"
    result = train(
        preset,
        output_dir,
        max_minutes=args.max_minutes,
        export_dir=args.export_to,
        progress=not args.no_progress,
        run_validation=not args.no_validation,
    )
    if not result.main_process:  # the main process reports for every process
        return 0 if result.status == "done" else 3
    for name, stage in result.stages.items():
        print(f"{name:<8} {stage.status:<8} step {stage.step:>6}  {stage.elapsed / 60:6.1f} min of training")
    if result.status != "done":
        print(f"stopped; run the same command again to resume from {output_dir}", file=sys.stderr)
        return 3
    print(f"model: {result.model_dir}")
    if result.validation:
        for key, value in result.validation.items():
            if isinstance(value, dict):
                per = ", ".join(f"{t} {a:.3f}" for t, a in value["per_template"].items())
                print(f"validation {key}: {value['accuracy']:.3f} ({per}); short-lived or small "
                      f"{value['short_lived_or_small']:.3f}; {value['mean_visual_tokens']:.0f} visual tokens")  # fmt: skip
    return 0
