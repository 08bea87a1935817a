"""``python -m eval`` (and ``vidllm eval``): video QA, token sweeps, image classification.

    python -m eval video-qa --model default --task synthetic-mc --data-root DIR --output-dir OUT
    python -m eval video-qa ... --budgets 64,128,256        # both reducers at each budget + plot
    accelerate launch --multi_gpu --num_processes 2 -m eval video-qa ...  # shards samples, one result
    python -m eval tasks [--include-path DIR]               # the tasks and their files
    python -m eval image-cls --model ghostnet_100 --data digits --input-size 32 --train-epochs 10
    python -m eval image-cls-suite                          # the digits fine-tuning table

A run killed at any point is finished by starting the same command again (same --output-dir).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

COMMANDS = ("video-qa", "tasks", "image-cls", "image-cls-suite")


def _add_video_qa(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="bundled model name or model directory")
    parser.add_argument("--task", required=True, help="task name (python -m eval tasks lists them)")
    parser.add_argument(
        "--data-root", default=None, help="folder the task's annotation paths are relative to"
    )
    parser.add_argument("--output-dir", required=True, help="results, per-sample records and shards go here")
    parser.add_argument("--reducer", default="free-video-llm", choices=["free-video-llm", "uniform"])
    parser.add_argument("--budget", type=int, default=None, help="visual token budget (default: the model's)")
    parser.add_argument(
        "--budgets",
        default=None,
        help="comma-separated budgets: run both reducers at each and write the accuracy-versus-tokens table and plot",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples of the task")
    parser.add_argument(
        "--include-path", action="append", default=[], help="a folder of extra task YAML files (repeatable)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="samples per generate call")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the process's)")
    parser.add_argument(
        "--num-frames", type=int, default=None, help="frames to sample (default: the model's)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    parser.add_argument("--judge-url", default=None, help="OpenAI-compatible API base for the LLM judge")
    parser.add_argument("--judge-model", default=None, help="the judge model's name on that server")
    parser.add_argument("--judge-attempts", type=int, default=3, help="tries per sample for a usable verdict")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_image_cls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="efficient_backbones (or timm) model name")
    parser.add_argument("--checkpoint", default=None, help="weights to start from (safetensors or .pth)")
    parser.add_argument(
        "--data", default="digits", help="'digits' or 'imagefolder:DIR' (DIR/train, DIR/test)"
    )
    parser.add_argument("--input-size", type=int, default=None, help="pixels (default: the model's)")
    parser.add_argument("--train-epochs", type=int, default=0, help="fine-tune on the train split first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: per family)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop training after N steps")
    parser.add_argument("--save", default=None, help="write the fine-tuned weights here (safetensors)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_suite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        default="ghostnet_100,tinynet_e,vig_ti_224,pvig_ti_224",
        help="comma-separated model names",
    )
    parser.add_argument("--input-size", type=int, default=None, help="one size for all (default: per model)")
    parser.add_argument("--train-epochs", type=int, default=None, help="default: per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", default=None, help="also write the table as markdown here")


def _add_synthetic_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="bundled model name or model directory")
    parser.add_argument(
        "--data-root", default="outputs/synthetic_test", help="the test split (written if missing)"
    )
    parser.add_argument("--output-dir", default="outputs/eval/default_model")
    parser.add_argument("--limit", type=int, default=1000, help="questions of the main runs")
    parser.add_argument("--sweep-limit", type=int, default=300, help="questions of each sweep run")
    parser.add_argument("--budgets", default="64,128,256,512,1024", help="the sweep's token budgets")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands, on ``parser`` (``python -m eval``'s own, or ``vidllm eval``'s)."""
    sub = parser.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    _add_video_qa(sub.add_parser("video-qa", help="evaluate a video LLM on a video-QA task"))
    tasks = sub.add_parser("tasks", help="list the video-QA tasks")
    tasks.add_argument("--include-path", action="append", default=[])
    _add_image_cls(sub.add_parser("image-cls", help="image classification: top-1/5, params, MACs, images/s"))
    _add_suite(
        sub.add_parser("image-cls-suite", help="fine-tune the zoo's small models on digits; print the table")
    )
    _add_synthetic_report(
        sub.add_parser(
            "synthetic-report", help="a model on the synthetic test split: accuracy, reducers, token sweep"
        )
    )


# ----------------------------------------------------------------------------------------------
# video QA
# ----------------------------------------------------------------------------------------------


def _pct(metric: dict[str, Any]) -> str:
    if metric.get("value") is None:
        return metric.get("note", "-")
    return f"{metric['value']:.4f}  [{metric['ci_low']:.4f}, {metric['ci_high']:.4f}]"


def print_summary(results: dict[str, Any]) -> None:
    """The end-of-run table: metrics with intervals, slices, tokens, latency, errors."""
    reducer = results["reducer"]
    budget = "model default" if reducer["budget"] is None else reducer["budget"]
    print(f"\n{results['task']}  |  model {results['model']['name']}  |  {reducer['name']}, budget {budget}")
    print(f"  {'samples':<22} {results['n_samples']}  ({results['n_errors']} errored, counted wrong)")
    for name, metric in results["metrics"].items():
        extra = ""
        if name == "judge" and metric.get("value") is not None:
            extra = f"  (judge failures {metric['judge_failures']})"
        print(f"  {name:<22} {_pct(metric)}{extra}")
    for field, values in results["groups"].items():
        for value, metric in values.items():
            print(f"  {field + '=' + value:<22} {metric['value']:.4f}  (n={metric['n']})")
    if results["mean_visual_tokens"] is not None:
        print(
            f"  {'visual tokens':<22} {results['mean_visual_tokens']:.1f} mean, "
            f"{results['token_ratio']:.3f} of uniform sampling's {results['mean_uniform_tokens']:.1f}"
        )
    latency = results["latency_s"]
    if latency["p50"] is not None:
        print(
            f"  {'latency (s)':<22} p50 {latency['p50']:.3f}  p90 {latency['p90']:.3f}  p99 {latency['p99']:.3f}"
        )
    for kind, count in results["errors_by_type"].items():
        print(f"  {'error ' + kind:<22} {count}")


def _run_failed(command: str, exc: Exception) -> int:
    """One line on stderr and the exit code: 3 for an incomplete run (start it again), 2 for bad input."""
    from eval.runner import IncompleteRunError

    print(f"eval {command}: {exc}", file=sys.stderr)
    return 3 if isinstance(exc, IncompleteRunError) else 2


def run_video_qa_command(args: argparse.Namespace) -> int:
    from eval.runner import IncompleteRunError, VideoQAConfig, run_video_qa

    try:
        config = VideoQAConfig(
            task=args.task,
            output_dir=args.output_dir,
            model=args.model,
            data_root=args.data_root,
            reducer=args.reducer,
            budget=args.budget,
            limit=args.limit,
            include_paths=list(args.include_path),
            batch_size=args.batch_size,
            backend=args.backend,
            device=args.device,
            num_frames=args.num_frames,
            max_new_tokens=args.max_new_tokens,
            judge_url=args.judge_url,
            judge_model=args.judge_model,
            judge_attempts=args.judge_attempts,
            progress=not args.no_progress,
        )
        if args.budgets:
            from eval.sweep import markdown_table, parse_budgets, run_sweep

            rows = run_sweep(config, parse_budgets(args.budgets))
            if rows is not None:
                from eval.tasks import get_task

                print(markdown_table(rows, get_task(args.task, args.include_path).primary_metric))
                print(f"table, CSV and plot: {args.output_dir}/sweep.md, sweep.csv, sweep.png")
            return 0
        results = run_video_qa(config)
    except (IncompleteRunError, ValueError, FileNotFoundError, ImportError) as exc:
        return _run_failed("video-qa", exc)
    if results is not None:
        print_summary(results)
        print(f"\nresults: {args.output_dir}/results.json, samples: {args.output_dir}/samples.jsonl")
    return 0


def run_tasks_command(args: argparse.Namespace) -> int:
    from eval.tasks import list_tasks

    for name, task in sorted(list_tasks(args.include_path).items()):
        print(f"{name:<16} {task.answer_format:<16} {task.description}  ({task.source})")
    return 0


# ----------------------------------------------------------------------------------------------
# image classification
# ----------------------------------------------------------------------------------------------


def run_image_cls_command(args: argparse.Namespace) -> int:
    import json

    from eval.image_cls import ImageClsConfig, format_table, run_image_cls

    try:
        result = run_image_cls(
            ImageClsConfig(
                model=args.model,
                checkpoint=args.checkpoint,
                data=args.data,
                input_size=args.input_size,
                train_epochs=args.train_epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                weight_decay=args.weight_decay,
                seed=args.seed,
                max_steps=args.max_steps,
                save=args.save,
                threads=args.threads,
                progress=not args.json,
            )
        )
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"eval image-cls: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table([result]))
    return 0


def run_suite_command(args: argparse.Namespace) -> int:
    from eval.image_cls import format_table, run_digits_suite

    results = run_digits_suite(
        [m for m in args.models.split(",") if m],
        input_size=args.input_size,
        train_epochs=args.train_epochs,
        seed=args.seed,
        threads=args.threads,
        progress=True,
    )
    table = format_table(results)
    print(table)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(table)
    failed = [r["model"] for r in results if r["top1"] < 0.97]
    if failed:
        print(f"below 97% top-1: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_synthetic_report_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eval.runner import IncompleteRunError
    from eval.sweep import parse_budgets
    from eval.synthetic_report import run_report

    output_dir = Path(args.output_dir)
    try:
        budgets = parse_budgets(args.budgets)
        run_report(args.model, Path(args.data_root), output_dir, args.limit, args.sweep_limit, budgets)
    except (IncompleteRunError, ValueError, FileNotFoundError, ImportError) as exc:
        return _run_failed("synthetic-report", exc)
    print((output_dir / "report.md").read_text())
    print((output_dir / "sweep" / "sweep.md").read_text())
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {
        "synthetic-report": run_synthetic_report_command,
        "video-qa": run_video_qa_command,
        "tasks": run_tasks_command,
        "image-cls": run_image_cls_command,
        "image-cls-suite": run_suite_command,
    }
    return handlers[args.eval_command](args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    return run(args)
