"""Mini PASCAL VOC 2012 segmentation: the official trainval tar -> a small VOC-layout copy, or synthetic.

Output layout (what :class:`nbmodule.data.voc.VOCSegmentation` reads)::

    <dest>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <dest>/VOCdevkit/VOC2012/SegmentationClass/<id>.png     palette "P" PNG: class index 0..20, 255 = ignore
    <dest>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt

``convert`` copies ``n_train`` ids drawn (seeded) from the official ``train.txt`` and ``n_val`` from ``val.txt``,
byte for byte (masks stay palette PNGs). The tar is read member by member, never fully extracted; every
output path built from an id goes through :func:`data_prep.extract.confined`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ._shapes import SHAPES, background, boundary, class_colour, draw_shape, random_box, scale_sizes
from .extract import confined, open_tar
from .fetch import Mirror, RemoteFile
from .formats import voc_palette
from .registry import DatasetSpec

TAR = "VOCtrainval_11-May-2012.tar"
BASE = "VOCdevkit/VOC2012"


def _layout(dest: Path) -> Path:
    root = Path(dest) / BASE
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _pick(ids: list[str], n: int, rng: np.random.Generator) -> list[str]:
    n = min(n, len(ids))
    return sorted(ids[i] for i in rng.choice(len(ids), size=n, replace=False))


def convert(files: dict[str, Path], dest: Path, n_train: int = 240, n_val: int = 60, seed: int = 0) -> None:
    """``n_train`` ids of the official Segmentation ``train.txt`` and ``n_val`` of ``val.txt`` (seeded), copied
    byte for byte. A smaller archive (a sample) gives what it has, with a warning; ids whose image or mask is
    missing from the archive are skipped, with a warning."""
    rng = np.random.default_rng(seed)
    root = _layout(dest)
    archive = files[TAR]
    with open_tar(archive) as tf:
        members = {m.name.lstrip("./"): m for m in tf.getmembers() if m.isfile()}
        prefix = next((p for p in ("VOCdevkit/VOC2012", "TrainVal/VOCdevkit/VOC2012")
                       if f"{p}/ImageSets/Segmentation/train.txt" in members), None)
        if prefix is None:
            raise ValueError(f"{archive}: no VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt inside")

        def read(name: str) -> bytes:
            fh = tf.extractfile(members[f"{prefix}/{name}"])
            if fh is None:
                raise ValueError(f"{archive}: member {prefix}/{name} is not a regular file")
            return fh.read()

        for split, n in (("train", n_train), ("val", n_val)):
            listing = f"ImageSets/Segmentation/{split}.txt"
            if f"{prefix}/{listing}" not in members:
                raise ValueError(f"{archive}: no {prefix}/{listing} inside")
            ids = read(listing).decode().split()
            have = [i for i in ids if f"{prefix}/JPEGImages/{i}.jpg" in members
                    and f"{prefix}/SegmentationClass/{i}.png" in members]
            if len(have) < len(ids):
                print(f"[data_prep] voc: {len(ids) - len(have)} of the {len(ids)} {split} ids have no image or mask "
                      f"in {archive.name}; skipped")
            if len(have) < n:
                print(f"[data_prep] voc: {split}: {n} images asked for, the archive has {len(have)}; using them all")
            chosen = _pick(have, n, rng)
            for img_id in chosen:
                jpg = confined(root / "JPEGImages", f"{img_id}.jpg", what=f"{split}.txt id")
                png = confined(root / "SegmentationClass", f"{img_id}.png", what=f"{split}.txt id")
                jpg.write_bytes(read(f"JPEGImages/{img_id}.jpg"))
                png.write_bytes(read(f"SegmentationClass/{img_id}.png"))
            (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in chosen))
        if not (root / "ImageSets" / "Segmentation" / "train.txt").read_text().strip():
            raise ValueError(f"{archive}: no training image with a segmentation mask")


def synthesize(dest: Path, seed: int = 0, scale: str = "cpu", n_train: int | None = None,
               n_val: int | None = None, image_size: int | None = None) -> None:
    """Shapes on textured backgrounds; class c in 1..20 fixes shape (c % 4) and hue; 255 outlines."""
    n_train, n_val, size = scale_sizes(scale, n_train, n_val, image_size)
    rng = np.random.default_rng(seed)
    root = _layout(dest)
    palette = voc_palette()
    for split, n in (("train", n_train), ("val", n_val)):
        ids = []
        for k in range(n):
            img_id = f"2012_{split}_{k:05d}"
            img = background(size, rng)
            mask_img = Image.new("L", (size, size), 0)
            for _ in range(int(rng.integers(1, 4))):
                c = int(rng.integers(1, 21))
                box = random_box(size, rng, 0.25, 0.6)
                draw_shape(img, SHAPES[c % 4], box, class_colour(c - 1, 20, rng))
                draw_shape(mask_img, SHAPES[c % 4], box, c)
            mask = np.asarray(mask_img, dtype=np.uint8).copy()
            mask[boundary(mask)] = 255
            png = Image.fromarray(mask, mode="P")
            png.putpalette(palette)
            img.save(root / "JPEGImages" / f"{img_id}.jpg", quality=92)
            png.save(root / "SegmentationClass" / f"{img_id}.png")
            ids.append(img_id)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def is_ready(dest: Path) -> bool:
    seg = Path(dest) / BASE / "ImageSets" / "Segmentation"
    return (seg / "train.txt").is_file() and (seg / "val.txt").is_file()


SPEC = DatasetSpec(
    name="voc",
    summary="mini PASCAL VOC 2012 segmentation (21 classes, palette PNG masks, 255 = ignore)",
    files=(RemoteFile(TAR, (
        Mirror(f"https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/{TAR}", "Oxford VGG (current official host)"),
        Mirror(f"http://host.robots.ox.ac.uk/pascal/VOC/voc2012/{TAR}", "Oxford (historic host, often down)"),
        Mirror(f"https://pjreddie.com/media/files/{TAR}", "J. Redmon's mirror"),
        Mirror(f"https://d2l-data.s3-accelerate.amazonaws.com/{TAR}", "Dive into Deep Learning's S3 mirror"),
    ), md5="6cd6e144f989b92b3379bac3b3de84fd", size=1_999_639_040),),
    convert=convert,
    synthesize=synthesize,
    is_ready=is_ready,
    homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
    notes="Mini version: n_train ids from the official Segmentation train.txt, n_val from val.txt (seeded).",
    options={"n_train": 240, "n_val": 60, "seed": 0, "scale": "cpu (synthetic: smoke|cpu|full)"},
)
