"""Helpers for the vLLM tests and benchmarks: tiny VideoLLM checkpoints per FFN type, the
generated clips and questions the parity checks ask, a free local port, and a vLLM model built
outside the engine (for checks on the module itself, such as ``load_weights``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: FFN layouts of the tiny parity checkpoints: one per variant, and one with a layer of each.
TINY_FFN_LAYOUTS: dict[str, str | list[str]] = {
    "dense": "dense",
    "versatile": "versatile",
    "parameternet": "parameternet",
    "mixed": ["dense", "versatile", "parameternet"],
}

#: Questions over the tiny tokenizer's words (``vidllm.testing.tiny.WORDS``); cycled for longer lists.
QUESTIONS = (
    "what color is the square ?",
    "how many circle in the video ?",
    "does the star move left or right ?",
    "which shape appears first ?",
    "is the triangle red or blue ?",
    "what colour is the circle ?",
    "how many s does the video s ?",
    "which color appears first : A red B green C blue D yellow ?",
    "does the square move up or down ?",
    "is the star yellow ?",
)


def tiny_vidlm_videollm(
    directory: str | Path,
    ffn: str | list[str],
    *,
    seed: int = 0,
    router_std: float = 0.5,
    reducer: dict[str, Any] | None = None,
    max_new_tokens: int | None = None,
    **lm_overrides: Any,
) -> Path:
    """Save a tiny random VideoLLM whose LM is a VidLM with the given FFN layout; returns ``directory``.

    ``lm_overrides`` are ``VidLMConfig`` fields (a larger LM for benchmarks: ``hidden_size=1024``, ...);
    ``reducer`` and ``max_new_tokens`` replace the tiny VideoLLM's own settings.

    Router weights are drawn wider than the default initialisation (``router_std``) so a random model
    routes tokens to different slices, experts and loop counts, as a trained one does; with the
    default std 0.02 every router output is nearly uniform and the routed paths are barely exercised.
    """
    import torch

    from vidllm.lm import VidLMConfig, VidLMForCausalLM
    from vidllm.model import VideoLLM
    from vidllm.testing.tiny import tiny_video_llm

    base = tiny_video_llm("dense", seed=seed)  # tower, scorer and tokenizer (with the video markers)
    tokenizer = base.tokenizer
    fields = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": len(ffn) if isinstance(ffn, list) else 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "max_position_embeddings": 2048,
        **lm_overrides,
    }
    config = VidLMConfig(
        **fields,
        ffn_type=ffn,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    lm = VidLMForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in lm.named_parameters():
            if "router" in name:
                param.normal_(0.0, router_std)
    config = base.config
    if reducer is not None:
        config.reducer = dict(reducer)
    if max_new_tokens is not None:
        config.max_new_tokens = max_new_tokens
    model = VideoLLM(config, base.tower, lm, tokenizer, base.scorer).eval()
    model.save_pretrained(directory)
    return Path(directory)


def write_clips(directory: str | Path, count: int) -> list[Path]:
    """``count`` short generated clips of different lengths, sizes and patterns."""
    from vidllm.testing.media import write_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        clips.append(
            write_clip(
                directory / f"clip{i}.mp4",
                num_frames=12 + 3 * (i % 7),
                width=64 + 16 * (i % 3),
                height=48,
                pattern="index" if i % 2 == 0 else "motion",
            )
        )
    return clips


@contextlib.contextmanager
def standalone_vllm_model(lm_dir: str | Path, **engine_kwargs: Any) -> Iterator[Any]:
    """VidLM's vLLM module built in this process, outside any engine, on a one-rank process group.

    The engine builds the model in its worker and repacks linear weights for the CPU after loading;
    this gives the module as constructed, so ``load_weights`` can be called and inspected directly.
    The process group is torn down on exit, so an engine can be started afterwards.
    """
    from vllm import EngineArgs
    from vllm.config import set_current_vllm_config
    from vllm.distributed.parallel_state import (
        destroy_distributed_environment,
        destroy_model_parallel,
        init_distributed_environment,
        initialize_model_parallel,
    )

    from vidllm.serving.plugin import register
    from vidllm.serving.vllm_model import VidLMForCausalLM

    register()
    args = {
        "dtype": "float32",
        "skip_tokenizer_init": True,
        "kv_cache_memory_bytes": 1 << 26,
        **engine_kwargs,
    }
    vllm_config = EngineArgs(model=str(lm_dir), **args).create_engine_config()
    with tempfile.TemporaryDirectory() as tmp, set_current_vllm_config(vllm_config):
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"file://{os.path.join(tmp, 'dist')}",
            backend="gloo",
        )
        try:
            initialize_model_parallel(1, 1)
            yield VidLMForCausalLM(vllm_config=vllm_config)
        finally:
            destroy_model_parallel()
            destroy_distributed_environment()


__all__ = [
    "QUESTIONS",
    "TINY_FFN_LAYOUTS",
    "standalone_vllm_model",
    "tiny_vidlm_videollm",
    "write_clips",
]
