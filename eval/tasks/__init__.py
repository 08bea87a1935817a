"""Video-QA tasks declared in YAML, in the lmms-eval manner.

A task file says where the annotations are and how to read them (``loader`` and
``dataset_kwargs``), how a document becomes the model's question (``prompt``, a ``str.format``
template over the document's fields), what the answer looks like (``answer_format``:
``open`` or ``multiple_choice``, with an optional ``answer_prefix`` such as MVBench's
``"Best option:("``), which ``metrics`` to report (the first is the headline unless
``primary_metric`` says otherwise), which fields to slice results by (``group_by``) and the
generation settings. Code holds only what YAML cannot say: the loaders of the official annotation
layouts (:mod:`eval.tasks.loaders`).

Built-in tasks are the ``*.yaml`` files next to this module; ``--include-path DIR`` adds every
``*.yaml`` in ``DIR`` (a user task may name a loader in a ``.py`` file beside it as
``file_stem:function``, or any importable ``package.module:function``). A later definition of a
name replaces an earlier one, so a user can override a built-in task.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import string
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.metrics import LETTERS

logger = logging.getLogger(__name__)

TASK_DIR = Path(__file__).resolve().parent
ANSWER_FORMATS = ("open", "multiple_choice")
OPEN_METRICS = ("exact_match", "normalized_match", "judge")
CHOICE_METRICS = ("accuracy",)


@dataclass
class Doc:
    """One question of a task, as every loader returns it.

    ``video`` is the file (or frame folder) to read, ``None`` only when ``error`` says why there is
    none. ``error`` marks a document that cannot be asked (no video name, no answer, an answer
    outside the candidates): it is kept and scored as wrong, never dropped. ``fields`` holds the
    annotation's other fields (for prompt templates and ``group_by``).
    """

    id: str
    video: str | None
    question: str
    answer: str
    options: list[str] | None = None  # multiple choice: option texts, in letter order, without labels
    start: float | None = None  # the window to read, seconds (MVBench's bound items)
    end: float | None = None
    frame_fps: float | None = None  # for a folder of frames: the rate they were extracted at
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def answer_letter(self) -> str | None:
        if self.options is None or self.answer not in self.options:
            return None
        return LETTERS[self.options.index(self.answer)]

    def template_fields(self) -> dict[str, Any]:
        """What a prompt template may use: the annotation's fields plus the formatted options."""
        values = {**self.fields, "question": self.question}
        if self.options is not None:
            letters = LETTERS[: len(self.options)]
            values["options_block"] = "\n".join(f"({c}) {o}" for c, o in zip(letters, self.options))
            values["options_inline"] = " ".join(f"({c}) {o}" for c, o in zip(letters, self.options))
            values["options_lines"] = "\n".join(f"{c}. {o}" for c, o in zip(letters, self.options))
            values["letters"] = ", ".join(letters)
        return values


@dataclass
class TaskConfig:
    """A task file's contents (see the module docstring)."""

    task: str
    loader: str
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    prompt: str = "{question}"
    answer_format: str = "open"
    answer_prefix: str = ""
    metrics: list[str] = field(default_factory=list)
    primary_metric: str | None = None
    group_by: list[str] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str | None = None  # the YAML file it came from

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"task {self.task!r}: answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}"
            )
        allowed = CHOICE_METRICS if self.answer_format == "multiple_choice" else OPEN_METRICS
        if not self.metrics:
            self.metrics = list(allowed[:1] if self.answer_format == "multiple_choice" else allowed[:2])
        unknown = [m for m in self.metrics if m not in allowed]
        if unknown:
            raise ValueError(
                f"task {self.task!r}: metrics {unknown} do not apply to {self.answer_format} answers "
                f"(choose from {list(allowed)})"
            )
        if self.primary_metric is None:
            self.primary_metric = self.metrics[0]
        if self.primary_metric not in self.metrics:
            raise ValueError(f"task {self.task!r}: primary_metric {self.primary_metric!r} is not in metrics")
        try:
            names = {f[1] for f in string.Formatter().parse(self.prompt) if f[1] is not None}
        except ValueError as exc:
            raise ValueError(f"task {self.task!r}: the prompt template is malformed: {exc}") from None
        if not names:
            raise ValueError(f"task {self.task!r}: the prompt template uses no field (e.g. {{question}})")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TaskConfig:
        import yaml

        path = Path(path)
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict) or "task" not in data or "loader" not in data:
            raise ValueError(f"{path}: a task file is a mapping with at least 'task' and 'loader'")
        known = set(cls.__dataclass_fields__) - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown task keys {unknown}; known: {sorted(known)}")
        return cls(**data, source=str(path))

    def fingerprint(self) -> str:
        """A hash of everything that changes what the task asks or how it scores."""
        from dataclasses import asdict

        text = repr(sorted((k, repr(v)) for k, v in asdict(self).items() if k != "source"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def max_new_tokens(self) -> int | None:
        value = self.generation.get("max_new_tokens")
        return None if value is None else int(value)

    def render_prompt(self, doc: Doc) -> str:
        """The question the model is asked (the answer prefix appended, as the model cannot be prefilled)."""
        try:
            text = self.prompt.format(**doc.template_fields())
        except KeyError as exc:
            raise ValueError(
                f"the prompt template needs field {exc.args[0]!r}, which this item lacks"
            ) from None
        return f"{text}{self.answer_prefix}"

    def load_docs(self, data_root: str | os.PathLike | None) -> list[Doc]:
        """Read the task's documents from ``data_root`` with its loader; ids must be unique."""
        root = Path(data_root).expanduser() if data_root is not None else Path.cwd()
        if not root.is_dir():
            raise FileNotFoundError(f"task {self.task!r}: data root {root} is not a directory")
        docs = resolve_loader(self.loader, self.source)(root, **self.dataset_kwargs)
        seen: dict[str, int] = {}
        for doc in docs:  # resumption and merging key on ids: a repeated id gets a suffix, not a drop
            count = seen.get(doc.id, 0)
            seen[doc.id] = count + 1
            if count:
                logger.warning(
                    "task %s: question id %r repeats; this one is %r", self.task, doc.id, f"{doc.id}#{count}"
                )
                doc.id = f"{doc.id}#{count}"
        logger.info("task %s: %d documents from %s", self.task, len(docs), root)
        return docs


def resolve_loader(name: str, source: str | None = None) -> Callable[..., list[Doc]]:
    """A built-in loader by name, ``package.module:function``, or ``file_stem:function`` beside the YAML."""
    from eval.tasks.loaders import LOADERS

    if name in LOADERS:
        return LOADERS[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(
            f"unknown loader {name!r}; built-in loaders: {sorted(LOADERS)}, or 'module:function'"
        )
    local = Path(source).parent / f"{module_name}.py" if source else None
    if local is not None and local.is_file():
        key = f"_eval_task_{hashlib.sha1(str(local).encode()).hexdigest()[:12]}_{module_name}"
        module = sys.modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(key, local)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, attr)


def task_files(include_paths: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Built-in task files, then those of each include path, in that order."""
    files = sorted(TASK_DIR.glob("*.yaml"))
    for directory in include_paths:
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"--include-path {directory} is not a directory")
        files.extend(sorted(directory.glob("*.yaml")))
    return files


def list_tasks(include_paths: Iterable[str | os.PathLike] = ()) -> dict[str, TaskConfig]:
    tasks: dict[str, TaskConfig] = {}
    for path in task_files(include_paths):
        config = TaskConfig.from_yaml(path)
        if config.task in tasks:
            logger.info("task %s from %s replaces %s", config.task, path, tasks[config.task].source)
        tasks[config.task] = config
    return tasks


def get_task(name: str, include_paths: Sequence[str | os.PathLike] = ()) -> TaskConfig:
    tasks = list_tasks(include_paths)
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(sorted(tasks))}")
    return tasks[name]


__all__ = ["Doc", "TaskConfig", "get_task", "list_tasks", "resolve_loader", "task_files"]
