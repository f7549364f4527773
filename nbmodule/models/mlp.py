"""Multi-layer perceptrons, e.g. MAML's sinusoid regressor (1-40-40-1 with ReLU, Finn et al. 2017)."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from . import register_model

__all__ = ["MLP", "mlp"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MLP(nn.Sequential):
    """``in_features -> hidden[0] -> ... -> out_features``, activation between layers, none at the end.

    Input ``(..., in_features)``, output ``(..., out_features)``.
    """

    def __init__(self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1,
                 activation: str = "relu"):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        super().__init__(*layers)


@register_model("mlp")
def mlp(in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1,
        activation: str = "relu") -> MLP:
    return MLP(in_features, hidden, out_features, activation)
