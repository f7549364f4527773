"""Mini Imagenette-160: fastai's imagenette2-160.tgz -> a small ImageFolder copy, or synthetic.

Output layout (what :class:`nbmodule.data.imagenette.ImagenetteFolder` reads)::

    <dest>/imagenette2-160/{train,val}/<wnid>/<file>.JPEG

``convert`` copies ``n_train`` train and ``n_val`` val images, balanced over the 10 classes (seeded),
byte for byte. The tgz is scanned once for names and once to copy the chosen members.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._shapes import SHAPES, background, class_colour, draw_shape, random_box, scale_sizes
from .extract import confined, open_tar
from .fetch import Mirror, RemoteFile
from .registry import DatasetSpec

TGZ = "imagenette2-160.tgz"
WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
         "n03425413", "n03445777", "n03888257")


def _balanced(paths: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` paths spread evenly over the classes (the wnid folder), drawn at random within a class."""
    by_class: dict[str, list[str]] = {}
    for p in sorted(paths):
        by_class.setdefault(p.split("/")[-2], []).append(p)
    chosen = []
    for k, (_, items) in enumerate(sorted(by_class.items())):
        m = n // len(by_class) + (1 if k < n % len(by_class) else 0)
        chosen += [items[i] for i in rng.permutation(len(items))[:m]]
    return chosen


def convert(files: dict[str, Path], dest: Path, n_train: int = 240, n_val: int = 60, seed: int = 0) -> None:
    """See the module docstring. A smaller archive gives what it has (with a warning); every output path
    built from a member name goes through :func:`data_prep.extract.confined`."""
    rng = np.random.default_rng(seed)
    dest = Path(dest)
    archive = files[TGZ]
    with open_tar(archive) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile() and m.name.lower().endswith((".jpeg", ".jpg"))]
    chosen = set()
    for split, n in (("train", n_train), ("val", n_val)):
        in_split = [p for p in names if f"/{split}/" in p]
        if len(in_split) < n:
            print(f"[data_prep] imagenette: {split}: {n} images asked for, the archive has {len(in_split)}; "
                  "using them all")
        chosen |= set(_balanced(in_split, n, rng))
    if not any("/train/" in p for p in chosen):
        raise ValueError(f"{archive}: no <root>/train/<wnid>/*.JPEG images inside (is it an Imagenette archive?)")
    with open_tar(archive) as tf:
        for m in tf:
            if m.name in chosen:
                parts = m.name.split("/")  # imagenette2-160/<split>/<wnid>/<file>
                out = confined(dest, *parts[-4:], what=f"{archive.name} member")
                out.parent.mkdir(parents=True, exist_ok=True)
                fh = tf.extractfile(m)
                if fh is None:
                    raise ValueError(f"{archive}: member {m.name} is not a regular file")
                out.write_bytes(fh.read())


def synthesize(dest: Path, seed: int = 0, scale: str = "cpu", n_train: int | None = None,
               n_val: int | None = None, image_size: int | None = None) -> None:
    """One large object per image (class fixes shape and hue) among small distractors of random hue."""
    n_train, n_val, size = scale_sizes(scale, n_train, n_val, image_size)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(n):
            c = k % 10
            img = background(size, rng)
            for _ in range(int(rng.integers(0, 3))):
                draw_shape(img, SHAPES[int(rng.integers(0, 4))], random_box(size, rng, 0.08, 0.15),
                           class_colour(int(rng.integers(0, 10)), 10, rng, offset=0.5))
            draw_shape(img, SHAPES[c % 4], random_box(size, rng, 0.4, 0.7), class_colour(c, 10, rng, offset=0.1))
            folder = Path(dest) / "imagenette2-160" / split / WNIDS[c]
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{WNIDS[c]}_{split}_{k:05d}.JPEG", quality=92)


def is_ready(dest: Path) -> bool:
    root = Path(dest) / "imagenette2-160"
    return (root / "train").is_dir() and (root / "val").is_dir()


SPEC = DatasetSpec(
    name="imagenette",
    summary="mini Imagenette-160 (10 ImageNet classes, ImageFolder train/val)",
    files=(RemoteFile(TGZ, (Mirror(f"https://s3.amazonaws.com/fast-ai-imageclas/{TGZ}", "fastai S3"),),
                      md5="e793b78cc4c9e9a4ccc0c1155377a412", size=99_003_388),),
    convert=convert,
    synthesize=synthesize,
    is_ready=is_ready,
    homepage="https://github.com/fastai/imagenette",
    notes="Mini version: n_train/n_val images balanced over the 10 classes (seeded).",
    options={"n_train": 240, "n_val": 60, "seed": 0, "scale": "cpu (synthetic: smoke|cpu|full)"},
)
