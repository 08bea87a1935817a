"""VidLM: a transformers-native causal LM with dense, VersatileFFN and ParameterNet FFN layers.

Importing this package registers the ``"vidlm"`` model type with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM``. Contents:

- ``VidLMConfig`` / ``VidLMForCausalLM`` / ``VidLMModel``: the model (``modeling_vidlm``).
- ``FFN_CLASSES``: the FFN variant classes by ``ffn_type`` (``ffn``).
- ``upcycle``: a dense Llama or Qwen2 checkpoint turned into VidLM, every weight copied.
- ``dense_routing``: a context manager forcing every router to the dense FFN.
- ``lora_config`` / ``apply_lora`` / ``merge_and_save``: PEFT LoRA with trainable routers.
- ``GumbelTemperatureCallback``: the Gumbel temperature schedule for the transformers ``Trainer``.
- ``vidlm_config``: named configurations (``VIDLM_CONFIGS``), tiny ones included for tests.
"""

from vidllm.lm.configs import VIDLM_CONFIGS, vidlm_config
from vidllm.lm.configuration_vidlm import FFN_TYPES, VLLM_CPU_HEAD_SIZES, VidLMConfig
from vidllm.lm.ffn import FFN_CLASSES, FFNRouting
from vidllm.lm.lora import apply_lora, lora_config, merge_and_save
from vidllm.lm.modeling_vidlm import (
    VidLMCausalLMOutputWithPast,
    VidLMForCausalLM,
    VidLMModel,
    VidLMModelOutputWithPast,
    VidLMPreTrainedModel,
)
from vidllm.lm.upcycle import dense_routing, upcycle

__all__ = [
    "FFN_CLASSES",
    "FFN_TYPES",
    "VIDLM_CONFIGS",
    "VLLM_CPU_HEAD_SIZES",
    "FFNRouting",
    "GumbelTemperatureCallback",
    "VidLMCausalLMOutputWithPast",
    "VidLMConfig",
    "VidLMForCausalLM",
    "VidLMModel",
    "VidLMModelOutputWithPast",
    "VidLMPreTrainedModel",
    "apply_lora",
    "dense_routing",
    "lora_config",
    "merge_and_save",
    "upcycle",
    "vidlm_config",
]


def __getattr__(name: str):
    # transformers' Trainer machinery (and with it peft) takes ~2 s to import: only on demand.
    if name == "GumbelTemperatureCallback":
        from vidllm.lm.training import GumbelTemperatureCallback

        return GumbelTemperatureCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
