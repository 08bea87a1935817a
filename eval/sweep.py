"""Accuracy versus visual tokens: both reducers at each token budget, side by side.

For every budget the Free Video-LLM reducer (prompt-guided slow / middle / fast paths,
:func:`vidllm.reducer.config_for_budget`) and the uniform baseline (the same budget spent on
uniformly spaced full-resolution frames) answer the same task; each pair (reducer, budget) is an
ordinary resumable run in ``<output-dir>/<reducer>_b<budget>/``. The model is loaded once. A
budget too small for a reducer's smallest configuration is reported as such in the table, not
run. Outputs: ``sweep.md`` and ``sweep.csv`` (one row per run) and ``sweep.png`` (accuracy with
its confidence interval against the mean visual tokens actually fed, one line per reducer).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from eval.records import atomic_write
from eval.runner import REDUCERS, ProcessInfo, VideoQAConfig, load_model, process_info, run_video_qa
from eval.tasks import get_task

logger = logging.getLogger(__name__)

COLUMNS = (
    "reducer", "budget", "status", "accuracy", "ci_low", "ci_high", "n", "errors",
    "mean_visual_tokens", "mean_uniform_tokens", "token_ratio", "latency_p50_s",
)  # fmt: skip


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--budgets takes comma-separated integers, got {text!r}") from None
    if not budgets or min(budgets) < 1:
        raise ValueError(f"--budgets needs positive token counts, got {text!r}")
    return sorted(set(budgets))


def _row(reducer: str, budget: int, results: dict[str, Any] | None, status: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(reducer=reducer, budget=budget, status=status)
    if results is None:
        return row
    metric = results["metrics"][results["primary_metric"]]
    row.update(
        accuracy=metric["value"],
        ci_low=metric["ci_low"],
        ci_high=metric["ci_high"],
        n=results["n_samples"],
        errors=results["n_errors"],
        mean_visual_tokens=results["mean_visual_tokens"],
        mean_uniform_tokens=results["mean_uniform_tokens"],
        token_ratio=results["token_ratio"],
        latency_p50_s=results["latency_s"]["p50"],
    )
    return row


def run_sweep(
    config: VideoQAConfig, budgets: list[int], info: ProcessInfo | None = None
) -> list[dict[str, Any]] | None:
    """Run every (reducer, budget) pair, then write the table and plot (main process)."""
    info = info or process_info()
    task = get_task(config.task, config.include_paths)
    root = Path(config.output_dir)
    model = None
    rows = []
    for budget in budgets:
        for reducer in REDUCERS:
            sub = replace(
                config, reducer=reducer, budget=budget, output_dir=str(root / f"{reducer}_b{budget}")
            )
            if model is None and not (Path(sub.output_dir) / "results.json").exists():
                model = load_model(config, info.device)
            if model is not None:
                try:
                    model.resolve_reducer(reducer, budget, config.num_frames)
                except ValueError as exc:
                    logger.warning("%s at budget %d: %s", reducer, budget, exc)
                    rows.append(_row(reducer, budget, None, f"infeasible: {exc}"))
                    continue
            results = run_video_qa(sub, model=model, info=info, task=task)
            rows.append(_row(reducer, budget, results, "ok"))
    if not info.is_main:
        return None
    write_table(rows, root, task.task, task.primary_metric)
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    """One line per run, and per budget the accuracy and token ratios free-video-llm / uniform."""
    head = f"| reducer | budget | {metric} | 95% CI | visual tokens | of its frames at full resolution | n | errors | p50 latency (s) |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['reducer']} | {r['budget']} | {r['status']} | | | | | | |")
            continue
        lines.append(
            f"| {r['reducer']} | {r['budget']} | {_fmt(r['accuracy'])} | [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] "
            f"| {_fmt(r['mean_visual_tokens'], 1)} | {_fmt(r['token_ratio'])} | {r['n']} | {r['errors']} "
            f"| {_fmt(r['latency_p50_s'])} |"
        )
    pairs = []
    for budget in sorted({r["budget"] for r in rows}):
        free = next(
            (
                r
                for r in rows
                if r["budget"] == budget and r["reducer"] == "free-video-llm" and r["status"] == "ok"
            ),
            None,
        )
        base = next(
            (r for r in rows if r["budget"] == budget and r["reducer"] == "uniform" and r["status"] == "ok"),
            None,
        )
        if free and base and base["mean_visual_tokens"]:
            # an accuracy ratio over a uniform accuracy of 0 is undefined: shown as "-", not dropped
            accuracy_ratio = f"{free['accuracy'] / base['accuracy']:.3f}" if base["accuracy"] else "-"
            pairs.append(
                f"| {budget} | {accuracy_ratio} | {free['mean_visual_tokens'] / base['mean_visual_tokens']:.3f} |"
            )
    if pairs:
        lines += [
            "",
            f"| budget | {metric} ratio (free-video-llm / uniform) | token ratio |",
            "|---|---|---|",
            *pairs,
        ]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], root: Path, task: str, metric: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(
        root / "sweep.md", f"# {task}: {metric} versus visual tokens\n\n" + markdown_table(rows, metric)
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(root / "sweep.csv", buffer.getvalue())
    plot(rows, root / "sweep.png", task, metric)


def plot(rows: list[dict[str, Any]], path: Path, task: str, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for reducer, marker in zip(REDUCERS, "os"):
        points = sorted(
            (r for r in rows if r["reducer"] == reducer and r["status"] == "ok" and r["mean_visual_tokens"]),
            key=lambda r: r["mean_visual_tokens"],
        )
        if not points:
            continue
        x = [r["mean_visual_tokens"] for r in points]
        y = [r["accuracy"] for r in points]
        err = [[r["accuracy"] - r["ci_low"] for r in points], [r["ci_high"] - r["accuracy"] for r in points]]
        ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=reducer)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean visual tokens fed to the LM")
    ax.set_ylabel(f"{metric} (95% CI)")
    ax.set_title(f"{task}: {metric} versus visual tokens")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
