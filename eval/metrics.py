"""Answer parsing, per-sample scores and aggregate statistics with confidence intervals.

Multiple choice: a generative model answers in many shapes ("B", "(B)", "B.", "Answer: B",
"The best option is (B) red", or just the option's text), so :func:`parse_choice` tries a fixed
order of unambiguous patterns before the looser ones and returns ``None`` (wrong) rather than
guess. MVBench's protocol pre-fills the reply with ``Best option:(``; a task passes that prefix and
it is put back in front of the prediction before parsing.

Open-ended: exact match (after stripping) and normalised match in the SQuAD manner (lowercase,
punctuation and the articles a/an/the removed, whitespace collapsed) extended with number words
to digits ("three" == "3"), which the open-ended video-QA answer keys mix freely.

Intervals: a binary metric (accuracy) gets the Wilson score interval (Wilson, 1927), which stays
inside [0, 1] and behaves at small n and at p near 0 or 1, where the normal approximation does
not; a graded metric (the judge's 0-5 score) gets a percentile bootstrap with a fixed seed, so the
same samples always give the same interval (a resumed run reproduces its metrics exactly).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

import numpy as np

LETTERS = string.ascii_uppercase

NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


# ----------------------------------------------------------------------------------------------
# open-ended answers
# ----------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, number words to digits, articles dropped, spaces collapsed."""
    text = _PUNCTUATION.sub(" ", str(text).lower())
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(w for w in words if w not in ARTICLES)


def exact_match(prediction: str, answer: str) -> bool:
    """The prediction is the answer, up to surrounding whitespace."""
    return str(prediction).strip() == str(answer).strip()


def normalized_match(prediction: str, answer: str) -> bool:
    """Equal after :func:`normalize_answer` (and never for an empty answer key)."""
    gold = normalize_answer(answer)
    return bool(gold) and normalize_answer(prediction) == gold


# ----------------------------------------------------------------------------------------------
# multiple choice
# ----------------------------------------------------------------------------------------------


def _letter_patterns(valid: str) -> list[re.Pattern]:
    """Patterns from the most to the least explicit; each captures one letter of ``valid``."""
    v = f"[{valid}]"
    return [
        # the whole reply is a letter, maybe bracketed or followed by punctuation: "B", "(B)", "B.", "B)"
        re.compile(rf"^\s*[\(\[]?({v})[\)\]]?\s*[.:,)]?\s*$"),
        # a keyword then the letter: "Answer: B", "the answer is (C)", "Best option:(B) red", "Option D"
        re.compile(rf"(?i:answer|option|choice)\s*(?i:is)?\s*[:：]?\s*[\(\[]?({v})(?![a-z])"),
        # the reply opens with a bracketed or punctuated letter: "(B) red", "B. red", "B) red", "B: red"
        re.compile(rf"^\s*[\(\[]({v})[\)\]]"),
        re.compile(rf"^\s*({v})\s*[.:)](?!\w)"),
        # a bracketed letter anywhere: "I think (B)"
        re.compile(rf"[\(\[]({v})[\)\]]"),
    ]


def _option_text_match(prediction: str, options: Sequence[str]) -> int | None:
    """The option whose normalised text the prediction is, or uniquely contains as whole words."""
    pred = normalize_answer(prediction)
    if not pred:
        return None
    texts = [normalize_answer(o) for o in options]
    exact = [i for i, t in enumerate(texts) if t and t == pred]
    if len(exact) == 1:
        return exact[0]
    padded = f" {pred} "
    contained = [i for i, t in enumerate(texts) if t and f" {t} " in padded]
    if not contained:
        return None
    # "red circle" contains "red": the longest wins when it contains every other match
    longest = max(contained, key=lambda i: len(texts[i]))
    if all(f" {texts[i]} " in f" {texts[longest]} " for i in contained):
        return longest
    return None


def parse_choice(prediction: str, options: Sequence[str], answer_prefix: str = "") -> str | None:
    """The option letter a free-form reply picks, or ``None`` when it picks none or is ambiguous.

    Args:
        prediction: the model's reply.
        options: the option texts, in letter order (without their "A." / "(A)" labels).
        answer_prefix: text the protocol puts before the reply (MVBench's ``"Best option:("``).
    """
    if not options:
        raise ValueError("a multiple-choice item needs options")
    valid = LETTERS[: len(options)]
    reply = str(prediction)
    candidates = [f"{answer_prefix}{reply}", reply] if answer_prefix else [reply]
    for text in candidates:
        for pattern in _letter_patterns(valid):
            match = pattern.search(text)
            if match:
                return match.group(1)
    found = set(re.findall(rf"(?<![A-Za-z])([{valid}])(?![A-Za-z])", reply))
    # a reply that opens with its only lone letter ("C 0 down") picked it, unless that letter is
    # the article of a sentence ("A red circle")
    lead = re.match(rf"^\s*([{valid}])(?=\s|$)", reply)
    if lead and found == {lead.group(1)} and not (lead.group(1) == "A" and re.match(r"^\s*A\s+[a-z]", reply)):
        return lead.group(1)
    index = _option_text_match(reply, [strip_option_label(o) for o in options])
    if index is not None:
        return valid[index]
    # last resort: exactly one distinct standalone capital letter among the valid ones ("B is right")
    if len(found) == 1:
        letter = found.pop()
        # "A red circle" is an article, not option A
        if not (letter == "A" and re.match(r"^\s*A\s+[a-z]", reply)):
            return letter
    return None


_LABEL = re.compile(r"^\s*[\(\[]?([A-Z])[\)\]]?\s*[.:)]\s+|^\s*[\(\[]([A-Z])[\)\]]\s*")


def strip_option_label(option: str) -> str:
    """``"A. red"`` / ``"(A) red"`` -> ``"red"`` (Video-MME writes its options with labels)."""
    return _LABEL.sub("", str(option), count=1).strip()


def choice_correct(
    prediction: str, options: Sequence[str], answer_letter: str, answer_prefix: str = ""
) -> bool:
    return parse_choice(prediction, options, answer_prefix) == answer_letter


# ----------------------------------------------------------------------------------------------
# aggregates
# ----------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, deterministic for a given ``seed``."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def _z(confidence: float) -> float:
    from statistics import NormalDist

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def proportion(flags: Sequence[bool], confidence: float = 0.95) -> dict:
    """``{value, correct, n, ci_low, ci_high, ci_method}`` of a list of booleans."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    low, high = wilson_interval(k, n, confidence)
    return {
        "value": k / n if n else math.nan,
        "correct": k,
        "n": n,
        "ci_low": low,
        "ci_high": high,
        "ci_method": f"wilson {confidence:.0%}",
    }


def mean_with_interval(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> dict:
    """``{value, n, ci_low, ci_high, ci_method}`` of graded scores (bootstrap interval)."""
    low, high = bootstrap_interval(values, confidence, seed=seed)
    return {
        "value": float(np.mean(values)) if len(values) else math.nan,
        "n": len(values),
        "ci_low": low,
        "ci_high": high,
        "ci_method": f"bootstrap percentile {confidence:.0%}, 2000 resamples, seed {seed}",
    }


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "p90": ..., "p99": ...}`` (linear interpolation); ``None`` without values."""
    if not len(values):
        return {f"p{q}": None for q in qs}
    data = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(data, q)) for q in qs}
