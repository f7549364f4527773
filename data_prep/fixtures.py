"""An offline mirror of every dataset, in the published archive names and layouts, for the GPU dry run.

``build_dry_mirror(dest, shared=...)`` (or ``python -m data_prep dry-mirror --shared DIR --dest DIR``)
writes ``<dest>/<dataset>/<official archive name>`` plus a ``SHA256SUMS`` beside them, so that with
``NBM_MIRROR=<dest>`` the real path of every dataset (mirror lookup -> checksum -> extract -> convert ->
load) runs without a network:

* ``omniglot``: the shared complete Omniglot zips (``images_background.zip``, ``images_evaluation.zip``,
  ``all_runs.zip``) linked (or copied) with the shared ``SHA256SUMS`` lines: real data.
* ``voc``: ``VOCtrainval_11-May-2012.tar`` (``VOCdevkit/VOC2012/...``) from the shared sample, real images
  and masks. The sample has one image with a segmentation mask, so it is listed in both ``train.txt``
  and ``val.txt`` of ``ImageSets/Segmentation`` (the only departure from the official lists).
* ``coco``: ``annotations_trainval2017.zip`` (``annotations/instances_val2017.json`` = the shared real
  instances JSON) and ``val2017.zip`` (``val2017/<file_name>``): the 6 real images.
* ``imagenette``: ``imagenette2-160.tgz`` (``imagenette2-160/{train,val}/<wnid>/*.JPEG``, shorter side
  160 px as fastai's) from the shared real photos.
* Where no real sample exists here, fabricated content in the exact published layout and file names:
  ``miniimagenet`` (``images.zip`` with ``images/<official file name>.jpg``, 84x84, made from the shared
  real class exemplars with random crops/flips, and ``train/val/test.csv`` holding the official rows of
  the classes included), ``nyuv2`` (``NYUD_MT.tgz``: ``NYUD_MT/{images,segmentation,depth,normals,edge,
  gt_sets}`` with the official ``img_<5000+index>`` ids of splits.mat, rendered scenes at 480x640),
  ``nyuv2_13`` (MTAN's ``nyuv2.zip``: ``{train,val}/{image,label,depth,normal}/<i>.npy`` at 288x384) and
  ``taskonomy`` (``<building>_<domain>.tar`` holding ``<domain>/point_<p>_view_<v>_domain_<domain>.png``
  at 512x512), the scenes of :mod:`data_prep.scenes`.

Checksums of fabricated or repackaged archives differ from the official ones; the ``SHA256SUMS`` beside
them is what the mirror lookup accepts (and reports).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

__all__ = ["build_dry_mirror", "omniglot_files", "voc_archive", "coco_archives", "imagenette_archive",
           "miniimagenet_archive", "nyud_mt_archive", "mtan_archive", "taskonomy_archives", "write_sha256sums",
           "STAMP"]

STAMP = "DRY_MIRROR.txt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sha256sums(folder: Path, names: Iterable[str], known: dict[str, str] | None = None) -> Path:
    """``folder/SHA256SUMS`` (sha256sum format) for ``names``; ``known`` gives hashes to copy instead of
    computing them (the shared data's own listing)."""
    lines = [f"{(known or {}).get(n) or _sha256(folder / n)}  {n}\n" for n in sorted(names)]
    (folder / "SHA256SUMS").write_text("".join(lines))
    return folder / "SHA256SUMS"


def _need(shared: Path | None, *parts: str) -> Path:
    if shared is None:
        raise FileNotFoundError("the dry mirror needs the shared real-data folder (--shared DIR or NBM_SHARED_DATA)")
    path = Path(shared).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from the shared data folder")
    return path


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_300_000_000
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


# --- real samples under their official archive names ------------------------------------------------------
def omniglot_files(shared: Path, out: Path) -> list[str]:
    """Link (or copy) the shared complete Omniglot zips; SHA256SUMS copied from the shared listing."""
    src = _need(shared, "omniglot")
    known = {}
    listing = src / "SHA256SUMS"
    if listing.is_file():
        for line in listing.read_text().splitlines():
            bits = line.split()
            if len(bits) == 2:
                known[bits[1].lstrip("*")] = bits[0]
    names = ["images_background.zip", "images_evaluation.zip", "all_runs.zip"]
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        target = out / n
        if target.exists() or target.is_symlink():
            target.unlink()
        try:
            os.symlink(_need(shared, "omniglot", n).resolve(), target)
        except OSError:
            shutil.copy2(_need(shared, "omniglot", n), target)
    write_sha256sums(out, names, known)
    return names


def voc_archive(shared: Path, out: Path) -> list[str]:
    """``VOCtrainval_11-May-2012.tar`` from the shared VOC sample (see the module docstring)."""
    src = _need(shared, "voc", "VOCdevkit", "VOC2012")
    seg_ids = sorted(p.stem for p in (src / "SegmentationClass").glob("*.png")
                     if (src / "JPEGImages" / f"{p.stem}.jpg").is_file())
    if not seg_ids:
        raise FileNotFoundError(f"{src}: no image with a SegmentationClass mask")
    train = seg_ids[:max(1, len(seg_ids) - 1)] if len(seg_ids) > 1 else seg_ids
    val = seg_ids[len(train):] or seg_ids[-1:]
    out.mkdir(parents=True, exist_ok=True)
    name = "VOCtrainval_11-May-2012.tar"
    with tarfile.open(out / name, "w") as tf:
        for sub in ("Annotations", "JPEGImages", "SegmentationClass", "SegmentationObject"):
            for f in sorted((src / sub).glob("*")) if (src / sub).is_dir() else []:
                _add_bytes(tf, f"VOCdevkit/VOC2012/{sub}/{f.name}", f.read_bytes())
        main = src / "ImageSets" / "Main" / "trainval.txt"
        if main.is_file():
            _add_bytes(tf, "VOCdevkit/VOC2012/ImageSets/Main/trainval.txt", main.read_bytes())
        for split, ids in (("train", train), ("val", val), ("trainval", sorted(set(train) | set(val)))):
            _add_bytes(tf, f"VOCdevkit/VOC2012/ImageSets/Segmentation/{split}.txt",
                       "".join(f"{i}\n" for i in ids).encode())
    write_sha256sums(out, [name])
    return [name]


def coco_archives(shared: Path, out: Path) -> list[str]:
    """``annotations_trainval2017.zip`` and ``val2017.zip`` from the shared COCO sample."""
    import json

    ann = _need(shared, "coco", "annotations", "instances_sample2017.json")
    images = _need(shared, "coco", "sample2017")
    data = json.loads(ann.read_text())
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out / "annotations_trainval2017.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations/", "")
        zf.writestr("annotations/instances_val2017.json", ann.read_bytes())
    with zipfile.ZipFile(out / "val2017.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("val2017/", "")
        for im in data["images"]:
            zf.write(images / im["file_name"], f"val2017/{im['file_name']}")
    names = ["annotations_trainval2017.zip", "val2017.zip"]
    write_sha256sums(out, names)
    return names


def imagenette_archive(shared: Path, out: Path, side: int = 160) -> list[str]:
    """``imagenette2-160.tgz`` from the shared full-size sample, shorter side resized to ``side``."""
    from PIL import Image

    src = _need(shared, "imagenette", "imagenette2")
    out.mkdir(parents=True, exist_ok=True)
    name = "imagenette2-160.tgz"
    with tarfile.open(out / name, "w:gz", compresslevel=1) as tf:
        for f in sorted(src.rglob("*")):
            if not f.is_file() or f.suffix.lower() not in (".jpeg", ".jpg"):
                continue
            with Image.open(f) as im:
                scale = side / min(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=90)
            _add_bytes(tf, f"imagenette2-160/{f.relative_to(src).as_posix()}", buf.getvalue())
    write_sha256sums(out, [name])
    return [name]


# --- fabricated content in the published layouts ------------------------------------------------------------
def miniimagenet_archive(shared: Path, out: Path, classes_per_split: tuple[int, int, int] = (5, 5, 5),
                         per_class: int = 20, seed: int = 0) -> list[str]:
    """``images.zip`` + ``train/val/test.csv``: the first ``classes_per_split`` classes of each official
    split CSV, ``per_class`` of their official rows; each image a random crop/flip of the class's real
    exemplar photo (84x84 JPEG, as the Ravi images)."""
    import numpy as np
    from PIL import Image

    src = _need(shared, "miniimagenet")
    exemplars = {}
    ex_csv = src / "derived_84x84" / "class_exemplars.csv"
    if ex_csv.is_file():
        with open(ex_csv, newline="") as fh:
            exemplars = {r["label"]: src / "derived_84x84" / "class_exemplars" / r["filename"] for r in csv.DictReader(fh)}
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    with zipfile.ZipFile(out / "images.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("images/", "")
        for split, k in zip(("train", "val", "test"), classes_per_split):
            with open(_need(shared, "miniimagenet", f"{split}.csv"), newline="") as fh:
                rows = list(csv.DictReader(fh))
            labels = list(dict.fromkeys(r["label"] for r in rows))[:k]
            keep = [r for lab in labels for r in [r for r in rows if r["label"] == lab][:per_class]]
            for lab in labels:
                path = exemplars.get(lab)
                base = (Image.open(path).convert("RGB").resize((96, 96), Image.LANCZOS) if path and path.is_file()
                        else Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)))
                for r in (r for r in keep if r["label"] == lab):
                    x, y = (int(v) for v in rng.integers(0, 13, size=2))
                    im = base.crop((x, y, x + 84, y + 84))
                    if rng.random() < 0.5:
                        im = im.transpose(Image.FLIP_LEFT_RIGHT)
                    buf = io.BytesIO()
                    im.save(buf, format="JPEG", quality=92)
                    zf.writestr(f"images/{r['filename']}", buf.getvalue())
            with open(out / f"{split}.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["filename", "label"])
                w.writerows((r["filename"], r["label"]) for r in keep)
            names.append(f"{split}.csv")
    names.append("images.zip")
    write_sha256sums(out, names)
    return names


def _nyu_ids(shared: Path | None, counts: dict[str, int]) -> dict[str, list[str]]:
    """Official NYUD ids ``img_<5000 + 1-based index>`` of splits.mat (train / test = NYUD_MT's val)."""
    idx = {"train": list(range(1, 796)), "val": list(range(796, 1450))}
    mat = Path(shared) / "nyuv2" / "meta" / "splits.mat" if shared else None
    if mat is not None and mat.is_file():
        from scipy.io import loadmat

        m = loadmat(mat)
        idx = {"train": [int(v) for v in m["trainNdxs"].ravel()], "val": [int(v) for v in m["testNdxs"].ravel()]}
    return {s: [f"img_{5000 + i}" for i in idx[s][:n]] for s, n in counts.items()}


def nyud_mt_archive(shared: Path | None, out: Path, counts: dict[str, int] | None = None,
                    size: tuple[int, int] = (480, 640), seed: int = 0) -> list[str]:
    """``NYUD_MT.tgz`` (top folder ``NYUD_MT/``) of rendered scenes, official ids and resolution."""
    from .scenes import write_nyud_mt

    counts = counts or {"train": 4, "val": 2}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_nyud_mt(Path(tmp) / "NYUD_MT", seed=seed, size=size, names=_nyu_ids(shared, counts))
        with tarfile.open(out / "NYUD_MT.tgz", "w:gz", compresslevel=1) as tf:
            tf.add(root, arcname="NYUD_MT")
    write_sha256sums(out, ["NYUD_MT.tgz"])
    return ["NYUD_MT.tgz"]


def mtan_archive(out: Path, counts: dict[str, int] | None = None, size: tuple[int, int] = (288, 384),
                 seed: int = 0) -> list[str]:
    """MTAN's ``nyuv2.zip``: ``train/`` and ``val/`` with ``{image,label,depth,normal}/<i>.npy``."""
    from .scenes import write_mtan_npy

    counts = counts or {"train": 4, "val": 2}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_mtan_npy(Path(tmp) / "nyuv2", seed=seed, size=size,
                              counts={"train": counts["train"], "test": counts["val"]})
        with zipfile.ZipFile(out / "nyuv2.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for p in sorted(root.rglob("*")):
                zf.write(p, p.relative_to(root).as_posix())
    write_sha256sums(out, ["nyuv2.zip"])
    return ["nyuv2.zip"]


def taskonomy_archives(out: Path, frames: int = 2, size: tuple[int, int] = (512, 512), seed: int = 0) -> list[str]:
    """One ``<building>_<domain>.tar`` per building of the default subset and domain, each holding
    ``<domain>/point_<p>_view_0_domain_<domain>.png`` (rendered scenes, Taskonomy's encodings)."""
    from .scenes import write_taskonomy
    from .taskonomy import BUILDINGS, DOMAINS

    out.mkdir(parents=True, exist_ok=True)
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        syn = write_taskonomy(Path(tmp), seed=seed, size=size, counts={s: frames for s in BUILDINGS})
        for split, buildings in BUILDINGS.items():
            for building in buildings:
                for domain in DOMAINS:
                    name = f"{building}_{domain}.tar"
                    with tarfile.open(out / name, "w") as tf:
                        tf.add(syn / f"synthetic_{split}" / domain, arcname=domain)
                    names.append(name)
    write_sha256sums(out, names)
    return names


def build_dry_mirror(dest: str | Path, shared: str | Path | None = None, *, frames: int = 2) -> Path:
    """Assemble the complete offline mirror at ``dest`` (see the module docstring) and return it.

    ``shared``: the shared real-data folder (default ``$NBM_SHARED_DATA``). ``frames``: scenes per split
    of the rendered dense-prediction sets. A non-empty ``dest`` must be a dry mirror built before."""
    dest = Path(dest)
    shared = Path(shared) if shared else (Path(os.environ["NBM_SHARED_DATA"]) if os.environ.get("NBM_SHARED_DATA")
                                          else None)
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / STAMP).is_file())):
        raise FileExistsError(f"{dest} exists and is not a dry mirror built by data_prep; choose a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / STAMP).write_text(
        "Offline mirror built by `python -m data_prep dry-mirror` for the GPU dry run (NBM_MIRROR=<this folder>).\n"
        "Omniglot, VOC, COCO and Imagenette hold real samples; MiniImagenet, NYU-v2 and Taskonomy hold\n"
        "fabricated content in the published layout. See data_prep/fixtures.py.\n")
    omniglot_files(shared, dest / "omniglot")
    miniimagenet_archive(shared, dest / "miniimagenet")
    nyud_mt_archive(shared, dest / "nyuv2", counts={"train": 2 * frames, "val": frames})
    mtan_archive(dest / "nyuv2_13", counts={"train": 2 * frames, "val": frames})
    taskonomy_archives(dest / "taskonomy", frames=frames)
    voc_archive(shared, dest / "voc")
    coco_archives(shared, dest / "coco")
    imagenette_archive(shared, dest / "imagenette")
    return dest
