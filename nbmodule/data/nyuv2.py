"""NYU-Depth-v2 for multi-task dense prediction, in the two layouts people have on disk.

* ``nyud_mt`` (Maninis et al.'s NYUD_MT, used by ASTMT / MTI-Net / the MTML seed): ``images/<id>.jpg``,
  ``segmentation/<id>.png`` (NYU-40 ids, 0 = unlabeled), ``depth/<id>.npy`` (H, W) metres,
  ``normals/<id>.npy`` (H, W, 3), ``edge/<id>.npy`` (H, W), ``gt_sets/<split>.txt``; 480x640, 40 classes.
* ``mtan`` (MTAN / Auto-Lambda / LibMTL): ``<split>/{image,label,depth,normal}/<i>.npy``; 288x384,
  13 classes stored 0..12 with -1 unlabeled, no edges; splits ``train`` (795) and ``val`` (654).

Both give the same sample, a dict of tensors (``H, W`` = ``size`` when given, else the stored size)::

    image        (3, H, W) float in [0, 1]
    seg          (H, W) int64 class ids 0..C-1, 255 = ignore (unlabeled)
    depth        (1, H, W) float metres, 0 where invalid;     depth_mask   (1, H, W) bool
    normals      (3, H, W) float unit vectors, 0 where invalid; normals_mask (1, H, W) bool
    edges        (1, H, W) float in {0, 1}                      (nyud_mt only)

:func:`load_label13_png` reads the official 13-class label PNGs (0 = unlabeled -> 255, c -> c - 1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .paths import DatasetNotFoundError, dataset_dir

__all__ = ["TASKS", "IGNORE_INDEX", "NYUDv2", "DatasetDamagedError", "detect_layout", "load_label13_png",
           "resize_sample", "finish_sample", "num_classes_of", "read_file"]

TASKS = ("seg", "depth", "normals", "edges")
IGNORE_INDEX = 255


class DatasetDamagedError(OSError):
    """A file of a prepared dataset is missing or cannot be decoded; the message names it."""


def read_file(path: Path, read, dataset: str = "nyuv2"):
    """``read(path)``, or :class:`DatasetDamagedError` naming the file and the way to rebuild the dataset (a
    truncated ``.npy`` or image otherwise fails deep inside numpy or Pillow without a path)."""
    try:
        return read(path)
    except (OSError, ValueError, EOFError) as err:
        what = "is missing" if isinstance(err, FileNotFoundError) else \
            f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        raise DatasetDamagedError(f"{path} {what}: the prepared dataset is damaged; rebuild it with "
                                  f"`python -m data_prep {dataset} --force` (add --synthetic for generated data)") from None


def detect_layout(root: str | Path) -> str:
    """``"nyud_mt"`` or ``"mtan"`` from the folder's content; raises when it is neither."""
    root = Path(root)
    if (root / "gt_sets").is_dir() and (root / "images").is_dir():
        return "nyud_mt"
    if (root / "train" / "image").is_dir():
        return "mtan"
    raise DatasetNotFoundError(
        f"{root} holds neither the NYUD_MT layout (images/, gt_sets/) nor the MTAN .npy layout "
        "(train/image/). Get it with `python -m data_prep nyuv2` (or `nyuv2_13`), or write synthetic "
        "scenes with `python -m data_prep nyuv2 --synthetic`.")


def num_classes_of(layout: str) -> int:
    return 40 if layout == "nyud_mt" else 13


def load_label13_png(path: str | Path) -> torch.Tensor:
    """A 13-class NYU label PNG (``new_nyu_class13_NNNN.png``, 0 = unlabeled) as (H, W) int64, 255 = ignore."""
    from PIL import Image

    lab = torch.from_numpy(np.array(Image.open(path), dtype=np.int64))
    if lab.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel label image, got shape {tuple(lab.shape)}")
    return torch.where(lab == 0, torch.full_like(lab, IGNORE_INDEX), lab - 1)


def _masked_normals(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) normals -> unit normals and the (1, H, W) mask of pixels that have one."""
    norm = n.norm(dim=0, keepdim=True)
    mask = norm > 1e-3
    return torch.where(mask, n / norm.clamp(min=1e-6), torch.zeros_like(n)), mask


def resize_sample(sample: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Resize every map of a sample to ``size`` (H, W): bilinear for the image, nearest for the labels
    (interpolating depth or class ids across an object boundary invents values that are in neither)."""
    out = {}
    for k, v in sample.items():
        if v.shape[-2:] == tuple(size):
            out[k] = v
        elif k == "image":
            out[k] = F.interpolate(v[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        elif k == "edges":  # keep thin edges: an output pixel is an edge if its area holds one
            out[k] = (F.adaptive_max_pool2d(v[None], size)[0] if v.shape[-2] >= size[0]
                      else F.interpolate(v[None], size=size, mode="nearest")[0])
        elif k == "seg":
            out[k] = F.interpolate(v[None, None].float(), size=size, mode="nearest")[0, 0].long()
        else:
            out[k] = F.interpolate(v[None].float(), size=size, mode="nearest")[0].to(v.dtype)
    return out


def finish_sample(sample: dict[str, torch.Tensor], size: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """Resize a loaded sample (when ``size``) and add the masks of invalid depth (0) and normals (zero vectors)."""
    if size:
        sample = resize_sample(sample, size)
    if "depth" in sample:
        sample["depth_mask"] = sample["depth"] > 0
    if "normals" in sample:
        sample["normals"], sample["normals_mask"] = _masked_normals(sample["normals"])
    return sample

class NYUDv2(Dataset):
    """NYU-v2 (or synthetic scenes written in its layout) as a map-style dataset of task dicts.

    ``root``: the dataset folder, or None for ``<data root>/[synthetic/]nyuv2``. ``layout``: "auto",
    "nyud_mt" or "mtan". ``tasks``: a subset of ``TASKS`` (edges need NYUD_MT). ``cache``: keep decoded
    samples in memory (small sets; a 795-image 288x384 copy is ~3 GB, so off by default).
    """

    def __init__(self, root: str | Path | None = None, split: str = "train", *, tasks: Sequence[str] = TASKS,
                 size: tuple[int, int] | None = None, layout: str = "auto", synthetic: bool = False,
                 data_root: str | Path | None = None, cache: bool = False):
        self.root = Path(root) if root else dataset_dir("nyuv2", root=data_root, synthetic=synthetic)
        self.layout = detect_layout(self.root) if layout == "auto" else layout
        if self.layout not in ("nyud_mt", "mtan"):
            raise ValueError(f"layout must be 'auto', 'nyud_mt' or 'mtan', got {layout!r}")
        unknown = set(tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; known: {', '.join(TASKS)}")
        if self.layout == "mtan" and "edges" in tasks:
            raise ValueError("the MTAN .npy layout has no edge labels: drop 'edges' from tasks or use NYUD_MT")
        self.tasks = tuple(tasks)
        self.split = split
        self.size = tuple(size) if size else None
        self.num_classes = num_classes_of(self.layout)
        if self.layout == "nyud_mt":
            lst = self.root / "gt_sets" / f"{split}.txt"
            if not lst.is_file():
                have = sorted(p.stem for p in (self.root / "gt_sets").glob("*.txt"))
                raise DatasetNotFoundError(f"no split {split!r} in {self.root}/gt_sets (have: {', '.join(have)})")
            self.ids = [line.strip() for line in lst.read_text().splitlines() if line.strip()]
        else:
            folder = self.root / split / "image"
            if not folder.is_dir():
                have = sorted(p.name for p in self.root.iterdir() if (p / "image").is_dir())
                raise DatasetNotFoundError(f"no split {split!r} in {self.root} (have: {', '.join(have)})")
            self.ids = sorted((p.stem for p in folder.glob("*.npy")), key=int)
        self._cache: dict[int, dict[str, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = finish_sample(self._load_nyud_mt(index) if self.layout == "nyud_mt" else self._load_mtan(index),
                               self.size)
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def _load_nyud_mt(self, index: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        name, r = self.ids[index], self.root

        def image(path: Path, mode: str | None = None) -> np.ndarray:
            with Image.open(path) as im:
                return np.array(im.convert(mode) if mode else im)

        img = read_file(r / "images" / f"{name}.jpg", lambda p: image(p, "RGB")).astype(np.float32) / 255.0
        out = {"image": torch.from_numpy(img).permute(2, 0, 1).contiguous()}
        if "seg" in self.tasks:
            lab = torch.from_numpy(read_file(r / "segmentation" / f"{name}.png", image).astype(np.int64))
            # NYUD_MT: 0 unlabeled, 1..40 classes -> 0..39, 255 ignore
            out["seg"] = torch.where(lab == 0, torch.full_like(lab, IGNORE_INDEX), lab - 1)
        if "depth" in self.tasks:
            dep = read_file(r / "depth" / f"{name}.npy", np.load).astype(np.float32)
            out["depth"] = torch.from_numpy(np.nan_to_num(dep, nan=0.0)).reshape(1, *dep.shape[:2])
        if "normals" in self.tasks:
            nrm = np.nan_to_num(read_file(r / "normals" / f"{name}.npy", np.load).astype(np.float32))
            out["normals"] = torch.from_numpy(nrm).permute(2, 0, 1).contiguous()
        if "edges" in self.tasks:
            edge = read_file(r / "edge" / f"{name}.npy", np.load).astype(np.float32)
            out["edges"] = torch.from_numpy((edge > 0.5).astype(np.float32)).reshape(1, *edge.shape[:2])
        return out

    def _load_mtan(self, index: int) -> dict[str, torch.Tensor]:
        i, base = self.ids[index], self.root / self.split
        img = read_file(base / "image" / f"{i}.npy", np.load, "nyuv2_13").astype(np.float32)
        out = {"image": torch.from_numpy(np.moveaxis(img, -1, 0).copy())}
        if "seg" in self.tasks:
            lab = torch.from_numpy(read_file(base / "label" / f"{i}.npy", np.load, "nyuv2_13")).long()
            out["seg"] = torch.where(lab < 0, torch.full_like(lab, IGNORE_INDEX), lab)
        if "depth" in self.tasks:
            dep = read_file(base / "depth" / f"{i}.npy", np.load, "nyuv2_13").astype(np.float32)
            out["depth"] = torch.from_numpy(dep.reshape(1, *dep.shape[:2]))
        if "normals" in self.tasks:
            nrm = read_file(base / "normal" / f"{i}.npy", np.load, "nyuv2_13").astype(np.float32)
            out["normals"] = torch.from_numpy(np.moveaxis(nrm, -1, 0).copy())
        return out
