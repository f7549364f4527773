"""Joint augmentations: boxes and masks move with the image (torchvision.transforms.v2 + tv_tensors).

A sample is a dict ``{"image": tv_tensors.Image uint8 (3, H, W), "mask": tv_tensors.Mask (H, W)?,
"boxes": tv_tensors.BoundingBoxes XYXY?, "labels": (N,)?, ...}``; v2 transforms dispatch on the tensor
types, so a flip or crop is applied identically to the image, the mask (nearest) and the boxes, and
``SanitizeBoundingBoxes`` drops boxes (and their labels) that the crop made degenerate.
"""
from __future__ import annotations

from typing import Literal

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["resize_transform", "augment_transform", "to_sample", "Task"]

Task = Literal["seg", "det", "cls"]


def resize_transform(size: int) -> v2.Transform:
    """The deterministic part: resize to ``size x size`` (cached by the datasets)."""
    return v2.Resize((size, size), antialias=True)


def augment_transform(task: Task, size: int, train: bool) -> v2.Transform:
    """Random part applied on every access (train) or only the float conversion (eval).

    Train: horizontal flip, random resized crop (scale 0.5-1), brightness/contrast jitter; detection boxes are then
    sanitised. Output images are float32 in [0, 1]; masks stay integer with 255 kept as ignore.
    """
    ops: list[v2.Transform] = []
    if train:
        ops += [v2.RandomHorizontalFlip(0.5),
                v2.RandomResizedCrop((size, size), scale=(0.5, 1.0), ratio=(0.75, 1.333), antialias=True),
                v2.ColorJitter(brightness=0.2, contrast=0.2)]
        if task == "det":
            ops.append(v2.SanitizeBoundingBoxes(min_size=2.0))
    ops.append(v2.ToDtype(torch.float32, scale=True))  # a plain dtype converts images only, not masks
    return v2.Compose(ops)


def to_sample(image: torch.Tensor, *, mask: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
              labels: torch.Tensor | None = None) -> dict:
    """Wrap plain tensors in the tv_tensors types the v2 transforms dispatch on."""
    sample: dict = {"image": tv_tensors.Image(image)}
    if mask is not None:
        sample["mask"] = tv_tensors.Mask(mask)
    if boxes is not None:
        sample["boxes"] = tv_tensors.BoundingBoxes(boxes.reshape(-1, 4).float(), format="XYXY",
                                                   canvas_size=tuple(image.shape[-2:]))
        sample["labels"] = labels if labels is not None else torch.zeros(len(sample["boxes"]), dtype=torch.int64)
    return sample
