"""Named VidLM configurations, as data: ``vidlm_config(name, **overrides)`` builds a ``VidLMConfig``.

Head sizes are ones vLLM's CPU attention supports, so every named model can also be served by vLLM.
``vidlm-300m`` follows the VersatileFFN paper's 300M OLMo-style decoder (official
``configs/model_config.yaml``: d_model 1024, 16 heads, 15 layers, SwiGLU with 8x d_model fused
gate+up, i.e. intermediate 4096, untied embeddings, vocab padded to 50304).
"""

from __future__ import annotations

from typing import Any

from vidllm.lm.configuration_vidlm import VidLMConfig

VIDLM_CONFIGS: dict[str, dict[str, Any]] = {
    # Unit tests: a forward pass takes milliseconds.
    "vidlm-tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    # Benchmarks on a CPU: big enough for matmuls to dominate Python overhead.
    "vidlm-small": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    "vidlm-300m": dict(
        vocab_size=50304,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=15,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=64,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ffn_type="versatile",
    ),
}


def vidlm_config(name: str, **overrides: Any) -> VidLMConfig:
    """The named configuration with ``overrides`` applied (e.g. ``ffn_type="parameternet"``)."""
    if name not in VIDLM_CONFIGS:
        raise KeyError(f"unknown VidLM config {name!r}; choose from {sorted(VIDLM_CONFIGS)}")
    values = dict(VIDLM_CONFIGS[name])
    if "rope_parameters" in values:
        values["rope_parameters"] = dict(values["rope_parameters"])  # the config mutates it
    values.update(overrides)
    return VidLMConfig(**values)


__all__ = ["VIDLM_CONFIGS", "vidlm_config"]
