"""Vision GNN (ViG): isotropic ``vig_*`` and pyramid ``pvig_*`` models.

Paper: Han et al., "Vision GNN: An Image is Worth Graph of Nodes", NeurIPS 2022
(https://arxiv.org/abs/2206.00272): Sec. 3.2 (ViG block: Grapher = fc -> max-relative graph conv ->
fc with a residual, then an FFN with a residual), Sec. 3.3 and Table 1-2 (isotropic ViG-Ti/S/B: 192 /
320 / 640 channels, 12 / 16 / 16 blocks; pyramid ViG-Ti/S/M/B with four stages). Official code:
huawei-noah/Efficient-AI-Backbones, ``vig_pytorch/vig.py`` and ``vig_pytorch/pyramid_vig.py``, whose
layer order, stems, head and schedules are followed:

* isotropic: stem of four stride-2 3x3 convs and a stride-1 one (16x), learned position embedding,
  ``k`` growing linearly from 9 to 18 over the blocks, dilation ``min(i // 4 + 1, nodes // max k)``;
* pyramid: stride-4 stem, stride-2 conv downsampling between stages, ``k = 9`` everywhere, keys of the
  graph average-pooled by ``[4, 2, 1, 1]`` per stage, a fixed (not trained: ``requires_grad=False`` in
  the official code) sine-cosine relative position term added to the node distances, dilation
  ``min(i // 4 + 1, last-stage nodes // 9)``;
* head: global average pool -> 1x1 conv to 1024 -> BN -> GELU -> dropout -> classifier.

Graph sizes follow the input: the position embedding is resized to the stem's output grid, the
relative position table is built for each stage's actual grid, and ``k`` / dilation are clamped when
a small input has fewer keys than ``k * dilation``. The official code hard-codes the 224-px grids
(``14 x 14``, ``56 x 56``, ``196`` and ``49`` nodes). Module names differ from the official flat
``backbone.{i}`` list (timm's ``blocks`` / ``stages`` / ``head``); :func:`checkpoint_filter_fn` maps
one onto the other.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from torch import nn

from efficient_backbones._builder import build_model_with_cfg, default_cfg
from efficient_backbones._features import PatchTokensMixin
from efficient_backbones._registry import register_model
from efficient_backbones.layers.graph import MaxRelativeGraphConv, relative_position_bias

__all__ = ["PVIG_CFGS", "VIG_CFGS", "PyramidVisionGNN", "VisionGNN", "checkpoint_filter_fn"]

logger = logging.getLogger(__name__)

VIG_CFGS: dict[str, dict[str, Any]] = {
    "vig_ti_224": {"embed_dim": 192, "depth": 12},
    "vig_s_224": {"embed_dim": 320, "depth": 16},
    "vig_b_224": {"embed_dim": 640, "depth": 16},
}
PVIG_CFGS: dict[str, dict[str, Any]] = {
    "pvig_ti_224": {"embed_dims": (48, 96, 240, 384), "depths": (2, 2, 6, 2)},
    "pvig_s_224": {"embed_dims": (80, 160, 400, 640), "depths": (2, 2, 6, 2)},
    "pvig_m_224": {"embed_dims": (96, 192, 384, 768), "depths": (2, 2, 16, 2)},
    "pvig_b_224": {"embed_dims": (128, 256, 512, 1024), "depths": (2, 2, 18, 2)},
}


def _halved(size: int, times: int) -> int:
    """Output size after ``times`` 3x3 stride-2 convs with padding 1."""
    for _ in range(times):
        size = (size - 1) // 2 + 1
    return size


def _dilations(num_blocks: int, max_dilation: int) -> list[int]:
    return [min(i // 4 + 1, max(1, max_dilation)) for i in range(num_blocks)]


class Stem(nn.Module):
    """Overlapping conv stem: stride-2 3x3 conv + BN + act per width in ``widths``, then a stride-1 conv + BN."""

    def __init__(self, in_chans: int, widths: Sequence[int], act_layer: Callable[..., nn.Module] = nn.GELU):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for width in widths:
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), act_layer()]
            prev = width
        layers += [nn.Conv2d(prev, prev, 3, stride=1, padding=1), nn.BatchNorm2d(prev)]
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class Grapher(nn.Module):
    """fc1 (1x1 conv + BN) -> max-relative graph conv (to 2C) -> fc2 (1x1 conv + BN) -> drop path + residual."""

    def __init__(
        self,
        dim: int,
        k: int = 9,
        dilation: int = 1,
        reduce_ratio: int = 1,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim))
        self.graph_conv = MaxRelativeGraphConv(dim, dim * 2, k, dilation, reduce_ratio, act_layer=act_layer)
        self.fc2 = nn.Sequential(nn.Conv2d(dim * 2, dim, 1), nn.BatchNorm2d(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, relative_pos: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.drop_path(self.fc2(self.graph_conv(self.fc1(x), relative_pos)))


class FFN(nn.Module):
    """1x1 conv + BN -> act -> 1x1 conv + BN, drop path + residual (4x expansion in ViG)."""

    def __init__(
        self, dim: int, hidden_dim: int, drop_path: float = 0.0, act_layer: Callable[..., nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Conv2d(dim, hidden_dim, 1), nn.BatchNorm2d(hidden_dim))
        self.act = act_layer()
        self.fc2 = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1), nn.BatchNorm2d(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.fc2(self.act(self.fc1(x))))


class ViGBlock(nn.Module):
    """Grapher followed by FFN (one official ``backbone.{i}`` entry: ``.0`` Grapher, ``.1`` FFN)."""

    def __init__(
        self,
        dim: int,
        k: int,
        dilation: int,
        reduce_ratio: int = 1,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.grapher = Grapher(dim, k, dilation, reduce_ratio, drop_path, act_layer)
        self.ffn = FFN(dim, int(dim * mlp_ratio), drop_path, act_layer)

    def forward(self, x: torch.Tensor, relative_pos: torch.Tensor | None = None) -> torch.Tensor:
        return self.ffn(self.grapher(x, relative_pos))


class ViGHead(nn.Module):
    """Pool -> 1x1 conv (C -> hidden) -> BN -> act -> dropout -> linear classifier (official ``prediction``)."""

    def __init__(
        self,
        in_chs: int,
        hidden_size: int,
        num_classes: int,
        drop_rate: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, hidden_size, 1)
        self.norm = nn.BatchNorm2d(hidden_size)
        self.act = act_layer()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.conv.out_channels, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act(self.norm(self.conv(x.mean(dim=(2, 3), keepdim=True)))).flatten(1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class _ViGBase(PatchTokensMixin, nn.Module):
    """What both ViG layouts share: position embedding, head, init and the timm interface."""

    trunk_name: str
    pos_embed: nn.Parameter
    head: ViGHead
    num_classes: int
    grad_checkpointing: bool

    def _init_weights(self) -> None:
        # Official DeepGCN.model_init: Kaiming-normal convs with zero bias; BN and Linear defaults.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _add_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos_embed
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
        return x + pos

    def _run(
        self, block: nn.Module, x: torch.Tensor, relative_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, x, relative_pos)
        return block(x, relative_pos)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"ViG pools by averaging only (global_pool='avg'), got {global_pool!r}")
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def _trunk(self) -> nn.Sequential:
        """The modules features are taken after: isotropic blocks, or pyramid stages."""
        return getattr(self, self.trunk_name)

    def _trunk_step(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._add_pos_embed(self.stem(x))
        for module in self._trunk():
            x = self._trunk_step(module, x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of the trunk modules in ``indices`` as ``(B, C, h, w)`` maps (timm's contract).

        ViG has no final norm, so ``norm`` changes nothing.
        """
        if output_fmt != "NCHW":
            raise ValueError("ViG features are NCHW maps")
        trunk = self._trunk()
        take_indices, max_index = feature_take_indices(len(trunk), indices)
        x = self._add_pos_embed(self.stem(x))
        intermediates = []
        for i, module in enumerate(trunk[: max_index + 1] if stop_early else trunk):
            x = self._trunk_step(module, x)
            if i in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self._trunk()), indices)
        setattr(self, self.trunk_name, self._trunk()[: max_index + 1])
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class VisionGNN(_ViGBase):
    """Isotropic ViG (paper Sec. 3.3, Table 1): one node per 16x16 patch, ``depth`` ViG blocks.

    Args:
        img_size: the size the position embedding is stored for (other sizes resize it) and that sets
            the dilation cap ``nodes // max k`` (official: ``196 // 18 = 10``).
        embed_dim: node channels. depth: blocks. num_knn: ``k`` of the first block; it grows linearly
            to ``max_knn`` (default ``2 * num_knn``) at the last.
        head_hidden_size: width of the head's 1x1 conv (1024).
    """

    trunk_name = "blocks"

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_knn: int = 9,
        max_knn: int | None = None,
        mlp_ratio: float = 4.0,
        head_hidden_size: int = 1024,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        act_layer: Callable[..., nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"ViG pools by averaging only (global_pool='avg'), got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = embed_dim
        self.head_hidden_size = head_hidden_size
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim], act_layer)
        grid = _halved(img_size, 4)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))

        # Schedules are host-side numbers: device="cpu" keeps them so under `with torch.device("meta")`.
        knn = [int(v) for v in torch.linspace(num_knn, max_knn or 2 * num_knn, depth, device="cpu").tolist()]
        dilations = _dilations(depth, grid * grid // max(knn))
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(
            *(
                ViGBlock(embed_dim, knn[i], dilations[i], 1, mlp_ratio, dpr[i], act_layer)
                for i in range(depth)
            )
        )
        self.feature_info = [
            {"module": f"blocks.{i}", "num_chs": embed_dim, "reduction": 16} for i in range(depth)
        ]
        self.head = ViGHead(embed_dim, head_hidden_size, num_classes, drop_rate, act_layer)
        self._init_weights()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^stem|pos_embed", "blocks": [(r"^blocks\.(\d+)", None), (r"^head", (99999,))]}

    def _trunk_step(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._run(block, x)


class PyramidStage(nn.Module):
    """Optional stride-2 conv downsample, then ViG blocks sharing one relative position table."""

    def __init__(
        self,
        in_chs: int,
        dim: int,
        knn: Sequence[int],
        dilations: Sequence[int],
        drop_paths: Sequence[float],
        reduce_ratio: int,
        downsample: bool,
        relative_pos: bool = True,
        mlp_ratio: float = 4.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.reduce_ratio = reduce_ratio
        self.use_relative_pos = relative_pos
        self.grad_checkpointing = False
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_chs, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *(
                ViGBlock(dim, k, d, reduce_ratio, mlp_ratio, dp, act_layer)
                for k, d, dp in zip(knn, dilations, drop_paths, strict=True)
            )
        )
        # A deterministic function of (grid, channels, ratio), rebuilt per input grid and not saved.
        self._relative_pos_cache: dict[tuple, torch.Tensor] = {}

    def relative_pos(
        self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor | None:
        if not self.use_relative_pos:
            return None
        key = (grid, device, dtype)
        table = self._relative_pos_cache.get(key)
        if table is None:
            if len(self._relative_pos_cache) >= 4:
                self._relative_pos_cache.clear()
            table = relative_position_bias(self.dim, grid, self.reduce_ratio, device=device, dtype=dtype)
            self._relative_pos_cache[key] = table
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        relative_pos = self.relative_pos(tuple(x.shape[-2:]), x.device, x.dtype)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, relative_pos)
            else:
                x = block(x, relative_pos)
        return x


class PyramidVisionGNN(_ViGBase):
    """Pyramid ViG (paper Sec. 3.3, Table 2): four stages at strides 4, 8, 16, 32.

    Args:
        img_size: the size the position embedding is stored for (other sizes resize it) and that sets
            the dilation cap ``last-stage nodes // max k`` (official: ``49 // 9 = 5``).
        embed_dims, depths: per-stage channels and blocks. num_knn: ``k`` of every block.
        reduce_ratios: key pooling per stage. relative_pos: add the relative position term.
    """

    trunk_name = "stages"

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (48, 96, 240, 384),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_knn: int = 9,
        reduce_ratios: Sequence[int] = (4, 2, 1, 1),
        relative_pos: bool = True,
        mlp_ratio: float = 4.0,
        head_hidden_size: int = 1024,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        act_layer: Callable[..., nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"ViG pools by averaging only (global_pool='avg'), got {global_pool!r}")
        if not len(embed_dims) == len(depths) == len(reduce_ratios):
            raise ValueError("embed_dims, depths and reduce_ratios need one entry per stage")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.num_features = embed_dims[-1]
        self.head_hidden_size = head_hidden_size
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, [embed_dims[0] // 2, embed_dims[0]], act_layer)
        grid = _halved(img_size, 2)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dims[0], grid, grid))

        num_blocks = sum(depths)
        last_grid = _halved(grid, len(depths) - 1)
        dilations = _dilations(num_blocks, last_grid * last_grid // num_knn)
        dpr = torch.linspace(0, drop_path_rate, num_blocks, device="cpu").tolist()
        stages, self.feature_info = [], []
        start, prev = 0, embed_dims[0]
        for i, (dim, depth, ratio) in enumerate(zip(embed_dims, depths, reduce_ratios)):
            blocks = slice(start, start + depth)
            stages.append(
                PyramidStage(
                    prev,
                    dim,
                    [num_knn] * depth,
                    dilations[blocks],
                    dpr[blocks],
                    ratio,
                    downsample=i > 0,
                    relative_pos=relative_pos,
                    mlp_ratio=mlp_ratio,
                    act_layer=act_layer,
                )
            )
            self.feature_info.append({"module": f"stages.{i}", "num_chs": dim, "reduction": 4 * 2**i})
            start, prev = start + depth, dim
        self.stages = nn.Sequential(*stages)
        self.head = ViGHead(embed_dims[-1], head_hidden_size, num_classes, drop_rate, act_layer)
        self._init_weights()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = (
            r"^stages\.(\d+)"
            if coarse
            else [(r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^stages\.(\d+)", (0,))]
        )
        return {"stem": r"^stem|pos_embed", "blocks": blocks}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def _trunk_step(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return stage(x)  # the stage handles its blocks' checkpointing


# Official module names inside one ViG block -> ours (after the block prefix is mapped).
_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^0\.graph_conv\.gconv\.nn\.0\.", "grapher.graph_conv.conv."),
    (r"^0\.graph_conv\.gconv\.nn\.1\.", "grapher.graph_conv.norm."),
    (r"^0\.", "grapher."),
    (r"^1\.", "ffn."),
)
_HEAD_RENAMES = {"0": "conv", "1": "norm", "4": "fc"}


def _official_backbone_prefixes(model: nn.Module) -> dict[int, str]:
    """Official ``backbone.{i}`` index -> our module prefix (a block, or a pyramid downsample)."""
    if isinstance(model, PyramidVisionGNN):
        prefixes, i = {}, 0
        for s, depth in enumerate(model.depths):
            if s > 0:
                prefixes[i] = f"stages.{s}.downsample."
                i += 1
            for b in range(depth):
                prefixes[i] = f"stages.{s}.blocks.{b}."
                i += 1
        return prefixes
    return {i: f"blocks.{i}." for i in range(len(model.blocks))}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official ViG / Pyramid ViG checkpoint (or ours) -> our layout, resized to ``model``'s grid.

    Official ``backbone.{i}.0`` (Grapher) / ``.1`` (FFN) become ``blocks.{i}.grapher`` / ``.ffn``
    (pyramid: ``stages.{s}.blocks.{j}``, and the downsample entries ``backbone.{i}.conv.{0,1}`` become
    ``stages.{s}.downsample.{0,1}``); ``graph_conv.gconv.nn.{0,1}`` -> ``graph_conv.{conv,norm}``;
    ``prediction.{0,1,4}`` -> ``head.{conv,norm,fc}`` (the classifier conv becomes a linear layer).
    The pyramid's stored ``relative_pos`` tables are dropped: they are fixed functions of the grid
    (never trained) that the model rebuilds for whatever input size it sees.
    """
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    prefixes = _official_backbone_prefixes(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.endswith(".relative_pos"):
            continue
        if match := re.match(r"^backbone\.(\d+)\.(.*)$", key):
            prefix, rest = prefixes[int(match.group(1))], match.group(2)
            if "downsample" in prefix:
                rest = rest.removeprefix("conv.")
            else:
                for pattern, repl in _BLOCK_RENAMES:
                    rest, n = re.subn(pattern, repl, rest)
                    if n:
                        break
            key = prefix + rest
        elif match := re.match(r"^prediction\.(\d+)\.(.*)$", key):
            key = f"head.{_HEAD_RENAMES[match.group(1)]}.{match.group(2)}"
            if key == "head.fc.weight" and value.ndim == 4:
                value = value.flatten(1)
        out[key] = value
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        out["pos_embed"] = F.interpolate(
            pos, size=model.pos_embed.shape[-2:], mode="bicubic", align_corners=False
        )
    return out


def _cfg(crop_pct: float = 0.9, **kwargs: Any) -> dict[str, Any]:
    return default_cfg(
        pool_size=None,
        crop_pct=crop_pct,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        first_conv="stem.convs.0",
        classifier="head.fc",
        paper_ids="arXiv:2206.00272",
        **kwargs,
    )


# The official weights are released on GitHub / BaiduDisk as files, not at stable URLs a loader
# could name; pretrained=True takes a local file ($EFFICIENT_BACKBONES_WEIGHTS or a file overlay).
default_cfgs: dict[str, dict[str, Any]] = {
    **{name: _cfg() for name in VIG_CFGS},
    **{name: _cfg(crop_pct=0.95 if name == "pvig_b_224" else 0.9) for name in PVIG_CFGS},
}


def _create_vig(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    if variant in VIG_CFGS:
        model_cls, arch, out_indices = VisionGNN, VIG_CFGS[variant], 3
    else:
        model_cls, arch, out_indices = PyramidVisionGNN, PVIG_CFGS[variant], (0, 1, 2, 3)
    out_indices = kwargs.pop("out_indices", out_indices)
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        default_cfgs=default_cfgs,
        checkpoint_filter_fn=checkpoint_filter_fn,
        feature_cfg={"out_indices": out_indices, "feature_cls": "getter"},
        **{**arch, **kwargs},
    )


@register_model
def vig_ti_224(pretrained: bool = False, **kwargs: Any) -> VisionGNN:
    """ViG-Ti: 192 channels, 12 blocks (7.18 M params, 1.30 G MACs)."""
    return _create_vig("vig_ti_224", pretrained, **kwargs)


@register_model
def vig_s_224(pretrained: bool = False, **kwargs: Any) -> VisionGNN:
    """ViG-S: 320 channels, 16 blocks (22.75 M params, 4.52 G MACs)."""
    return _create_vig("vig_s_224", pretrained, **kwargs)


@register_model
def vig_b_224(pretrained: bool = False, **kwargs: Any) -> VisionGNN:
    """ViG-B: 640 channels, 16 blocks (86.84 M params, 17.64 G MACs)."""
    return _create_vig("vig_b_224", pretrained, **kwargs)


@register_model
def pvig_ti_224(pretrained: bool = False, **kwargs: Any) -> PyramidVisionGNN:
    """Pyramid ViG-Ti: [48, 96, 240, 384] x [2, 2, 6, 2] (10.7 M params, 1.70 G MACs)."""
    return _create_vig("pvig_ti_224", pretrained, **kwargs)


@register_model
def pvig_s_224(pretrained: bool = False, **kwargs: Any) -> PyramidVisionGNN:
    """Pyramid ViG-S: [80, 160, 400, 640] x [2, 2, 6, 2] (27.3 M params, 4.55 G MACs)."""
    return _create_vig("pvig_s_224", pretrained, **kwargs)


@register_model
def pvig_m_224(pretrained: bool = False, **kwargs: Any) -> PyramidVisionGNN:
    """Pyramid ViG-M: [96, 192, 384, 768] x [2, 2, 16, 2] (49.5 M trained params, 8.85 G MACs)."""
    return _create_vig("pvig_m_224", pretrained, **kwargs)


@register_model
def pvig_b_224(pretrained: bool = False, **kwargs: Any) -> PyramidVisionGNN:
    """Pyramid ViG-B: [128, 256, 512, 1024] x [2, 2, 18, 2] (93.0 M params, 16.80 G MACs)."""
    return _create_vig("pvig_b_224", pretrained, **kwargs)
