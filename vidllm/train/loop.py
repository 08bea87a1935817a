"""One training stage as a resumable loop: accelerate, checkpoints, a CSV log, a progress bar.

Each stage of :mod:`vidllm.train.trainer` (the dual encoder, the video LLM, the LoRA stage) is a
:class:`Stage`: a module, its parameter groups, ``batch_fn(step)`` and ``loss_fn(module, batch,
step)``. :func:`run_stage` trains it with an ``accelerate.Accelerator`` (one process, or several
under ``accelerate launch``: the module is wrapped for distributed data parallel and each process
draws its own slice of every batch), and makes it stoppable at any time:

- every ``checkpoint_every`` steps, when the time limit is reached, and on SIGTERM / SIGINT, the
  full training state is written (:mod:`vidllm.train.checkpoint`);
- started again on the same directory, it resumes from the newest checkpoint: batches are a pure
  function of the step and every generator is restored, so the resumed run computes what the
  uninterrupted run would have, bit for bit on the same machine and thread count;
- ``log.csv`` gets one row per ``log_every`` steps (rows past a resumed checkpoint are dropped
  first, so a killed run leaves no duplicate steps); :func:`plot_loss_curves` draws them;
- with ``Stage.ema_decay``, a moving average of the trained parameters is kept beside them (and in
  every checkpoint), and the stage ends with the module holding the average (:class:`WeightAverage`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidllm.train.checkpoint import checkpoint_average, latest_checkpoint, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

DONE_FILE = "done.json"
LOG_FILE = "log.csv"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class Stage:
    """What :func:`run_stage` trains.

    Attributes:
        name: directory name under the run's output directory.
        module: the trained module (its ``forward`` is not used: ``loss_fn`` drives it).
        param_groups: optimiser parameter groups (``params`` plus ``lr`` / ``weight_decay``).
        steps: optimiser steps in the stage.
        batch_fn: ``(step, rank, world_size) -> batch``, a pure function of its arguments.
        loss_fn: ``(module, batch, step) -> (loss, metrics)``; ``module`` is the prepared
            (possibly distributed) module.
        warmup: linear warm-up steps; the learning rate then follows a cosine to
            ``min_lr_ratio`` of its peak.
        on_step: called with the unwrapped module before each step (e.g. the Gumbel schedule).
        ema_decay: keep an exponential moving average of the trained parameters with this decay
            per step (:class:`WeightAverage`) and end the stage on it; 0: none.
    """

    name: str
    module: nn.Module
    param_groups: list[dict[str, Any]]
    steps: int
    batch_fn: Callable[[int, int, int], Any]
    loss_fn: Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict[str, float]]]
    warmup: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    metric_names: tuple[str, ...] = ()
    on_step: Callable[[nn.Module, int], None] | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)
    ema_decay: float = 0.0


class WeightAverage:
    """An exponential moving average of trained parameters (Polyak averaging; timm's ``ModelEmaV3``
    keeps one the same way). After the ``n``-th optimiser step each average moves towards its
    parameter by ``1 - d`` with ``d = min(decay, (1 + n) / (10 + n))``: the warm-up lets the early
    weights, far from where training ends, be forgotten within a few steps.

    Args:
        params: the trained parameters by name (the names the checkpoint stores them under).
        decay: the decay per step; its horizon is about ``1 / (1 - decay)`` steps.
        saved: a checkpoint's average (:func:`vidllm.train.checkpoint.checkpoint_average`) to
            resume from; None starts from the parameters as they are.
    """

    def __init__(
        self, params: dict[str, nn.Parameter], decay: float, saved: dict[str, torch.Tensor] | None = None
    ):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the moving average's decay must be in (0, 1), got {decay}")
        if saved is not None and saved.keys() != params.keys():
            raise ValueError(
                f"the checkpoint's moving average holds other parameters than the stage trains: "
                f"{sorted(saved.keys() ^ params.keys())[:5]}"
            )
        self.params, self.decay = params, decay
        self.values = {
            name: (p.detach() if saved is None else saved[name].to(p.device, p.dtype)).clone()
            for name, p in params.items()
        }

    @classmethod
    def of(cls, module: nn.Module, params, decay: float, saved: dict[str, torch.Tensor] | None = None):
        """The average of ``params`` (parameters of ``module``), named as ``module`` names them."""
        names = {id(p): name for name, p in module.named_parameters()}
        return cls({names[id(p)]: p for p in params}, decay, saved)

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """Move the average after the ``updates``-th optimiser step."""
        decay = min(self.decay, (1 + updates) / (10 + updates))
        torch._foreach_lerp_(
            list(self.values.values()), [p.detach() for p in self.params.values()], 1.0 - decay
        )

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for name, p in self.params.items():
            p.copy_(self.values[name])


@dataclass
class StageResult:
    status: str  # "done" or "stopped"
    step: int
    checkpoint: Path | None
    elapsed: float  # seconds of training, over every run of the stage


def decay_groups(named_parameters, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with weight decay on matrices and kernels, none on biases, norms,
    embeddings and position tables; parameters that do not train are left out."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        plain = p.ndim >= 2 and "embed" not in name and "position" not in name
        (decay if plain else no_decay).append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then a cosine from 1 to ``min_ratio`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _StopFlag:
    """Set by SIGTERM / SIGINT (in the main thread) or a deadline: stop after this step."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.reason is not None and signum == signal.SIGINT:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        logger.warning("%s received: stopping after this step (a checkpoint is written first)", self.reason)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (a run killed after its last checkpoint logged them)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0], *(r for r in rows[1:] if r and int(r[0]) <= step)]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


def run_stage(
    stage: Stage,
    output_dir: str | Path,
    *,
    accelerator=None,
    checkpoint_every: int = 100,
    log_every: int = 10,
    keep_checkpoints: int = 2,
    deadline: float | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    bf16: bool = False,
) -> StageResult:
    """Train ``stage`` to ``stage.steps`` (or until ``deadline`` / ``stop_at``), resuming if possible.

    Args:
        output_dir: the stage's directory (checkpoints, log, done marker).
        accelerator: an ``accelerate.Accelerator`` (one is made if None).
        deadline: ``time.monotonic()`` value after which the stage checkpoints and stops.
        stop_at: stop (with a checkpoint) once this step is reached; for tests and staged runs.
        bf16: autocast to bfloat16 (CPU with AVX512-BF16, or GPU), weights and optimiser in float32.
    """
    from accelerate import Accelerator

    output_dir = Path(output_dir)
    ckpt_root = output_dir / CHECKPOINT_DIR
    done_file = output_dir / DONE_FILE
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    rank, world_size, is_main = (
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.is_main_process,
    )
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    module = stage.module
    optimizer = torch.optim.AdamW(stage.param_groups, betas=(0.9, 0.98), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, stage.steps, stage.warmup, stage.min_lr_ratio)
    )
    start_step, elapsed, window = 0, 0.0, []  # window: losses since the last log row
    latest = latest_checkpoint(ckpt_root)
    saved_average = None
    if latest is not None:
        state = load_checkpoint(latest, module=module, optimizer=optimizer, scheduler=scheduler, rank=rank)
        start_step, elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        window = list(state.get("log_window", []))
        stage.extra_state.update(state.get("extra", {}))
        saved_average = checkpoint_average(latest)
    if done_file.is_file() and start_step >= stage.steps:
        logger.info("stage %s already finished (step %d)", stage.name, start_step)
        return StageResult("done", start_step, latest, elapsed)
    if is_main:
        _truncate_log(output_dir / LOG_FILE, start_step)

    prepared, optimizer = accelerator.prepare(module, optimizer)
    trainable = [p for g in stage.param_groups for p in g["params"] if p.requires_grad]
    average = None
    if stage.ema_decay > 0:
        if start_step > 0 and saved_average is None:
            logger.warning(
                "%s holds no moving average: it starts from the weights at step %d", latest, start_step
            )
        average = WeightAverage.of(module, trainable, stage.ema_decay, saved_average)
    columns = ["step", "loss", "lr", "elapsed_s", "steps_per_s", *stage.metric_names]
    log_path = output_dir / LOG_FILE
    if is_main and not log_path.is_file():
        with log_path.open("w", newline="") as f:
            csv.writer(f).writerow(columns)

    def checkpoint(step: int) -> Path:
        return save_checkpoint(
            ckpt_root,
            step,
            module=accelerator.unwrap_model(prepared),
            optimizer=optimizer,
            scheduler=scheduler,
            state={"elapsed": elapsed, "stage": stage.name, "extra": stage.extra_state, "log_window": window},
            rank=rank,
            is_main=is_main,
            keep=keep_checkpoints,
            barrier=accelerator.wait_for_everyone,
            average=None if average is None else average.values,
        )

    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=stage.steps, initial=start_step, desc=stage.name, unit="step", dynamic_ncols=True)
    prepared.train()
    step, last_path = start_step, latest
    window_start = time.perf_counter()
    status = "done"
    autocast = (
        torch.autocast(accelerator.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    with _StopFlag() as stop:
        while step < stage.steps:
            t0 = time.perf_counter()
            if stage.on_step is not None:
                stage.on_step(accelerator.unwrap_model(prepared), step)
            batch = stage.batch_fn(step, rank, world_size)
            with autocast:
                loss, metrics = stage.loss_fn(prepared, batch, step)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if stage.grad_clip > 0:
                accelerator.clip_grad_norm_(trainable, stage.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            if average is not None:
                average.update(step)
                if step == stage.steps:  # the stage's result (and final checkpoint) is the average
                    average.copy_to_params()
            elapsed += time.perf_counter() - t0
            if deadline is not None and time.monotonic() >= deadline and stop.reason is None:
                stop.reason = "time limit"
            # One collective for the loss and the stop request, and the stop decided from it alone:
            # every process stops after the same step even when the time limit or a signal reached
            # only one of them (a signal arriving after this counts at the next step).
            reason = stop.reason
            flag = torch.tensor(float(reason is not None), device=loss.device)
            local = torch.stack([loss.detach().float(), flag])
            total = accelerator.reduce(local, "sum")
            loss_value = float(total[0]) / world_size
            if float(total[1]) > 0:
                reason = reason or "another process stopped"
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"stage {stage.name}: the loss is {loss_value} at step {step}")
            window.append(loss_value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if step % log_every == 0 or step == stage.steps:
                rate = len(window) / max(1e-9, time.perf_counter() - window_start)
                if is_main:
                    row = [
                        step,
                        sum(window) / len(window),
                        scheduler.get_last_lr()[0],
                        round(elapsed, 2),
                        rate,
                    ]
                    row += [metrics.get(name, "") for name in stage.metric_names]
                    with log_path.open("a", newline="") as f:
                        csv.writer(f).writerow(row)
                window, window_start = [], time.perf_counter()
            if stop_at is not None and step >= stop_at and step < stage.steps:
                reason = reason or f"stop_at={stop_at}"
            if step % checkpoint_every == 0 or step == stage.steps or reason is not None:
                last_path = checkpoint(step)
            if reason is not None and step < stage.steps:
                status = "stopped"
                logger.warning("stage %s stopped at step %d (%s)", stage.name, step, reason)
                break
    if bar is not None:
        bar.close()
    if status == "done" and is_main:
        done_file.write_text(json.dumps({"step": step, "elapsed": elapsed}) + "\n")
    accelerator.wait_for_everyone()
    return StageResult(status, step, last_path, elapsed)


def _number(value: str | None) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def read_log(path: str | Path) -> dict[str, list]:
    """A stage's ``log.csv`` as columns: numbers as floats (empty cells NaN), text columns as text."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list] = {}
    for key in rows[0] if rows else []:
        values = [row[key] for row in rows]
        numbers = [_number(v) for v in values]
        text = any(v not in ("", None) and math.isnan(n) for v, n in zip(values, numbers))
        columns[key] = values if text else numbers
    return columns


def plot_loss_curves(logs: dict[str, str | Path], path: str | Path, title: str = "training loss") -> Path:
    """One panel per stage: the logged loss against the step (matplotlib, Agg backend)."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib ships with the test/eval extras
        raise ImportError("the loss curve needs matplotlib: pip install 'vidllm[eval]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = {name: read_log(p) for name, p in logs.items() if Path(p).is_file()}
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4.5 * max(1, len(stages)), 3.4), squeeze=False)
    for ax, (name, columns) in zip(axes[0], stages.items()):
        ax.plot(columns.get("step", []), columns.get("loss", []), linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "Stage",
    "StageResult",
    "WeightAverage",
    "decay_groups",
    "lr_factor",
    "plot_loss_curves",
    "read_log",
    "run_stage",
]
