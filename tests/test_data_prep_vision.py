"""VOC / COCO / Imagenette: synthetic generators, conversion of (fake) official archives, loaders on real samples."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep import coco as prep_coco
from data_prep import imagenette as prep_imagenette
from data_prep import prepare
from data_prep import voc as prep_voc
from nbmodule.data.coco import CocoDetection
from nbmodule.data.imagenette import IMAGENETTE_WNIDS, ImagenetteFolder
from nbmodule.data.transforms import augment_transform, to_sample
from nbmodule.data.voc import VOCSegmentation, voc_palette


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    prep_voc.synthesize(root / "voc", seed=0, scale="smoke", n_train=5, n_val=3, image_size=64)
    prep_coco.synthesize(root / "coco", seed=0, scale="smoke", n_train=5, n_val=3, image_size=64)
    prep_imagenette.synthesize(root / "imagenette", seed=0, scale="smoke", n_train=20, n_val=10, image_size=64)
    return root


def test_synthetic_voc_writes_palette_pngs_with_255_outlines(synth):
    png = sorted((synth / "voc/VOCdevkit/VOC2012/SegmentationClass").glob("*.png"))[0]
    with Image.open(png) as im:
        assert im.mode == "P" and im.getpalette()[:63] == voc_palette()[:63]
        raw = np.array(im)
    assert 255 in raw and set(np.unique(raw)) <= set(range(21)) | {255}
    ds = VOCSegmentation(synth / "voc", "train", image_size=64)
    assert len(ds) == 5 and ds.num_classes == 21
    mask = ds.load_raw(ds.ids.index(png.stem))["mask"]
    assert torch.equal(mask.as_subclass(torch.Tensor).long(), torch.from_numpy(raw).long())  # indices, not gray


def test_synthetic_coco_is_valid_coco_and_polygons_decode(synth):
    from pycocotools.coco import COCO

    ann = synth / "coco/annotations/instances_train2017.json"
    api = COCO(str(ann))
    assert len(api.getCatIds()) == 10 and len(api.getImgIds()) == 5
    ds = CocoDetection(synth / "coco", "train", image_size=64)
    t = ds.target(0)
    masks = ds.instance_masks(0)
    assert masks.shape[0] == len(t["boxes"]) > 0
    for m, b in zip(masks, t["boxes"]):  # each decoded polygon lies inside its box
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert xs.min() >= b[0] - 1 and xs.max() <= b[2] + 1 and ys.min() >= b[1] - 1 and ys.max() <= b[3] + 1


def test_synthetic_imagenette_is_an_imagefolder_with_the_ten_wnids(synth):
    ds = ImagenetteFolder(synth / "imagenette", "val", image_size=64)
    assert ds.classes == IMAGENETTE_WNIDS and len(ds) == 10
    assert sorted(ds[i]["label"] for i in range(10)) == list(range(10))


def test_augmentation_moves_boxes_and_masks_with_the_image():
    torch.manual_seed(0)
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    image[:, 10:30, 5:25] = 255
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[10:30, 5:25] = 7
    aug = augment_transform("det", 64, train=True)
    for _ in range(10):
        s = aug({**to_sample(image, boxes=torch.tensor([[5.0, 10.0, 25.0, 30.0]]), labels=torch.tensor([7])),
                 "mask": to_sample(image, mask=mask)["mask"]})
        m = s["mask"].as_subclass(torch.Tensor)
        if len(s["boxes"]) == 0:
            continue
        ys, xs = torch.nonzero(m == 7, as_tuple=True)
        x1, y1, x2, y2 = s["boxes"][0].tolist()
        assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5
        assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
        assert s["labels"].tolist() == [7]


# --- conversion of the official archives (tiny fakes with the official layout) ------------------------------
def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_voc_convert_copies_chosen_ids_byte_for_byte(synth, tmp_path):
    src = synth / "voc/VOCdevkit/VOC2012"
    tar_path = tmp_path / prep_voc.TAR
    ids = {s: (src / f"ImageSets/Segmentation/{s}.txt").read_text().split() for s in ("train", "val")}
    with tarfile.open(tar_path, "w") as tf:
        for split, names in ids.items():
            _add(tf, f"VOCdevkit/VOC2012/ImageSets/Segmentation/{split}.txt", ("\n".join(names) + "\n").encode())
            for i in names:
                _add(tf, f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg", (src / f"JPEGImages/{i}.jpg").read_bytes())
                _add(tf, f"VOCdevkit/VOC2012/SegmentationClass/{i}.png", (src / f"SegmentationClass/{i}.png").read_bytes())
    dest = prepare("voc", tmp_path / "voc", sources=[str(tar_path)], verify_checksums=False, n_train=3, n_val=2)
    ds = VOCSegmentation(dest, "train")
    assert len(ds) == 3 and set(ds.ids) <= set(ids["train"])
    out = dest / "VOCdevkit/VOC2012/SegmentationClass" / f"{ds.ids[0]}.png"
    assert out.read_bytes() == (src / "SegmentationClass" / out.name).read_bytes()
    assert len(VOCSegmentation(dest, "val")) == 2


def test_coco_convert_keeps_ten_classes_and_remaps_ids(synth, tmp_path):
    data = json.loads((synth / "coco/annotations/instances_train2017.json").read_text())
    # an extra category with a sparse COCO id, to be dropped
    data["categories"].append({"id": 80, "name": "toaster", "supercategory": "appliance"})
    data["annotations"].append({**data["annotations"][0], "id": 9999, "category_id": 80})
    for c in data["categories"]:  # give the kept classes COCO's sparse ids to check the remapping
        if c["name"] == "dog":
            old = c["id"]
            c["id"] = 18
            for a in data["annotations"]:
                if a["category_id"] == old:
                    a["category_id"] = 18
    ann_zip, img_zip = tmp_path / prep_coco.ANN_ZIP, tmp_path / prep_coco.IMAGES_ZIP
    with zipfile.ZipFile(ann_zip, "w") as zf:
        zf.writestr("annotations/instances_val2017.json", json.dumps(data))
    with zipfile.ZipFile(img_zip, "w") as zf:
        for im in data["images"]:
            zf.write(synth / "coco/train2017" / im["file_name"], f"val2017/{im['file_name']}")
    dest = prepare("coco", tmp_path / "coco", sources=[str(ann_zip), str(img_zip)], verify_checksums=False,
                   n_train=3, n_val=2)
    out = json.loads((dest / "annotations/instances_train2017.json").read_text())
    assert [c["id"] for c in out["categories"]] == list(range(1, 11))
    assert [c["name"] for c in out["categories"]] == list(prep_coco.DEFAULT_CLASSES)
    assert {a["category_id"] for a in out["annotations"]} <= set(range(1, 11))
    tr, va = CocoDetection(dest, "train"), CocoDetection(dest, "val")
    assert len(tr) == 3 and len(va) == 2 and tr.num_classes == 10


def test_imagenette_convert_is_class_balanced(synth, tmp_path):
    tgz = tmp_path / prep_imagenette.TGZ
    with tarfile.open(tgz, "w:gz") as tf:
        for split in ("train", "val"):
            for f in sorted((synth / "imagenette/imagenette2-160" / split).rglob("*.JPEG")):
                _add(tf, f"imagenette2-160/{split}/{f.parent.name}/{f.name}", f.read_bytes())
        _add(tf, "imagenette2-160/noisy_imagenette.csv", b"path,noisy_labels_0\n")
    dest = prepare("imagenette", tmp_path / "imagenette", sources=[str(tgz)], verify_checksums=False,
                   n_train=10, n_val=10)
    tr = ImagenetteFolder(dest, "train")
    assert len(tr) == 10 and sorted(tr.samples[i][1] for i in range(10)) == list(range(10))


def test_specs_list_official_sources_with_checksums():
    for mod in (prep_voc, prep_coco, prep_imagenette):
        for f in mod.SPEC.files:
            assert f.md5 and f.mirrors and all(m.url.startswith(("http://", "https://")) for m in f.mirrors)
    assert len(prep_voc.SPEC.files[0].mirrors) >= 3  # the VOC host is often down


# --- the real samples, unchanged ------------------------------------------------------------------------
def test_real_samples_load_unchanged(shared_data: Path):
    voc = VOCSegmentation(shared_data / "voc", "trainval", image_size=128)
    raw = np.array(Image.open(voc.root / "SegmentationClass" / f"{voc.ids[0]}.png"))
    got = voc.load_raw(0)["mask"].as_subclass(torch.Tensor)
    assert torch.equal(got.long(), torch.from_numpy(raw).long())
    assert {0, 255} <= set(np.unique(raw).tolist()) and max(set(np.unique(raw)) - {255}) <= 20
    coco = CocoDetection(shared_data / "coco", "sample", image_size=128)
    gt = coco.ground_truth()
    assert len(coco) == 6 and coco.num_classes == 80
    assert sum(len(g["boxes"]) for g in gt) == 36 and sum(int(g["iscrowd"].sum()) for g in gt) == 1
    assert sum(coco.instance_masks(i).shape[0] for i in range(len(coco))) == 36  # polygons and the RLE
    nette = ImagenetteFolder(shared_data / "imagenette", "train", image_size=64)
    assert len(nette) == 44 and all(nette[i]["image"].shape == (3, 64, 64) for i in range(len(nette)))
