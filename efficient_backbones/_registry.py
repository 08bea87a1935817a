"""The zoo's model registry.

Every variant is a ``@register_model`` entry point in its family's file, exactly as in timm. The
entry points go into our own registry (what :func:`list_models` and :func:`create_model` see) and
into timm's, so ``timm.create_model("vig_ti_224")`` works once this package is imported. A name
that timm already ships (``ghostnet_100``, ``tinynet_a``, ``tnt_s_patch16_224``, ...) is left to
timm: overwriting it would break the side-by-side comparisons with timm's own implementation,
which is what the zoo's tests and benchmarks check against. Ours are reached through
``efficient_backbones.create_model``.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import sys
from collections.abc import Callable

from timm.models import _registry as timm_registry

logger = logging.getLogger(__name__)

_model_entrypoints: dict[str, Callable] = {}
_model_to_family: dict[str, str] = {}
_registered_in_timm: set[str] = set()


def register_model(fn: Callable) -> Callable:
    """Register a model entry point under its function name, here and (where free) in timm."""
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model {name!r} is registered twice")
    _model_entrypoints[name] = fn
    _model_to_family[name] = fn.__module__.rsplit(".", 1)[-1]
    if timm_registry.is_model(name) and name not in _registered_in_timm:
        logger.debug("timm already has %s; ours is reached through efficient_backbones", name)
    else:
        _registered_in_timm.add(name)
        timm_registry.register_model(fn)
    return fn


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def list_models(pattern: str | list[str] = "", exclude: str | list[str] = "") -> list[str]:
    """Names of the registered variants matching a wildcard ``pattern`` (all when empty)."""
    names = list(_model_entrypoints)
    if pattern:
        patterns = [pattern] if isinstance(pattern, str) else pattern
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if exclude:
        excludes = [exclude] if isinstance(exclude, str) else exclude
        names = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in excludes)]
    return sorted(names, key=_natural_key)


def is_model(name: str) -> bool:
    return name in _model_entrypoints


def model_entrypoint(name: str) -> Callable:
    try:
        return _model_entrypoints[name]
    except KeyError:
        close = fnmatch.filter(_model_entrypoints, f"*{name.split('_')[0]}*")
        hint = f" Similar: {', '.join(sorted(close)[:8])}." if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} See efficient_backbones.list_models().") from None


def model_family(name: str) -> str:
    """The family file a variant lives in (``ghostnet``, ``vig``, ...)."""
    model_entrypoint(name)
    return _model_to_family[name]


def family_module(name: str):
    """The module of a variant's family (where its ``checkpoint_filter_fn`` lives)."""
    return sys.modules[model_entrypoint(name).__module__]
