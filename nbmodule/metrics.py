"""Metrics: pure functions and accumulators on tensors, each tested on hand-computed cases.

Sections are owned by the study that needs them; shared pieces (the confusion matrix) sit first.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

__all__ = ["DENSE_METRICS", "DELTA_M_METRICS", "DepthMeter", "NormalsMeter", "EdgeMeter", "delta_m",
           "ConfusionMatrix", "mean_confidence_interval", "top1_accuracy", "coco_map"]


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


# --- sequential replay (UnifiedModel: segmentation, detection, classification) ---------------------------
def top1_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the target. ``logits``: (N, C), ``targets``: (N,)."""
    if logits.shape[0] == 0:
        return float("nan")
    return float((logits.argmax(dim=1) == targets.to(logits.device)).float().mean())


def coco_map(ground_truth: Sequence[dict], predictions: Sequence[dict], num_classes: int) -> dict[str, float]:
    """COCO box mAP@[.5:.95] and mAP@.5 computed by pycocotools' ``COCOeval`` (not re-implemented).

    ``ground_truth[i]``: ``{"boxes" (N, 4) xyxy, "labels" (N,) in [0, num_classes), "iscrowd" (N,) optional,
    "width", "height"}``; ``predictions[i]``: ``{"boxes", "scores", "labels"}`` for the same image.
    Returns ``{"map", "map50"}`` in [0, 1] (-1 from COCOeval, i.e. no ground truth at all, becomes NaN).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(predictions)} predictions")
    images, anns, dets = [], [], []
    for img_id, (gt, pr) in enumerate(zip(ground_truth, predictions), start=1):
        images.append({"id": img_id, "width": int(gt["width"]), "height": int(gt["height"])})
        boxes = torch.as_tensor(gt["boxes"], dtype=torch.float64).reshape(-1, 4)
        crowd = gt.get("iscrowd")
        crowd = torch.zeros(len(boxes), dtype=torch.int64) if crowd is None else torch.as_tensor(crowd)
        for b, lab, c in zip(boxes.tolist(), torch.as_tensor(gt["labels"]).tolist(), crowd.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(lab) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(c)})
        pboxes = torch.as_tensor(pr["boxes"], dtype=torch.float64).reshape(-1, 4)
        for b, s, lab in zip(pboxes.tolist(), torch.as_tensor(pr["scores"]).tolist(),
                             torch.as_tensor(pr["labels"]).tolist()):
            dets.append({"image_id": img_id, "category_id": int(lab) + 1, "score": float(s),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    if not anns:
        return {"map": float("nan"), "map50": float("nan")}
    if not dets:  # COCO.loadRes refuses an empty list; no detections means zero precision
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns,
                           "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float("nan") if s < 0 else float(s) for s in ev.stats[:2]]
    return {"map": stats[0], "map50": stats[1]}


# --- multi-task dense prediction (MTML, notebook 03) -------------------------------------------------
#: metric name -> lower is better, per dense task (keys of metrics.json are ``{mode}_{task}_{metric}``)
DENSE_METRICS: dict[str, dict[str, bool]] = {
    "seg": {"miou": False, "pixel_acc": False},
    "depth": {"abs_err": True, "rel_err": True, "rmse": True, "delta1": False},
    "normals": {"mean": True, "median": True, "within_11_25": False, "within_22_5": False, "within_30": False},
    "edges": {"ods": False},
}
#: the metrics Δm averages, as in MTAN / Auto-Lambda's NYU-v2 tables (plus ODS for edges)
DELTA_M_METRICS: dict[str, tuple[str, ...]] = {
    "seg": ("miou", "pixel_acc"), "depth": ("abs_err", "rel_err"),
    "normals": ("mean", "median", "within_11_25", "within_22_5", "within_30"), "edges": ("ods",),
}


class DepthMeter:
    """Depth errors accumulated over valid pixels of a dataset (pixel-pooled, in metres).

    ``abs_err`` = mean |p - g|, ``rel_err`` = mean |p - g| / g, ``rmse`` = sqrt(mean (p - g)^2) (the square
    root included), ``delta1`` = fraction of pixels with max(p/g, g/p) < 1.25.
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
        return {"abs_err": self.abs / self.n, "rel_err": self.rel / self.n, "rmse": math.sqrt(self.sq / self.n),
                "delta1": self.d1 / self.n}


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
        return {"mean": self.total / self.n, "median": median,
                "within_11_25": 100.0 * self.within[11.25] / self.n,
                "within_22_5": 100.0 * self.within[22.5] / self.n, "within_30": 100.0 * self.within[30.0] / self.n}


class EdgeMeter:
    """Edge detection F-score at the best fixed threshold over the dataset (ODS).

    For each threshold the precision (predicted edge pixels within ``tolerance`` px of a true edge) and
    recall (true edge pixels within ``tolerance`` px of a predicted edge) are pooled over all images, and
    ODS is the best F = 2PR / (P + R). The BSDS benchmark matches pixels one-to-one within 0.0075 of the
    image diagonal; this dilation-based matching is the usual fast approximation (it can only be more
    lenient), and ``tolerance=0`` is exact pixel agreement.
    """

    def __init__(self, thresholds: int | Sequence[float] = 99, tolerance: int = 0):
        t = torch.linspace(0, 1, thresholds + 2)[1:-1] if isinstance(thresholds, int) else torch.as_tensor(thresholds)
        self.thresholds = t.double()
        self.tolerance = int(tolerance)
        k = len(self.thresholds)
        self.tp_p = torch.zeros(k, dtype=torch.float64)
        self.n_p = torch.zeros(k, dtype=torch.float64)
        self.tp_r = torch.zeros(k, dtype=torch.float64)
        self.n_g = 0.0

    def _dilate(self, x: torch.Tensor) -> torch.Tensor:
        if self.tolerance <= 0:
            return x
        r = self.tolerance
        return torch.nn.functional.max_pool2d(x, 2 * r + 1, stride=1, padding=r)

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        """``prob``: (B, 1, H, W) edge probabilities in [0, 1]; ``target``: (B, 1, H, W) in {0, 1}."""
        if prob.shape != target.shape:
            raise ValueError(f"prob shape {tuple(prob.shape)} != target shape {tuple(target.shape)}")
        prob = prob.detach().float().reshape(-1, 1, *prob.shape[-2:])
        gt = (target.detach().float().reshape(prob.shape) > 0.5).float()
        gt_d = self._dilate(gt)
        self.n_g += float(gt.sum())
        for i, t in enumerate(self.thresholds.tolist()):
            pred = (prob >= t).float()
            self.n_p[i] += pred.sum()
            self.tp_p[i] += (pred * gt_d).sum()
            self.tp_r[i] += (gt * self._dilate(pred)).sum()

    def compute(self) -> dict[str, float]:
        precision = torch.where(self.n_p > 0, self.tp_p / self.n_p.clamp(min=1), torch.zeros_like(self.n_p))
        recall = self.tp_r / self.n_g if self.n_g > 0 else torch.zeros_like(self.tp_r)
        f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                        torch.zeros_like(precision))
        best = int(f.argmax())
        return {"ods": float(f[best]), "ods_threshold": float(self.thresholds[best])}


def delta_m(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]],
            which: Mapping[str, Sequence[str]] | None = None) -> float:
    """Multi-task performance Δm (%) of ``metrics`` against single-task ``baseline`` (Maninis et al. 2019).

    Both map task -> metric name -> value. For each task, the relative change
    ``(-1)^l (M - B) / B * 100`` (``l`` = 1 when lower is better) is averaged over its metrics (``which``,
    default :data:`DELTA_M_METRICS`), then over the tasks present in both, so a task with five metrics
    weighs as much as one with one. Positive Δm means better than single-task.
    """
    which = DELTA_M_METRICS if which is None else which
    per_task = []
    for task, names in which.items():
        if task not in metrics or task not in baseline:
            continue
        rel = []
        for name in names:
            m, b = metrics[task].get(name), baseline[task].get(name)
            if m is None or b is None or not math.isfinite(m) or not math.isfinite(b) or b == 0:
                raise ValueError(f"delta_m needs finite, non-zero {task}.{name} in both (got {m}, baseline {b})")
            sign = -1.0 if DENSE_METRICS[task][name] else 1.0
            rel.append(sign * (m - b) / b * 100.0)
        per_task.append(sum(rel) / len(rel))
    if not per_task:
        raise ValueError("delta_m: no task is present in both metrics and baseline")
    return sum(per_task) / len(per_task)
