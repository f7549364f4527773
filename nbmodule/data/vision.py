"""Shared machinery of the three task datasets (VOC segmentation, COCO detection, Imagenette).

Each dataset reads its native on-disk format at full resolution (``load_raw``), resizes once to
``image_size`` (kept in memory when ``cache=True``: the mini datasets hold a few hundred images), then
applies the random augmentation on every access. Every item is a dict with ``image`` (3, S, S) float in
[0, 1], ``index`` and the task's target: ``mask`` (S, S) int64 with 255 = ignore, ``boxes`` (N, 4) xyxy in
pixels of the S x S image plus ``labels`` (N,), or ``label`` (int).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .transforms import Task, augment_transform, resize_transform

__all__ = ["TaskDataset", "read_rgb", "collate_task"]


def read_rgb(path: str | Path) -> torch.Tensor:
    """A JPEG/PNG as uint8 (3, H, W); grayscale (ImageNet has some) and CMYK are converted to RGB."""
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


class TaskDataset(Dataset):
    """Base class: subclasses set ``task`` and implement ``__len__`` and ``load_raw(i) -> dict``."""

    task: Task

    def __init__(self, image_size: int = 160, train: bool = False, cache: bool = True):
        self.image_size = image_size
        self.train = train
        self.cache = cache
        self._cache: dict[int, dict] = {}
        self._resize = resize_transform(image_size)
        self._augment = augment_transform(self.task, image_size, train)

    def load_raw(self, i: int) -> dict:  # pragma: no cover - abstract
        """``{"image": uint8 (3, H, W), ...target at original resolution}`` wrapped with ``to_sample``."""
        raise TypeError(f"{type(self).__name__} must implement load_raw")

    def _resized(self, i: int) -> dict:
        if i in self._cache:
            return self._cache[i]
        sample = self._resize(self.load_raw(i))
        if self.cache:
            self._cache[i] = sample
        return sample

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        sample = self._augment(dict(self._resized(i)))
        out: dict[str, Any] = {"image": sample["image"].as_subclass(torch.Tensor), "index": i}
        if "mask" in sample:
            out["mask"] = sample["mask"].as_subclass(torch.Tensor).long()
        if "boxes" in sample:
            out["boxes"] = sample["boxes"].as_subclass(torch.Tensor).float()
            out["labels"] = sample["labels"].long()
        if "label" in sample:
            out["label"] = int(sample["label"])
        return out


def collate_task(samples: Sequence[dict]) -> dict[str, Any]:
    """Stack images (and masks / class labels); detection keeps per-image lists of boxes and labels."""
    batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples]),
                             "index": torch.tensor([s["index"] for s in samples])}
    if "mask" in samples[0]:
        batch["mask"] = torch.stack([s["mask"] for s in samples])
    if "boxes" in samples[0]:
        batch["boxes"] = [s["boxes"] for s in samples]
        batch["labels"] = [s["labels"] for s in samples]
    if "label" in samples[0]:
        batch["label"] = torch.tensor([s["label"] for s in samples])
    return batch
