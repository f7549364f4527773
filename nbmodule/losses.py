"""Losses: pure functions on tensors. Sections are owned by the study that needs them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__: list[str] = [
    "seg_loss", "depth_l1_loss", "normals_cosine_loss", "balanced_bce_loss",
    "focal_heatmap_loss", "centernet_targets", "detection_loss", "segmentation_loss", "distillation_loss",
]


# --- sequential replay (UnifiedModel: segmentation, detection, classification) ---------------------------
def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects.

    ``logits``, ``target``: (B, C, h, w); ``target`` is a Gaussian heatmap with exact 1.0 at object centres.
    """
    pos = target.eq(1).float()
    log_p = F.logsigmoid(logits)
    log_1mp = F.logsigmoid(-logits)
    p = logits.sigmoid()
    pos_loss = -((1 - p) ** alpha) * log_p * pos
    neg_loss = -((1 - target) ** beta) * (p ** alpha) * log_1mp * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def _gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius for a box of ``h x w`` cells (smallest of its three overlap cases)."""
    a1, b1, c1 = 1.0, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + (b1 ** 2 - 4 * a1 * c1) ** 0.5) / 2
    a2, b2, c2 = 4.0, 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + (b2 ** 2 - 4 * a2 * c2) ** 0.5) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + (b3 ** 2 - 4 * a3 * c3) ** 0.5) / 2
    return max(0.0, min(r1, r2, r3))


def centernet_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int,
                      size: tuple[int, int], stride: int = 8) -> dict[str, torch.Tensor]:
    """Dense targets for :func:`detection_loss` from per-image boxes.

    ``boxes[i]``: (N_i, 4) xyxy in input pixels, ``labels[i]``: (N_i,) in [0, num_classes); ``size`` is the
    output map (h, w). Returns ``heatmap (B, C, h, w)``, ``box (B, 4, h, w)`` = (dx, dy, log w/s, log h/s)
    and ``mask (B, h, w)`` (1 at object centres, where the box terms count).
    """
    h, w = size
    b = len(boxes)
    heat = torch.zeros(b, num_classes, h, w)
    reg = torch.zeros(b, 4, h, w)
    mask = torch.zeros(b, h, w)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        bx = bx.detach().float().cpu() / stride
        # large boxes first so a small box's centre regression wins where two centres share a cell
        order = ((bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])).argsort(descending=True)
        for j in order.tolist():
            x1, y1, x2, y2 = bx[j].tolist()
            bw, bh = x2 - x1, y2 - y1
            if bw <= 0 or bh <= 0:
                continue
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            sigma = (2 * max(0, int(_gaussian_radius(bh, bw))) + 1) / 6
            g = torch.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma ** 2))
            c = int(lb[j])
            heat[i, c] = torch.maximum(heat[i, c], g)
            heat[i, c, iy, ix] = 1.0
            reg[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy, torch.log(torch.tensor(bw)), torch.log(torch.tensor(bh))])
            mask[i, iy, ix] = 1.0
    return {"heatmap": heat, "box": reg, "mask": mask}


def detection_loss(heatmap_logits: torch.Tensor, box_pred: torch.Tensor, targets: dict[str, torch.Tensor],
                   box_weight: float = 1.0) -> torch.Tensor:
    """Focal heatmap loss plus L1 on offset and log-size at object centres (CenterNet, anchor-free)."""
    hm = focal_heatmap_loss(heatmap_logits, targets["heatmap"])
    mask = targets["mask"].unsqueeze(1)  # (B, 1, h, w)
    l1 = (F.l1_loss(box_pred, targets["box"], reduction="none") * mask).sum() / mask.sum().clamp(min=1.0)
    return hm + box_weight * l1


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel cross-entropy; VOC's 255 boundary pixels are ignored."""
    return F.cross_entropy(logits, mask.long(), ignore_index=ignore_index)


def distillation_loss(new: torch.Tensor, old: torch.Tensor, kind: str, temperature: float = 2.0) -> torch.Tensor:
    """LwF's knowledge distillation of an earlier model's outputs.

    ``kind="softmax"``: KL over the channel dim 1 (class logits, per pixel or per image), scaled by T^2;
    ``kind="sigmoid"``: BCE towards the old sigmoid probabilities (detection heatmaps);
    ``kind="l1"``: L1 on regression outputs.
    """
    old = old.detach()
    if kind == "softmax":
        t = temperature
        return F.kl_div(F.log_softmax(new / t, dim=1), F.softmax(old / t, dim=1), reduction="batchmean") * t * t \
            / max(1, new[0, 0].numel())
    if kind == "sigmoid":
        return F.binary_cross_entropy_with_logits(new, old.sigmoid())
    if kind == "l1":
        return F.l1_loss(new, old)
    raise ValueError(f"distillation kind must be 'softmax', 'sigmoid' or 'l1', got {kind!r}")


# --- multi-task dense prediction (MTML, notebook 03) -------------------------------------------------
def seg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy over classes; ``logits`` (B, C, H, W), ``target`` (B, H, W) int, ``ignore_index`` skipped.

    Zero (with a graph) when every pixel is ignored, instead of the NaN ``F.cross_entropy`` returns.
    """
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def _valid_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    n = mask.sum()
    return (values * mask).sum() / n if n > 0 else values.sum() * 0.0


def depth_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error (metres) over valid pixels; ``pred``, ``target`` (B, 1, H, W); invalid = ``target <= 0``
    unless ``mask`` says otherwise."""
    if mask is None:
        mask = target > 0
    return _valid_mean((pred - target).abs(), mask)


def normals_cosine_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``1 - cos(angle)`` between the normalised prediction and unit target normals (B, 3, H, W) over
    valid pixels (``mask`` (B, 1, H, W); default: target normals of non-zero length)."""
    if mask is None:
        mask = target.norm(dim=1, keepdim=True) > 1e-3
    cos = (F.normalize(pred, dim=1, eps=1e-6) * target).sum(1, keepdim=True)
    return _valid_mean(1.0 - cos, mask)


def balanced_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy for edges (HED, Xie & Tu 2015): positives weighted by the
    fraction of negatives and vice versa, so the ~5% edge pixels are not drowned. Mean over pixels."""
    target = target.to(logits.dtype)
    pos = target.sum()
    beta = 1.0 - pos / target.numel()  # fraction of negatives
    weight = beta * target + (1.0 - beta) * (1.0 - target)
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight)
