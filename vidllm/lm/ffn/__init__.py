"""FFN variants of the VidLM decoder, one module per variant, chosen per layer by ``config.ffn_type``.

``FFN_CLASSES[name]`` is the class; every class is built as ``cls(config, layer_idx)`` and called as
``delta, aux_loss, routing = mlp(hidden_states, norm, token_mask)`` (see ``common``).
"""

from __future__ import annotations

from torch import nn

from vidllm.lm.configuration_vidlm import FFN_TYPES
from vidllm.lm.ffn.common import FFNRouting, switch_load_balancing_loss
from vidllm.lm.ffn.dense import DenseFFN
from vidllm.lm.ffn.parameternet import ParameterNetDownProj, ParameterNetFFN
from vidllm.lm.ffn.versatile import VersatileFFN, set_gumbel_temperature

FFN_CLASSES: dict[str, type[nn.Module]] = {
    "dense": DenseFFN,
    "versatile": VersatileFFN,
    "parameternet": ParameterNetFFN,
}
if tuple(FFN_CLASSES) != FFN_TYPES:  # the config validates names against FFN_TYPES
    raise RuntimeError(f"FFN_CLASSES {tuple(FFN_CLASSES)} and FFN_TYPES {FFN_TYPES} disagree")

__all__ = [
    "FFN_CLASSES",
    "DenseFFN",
    "FFNRouting",
    "ParameterNetDownProj",
    "ParameterNetFFN",
    "VersatileFFN",
    "set_gumbel_temperature",
    "switch_load_balancing_loss",
]
