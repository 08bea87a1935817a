"""Two models on the same questions, from their evaluations' ``samples.jsonl``: how many answers
agree, which questions only one of them gets right (overall and per template), and the exact
two-sided sign test on those discordant questions (McNemar's exact test): how likely a split at
least that uneven is if the two models were equally good.

    .venv/bin/python scripts/paired_answers.py \
        v33=outputs/eval/v33/free-video-llm/samples.jsonl v37=outputs/eval/v37/free-video-llm/samples.jsonl
"""

from __future__ import annotations

import argparse
from collections import Counter
from math import comb
from pathlib import Path

from eval.records import read_records


def load(path: Path) -> dict[str, dict]:
    """The samples of one evaluation by question id (as the eval harness reads its records)."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (an evaluation's samples.jsonl)")
    return {s["id"]: s for s in read_records(path)}


def sign_test(a_only: int, b_only: int) -> float:
    """Exact two-sided binomial test of ``a_only`` against ``b_only`` at p = 1/2."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: dict[str, dict], b: dict[str, dict]) -> tuple[int, int, Counter, Counter]:
    """(questions both answered, same answers, only-a-right by template, only-b-right by template)."""
    shared = a.keys() & b.keys()
    if not shared:
        raise SystemExit("the two evaluations have no question ids in common")
    same = sum(a[i]["prediction"] == b[i]["prediction"] for i in shared)
    a_only, b_only = Counter(), Counter()
    for i in shared:
        template = a[i]["group"]["template"]
        if a[i]["correct"] and not b[i]["correct"]:
            a_only[template] += 1
        elif b[i]["correct"] and not a[i]["correct"]:
            b_only[template] += 1
    return len(shared), same, a_only, b_only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs=2, help="NAME=samples.jsonl, twice")
    args = parser.parse_args()
    if not all("=" in run for run in args.runs):
        parser.error("each run is NAME=samples.jsonl")
    (name_a, path_a), (name_b, path_b) = (run.split("=", 1) for run in args.runs)
    a, b = load(Path(path_a)), load(Path(path_b))
    shared, same, a_only, b_only = compare(a, b)
    print(f"{shared} questions both answered; the same answer to {same}\n")
    print(f"| template | only {name_a} right | only {name_b} right | sign test p |")
    print("|---|---|---|---|")
    for template in sorted(a_only.keys() | b_only.keys()):
        na, nb = a_only[template], b_only[template]
        print(f"| {template} | {na} | {nb} | {sign_test(na, nb):.3f} |")
    na, nb = sum(a_only.values()), sum(b_only.values())
    print(f"| all | {na} | {nb} | {sign_test(na, nb):.3f} |")


if __name__ == "__main__":
    main()
