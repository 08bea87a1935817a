r"""VersatileFFN: one shared SwiGLU FFN reused in width (virtual experts) and in depth (recursion).

Paper: Ying Nie, Kai Han, Hongguang Li, Hang Zhou, Tianyu Guo, Enhua Wu, Xinghao Chen, Yunhe Wang,
"VersatileFFN: Achieving Parameter Efficiency in LLMs via Adaptive Wide-and-Deep Reuse",
arXiv:2512.14531 (2025). Official code: huawei-noah/noah-research, ``VersatileFFN/olmo/model.py``
(``OLMoVersatileBlock``); the equations below follow that code where the text leaves a detail open.

Notation: ``x`` the residual stream entering the FFN (after attention), ``norm`` the layer's FFN
RMSNorm, ``FFN(u) = W_down (act(W_gate u) * W_up u)`` with hidden width ``I``, ``E`` virtual experts,
``L = max_loops``.

Width path (virtual MoE, no new weights). Expert ``e`` owns the hidden units
``S_e = [e I/E, (e+1) I/E)``: rows ``S_e`` of ``W_gate`` and ``W_up`` and columns ``S_e`` of ``W_down``::

    FFN_e(u) = W_down[:, S_e] (act(W_gate[S_e] u) * W_up[S_e] u)        (sum_e FFN_e = FFN)
    g = W_width x;  T = top-k(g);  w_j = softmax_{j in T}(g_j)
    width(x) = x + sum_{j in T} w_j FFN_j(norm(x))

Depth path (recursion). ``h_0 = x``, ``h_l = h_{l-1} + FFN(norm(h_{l-1}))``; a router picks the loop
count from ``d = W_depth x`` (logits over 1..L)::

    training:  p = GumbelSoftmax(d, tau, hard=True)   (one-hot forward, soft gradient: straight-through)
    inference: p = one_hot(argmax d)
    depth(x) = sum_l p_l h_l

Fusion (difficulty-aware: more loops, less width)::

    E[loops] = sum_l l p_l        (fusion_expectation="soft": p = softmax(d) instead)
    m = (L - E[loops]) / L
    y = m width(x) + (1 - m) depth(x)

Both routers read the un-normalised ``x`` and the temperature anneals ``tau = max(0.1, 5 * 0.99984^step)``
(the official schedule; see ``VidLMConfig.gumbel_temperature_at``). The layer returns
``y - x = m sum_j w_j FFN_j + (1 - m)(h_n - x)`` so the decoder adds the residual once.

Inference cost, per token (what ``FlopCounterMode`` sees, FLOPs = 2 x MACs)::

    routers 2 H (E + L)  +  [m > 0] k (6 H I / E)  +  loops (6 H I)

* Width: only the k selected slices are computed. Assignments are grouped by expert (one sort) and
  each expert runs one matmul on its tokens with the slice views of the shared weights (measured
  against a per-token gather of slice weights in ``benchmarks/lm_ffn.py``). With
  ``fusion_expectation="sample"`` a token that takes all L loops has ``m = 0``: its width path is
  skipped.
* Depth: tokens are sorted by loop count once, so the tokens still looping after ``l`` loops are a
  prefix of that order; loop ``l + 1`` runs the FFN on that prefix only. A token that stops early
  costs nothing more.

Training computes, as the official code does, all L loops and the width path for every token: the
straight-through estimator's gradient to the depth router needs every ``h_l``.

Forced dense routing (``config.force_dense_routing``): all E slices with weight 1, one loop and
``m = 1``, so ``y = x + FFN(norm(x))`` exactly: an upcycled dense model reproduces its source.

Weights (for a vLLM port): ``mlp.gate_proj.weight (I, H)``, ``mlp.up_proj.weight (I, H)``,
``mlp.down_proj.weight (H, I)`` (Llama's, slices are views), ``mlp.width_router.weight (E, H)``,
``mlp.depth_router.weight (L, H)``; no biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidllm.lm.configuration_vidlm import VidLMConfig
from vidllm.lm.ffn.common import (
    FFNRouting,
    dispatch_by_expert,
    linear_in_slice,
    linear_out_slice,
    switch_load_balancing_loss,
)
from vidllm.lm.ffn.dense import DenseFFN


class VersatileFFN(DenseFFN):
    """A SwiGLU FFN with a width router over ``num_width_experts`` slices and a depth router over
    ``1..max_loops`` recursions (see the module docstring for the equations)."""

    def __init__(self, config: VidLMConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.num_width_experts = config.num_width_experts
        self.width_top_k = config.width_top_k
        self.max_loops = config.max_loops
        self.slice_size = config.intermediate_size // config.num_width_experts
        self.width_router = nn.Linear(config.hidden_size, config.num_width_experts, bias=False)
        self.depth_router = nn.Linear(config.hidden_size, config.max_loops, bias=False)
        # Set by VidLMForCausalLM.set_training_step; read only in training.
        self.gumbel_temperature = config.gumbel_temperature_start

    def forward(
        self, hidden_states: torch.Tensor, norm: nn.Module, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, FFNRouting]:
        batch, seq, hidden = hidden_states.shape
        x = hidden_states.reshape(-1, hidden)
        if self.config.force_dense_routing:
            delta, routing = self._forced_dense(x, norm)
        else:
            delta, routing = self._routed(x, norm)
        aux_loss = None
        if self.config.versatile_aux_loss_weight > 0 and routing.width_logits is not None:
            probs = torch.softmax(routing.width_logits.float(), dim=-1)
            mask = None if token_mask is None else token_mask.reshape(-1)
            aux_loss = self.config.versatile_aux_loss_weight * switch_load_balancing_loss(
                probs, routing.width_experts, mask
            )
        shaped = {
            name: None if value is None else value.reshape(batch, seq, *value.shape[1:])
            for name, value in vars(routing).items()
        }
        return delta.reshape(batch, seq, hidden), aux_loss, FFNRouting(**shaped)

    def _routed(self, x: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, FFNRouting]:
        loops = self.max_loops
        width_logits = self.width_router(x)
        depth_logits = self.depth_router(x)
        top_logits, top_index = torch.topk(width_logits, self.width_top_k, dim=-1)
        top_weights = torch.softmax(top_logits.float(), dim=-1).to(x.dtype)
        steps = torch.arange(1, loops + 1, device=x.device, dtype=torch.float32)

        if self.training:
            choice = F.gumbel_softmax(depth_logits.float(), tau=self.gumbel_temperature, hard=True)
            loop_counts = choice.argmax(dim=-1) + 1
        else:
            choice = None
            loop_counts = depth_logits.argmax(dim=-1) + 1
        if self.config.fusion_expectation == "soft":
            expected_loops = (torch.softmax(depth_logits.float(), dim=-1) * steps).sum(-1)
        elif choice is not None:
            expected_loops = (choice * steps).sum(-1)
        else:
            expected_loops = loop_counts.float()
        fusion = (loops - expected_loops) / loops

        normed = norm(x)
        if self.training:
            width_delta = self._width(normed, top_index, top_weights)
            depth_delta = self._depth_all_loops(x, normed, norm, choice.to(x.dtype))
        else:
            width_delta = self._width_where(fusion > 0, normed, top_index, top_weights)
            depth_delta = self._depth_until(x, normed, norm, loop_counts)
        m = fusion.to(x.dtype).unsqueeze(-1)
        delta = m * width_delta + (1 - m) * depth_delta
        routing = FFNRouting(
            width_experts=top_index,
            width_weights=top_weights,
            width_logits=width_logits,
            loop_counts=loop_counts,
            depth_logits=depth_logits,
            fusion_weight=fusion,
        )
        return delta, routing

    def _forced_dense(self, x: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, FFNRouting]:
        tokens = x.shape[0]
        experts = torch.arange(self.num_width_experts, device=x.device).expand(tokens, -1)
        weights = x.new_ones(tokens, self.num_width_experts)
        delta = self._width(norm(x), experts, weights)
        routing = FFNRouting(
            width_experts=experts,
            width_weights=weights,
            loop_counts=torch.ones(tokens, dtype=torch.long, device=x.device),
            fusion_weight=torch.ones(tokens, dtype=torch.float32, device=x.device),
        )
        return delta, routing

    def _width(self, normed: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_j w_j FFN_j(normed)`` over each token's selected slices, one matmul per slice."""

        def virtual_expert(expert: int, block: torch.Tensor) -> torch.Tensor:
            lo, hi = expert * self.slice_size, (expert + 1) * self.slice_size
            gate = linear_out_slice(self.gate_proj, block, lo, hi)
            up = linear_out_slice(self.up_proj, block, lo, hi)
            return linear_in_slice(self.down_proj, self.act_fn(gate) * up, lo, hi)

        return dispatch_by_expert(
            normed, expert_index, weights, self.num_width_experts, self.hidden_size, virtual_expert
        )

    def _width_where(
        self, active: torch.Tensor, normed: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """The width path for the tokens whose fusion weight is non-zero; zeros for the others."""
        rows = active.nonzero().squeeze(-1)
        if rows.numel() == active.numel():
            return self._width(normed, expert_index, weights)
        out = normed.new_zeros(normed.shape[0], self.hidden_size)
        if rows.numel() == 0:
            return out
        return out.index_copy(0, rows, self._width(normed[rows], expert_index[rows], weights[rows]))

    def _depth_all_loops(
        self, x: torch.Tensor, normed: torch.Tensor, norm: nn.Module, choice: torch.Tensor
    ) -> torch.Tensor:
        """Training: every loop for every token, mixed by the straight-through one-hot ``choice``."""
        delta = self.ffn(normed)
        per_loop = [delta]
        for _ in range(1, self.max_loops):
            delta = delta + self.ffn(norm(x + delta))
            per_loop.append(delta)
        return torch.einsum("nl,nlh->nh", choice, torch.stack(per_loop, dim=1))

    def _depth_until(
        self, x: torch.Tensor, normed: torch.Tensor, norm: nn.Module, loop_counts: torch.Tensor
    ) -> torch.Tensor:
        """Inference: each token looped exactly ``loop_counts`` times, finished tokens left alone."""
        delta = self.ffn(normed)  # every token makes at least one loop
        # tokens still looping before loop l (l = 2..L): one host sync for all loops
        histogram = torch.bincount(loop_counts, minlength=self.max_loops + 1)
        remaining = histogram.flip(0).cumsum(0).flip(0)[2:].tolist()
        if not remaining or remaining[0] == 0:
            return delta
        order = torch.argsort(loop_counts, descending=True, stable=True)
        x_sorted, delta_sorted = x[order], delta[order]
        for still_looping in remaining:
            if still_looping == 0:
                break
            head = delta_sorted[:still_looping]
            head = head + self.ffn(norm(x_sorted[:still_looping] + head))
            delta_sorted = torch.cat([head, delta_sorted[still_looping:]])
        return torch.empty_like(delta_sorted).index_copy(0, order, delta_sorted)


def set_gumbel_temperature(model: nn.Module, step: int) -> float | None:
    """Anneal every ``VersatileFFN`` inside ``model`` (plain, PEFT-wrapped, ...) to training ``step``.

    Returns the temperature set, or ``None`` when ``model`` holds no VersatileFFN.
    """
    temperature = None
    for module in model.modules():
        if isinstance(module, VersatileFFN):
            temperature = module.config.gumbel_temperature_at(step)
            module.gumbel_temperature = temperature
    return temperature


__all__ = ["VersatileFFN", "set_gumbel_temperature"]
