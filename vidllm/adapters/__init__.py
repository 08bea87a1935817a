"""Free Video-LLM token reduction on real transformers video-LLMs (LLaVA-NeXT-Video, LLaVA-OneVision, Qwen2-VL).

Each adapter wraps an unmodified hub model and its processor: it encodes the frames as the model
does, reduces the visual tokens (:mod:`vidllm.reducer`), and feeds them through ``inputs_embeds``.
transformers is imported only when an adapter is used.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "VideoReducerAdapter": "vidllm.adapters.base",
    "AdapterAnswer": "vidllm.adapters.base",
    "PreparedInputs": "vidllm.adapters.base",
    "LlavaVideoReducerAdapter": "vidllm.adapters.llava",
    "Qwen2VLReducerAdapter": "vidllm.adapters.qwen2_vl",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vidllm.adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
