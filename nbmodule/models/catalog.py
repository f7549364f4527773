"""The models of the suite as notebook 01 shows them: one card per model, with its size and latency.

A card is the registry name plus the configuration a study uses and an input shape; ``describe`` builds each,
counts all its parameters (frozen ones too) and times it with :func:`nbmodule.profiling.measure_latency`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import build_model, count_parameters

__all__ = ["ModelCard", "CARDS", "describe"]


@dataclass(frozen=True)
class ModelCard:
    key: str  # metrics.json prefix
    label: str
    study: str
    name: str
    cfg: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()  # (C, H, W) or (features,), without the batch dim
    dense: bool = False  # dense models are timed at the notebook's image_size

    def shape(self, image_size: int) -> tuple[int, ...]:
        return (1, 3, image_size, image_size) if self.dense else (1, *self.input_shape)


CARDS: tuple[ModelCard, ...] = (
    ModelCard("unified", "UnifiedModel (MobileNetV3-Small + FPN + one head)", "02 replay", "unified",
              {"pretrained": False}, dense=True),
    ModelCard("mtl", "MTL encoder + 4 heads (ResNet-18)", "03 MTML", "mtl",
              {"tasks": {"seg": 13, "depth": 1, "normals": 3, "edges": 1}, "backbone": "resnet18"}, dense=True),
    ModelCard("mlp", "MLP 1-40-40-1 (sinusoid)", "04 MAML sampling", "mlp", {}, (1,)),
    ModelCard("conv4_omniglot", "Conv4, 64 filters (Omniglot 5-way)", "05 few-shot", "conv4",
              {"in_channels": 1, "n_way": 5, "hidden": 64, "image_size": 28}, (1, 28, 28)),
    ModelCard("conv4_miniimagenet", "Conv4, 32 filters (MiniImagenet 5-way)", "05 few-shot", "conv4",
              {"in_channels": 3, "n_way": 5, "hidden": 32, "image_size": 84}, (3, 84, 84)),
)


def describe(cards: tuple[ModelCard, ...] = CARDS, *, image_size: int = 512, repeats: int = 20, warmup: int = 3,
             device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """One row per card: parameters (all), size in MB (fp32), median latency at batch 1 and its conditions."""
    from ..profiling import measure_latency

    rows = []
    for card in cards:
        model = build_model(card.name, **card.cfg)
        params = count_parameters(model)
        lat = measure_latency(model, card.shape(image_size), device=device, repeats=repeats, warmup=warmup)
        rows.append({"key": card.key, "model": card.label, "study": card.study, "registry": card.name, "params": params,
                     "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                     "size_mb": round(params * 4 / 2**20, 2), "input": "x".join(map(str, card.shape(image_size))),
                     "latency_ms": round(lat["median_ms"], 3), "p90_ms": round(lat["p90_ms"], 3),
                     "device": lat["device"]})
    return rows
