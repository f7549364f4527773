"""Networks only (no losses, no training loops). ``build_model(name, **cfg)`` over a registry.

Each model module registers its builders with ``@register_model("name")``; a duplicate name is an error
(a silently replaced builder is the kind of bug that survives for months).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import torch.nn as nn

__all__ = ["register_model", "build_model", "list_models", "count_parameters"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# Modules whose import registers models; imported lazily on first lookup.
_MODULES = ("mlp", "conv4", "unified", "mtl")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        return fn
    return deco


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{mod}":  # a real missing dependency inside the module
                raise


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def build_model(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model, e.g. ``build_model("conv4", in_channels=1, n_way=5)``."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**cfg)


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen (counting only trainable ones understates model size)."""
    return sum(p.numel() for p in model.parameters())
