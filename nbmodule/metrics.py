"""Metrics: pure functions and accumulators on tensors, each tested on hand-computed cases.

Sections are owned by the study that needs them; shared pieces (the confusion matrix) sit first.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["MetricRangeError", "check_range", "ConfusionMatrix", "ci95_factor", "mean_confidence_interval", "top1_accuracy",
           "coco_map", "DENSE_METRICS", "DELTA_M_METRICS", "DELTA_P_METRICS", "DepthMeter", "NormalsMeter",
           "EdgeProxyMeter", "BoundaryMeter", "boundary_scores", "thin_boundaries", "delta_m", "delta_p"]


# --- shared -----------------------------------------------------------------------------------------
class MetricRangeError(ValueError):
    """A metric left its valid range: a bug upstream (wrong units, a wrong count), never a result to report."""


def check_range(name: str, value: float, low: float, high: float) -> float:
    """``value`` if it lies in ``[low, high]`` (NaN passes: it means "no data"); otherwise raise
    :class:`MetricRangeError` naming the metric, the value and the range."""
    v = float(value)
    if not math.isnan(v) and not (low - 1e-9 * max(1.0, abs(high)) <= v <= high + 1e-9 * max(1.0, abs(high))):
        raise MetricRangeError(f"metric {name} = {v!r} is outside its valid range [{low}, {high}]")
    return v


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


def ci95_factor(n: int | float) -> float:
    """The 95% two-sided critical value of Student's t with ``n - 1`` degrees of freedom (12.71 for 2 values,
    4.30 for 3, 1.96 in the limit): ``factor * std / sqrt(n)`` is the half-width of the confidence interval of
    a mean of ``n`` values. NaN below 2 values."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.975, n - 1)) if n >= 2 else float("nan")


def mean_confidence_interval(values: Sequence[float] | torch.Tensor, z: float | None = None) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval, ``factor * std / sqrt(n)`` (sample std): Student's t
    critical value for ``n - 1`` degrees of freedom (:func:`ci95_factor`; right for a few seeds), or the normal
    one when ``z`` is given (e.g. 1.96 over hundreds of test episodes, as few-shot papers report)."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError("mean_confidence_interval needs at least one value")
    if t.numel() == 1:
        return float(t[0]), float("nan")
    factor = z if z is not None else ci95_factor(t.numel())
    return float(t.mean()), float(factor * t.std(unbiased=True) / math.sqrt(t.numel()))


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
#: Every metric the MTML study reports per dense task -> True when lower is better (metrics.json keys are
#: ``{row}_{task}_{metric}``). Units: seg and edges in percent, depth in metres (``delta1`` a fraction),
#: normals in degrees (``within_*`` in percent).
DENSE_METRICS: dict[str, dict[str, bool]] = {
    "seg": {"miou": False, "pixel_acc": False},
    "depth": {"abs_err": True, "rel_err": True, "rmse": True, "delta1": False},
    "normals": {"mean": True, "median": True, "within_11_25": False, "within_22_5": False, "within_30": False},
    "edges": {"ods_f": False, "ois_f": False, "ap": False, "proxy_f": False},  # proxy_f: training curves only
}
#: Δm of Maninis et al. (2019) as Vandenhende et al. compute it (``calculate_multi_task_performance`` in
#: github.com/SimonVandenhende/Multi-Task-Learning-PyTorch, evaluation/evaluate_utils.py): one metric per
#: task. Also the metric a held-out task's curve and its steps to target are judged by.
DELTA_M_METRICS: dict[str, str] = {"seg": "miou", "depth": "rmse", "normals": "mean", "edges": "ods_f"}
#: LibMTL's Δp (``count_improvement`` in github.com/median-research-group/LibMTL, LibMTL/utils.py) over its
#: NYUv2 metric sets: every listed metric, averaged within the task first, then over tasks.
DELTA_P_METRICS: dict[str, tuple[str, ...]] = {
    "seg": ("miou", "pixel_acc"), "depth": ("abs_err", "rel_err"),
    "normals": ("mean", "median", "within_11_25", "within_22_5", "within_30"), "edges": ("ods_f",),
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


class EdgeProxyMeter:
    """A fast *training-time proxy* of the boundary F-score (not the BSDS ODS: see :class:`BoundaryMeter`).

    For each threshold, precision (predicted pixels within ``tolerance`` px of a true edge, by dilation) and
    recall (true edge pixels within ``tolerance`` px of a predicted one) are pooled over the images, and
    ``proxy_f`` is the best F = 2PR / (P + R). Without thinning and one-to-one matching it can only be more
    lenient than the BSDS protocol (a thick or doubled prediction is not penalised); ``tolerance=0`` is
    exact pixel agreement.
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
        return {"proxy_f": check_range("edge proxy F", float(f[best]), 0.0, 1.0),
                "proxy_threshold": float(self.thresholds[best])}


# The BSDS boundary benchmark (Martin et al. 2004; Arbelaez et al. 2011), as the NYUD multi-task papers run it
# through seism / Piotr Dollar's edgesEvalImg: threshold, thin, match one-to-one within max_dist x diagonal,
# pool counts. Written here because the reference implementations are MATLAB/C++ (correspondPixels).

def _thinning_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of Lam, Lee & Suen's parallel thinning (1992, the algorithm of MATLAB's
    ``bwmorph(bw, 'thin', Inf)``, which the BSDS benchmark applies). Entry ``n`` encodes the 8 neighbours of a
    foreground pixel as bits, x1 = east (bit 0) then counter-clockwise (NE, N, NW, W, SW, S, SE); True means
    the pixel is deleted in the first (resp. second) sub-iteration."""
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for n in range(256):
        x = [bool(n >> i & 1) for i in range(8)]  # x[0] = x1 ... x[7] = x8
        crossings = sum(1 for i in (0, 2, 4, 6) if not x[i] and (x[i + 1] or x[(i + 2) % 8]))  # X_H
        n1 = sum(1 for k in (0, 2, 4, 6) if x[k] or x[k + 1])
        n2 = sum(1 for k in (1, 3, 5, 7) if x[k] or x[(k + 1) % 8])
        g12 = crossings == 1 and 2 <= min(n1, n2) <= 3
        first[n] = g12 and not ((x[1] or x[2] or not x[7]) and x[0])
        second[n] = g12 and not ((x[5] or x[6] or not x[3]) and x[4])
    return first, second


_THIN_LUTS = _thinning_luts()
#: up to this many pixels (planes x height x width) a stack of thresholded maps is thinned in one pass
_STACK_LIMIT = 4_000_000
_THIN_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)  # E, NE, N, NW, W, SW, S, SE


def thin_boundaries(mask: np.ndarray) -> np.ndarray:
    """Thin a binary map to 1-pixel-wide curves (``bwmorph(mask, 'thin', Inf)``): (H, W) bool -> (H, W) bool,
    or a stack (T, H, W) thinned plane by plane. Lines already one pixel wide, and their end points, are kept.

    The result is the parallel algorithm's (each sub-iteration decides on the state before it), computed on
    an active set only: a pixel can be deleted only with a background 4-neighbour (the crossing-number
    condition needs one), and a pixel that survived both sub-iterations keeps its verdict until one of its
    8 neighbours is deleted. So a thick blob costs about its area once, not its area times its half-width,
    and the planes of a stack (one per threshold) advance together."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2:
        return thin_boundaries(mask[None])[0]
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask.any(0))
    if ys.size == 0:
        return out
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # the common bounding box, each plane framed by background so no neighbour offset crosses planes
    skel = np.pad(mask[:, y0:y1, x0:x1], ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
    w = skel.shape[2]
    flat = skel.ravel()
    eight = np.array([1, -w + 1, -w, -w - 1, -1, w - 1, w, w + 1])  # same order as _THIN_WEIGHTS
    fg = np.flatnonzero(flat)
    active = fg[(flat[fg[:, None] + eight[None, 0::2]] == 0).any(1)]  # E, N, W, S: the border
    age = np.zeros(flat.size, dtype=np.uint8)  # sub-iterations survived since the neighbourhood last changed
    listed = np.zeros(flat.size, dtype=bool)  # membership of the active set
    listed[active] = True
    stamp = np.zeros(flat.size, dtype=np.int64)  # scratch for removing repeats
    changed = True
    while changed and active.size:
        changed = False
        for lut in _THIN_LUTS:
            code = np.zeros(active.size, dtype=np.int64)
            for off, weight in zip(eight, _THIN_WEIGHTS):
                code += weight * flat[active + off]
            delete = lut[code]
            gone, keep = active[delete], active[~delete]
            age[keep] += 1
            if gone.size:
                changed = True
                flat[gone] = 0  # parallel step: every verdict above used the state before it
                listed[gone] = False
                touched = (gone[:, None] + eight[None, :]).ravel()
                touched = touched[flat[touched] == 1]
                age[touched] = 0
                new = touched[~listed[touched]]
                stamp[new] = np.arange(new.size)  # keep one copy of each: the last write wins
                new = new[stamp[new] == np.arange(new.size)]
                listed[new] = True
                keep = np.concatenate([keep, new])
            stale = age[keep] >= 2
            listed[keep[stale]] = False
            active = keep[~stale]
    out[:, y0:y1, x0:x1] = skel[:, 1:-1, 1:-1].astype(bool)
    return out


def _disc_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(math.floor(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = dy ** 2 + dx ** 2 <= radius ** 2 + 1e-9
    order = np.argsort((dy ** 2 + dx ** 2)[keep], kind="stable")
    return dy[keep][order], dx[keep][order]


def _match_count(pred: np.ndarray, gt_index: np.ndarray, pad: int, offsets: np.ndarray, n_gt: int) -> int:
    """Matched pixel pairs of a maximum one-to-one matching between the ``pred`` pixels and the true boundary
    pixels within ``offsets`` (flat offsets of a disc in ``gt_index``: the (H + 2 pad, W + 2 pad) map holding
    each true pixel's index, -1 elsewhere). correspondPixels solves a minimum-cost assignment whose outlier
    cost exceeds every in-range distance, so its optimum has maximum cardinality; which pairs it picks among
    maximum matchings does not change the counts, which a maximum flow gives exactly (cross-checked against a
    minimum-cost assignment in the tests).

    The flow (source -> predicted pixel -> true pixel within reach -> sink, unit capacities) is solved with
    scipy's Dinic algorithm, not ``maximum_bipartite_matching``: the latter's Hopcroft-Karp search never marks
    dead ends and takes exponential time on layered graphs (scipy issue #26147), which thinned boundary maps
    are; on a 480x640 map it did not return within minutes where Dinic takes 0.04 s."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    py, px = np.nonzero(pred)
    if py.size == 0 or n_gt == 0:
        return 0
    n = py.size
    flat = gt_index.ravel()
    base = (py + pad) * gt_index.shape[1] + (px + pad)
    rows, cols = [], []
    chunk = max(1, 2_000_000 // offsets.size)  # bounded memory for dense maps
    for i in range(0, n, chunk):
        near = np.take(flat, base[i:i + chunk, None] + offsets[None, :])  # (c, K): true pixel or -1
        valid = near >= 0
        rows.append(np.nonzero(valid)[0] + i)
        cols.append(near[valid])
    edge_rows, edge_cols = np.concatenate(rows), np.concatenate(cols)
    if edge_rows.size == 0:
        return 0
    # nodes: 0 the source, 1..n the predicted pixels, n+1..n+n_gt the true pixels, n+n_gt+1 the sink
    sink = n + n_gt + 1
    src = np.concatenate([np.zeros(n, dtype=np.int64), edge_rows + 1, np.arange(n_gt) + n + 1])
    dst = np.concatenate([np.arange(n) + 1, edge_cols.astype(np.int64) + n + 1, np.full(n_gt, sink)])
    graph = csr_matrix((np.ones(src.size, dtype=np.int32), (src, dst)), shape=(sink + 1, sink + 1))
    return int(maximum_flow(graph, 0, sink, method="dinic").flow_value)


def _min_cost_match_count(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """The same count from correspondPixels' own formulation: a minimum-cost assignment (scipy's
    ``linear_sum_assignment``) where each predicted pixel goes to a true pixel within ``radius`` (cost: the
    distance) or to an outlier (cost above any sum of in-range distances). Dense, so for tests only."""
    from scipy.optimize import linear_sum_assignment

    p = np.argwhere(pred).astype(float)
    g = np.argwhere(gt).astype(float)
    if len(p) == 0 or len(g) == 0:
        return 0
    dist = np.sqrt(((p[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    outlier = radius * (len(p) + 1) + 1.0
    cost = np.where(dist <= radius + 1e-9, dist, 3 * outlier)
    cost = np.concatenate([cost, np.full((len(p), len(p)), outlier)], axis=1)
    rows, cols = linear_sum_assignment(cost)
    return int(((cols < len(g)) & (dist[rows, np.minimum(cols, len(g) - 1)] <= radius + 1e-9)).sum())


def _as_map(x: Any, name: str, index: int) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"{name}[{index}]: expected an (H, W) map, got shape {tuple(np.shape(x))}")
    return a


class BoundaryMeter:
    """The BSDS boundary benchmark accumulated image by image: ODS F, OIS F and AP.

    For each of ``thresholds`` (99: 0.01 ... 0.99, as the NYUD multi-task evaluations pass to seism) the map
    ``prob >= t`` is thinned (:func:`thin_boundaries`) and its pixels are matched one-to-one to the true
    boundary pixels lying within ``max_dist`` x the image diagonal (0.011: the NYUD multi-task convention;
    BSDS500 uses 0.0075). Matched and total pixel counts are kept per image and threshold:

    * ODS: counts pooled over the dataset per threshold, then the best F = 2PR / (P + R), interpolating
      linearly between adjacent thresholds as BSDS's ``findBestRF`` does;
    * OIS: each image's best threshold, then F of the counts pooled at those thresholds;
    * AP: the 101-point interpolated average precision (mean over recall r = 0, 0.01, ..., 1 of the best
      precision at recall >= r); Piotr Dollar's edgesEvalDir interpolates linearly instead (its comment
      says "has minor bug"), which is undefined for a curve of one point such as a perfect prediction.

    The true maps are used as given (BSDS does not thin them).
    """

    def __init__(self, thresholds: int | Sequence[float] = 99, max_dist: float = 0.011):
        if isinstance(thresholds, int):
            if thresholds < 1:
                raise ValueError(f"thresholds must be >= 1, got {thresholds}")
            t = np.linspace(1.0 / (thresholds + 1), thresholds / (thresholds + 1), thresholds)
        else:
            t = np.sort(np.asarray(thresholds, dtype=np.float64))
        if t.size == 0 or t.min() <= 0 or t.max() > 1:
            raise ValueError(f"thresholds must lie in (0, 1], got {t.tolist()[:5]}...")
        if not 0 < max_dist < 1:
            raise ValueError(f"max_dist is a fraction of the image diagonal in (0, 1), got {max_dist}")
        self.thresholds = np.round(t, 12)
        self.max_dist = float(max_dist)
        self.counts: list[np.ndarray] = []  # per image: (T, 3) int64 = matched, predicted, true pixels

    def update(self, prob: Any, gt: Any) -> None:
        """One image or a batch: ``prob`` (H, W), (1, H, W) or (B, 1, H, W) in [0, 1], ``gt`` the same shape
        in {0, 1} (numpy arrays or tensors)."""
        if isinstance(prob, torch.Tensor) and prob.ndim == 4:
            for i in range(prob.shape[0]):
                self.update(prob[i], gt[i])
            return
        self.counts.append(self._image_counts(_as_map(prob, "probs", len(self.counts)),
                                              _as_map(gt, "gts", len(self.counts)), len(self.counts)))

    def _image_counts(self, prob: np.ndarray, gt: np.ndarray, index: int) -> np.ndarray:
        from scipy import ndimage

        if prob.shape != gt.shape:
            raise ValueError(f"image {index}: probs shape {prob.shape} != gts shape {gt.shape}")
        prob = prob.astype(np.float64)
        if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
            raise ValueError(f"image {index}: probabilities must lie in [0, 1], got min {np.nanmin(prob)} "
                             f"max {np.nanmax(prob)}")
        if not np.isin(gt, (0, 1)).all():
            bad = np.unique(gt[~np.isin(gt, (0, 1))])[:5].tolist()
            raise ValueError(f"image {index}: ground-truth boundaries must be 0 or 1, found {bad}")
        gt = gt.astype(bool)
        h, w = gt.shape
        radius = self.max_dist * math.hypot(h, w)
        pad = int(math.floor(radius)) + 1
        dy, dx = _disc_offsets(radius)
        offsets = dy * (w + 2 * pad) + dx
        n_gt = int(gt.sum())
        gt_index = np.full((h + 2 * pad, w + 2 * pad), -1, dtype=np.int32 if n_gt < 2 ** 31 else np.int64)
        gy, gx = np.nonzero(gt)
        gt_index[gy + pad, gx + pad] = np.arange(n_gt)
        # a predicted pixel farther than the radius from every true pixel cannot match: leave it out of the graph
        near = (ndimage.distance_transform_edt(~gt) <= radius + 1e-9) if n_gt else np.zeros_like(gt)
        out = np.zeros((len(self.thresholds), 3), dtype=np.int64)
        out[:, 2] = n_gt
        # the maps shrink as t grows, so equal pixel counts mean equal maps: thin each distinct map once
        counts = np.array([int((prob >= t).sum()) for t in self.thresholds])
        first = np.flatnonzero(np.r_[True, counts[1:] != counts[:-1]])
        which = np.cumsum(np.r_[True, counts[1:] != counts[:-1]]) - 1  # threshold -> its distinct map
        maps = np.stack([prob >= self.thresholds[k] for k in first])
        if maps.size <= _STACK_LIMIT:  # small images: all planes in one pass (less interpreter overhead)
            thin = thin_boundaries(maps)
        else:
            thin = np.stack([thin_boundaries(m) for m in maps])
        per_map = [(_match_count(tm & near, gt_index, pad, offsets, n_gt), int(tm.sum())) for tm in thin]
        out[:, 0] = [per_map[i][0] for i in which]
        out[:, 1] = [per_map[i][1] for i in which]
        return out

    def compute(self) -> dict[str, float]:
        """``ods_f``, ``ois_f``, ``ap`` (in [0, 1]) and the ODS point: ``ods_threshold``, ``ods_precision``,
        ``ods_recall``."""
        if not self.counts:
            return {k: float("nan") for k in ("ods_f", "ois_f", "ap", "ods_threshold", "ods_precision", "ods_recall")}
        c = np.stack(self.counts).astype(np.float64)  # (N, T, 3)
        eps = np.finfo(np.float64).eps
        tot = c.sum(0)
        recall = tot[:, 0] / np.maximum(eps, tot[:, 2])
        precision = tot[:, 0] / np.maximum(eps, tot[:, 1])
        t = self.thresholds
        if len(t) == 1:
            ri, pi, ti = recall, precision, t
        else:  # findBestRF: 100 points on each segment between adjacent thresholds
            a = np.linspace(0, 1, 100)[None, :]
            ri = (recall[1:, None] * a + recall[:-1, None] * (1 - a)).ravel()
            pi = (precision[1:, None] * a + precision[:-1, None] * (1 - a)).ravel()
            ti = (t[1:, None] * a + t[:-1, None] * (1 - a)).ravel()
        fi = 2 * pi * ri / np.maximum(eps, pi + ri)
        best = int(np.argmax(fi))
        r_img = c[:, :, 0] / np.maximum(eps, c[:, :, 2])
        p_img = c[:, :, 0] / np.maximum(eps, c[:, :, 1])
        f_img = 2 * p_img * r_img / np.maximum(eps, p_img + r_img)
        at = c[np.arange(len(c)), f_img.argmax(1)].sum(0)  # each image's best threshold, pooled
        r_ois, p_ois = at[0] / max(eps, at[2]), at[0] / max(eps, at[1])
        ois = 2 * p_ois * r_ois / max(eps, p_ois + r_ois)
        ap = float(np.mean([precision[recall >= r - 1e-12].max(initial=0.0) for r in np.linspace(0, 1, 101)]))
        out = {"ods_f": float(fi[best]), "ois_f": float(ois), "ap": ap, "ods_threshold": float(ti[best]),
               "ods_precision": float(pi[best]), "ods_recall": float(ri[best])}
        for k in ("ods_f", "ois_f", "ap", "ods_precision", "ods_recall"):
            check_range(f"boundary {k}", out[k], 0.0, 1.0)
        return out

    def curve(self) -> dict[str, list[float]]:
        """The dataset's precision-recall curve: ``threshold``, ``precision``, ``recall`` per threshold."""
        c = np.stack(self.counts).astype(np.float64).sum(0) if self.counts else np.zeros((len(self.thresholds), 3))
        eps = np.finfo(np.float64).eps
        return {"threshold": self.thresholds.tolist(), "precision": (c[:, 0] / np.maximum(eps, c[:, 1])).tolist(),
                "recall": (c[:, 0] / np.maximum(eps, c[:, 2])).tolist()}


def boundary_scores(probs: Sequence[Any], gts: Sequence[Any], max_dist: float = 0.011,
                    thresholds: int | Sequence[float] = 99) -> dict[str, float]:
    """BSDS boundary scores of a dataset: ``{"ods_f", "ois_f", "ap"}`` in [0, 1] (see :class:`BoundaryMeter`).

    ``probs``: a list of (H, W) float arrays or tensors in [0, 1]; ``gts``: the matching (H, W) {0, 1} maps.
    ``max_dist``: the matching distance as a fraction of the image diagonal; ``thresholds``: how many, evenly
    spaced in (0, 1), or the values themselves.
    """
    if len(probs) != len(gts):
        raise ValueError(f"{len(probs)} probability maps but {len(gts)} ground-truth maps")
    meter = BoundaryMeter(thresholds, max_dist)
    for p, g in zip(probs, gts):
        meter.update(_as_map(p, "probs", len(meter.counts)), _as_map(g, "gts", len(meter.counts)))
    res = meter.compute()
    return {k: res[k] for k in ("ods_f", "ois_f", "ap")}


def _relative_gain(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]],
                   which: Mapping[str, Sequence[str]], name: str) -> float:
    per_task = []
    for task, names in which.items():
        if task not in metrics or task not in baseline:
            continue
        rel = []
        for metric in names:
            m, b = metrics[task].get(metric), baseline[task].get(metric)
            if m is None or b is None or not math.isfinite(m) or not math.isfinite(b) or b == 0:
                raise ValueError(f"{name} needs finite, non-zero {task}.{metric} in both (got {m}, baseline {b})")
            sign = -1.0 if DENSE_METRICS[task][metric] else 1.0
            rel.append(sign * (m - b) / b * 100.0)
        per_task.append(sum(rel) / len(rel))
    if not per_task:
        raise ValueError(f"{name}: no task is present in both metrics and baseline")
    return sum(per_task) / len(per_task)


def delta_m(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]],
            which: Mapping[str, str] | None = None) -> float:
    """Multi-task performance Δm (%) against single-task models, as Maninis et al. (2019) and Vandenhende et
    al. (2021) define it: the mean over tasks of ``(-1)^l (M_t - B_t) / B_t * 100`` with ONE metric per task
    (``which``, default :data:`DELTA_M_METRICS`: mIoU, depth RMSE, mean angle error, edge ODS F; ``l`` = 1
    where lower is better). Both arguments map task -> metric -> value; tasks present in both count.
    Positive = better than single-task."""
    which = DELTA_M_METRICS if which is None else which
    return _relative_gain(metrics, baseline, {t: (m,) for t, m in which.items()}, "delta_m")


def delta_p(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]],
            which: Mapping[str, Sequence[str]] | None = None) -> float:
    """LibMTL's multi-metric variant Δp (%): within each task the mean relative change over several metrics
    (``which``, default :data:`DELTA_P_METRICS`), then the mean over tasks, so a task with five metrics weighs
    as much as one with one."""
    return _relative_gain(metrics, baseline, DELTA_P_METRICS if which is None else which, "delta_p")
