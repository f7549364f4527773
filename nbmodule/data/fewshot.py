"""Few-shot classification data: class-indexed uint8 arrays, the MAML Omniglot split, N-way K-shot episodes.

On-disk layout: :mod:`data_prep.formats` (written once by ``data_prep.omniglot`` / ``data_prep.miniimagenet``,
real or synthetic alike; episodes are then sampled by indexing, with no image decoding in the training loop).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from data_prep.formats import FEWSHOT_FORMAT as FORMAT
from data_prep.formats import ClassArrays, LakeRuns, save_class_arrays, save_lake_runs

from .paths import DatasetNotFoundError

__all__ = [
    "FORMAT", "ClassArrays", "Episode", "FewShotSplit", "LakeRuns", "save_class_arrays", "load_class_arrays",
    "load_lake_runs", "save_lake_runs", "maml_omniglot_split", "omniglot_splits", "miniimagenet_splits",
    "episode_to_float",
]

#: The MAML Omniglot split (Finn et al. 2017, cbfinn/maml data_generator.py): characters of both sets
#: shuffled with a fixed seed; 1200 for meta-training (the last 100 of them held out for validation),
#: the remaining 423 for meta-test.
OMNIGLOT_TRAIN, OMNIGLOT_VAL, OMNIGLOT_TOTAL = 1100, 100, 1623


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{folder} holds no prepared few-shot data (no meta.json). Prepare it with `python -m data_prep "
            f"omniglot|miniimagenet --dest {folder}` (or `--synthetic`).")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise DatasetNotFoundError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; prepare it again")
    return meta


def load_class_arrays(folder: str | Path, part: str, *, mmap: bool = False) -> ClassArrays:
    """Read one part (``mmap=True`` memory-maps the images: MiniImagenet's train part is 0.8 GB)."""
    folder = Path(folder)
    meta = read_meta(folder)
    if part not in meta["parts"]:
        raise KeyError(f"{folder} has no part {part!r}; it has {', '.join(meta['parts'])}")
    images = np.load(folder / f"{part}_images.npy", mmap_mode="r" if mmap else None)
    labels = np.load(folder / f"{part}_labels.npy")
    return ClassArrays(images, labels, list(meta["parts"][part]["classes"]))


def load_lake_runs(folder: str | Path) -> LakeRuns | None:
    """The preprocessed Lake runs, or None when the dataset was prepared without ``all_runs.zip``."""
    path = Path(folder) / "lake20.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return LakeRuns(z["support"], z["query"], z["answer"])


# --- episodes ---------------------------------------------------------------------------------------
@dataclass
class Episode:
    """A batch of T tasks. Images stay uint8 until :func:`episode_to_float` (on the training device).

    xs: (T, N*K, C, H, W) uint8, ys: (T, N*K) int64 in [0, N); xq: (T, N*Q, C, H, W), yq: (T, N*Q);
    classes: (T, N) int64, the split's class index behind each episode label (for figures and tests).
    """

    xs: torch.Tensor
    ys: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor
    classes: torch.Tensor

    def to(self, device: torch.device | str) -> "Episode":
        return Episode(*(t.to(device, non_blocking=True) for t in (self.xs, self.ys, self.xq, self.yq, self.classes)))


def episode_to_float(ep: Episode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(xs, ys, xq, yq)`` with images as float32 in [0, 1]: the ``tasks`` tuple of ``nbmodule.meta``."""
    return ep.xs.float().div_(255.0), ep.ys, ep.xq.float().div_(255.0), ep.yq


class FewShotSplit:
    """The classes of one meta-split, stored class-contiguously, and an N-way K-shot episode sampler.

    ``images``: uint8 (M, H, W) or (M, H, W, 3); ``labels``: (M,) class ids; ``keep``: the class ids of
    this split (others are dropped). ``rotations=True`` makes every class four classes (0, 90, 180, 270
    degrees), as MAML/Vinyals et al. do for Omniglot: episode class ``c`` is base class ``c // 4`` rotated
    by ``(c % 4) * 90`` degrees. Images are kept on ``device`` (move once; gathers are then on-device).
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                 keep: Sequence[int], class_names: Sequence[str], *, rotations: bool = False,
                 device: torch.device | str = "cpu", name: str = ""):
        labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        keep = [int(k) for k in keep]
        if not keep:
            raise ValueError(f"split {name!r} has no classes")
        index_lists = [torch.nonzero(labels_t == k).flatten() for k in keep]
        counts = torch.tensor([len(ix) for ix in index_lists])
        if counts.min() == 0:
            empty = [class_names[k] for k, ix in zip(keep, index_lists) if len(ix) == 0][:3]
            raise ValueError(f"split {name!r}: classes without images: {empty}")
        order = torch.cat(index_lists)
        imgs = torch.as_tensor(np.asarray(images)[order.numpy()])
        if imgs.ndim == 3:
            imgs = imgs.unsqueeze(1)  # (M, 1, H, W)
        else:
            imgs = imgs.permute(0, 3, 1, 2)  # (M, 3, H, W)
        self.images = imgs.contiguous().to(device)
        self.starts = torch.cumsum(counts, 0) - counts  # first image of each class
        self.counts = counts
        self.class_names = [class_names[k] for k in keep]
        self.rotations = rotations
        self.name = name
        self.device = torch.device(device)

    @property
    def n_base_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_classes(self) -> int:
        return self.n_base_classes * (4 if self.rotations else 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"FewShotSplit({self.name!r}: {self.n_base_classes} classes"
                f"{' x4 rotations' if self.rotations else ''}, {len(self.images)} images {self.image_shape})")

    def sample(self, n_tasks: int, n_way: int, k_shot: int, k_query: int,
               generator: torch.Generator | None = None) -> Episode:
        """``n_tasks`` episodes of ``n_way`` classes drawn from this split only, ``k_shot`` support and
        ``k_query`` query images per class drawn without replacement. Episode labels are a fresh random
        assignment per task (classes are drawn in random order), reproducible from ``generator``."""
        if n_way > self.n_classes:
            raise ValueError(f"split {self.name!r} has {self.n_classes} classes, fewer than n_way={n_way}")
        per_class = k_shot + k_query
        if per_class > int(self.counts.min()):
            raise ValueError(f"split {self.name!r}: k_shot + k_query = {per_class} exceeds the "
                             f"{int(self.counts.min())} images of its smallest class")
        g = generator
        classes = torch.stack([torch.randperm(self.n_classes, generator=g)[:n_way] for _ in range(n_tasks)])
        base = classes // 4 if self.rotations else classes  # (T, N)
        # k_shot + k_query distinct images per (task, class): the first columns of a random permutation
        counts = self.counts[base]  # (T, N)
        keys = torch.rand(n_tasks, n_way, int(self.counts.max()), generator=g)
        keys = keys.masked_fill(torch.arange(keys.shape[-1]) >= counts.unsqueeze(-1), 2.0)  # never pick padding
        pick = keys.argsort(dim=-1)[..., :per_class]  # (T, N, K+Q)
        idx = (self.starts[base].unsqueeze(-1) + pick).to(self.device)
        x = self.images[idx]  # (T, N, K+Q, C, H, W) uint8
        if self.rotations:
            x = _rotate_classes(x, (classes % 4).to(self.device))
        T, N = n_tasks, n_way
        shape = x.shape[3:]
        xs = x[:, :, :k_shot].reshape(T, N * k_shot, *shape)
        xq = x[:, :, k_shot:].reshape(T, N * k_query, *shape)
        labels = torch.arange(N, device=self.device)
        ys = labels.repeat_interleave(k_shot).expand(T, -1).contiguous()
        yq = labels.repeat_interleave(k_query).expand(T, -1).contiguous()
        return Episode(xs, ys, xq, yq, classes.to(self.device))


def _rotate_classes(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate x (T, N, S, C, H, W) by ``quarter_turns[t, n] * 90`` degrees per (task, class)."""
    out = x.clone()
    for k in (1, 2, 3):
        mask = quarter_turns == k
        if mask.any():
            out[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
    return out


# --- the standard splits ----------------------------------------------------------------------------
def maml_omniglot_split(n_classes: int, seed: int = 1) -> tuple[list[int], list[int], list[int]]:
    """Class ids for meta-train / meta-val / meta-test: a seeded shuffle of all characters, then
    1100 / 100 / the rest as in MAML's code (1200 training characters in the paper's words). Datasets
    with fewer characters than the full 1623 (samples, synthetic data) keep the same proportions."""
    perm = np.random.RandomState(seed).permutation(n_classes).tolist()
    if n_classes >= OMNIGLOT_TOTAL:
        n_train, n_val = OMNIGLOT_TRAIN, OMNIGLOT_VAL
    else:
        n_train = int(round(n_classes * OMNIGLOT_TRAIN / OMNIGLOT_TOTAL))
        n_val = max(1, int(round(n_classes * OMNIGLOT_VAL / OMNIGLOT_TOTAL)))
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def omniglot_splits(folder: str | Path, *, split: Literal["maml", "background"] = "maml", seed: int = 1,
                    rotations: bool = True, device: torch.device | str = "cpu"
                    ) -> dict[str, FewShotSplit]:
    """Omniglot meta-train/val/test splits of a prepared folder.

    ``split="maml"``: MAML's split of all 1623 characters (see :func:`maml_omniglot_split`).
    ``split="background"``: Lake et al.'s protocol: background alphabets for meta-training (a seeded 10%
    of their characters for validation), evaluation alphabets for meta-test; use it when the Lake runs
    (drawn from the evaluation alphabets) must not overlap the training characters.
    """
    arrays = load_class_arrays(folder, "all")
    n = len(arrays.classes)
    if split == "maml":
        train, val, test = maml_omniglot_split(n, seed)
    elif split == "background":
        bg = [i for i, c in enumerate(arrays.classes) if c.startswith("background/")]
        ev = [i for i, c in enumerate(arrays.classes) if not c.startswith("background/")]
        if not bg or not ev:
            raise ValueError(f"{folder}: split='background' needs both background and evaluation characters")
        perm = np.random.RandomState(seed).permutation(len(bg))
        n_val = max(1, len(bg) // 10)
        val = [bg[i] for i in perm[:n_val]]
        train = [bg[i] for i in perm[n_val:]]
        test = ev
    else:
        raise ValueError(f"unknown Omniglot split {split!r}; use 'maml' or 'background'")
    return {name: FewShotSplit(arrays.images, arrays.labels, keep, arrays.classes, rotations=rotations,
                               device=device, name=name)
            for name, keep in (("train", train), ("val", val), ("test", test))}


def miniimagenet_splits(folder: str | Path, *, device: torch.device | str = "cpu") -> dict[str, FewShotSplit]:
    """MiniImagenet's Ravi & Larochelle train (64) / val (16) / test (20 classes) splits."""
    out = {}
    for name in ("train", "val", "test"):
        arrays = load_class_arrays(folder, name, mmap=True)
        out[name] = FewShotSplit(arrays.images, arrays.labels, range(len(arrays.classes)), arrays.classes,
                                 device=device, name=name)
    return out
