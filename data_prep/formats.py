"""On-disk formats that ``data_prep`` writes and ``nbmodule.data`` reads, defined once, here.

Few-shot class arrays (Omniglot, MiniImagenet; real or synthetic alike)::

    <dataset dir>/
      meta.json              {"format": "nbmodule-fewshot-v1", "dataset", "image_size", "channels",
                              "synthetic", "source", "parts": {part: {"classes": [names], "count": N}}}
      <part>_images.npy      uint8 (N, H, W) gray (stroke/foreground = 255) or (N, H, W, 3) RGB
      <part>_labels.npy      int32 (N,) index into the part's class list
      lake20.npz             (Omniglot only, when the Lake runs were given) support (R, 20, H, W) uint8 with
                              support[r, j] = runRR/training/class{j+1}.png, query (R, 20, H, W) with
                              query[r, i] = runRR/test/item{i+1}.png, answer (R, 20) int64: the index j of
                              the training image class_labels.txt pairs with each test item

Omniglot has one part, ``all`` (background then evaluation characters, class names
``background/<alphabet>/<character>``); MiniImagenet has ``train``/``val``/``test`` (the Ravi split CSVs).

The VOC colour map (:func:`voc_palette`) is the one of the official ``SegmentationClass`` PNGs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FEWSHOT_FORMAT", "FEWSHOT_META", "LAKE_RUNS_FILE", "ClassArrays", "LakeRuns", "images_file",
           "labels_file", "save_class_arrays", "save_lake_runs", "voc_palette"]

FEWSHOT_FORMAT = "nbmodule-fewshot-v1"
FEWSHOT_META = "meta.json"
LAKE_RUNS_FILE = "lake20.npz"


def images_file(part: str) -> str:
    return f"{part}_images.npy"


def labels_file(part: str) -> str:
    return f"{part}_labels.npy"


@dataclass
class ClassArrays:
    """One part of a dataset: ``images`` uint8 (N, H, W[, 3]), ``labels`` int (N,), ``classes`` names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]


@dataclass
class LakeRuns:
    """The Lake et al. (2015) one-shot runs: ``support``/``query`` uint8 (R, 20, H, W), ``answer`` (R, 20)."""

    support: np.ndarray
    query: np.ndarray
    answer: np.ndarray


def save_class_arrays(dest: str | Path, parts: dict[str, ClassArrays], *, dataset: str, synthetic: bool,
                      source: str, **extra: object) -> Path:
    """Write ``parts`` in the layout above (``meta.json`` last, so a folder with it is complete).

    ``extra``: more JSON-able entries for ``meta.json`` (e.g. the synthetic ``scale``)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    meta_parts = {}
    shape = None
    for name, part in parts.items():
        images = np.ascontiguousarray(part.images, dtype=np.uint8)
        labels = np.asarray(part.labels, dtype=np.int32)
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(f"part {name!r}: images {images.shape} and labels {labels.shape} do not match")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(part.classes)):
            raise ValueError(f"part {name!r}: labels outside [0, {len(part.classes)})")
        shape = images.shape[1:]
        np.save(dest / images_file(name), images)
        np.save(dest / labels_file(name), labels)
        meta_parts[name] = {"classes": list(part.classes), "count": int(len(labels))}
    meta = {"format": FEWSHOT_FORMAT, "dataset": dataset, "synthetic": bool(synthetic), "source": source,
            "image_size": int(shape[0]) if shape else None,
            "channels": int(shape[2]) if shape and len(shape) == 3 else 1, "parts": meta_parts, **extra}
    (dest / FEWSHOT_META).write_text(json.dumps(meta, indent=1))
    return dest


def save_lake_runs(dest: str | Path, runs: LakeRuns) -> Path:
    path = Path(dest) / LAKE_RUNS_FILE
    np.savez(path, support=runs.support.astype(np.uint8), query=runs.query.astype(np.uint8),
             answer=runs.answer.astype(np.int64))
    return path


def voc_palette() -> list[int]:
    """The official VOC colour map (768 values, bit-interleaved), used to write "P" PNGs like VOC's."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal
