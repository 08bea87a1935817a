"""The bundled model on the synthetic world's test split: the figures the default model is held to.

One command (every run under it is an ordinary resumable eval run, so an interrupted report
finishes where it stopped)::

    python -m eval synthetic-report [--model default] [--output-dir outputs/eval/default_model]
        [--limit 1000] [--sweep-limit 300] [--budgets 64,128,256,512,1024]

Runs, on ``synthetic-qa`` (open-ended; the split is written to ``--data-root`` first if missing):

- ``free-video-llm``: the model's default reducer configuration, first ``--limit`` questions;
- ``uniform``: uniformly spaced full-resolution frames at the same number of visual tokens;
- ``full``: all the model's frames at full resolution (the full-token reference);
- ``sweep/``: both reducers at each of ``--budgets`` on the first ``--sweep-limit`` questions;
  the table and plot (``sweep.md``, ``sweep.csv``, ``sweep.png``) also hold the three runs above,
  scored on the same first ``--sweep-limit`` questions.

Then ``report.md`` / ``report.json``: overall and per-template accuracy of the default; on the
questions whose subject is short-lived or small, Free Video-LLM against uniform sampling at the
same budget; the default's share of the full token count and the share of the full-token
accuracy it keeps. Each figure is printed beside the target it is checked against.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from eval.metrics import proportion
from eval.records import atomic_write, read_records
from eval.runner import VideoQAConfig, load_model, process_info, run_video_qa, summarize
from eval.sweep import _row, write_table
from eval.tasks import get_task

logger = logging.getLogger(__name__)

TASK = "synthetic-qa"
TARGETS = {"accuracy": 0.90, "hard_gain": 0.15, "token_share": 0.25, "kept_accuracy": 0.98}


def _hard(record: dict[str, Any]) -> bool:
    group = record.get("group", {})
    return bool(group.get("short_lived")) or bool(group.get("small"))


def _accuracy(records: list[dict[str, Any]]) -> dict[str, Any]:
    return proportion([bool(r["correct"]) for r in records])


def build_report(
    results: dict[str, dict[str, Any]], samples: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The figures from the three main runs' results and per-sample records."""
    default, uniform, full = (results[k] for k in ("free-video-llm", "uniform", "full"))
    metric = default["primary_metric"]
    hard = {k: _accuracy([r for r in samples[k] if _hard(r)]) for k in ("free-video-llm", "uniform")}
    accuracy = default["metrics"][metric]["value"]
    full_accuracy = full["metrics"][metric]["value"]
    return {
        "metric": metric,
        "n": default["n_samples"],
        "accuracy": default["metrics"][metric],
        "per_template": default["groups"].get("template", {}),
        "errors": {k: results[k]["n_errors"] for k in results},
        "visual_tokens": {k: results[k]["mean_visual_tokens"] for k in results},
        "short_lived_or_small": {
            **hard,
            "gain": hard["free-video-llm"]["value"] - hard["uniform"]["value"],
        },
        "uniform_accuracy": uniform["metrics"][metric],
        "full_accuracy": full["metrics"][metric],
        "token_share": default["mean_visual_tokens"] / full["mean_visual_tokens"],
        "kept_accuracy": accuracy / full_accuracy if full_accuracy else None,
        "targets": TARGETS,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _check(ok: bool) -> str:
    return "met" if ok else "NOT met"


def format_report(report: dict[str, Any], model: str) -> str:
    t = report["targets"]
    acc = report["accuracy"]
    hard = report["short_lived_or_small"]
    tokens = report["visual_tokens"]
    kept = report["kept_accuracy"]
    lines = [
        f"# {model} on {TASK} ({report['n']} test questions, {report['metric']})",
        "",
        "| figure | value | target | |",
        "|---|---|---|---|",
        f"| accuracy, default reducer ({tokens['free-video-llm']:.0f} visual tokens) | {_pct(acc['value'])} "
        f"[{_pct(acc['ci_low'])}, {_pct(acc['ci_high'])}] | >= {_pct(t['accuracy'])} | {_check(acc['value'] >= t['accuracy'])} |",
        f"| short-lived or small subjects (n={hard['free-video-llm']['n']}): free-video-llm | "
        f"{_pct(hard['free-video-llm']['value'])} | | |",
        f"| the same, uniform sampling at {tokens['uniform']:.0f} tokens | {_pct(hard['uniform']['value'])} | | |",
        f"| gain of free-video-llm there | {100 * hard['gain']:+.1f} pts | >= +{100 * t['hard_gain']:.0f} pts "
        f"| {_check(hard['gain'] >= t['hard_gain'])} |",
        f"| uniform at the same budget, all questions | {_pct(report['uniform_accuracy']['value'])} | | |",
        f"| full tokens ({tokens['full']:.0f}: every frame at full resolution) | {_pct(report['full_accuracy']['value'])} | | |",
        f"| default tokens / full tokens | {_pct(report['token_share'])} | <= {_pct(t['token_share'])} "
        f"| {_check(report['token_share'] <= t['token_share'])} |",
        f"| default accuracy / full-token accuracy | {_pct(kept)} | >= {_pct(t['kept_accuracy'])} "
        f"| {_check(kept is not None and kept >= t['kept_accuracy'])} |",
        "",
        "| template | accuracy | 95% CI | n |",
        "|---|---|---|---|",
    ]
    for name, value in report["per_template"].items():
        lines.append(
            f"| {name} | {_pct(value['value'])} | [{_pct(value['ci_low'])}, {_pct(value['ci_high'])}] | {value['n']} |"
        )
    errors = {k: v for k, v in report["errors"].items() if v}
    lines += ["", f"errored samples: {errors or 'none'}"]
    return "\n".join(lines) + "\n"


def run_report(
    model_name: str, data_root: Path, output_dir: Path, limit: int, sweep_limit: int, budgets: list[int]
) -> dict[str, Any]:
    info = process_info()
    task = get_task(TASK)
    base = VideoQAConfig(task=TASK, output_dir="", model=model_name, data_root=str(data_root), progress=False)
    model = load_model(base, info.device)  # first: a wrong model fails before the split is written
    if not (data_root / "manifest.json").exists():
        from vidllm.data.synthetic import write_split

        logger.info("writing the test split to %s", data_root)
        write_split(data_root, "test")
    h, w = model.tower.grid
    full_budget = model.config.reducer_config().num_frames * h * w
    runs = {
        "free-video-llm": replace(base, reducer="free-video-llm"),
        "uniform": replace(base, reducer="uniform"),
        "full": replace(base, reducer="uniform", budget=full_budget),
    }
    results, samples, rows = {}, {}, []
    for name, config in runs.items():
        config = replace(config, limit=limit, output_dir=str(output_dir / name))
        results[name] = run_video_qa(config, model=model, info=info, task=task)
        samples[name] = read_records(output_dir / name / "samples.jsonl")
        # the sweep's point for this run: its first sweep_limit questions, as every sweep run has
        head = summarize(task, samples[name][:sweep_limit], judged=False)
        budget = full_budget if name == "full" else round(results["free-video-llm"]["mean_visual_tokens"])
        rows.append(_row(config.reducer, budget, head, "ok"))
    for budget in budgets:
        for reducer in ("free-video-llm", "uniform"):
            try:
                model.resolve_reducer(reducer, budget)
            except ValueError as exc:
                rows.append(_row(reducer, budget, None, f"infeasible: {exc}"))
                continue
            config = replace(
                base, reducer=reducer, budget=budget, limit=sweep_limit,
                output_dir=str(output_dir / "sweep" / f"{reducer}_b{budget}"),
            )  # fmt: skip
            rows.append(_row(reducer, budget, run_video_qa(config, model=model, info=info, task=task), "ok"))
    rows.sort(key=lambda r: (r["budget"], r["reducer"]))
    write_table(rows, output_dir / "sweep", TASK, task.primary_metric)
    report = build_report(results, samples)
    atomic_write(output_dir / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write(output_dir / "report.md", format_report(report, model_name))
    return report
