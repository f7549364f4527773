"""The three tasks' data: prepared through ``data_prep.obtain`` (real first, or synthetic), opened by the
native-format readers of :mod:`nbmodule.data`, and checked before any training."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import ConfigError
from ...data.coco import CocoDetection
from ...data.imagenette import ImagenetteFolder
from ...data.vision import TaskDataset
from ...data.voc import VOCSegmentation
from .config import ReplayConfig
from .protocol import TASKS

__all__ = ["DATASETS", "TaskData", "prepare_tasks", "open_task"]

#: task -> the data_prep dataset it is trained on
DATASETS = {"seg": "voc", "det": "coco", "cls": "imagenette"}


@dataclass
class TaskData:
    """A task's train (augmented) and val datasets, and where they came from."""

    train: TaskDataset
    val: TaskDataset
    path: Path
    synthetic: bool
    source: str = ""
    note: str = ""

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def describe(self) -> dict[str, Any]:
        """What ``data.json`` records for this task."""
        return {"dataset": DATASETS[self.train.task], "path": str(self.path), "synthetic": self.synthetic,
                "source": self.source, "note": self.note, "train": len(self.train), "val": len(self.val),
                "classes": list(getattr(self.train, "classes", ())), "image_size": self.train.image_size}


def open_task(cfg: ReplayConfig, task: str, root: str | Path, *, splits: tuple[str, str] = ("train", "val"),
              synthetic: bool = False, source: str = "", note: str = "") -> TaskData:
    """Open ``task``'s prepared dataset at ``root`` (``splits``: train and val split names) and check it."""
    reader = {"seg": VOCSegmentation, "det": CocoDetection, "cls": ImagenetteFolder}[task]
    extra = {"classes": cfg.det_classes} if task == "det" else {}
    try:
        train = reader(root, splits[0], image_size=cfg.image_size, train=True, limit=cfg.n_train, **extra)
        val = reader(root, splits[1], image_size=cfg.image_size, train=False, limit=cfg.n_val, **extra)
    except ValueError as err:  # e.g. det_classes naming categories the set does not have
        raise ConfigError(f"{task} data at {root}: {err}") from None
    for split, ds in zip(splits, (train, val)):
        if len(ds) == 0:
            raise ConfigError(f"{task} data at {root}: split {split!r} holds no image")
    if train.num_classes < 1:
        raise ConfigError(f"{task} data at {root}: no class to learn")
    if task == "det" and not any(train.annotations):
        raise ConfigError(f"det data at {root}: no training image holds a box of {list(train.classes)}")
    return TaskData(train, val, Path(root), synthetic, source, note)


def prepare_tasks(cfg: ReplayConfig, root: str | Path) -> dict[str, TaskData]:
    """Make the three datasets ready under the data root ``root`` and open them.

    ``cfg.synthetic``: synthetic shapes at ``cfg.scale``. Otherwise the real mini VOC / COCO / Imagenette
    (already prepared, from ``NBM_MIRROR``, or downloaded); a dataset that cannot be had falls back to
    synthetic data, and its ``note`` says why (the notebook prints it, ``metrics.json`` has ``synthetic``).
    """
    from data_prep import obtain

    out = {}
    for task in TASKS:
        got = obtain(DATASETS[task], root, prefer="synthetic" if cfg.synthetic else "real", seed=cfg.data_seed,
                     scale=cfg.scale)
        out[task] = open_task(cfg, task, got.path, synthetic=got.synthetic, source=got.source, note=got.note)
    return out
