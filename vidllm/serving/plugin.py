"""vLLM plugin: makes vLLM able to read and run VidLM checkpoints, with no code of ours imported by hand.

vLLM calls every function of the ``vllm.general_plugins`` entry-point group in each of its
processes (engine, workers, API server) before it reads a model. Ours is declared in
``pyproject.toml``::

    [project.entry-points."vllm.general_plugins"]
    vidlm = "vidllm.serving.plugin:register"

It registers the ``"vidlm"`` config with transformers' ``AutoConfig`` (vLLM reads ``config.json``
through it) and the architecture ``"VidLMForCausalLM"`` with vLLM's ``ModelRegistry`` in the lazy
string form, so the model module (and vLLM's layers) is imported only when a VidLM model is loaded.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

ARCHITECTURE = "VidLMForCausalLM"
MODEL_CLASS = "vidllm.serving.vllm_model:VidLMForCausalLM"


def register() -> None:
    """Register VidLM's config and architecture with transformers and vLLM (idempotent)."""
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from vidllm.lm.configuration_vidlm import VidLMConfig

    AutoConfig.register(VidLMConfig.model_type, VidLMConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
        logger.debug("registered %s as %s", ARCHITECTURE, MODEL_CLASS)
