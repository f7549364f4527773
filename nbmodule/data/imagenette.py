"""Imagenette in its native ImageFolder layout: ``<root>/[imagenette2*/]<split>/<wnid>/*.JPEG``.

Labels are indices into :data:`IMAGENETTE_WNIDS` (the 10 synsets in sorted order) whenever the folders are
Imagenette's, so a split holding only some classes (a sample, a small val set) keeps the same label ids.
Grayscale JPEGs (ImageNet has some) are converted to RGB.
"""
from __future__ import annotations

from pathlib import Path

from .paths import DatasetNotFoundError
from .transforms import to_sample
from .vision import TaskDataset, read_rgb

__all__ = ["IMAGENETTE_WNIDS", "IMAGENETTE_NAMES", "ImagenetteFolder", "imagenette_split_dir"]

IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888257")
IMAGENETTE_NAMES = ("tench", "English springer", "cassette player", "chain saw", "church", "French horn",
                    "garbage truck", "gas pump", "golf ball", "parachute")
_EXTS = {".jpeg", ".jpg", ".png"}


def imagenette_split_dir(root: str | Path, split: str) -> Path:
    """``<root>/<split>`` or ``<root>/<one sub-folder>/<split>`` (e.g. ``imagenette2-160/train``)."""
    root = Path(root)
    cands = [root / split, *sorted(p / split for p in root.glob("*") if p.is_dir())]
    for cand in cands:
        if cand.is_dir():
            return cand
    raise DatasetNotFoundError(
        f"no Imagenette split {split!r} under {root}. Get it with `python -m data_prep imagenette --dest {root}` "
        f"or offline `python -m data_prep imagenette --synthetic`.")


class ImagenetteFolder(TaskDataset):
    """Items ``{"image", "label" (int), "index"}``."""

    task = "cls"

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 160, train: bool = False,
                 cache: bool = True, limit: int | None = None):
        self.split_dir = imagenette_split_dir(root, split)
        folders = sorted(p.name for p in self.split_dir.iterdir() if p.is_dir())
        self.classes = IMAGENETTE_WNIDS if set(folders) <= set(IMAGENETTE_WNIDS) else tuple(folders)
        self.num_classes = len(self.classes)
        self.samples = [(f, self.classes.index(d)) for d in folders
                        for f in sorted((self.split_dir / d).iterdir()) if f.suffix.lower() in _EXTS][:limit]
        if not self.samples:
            raise DatasetNotFoundError(f"no images in {self.split_dir}/<class>/")
        self.split = split
        super().__init__(image_size=image_size, train=train, cache=cache)

    def __len__(self) -> int:
        return len(self.samples)

    def load_raw(self, i: int) -> dict:
        path, label = self.samples[i]
        return {**to_sample(read_rgb(path)), "label": label}
