"""Answer accuracy of video-stage runs at equal steps, from their ``log.csv`` files.

Runs of one preset draw the same batches at the same step (the data and the layout of step ``s``
depend on the seed and ``s`` only), so their training accuracy over the same step windows is a
paired comparison::

    python scripts/compare_runs.py v0=docs/training_runs/v0.csv v4=docs/training_runs/v4.csv

``--exact`` instead checks that runs are the same run: the logged loss at every step all of them
logged, digit for digit (a rerun of the preset a model came from against that model's log).
"""

from __future__ import annotations

import argparse
import csv
import os


def windows(path: str, width: int) -> dict[int, float]:
    """Question-weighted answer accuracy per ``width``-step window, keyed by the window's last step."""
    sums: dict[int, list[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            end = -(-int(row["step"]) // width) * width
            n = float(row["questions"])
            acc = sums.setdefault(end, [0.0, 0.0])
            acc[0] += float(row["answer_acc"]) * n
            acc[1] += n
    return {end: right / n for end, (right, n) in sorted(sums.items()) if n}


def same_losses(paths: dict[str, str]) -> int:
    """Print whether the runs logged the same loss at every common step; 0 if so, else 1."""
    logs = {}
    for name, path in paths.items():
        with open(path, newline="") as f:
            logs[name] = {int(row["step"]): row["loss"] for row in csv.DictReader(f)}
    common = sorted(set.intersection(*(set(log) for log in logs.values())))
    for step in common:
        values = {name: log[step] for name, log in logs.items()}
        if len(set(values.values())) > 1:
            print(f"differ at step {step} (of {len(common)} common logged steps): {values}")
            return 1
    print(f"same loss at all {len(common)} common logged steps (up to step {common[-1] if common else 0})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=PATH of a video stage's log.csv")
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--exact", action="store_true", help="check the runs logged identical losses")
    args = parser.parse_args()
    if bad := [item for item in args.runs if "=" not in item]:
        parser.error(f"each run is NAME=PATH, got {', '.join(bad)}")
    runs = dict(item.split("=", 1) for item in args.runs)
    if missing := [path for path in runs.values() if not os.path.isfile(path)]:
        parser.error(f"no such log: {', '.join(missing)}")
    if args.exact:
        return same_losses(runs)
    tables = {name: windows(path, args.window) for name, path in runs.items()}
    steps = sorted({s for t in tables.values() for s in t})
    print("| steps | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for end in steps:
        cells = [f"{tables[n][end]:.1%}" if end in tables[n] else "" for n in runs]
        print(f"| {end - args.window + 1}-{end} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
