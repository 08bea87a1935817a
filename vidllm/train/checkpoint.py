"""Resumable training state: model, optimiser, scheduler, RNG and data position, safely on disk.

A checkpoint is a directory ``step_000123/`` written under a temporary name and renamed into
place, so a run killed while writing leaves the previous checkpoint intact. Tensors go to
safetensors and everything else to JSON; nothing is ever unpickled (the project reads pickles only
with ``torch.load(weights_only=True)``, and a checkpoint needs no pickle at all):

- ``model.safetensors``: the trained module's state dict;
- ``optimizer.safetensors`` + ``optimizer.json``: the optimiser's per-parameter tensors
  (``state.<index>.<name>``) and its parameter groups and scalar state;
- ``state.json``: step (which is also the data position: batches are a pure function of the
  step), scheduler state, elapsed training time, the stage's own extra state;
- ``rng_<rank>.safetensors`` + ``rng_<rank>.json``: the torch, numpy and Python generators of
  each process;
- ``average.safetensors`` (stages that keep one): the moving average of the trained parameters.

Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
AVERAGE_FILE = "average.safetensors"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


# ----------------------------------------------------------------------------------------------
# optimiser state <-> safetensors + JSON
# ----------------------------------------------------------------------------------------------


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (AdamW's betas) into lists; only "params" is a list in torch's layout
    groups = [{k: v if k == "params" or not isinstance(v, list) else tuple(v) for k, v in g.items()}
              for g in meta["param_groups"]]  # fmt: skip
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The torch (CPU and CUDA), numpy and Python generators' states as tensors and JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


# ----------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: detached, contiguous, CPU, shared tensors copied."""
    out, seen = {}, set()
    for key, value in module.state_dict().items():
        tensor = value.detach().cpu()
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        out[key] = tensor.clone() if ptr in seen else tensor.contiguous()
        seen.add(ptr)
    return out


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    rank: int = 0,
    is_main: bool = True,
    keep: int = 2,
    barrier=None,
    average: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` (every process its RNG, the main process the rest);
    ``average``: a stage's moving average of its trained parameters, by name."""
    from safetensors.torch import save_file

    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".tmp_step_{step:06d}"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if barrier is not None:
        barrier()
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, str(tmp / f"rng_{rank}.safetensors"))
    (tmp / f"rng_{rank}.json").write_text(json.dumps(rng_meta))
    if is_main:
        save_file(module_state(module), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        opt_tensors, opt_meta = _split_optimizer_state(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        if average is not None:
            save_file({k: v.contiguous() for k, v in average.items()}, str(tmp / AVERAGE_FILE))
        full_state = {
            "step": step,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            **state,
        }
        (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
    if barrier is not None:
        barrier()
    if is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint %s written", final)
    if barrier is not None:
        barrier()
    return final


def checkpoint_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The trained module's state dict in checkpoint ``path`` (its ``model.safetensors``), for
    reading a checkpoint's weights without restoring the rest of its training state."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def checkpoint_average(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The moving average of the trained parameters in checkpoint ``path``; None if it has none."""
    from safetensors.torch import load_file

    file = Path(path) / AVERAGE_FILE
    return load_file(str(file)) if file.is_file() else None


def load_checkpoint(
    path: str | os.PathLike,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote; returns ``state.json``'s contents."""
    from safetensors.torch import load_file

    path = Path(path)
    result = module.load_state_dict(checkpoint_weights(path), strict=True)
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict raises first
        raise RuntimeError(f"{path} does not match the model: {result}")
    if optimizer is not None:
        meta = json.loads((path / "optimizer.json").read_text())
        optimizer.load_state_dict(_join_optimizer_state(load_file(str(path / "optimizer.safetensors")), meta))
    state = json.loads((path / "state.json").read_text())
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng_file = path / f"rng_{rank}.safetensors"
    if rng_file.is_file():
        set_rng_state(load_file(str(rng_file)), json.loads((path / f"rng_{rank}.json").read_text()))
    else:
        logger.warning("%s has no RNG state for process %d; its generators start fresh", path, rank)
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state


__all__ = [
    "checkpoint_average",
    "checkpoint_weights",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "module_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
