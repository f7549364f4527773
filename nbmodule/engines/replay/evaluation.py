"""Validation metrics of the three tasks, each under its benchmark's protocol.

- ``seg_miou``: PASCAL VOC's mean IoU over the confusion matrix accumulated on the whole split, at **each
  image's original resolution**: the logits (computed at ``image_size``) are resized bilinearly to the label
  map's size and then arg-maxed, as VOC's benchmark scores predictions against the original label maps
  (resizing the labels instead would score another task: thin structures vanish or grow). 255 is ignored;
  classes absent from both truth and prediction are skipped.
- ``det_map``, ``det_map50``: COCO mAP@[.5:.95] and mAP@.5 by pycocotools, boxes mapped back to each image's
  original size, crowd regions ignored.
- ``cls_top1``: top-1 accuracy.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from ...data.vision import TaskDataset, collate_task
from ...metrics import ConfusionMatrix, coco_map, top1_accuracy
from ...models.unified import UnifiedModel, decode_detections
from .protocol import check_unit_interval
from .training import Precision

__all__ = ["predict", "evaluate", "add_at_label_size"]


@torch.no_grad()
def predict(model: UnifiedModel, images: torch.Tensor, score_threshold: float = 0.05,
            precision: Precision | None = None) -> dict[str, Any]:
    """Eval-mode predictions for ``images (B, 3, S, S)``: ``mask (B, S, S)``, ``detections`` (per image
    ``boxes (N, 4)`` xyxy px of the S x S image, ``scores``, ``labels``), ``cls (B,)``, ``cls_prob (B, C)``."""
    with precision.autocast() if precision is not None else nullcontext():
        out = model(images)
    out = {k: v.float() for k, v in out.items()}
    dets = decode_detections(out["heatmap"], out["box"], stride=images.shape[-1] // out["heatmap"].shape[-1],
                             score_threshold=score_threshold)
    return {"seg_logits": out["seg"], "mask": out["seg"].argmax(1), "detections": dets, "cls": out["cls"].argmax(1),
            "cls_prob": out["cls"].softmax(1), "cls_logits": out["cls"]}


def add_at_label_size(cm: ConfusionMatrix, logits: torch.Tensor, label: torch.Tensor) -> None:
    """Add one image to ``cm``: ``logits (C, h, w)`` resized bilinearly to ``label (H, W)``'s size, arg-maxed,
    compared with the label at its own resolution."""
    up = F.interpolate(logits[None].float(), size=tuple(label.shape[-2:]), mode="bilinear", align_corners=False)
    cm.update(up.argmax(1)[0].cpu(), label.cpu())


@torch.no_grad()
def evaluate(model: UnifiedModel, task: str, dataset: TaskDataset, device: torch.device, batch_size: int = 16,
             score_threshold: float = 0.05, precision: Precision | None = None) -> dict[str, float]:
    """The task's validation metrics on ``dataset`` (see the module docstring); each checked to lie in [0, 1]."""
    model.to(device).eval()
    cm = ConfusionMatrix(model.num_seg_classes, ignore_index=255)
    preds, logits, labels = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate_task([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        images = batch["image"].to(device)
        pred = predict(model, images, score_threshold, precision)
        if task == "seg":
            for j, i in enumerate(batch["index"].tolist()):
                add_at_label_size(cm, pred["seg_logits"][j], dataset.full_mask(i))
        elif task == "det":
            size = images.shape[-1]
            for i, det in zip(batch["index"].tolist(), pred["detections"]):
                im = dataset.images[i]
                scale = torch.tensor([im["width"] / size, im["height"] / size] * 2)
                preds.append({"boxes": det["boxes"].cpu() * scale, "scores": det["scores"].cpu(),
                              "labels": det["labels"].cpu()})
        elif task == "cls":
            logits.append(pred["cls_logits"].cpu())
            labels.append(batch["label"])
        else:
            raise ValueError(f"unknown task {task!r}")
    if task == "seg":
        result = {"seg_miou": cm.miou()}
    elif task == "det":
        res = coco_map(dataset.ground_truth(), preds, model.num_det_classes)
        result = {"det_map": res["map"], "det_map50": res["map50"]}
    else:
        result = {"cls_top1": top1_accuracy(torch.cat(logits), torch.cat(labels))}
    check_unit_interval(result, f"{task} evaluation on {len(dataset)} images")
    return result
