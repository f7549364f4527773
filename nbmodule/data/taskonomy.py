"""A Taskonomy subset as multi-task samples with the same keys as :class:`nbmodule.data.nyuv2.NYUDv2`.

Layout (written by ``python -m data_prep taskonomy``): ``<root>/<building>/<domain>/point_<p>_view_<v>_domain_<domain>.png``
and ``<root>/splits/<split>.txt`` listing buildings. Decoding, as published:

* ``rgb``: 8-bit RGB -> ``image`` (3, H, W) in [0, 1]
* ``segment_semantic``: 8-bit ids, 0 = unlabeled -> ``seg`` (H, W) ``id - 1``, 255 ignore (17 classes)
* ``depth_zbuffer`` (or ``depth_euclidean``): 16-bit, 1/512 m, 65535 = no depth -> ``depth`` (1, H, W) m, 0 invalid
* ``normal``: 8-bit RGB centred on 127.5 -> ``normals`` (3, H, W) unit; invalid where depth is
* ``edge_texture``: 16-bit -> ``edges`` (1, H, W) = value >= ``edge_threshold`` of the range
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .nyuv2 import IGNORE_INDEX, TASKS, finish_sample, read_file
from .paths import DatasetNotFoundError, dataset_dir

__all__ = ["Taskonomy", "NUM_CLASSES", "DEPTH_UNIT"]

NUM_CLASSES = 17
DEPTH_UNIT = 1.0 / 512.0  # metres per depth PNG step
_NAME = re.compile(r"(point_\d+_view_\d+)_domain_rgb\.png$")


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    def read(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            return np.array(im)

    return read_file(path, read, "taskonomy")


class Taskonomy(Dataset):
    """Samples of the buildings listed in ``splits/<split>.txt``; same dict as NYUDv2 (``num_classes`` = 17)."""

    def __init__(self, root: str | Path | None = None, split: str = "train", *, tasks: Sequence[str] = TASKS,
                 size: tuple[int, int] | None = None, depth_domain: str = "depth_zbuffer",
                 edge_threshold: float = 0.5, synthetic: bool = False, data_root: str | Path | None = None,
                 cache: bool = False):
        self.root = Path(root) if root else dataset_dir("taskonomy", root=data_root, synthetic=synthetic)
        unknown = set(tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; known: {', '.join(TASKS)}")
        if depth_domain not in ("depth_zbuffer", "depth_euclidean"):
            raise ValueError(f"depth_domain must be depth_zbuffer or depth_euclidean, got {depth_domain!r}")
        lst = self.root / "splits" / f"{split}.txt"
        if not lst.is_file():
            raise DatasetNotFoundError(f"no split list {lst}; prepare the data with `python -m data_prep taskonomy`")
        self.tasks, self.split, self.depth_domain = tuple(tasks), split, depth_domain
        self.size = tuple(size) if size else None
        self.edge_threshold = edge_threshold
        self.num_classes = NUM_CLASSES
        self.items: list[tuple[str, str]] = []
        for b in lst.read_text().split():
            for p in sorted((self.root / b / "rgb").glob("*_domain_rgb.png")):
                m = _NAME.search(p.name)
                if m:
                    self.items.append((b, m.group(1)))
        if not self.items:
            raise DatasetNotFoundError(f"no rgb images for split {split!r} under {self.root}")
        self._cache: dict[int, dict[str, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def _file(self, building: str, stem: str, domain: str) -> Path:
        return self.root / building / domain / f"{stem}_domain_{domain}.png"

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        b, stem = self.items[index]
        rgb = _png(self._file(b, stem, "rgb"))[..., :3].astype(np.float32) / 255.0
        s: dict[str, torch.Tensor] = {"image": torch.from_numpy(rgb).permute(2, 0, 1).contiguous()}
        depth_raw = _png(self._file(b, stem, self.depth_domain)).astype(np.float32)
        valid = depth_raw < 65535
        if "seg" in self.tasks:
            lab = torch.from_numpy(_png(self._file(b, stem, "segment_semantic")).astype(np.int64))
            if lab.ndim == 3:
                lab = lab[..., 0]
            s["seg"] = torch.where((lab == 0) | (lab > NUM_CLASSES), torch.full_like(lab, IGNORE_INDEX), lab - 1)
        if "depth" in self.tasks:
            s["depth"] = torch.from_numpy(np.where(valid, depth_raw * DEPTH_UNIT, 0.0).astype(np.float32))[None]
        if "normals" in self.tasks:
            n = _png(self._file(b, stem, "normal"))[..., :3].astype(np.float32) / 127.5 - 1.0
            n = np.where(valid[..., None], n, 0.0)
            s["normals"] = torch.from_numpy(n).permute(2, 0, 1).contiguous()
        if "edges" in self.tasks:
            e = _png(self._file(b, stem, "edge_texture")).astype(np.float32) / 65535.0
            s["edges"] = torch.from_numpy((e >= self.edge_threshold).astype(np.float32))[None]
        s = finish_sample(s, self.size)
        if self._cache is not None:
            self._cache[index] = s
        return s
