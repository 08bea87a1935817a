"""Dense SwiGLU FFN, the Llama MLP (Shazeer 2020, "GLU Variants Improve Transformer"):
``FFN(x) = down_proj(act(gate_proj(x)) * up_proj(x))``.

Weights: ``mlp.gate_proj.weight (I, H)``, ``mlp.up_proj.weight (I, H)``, ``mlp.down_proj.weight (H, I)``,
exactly Llama's, so a dense VidLM layer loads a Llama/Qwen2 layer unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from vidllm.lm.configuration_vidlm import VidLMConfig
from vidllm.lm.ffn.common import FFNRouting


class DenseFFN(nn.Module):
    """The SwiGLU FFN; also the shared weights VersatileFFN reuses."""

    def __init__(self, config: VidLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The SwiGLU of already normalised input (through the modules, so PEFT adapters apply)."""
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    def forward(
        self, hidden_states: torch.Tensor, norm: nn.Module, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, FFNRouting | None]:
        return self.ffn(norm(hidden_states)), None, None
