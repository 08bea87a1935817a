"""Readers of the official annotation layouts (what a task YAML cannot say).

- ``video_chatgpt``: the open-ended zero-shot QA layout of Video-ChatGPT (Maaz et al., 2023) used
  by MSVD-QA, MSRVTT-QA, TGIF-QA and ActivityNet-QA evaluations: a questions file
  ``[{video_name, question, question_id}]`` and an answers file ``[{answer, type, question_id}]``;
  the video is ``<video_dir>/<prefix><video_name><ext>`` for the first of ``.mp4 .avi .mov .mkv``
  that exists (ActivityNet names need the ``v_`` prefix).
- ``mvbench``: MVBench (Li et al., 2024): one JSON per sub-task under ``json/``, items
  ``{video, question, candidates, answer}``, some with ``start``/``end`` seconds (the sub-tasks
  marked ``bound``); each sub-task's videos live under its own prefix of ``video/``; some
  sub-tasks are folders of frames extracted at a known rate.
- ``videomme``: Video-MME (Fu et al., 2024): rows ``{videoID, question_id, duration, domain,
  sub_category, task_type, question, options ["A. ...", ...], answer}`` with a letter answer, from
  the dataset's parquet file or a JSON / JSON-lines export; videos ``<video_dir>/<videoID>.mp4``.

A document that cannot be asked (no answer, an answer outside the candidates, no video name) is
returned with ``error`` set, so it is scored as wrong instead of vanishing from the denominator.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval.metrics import LETTERS, strip_option_label
from eval.tasks import Doc

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A JSON list, a JSON-lines file or (with pandas and pyarrow) a parquet file, as dicts."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    if path.suffix == ".parquet":
        try:
            import pandas as pd

            return pd.read_parquet(path).to_dict(orient="records")
        except ImportError as exc:
            raise ImportError(
                f"reading {path.name} needs pandas and pyarrow (pip install pandas pyarrow), "
                "or convert it to JSON lines"
            ) from exc
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):  # {id: item} layouts
        return [{"_key": k, **v} if isinstance(v, dict) else {"_key": k, "value": v} for k, v in data.items()]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
    return data


def find_video(
    directory: Path, name: str, prefix: str = "", extensions: Sequence[str] = VIDEO_EXTENSIONS
) -> Path:
    """The first existing ``directory/prefix+name+ext``; the name as given if it has an extension
    that exists; else the first candidate, which does not exist (reading it reports the error)."""
    base = f"{prefix}{name}"
    exact = directory / base
    if exact.suffix.lower() in {e.lower() for e in extensions} and exact.exists():
        return exact
    candidates = [directory / f"{base}{ext}" for ext in extensions]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if exact.exists():  # a folder of frames or an unusual extension
        return exact
    return candidates[0]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def video_chatgpt(
    data_root: Path,
    *,
    questions: str,
    answers: str,
    video_dir: str,
    video_prefix: str = "",
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
) -> list[Doc]:
    """Open-ended QA in the Video-ChatGPT layout (see the module docstring)."""
    q_rows = read_rows(data_root / questions)
    a_rows = read_rows(data_root / answers)
    by_id = {_text(a.get("question_id")): a for a in a_rows if a.get("question_id") is not None}
    parallel = len(a_rows) == len(q_rows)
    directory = data_root / video_dir
    docs = []
    for i, q in enumerate(q_rows):
        qid = _text(q.get("question_id")) or f"{q.get('video_name', '')}/{i}"
        a = by_id.get(qid)
        if a is None and parallel and q.get("question_id") is None:
            a = a_rows[i]  # files without ids are parallel lists
        extra = {k: v for k, v in (a or {}).items() if k not in ("answer", "question_id")}
        extra.update({k: v for k, v in q.items() if k not in ("question", "question_id")})
        name = _text(q.get("video_name") or q.get("video"))
        error = None
        if not name:
            error = "the annotation names no video"
        elif a is None or a.get("answer") is None:
            error = f"no answer for question id {qid!r} in {answers}"
        docs.append(
            Doc(
                id=qid,
                video=str(find_video(directory, name, video_prefix, extensions)) if name else None,
                question=_text(q.get("question")),
                answer=_text((a or {}).get("answer")),
                error=error,
                fields=extra,
            )
        )
    return docs


def _choice_doc(
    doc_id: str,
    video: Path | None,
    question: Any,
    options: list[str],
    answer: str | None,
    *,
    answer_is_letter: bool,
    fields: dict[str, Any],
    **kwargs: Any,
) -> Doc:
    """A multiple-choice document; the answer (text or letter) must name one of the options."""
    answer_text, error = "", None
    if answer_is_letter:
        letter = _text(answer).strip().strip("().").upper()
        if len(letter) == 1 and letter in LETTERS[: len(options)]:
            answer_text = options[LETTERS.index(letter)]
        else:
            error = f"answer {answer!r} is not one of the letters {LETTERS[: len(options)]}"
    elif answer is not None and _text(answer) in options:
        answer_text = _text(answer)
    else:
        error = f"answer {answer!r} is not among the candidates"
    if not options:
        error = "the item has no candidates"
    elif len(options) > len(LETTERS):
        error = f"{len(options)} candidates is more than the {len(LETTERS)} option letters"
    if video is None and error is None:
        error = "the annotation names no video"
    return Doc(
        id=doc_id,
        video=None if video is None else str(video),
        question=_text(question),
        answer=answer_text,
        options=options,
        error=error,
        fields=fields,
        **kwargs,
    )


def _mvbench_video(directory: Path, name: str, frames: bool, extensions: Sequence[str]) -> Path:
    """MVBench names carry their extension (``.mp4``, ``.webm``, ``.gif``); a folder of frames is
    taken as named; a missing file is looked for under the other video extensions."""
    if frames or (directory / name).exists():
        return directory / name
    suffix = Path(name).suffix
    stem = name[: -len(suffix)] if suffix.lower() in extensions else name
    return find_video(directory, stem, "", extensions)


def mvbench(
    data_root: Path,
    *,
    tasks: dict[str, dict[str, Any]],
    json_dir: str = "json",
    video_dir: str = "video",
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
) -> list[Doc]:
    """MVBench's per-task JSON files (see the module docstring).

    ``tasks`` maps a sub-task name to ``{json: file, prefix: folder under video_dir, bound: bool,
    data_type: video | frame, fps: rate of a frame folder}``.
    """
    docs = []
    for task_name, spec in tasks.items():
        rows = read_rows(data_root / json_dir / spec["json"])
        directory = data_root / video_dir / spec.get("prefix", "")
        bound = bool(spec.get("bound", False))
        frames = spec.get("data_type", "video") == "frame"
        for i, item in enumerate(rows):
            name = _text(item.get("video"))
            video = _mvbench_video(directory, name, frames, extensions) if name else None
            options = [_text(c) for c in item.get("candidates") or []]
            fields = {k: v for k, v in item.items() if k not in ("question", "candidates", "answer")}
            fields["task_type"] = task_name
            docs.append(
                _choice_doc(
                    _text(item.get("question_id")) or f"{task_name}/{i}",
                    video,
                    item.get("question"),
                    options,
                    item.get("answer"),
                    answer_is_letter=False,
                    fields=fields,
                    start=float(item["start"]) if bound and item.get("start") is not None else None,
                    end=float(item["end"]) if bound and item.get("end") is not None else None,
                    frame_fps=float(spec.get("fps", 3.0)) if frames else None,
                )
            )
    return docs


def first_existing(data_root: Path, candidates: str | Sequence[str]) -> Path:
    """The first of ``candidates`` (relative to ``data_root``) that exists; an error naming them all."""
    names = [candidates] if isinstance(candidates, str) else list(candidates)
    for name in names:
        if (data_root / name).is_file():
            return data_root / name
    raise FileNotFoundError(f"none of the annotation files {names} exists under {data_root}")


def videomme(
    data_root: Path,
    *,
    annotations: str | Sequence[str],
    video_dir: str = "data",
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
) -> list[Doc]:
    """Video-MME rows (see the module docstring); options carry "A. " labels, answers are letters.

    ``annotations`` may list several files: the first that exists is read (the parquet release,
    or a JSON / JSON-lines export where pyarrow is not installed)."""
    directory = data_root / video_dir
    docs = []
    for i, row in enumerate(read_rows(first_existing(data_root, annotations))):
        name = _text(row.get("videoID") or row.get("video_id"))
        options = [strip_option_label(o) for o in list(row.get("options") or [])]
        fields = {k: v for k, v in row.items() if k not in ("question", "options", "answer")}
        docs.append(
            _choice_doc(
                _text(row.get("question_id")) or f"{name}/{i}",
                find_video(directory, name, "", extensions) if name else None,
                row.get("question"),
                options,
                row.get("answer"),
                answer_is_letter=True,
                fields=fields,
            )
        )
    return docs


LOADERS: dict[str, Callable[..., list[Doc]]] = {
    "video_chatgpt": video_chatgpt,
    "mvbench": mvbench,
    "videomme": videomme,
}
