"""TNT: Transformer in Transformer.

Paper: Han et al., "Transformer in Transformer", NeurIPS 2021 (https://arxiv.org/abs/2103.00112),
Sec. 2.2 (the TNT block: an inner transformer over the 4x4 "visual words" of each 16x16 patch, whose
output is projected and added to the patch embedding before the outer transformer), Table 1 (TNT-S:
inner 24 / outer 384 channels, 4 / 6 heads; TNT-B: 40 / 640, 4 / 10; depth 12, MLP ratio 4).
Official code: huawei-noah/Efficient-AI-Backbones, ``tnt_pytorch/tnt.py``.

timm ships the same models (``tnt_s_patch16_224``, ``tnt_b_patch16_224``); our module and parameter
names are timm's, so a timm checkpoint loads unchanged and gives the same logits, and
:func:`checkpoint_filter_fn` maps the official release's names (``outer_pos``, ``inner_attn``, ...)
to them. Differences from both: the position embedding of the patches is resampled to the input's
patch grid (any size that is a multiple of the patch size, not only 224), the patches are cut with a
reshape instead of ``nn.Unfold``, and attention uses the fused ``F.scaled_dot_product_attention``
(same result to float rounding, fewer passes over memory).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import DropPath, Mlp, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from torch import nn

from efficient_backbones._builder import build_model_with_cfg, default_cfg
from efficient_backbones._registry import register_model
from efficient_backbones.layers import attention_flops  # noqa: F401  (counts CPU SDPA in FlopCounterMode)

__all__ = ["TNT", "TNT_CFGS", "checkpoint_filter_fn"]

logger = logging.getLogger(__name__)

# Paper Table 1; the official code and timm agree.
TNT_CFGS: dict[str, dict[str, Any]] = {
    "tnt_s_patch16_224": {"embed_dim": 384, "inner_dim": 24, "num_heads_outer": 6, "num_heads_inner": 4},
    "tnt_b_patch16_224": {"embed_dim": 640, "inner_dim": 40, "num_heads_outer": 10, "num_heads_inner": 4},
}


class Attention(nn.Module):
    """Multi-head self-attention with separate ``qk`` and ``v`` projections (the official layout)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k = self.qk(x).view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """One TNT block (paper Eq. 2-5): inner transformer on words, word -> patch projection, outer transformer.

    ``pixel_embed`` is ``(B * N, num_pixel, inner_dim)`` (the words of every patch), ``patch_embed``
    is ``(B, 1 + N, embed_dim)`` (class token first).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_pixel: int,
        num_heads_in: int = 4,
        num_heads_out: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm_in = norm_layer(dim)
        self.attn_in = Attention(dim, num_heads_in, qkv_bias, attn_drop, proj_drop)
        self.norm_mlp_in = norm_layer(dim)
        self.mlp_in = Mlp(dim, int(dim * mlp_ratio), dim, act_layer=act_layer, drop=proj_drop)
        self.norm1_proj = norm_layer(dim * num_pixel)
        self.proj = nn.Linear(dim * num_pixel, dim_out, bias=False)
        self.norm2_proj = norm_layer(dim_out)
        self.norm_out = norm_layer(dim_out)
        self.attn_out = Attention(dim_out, num_heads_out, qkv_bias, attn_drop, proj_drop)
        self.norm_mlp = norm_layer(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), dim_out, act_layer=act_layer, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self, pixel_embed: torch.Tensor, patch_embed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_embed = pixel_embed + self.drop_path(self.attn_in(self.norm_in(pixel_embed)))
        pixel_embed = pixel_embed + self.drop_path(self.mlp_in(self.norm_mlp_in(pixel_embed)))
        B, N, _ = patch_embed.shape
        words = self.norm2_proj(self.proj(self.norm1_proj(pixel_embed.reshape(B, N - 1, -1))))
        # The class token has no words: add the projection to the patch tokens only.
        patch_embed = torch.cat([patch_embed[:, :1], patch_embed[:, 1:] + words], dim=1)
        patch_embed = patch_embed + self.drop_path(self.attn_out(self.norm_out(patch_embed)))
        patch_embed = patch_embed + self.drop_path(self.mlp(self.norm_mlp(patch_embed)))
        return pixel_embed, patch_embed


class PixelEmbed(nn.Module):
    """Cut the image into patches and embed each patch's words with a strided 7x7 conv.

    The conv runs on each patch on its own (zero padding at every patch border), as in the paper and
    the official code, so it is not a conv over the whole image.
    """

    def __init__(
        self, patch_size: int | tuple[int, int] = 16, in_chans: int = 3, in_dim: int = 48, stride: int = 4
    ):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.in_dim = in_dim
        self.new_patch_size = tuple(math.ceil(p / stride) for p in self.patch_size)
        self.proj = nn.Conv2d(in_chans, in_dim, kernel_size=7, padding=3, stride=stride)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size[0], width // self.patch_size[1]

    def forward(self, x: torch.Tensor, pixel_pos: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B * N, words per patch, in_dim)``; a remainder past the last patch is dropped."""
        B, C, H, W = x.shape
        gh, gw = self.grid_size(H, W)
        ph, pw = self.patch_size
        if gh == 0 or gw == 0:
            raise ValueError(f"input {H}x{W} is smaller than one {ph}x{pw} patch")
        x = x[:, :, : gh * ph, : gw * pw].reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        x = self.proj(x.reshape(B * gh * gw, C, ph, pw)) + pixel_pos
        # Contiguous once here: residual adds keep their input's layout, so a transposed view would make
        # every block's LayerNorms and word->patch reshape copy it again.
        return x.flatten(2).transpose(1, 2).contiguous()


class TNT(nn.Module):
    """Transformer in Transformer (paper Sec. 2.2); timm's module layout.

    Args:
        img_size: the size the patch position embedding is stored for; other sizes resample it.
        patch_size: side of the outer patches ("visual sentences").
        embed_dim: outer (patch) channels. inner_dim: inner (word) channels.
        first_stride: stride of the word-embedding conv inside a patch (16 / 4 -> 4x4 words).
        global_pool: ``"token"`` (class token, as published), ``"avg"`` (mean of patch tokens) or ``""``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        inner_dim: int = 48,
        depth: int = 12,
        num_heads_inner: int = 4,
        num_heads_outer: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        first_stride: int = 4,
    ) -> None:
        super().__init__()
        if global_pool not in ("", "token", "avg"):
            raise ValueError(f"global_pool must be '', 'token' or 'avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.pixel_embed = PixelEmbed(patch_size, in_chans, inner_dim, first_stride)
        img_size = to_2tuple(img_size)
        self.grid_size = self.pixel_embed.grid_size(*img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        new_patch_size = self.pixel_embed.new_patch_size
        num_pixel = new_patch_size[0] * new_patch_size[1]

        self.norm1_proj = norm_layer(num_pixel * inner_dim)
        self.proj = nn.Linear(num_pixel * inner_dim, embed_dim)
        self.norm2_proj = norm_layer(embed_dim)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_pos = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.pixel_pos = nn.Parameter(torch.zeros(1, inner_dim, *new_patch_size))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(
                inner_dim,
                embed_dim,
                num_pixel,
                num_heads_inner,
                num_heads_outer,
                mlp_ratio,
                qkv_bias,
                proj_drop_rate,
                attn_drop_rate,
                dpr[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        reduction = max(self.pixel_embed.patch_size)
        self.feature_info = [
            {"module": f"blocks.{i}", "num_chs": embed_dim, "reduction": reduction} for i in range(depth)
        ]
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.patch_pos, std=0.02)
        trunc_normal_(self.pixel_pos, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"patch_pos", "pixel_pos", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            "stem": r"^cls_token|patch_pos|pixel_pos|pixel_embed|norm[12]_proj|proj",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("", "token", "avg"):
                raise ValueError(f"global_pool must be '', 'token' or 'avg', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _patch_pos_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid_size:
            return self.patch_pos
        return resample_abs_pos_embed(
            self.patch_pos, new_size=list(grid), old_size=list(self.grid_size), num_prefix_tokens=1
        )

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        B, _, H, W = x.shape
        grid = self.pixel_embed.grid_size(H, W)
        pixel_embed = self.pixel_embed(x, self.pixel_pos)
        patch_embed = self.norm2_proj(
            self.proj(self.norm1_proj(pixel_embed.reshape(B, grid[0] * grid[1], -1)))
        )
        patch_embed = torch.cat((self.cls_token.expand(B, -1, -1), patch_embed), dim=1)
        patch_embed = self.pos_drop(patch_embed + self._patch_pos_for(grid))
        return pixel_embed, patch_embed, grid

    def _run_block(self, block: nn.Module, pixel_embed: torch.Tensor, patch_embed: torch.Tensor):
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, pixel_embed, patch_embed)
        return block(pixel_embed, patch_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens ``(B, 1 + N, embed_dim)``, class token first."""
        pixel_embed, patch_embed, _ = self._embed(x)
        for block in self.blocks:
            pixel_embed, patch_embed = self._run_block(block, pixel_embed, patch_embed)
        return self.norm(patch_embed)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of the blocks in ``indices`` (timm's contract), as maps or token sequences."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        pixel_embed, patch_embed, (gh, gw) = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            pixel_embed, patch_embed = self._run_block(block, pixel_embed, patch_embed)
            if i in take_indices:
                intermediates.append(self.norm(patch_embed) if norm else patch_embed)
        prefix = [y[:, : self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens :] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [y.reshape(B, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(patch_embed), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def patch_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised patch tokens without the class token, row-major over the patch grid."""
        _, _, H, W = images.shape
        return self.forward_features(images)[:, self.num_prefix_tokens :], self.pixel_embed.grid_size(H, W)


# Official names (tnt_pytorch/tnt.py) -> ours (timm's), applied to the last name segments.
_OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.", "pixel_embed."),
    (r"^outer_pos$", "patch_pos"),
    (r"^inner_pos$", "pixel_pos"),
    (r"(^|\.)proj_norm([12])\.", r"\1norm\2_proj."),
    (r"\.inner_norm1\.", ".norm_in."),
    (r"\.inner_attn\.", ".attn_in."),
    (r"\.inner_norm2\.", ".norm_mlp_in."),
    (r"\.inner_mlp\.", ".mlp_in."),
    (r"\.outer_norm1\.", ".norm_out."),
    (r"\.outer_attn\.", ".attn_out."),
    (r"\.outer_norm2\.", ".norm_mlp."),
    (r"\.outer_mlp\.", ".mlp."),
)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: TNT) -> dict[str, torch.Tensor]:
    """Official TNT release or timm checkpoint -> our (timm's) layout, resized to ``model``'s grid.

    The official layout differs in names only, plus: ``inner_pos`` is stored per word
    ``(1, words, inner_dim)`` rather than as a ``(1, inner_dim, h, w)`` map, and an unused buffer-like
    parameter ``outer_tokens`` (``requires_grad=False``, never read in ``forward``) is dropped.
    """
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key == "outer_tokens":
            continue
        for pattern, repl in _OFFICIAL_RENAMES:
            key = re.sub(pattern, repl, key)
        if key == "pixel_pos" and value.ndim == 3:
            h, w = model.pixel_embed.new_patch_size
            value = value.transpose(1, 2).reshape(value.shape[0], value.shape[2], h, w)
        out[key] = value
    if "patch_pos" in out and out["patch_pos"].shape != model.patch_pos.shape:
        out["patch_pos"] = resample_abs_pos_embed(
            out["patch_pos"], new_size=list(model.grid_size), num_prefix_tokens=1
        )
    return out


def _cfg(release: str, **kwargs: Any) -> dict[str, Any]:
    return default_cfg(
        url=f"https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download/tnt/{release}",
        pool_size=None,
        crop_pct=0.9,
        mean=IMAGENET_INCEPTION_MEAN,
        std=IMAGENET_INCEPTION_STD,
        first_conv="pixel_embed.proj",
        classifier="head",
        paper_ids="arXiv:2103.00112",
        **kwargs,
    )


default_cfgs: dict[str, dict[str, Any]] = {
    "tnt_s_patch16_224": _cfg("tnt_s_81.5.pth.tar"),
    "tnt_b_patch16_224": _cfg("tnt_b_82.9.pth.tar"),
}


def _create_tnt(variant: str, pretrained: bool = False, **kwargs: Any) -> TNT:
    out_indices = kwargs.pop("out_indices", 3)
    kwargs = {"patch_size": 16, "depth": 12, **TNT_CFGS[variant], **kwargs}
    return build_model_with_cfg(
        TNT,
        variant,
        pretrained,
        default_cfgs=default_cfgs,
        checkpoint_filter_fn=checkpoint_filter_fn,
        feature_cfg={"out_indices": out_indices, "feature_cls": "getter"},
        **kwargs,
    )


@register_model
def tnt_s_patch16_224(pretrained: bool = False, **kwargs: Any) -> TNT:
    """TNT-S: 384 / 24 channels, 6 / 4 heads, 12 blocks (23.8 M params, 5.2 G MACs)."""
    return _create_tnt("tnt_s_patch16_224", pretrained, **kwargs)


@register_model
def tnt_b_patch16_224(pretrained: bool = False, **kwargs: Any) -> TNT:
    """TNT-B: 640 / 40 channels, 10 / 4 heads, 12 blocks (65.6 M params, 14.1 G MACs)."""
    return _create_tnt("tnt_b_patch16_224", pretrained, **kwargs)
