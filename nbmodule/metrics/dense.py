"""Dense per-pixel metrics: segmentation (confusion matrix, mIoU), depth errors and surface-normal angles,
accumulated over a dataset; the metric names and directions of the multi-task study (notebook 03)."""
from __future__ import annotations

import math

import torch

from .ranges import MetricRangeError, check_range

__all__ = ["ConfusionMatrix", "DENSE_METRICS", "DepthMeter", "NormalsMeter"]


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
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        bad = (iou < 0) | (iou > 1)
        if bad.any():
            c = int(bad.nonzero()[0, 0])
            raise MetricRangeError(f"IoU of class {c} = {float(iou[c])!r} is outside [0, 1]")
        return iou

    def miou(self) -> float:
        iou = self.iou()
        valid = ~torch.isnan(iou)
        return check_range("mIoU", float(iou[valid].mean()) if valid.any() else float("nan"), 0.0, 1.0)

    def pixel_accuracy(self) -> float:
        total = self.mat.sum()
        return check_range("pixel accuracy", float(self.mat.diag().sum() / total) if total > 0 else float("nan"),
                           0.0, 1.0)


#: Every metric the MTML study reports per dense task -> True when lower is better (metrics.json keys are
#: ``{row}_{task}_{metric}``). Units: seg and edges in percent, depth in metres (``delta1`` a fraction),
#: normals in degrees (``within_*`` in percent).
DENSE_METRICS: dict[str, dict[str, bool]] = {
    "seg": {"miou": False, "pixel_acc": False},
    "depth": {"abs_err": True, "rel_err": True, "rmse": True, "delta1": False},
    "normals": {"mean": True, "median": True, "within_11_25": False, "within_22_5": False, "within_30": False},
    "edges": {"ods_f": False, "ois_f": False, "ap": False, "proxy_f": False},  # proxy_f: training curves only
}


class DepthMeter:
    """Depth errors accumulated over valid pixels of a dataset (pixel-pooled, in metres).

    ``abs_err`` = mean |p - g|, ``rel_err`` = mean |p - g| / g, ``rmse`` = sqrt(mean (p - g)^2) (the square
    root of the pooled mean), ``delta1`` = fraction of pixels with max(p/g, g/p) < 1.25.
    """

    def __init__(self) -> None:
        self.n = 0
        self.abs = self.rel = self.sq = 0.0
        self.d1 = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """``pred``, ``target``: same shape; ``mask`` (default ``target > 0``) marks valid pixels."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        valid = (target > 0) if mask is None else (mask.bool() & (target > 0))
        p, g = pred.detach()[valid].double(), target.detach()[valid].double()
        err = p - g
        self.n += g.numel()
        self.abs += float(err.abs().sum())
        self.rel += float((err.abs() / g).sum())
        self.sq += float((err ** 2).sum())
        ratio = torch.maximum(p.clamp(min=1e-9) / g, g / p.clamp(min=1e-9))
        self.d1 += int((ratio < 1.25).sum())

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {k: float("nan") for k in ("abs_err", "rel_err", "rmse", "delta1")}
        out = {"abs_err": self.abs / self.n, "rel_err": self.rel / self.n, "rmse": math.sqrt(self.sq / self.n),
               "delta1": self.d1 / self.n}
        for k in ("abs_err", "rel_err", "rmse"):
            check_range(f"depth {k}", out[k], 0.0, math.inf)
        check_range("depth delta1", out["delta1"], 0.0, 1.0)
        return out


class NormalsMeter:
    """Angular error (degrees) between predicted and true normals over valid pixels of a dataset.

    The median comes from a 0.01-degree histogram (exact to 0.01 deg without storing every pixel's angle);
    ``within_X`` are percentages of pixels with an error below X degrees.
    """

    BIN = 0.01

    def __init__(self) -> None:
        self.hist = torch.zeros(int(180 / self.BIN) + 1, dtype=torch.int64)
        self.total = 0.0
        self.n = 0
        self.within = {11.25: 0, 22.5: 0, 30.0: 0}

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """``pred``, ``target``: (B, 3, H, W) (pred need not be unit length); ``mask`` (B, 1, H, W)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        valid = target.norm(dim=1) > 1e-3
        if mask is not None:
            valid &= mask.bool().reshape(valid.shape)
        p = torch.nn.functional.normalize(pred.detach().double(), dim=1)
        g = torch.nn.functional.normalize(target.detach().double(), dim=1)
        cos = (p * g).sum(1)[valid].clamp(-1, 1)
        ang = torch.rad2deg(torch.acos(cos))
        self.n += ang.numel()
        self.total += float(ang.sum())
        for t in self.within:
            self.within[t] += int((ang < t).sum())
        self.hist += torch.bincount((ang / self.BIN).round().long(), minlength=self.hist.numel())

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {k: float("nan") for k in ("mean", "median", "within_11_25", "within_22_5", "within_30")}
        cum = self.hist.cumsum(0)
        median = float(torch.searchsorted(cum, torch.tensor((self.n + 1) // 2))) * self.BIN
        out = {"mean": self.total / self.n, "median": median,
               "within_11_25": 100.0 * self.within[11.25] / self.n,
               "within_22_5": 100.0 * self.within[22.5] / self.n, "within_30": 100.0 * self.within[30.0] / self.n}
        for k, v in out.items():
            check_range(f"normals {k}", v, 0.0, 180.0 if k in ("mean", "median") else 100.0)
        return out
