"""PASCAL VOC 2012 semantic segmentation in its native layout.

``<root>/VOCdevkit/VOC2012/`` (or ``<root>`` itself being the ``VOC2012`` folder) with ``JPEGImages/<id>.jpg``,
``SegmentationClass/<id>.png`` (palette "P" PNGs: the pixel values ARE the class indices 0..20, 255 marks
object boundaries / "difficult" = ignore) and ``ImageSets/Segmentation/<split>.txt``. The masks are read as
palette indices; converting them to grayscale (as the seed did) would turn class ids into luminances.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_prep.formats import voc_palette

from .paths import DatasetNotFoundError
from .transforms import to_sample
from .vision import TaskDataset, read_rgb

__all__ = ["VOC_CLASSES", "VOCSegmentation", "voc_root", "read_voc_mask", "voc_palette"]

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def voc_root(root: str | Path) -> Path:
    """The ``VOC2012`` folder under ``root`` (accepts the folder itself, ``VOCdevkit`` or its parent)."""
    root = Path(root)
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    raise DatasetNotFoundError(
        f"no VOC2012 layout (JPEGImages/ + SegmentationClass/) under {root}. Get it with "
        f"`python -m data_prep voc --dest {root}` or offline `python -m data_prep voc --synthetic`.")


def read_voc_mask(path: str | Path) -> torch.Tensor:
    """A SegmentationClass PNG as its palette indices, int64 (H, W). Refuses RGB masks (a colour map)."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"{path}: VOC masks are palette ('P') PNGs holding class indices; got mode {im.mode!r}")
        return torch.from_numpy(np.array(im, dtype=np.uint8)).long()


class VOCSegmentation(TaskDataset):
    """VOC segmentation split: items ``{"image", "mask" (S, S) int64 in 0..20 or 255, "index"}``; the
    original-resolution mask of item ``i`` is :meth:`full_mask`."""

    task = "seg"
    num_classes = len(VOC_CLASSES)
    classes = VOC_CLASSES

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 160, train: bool = False,
                 cache: bool = True, limit: int | None = None):
        self.root = voc_root(root)
        listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            have = sorted(p.stem for p in (self.root / "ImageSets" / "Segmentation").glob("*.txt"))
            raise DatasetNotFoundError(f"VOC split {split!r} not found ({listing}); available splits: {have}")
        self.ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()][:limit]
        self.split = split
        self._full_masks: dict[int, torch.Tensor] = {}
        super().__init__(image_size=image_size, train=train, cache=cache)

    def full_mask(self, i: int) -> torch.Tensor:
        """Item ``i``'s mask at its image's original resolution, int64 (H, W): what mIoU is scored against
        (VOC's benchmark compares predictions with the original label maps, never with resized ones)."""
        if i not in self._full_masks:
            mask = read_voc_mask(self.root / "SegmentationClass" / f"{self.ids[i]}.png")
            if not self.cache:
                return mask
            self._full_masks[i] = mask
        return self._full_masks[i]

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, i: int) -> dict:
        img_id = self.ids[i]
        image = read_rgb(self.root / "JPEGImages" / f"{img_id}.jpg")
        mask = read_voc_mask(self.root / "SegmentationClass" / f"{img_id}.png")
        if mask.shape != image.shape[-2:]:
            raise ValueError(f"VOC {img_id}: mask {tuple(mask.shape)} and image {tuple(image.shape[-2:])} differ")
        return to_sample(image, mask=mask.to(torch.uint8))
