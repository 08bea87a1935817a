r"""VidLM for vLLM: the Llama-style decoder with dense, VersatileFFN and ParameterNet FFN layers,
written with vLLM's own layers so it runs in vLLM's engine (paged KV cache, continuous batching,
tensor parallelism) and loads the transformers checkpoint of :mod:`vidllm.lm` unchanged.

Papers of the FFN variants (equations in ``vidllm/lm/ffn/versatile.py`` and ``parameternet.py``):

- VersatileFFN: Nie et al., "VersatileFFN: Achieving Parameter Efficiency in LLMs via Adaptive
  Wide-and-Deep Reuse", arXiv:2512.14531 (2025); official code huawei-noah/noah-research,
  ``VersatileFFN/olmo/model.py``. Width: top-k of E slices of the shared SwiGLU hidden dim;
  depth: the whole FFN applied 1..L times per token; fusion ``m = (L - E[loops]) / L``.
- ParameterNet: Han et al., "ParameterNet: Parameters Are All You Need ...", CVPR 2024: the down
  projection as a top-1 mixture of E experts routed on its own input.

Layout in vLLM (and how the checkpoint maps onto it):

- ``q/k/v_proj`` -> ``qkv_proj`` (``QKVParallelLinear``, shards ``"q"/"k"/"v"``), as vLLM's Llama.
- dense and ParameterNet: ``gate_proj``/``up_proj`` -> ``gate_up_proj`` (``MergedColumnParallelLinear``
  with shards ``[I, I]``), as vLLM's Llama.
- VersatileFFN: ``gate_up_proj`` is stored *slice-major*: ``MergedColumnParallelLinear`` with 2E
  shards ``[s, s] * E`` (``s = I / E``), shard ``2e`` = rows ``S_e`` of ``gate_proj`` and ``2e + 1``
  = rows ``S_e`` of ``up_proj``. Then the full FFN is still one matmul, and the width path's slice
  ``e`` is one contiguous block of rows ``[2e s, 2(e+1) s)`` (a view, no copy, no gather). Under
  tensor parallelism every rank holds its share of every slice; ``down_proj`` (``RowParallelLinear``)
  gets its input columns permuted at load time to the same rank-major, slice-major order.
- ParameterNet's expert bank ``mlp.down_proj.weight (E, H, I)`` stays one ``(E, H, I / tp)``
  parameter (split on ``I`` like a ``RowParallelLinear``); its router reads the same sharded input,
  so it is a ``RowParallelLinear(I, E)`` whose all-reduce yields the full logits on every rank.

Routed layers compute only what inference needs, as the transformers implementation does: the width
path runs the k chosen slices per token (tokens grouped by slice, one matmul per slice) and only for
tokens whose fusion weight is non-zero; the depth path sorts tokens by loop count once, so loop
``l + 1`` runs the FFN on a prefix of that order. Routing is data dependent (host syncs), so the
model runs eagerly: it carries no ``@support_torch_compile``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.utils import maybe_prefix
from vllm.model_executor.utils import set_weight_attrs
from vllm.sequence import IntermediateTensors

# Checkpoint name suffix -> (vLLM parameter suffix, shard id) for the attention projections.
_QKV_SHARDS = {".q_proj.": "q", ".k_proj.": "k", ".v_proj.": "v"}


def _maybe_all_reduce(x: torch.Tensor, tp_size: int) -> torch.Tensor:
    return tensor_model_parallel_all_reduce(x) if tp_size > 1 else x


def _require_silu(hidden_act: str) -> None:
    if hidden_act != "silu":
        raise ValueError(f"VidLM on vLLM supports hidden_act='silu' (SwiGLU) only, got {hidden_act!r}")


def _group_by_expert(expert_index: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, list[int]]:
    """(token, slot) assignments ordered by expert, and how many each expert got (one host sync)."""
    flat = expert_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return order, torch.bincount(flat, minlength=num_experts).tolist()


class VidLMAttention(nn.Module):
    """Grouped-query attention with rotary positions over vLLM's paged KV cache."""

    def __init__(self, vllm_config: VllmConfig, config, prefix: str = ""):
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        self.total_num_heads = config.num_attention_heads
        self.total_num_kv_heads = config.num_key_value_heads
        if self.total_num_heads % tp_size:
            raise ValueError(f"{self.total_num_heads} attention heads do not split over {tp_size} ranks")
        self.num_heads = self.total_num_heads // tp_size
        if self.total_num_kv_heads >= tp_size:
            if self.total_num_kv_heads % tp_size:
                raise ValueError(f"{self.total_num_kv_heads} KV heads do not split over {tp_size} ranks")
        elif tp_size % self.total_num_kv_heads:
            raise ValueError(f"{self.total_num_kv_heads} KV heads cannot be replicated over {tp_size} ranks")
        self.num_kv_heads = max(1, self.total_num_kv_heads // tp_size)
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        quant_config = vllm_config.quant_config

        qkv_bias = config.attention_bias if config.qkv_bias is None else config.qkv_bias
        self.qkv_proj = QKVParallelLinear(
            hidden_size=config.hidden_size,
            head_size=self.head_dim,
            total_num_heads=self.total_num_heads,
            total_num_kv_heads=self.total_num_kv_heads,
            bias=qkv_bias,
            quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            input_size=self.total_num_heads * self.head_dim,
            output_size=config.hidden_size,
            bias=config.attention_bias,
            quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )
        self.rotary_emb = get_rope(
            self.head_dim,
            max_position=config.max_position_embeddings,
            rope_parameters=config.rope_parameters,
            is_neox_style=True,  # transformers' rotate_half convention
        )
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            num_kv_heads=self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            quant_config=quant_config,
            prefix=f"{prefix}.attn",
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        output, _ = self.o_proj(self.attn(q, k, v))
        return output


class VidLMDenseMLP(nn.Module):
    """The SwiGLU FFN (Llama's MLP): ``down(silu(gate(u)) * up(u))``."""

    def __init__(self, config, quant_config: QuantizationConfig | None = None, prefix: str = ""):
        super().__init__()
        _require_silu(config.hidden_act)
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size,
            [config.intermediate_size] * 2,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.gate_up_proj",
        )
        self.down_proj = RowParallelLinear(
            config.intermediate_size,
            config.hidden_size,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.down_proj",
        )
        self.act_fn = SiluAndMul()

    def forward(self, normed: torch.Tensor, residual: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(normed)
        out, _ = self.down_proj(self.act_fn(gate_up))
        return out

    def load_checkpoint_weight(self, name: str, weight: torch.Tensor) -> str:
        """Load one checkpoint tensor (``name`` relative to the MLP); returns the parameter name filled."""
        if name.startswith(("gate_proj.", "up_proj.")):
            param = self.gate_up_proj.weight
            param.weight_loader(param, weight, 0 if name.startswith("gate_proj.") else 1)
            return "gate_up_proj.weight"
        return _load_plain(self, name, weight)


class VidLMVersatileMLP(nn.Module):
    """VersatileFFN: one SwiGLU reused in width (top-k of E slices) and in depth (1..L loops)."""

    def __init__(self, config, quant_config: QuantizationConfig | None = None, prefix: str = ""):
        super().__init__()
        _require_silu(config.hidden_act)
        if quant_config is not None:
            raise NotImplementedError(
                "VersatileFFN computes slices of its weights: quantization is not supported"
            )
        self.config = config
        self.tp_size = get_tensor_model_parallel_world_size()
        self.num_experts = config.num_width_experts
        self.top_k = config.width_top_k
        self.max_loops = config.max_loops
        self.slice_size = config.intermediate_size // self.num_experts
        if self.slice_size % self.tp_size:
            raise ValueError(
                f"VersatileFFN slices of {self.slice_size} hidden units do not split over {self.tp_size} ranks"
            )
        self.local_slice = self.slice_size // self.tp_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size,
            [self.slice_size] * (2 * self.num_experts),
            bias=False,
            prefix=f"{prefix}.gate_up_proj",
        )
        self.down_proj = RowParallelLinear(
            config.intermediate_size,
            config.hidden_size,
            bias=False,
            reduce_results=False,  # the width and depth paths all-reduce once each
            prefix=f"{prefix}.down_proj",
        )
        # The width path multiplies by row / column blocks of these weights, so they must stay plain
        # tensors: on CPU, vLLM otherwise repacks linear weights for oneDNN and drops ``.weight``.
        self.gate_up_proj._cpu_skip_gemm_dispatch = True
        self.down_proj._cpu_skip_gemm_dispatch = True
        self.width_router = ReplicatedLinear(
            config.hidden_size, self.num_experts, bias=False, prefix=f"{prefix}.width_router"
        )
        self.depth_router = ReplicatedLinear(
            config.hidden_size, self.max_loops, bias=False, prefix=f"{prefix}.depth_router"
        )
        self.loop_steps: torch.Tensor
        self.register_buffer(
            "loop_steps", torch.arange(1, self.max_loops + 1, dtype=torch.float32), persistent=False
        )

    # -- the SwiGLU on the slice-major layout --------------------------------------------------------

    def _swiglu_hidden(self, gate_up: torch.Tensor, experts: int) -> torch.Tensor:
        """``silu(gate) * up`` of ``experts`` consecutive slices laid out ``[g_e, u_e]`` per slice."""
        blocks = gate_up.view(gate_up.shape[0], experts, 2, self.local_slice)
        return (torch.nn.functional.silu(blocks[:, :, 0]) * blocks[:, :, 1]).reshape(gate_up.shape[0], -1)

    def ffn(self, normed: torch.Tensor) -> torch.Tensor:
        """The whole FFN on already normalised input, reduced over tensor-parallel ranks."""
        gate_up, _ = self.gate_up_proj(normed)
        out, _ = self.down_proj(self._swiglu_hidden(gate_up, self.num_experts))
        return _maybe_all_reduce(out, self.tp_size)

    def _width(self, normed: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_j w_j FFN_j(normed)`` over each token's chosen slices (this rank's share, unreduced)."""
        tokens = expert_index.shape[0]
        out = normed.new_zeros(tokens, normed.shape[-1])
        if tokens == 0:
            return out
        order, counts = _group_by_expert(expert_index, self.num_experts)
        token_of = order // self.top_k
        grouped = normed[token_of]
        gate_up_w = self.gate_up_proj.weight.view(self.num_experts, 2 * self.local_slice, -1)
        down_w = self.down_proj.weight.view(
            self.down_proj.weight.shape[0], self.num_experts, self.local_slice
        )
        pieces, start = [], 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            block = grouped[start : start + count]
            hidden = self._swiglu_hidden(torch.nn.functional.linear(block, gate_up_w[expert]), 1)
            pieces.append(torch.nn.functional.linear(hidden, down_w[:, expert]))
            start += count
        weighted = torch.cat(pieces) * weights.reshape(-1)[order].unsqueeze(-1)
        return out.index_add(0, token_of, weighted)

    def _depth(
        self, residual: torch.Tensor, normed: torch.Tensor, norm: RMSNorm, loop_counts: torch.Tensor
    ) -> torch.Tensor:
        """``h_n - x`` with ``h_l = h_{l-1} + FFN(norm(h_{l-1}))``, each token looped its own count."""
        delta = self.ffn(normed)  # every token loops at least once
        if self.max_loops == 1:
            return delta
        # tokens still looping before loops 2..L, from one histogram (one host sync for all loops)
        histogram = torch.bincount(loop_counts, minlength=self.max_loops + 1)
        still_looping = histogram.flip(0).cumsum(0).flip(0)[2:].tolist()
        if still_looping[0] == 0:
            return delta
        order = torch.argsort(loop_counts, descending=True, stable=True)
        x_sorted, delta_sorted = residual[order], delta[order]
        for count in still_looping:
            if count == 0:
                break
            head = delta_sorted[:count]
            head = head + self.ffn(norm(x_sorted[:count] + head))
            delta_sorted = torch.cat([head, delta_sorted[count:]])
        return torch.empty_like(delta_sorted).index_copy(0, order, delta_sorted)

    def forward(self, normed: torch.Tensor, residual: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        """``normed = norm(x)``, ``residual = x`` (routers read the un-normalised stream, as upstream)."""
        if self.config.force_dense_routing:  # all slices with weight 1, one loop, m = 1
            return self.ffn(normed)
        width_logits, _ = self.width_router(residual)
        depth_logits, _ = self.depth_router(residual)
        top_logits, top_index = torch.topk(width_logits, self.top_k, dim=-1)
        top_weights = torch.softmax(top_logits.float(), dim=-1).to(normed.dtype)
        loop_counts = depth_logits.argmax(dim=-1) + 1
        if self.config.fusion_expectation == "soft":
            expected_loops = (torch.softmax(depth_logits.float(), dim=-1) * self.loop_steps).sum(-1)
        else:  # "sample": at inference the sample is the argmax, E[loops] is the loop count
            expected_loops = loop_counts.float()
        fusion = (self.max_loops - expected_loops) / self.max_loops

        width_delta = normed.new_zeros(normed.shape)
        active = (fusion > 0).nonzero().squeeze(-1)
        if active.numel() == fusion.numel():
            width_delta = self._width(normed, top_index, top_weights)
        elif active.numel():
            width_delta = width_delta.index_copy(
                0, active, self._width(normed[active], top_index[active], top_weights[active])
            )
        width_delta = _maybe_all_reduce(width_delta, self.tp_size)
        depth_delta = self._depth(residual, normed, norm, loop_counts)
        m = fusion.to(normed.dtype).unsqueeze(-1)
        return m * width_delta + (1 - m) * depth_delta

    # -- checkpoint --------------------------------------------------------------------------------

    def load_checkpoint_weight(self, name: str, weight: torch.Tensor) -> str:
        s = self.slice_size
        if name.startswith(("gate_proj.", "up_proj.")):
            offset = 0 if name.startswith("gate_proj.") else 1
            param = self.gate_up_proj.weight
            for expert in range(self.num_experts):
                param.weight_loader(param, weight[expert * s : (expert + 1) * s], 2 * expert + offset)
            return "gate_up_proj.weight"
        if name == "down_proj.weight":
            # input columns in rank-major, slice-major order, so each rank's contiguous share holds
            # its part of every slice in the order gate_up_proj produces them
            local = self.local_slice
            columns = torch.cat(
                [
                    torch.arange(e * s + r * local, e * s + (r + 1) * local)
                    for r in range(self.tp_size)
                    for e in range(self.num_experts)
                ]
            )
            param = self.down_proj.weight
            param.weight_loader(param, weight[:, columns])
            return name
        return _load_plain(self, name, weight)


class VidLMParameterNetMLP(nn.Module):
    """ParameterNet: SwiGLU whose down projection is a top-k mixture of E experts."""

    def __init__(self, config, quant_config: QuantizationConfig | None = None, prefix: str = ""):
        super().__init__()
        _require_silu(config.hidden_act)
        if quant_config is not None:
            raise NotImplementedError("ParameterNet's expert bank is not quantizable in this port")
        self.config = config
        self.tp_size = get_tensor_model_parallel_world_size()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.num_experts = config.num_parameternet_experts
        self.top_k = config.parameternet_top_k
        if config.intermediate_size % self.tp_size:
            raise ValueError(
                f"intermediate_size {config.intermediate_size} does not split over {self.tp_size} ranks"
            )
        self.local_intermediate = config.intermediate_size // self.tp_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, bias=False, prefix=f"{prefix}.gate_up_proj"
        )
        self.act_fn = SiluAndMul()
        # reads this rank's share of the hidden units; its all-reduce gives every rank the full logits
        self.router = RowParallelLinear(
            config.intermediate_size, self.num_experts, bias=False, prefix=f"{prefix}.router"
        )
        self.down_proj = nn.Module()
        self.down_proj.weight = nn.Parameter(
            torch.empty(self.num_experts, config.hidden_size, self.local_intermediate), requires_grad=False
        )
        set_weight_attrs(self.down_proj.weight, {"weight_loader": self._load_experts})

    def _load_experts(self, param: nn.Parameter, weight: torch.Tensor) -> None:
        if weight.shape != (self.num_experts, param.shape[1], self.config.intermediate_size):
            raise ValueError(
                f"ParameterNet expert bank of shape {tuple(weight.shape)} does not match "
                f"({self.num_experts}, {param.shape[1]}, {self.config.intermediate_size})"
            )
        param.data.copy_(weight.narrow(2, self.tp_rank * self.local_intermediate, self.local_intermediate))

    def forward(self, normed: torch.Tensor, residual: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(normed)
        inner = self.act_fn(gate_up)
        router_logits, _ = self.router(inner)
        probs = torch.softmax(router_logits.float(), dim=-1)
        top_probs, top_index = torch.topk(probs, self.top_k, dim=-1)
        if self.config.force_dense_routing:
            top_index, top_probs = top_index[:, :1], torch.ones_like(top_probs[:, :1])
        tokens, k = top_index.shape
        out = inner.new_zeros(tokens, normed.shape[-1])
        if tokens:
            order, counts = _group_by_expert(top_index, self.num_experts)
            token_of = order // k
            grouped = inner[token_of]
            pieces, start = [], 0
            for expert, count in enumerate(counts):
                if count:
                    pieces.append(
                        torch.nn.functional.linear(
                            grouped[start : start + count], self.down_proj.weight[expert]
                        )
                    )
                    start += count
            weighted = torch.cat(pieces) * top_probs.reshape(-1)[order].unsqueeze(-1).to(inner.dtype)
            out = out.index_add(0, token_of, weighted)
        return _maybe_all_reduce(out, self.tp_size)

    def load_checkpoint_weight(self, name: str, weight: torch.Tensor) -> str:
        if name.startswith(("gate_proj.", "up_proj.")):
            param = self.gate_up_proj.weight
            param.weight_loader(param, weight, 0 if name.startswith("gate_proj.") else 1)
            return "gate_up_proj.weight"
        return _load_plain(self, name, weight)


def _load_plain(module: nn.Module, name: str, weight: torch.Tensor) -> str:
    """A checkpoint tensor whose name is the parameter's own, through the parameter's loader."""
    params = dict(module.named_parameters())
    if name not in params:
        raise KeyError(f"checkpoint tensor {name!r} has no parameter in {type(module).__name__}")
    param = params[name]
    getattr(param, "weight_loader", default_weight_loader)(param, weight)
    return name


#: vLLM MLP class per ``ffn_type`` (the transformers side is ``vidllm.lm.ffn.FFN_CLASSES``).
VLLM_FFN_CLASSES: dict[str, type[nn.Module]] = {
    "dense": VidLMDenseMLP,
    "versatile": VidLMVersatileMLP,
    "parameternet": VidLMParameterNetMLP,
}


class VidLMDecoderLayer(nn.Module):
    def __init__(self, vllm_config: VllmConfig, layer_idx: int, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        ffn_type = config.layer_ffn_types[layer_idx]
        if ffn_type not in VLLM_FFN_CLASSES:
            raise ValueError(f"layer {layer_idx}: ffn_type {ffn_type!r} has no vLLM implementation")
        self.self_attn = VidLMAttention(vllm_config, config, prefix=f"{prefix}.self_attn")
        self.mlp = VLLM_FFN_CLASSES[ffn_type](config, vllm_config.quant_config, prefix=f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(delta, residual)``; the next norm adds them (vLLM's fused add + RMSNorm)."""
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states)
        normed, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(normed, residual, self.post_attention_layernorm), residual


class VidLMModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, quant_config=vllm_config.quant_config
        )
        self.layers = nn.ModuleList(
            VidLMDecoderLayer(vllm_config, i, prefix=f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class VidLMForCausalLM(nn.Module):
    """vLLM's VidLM: architecture name ``"VidLMForCausalLM"``, registered by :mod:`vidllm.serving.plugin`."""

    packed_modules_mapping: ClassVar[dict[str, list[str]]] = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise NotImplementedError("VidLM on vLLM supports tensor parallelism, not pipeline parallelism")
        self.config = config
        self.model = VidLMModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(
            config.vocab_size,
            config.hidden_size,
            quant_config=vllm_config.quant_config,
            prefix=maybe_prefix(prefix, "lm_head"),
        )
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a transformers VidLM checkpoint as saved; returns the parameter names it filled."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, weight in weights:
            if "rotary_emb." in name:
                continue  # inv_freq buffers: recomputed by get_rope
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # the embedding table is the head
            if ".mlp." in name:
                layer_prefix, local = name.split(".mlp.", 1)
                layer = self.get_submodule(layer_prefix)
                loaded.add(f"{layer_prefix}.mlp.{layer.mlp.load_checkpoint_weight(local, weight)}")
                continue
            for part, shard in _QKV_SHARDS.items():
                if part in name:
                    target = name.replace(part, ".qkv_proj.")
                    param = params[target]
                    param.weight_loader(param, weight, shard)
                    loaded.add(target)
                    break
            else:
                if name not in params:
                    raise KeyError(f"checkpoint tensor {name!r} has no parameter in VidLM for vLLM")
                param = params[name]
                getattr(param, "weight_loader", default_weight_loader)(param, weight)
                loaded.add(name)
        return loaded


__all__ = [
    "VLLM_FFN_CLASSES",
    "VidLMDenseMLP",
    "VidLMForCausalLM",
    "VidLMParameterNetMLP",
    "VidLMVersatileMLP",
]
