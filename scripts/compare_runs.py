"""Answer accuracy of video-stage runs at equal steps, from their ``log.csv`` files.

Runs of one preset draw the same batches at the same step (the data and the layout of step ``s``
depend on the seed and ``s`` only), so their training accuracy over the same step windows is a
paired comparison::

    python scripts/compare_runs.py v0=docs/training_runs/v0.csv v4=docs/training_runs/v4.csv
"""

from __future__ import annotations

import argparse
import csv


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=PATH of a video stage's log.csv")
    parser.add_argument("--window", type=int, default=500)
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.runs)
    tables = {name: windows(path, args.window) for name, path in runs.items()}
    steps = sorted({s for t in tables.values() for s in t})
    print("| steps | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for end in steps:
        cells = [f"{tables[n][end]:.1%}" if end in tables[n] else "" for n in runs]
        print(f"| {end - args.window + 1}-{end} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
