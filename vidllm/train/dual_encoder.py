"""The project's own CLIP-style dual encoder: the relevance scorer of the bundled model.

No pretrained CLIP can be downloaded here, so the Free Video-LLM reducer's text-frame relevance
(Han et al., 2024, arXiv:2410.10441, Sec. 3.2: CLIP image-text cosine for frame selection and
patch-text cosine for the region of interest) comes from a small dual encoder trained on the
synthetic world (:mod:`vidllm.train.scorer_training`):

- image tower: a zoo backbone (``efficient_backbones``, by default a GhostNet cut after its
  stride-8 stage: Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020) whose
  feature map is projected per cell into the joint space (the patch map, CLIP's projected patch
  tokens), whose max and mean over the cells make the frame's global embedding (a small object
  covers one cell of the grid, so presence needs the max);
- text tower: a small Transformer encoder over the project tokenizer
  (:mod:`vidllm.train.tokenizer`), masked-mean pooled and projected into the same space.

It plugs into the reducer through :class:`vidllm.scorers.DualEncoderScorer`, and a saved
``VideoLLM`` names it by a spec ``{"kind": "dual_encoder", "builder":
"vidllm.train.dual_encoder:build_scorer", "config": {...}, "tokenizer_json": "..."}``; the
weights travel in the model's own safetensors file, the tokenizer inside the spec, so the model
directory is all a load needs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidllm.data.synthetic.scene import COLORS, SHAPES

logger = logging.getLogger(__name__)

BUILDER = "vidllm.train.dual_encoder:build_scorer"


@dataclass
class DualEncoderConfig:
    """Architecture of the dual encoder (JSON-able: it is stored in the model's scorer spec).

    Attributes:
        backbone: zoo model name of the image tower (``efficient_backbones`` first, then timm).
        backbone_kwargs: constructor arguments of the backbone (e.g. a truncated ``block_cfgs``).
        image_size: input side in pixels.
        embed_dim: width of the joint embedding space.
        patch_hidden: width of the per-cell MLP before the projection.
        vocab_size, pad_token_id: of the project tokenizer.
        text_width, text_layers, text_heads, max_text_length: the text Transformer.
    """

    backbone: str = "ghostnet_100"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64
    embed_dim: int = 64
    patch_hidden: int = 128
    vocab_size: int = 512
    pad_token_id: int = 0
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_text_length: int = 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def create_backbone(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """A zoo (or timm) model by name, without a classifier: what towers and scorers cut features from."""
    import timm

    import efficient_backbones as eb

    kwargs = {"num_classes": 0, **kwargs}
    if eb.is_model(name):
        return eb.create_model(name, **kwargs)
    return timm.create_model(name, **kwargs)


class ImageEncoder(nn.Module):
    """Backbone feature map -> ``(global (B, D), patches (B, D, h, w))`` in the joint space."""

    def __init__(self, config: DualEncoderConfig) -> None:
        super().__init__()
        self.backbone = create_backbone(config.backbone, config.backbone_kwargs)
        with torch.no_grad():
            channels = self.backbone.forward_features(
                torch.zeros(1, 3, config.image_size, config.image_size)
            ).shape[1]
        self.patch_mlp = nn.Sequential(
            nn.Conv2d(channels, config.patch_hidden, 1),
            nn.GELU(),
            nn.Conv2d(config.patch_hidden, config.embed_dim, 1),
        )
        self.global_proj = nn.Linear(2 * config.embed_dim, config.embed_dim)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(self.backbone.forward_features(pixels))

    def embed(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone feature map -> ``(global, patches)``."""
        patches = self.patch_mlp(features)
        # The global embedding pools the patch embeddings, which the patch loss already aligns
        # with the text: the max keeps what a single cell shows, the mean what the frame is like.
        pooled = torch.cat([patches.amax(dim=(2, 3)), patches.mean(dim=(2, 3))], dim=1)
        return self.global_proj(pooled), patches


class TextEncoder(nn.Module):
    """Token ids -> ``(B, D)``: a pre-norm Transformer encoder, masked mean pooling, a projection."""

    def __init__(self, config: DualEncoderConfig) -> None:
        super().__init__()
        self.max_length = config.max_text_length
        self.pad_token_id = config.pad_token_id
        self.embed = nn.Embedding(config.vocab_size, config.text_width, padding_idx=config.pad_token_id)
        self.position = nn.Parameter(torch.zeros(config.max_text_length, config.text_width))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.text_width,
            config.text_heads,
            dim_feedforward=4 * config.text_width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.text_width)
        self.proj = nn.Linear(config.text_width, config.embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        input_ids = input_ids[:, : self.max_length]  # a longer question is read up to the limit
        if attention_mask is None:
            attention_mask = input_ids.ne(self.pad_token_id)
        mask = attention_mask[:, : input_ids.shape[1]].bool()
        x = self.embed(input_ids) + self.position[: input_ids.shape[1]]
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.proj(pooled)


class DualEncoder(nn.Module):
    """Both towers, plus what only training uses.

    ``frame_logit`` / ``patch_logit`` hold SigLIP's ``(log t, b)`` (Zhai et al., 2023, "Sigmoid
    Loss for Language Image Pre-Training"): ``logit = exp(log t) * cos + b``; the scorer uses raw
    cosines. ``attribute_head`` names the colour and shape in each cell of the backbone's map
    (dense labels from the scene annotations): the backbone learns the world's vocabulary much
    faster from it than from frame-text pairs alone, and the video LLM's tower starts from it.
    It also regresses each cell's own position in the frame: a CNN can encode absolute position
    through its zero padding (Islam et al., "How Much Position Information Do Convolutional
    Neural Networks Encode?", ICLR 2020), and asking for it puts where an object is into the
    features the LM reads (which direction an object moves is a change of position; the prompt
    layout gives the LM no coordinates).
    """

    def __init__(self, config: DualEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.frame_logit = nn.Parameter(torch.tensor([2.3, -5.0]))
        self.patch_logit = nn.Parameter(torch.tensor([2.3, -5.0]))
        channels = self.image_encoder.patch_mlp[0].in_channels
        self.attribute_head = nn.Conv2d(channels, len(COLORS) + 1 + len(SHAPES) + 1 + 2, 1)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frame logits ``(F, T)``, patch logits ``(F, T, h, w)`` of every frame-text pair, and
        per-cell attribute outputs ``(F, colours + 1 + shapes + 1 + 2, h, w)``: colour and shape
        logits (the extra class of each is "no object") and the cell's own (x, y) centre."""
        features = self.image_encoder.backbone.forward_features(pixels)
        image, patches = self.image_encoder.embed(features)
        frame, patch = self.logits(image, patches, self.text_encoder(input_ids, attention_mask))
        return frame, patch, self.attribute_head(features)

    def logits(
        self, image: torch.Tensor, patches: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame logits ``(F, T)`` and patch logits ``(F, T, h, w)`` of every frame-text pair."""
        image = F.normalize(image, dim=-1)
        patches = F.normalize(patches, dim=1)
        text = F.normalize(text, dim=-1)
        frame = self.frame_logit[0].exp() * image @ text.T + self.frame_logit[1]
        patch = self.patch_logit[0].exp() * torch.einsum("fdhw,td->fthw", patches, text) + self.patch_logit[1]
        return frame, patch


def tokenizer_from_json(tokenizer_json: str):
    """The project tokenizer (a ``PreTrainedTokenizerFast``) from its ``tokenizers`` JSON."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from vidllm.train.tokenizer import BOS, EOS, PAD, UNK

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
    )


def make_scorer(model: DualEncoder, tokenizer, *, frozen: bool = True):
    """A :class:`vidllm.scorers.DualEncoderScorer` over ``model``'s towers, describable by a spec."""
    from vidllm.scorers import DualEncoderScorer

    scorer = DualEncoderScorer(
        model.image_encoder,
        model.text_encoder,
        tokenizer,
        image_size=model.config.image_size,
        frozen=frozen,
    )
    scorer._spec = {
        "builder": BUILDER,
        "config": model.config.to_dict(),
        "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
    }
    return scorer


def build_scorer(config: dict[str, Any], tokenizer_json: str):
    """The spec builder (``{"kind": "dual_encoder", "builder": BUILDER, ...}``): the scorer's
    architecture with fresh weights; ``VideoLLM.from_pretrained`` loads the trained ones."""
    model = DualEncoder(DualEncoderConfig(**config))
    return make_scorer(model, tokenizer_from_json(tokenizer_json))


__all__ = [
    "BUILDER",
    "DualEncoder",
    "DualEncoderConfig",
    "ImageEncoder",
    "TextEncoder",
    "build_scorer",
    "create_backbone",
    "make_scorer",
    "tokenizer_from_json",
]
