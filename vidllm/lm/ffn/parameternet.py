r"""ParameterNet FFN: the down projection as a top-1 mixture of experts (more parameters, ~same FLOPs).

Paper: Kai Han, Yunhe Wang, Jianyuan Guo, Enhua Wu, "ParameterNet: Parameters Are All You Need for
Large-scale Visual Pretraining of Mobile Networks", CVPR 2024 (arXiv:2306.14525). In vision the
extra parameters come from DynamicConv (experts mixed per sample); the paper's language variant,
"LLaMA-1B enhanced with ParameterNet", turns the dense MLP's down projection into a top-1 mixture
of 8 experts trained with a load-balancing auxiliary loss of weight 0.01 (REFERENCE.md).

With ``h = act(W_gate u) * W_up u`` (``u = norm(x)``, the usual SwiGLU hidden activation)::

    r = W_router h                      router on the down projection's own input, as DynamicConv
    p = softmax(r);  T = top-k(p)       routes on the input of the layer it makes dynamic
    y = sum_{e in T} p_e W_down[e] h    Switch-style: the gate value scales the expert output
    aux = E * sum_e f_e P_e             Switch Transformer eq. 4-6 (f: routed fraction, P: mean p)

The router's gradient comes through ``p_e`` in ``y`` and through ``aux``; the model adds
``aux_loss_weight * mean over layers of aux`` to the LM loss. Inference cost per token (FLOPs = 2 x
MACs): ``6 H I`` as the dense FFN plus ``2 I E`` for the router; parameters grow by ``(E - 1) H I``.

Forced dense routing (``config.force_dense_routing``): the top-1 expert gets weight 1, so an
upcycled model (every expert a copy of the dense ``down_proj``) reproduces its source exactly.

Weights (for a vLLM port): ``mlp.gate_proj.weight (I, H)``, ``mlp.up_proj.weight (I, H)`` as Llama;
``mlp.down_proj.weight (E, H, I)``, expert ``e``'s down projection at ``[e]`` in ``nn.Linear`` layout;
``mlp.router.weight (E, I)``; no biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from vidllm.lm.configuration_vidlm import VidLMConfig
from vidllm.lm.ffn.common import FFNRouting, dispatch_by_expert, switch_load_balancing_loss


class ParameterNetDownProj(nn.Module):
    """A bank of ``num_experts`` down projections, ``weight[e]`` shaped like ``nn.Linear(I, H).weight``.

    Tokens are grouped by expert and each expert runs one matmul on its block. ``weight`` is read
    once per call, so PEFT's ``target_parameters`` LoRA (a parametrization of ``weight``) applies.
    """

    def __init__(self, num_experts: int, in_features: int, out_features: int):
        super().__init__()
        self.num_experts = num_experts
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))

    def forward(
        self, hidden: torch.Tensor, expert_index: torch.Tensor, expert_weight: torch.Tensor
    ) -> torch.Tensor:
        """``hidden (N, I)``, ``expert_index``/``expert_weight (N, k)`` -> ``sum_j w_j W[e_j] h``, ``(N, H)``."""
        weight = self.weight  # read once: under a PEFT parametrization this is the adapted bank
        return dispatch_by_expert(
            hidden,
            expert_index,
            expert_weight,
            self.num_experts,
            self.out_features,
            lambda expert, block: F.linear(block, weight[expert]),
        )

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, in_features={self.in_features}, out_features={self.out_features}"


class ParameterNetFFN(nn.Module):
    """SwiGLU whose down projection is a routed mixture of ``num_parameternet_experts`` experts."""

    def __init__(self, config: VidLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.num_experts = config.num_parameternet_experts
        self.top_k = config.parameternet_top_k
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = ParameterNetDownProj(self.num_experts, config.intermediate_size, config.hidden_size)
        self.router = nn.Linear(config.intermediate_size, self.num_experts, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(
        self, hidden_states: torch.Tensor, norm: nn.Module, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, FFNRouting]:
        batch, seq, hidden = hidden_states.shape
        normed = norm(hidden_states).reshape(-1, hidden)
        inner = self.act_fn(self.gate_proj(normed)) * self.up_proj(normed)
        router_logits = self.router(inner)
        probs = torch.softmax(router_logits.float(), dim=-1)
        top_probs, top_index = torch.topk(probs, self.top_k, dim=-1)
        if self.config.force_dense_routing:
            expert_index, expert_weight = top_index[:, :1], torch.ones_like(top_probs[:, :1])
        else:
            expert_index, expert_weight = top_index, top_probs
        out = self.down_proj(inner, expert_index, expert_weight)

        aux_loss = None
        if self.config.aux_loss_weight > 0:
            mask = None if token_mask is None else token_mask.reshape(-1)
            aux_loss = self.config.aux_loss_weight * switch_load_balancing_loss(probs, top_index, mask)
        routing = FFNRouting(
            expert_index=expert_index.reshape(batch, seq, -1),
            expert_weight=expert_weight.reshape(batch, seq, -1),
            router_logits=router_logits.reshape(batch, seq, -1),
        )
        return out.reshape(batch, seq, hidden), aux_loss, routing


__all__ = ["ParameterNetDownProj", "ParameterNetFFN"]
