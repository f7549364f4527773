"""Mini COCO 2017 detection (10 classes): the official val2017 zip + annotations zip -> a small COCO copy.

Output layout (what :class:`nbmodule.data.coco.CocoDetection` reads)::

    <dest>/train2017/<file>.jpg   <dest>/val2017/<file>.jpg
    <dest>/annotations/instances_train2017.json   instances_val2017.json

``convert`` keeps the images of COCO val2017 that hold at least one non-crowd instance of the chosen
``classes`` (default :data:`DEFAULT_CLASSES`), draws ``n_train + n_val`` of them (seeded) and splits them.
The JSONs stay COCO "instances" files (polygons, RLE and ``iscrowd`` kept as published) restricted to
those classes; **category ids are remapped to 1..10** in the order of ``classes`` (``keep_ids=True`` keeps
COCO's original ids). Images are copied byte for byte. Both mini splits come from COCO's val2017 because
it is the small official archive (815 MB, against 18 GB for train2017).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._shapes import SHAPES, background, class_colour, draw_shape, random_box, scale_sizes
from .extract import confined, open_zip
from .fetch import Mirror, RemoteFile
from .registry import DatasetSpec

IMAGES_ZIP = "val2017.zip"
ANN_ZIP = "annotations_trainval2017.zip"
DEFAULT_CLASSES = ("person", "bicycle", "car", "motorcycle", "bus", "bird", "cat", "dog", "horse", "bottle")


def _write_split(dest: Path, split: str, images: list[dict], anns: list[dict], cats: list[dict], info: dict) -> None:
    (dest / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"info": info, "licenses": [], "images": images, "annotations": anns, "categories": cats}
    (dest / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


def _split_sizes(n_train: int, n_val: int, available: int) -> tuple[int, int]:
    """``(n_train, n_val)`` as asked when enough images exist, else the same proportions of what exists
    (at least one image in each split when there are two or more)."""
    if available >= n_train + n_val:
        return n_train, n_val
    val = int(round(available * n_val / max(1, n_train + n_val)))
    if available >= 2 and n_val > 0:
        val = min(max(val, 1), available - 1)
    return available - val, val


def convert(files: dict[str, Path], dest: Path, n_train: int = 240, n_val: int = 60, seed: int = 0,
            classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES, keep_ids: bool = False) -> None:
    """See the module docstring. A smaller source (a sample) is split in the asked proportions, with a
    warning; every image path built from a JSON ``file_name`` goes through :func:`data_prep.extract.confined`."""
    dest = Path(dest)
    ann_zip, img_zip = files[ANN_ZIP], files[IMAGES_ZIP]
    with open_zip(ann_zip) as zf:
        member = "annotations/instances_val2017.json"
        if member not in zf.namelist():
            raise ValueError(f"{ann_zip}: no {member} inside")
        try:
            data = json.loads(zf.read(member))
        except ValueError as err:
            raise ValueError(f"{ann_zip}: {member} is not valid JSON ({err})") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{ann_zip}: {member} lacks {', '.join(missing)} (not a COCO instances file)")
    by_name = {c["name"]: c for c in data["categories"]}
    unknown = [c for c in classes if c not in by_name]
    if unknown:
        raise ValueError(f"classes {unknown} are not COCO categories; known: {sorted(by_name)}")
    new_id = {by_name[n]["id"]: (by_name[n]["id"] if keep_ids else i + 1) for i, n in enumerate(classes)}
    cats = [{**by_name[n], "id": new_id[by_name[n]["id"]]} for n in classes]
    anns = [a for a in data["annotations"] if a["category_id"] in new_id]
    images = {im["id"]: im for im in data["images"]}
    with open_zip(img_zip) as zf:
        names = set(zf.namelist())
        eligible = sorted({a["image_id"] for a in anns if not a.get("iscrowd", 0)} & set(images))
        have = [i for i in eligible if f"val2017/{images[i]['file_name']}" in names]
        if len(have) < len(eligible):
            print(f"[data_prep] coco: {len(eligible) - len(have)} annotated images are not in {img_zip.name}; skipped")
        if not have:
            raise ValueError(f"{img_zip}: none of the images with instances of {list(classes)} is inside")
        tr, va = _split_sizes(n_train, n_val, len(have))
        if (tr, va) != (n_train, n_val):
            print(f"[data_prep] coco: {n_train}+{n_val} images asked for, {len(have)} available; using {tr}+{va}")
        rng = np.random.default_rng(seed)
        picked = [have[i] for i in rng.permutation(len(have))[:tr + va]]
        splits = {"train": sorted(picked[:tr]), "val": sorted(picked[tr:])}
        info = {**data.get("info", {}), "description": f"mini COCO 2017 detection ({len(classes)} classes) from val2017"}
        for split, ids in splits.items():
            folder = dest / f"{split}2017"
            folder.mkdir(parents=True, exist_ok=True)
            keep = set(ids)
            for i in ids:
                name = images[i]["file_name"]
                out = confined(folder, name, what=f"{ann_zip.name} file_name")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(f"val2017/{name}"))
            split_anns = [{**a, "category_id": new_id[a["category_id"]]} for a in anns if a["image_id"] in keep]
            _write_split(dest, split, [images[i] for i in ids], split_anns, cats, info)


def synthesize(dest: Path, seed: int = 0, scale: str = "cpu", n_train: int | None = None,
               n_val: int | None = None, image_size: int | None = None) -> None:
    """1-4 objects per image; class c in 0..9 fixes shape (c % 4) and hue; polygons as segmentation."""
    n_train, n_val, size = scale_sizes(scale, n_train, n_val, image_size)
    rng = np.random.default_rng(seed)
    dest = Path(dest)
    cats = [{"id": i + 1, "name": name, "supercategory": "synthetic"} for i, name in enumerate(DEFAULT_CLASSES)]
    next_img, next_ann = 1, 1
    for split, n in (("train", n_train), ("val", n_val)):
        folder = dest / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for _ in range(n):
            img = background(size, rng)
            name = f"{next_img:012d}.jpg"
            for _ in range(int(rng.integers(1, 5))):
                c = int(rng.integers(0, 10))
                box = random_box(size, rng, 0.15, 0.45)
                poly = draw_shape(img, SHAPES[c % 4], box, class_colour(c, 10, rng, offset=0.05))
                x1, y1, x2, y2 = box
                area = 0.5 * abs(sum(poly[k][0] * poly[k - 1][1] - poly[k - 1][0] * poly[k][1]
                                     for k in range(len(poly))))
                anns.append({"id": next_ann, "image_id": next_img, "category_id": c + 1, "iscrowd": 0,
                             "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                             "area": round(area, 2),
                             "segmentation": [[round(v, 2) for p in poly for v in p]]})
                next_ann += 1
            img.save(folder / name, quality=92)
            images.append({"id": next_img, "file_name": name, "width": size, "height": size})
            next_img += 1
        _write_split(dest, split, images, anns, cats, {"description": "synthetic shapes in COCO format"})


def is_ready(dest: Path) -> bool:
    ann = Path(dest) / "annotations"
    return (ann / "instances_train2017.json").is_file() and (ann / "instances_val2017.json").is_file()


SPEC = DatasetSpec(
    name="coco",
    summary="mini COCO 2017 detection (10 classes, COCO instances JSON)",
    files=(
        RemoteFile(IMAGES_ZIP, (Mirror("http://images.cocodataset.org/zips/val2017.zip", "COCO official"),),
                   md5="442b8da7639aecaf257c1dceb8ba8c80", size=815_585_330),
        RemoteFile(ANN_ZIP, (Mirror("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                                    "COCO official"),),
                   md5="f4bbac642086de4f52a3fdda2de5fa2c", size=252_907_541),
    ),
    convert=convert,
    synthesize=synthesize,
    is_ready=is_ready,
    homepage="https://cocodataset.org/#download",
    notes="Both mini splits are drawn from val2017; category ids remapped to 1..10 (keep_ids=true keeps COCO's).",
    options={"n_train": 240, "n_val": 60, "seed": 0, "classes": list(DEFAULT_CLASSES), "keep_ids": False,
             "scale": "cpu (synthetic: smoke|cpu|full)"},
)
