"""Metrics: pure functions and accumulators on tensors, each tested on hand-computed cases.

Sections are owned by the study that needs them; shared pieces (the confusion matrix) sit first.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["ConfusionMatrix", "mean_confidence_interval"]


# --- shared -----------------------------------------------------------------------------------------
class ConfusionMatrix:
    """Accumulates a ``(C, C)`` confusion matrix (rows: truth, columns: prediction) over a dataset.

    Pixels whose truth is ``ignore_index`` (255 in VOC) are skipped. mIoU averages only over classes
    present in the truth or the prediction: a class absent from both has no IoU (not 1.0, not 0.0).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``, ``target``: integer class maps of the same shape (any leading dims)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).to(torch.int64).cpu()
        target = target.reshape(-1).to(torch.int64).cpu()
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if pred.numel() and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"predicted class outside [0, {self.num_classes})")
        idx = target * self.num_classes + pred
        self.mat += torch.bincount(idx, minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def iou(self) -> torch.Tensor:
        """Per-class IoU, NaN for classes absent from both truth and prediction."""
        m = self.mat.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        iou = self.iou()
        valid = ~torch.isnan(iou)
        return float(iou[valid].mean()) if valid.any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.mat.sum()
        return float(self.mat.diag().sum() / total) if total > 0 else float("nan")


def mean_confidence_interval(values: Sequence[float] | torch.Tensor, z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval (``z * std / sqrt(n)``)."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError("mean_confidence_interval needs at least one value")
    if t.numel() == 1:
        return float(t[0]), float("nan")
    return float(t.mean()), float(z * t.std(unbiased=True) / math.sqrt(t.numel()))
