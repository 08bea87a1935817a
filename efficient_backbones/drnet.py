"""DRNet: each image is classified at the smallest input resolution that serves it.

Paper: Zhu et al., "Dynamic Resolution Network", NeurIPS 2021 (https://arxiv.org/abs/2106.02898).
Official code (MindSpore): gitee.com/mindspore/models, ``research/cv/DRNet``. What is taken from
the paper:

* Sec. 3.1, eqs. (1)-(4): a small resolution predictor (a ResNet-18-like CNN on a low-resolution
  copy of the image, 128 px for ImageNet) scores the candidate resolutions (224 / 168 / 112 for
  ResNet-50). In training a hard Gumbel-softmax sample ``h`` (straight-through gradient) picks one
  per image and the prediction is ``sum_j h_j * y_j`` over the backbone's outputs ``y_j`` at every
  candidate, so the predictor learns which resolution gives the lowest loss; at inference the
  argmax is taken and each image runs at its resolution only.
* Sec. 3.2: resolution-aware BatchNorm, one BN per candidate resolution
  (:mod:`efficient_backbones.layers.multi_bn`); the convolutions are shared.
* Sec. 3.3, eqs. (5)-(7): loss = cross-entropy + ``eta`` * FLOPs constraint, where an image's cost is
  ``sum_j h_j * C_j`` (``C_j``: backbone MACs at resolution ``j``). We write the constraint as a
  hinge on the batch's mean cost relative to the largest resolution, ``max(0, E[C]/C_max - alpha)``,
  and add the cross-entropy of every resolution's own output (the paper pre-trains the backbone on
  all resolutions first; doing both jointly keeps every BN set trained).

:class:`DRNet` wraps any zoo (or timm) classifier; ``drnet_resnet50`` is the paper's ResNet-50 setup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.models import FeatureListNet
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from efficient_backbones._builder import build_model_with_cfg, default_cfg
from efficient_backbones._features import PatchTokensMixin
from efficient_backbones._macs import count_macs
from efficient_backbones._registry import register_model
from efficient_backbones.layers.multi_bn import (
    convert_to_multi_resolution_norm,
    expand_single_resolution_state_dict,
    set_resolution_index,
)

__all__ = [
    "DRNet",
    "DRNetFeatures",
    "DRNetOutput",
    "checkpoint_filter_fn",
    "drnet_loss",
    "resize_square",
    "resolution_predictor",
]

logger = logging.getLogger(__name__)


class DRNetOutput(NamedTuple):
    """What one training forward produces (everything :func:`drnet_loss` needs)."""

    logits: torch.Tensor  # (B, C): sum_j h_j * y_j
    resolution_logits: torch.Tensor  # (B, m, C): the backbone's output at each candidate
    selection: torch.Tensor  # (B, m): hard Gumbel-softmax sample (straight-through)
    expected_macs: torch.Tensor  # (B,): sum_j h_j * C_j, differentiable w.r.t. the predictor


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to ``size`` x ``size`` (antialiased, so downsampling does not alias)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _create_backbone(name: str, **kwargs: Any) -> nn.Module:
    from efficient_backbones._builder import create_model
    from efficient_backbones._registry import is_model

    if is_model(name):
        return create_model(name, **kwargs)
    import timm

    return timm.create_model(name, **kwargs)


def resolution_predictor(
    num_resolutions: int, channels: Sequence[int] = (16, 32, 64, 128), in_chans: int = 3
) -> ResNet:
    """ResNet-18 layout (4 stages x 2 basic blocks) at reduced width, with a cheap 3x3 "deep" stem."""
    return ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        num_classes=num_resolutions,
        in_chans=in_chans,
        channels=tuple(channels),
        stem_type="deep",
        stem_width=channels[0] // 2,
    )


class DRNet(PatchTokensMixin, nn.Module):
    """A backbone whose input resolution is chosen per image by a jointly trained predictor.

    Args:
        backbone: a classifier module, or the name of a zoo / timm model to create.
        resolutions: candidate input sizes (square), the first being the largest.
        predictor_size: side of the copy the predictor sees.
        predictor_channels: the predictor's four stage widths.
        tau: Gumbel-softmax temperature used in training.
        num_classes, in_chans, **backbone_kwargs: passed on when ``backbone`` is a name.
    """

    def __init__(
        self,
        backbone: nn.Module | str = "resnet50",
        resolutions: Sequence[int] = (224, 168, 112),
        predictor_size: int = 128,
        predictor_channels: Sequence[int] = (16, 32, 64, 128),
        tau: float = 1.0,
        num_classes: int | None = None,
        in_chans: int = 3,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            if num_classes is not None:
                backbone_kwargs["num_classes"] = num_classes
            backbone = _create_backbone(backbone, in_chans=in_chans, **backbone_kwargs)
        else:
            if backbone_kwargs or num_classes is not None:
                raise ValueError(
                    "num_classes / backbone kwargs apply only when the backbone is given by name"
                )
            in_chans = getattr(backbone, "in_chans", in_chans)  # the predictor sees the same images
        self.resolutions = tuple(int(r) for r in resolutions)
        if list(self.resolutions) != sorted(self.resolutions, reverse=True) or len(set(self.resolutions)) < 2:
            raise ValueError(f"resolutions must be at least two sizes, largest first; got {self.resolutions}")
        self.predictor_size = predictor_size
        self.tau = tau
        self.backbone = backbone
        # A plain list (not registered twice in the state_dict): the BNs to switch per resolution.
        self._norms = convert_to_multi_resolution_norm(self.backbone, len(self.resolutions))
        # Built after the conversion: the predictor keeps ordinary BatchNorm.
        self.predictor = resolution_predictor(len(self.resolutions), predictor_channels, in_chans)
        self.num_classes = getattr(backbone, "num_classes", None)
        self.num_features = getattr(backbone, "num_features", None)
        self.head_hidden_size = getattr(backbone, "head_hidden_size", self.num_features)
        self.feature_info = list(getattr(backbone, "feature_info", []))
        if hasattr(backbone, "pretrained_cfg"):
            self.pretrained_cfg = {
                **backbone.pretrained_cfg,
                "input_size": (in_chans, *(self.resolutions[0],) * 2),
            }
        self._macs_cache: dict[tuple[int, ...], int] = {}
        self._grid_cache: dict[tuple[str, int], list[tuple[int, ...]]] = {}
        self.last_resolution_indices: torch.Tensor | None = None

    # ----------------------------------------------------------------- costs
    def _macs(self, module: nn.Module, size: int) -> int:
        key = (id(module), size)
        if key not in self._macs_cache:
            self._macs_cache[key] = count_macs(module, inputs=self._probe_input(size))
        return self._macs_cache[key]

    def _probe_input(self, size: int) -> torch.Tensor:
        p = next(self.parameters())
        return torch.zeros(1, self.predictor.in_chans, size, size, device=p.device, dtype=p.dtype)

    def resolution_macs(self) -> list[int]:
        """Backbone MACs per image at each candidate resolution (``C_j`` of the paper)."""
        return [self._macs(self.backbone, r) for r in self.resolutions]

    def predictor_macs(self) -> int:
        return self._macs(self.predictor, self.predictor_size)

    def macs_per_image(self, indices: torch.Tensor) -> torch.Tensor:
        """Total MACs of each image given its chosen resolution indices (predictor included)."""
        costs = torch.tensor(self.resolution_macs(), dtype=torch.float64, device=indices.device)
        return costs[indices] + self.predictor_macs()

    # ------------------------------------------------------------- routing
    def predict_resolution(self, x: torch.Tensor) -> torch.Tensor:
        """The predictor's scores over the candidate resolutions, ``(B, m)``."""
        return self.predictor(resize_square(x, self.predictor_size))

    def _run_at(self, fn: Callable[[torch.Tensor], Any], x: torch.Tensor, index: int) -> Any:
        set_resolution_index(self._norms, index)
        return fn(resize_square(x, self.resolutions[index]))

    def _route(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            indices = self.predict_resolution(x).argmax(dim=-1)
        self.last_resolution_indices = indices
        return indices

    def _per_group(
        self, x: torch.Tensor, indices: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]]:
        groups = []
        for j in indices.unique().tolist():
            sel = (indices == j).nonzero(as_tuple=True)[0]
            groups.append((sel, self._run_at(fn, x[sel], j)))
        return groups

    @staticmethod
    def _scatter(batch: int, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        first = groups[0][1]
        out = first.new_empty((batch, *first.shape[1:]))
        for sel, y in groups:
            out[sel] = y
        return out

    def _grids(self, kind: str, fn: Callable[[torch.Tensor], Any]) -> list[tuple[int, ...]]:
        """Spatial sizes of ``fn``'s output(s) at the largest resolution (one dry run, cached)."""
        key = (kind, self.resolutions[0])
        if key not in self._grid_cache:
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad():
                    out = self._run_at(fn, self._probe_input(self.resolutions[0]), 0)
            finally:
                self.train(was_training)
            outs = out if isinstance(out, (list, tuple)) else [out]
            self._grid_cache[key] = [tuple(o.shape[2:]) for o in outs]
        return self._grid_cache[key]

    @staticmethod
    def _to_grid(y: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        if y.ndim != 4:
            raise ValueError(f"DRNet resamples (B, C, h, w) feature maps only; got shape {tuple(y.shape)}")
        return (
            y
            if tuple(y.shape[2:]) == grid
            else F.interpolate(y, size=grid, mode="bilinear", align_corners=False)
        )

    # ---------------------------------------------------------------- forward
    def forward_train(self, x: torch.Tensor) -> DRNetOutput:
        """Training forward (paper eqs. 1-4): every candidate runs; a hard Gumbel sample mixes them."""
        scores = self.predict_resolution(x)
        selection = F.gumbel_softmax(scores, tau=self.tau, hard=True)
        resolution_logits = torch.stack(
            [self._run_at(self.backbone, x, j) for j in range(len(self.resolutions))], dim=1
        )
        logits = (selection.unsqueeze(-1) * resolution_logits).sum(dim=1)
        costs = torch.tensor(self.resolution_macs(), dtype=selection.dtype, device=selection.device)
        self.last_resolution_indices = selection.detach().argmax(dim=-1)
        return DRNetOutput(logits, resolution_logits, selection, selection @ costs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; in eval mode each image runs once, at its predicted resolution."""
        if self.training:
            return self.forward_train(x).logits
        indices = self._route(x)
        return self._scatter(x.shape[0], self._per_group(x, indices, self.backbone))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's final feature map at its predicted resolution, resampled to the grid of the
        largest resolution so the batch is one tensor (pooling these is close to, not the same as,
        pooling the native maps, which :meth:`forward` does)."""
        indices = self._route(x)
        (grid,) = self._grids("features", self.backbone.forward_features)
        groups = self._per_group(x, indices, self.backbone.forward_features)
        return self._scatter(x.shape[0], [(sel, self._to_grid(y, grid)) for sel, y in groups])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    # ------------------------------------------------------- timm interface
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.backbone.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes
        self._macs_cache.clear()  # the classifier's share of the cost changed

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in inner}


def drnet_loss(
    output: DRNetOutput,
    target: torch.Tensor,
    resolution_macs: Sequence[int],
    macs_weight: float = 1.0,
    target_ratio: float = 0.5,
    resolution_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Paper eqs. (5)-(7): cross-entropy of the routed prediction + a MACs constraint.

    Args:
        output: :meth:`DRNet.forward_train`'s result.
        target: class indices.
        resolution_macs: ``C_j`` (:meth:`DRNet.resolution_macs`).
        macs_weight: ``eta``, the weight of the constraint.
        target_ratio: ``alpha``, the mean cost allowed, as a fraction of the largest resolution's.
        resolution_weight: weight of the mean cross-entropy of every resolution's own output.

    Returns:
        The loss and its parts (floats, for logging).
    """
    ce = F.cross_entropy(output.logits, target)
    per_resolution = F.cross_entropy(
        output.resolution_logits.flatten(0, 1), target.repeat_interleave(output.resolution_logits.shape[1])
    )
    cost_ratio = output.expected_macs.mean() / max(resolution_macs)
    constraint = (cost_ratio - target_ratio).clamp(min=0.0)
    loss = ce + resolution_weight * per_resolution + macs_weight * constraint
    parts = {
        "ce": ce.item(),
        "ce_per_resolution": per_resolution.item(),
        "macs_ratio": cost_ratio.item(),
        "constraint": constraint.item(),
    }
    return loss, parts


class DRNetFeatures(nn.Module):
    """``features_only`` view of a :class:`DRNet`: the backbone's multi-scale maps, each image at its
    predicted resolution, every level resampled to that level's grid at the largest resolution."""

    def __init__(self, model: DRNet, out_indices: Sequence[int] = (0, 1, 2, 3, 4), **kwargs: Any) -> None:
        super().__init__()
        self.drnet = model
        # Taps inside a stage (``blocks.0``) need the stages flattened, as timm does for such models.
        kwargs.setdefault("flatten_sequential", any("." in f["module"] for f in model.feature_info))
        self.extractor = FeatureListNet(model.backbone, out_indices=out_indices, **kwargs)
        self.feature_info = self.extractor.feature_info
        # The extractor holds the backbone's modules (and the per-resolution BNs) minus the
        # classifier; the DRNet keeps its predictor and routing only.
        del model.backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        drnet = self.drnet
        indices = drnet._route(x)
        grids = drnet._grids("features_only", self.extractor)
        groups = drnet._per_group(x, indices, self.extractor)
        levels = []
        for level, grid in enumerate(grids):
            levels.append(
                drnet._scatter(x.shape[0], [(sel, drnet._to_grid(y[level], grid)) for sel, y in groups])
            )
        return levels


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: DRNet) -> dict[str, torch.Tensor]:
    """Load a DRNet checkpoint, or start one from a plain single-resolution backbone checkpoint.

    A backbone checkpoint (keys without ``backbone.``, one BN per layer; e.g. timm's ``resnet50``)
    is prefixed and its BNs copied to every resolution; the predictor, which such a checkpoint does
    not have, keeps its fresh initialisation (logged), as in the paper's fine-tuning from a
    pretrained backbone.
    """
    state_dict = state_dict.get("state_dict", state_dict.get("model", state_dict))
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith(("backbone.", "predictor.")) for k in state_dict):
        return state_dict
    backbone_sd = expand_single_resolution_state_dict(state_dict, model.backbone)
    out = {f"backbone.{k}": v for k, v in backbone_sd.items()}
    own = model.state_dict()
    predictor_keys = [k for k in own if k.startswith("predictor.")]
    logger.warning(
        "backbone-only checkpoint: the resolution predictor (%d tensors) keeps its initialisation",
        len(predictor_keys),
    )
    out.update({k: own[k] for k in predictor_keys})
    return out


DRNET_CFGS: dict[str, dict[str, Any]] = {
    "drnet_resnet50": {"backbone": "resnet50", "resolutions": (224, 168, 112), "predictor_size": 128},
}

default_cfgs: dict[str, dict[str, Any]] = {
    "drnet_resnet50": default_cfg(
        first_conv="backbone.conv1", classifier="backbone.fc", paper_ids="arXiv:2106.02898"
    ),
}


def _create_drnet(variant: str, pretrained: bool = False, **kwargs: Any) -> DRNet:
    kwargs = {**DRNET_CFGS[variant], **kwargs}
    return build_model_with_cfg(
        DRNet,
        variant,
        pretrained,
        default_cfgs=default_cfgs,
        checkpoint_filter_fn=checkpoint_filter_fn,
        feature_cfg={"feature_cls": DRNetFeatures},
        **kwargs,
    )


@register_model
def drnet_resnet50(pretrained: bool = False, **kwargs: Any) -> DRNet:
    """DR-ResNet-50: ResNet-50 at 224 / 168 / 112 chosen per image by a predictor on a 128 px copy."""
    return _create_drnet("drnet_resnet50", pretrained, **kwargs)
