"""Training helpers: the VersatileFFN Gumbel temperature schedule as a transformers ``Trainer`` callback.

The official VersatileFFN code anneals the depth router's Gumbel-softmax temperature once per
optimiser step, ``tau = max(0.1, 5.0 * 0.99984^step)`` (see ``VidLMConfig.gumbel_temperature_at``).
"""

from __future__ import annotations

from transformers import TrainerCallback

from vidllm.lm.ffn import set_gumbel_temperature


class GumbelTemperatureCallback(TrainerCallback):
    """Set every VersatileFFN's temperature from ``state.global_step`` before each training step."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_gumbel_temperature(model, state.global_step)
        return control


__all__ = ["GumbelTemperatureCallback"]
