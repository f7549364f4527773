"""The MTML study's data: the dataset folder (real first, or synthetic scenes), its splits, batch streams."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Dataset, Subset

from ...config import ConfigError
from .config import HOLDOUT, MIN_SIDE, MtmlConfig

__all__ = ["Splits", "prepare_data", "load_splits", "frame_ids", "collate", "BatchStream", "HOLDOUT_SEED"]

#: the validation frames carved out of the training split do not depend on the run's seed, so every seed
#: and every run of a config selects on the same frames
HOLDOUT_SEED = 20_000_803


@dataclass
class Splits:
    """The three splits of a run: train (gradients), val (choices), test (every reported number)."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    size: tuple[int, int]  # (H, W) of the samples


def prepare_data(cfg: MtmlConfig, data_root: str | Path | None):
    """The dataset folder as a :class:`data_prep.registry.Prepared` (``.path``, ``.synthetic``, ``.note``).

    ``synthetic: true`` writes rendered scenes at ``scale`` (seed 0, the same for every run) when missing;
    ``synthetic: false`` takes the real dataset (prepared already, or from ``$NBM_MIRROR``, or downloaded)
    and falls back to synthetic scenes only when it cannot be had, saying why (``metrics.json`` then has
    ``synthetic`` = 1)."""
    from data_prep.registry import obtain

    got = obtain(cfg.dataset, data_root, prefer="synthetic" if cfg.synthetic else "real", seed=0, scale=cfg.scale,
                 fallback=True)
    if got.synthetic and not cfg.synthetic:
        print(f"[mtml] {got.note}")
    return got


def _dataset(cfg: MtmlConfig, root: Path, split: str) -> Dataset:
    size = tuple(cfg.image_size) if cfg.image_size else None
    if cfg.dataset in ("nyuv2", "nyuv2_13"):
        from ...data.nyuv2 import NYUDv2

        return NYUDv2(root, split, tasks=cfg.tasks, size=size, layout=cfg.layout, cache=cfg.cache)
    from ...data.taskonomy import Taskonomy

    return Taskonomy(root, split, tasks=cfg.tasks, size=size, cache=cfg.cache)


def frame_ids(data: Dataset) -> list[Any]:
    """A hashable identity per frame, comparable across splits (NYUD_MT frame names; MTAN (split, index);
    Taskonomy (building, view))."""
    if isinstance(data, Subset):
        base = frame_ids(data.dataset)
        return [base[i] for i in data.indices]
    if hasattr(data, "items"):  # Taskonomy
        return list(data.items)
    if getattr(data, "layout", "") == "mtan":
        return [(data.split, i) for i in data.ids]
    return list(data.ids)


def load_splits(cfg: MtmlConfig, root: str | Path) -> Splits:
    """Train, val and test datasets of ``cfg``. ``val_split: holdout`` carves ``val_holdout`` frames (fixed by
    :data:`HOLDOUT_SEED`) out of ``train_split``. Refuses overlapping val/test frames, and stored images too
    small for the encoder, naming the field."""
    root = Path(root)
    train = _dataset(cfg, root, cfg.train_split)
    num_classes = train.num_classes
    if cfg.val_split == HOLDOUT:
        n = cfg.val_holdout
        if n >= len(train):
            raise ConfigError(f"val_holdout={n}: the training split {cfg.train_split!r} of {root} has only "
                              f"{len(train)} frames; hold out fewer")
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(HOLDOUT_SEED)).tolist()
        val, train = Subset(train, sorted(perm[:n])), Subset(train, sorted(perm[n:]))
    else:
        val = _dataset(cfg, root, cfg.val_split)
    test = _dataset(cfg, root, cfg.test_split)
    shared = set(frame_ids(val)) & set(frame_ids(test))
    if shared:
        raise ConfigError(f"val_split {cfg.val_split!r} and test_split {cfg.test_split!r} share {len(shared)} "
                          f"frames (e.g. {sorted(map(str, shared))[:3]}): selection would see the test set")
    h, w = test[0]["image"].shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise ConfigError(f"image_size: the samples of {root} are {h}x{w}; the encoders downsample by "
                          f"{MIN_SIDE}, so set image_size to at least [{MIN_SIDE}, {MIN_SIDE}]")
    return Splits(train, val, test, num_classes, (int(h), int(w)))


def collate(samples: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]).to(device, non_blocking=True) for k in samples[0]}


class BatchStream:
    """Endless shuffled batches (epochs without replacement) from a seeded generator; resumable via
    :meth:`state_dict` (the generator state, the epoch's permutation and the position in it: tensors and ints)."""

    def __init__(self, data: Dataset, batch_size: int, seed: int, device: torch.device):
        self.data, self.batch_size, self.device = data, min(batch_size, len(data)), device
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(data), generator=self.gen)
        self.pos = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.data), generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size].tolist()
        self.pos += self.batch_size
        return collate([self.data[i] for i in idx], self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])
