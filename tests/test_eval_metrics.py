"""Answer parsing, scores, intervals, the judge reply parser and the crash-safe record files."""

from __future__ import annotations

import json
import math
import os

import pytest

from eval.judge import JudgeReplyError, parse_reply
from eval.metrics import (
    bootstrap_interval,
    exact_match,
    mean_with_interval,
    normalize_answer,
    normalized_match,
    parse_choice,
    percentiles,
    proportion,
    strip_option_label,
    wilson_interval,
)
from eval.records import ShardWriter, atomic_write, read_records, repair

OPTIONS = ["red circle", "blue square", "green triangle", "red"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B", "B"),
        (" (B) ", "B"),
        ("B.", "B"),
        ("B)", "B"),
        ("[C]", "C"),
        ("Answer: B", "B"),
        ("answer:C", "C"),
        ("The answer is (C).", "C"),
        ("The correct option is D", "D"),
        ("(B) blue square", "B"),
        ("B. blue square", "B"),
        ("C: green triangle", "C"),
        ("I think it is (D), the red one", "D"),
        ("blue square", "B"),
        ("It is the Green Triangle.", "C"),
        ("red circle", "A"),  # contains "red" too: the longest match that contains the others wins
        ("A red circle", "A"),  # option text, not the article read as a letter
        ("A red", "D"),  # "A" is an article here; the text names option D
        ("A", "A"),
        ("D is right", "D"),
        ("C 0 down 0", "C"),  # a leading lone letter beats option text later in the reply
        ("A 2 red", "A"),
        ("E", None),  # not an option letter
        ("B or C", None),  # two letters: ambiguous
        ("a purple star", None),
        ("", None),
        ("red or blue square", None),  # two options, neither containing the other
    ],
)
def test_parse_choice(reply, expected):
    assert parse_choice(reply, OPTIONS) == expected


def test_parse_choice_with_the_mvbench_prefix():
    options = ["up", "down", "left"]
    assert parse_choice("B) down", options, answer_prefix="Best option:(") == "B"
    assert parse_choice("C", options, answer_prefix="Best option:(") == "C"
    assert parse_choice("left", options, answer_prefix="Best option:(") == "C"
    with pytest.raises(ValueError, match="options"):
        parse_choice("A", [])


def test_option_labels_are_stripped():
    assert strip_option_label("A. One.") == "One."
    assert strip_option_label("(B) two") == "two"
    assert strip_option_label("C) three") == "three"
    assert strip_option_label("plain text") == "plain text"
    assert parse_choice("Three.", [strip_option_label(o) for o in ["A. One.", "B. Two.", "C. Three."]]) == "C"


@pytest.mark.parametrize(
    ("prediction", "answer", "exact", "normalized"),
    [
        ("red", "red", True, True),
        (" red ", "red", True, True),
        ("Red.", "red", False, True),
        ("the cat", "cat", False, True),
        ("three", "3", False, True),
        ("3 dogs", "three dogs", False, True),
        ("An apple!", "apple", False, True),
        ("blue", "red", False, False),
        ("red ball", "red", False, False),
        ("", "", True, False),  # an empty answer key never matches after normalisation
    ],
)
def test_open_ended_matches(prediction, answer, exact, normalized):
    assert exact_match(prediction, answer) is exact
    assert normalized_match(prediction, answer) is normalized


def test_normalize_answer():
    assert normalize_answer("The  THREE red, balls!") == "3 red balls"
    assert normalize_answer("twenty-one") == "20 1"  # hyphen splits; each word maps on its own


def test_wilson_interval_known_values():
    # standard reference values (e.g. Newcombe 1998, table I): 5/10 and 0/10 at 95%
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4)
    assert high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(81, 263)  # Newcombe's example: 0.2553 - 0.3662
    assert low == pytest.approx(0.2553, abs=1e-4)
    assert high == pytest.approx(0.3662, abs=1e-4)


def test_proportion_counts_every_sample():
    result = proportion([True, False, False, True])
    assert result["value"] == 0.5
    assert result["correct"] == 2
    assert result["n"] == 4
    assert result["ci_low"] < 0.5 < result["ci_high"]


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    values = [0, 1, 2, 3, 4, 5, 5, 4, 3, 3]
    a, b = bootstrap_interval(values), bootstrap_interval(values)
    assert a == b
    assert a[0] < sum(values) / len(values) < a[1]
    assert all(math.isnan(v) for v in bootstrap_interval([]))
    assert mean_with_interval(values)["value"] == pytest.approx(3.0)


def test_percentiles():
    p = percentiles(list(range(101)))
    assert p == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}


# ----------------------------------------------------------------------------------------------
# judge replies
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("{'pred': 'yes', 'score': 4}", ("yes", 4.0)),
        ('{"pred": "no", "score": 1}', ("no", 1.0)),
        ("Sure! {'pred': 'Yes', 'score': '5'} Hope this helps.", ("yes", 5.0)),
        ("```python\n{'pred': 'no', 'score': 0}\n```", ("no", 0.0)),
        ("{'note': 1} then {'pred': 'yes', 'score': 3.5}", ("yes", 3.5)),
    ],
)
def test_judge_reply_parses(reply, expected):
    assert parse_reply(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "yes, score 4",
        "{'pred': 'maybe', 'score': 3}",
        "{'pred': 'yes', 'score': 7}",
        "{'pred': 'yes', 'score': 'high'}",
        "{'pred': 'yes'}",
        "{'pred': __import__('os').getcwd(), 'score': 1}",  # literal_eval refuses code
        "{'pred': 'yes', 'score': 4",
    ],
)
def test_judge_reply_malformed(reply):
    with pytest.raises(JudgeReplyError):
        parse_reply(reply)


# ----------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------


def test_torn_last_line_is_repaired_before_appending(tmp_path):
    path = tmp_path / "rank0.jsonl"
    with ShardWriter(path) as writer:
        writer.write({"id": "a"})
        writer.write({"id": "b"})
    with open(path, "ab") as f:  # what a process killed in the middle of a write leaves
        f.write(b'{"id": "c", "predic')
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    assert repair(path) == len(b'{"id": "c", "predic')
    assert repair(path) == 0
    with ShardWriter(path) as writer:
        writer.write({"id": "c"})
    assert [r["id"] for r in read_records(path)] == ["a", "b", "c"]
    assert path.read_bytes().endswith(b"\n")


def test_a_file_that_is_one_torn_line_is_emptied(tmp_path):
    path = tmp_path / "rank1.jsonl"
    path.write_bytes(b'{"id": "x"')
    ShardWriter(path).close()
    assert path.read_bytes() == b""


def test_complete_json_without_newline_is_not_trusted(tmp_path):
    """A line whose newline did not reach the disk may still be growing (another process)."""
    path = tmp_path / "rank2.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in read_records(path)] == ["a"]


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "results.json"
    atomic_write(path, json.dumps({"v": 1}))
    atomic_write(path, json.dumps({"v": 2}))
    assert json.loads(path.read_text()) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))
