"""Tiny CLIP models built locally (no hub), for the tower and scorer tests.

Besides randomly initialised models, :func:`plant_red_detector_open_clip` and
:func:`plant_red_detector_hf` set a tiny CLIP's weights so that its similarities are known in
closed form: every transformer block is made the identity (attention and MLP output projections
zeroed), the patch embedding measures "red minus green" over a patch, and the text tower embeds
every question as the first axis of the embedding space. A red patch then scores
``+1/sqrt(2)`` and a grey one ``-1/sqrt(2)``, and (with average pooling) a frame's score grows
with its number of red patches. Tests check the scorers against these values, not against
numbers copied from a run.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

RED = (255, 0, 0)
GREY = (128, 128, 128)

OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def open_clip_cfg(image_size: int = 32, patch_size: int = 8, pool_type: str = "tok", layers: int = 2) -> dict:
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in OPEN_CLIP_CFG.items()}
    cfg["vision_cfg"].update(image_size=image_size, patch_size=patch_size, pool_type=pool_type, layers=layers)
    return cfg


def tiny_open_clip(cfg: dict | None = None, seed: int = 0):
    """A random tiny open_clip CLIP and its tokenizer, through the same builder the scorers use."""
    from vidllm._vision import build_open_clip

    torch.manual_seed(seed)
    return build_open_clip(model_cfg=cfg or OPEN_CLIP_CFG)


def hf_tokenizer():
    """A small word-level tokenizer in transformers' fast-tokenizer form (BOS ... EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["what", "is", "the", "dog", "doing", "a", "cat", "red", "ball", "where", "colour", "in", "video"]
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 1), ("[EOS]", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )


def tiny_hf_clip(image_size: int = 32, patch_size: int = 8, seed: int = 0):
    """A random tiny transformers CLIPModel and a tokenizer that matches its vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 32,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=16,
    )
    return CLIPModel(config).eval(), hf_tokenizer()


def _red_minus_green(conv: nn.Conv2d) -> None:
    """Output channel 0 = sum over the patch of (normalised R - normalised G); channel 1 = minus that."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[0, 1] = -1.0
        conv.weight[1] = -conv.weight[0]
        if conv.bias is not None:
            conv.bias.zero_()


def plant_red_detector_open_clip(model) -> None:
    """See the module docstring. Patch embedding (after ``ln_post`` and ``proj``): red ->
    ``(sqrt(w/2), sqrt(w/2), 0, ...)``, grey -> ``(-sqrt(w/2), sqrt(w/2), 0, ...)``; text -> ``e0``."""
    visual = model.visual
    width = visual.conv1.out_channels
    a = math.sqrt(width / 2)  # LayerNorm of (s, -s, 0, ..., 0) is (±a, ∓a, 0, ...)
    with torch.no_grad():
        _red_minus_green(visual.conv1)
        visual.positional_embedding.zero_()
        visual.class_embedding.zero_()
        for block in visual.transformer.resblocks:
            block.attn.out_proj.weight.zero_()
            block.attn.out_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
        visual.ln_post.weight.fill_(1.0)
        visual.ln_post.bias.zero_()
        visual.ln_post.bias[2] = a
        visual.proj.zero_()
        visual.proj[0, 0] = 1.0  # red-green axis -> e0
        visual.proj[2, 1] = 1.0  # constant offset -> e1
        model.ln_final.weight.zero_()
        model.ln_final.bias.zero_()
        model.ln_final.bias[0] = 1.0
        model.text_projection.zero_()
        model.text_projection[0, 0] = 1.0


def plant_red_detector_hf(model) -> None:
    """The same closed form for a transformers CLIPModel (its frame score is the class token's,
    which is constant here, so only the patch scores are informative)."""
    vision = model.vision_model
    width = vision.config.hidden_size
    a = math.sqrt(width / 2)
    with torch.no_grad():
        _red_minus_green(vision.embeddings.patch_embedding)
        vision.embeddings.position_embedding.weight.zero_()
        vision.embeddings.class_embedding.zero_()
        vision.embeddings.class_embedding[0] = 1.0
        for layer in vision.encoder.layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
            layer.mlp.fc2.weight.zero_()
            layer.mlp.fc2.bias.zero_()
        vision.post_layernorm.weight.fill_(1.0)
        vision.post_layernorm.bias.zero_()
        vision.post_layernorm.bias[2] = a
        model.visual_projection.weight.zero_()
        model.visual_projection.weight[0, 0] = 1.0
        model.visual_projection.weight[1, 2] = 1.0
        text = model.text_model
        text.final_layer_norm.weight.zero_()
        text.final_layer_norm.bias.zero_()
        text.final_layer_norm.bias[0] = 1.0
        model.text_projection.weight.zero_()
        model.text_projection.weight[0, 0] = 1.0


def red_patch_frames(grid: tuple[int, int], cell: int, red_cells: list[list[tuple[int, int]]]) -> np.ndarray:
    """Grey frames of ``grid`` cells of ``cell`` pixels, frame ``t`` with ``red_cells[t]`` painted red."""
    h, w = grid
    frames = np.empty((len(red_cells), h * cell, w * cell, 3), dtype=np.uint8)
    frames[:] = GREY
    for t, cells in enumerate(red_cells):
        for i, j in cells:
            frames[t, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell] = RED
    return frames


# -- a tiny dual encoder for DualEncoderScorer ---------------------------------------------------


class TinyImageEncoder(nn.Module):
    """Patchify conv -> GELU -> 1x1 projection; global = mean of the projected patch map."""

    def __init__(self, dim: int = 16, patch: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, patch, stride=patch)
        self.proj = nn.Conv2d(24, dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = self.proj(nn.functional.gelu(self.stem(x)))
        return patches.mean(dim=(2, 3)), patches


class TinyTextEncoder(nn.Module):
    """Masked mean of token embeddings, then a projection."""

    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 24)
        self.proj = nn.Linear(24, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        x = self.embed(input_ids) * mask[..., None]
        return self.proj(x.sum(1) / mask.sum(1, keepdim=True).clamp(min=1))


def build_dual_encoder_scorer(seed: int = 0, image_size: int = 32):
    """A registered-builder target for ``{"kind": "dual_encoder", "builder": "tiny_clip:build_dual_encoder_scorer"}``."""
    from vidllm.scorers import DualEncoderScorer

    torch.manual_seed(seed)
    return DualEncoderScorer(TinyImageEncoder(), TinyTextEncoder(), hf_tokenizer(), image_size=image_size)
