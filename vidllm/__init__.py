"""vidllm: token-efficient video question answering.

This module stays light: it is imported at every interpreter start in an environment where
vidllm is installed (by the torchvision import hook, see ``vidllm._compat``), so the public names
are resolved lazily on first use.
"""

from __future__ import annotations

import importlib

from vidllm.__about__ import __version__

_LAZY = {
    "load": "vidllm.api",
    "list_named_models": "vidllm.api",
    "VideoLLM": "vidllm.model",
    "Answer": "vidllm.model",
    "ReducerConfig": "vidllm.reducer",
    "UniformConfig": "vidllm.reducer",
    "plan": "vidllm.reducer",
    "read_video": "vidllm.video",
    "Video": "vidllm.video",
    "VideoMeta": "vidllm.video",
    "VideoLimits": "vidllm.video",
    "VideoError": "vidllm.video",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vidllm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
