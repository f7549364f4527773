"""Boundary (edge) detection metrics: the BSDS benchmark (thinning, one-to-one matching, ODS / OIS / AP) and a
fast dilation proxy for training curves."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .ranges import check_range

__all__ = ["EdgeProxyMeter", "BoundaryMeter", "boundary_scores", "thin_boundaries", "bsds_ap"]


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
    * AP: the benchmark's own (:func:`bsds_ap`, BSDS ``collect_eval_bdry.m`` and Piotr Dollar's
      ``edgesEvalDir.m``): the pooled precision-recall points interpolated linearly at recall 0, 0.01, ...,
      1, levels outside the recall range reached counting 0, summed x 0.01.

    ``thin_gt``: the true maps are used as given (``False``, as BSDS and pdollar's edgesEvalImg do) or thinned
    first like the predictions (``True``, as seism's NYUD evaluations do).
    """

    def __init__(self, thresholds: int | Sequence[float] = 99, max_dist: float = 0.011, thin_gt: bool = False):
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
        self.thin_gt = bool(thin_gt)
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
        gt = thin_boundaries(gt) if self.thin_gt else gt.astype(bool)
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
        out = {"ods_f": float(fi[best]), "ois_f": float(ois), "ap": bsds_ap(recall, precision),
               "ods_threshold": float(ti[best]),
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


def bsds_ap(recall: Sequence[float], precision: Sequence[float]) -> float:
    """Average precision as the BSDS benchmark computes it (``collect_eval_bdry.m``; pdollar's ``edgesEvalDir.m``
    alike): one (recall, precision) point per threshold, repeated recalls kept once (the first, as MATLAB's
    ``unique`` since R2013a and numpy's), precision interpolated linearly (``interp1``) at recall 0, 0.01, ...,
    1, levels below the lowest or above the highest recall reached counting 0, and the sum times 0.01. A
    curve with a single distinct recall (a perfect prediction at every threshold included) has AP 0 there,
    and so here."""
    r = np.asarray(recall, dtype=np.float64)
    p = np.asarray(precision, dtype=np.float64)
    if r.shape != p.shape or r.ndim != 1:
        raise ValueError(f"recall and precision must be 1-D of one length, got {r.shape} and {p.shape}")
    ru, first = np.unique(r, return_index=True)
    if ru.size <= 1:
        return 0.0
    grid = np.round(np.arange(101) * 0.01, 12)
    inside = (grid >= ru[0]) & (grid <= ru[-1])
    return float(np.interp(grid[inside], ru, p[first]).sum() * 0.01)


def boundary_scores(probs: Sequence[Any], gts: Sequence[Any], max_dist: float = 0.011,
                    thresholds: int | Sequence[float] = 99, thin_gt: bool = False) -> dict[str, float]:
    """BSDS boundary scores of a dataset: ``{"ods_f", "ois_f", "ap"}`` in [0, 1] (see :class:`BoundaryMeter`).

    ``probs``: a list of (H, W) float arrays or tensors in [0, 1]; ``gts``: the matching (H, W) {0, 1} maps.
    ``max_dist``: the matching distance as a fraction of the image diagonal; ``thresholds``: how many, evenly
    spaced in (0, 1), or the values themselves; ``thin_gt``: thin the true maps first (seism's NYUD protocol).
    """
    if len(probs) != len(gts):
        raise ValueError(f"{len(probs)} probability maps but {len(gts)} ground-truth maps")
    meter = BoundaryMeter(thresholds, max_dist, thin_gt)
    for p, g in zip(probs, gts):
        meter.update(_as_map(p, "probs", len(meter.counts)), _as_map(g, "gts", len(meter.counts)))
    res = meter.compute()
    return {k: res[k] for k in ("ods_f", "ois_f", "ap")}
