"""COCO detection in its native layout: ``<root>/<split>2017/*.jpg`` + ``<root>/annotations/instances_<split>2017.json``.

The JSON is standard COCO "instances" (images, annotations with ``bbox`` xywh, polygon or RLE
``segmentation`` and ``iscrowd``, categories). Category ids (COCO's sparse 1..90, or the mini set's remapped
1..10) become contiguous labels ``0..C-1`` in the order of increasing id. ``iscrowd=1`` regions are not
training targets; they are kept for evaluation, where COCOeval ignores detections matched to them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .paths import DatasetNotFoundError
from .transforms import to_sample
from .vision import TaskDataset, read_rgb

__all__ = ["CocoDetection", "coco_paths"]


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(image folder, instances JSON) of ``split`` under ``root``."""
    root = Path(root)
    images, ann = root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"
    if not images.is_dir() or not ann.is_file():
        raise DatasetNotFoundError(
            f"no COCO split {split!r} under {root} (expected {images.name}/ and annotations/{ann.name}). Get it "
            f"with `python -m data_prep coco --dest {root}` or offline `python -m data_prep coco --synthetic`.")
    return images, ann


class CocoDetection(TaskDataset):
    """Items ``{"image", "boxes" (N, 4) xyxy px of the resized image, "labels" (N,), "index"}``.

    ``classes``: keep only these category names (others dropped), default all in the JSON.
    """

    task = "det"

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 160, train: bool = False,
                 cache: bool = True, classes: Sequence[str] | None = None, limit: int | None = None):
        self.image_dir, self.ann_file = coco_paths(root, split)
        data = json.loads(self.ann_file.read_text())
        cats = sorted(data["categories"], key=lambda c: c["id"])
        if classes is not None:
            known = {c["name"] for c in cats}
            unknown = [c for c in classes if c not in known]
            if unknown:
                raise ValueError(f"classes {unknown} are not in {self.ann_file.name}; known: {sorted(known)}")
            cats = [c for c in cats if c["name"] in set(classes)]
        self.classes = tuple(c["name"] for c in cats)
        self.num_classes = len(cats)
        self.cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
        self.images = sorted(data["images"], key=lambda im: im["id"])[:limit]
        by_image: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for a in data["annotations"]:
            if a["image_id"] in by_image and a["category_id"] in self.cat_to_label:
                by_image[a["image_id"]].append(a)
        self.annotations = [by_image[im["id"]] for im in self.images]
        self.split = split
        super().__init__(image_size=image_size, train=train, cache=cache)

    def __len__(self) -> int:
        return len(self.images)

    def target(self, i: int, include_crowd: bool = False) -> dict[str, torch.Tensor]:
        """Boxes (xyxy, original pixels), labels and iscrowd of image ``i``."""
        anns = [a for a in self.annotations[i] if include_crowd or not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        crowd = torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64)
        return {"boxes": boxes, "labels": labels, "iscrowd": crowd}

    def ground_truth(self) -> list[dict]:
        """Per image, for :func:`nbmodule.metrics.coco_map`: original-size boxes, labels, iscrowd, size."""
        out = []
        for i, im in enumerate(self.images):
            out.append({**self.target(i, include_crowd=True), "width": im["width"], "height": im["height"]})
        return out

    def instance_masks(self, i: int) -> torch.Tensor:
        """Binary masks (N, H, W) decoded from polygons or RLE (crowd included) with pycocotools."""
        from pycocotools import mask as mask_utils

        im = self.images[i]
        h, w = im["height"], im["width"]
        masks = []
        for a in self.annotations[i]:
            seg = a["segmentation"]
            if isinstance(seg, list):  # polygons
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg["counts"], list):  # uncompressed RLE (iscrowd)
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = seg
            masks.append(torch.from_numpy(np.asarray(mask_utils.decode(rle), dtype=np.uint8)))
        return torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.uint8)

    def load_raw(self, i: int) -> dict:
        im = self.images[i]
        image = read_rgb(self.image_dir / im["file_name"])
        if tuple(image.shape[-2:]) != (im["height"], im["width"]):
            raise ValueError(f"COCO {im['file_name']}: image is {tuple(image.shape[-2:])}, JSON says "
                             f"{(im['height'], im['width'])}")
        t = self.target(i)
        return to_sample(image, boxes=t["boxes"], labels=t["labels"])
