"""Recognition metrics of the sequential-replay study (notebook 02): COCO box mAP through pycocotools, top-1."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["top1_accuracy", "coco_map"]


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
