"""Pieces the FFN variants share: the routing record, the Switch load-balancing loss, grouped
expert dispatch, and slice-wise linear layers that honour unmerged PEFT LoRA adapters.

Every FFN module has the same call contract, so the decoder layer does not know which it holds::

    delta, aux_loss, routing = mlp(hidden_states, norm, token_mask)
    hidden_states = hidden_states + delta

``hidden_states`` is the residual stream *before* the FFN norm and ``norm`` the layer's
``post_attention_layernorm``: the dense FFN simply applies it once, but VersatileFFN's depth path
re-normalises before every loop and its routers read the un-normalised stream, as in the official
code. ``aux_loss`` is already weighted (``None`` when the variant has none); ``routing`` records the
per-token decisions for inspection and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FFNRouting:
    """Per-token routing decisions of one FFN layer in one forward pass.

    Shapes are ``(batch, seq, ...)``; a field is ``None`` when the layer's variant has no such decision.

    Attributes:
        width_experts: VersatileFFN, indices of the virtual experts (slices) each token's width path
            used, ``(B, T, k)``; all slices under forced dense routing.
        width_weights: VersatileFFN, their weights (softmax over the top-k router logits), ``(B, T, k)``.
        width_logits: VersatileFFN, width-router logits, ``(B, T, num_width_experts)``.
        loop_counts: VersatileFFN, times the depth path applied the FFN to each token (1..max_loops).
        depth_logits: VersatileFFN, depth-router logits, ``(B, T, max_loops)``.
        fusion_weight: VersatileFFN, weight of the width path, ``(max_loops - E[loops]) / max_loops``.
        expert_index: ParameterNet, down-projection expert(s) of each token, ``(B, T, k)``.
        expert_weight: ParameterNet, the gate value applied to them, ``(B, T, k)``.
        router_logits: ParameterNet, router logits, ``(B, T, num_experts)``.
    """

    width_experts: torch.Tensor | None = None
    width_weights: torch.Tensor | None = None
    width_logits: torch.Tensor | None = None
    loop_counts: torch.Tensor | None = None
    depth_logits: torch.Tensor | None = None
    fusion_weight: torch.Tensor | None = None
    expert_index: torch.Tensor | None = None
    expert_weight: torch.Tensor | None = None
    router_logits: torch.Tensor | None = None


def switch_load_balancing_loss(
    router_probs: torch.Tensor, selected: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch Transformer's auxiliary loss (Fedus et al. 2021, eq. 4-6): ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of (token, slot) assignments that went to expert ``e`` (not
    differentiable) and ``P_e`` the mean router probability of ``e`` (differentiable); the loss is 1
    for perfectly balanced routing and grows as routing collapses.

    Args:
        router_probs: ``(N, E)`` softmax of the router logits.
        selected: ``(N, k)`` chosen expert indices.
        token_mask: ``(N,)`` bool, tokens that count (padding excluded); ``None`` counts all.
    """
    num_experts = router_probs.shape[-1]
    if token_mask is not None:
        router_probs = router_probs[token_mask]
        selected = selected[token_mask]
    if router_probs.shape[0] == 0:
        return router_probs.new_zeros(())
    counts = torch.bincount(selected.reshape(-1), minlength=num_experts).to(router_probs.dtype)
    fraction = counts / selected.numel()
    mean_prob = router_probs.mean(dim=0)
    return num_experts * torch.sum(fraction * mean_prob)


def dispatch_by_expert(
    inputs: torch.Tensor,
    expert_index: torch.Tensor,
    weights: torch.Tensor,
    num_experts: int,
    out_features: int,
    expert_fn: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``out[n] = sum_j weights[n, j] * expert_fn(expert_index[n, j], inputs[n])``, computing each
    expert once on the block of tokens routed to it.

    The ``(token, slot)`` assignments are sorted by expert (one sort and one host sync for the
    counts), so every expert runs one matmul on a contiguous block and only chosen experts run.

    Args:
        inputs: ``(N, D)`` token features.
        expert_index: ``(N, k)`` experts of each token's k slots.
        weights: ``(N, k)`` gate values.
        expert_fn: ``(expert, block (M, D)) -> (M, out_features)``.
    """
    tokens, top_k = expert_index.shape
    out = inputs.new_zeros(tokens, out_features)
    if tokens == 0:
        return out
    order = torch.argsort(expert_index.reshape(-1), stable=True)
    counts = torch.bincount(expert_index.reshape(-1), minlength=num_experts).tolist()
    token_of = order // top_k
    grouped = inputs[token_of]
    outputs, start = [], 0
    for expert, count in enumerate(counts):
        if count:
            outputs.append(expert_fn(expert, grouped[start : start + count]))
            start += count
    weighted = torch.cat(outputs) * weights.reshape(-1)[order].unsqueeze(-1).to(inputs.dtype)
    return out.index_add(0, token_of, weighted)


def _lora_parts(layer: nn.Module) -> tuple[nn.Linear, list[tuple[nn.Module, nn.Module, nn.Module, float]]]:
    """The base ``nn.Linear`` of ``layer`` and the LoRA adapters PEFT would apply on top of it.

    A plain ``nn.Linear`` has none. A PEFT ``lora.Linear`` that is merged or has adapters disabled
    has none either (its base weight already is, or is meant to be, the effective weight).
    """
    if not hasattr(layer, "lora_A"):
        return layer, []
    base = layer.get_base_layer()
    if layer.disable_adapters or layer.merged:
        return base, []
    adapters = []
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in getattr(layer, "lora_variant", {}) or layer.lora_B[name].bias is not None:
            raise NotImplementedError(
                "VersatileFFN's slice-wise width path supports plain LoRA adapters only "
                f"(adapter {name!r} uses a LoRA variant or lora_bias)"
            )
        adapters.append(
            (layer.lora_A[name], layer.lora_B[name], layer.lora_dropout[name], layer.scaling[name])
        )
    return base, adapters


def linear_out_slice(layer: nn.Module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``layer(x)[..., start:stop]``, computing only those output features.

    With LoRA, ``x @ (W + s B A)[rows].T = x @ W[rows].T + s (x @ A.T) @ B[rows].T``, so an unmerged
    adapter costs its rank, not a merged copy of the weight.
    """
    base, adapters = _lora_parts(layer)
    bias = None if base.bias is None else base.bias[start:stop]
    out = F.linear(x, base.weight[start:stop], bias)
    for lora_a, lora_b, dropout, scaling in adapters:
        low_rank = lora_a(dropout(x.to(lora_a.weight.dtype)))
        out = out + F.linear(low_rank, lora_b.weight[start:stop]).to(out.dtype) * scaling
    return out


def linear_in_slice(layer: nn.Module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``layer`` applied to an input that is zero outside features ``[start, stop)``; ``x`` holds only
    those features. The bias is left out: slices are summed, so the caller adds it once."""
    base, adapters = _lora_parts(layer)
    out = F.linear(x, base.weight[:, start:stop])
    for lora_a, lora_b, dropout, scaling in adapters:
        low_rank = F.linear(dropout(x.to(lora_a.weight.dtype)), lora_a.weight[:, start:stop])
        out = out + lora_b(low_rank).to(out.dtype) * scaling
    return out


__all__ = [
    "FFNRouting",
    "dispatch_by_expert",
    "linear_in_slice",
    "linear_out_slice",
    "switch_load_balancing_loss",
]
