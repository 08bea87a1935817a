"""Tiny, randomly initialised video LLMs built locally (no hub), for tests and smoke runs.

Every part is the real class the bundled model uses, at toy size: a timm ViT tower at 32 px (a
4x4 patch grid), a tiny open_clip relevance scorer built from a config, a word-level tokenizer
built with ``tokenizers``, and a 2-layer causal LM (the project's VidLM, or a transformers Llama).
"""

from __future__ import annotations

from typing import Any

import torch

WORDS = [
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "circle",
    "square",
    "triangle",
    "star",
    "left",
    "right",
    "up",
    "down",
    "yes",
    "no",
    "a",
    "the",
    "is",
    "what",
    "color",
    "colour",
    "shape",
    "how",
    "many",
    "which",
    "appears",
    "first",
    "or",
    "does",
    "move",
    "in",
    "video",
    "(",
    ")",
    "A",
    "B",
    "C",
    "D",
    ".",
    ":",
    ",",
    "?",
    "s",
    "question",
    "answer",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
]

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def word_tokenizer(words: tuple[str, ...] | list[str] = tuple(WORDS)):
    """A word-level fast tokenizer (``<s>`` + text) over ``words``; digits split one by one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*specials, *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_lm(vocab_size: int, kind: str = "llama", *, tokenizer=None, **overrides: Any):
    """A 2-layer causal LM: ``"llama"`` (transformers) or a VidLM FFN type (``"dense"``, ``"versatile"``, ...)."""
    ids = {}
    if tokenizer is not None:
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    size = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 2048,
        **ids,
        **overrides,
    }
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(**size))
    from vidllm.lm import VidLMConfig, VidLMForCausalLM

    return VidLMForCausalLM(VidLMConfig(ffn_type=kind, **size))


def tiny_video_llm(
    lm_kind: str = "llama",
    *,
    seed: int = 0,
    num_frames: int = 8,
    reducer: dict[str, Any] | None = None,
    lm_overrides: dict[str, Any] | None = None,
    visual_positions: bool = False,
    relevance_inputs: bool = False,
    motion_inputs: bool = False,
):
    """A tiny :class:`vidllm.model.VideoLLM` (random weights, deterministic per ``seed``).

    ``lm_overrides`` changes the LM's config (e.g. a larger ``hidden_size`` for benchmarks).
    """
    from vidllm.model import VideoLLM, VideoLLMConfig
    from vidllm.scorers import OpenCLIPScorer
    from vidllm.towers import BackboneTower

    torch.manual_seed(seed)
    tower = BackboneTower(
        "vit_tiny_patch16_224",
        image_size=32,
        model_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    )
    scorer = OpenCLIPScorer(model_cfg=TINY_OPEN_CLIP_CFG)
    tokenizer = word_tokenizer()
    lm = tiny_lm(len(tokenizer), lm_kind, tokenizer=tokenizer, **(lm_overrides or {}))
    reducer = reducer or {"num_frames": num_frames, "slow_frames": 2, "middle_frames": 2, "fast_grid": [2, 2]}
    config = VideoLLMConfig(
        tower=tower.to_spec(),
        scorer=scorer.to_spec(),
        reducer=reducer,
        max_new_tokens=4,
        visual_positions=visual_positions,
        relevance_inputs=relevance_inputs,
        motion_inputs=motion_inputs,
    )
    return VideoLLM(config, tower, lm, tokenizer, scorer).eval()
