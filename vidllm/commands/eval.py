"""``vidllm eval ...``: the evaluation harness (the same command line as ``python -m eval``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from eval.cli import add_arguments as add_eval_arguments

    add_eval_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from eval.cli import run as run_eval

    return run_eval(args)
