"""``vidllm bench``: run one of the benchmark scripts of a source checkout (``benchmarks/*.py``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    if not BENCHMARKS_DIR.is_dir():
        return []
    return sorted(p.stem for p in BENCHMARKS_DIR.glob("*.py") if not p.stem.startswith("_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="benchmark to run (omit to list them)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")


def run(args: argparse.Namespace) -> int:
    names = available()
    if not names:
        print(
            "vidllm bench: the benchmark scripts live in a source checkout's benchmarks/ folder",
            file=sys.stderr,
        )
        return 2
    if args.name is None:
        print("benchmarks:", ", ".join(names))
        return 0
    if args.name not in names:
        print(
            f"vidllm bench: unknown benchmark {args.name!r}; choose from {', '.join(names)}", file=sys.stderr
        )
        return 2
    script = BENCHMARKS_DIR / f"{args.name}.py"
    return subprocess.call([sys.executable, str(script), *args.args])
