"""Make ``import torchvision`` work on torch builds its compiled ops do not match.

PyPI's torchvision 0.28 wheels carry ``_C.so`` built against CUDA torch. Beside the CPU-only
torch 2.13 build, ``_C.so`` does not load, and torchvision's ``_meta_registrations`` module then
fails at import with ``operator torchvision::nms does not exist``: it registers fake kernels
for ``nms`` and ``qnms`` unconditionally, while every other op is guarded by ``_has_ops()``.
timm, open_clip, peft and vLLM all import torchvision, so that one failure breaks them all.

The fix defines exactly the two missing operators (with real CPU implementations) *only when
they are missing*, at the moment torchvision is about to import ``_meta_registrations``: by then
``torchvision.extension`` has tried to load ``_C.so``, so a machine whose torchvision is whole
is never touched. The hook is a ``sys.meta_path`` finder installed at interpreter start by a
one-line ``.pth`` file (see ``pyproject.toml``), so it reaches every process, vLLM's worker
processes included; it imports nothing heavy until torchvision itself is imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import sys
import threading

logger = logging.getLogger(__name__)

_TRIGGER = "torchvision._meta_registrations"
_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_lock = threading.Lock()
_library = None  # keeps the torch.library.Library alive for the life of the process


def nms_reference(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression on (x1, y1, x2, y2) boxes, as torchvision's CPU kernel.

    Returns the indices of the kept boxes, sorted by decreasing score.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float() if not boxes.is_floating_point() else boxes
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True, stable=True)
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _qnms(dets, scores, iou_threshold: float):
    return nms_reference(dets.dequantize(), scores.dequantize(), iou_threshold)


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def define_missing_ops() -> list[str]:
    """Define ``torchvision::nms`` and ``torchvision::qnms`` if no library has. Returns what it defined."""
    global _library
    import torch

    with _lock:
        missing = [name for name in ("nms", "qnms") if not _op_exists(name)]
        if not missing:
            return []
        if _library is None:
            _library = torch.library.Library("torchvision", "FRAGMENT")
        impls = {"nms": nms_reference, "qnms": _qnms}
        for name in missing:
            _library.define(name + _SCHEMA)
            _library.impl(name, impls[name], "CompositeExplicitAutograd")
        logger.debug("torchvision's compiled ops did not load; defined %s in pure torch", missing)
        return missing


class _TorchvisionOpsFinder(importlib.abc.MetaPathFinder):
    """Runs :func:`define_missing_ops` once, just before torchvision imports its meta registrations."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TRIGGER:
            return None
        with contextlib.suppress(ValueError):  # another thread got here first
            sys.meta_path.remove(self)
        try:
            define_missing_ops()
        except Exception:  # never break an import we do not own
            logger.warning("could not define torchvision's missing ops", exc_info=True)
        return None  # the normal finders import the module itself


def install_import_hook() -> None:
    """Install the finder (idempotent). If torchvision is already imported, there is nothing to do."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionOpsFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionOpsFinder())
