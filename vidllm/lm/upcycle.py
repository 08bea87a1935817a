"""Upcycling: a dense transformers Llama or Qwen2 causal LM turned into VidLM, every weight copied.

Sparse upcycling (Komatsuzaki et al. 2023, "Sparse Upcycling: Training Mixture-of-Experts from Dense
Checkpoints") starts routed layers from a dense checkpoint. Here:

- attention, norms, embeddings, head and the FFN's ``gate/up/down_proj`` are copied unchanged (the
  names are Llama's on both sides; Qwen2's q/k/v biases become ``qkv_bias=True``);
- ``versatile`` layers reuse the dense FFN as is (virtual experts are slices of it). The width router
  keeps its small random initialisation (symmetry breaking); the depth router starts at zero, so at
  inference every token first takes one loop, whose output is exactly the dense FFN;
- ``parameternet`` layers get every down-projection expert as a copy of the dense ``down_proj`` and a
  small random router.

With ``dense_routing(model)`` (or ``config.force_dense_routing=True``) every routed layer computes its
dense FFN, so the upcycled model's logits equal the source's; training then moves away from it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from vidllm.lm.configuration_vidlm import FFN_TYPES, VidLMConfig
from vidllm.lm.ffn import FFN_CLASSES
from vidllm.lm.modeling_vidlm import VidLMForCausalLM

logger = logging.getLogger(__name__)

SUPPORTED_SOURCES = ("llama", "qwen2")


def _vidlm_config(source: PreTrainedModel, layer_types: list[str], overrides: dict) -> VidLMConfig:
    src = source.config
    if src.model_type not in SUPPORTED_SOURCES:
        raise ValueError(f"upcycle supports {SUPPORTED_SOURCES} models, got model_type={src.model_type!r}")
    if getattr(src, "mlp_bias", False):
        raise ValueError("upcycle does not support mlp_bias=True: VersatileFFN slices have no per-slice bias")
    if any(kind != "full_attention" for kind in getattr(src, "layer_types", None) or []):
        raise ValueError("upcycle does not support sliding-window attention layers")
    if src.model_type == "qwen2":
        attention_bias, qkv_bias = False, True  # Qwen2: biased q/k/v, unbiased o_proj
    else:
        attention_bias, qkv_bias = bool(src.attention_bias), None
    values = dict(
        vocab_size=src.vocab_size,
        hidden_size=src.hidden_size,
        intermediate_size=src.intermediate_size,
        num_hidden_layers=src.num_hidden_layers,
        num_attention_heads=src.num_attention_heads,
        num_key_value_heads=src.num_key_value_heads,
        head_dim=getattr(src, "head_dim", None) or src.hidden_size // src.num_attention_heads,
        hidden_act=src.hidden_act,
        max_position_embeddings=src.max_position_embeddings,
        initializer_range=src.initializer_range,
        rms_norm_eps=src.rms_norm_eps,
        pad_token_id=src.pad_token_id,
        bos_token_id=src.bos_token_id,
        eos_token_id=src.eos_token_id,
        tie_word_embeddings=src.tie_word_embeddings,
        rope_parameters=dict(src.rope_parameters),
        attention_bias=attention_bias,
        qkv_bias=qkv_bias,
        attention_dropout=float(src.attention_dropout),
        ffn_type=layer_types,
    )
    values.update(overrides)
    return VidLMConfig(**values)


def upcycle(
    model_or_path: PreTrainedModel | str | os.PathLike,
    ffn_type: str = "versatile",
    layers: Iterable[int] | None = None,
    **config_overrides,
) -> VidLMForCausalLM:
    """Build a VidLM from a dense ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (object or local path).

    Args:
        model_or_path: the source model, or a directory ``from_pretrained`` can read.
        ffn_type: FFN variant of the upcycled layers (one of ``FFN_TYPES``).
        layers: indices of the layers to upcycle; ``None`` upcycles all, the others stay dense.
        **config_overrides: further ``VidLMConfig`` fields (e.g. ``num_width_experts=4``).

    Returns:
        The VidLM model in the source's dtype, on CPU, in eval mode. Loading is strict: every source
        tensor is used and the only parameters not copied are the new routers.
    """
    if ffn_type not in FFN_TYPES:
        raise ValueError(f"unknown ffn_type {ffn_type!r}; choose from {list(FFN_TYPES)}")
    source = (
        model_or_path
        if isinstance(model_or_path, PreTrainedModel)
        else AutoModelForCausalLM.from_pretrained(os.fspath(model_or_path))
    )
    num_layers = source.config.num_hidden_layers
    chosen = set(range(num_layers)) if layers is None else set(layers)
    if not chosen <= set(range(num_layers)):
        raise ValueError(f"layers {sorted(chosen)} out of range for a {num_layers}-layer model")
    layer_types = [ffn_type if i in chosen else "dense" for i in range(num_layers)]
    config = _vidlm_config(source, layer_types, config_overrides)

    model = VidLMForCausalLM(config).to(dtype=source.dtype)
    source_state = source.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, tensor in source_state.items():
        state[key] = tensor
        parts = key.split(".")
        if key.endswith("mlp.down_proj.weight") and layer_types[int(parts[2])] == "parameternet":
            experts = config.num_parameternet_experts
            state[key] = tensor.unsqueeze(0).expand(experts, *tensor.shape).clone()
    missing, unexpected = model.load_state_dict(state, strict=False)
    router_names = ("mlp.width_router.weight", "mlp.depth_router.weight", "mlp.router.weight")
    not_copied = [k for k in missing if not k.endswith(router_names)]
    if unexpected or not_copied:
        raise RuntimeError(
            f"upcycle: source tensors not used {unexpected}, parameters not copied {not_copied}"
        )
    with torch.no_grad():
        for layer in model.model.layers:
            if layer.ffn_type == "versatile":
                layer.mlp.depth_router.weight.zero_()
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = copy.deepcopy(source.generation_config)
    logger.info(
        "upcycled %s (%d layers) to VidLM: %s layers %s; new router tensors %d",
        source.config.model_type,
        num_layers,
        ffn_type,
        sorted(chosen),
        len(missing),
    )
    return model.eval()


@contextlib.contextmanager
def dense_routing(model: nn.Module) -> Iterator[nn.Module]:
    """Force every routed FFN of ``model`` (a VidLM, possibly inside a PEFT wrapper) to its dense FFN.

    VersatileFFN then uses all slices with weight 1, one loop and fusion weight 1; ParameterNet gives
    its top-1 expert weight 1. The previous setting is restored on exit.
    """
    ffn_classes = tuple(FFN_CLASSES.values())
    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, ffn_classes)}
    previous = {key: config.force_dense_routing for key, config in configs.items()}
    try:
        for config in configs.values():
            config.force_dense_routing = True
        yield model
    finally:
        for key, config in configs.items():
            config.force_dense_routing = previous[key]


__all__ = ["SUPPORTED_SOURCES", "dense_routing", "upcycle"]
