"""Training helpers for the language model.

- ``GumbelTemperatureCallback``: the VersatileFFN Gumbel temperature schedule as a transformers
  ``Trainer`` callback. The official VersatileFFN code anneals the depth router's Gumbel-softmax
  temperature once per optimiser step, ``tau = max(0.1, 5.0 * 0.99984^step)`` (see
  ``VidLMConfig.gumbel_temperature_at``).
- ``float32_attention``: under bfloat16 autocast, compute the attention itself in float32. On CPUs
  with AMX the bfloat16 SDPA backward is slower than the float32 one
  (``benchmarks/train_step.py``: a default video-stage step 0.91-0.96x as long).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import TrainerCallback

from vidllm.lm.ffn import set_gumbel_temperature

FLOAT32_ATTENTION = "sdpa_fp32"


class GumbelTemperatureCallback(TrainerCallback):
    """Set every VersatileFFN's temperature from ``state.global_step`` before each training step."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_gumbel_temperature(model, state.global_step)
        return control


def _sdpa_float32(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(query.dtype), weights


def register_float32_attention() -> str:
    """Register transformers' SDPA attention run with autocast off on float32 inputs; its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(FLOAT32_ATTENTION, _sdpa_float32)
    return FLOAT32_ATTENTION


@contextlib.contextmanager
def float32_attention(lm: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run ``lm``'s attention in float32 inside the block; its attention implementation is restored
    after (so a model saved after the block names its usual one)."""
    if not enabled:
        yield
        return
    config = lm.config
    previous = config._attn_implementation
    config._attn_implementation = register_float32_attention()
    try:
        yield
    finally:
        config._attn_implementation = previous


__all__ = [
    "FLOAT32_ATTENTION",
    "GumbelTemperatureCallback",
    "float32_attention",
    "register_float32_attention",
]
