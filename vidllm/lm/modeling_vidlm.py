"""VidLM: a Llama-style decoder whose FFN is chosen per layer (dense SwiGLU, VersatileFFN, ParameterNet).

Blocks follow Llama (Touvron et al. 2023): pre-norm RMSNorm, rotary position embeddings (Su et al.
2021), grouped-query attention through transformers' attention interface (torch SDPA by default),
the KV cache of ``transformers.cache_utils`` and ``GenerationMixin`` for ``generate()``. The FFN
variants and their papers are in ``vidllm.lm.ffn``.

Checkpoint layout (safetensors; a vLLM port loads it unchanged). Every name is Llama's except the
FFN extras; ``H`` hidden, ``I`` intermediate, ``E`` experts, ``L`` max loops::

    model.embed_tokens.weight                         (V, H)
    model.layers.{i}.input_layernorm.weight           (H,)
    model.layers.{i}.self_attn.{q,k,v}_proj.weight    (heads * head_dim, H), bias if qkv bias
    model.layers.{i}.self_attn.o_proj.weight          (H, heads * head_dim), bias if attention_bias
    model.layers.{i}.post_attention_layernorm.weight  (H,)
    model.layers.{i}.mlp.{gate,up}_proj.weight        (I, H)
    model.layers.{i}.mlp.down_proj.weight             (H, I)      dense, versatile
                                                      (E, H, I)   parameternet: expert e at [e]
    model.layers.{i}.mlp.width_router.weight          (E, H)      versatile
    model.layers.{i}.mlp.depth_router.weight          (L, H)      versatile
    model.layers.{i}.mlp.router.weight                (E, I)      parameternet
    model.norm.weight                                 (H,)
    lm_head.weight                                    (V, H), absent when tie_word_embeddings

Importing ``vidllm.lm`` registers ``"vidlm"`` with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM``, so ``AutoModelForCausalLM.from_pretrained(path)`` needs no remote code.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple

from vidllm.lm.configuration_vidlm import VidLMConfig
from vidllm.lm.ffn import FFN_CLASSES, FFNRouting, ParameterNetDownProj, set_gumbel_temperature


class VidLMRMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019), computed in float32 as Llama's."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class VidLMRotaryEmbedding(nn.Module):
    """Rotary tables for the positions of a batch; scaled RoPE types come from transformers' registry."""

    inv_freq: torch.Tensor

    def __init__(self, config: VidLMConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: VidLMConfig, **kwargs) -> tuple[torch.Tensor, float]:
        """Inverse frequencies ``theta^(-2i/d)`` of plain RoPE over the whole head."""
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``(B, heads, T, d)`` queries and keys by ``(B, T, d)`` tables (half-split convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention, for ``attn_implementation="eager"`` (and attention maps)."""
    groups = module.num_key_value_groups
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class VidLMAttention(nn.Module):
    """Grouped-query self-attention with rotary positions and a KV cache."""

    def __init__(self, config: VidLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        qkv_bias = config.qkv_bias_enabled
        q_size = config.num_attention_heads * self.head_dim
        kv_size = config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_size, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.attention_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class VidLMDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm attention and FFN blocks; the FFN class comes from ``config.layer_ffn_types``."""

    def __init__(self, config: VidLMConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.ffn_type = config.layer_ffn_types[layer_idx]
        self.self_attn = VidLMAttention(config, layer_idx)
        self.mlp = FFN_CLASSES[self.ffn_type](config, layer_idx)
        self.input_layernorm = VidLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = VidLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        token_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, FFNRouting | None]:
        """Returns the new hidden states, the FFN's weighted auxiliary loss and its routing record."""
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = hidden_states + attn_output
        delta, aux_loss, routing = self.mlp(hidden_states, self.post_attention_layernorm, token_mask)
        return hidden_states + delta, aux_loss, routing


class VidLMPreTrainedModel(PreTrainedModel):
    config_class = VidLMConfig
    config: VidLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["VidLMDecoderLayer"]
    _skip_keys_device_placement: ClassVar[list[str]] = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    # Routing is data-dependent (token grouping syncs with the host): no fullgraph compile.
    _can_compile_fullgraph = False
    _supports_attention_backend = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ParameterNetDownProj):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)


@dataclass
class VidLMModelOutputWithPast(BaseModelOutputWithPast):
    """``BaseModelOutputWithPast`` plus the FFN auxiliary loss and routing records.

    Args:
        aux_loss: mean over the layers that have one of their weighted auxiliary losses (``None`` if none).
        routing: one ``FFNRouting`` per layer (``None`` for dense layers), when ``output_routing=True``.
    """

    aux_loss: torch.Tensor | None = None
    routing: tuple[FFNRouting | None, ...] | None = None


@dataclass
class VidLMCausalLMOutputWithPast(ModelOutput):
    """Causal-LM output with the FFN auxiliary loss and routing records.

    Args:
        loss: ``lm_loss + aux_loss`` when ``labels`` are given.
        lm_loss: the next-token cross-entropy alone.
        aux_loss: weighted auxiliary (load-balancing) loss of the routed FFNs, mean over their layers.
        logits: ``(B, T, vocab)`` scores.
        past_key_values: the KV cache.
        hidden_states: embeddings and each layer's output (the last one after the final norm).
        routing: one ``FFNRouting`` per layer (``None`` for dense layers), when ``output_routing=True``.
    """

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    routing: tuple[FFNRouting | None, ...] | None = None


def _right_padded(attention_mask: torch.Tensor | None) -> bool:
    """Whether a 2D padding mask has every row's real tokens first (or no padding at all)."""
    if attention_mask is None or attention_mask.ndim != 2:
        return False
    real = attention_mask.bool()
    return bool((real[:, 1:] <= real[:, :-1]).all())


def _token_mask(attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
    """Which of the current tokens are real (for auxiliary losses), from a 2D padding mask."""
    if attention_mask is None or attention_mask.ndim != 2:
        return None
    return attention_mask[:, -seq_len:].bool()


class VidLMModel(VidLMPreTrainedModel):
    """The decoder stack without the LM head."""

    def __init__(self, config: VidLMConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [VidLMDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = VidLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = VidLMRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_routing: bool = False,
        **kwargs,
    ) -> VidLMModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        kwargs.pop("output_attentions", None)
        kwargs.pop("return_dict", None)

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            position_ids = position_ids.unsqueeze(0)

        # A right-padded batch without a cache (training) needs no padding mask in attention: a real
        # token attends only to earlier ones, all real, and what the padding after it computes is
        # unused. Without it SDPA runs its causal kernel (which skips the upper triangle) instead of
        # reading a dense (B, 1, L, L) mask (with token_motion's batching, a default video-stage
        # training step 0.78x as long: benchmarks/train_step.py). The 2D mask still marks the real
        # tokens for the routers' losses.
        padding_mask = None if past_key_values is None and _right_padded(attention_mask) else attention_mask
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=padding_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        token_mask = _token_mask(attention_mask, inputs_embeds.shape[1])
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)

        all_hidden_states: list[torch.Tensor] | None = [] if output_hidden_states else None
        aux_losses: list[torch.Tensor] = []
        routing: list[FFNRouting | None] = []
        for decoder_layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states, aux_loss, layer_routing = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                token_mask=token_mask,
                **kwargs,
            )
            if aux_loss is not None:
                aux_losses.append(aux_loss)
            routing.append(layer_routing)
        hidden_states = self.norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)

        return VidLMModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
            aux_loss=torch.stack(aux_losses).mean() if aux_losses else None,
            routing=tuple(routing) if output_routing else None,
        )


class VidLMForCausalLM(VidLMPreTrainedModel, GenerationMixin):
    """VidLM with a language-modelling head; ``loss`` includes the routers' auxiliary losses."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan: ClassVar[dict[str, str]] = {"lm_head": "colwise_gather_output"}
    _pp_plan: ClassVar[dict[str, tuple[list[str], list[str]]]] = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: VidLMConfig):
        super().__init__(config)
        self.model = VidLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def set_training_step(self, step: int) -> float:
        """Anneal every VersatileFFN's Gumbel temperature to the value of ``step``; returns it.

        Call it once per optimiser step (the temperature only matters in training); with the
        transformers ``Trainer``, ``vidllm.lm.GumbelTemperatureCallback`` does it.
        """
        set_gumbel_temperature(self, step)
        return self.config.gumbel_temperature_at(step)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        output_routing: bool = False,
        **kwargs,
    ) -> VidLMCausalLMOutputWithPast:
        r"""Logits for ``input_ids`` or ``inputs_embeds`` (visual embeddings enter here).

        Args:
            labels: next-token targets aligned with the inputs (shifted inside; ``-100`` is ignored).
            logits_to_keep: compute logits for only the last ``n`` positions (0: all), or these indices.
            output_routing: return each layer's ``FFNRouting`` (loop counts, chosen experts, ...).
        """
        outputs: VidLMModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_routing=output_routing,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = lm_loss = None
        if labels is not None:
            lm_loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
            loss = lm_loss if outputs.aux_loss is None else lm_loss + outputs.aux_loss.to(lm_loss.dtype)
        return VidLMCausalLMOutputWithPast(
            loss=loss,
            lm_loss=lm_loss,
            aux_loss=outputs.aux_loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            routing=outputs.routing,
        )


AutoConfig.register(VidLMConfig.model_type, VidLMConfig, exist_ok=True)
AutoModel.register(VidLMConfig, VidLMModel, exist_ok=True)
AutoModelForCausalLM.register(VidLMConfig, VidLMForCausalLM, exist_ok=True)

__all__ = [
    "VidLMCausalLMOutputWithPast",
    "VidLMDecoderLayer",
    "VidLMForCausalLM",
    "VidLMModel",
    "VidLMModelOutputWithPast",
    "VidLMPreTrainedModel",
]
