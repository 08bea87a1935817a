"""The LLM-judge protocol of the open-ended video-QA benchmarks, against any OpenAI-compatible server.

Video-ChatGPT (Maaz et al., 2023, "Quantitative evaluation", zero-shot QA) and every video LLM
paper since, Free Video-LLM included, score MSVD-QA, MSRVTT-QA, TGIF-QA and ActivityNet-QA by
asking a chat model whether a prediction matches the answer: the judge sees the question, the
correct answer and the prediction and replies with a Python dict string
``{'pred': 'yes' | 'no', 'score': 0-5}``. Accuracy is the share of "yes", and the mean score is
reported beside it. The reply is parsed with :func:`ast.literal_eval` (never ``eval``).

A reply that does not parse, or a request that fails, is retried up to ``max_attempts`` times; if
none succeeds the verdict records the failure (``pred=None`` and the reason) and the harness counts
it as "no" with score 0: failures stay in the denominator and are reported by count.

The client speaks ``POST {base}/chat/completions`` (``base`` like ``http://host:8000/v1``; a full
``.../chat/completions`` URL is accepted too), so the judge can be OpenAI's API, a vLLM server or
our own ``vidllm serve``.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You judge answers to questions about videos. Given a question, the correct answer and a "
    "predicted answer, decide whether the prediction means the same as the correct answer. "
    "Focus on meaning, not wording: synonyms and paraphrases count as matches; a prediction that "
    "contradicts the answer or misses its point does not."
)
USER_TEMPLATE = (
    "Question: {question}\n"
    "Correct answer: {answer}\n"
    "Predicted answer: {prediction}\n\n"
    "Reply with a Python dictionary string and nothing else, with the keys 'pred' (the string "
    "'yes' if the prediction matches the correct answer, else 'no') and 'score' (an integer from 0 "
    "to 5, how well it matches, 5 for a perfect match). For example: {{'pred': 'yes', 'score': 4}}"
)


class JudgeReplyError(ValueError):
    """The judge's reply is not a dict with 'pred' in yes/no and 'score' in 0-5."""


@dataclass
class Verdict:
    """What the judge said about one prediction (``pred`` is ``None`` when it never said it)."""

    pred: str | None  # "yes" / "no"
    score: float | None  # 0-5
    attempts: int
    error: str | None = None
    reply: str | None = None  # the last raw reply

    @property
    def correct(self) -> bool:
        return self.pred == "yes"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_DICT = re.compile(r"\{[^{}]*\}", re.DOTALL)


def parse_reply(text: str) -> tuple[str, float]:
    """``(pred, score)`` from a reply holding ``{'pred': ..., 'score': ...}`` (code fences and
    surrounding words are tolerated; the first dict literal that parses is used)."""
    if not isinstance(text, str) or not text.strip():
        raise JudgeReplyError("empty reply")
    errors = []
    for match in _DICT.finditer(text):
        try:
            value = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            errors.append(f"not a Python literal ({type(exc).__name__})")
            continue
        if not isinstance(value, dict):
            continue
        keys = {str(k).lower(): v for k, v in value.items()}
        pred = str(keys.get("pred", "")).strip().lower()
        if pred not in ("yes", "no"):
            errors.append(f"'pred' is {keys.get('pred')!r}, not 'yes' or 'no'")
            continue
        score = keys.get("score")
        try:
            score = float(score)
        except (TypeError, ValueError):
            errors.append(f"'score' is {score!r}, not a number")
            continue
        if not 0 <= score <= 5:
            errors.append(f"'score' {score} is outside 0-5")
            continue
        return pred, score
    raise JudgeReplyError("; ".join(errors) or f"no dict in the reply: {text[:200]!r}")


def chat_completions_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


class JudgeClient:
    """Asks an OpenAI-compatible chat endpoint for verdicts.

    Args:
        url: the API base (``http://127.0.0.1:8000/v1``) or the full chat-completions URL.
        model: the judge model's name on that server.
        api_key: a bearer token; by default ``$OPENAI_API_KEY`` when set.
        max_attempts: tries per prediction, for malformed replies and failed requests alike.
        timeout: seconds per request.
        retry_wait: seconds before a retry after a failed request (doubled each time).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_attempts: int = 3,
        timeout: float = 60.0,
        retry_wait: float = 0.5,
        max_tokens: int = 64,
    ) -> None:
        import httpx

        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.url = chat_completions_url(url)
        self.model = model
        self.max_attempts = max_attempts
        self.retry_wait = retry_wait
        self.max_tokens = max_tokens
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "max_attempts": self.max_attempts}

    def messages(self, question: str, answer: str, prediction: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": USER_TEMPLATE.format(question=question, answer=answer, prediction=prediction),
            },
        ]

    def _ask(self, messages: list[dict[str, str]]) -> str:
        import httpx

        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        try:
            response = self._client.post(self.url, json=payload)
        except httpx.HTTPError as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise ConnectionError(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            return response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise JudgeReplyError(f"not a chat-completions response ({type(exc).__name__})") from None

    def judge(self, question: str, answer: str, prediction: str) -> Verdict:
        """A verdict, after at most ``max_attempts`` tries; failures are returned, not raised."""
        messages = self.messages(question, answer, prediction)
        reply, error = None, None
        wait = self.retry_wait
        for attempt in range(1, self.max_attempts + 1):
            try:
                reply = self._ask(messages)
                pred, score = parse_reply(reply)
                return Verdict(pred=pred, score=score, attempts=attempt, reply=reply)
            except JudgeReplyError as exc:
                error = f"malformed reply: {exc}"
            except ConnectionError as exc:
                error = f"request failed: {exc}"
                time.sleep(wait)
                wait *= 2
            logger.info("judge attempt %d/%d failed: %s", attempt, self.max_attempts, error)
        logger.warning("judge gave no usable verdict after %d attempts: %s", self.max_attempts, error)
        return Verdict(pred=None, score=None, attempts=self.max_attempts, error=error, reply=reply)

    def close(self) -> None:
        self._client.close()
