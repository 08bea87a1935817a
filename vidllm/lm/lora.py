"""LoRA fine-tuning of VidLM with PEFT: adapters on attention and FFN projections, routers trained
in full, and a merge that yields a plain VidLM checkpoint (safetensors) any VidLM loader reads.

LoRA: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", ``W + (alpha / r) B A``.

- ``q/k/v/o_proj`` and ``gate/up/down_proj`` that are ``nn.Linear`` get ``target_modules`` adapters.
  VersatileFFN's width path computes slices of these weights directly; it applies an unmerged
  adapter slice-wise (``vidllm.lm.ffn.common.linear_out_slice``), so it sees the same weights.
- ParameterNet's expert bank ``mlp.down_proj.weight (E, H, I)`` is a 3D parameter: it gets a
  per-expert adapter through PEFT's ``target_parameters`` (a parametrization of the weight).
- Routers (``width_router``, ``depth_router``, ``router``) are ``modules_to_save``: trained in full and
  written back into place by ``merge_and_unload``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from torch import nn

from vidllm.lm.ffn import ParameterNetDownProj

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

    from vidllm.lm.modeling_vidlm import VidLMForCausalLM

logger = logging.getLogger(__name__)

LORA_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROUTER_NAMES = ("width_router", "depth_router", "router")


def lora_config(
    model: nn.Module,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    train_routers: bool = True,
    **kwargs: Any,
) -> LoraConfig:
    """A ``LoraConfig`` that targets every projection of ``model`` and keeps its routers trainable.

    Extra ``kwargs`` go to ``LoraConfig`` (e.g. ``init_lora_weights=False`` for a non-zero adapter).
    """
    from peft import LoraConfig

    target_modules, target_parameters, routers = [], [], set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear) and leaf in LORA_LINEAR_NAMES:
            target_modules.append(name)
        elif isinstance(module, ParameterNetDownProj):
            target_parameters.append(f"{name}.weight")
        if leaf in ROUTER_NAMES:
            routers.add(leaf)
    if target_parameters and lora_dropout:
        raise ValueError(
            "ParameterNet expert banks take LoRA through target_parameters, which has no dropout"
        )
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        target_parameters=target_parameters or None,
        modules_to_save=sorted(routers) if train_routers and routers else None,
        task_type="CAUSAL_LM",
        **kwargs,
    )


def apply_lora(model: VidLMForCausalLM, config: LoraConfig | None = None, **kwargs: Any) -> PeftModel:
    """Wrap ``model`` with LoRA adapters (``config`` or ``lora_config(model, **kwargs)``)."""
    from peft import get_peft_model

    config = config if config is not None else lora_config(model, **kwargs)
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA: %d of %d parameters trainable", trainable, total)
    return peft_model


def merge_and_save(peft_model: PeftModel, path: str | os.PathLike) -> VidLMForCausalLM:
    """Fold the adapters into the weights, put the trained routers in place, save as safetensors.

    Returns the merged plain ``VidLMForCausalLM``; ``AutoModelForCausalLM.from_pretrained(path)``
    loads the same model with no PEFT involved.
    """
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(os.fspath(path))
    logger.info("merged LoRA model saved to %s", path)
    return merged


__all__ = ["LORA_LINEAR_NAMES", "ROUTER_NAMES", "apply_lora", "lora_config", "merge_and_save"]
