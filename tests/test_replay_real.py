"""The replay study on the real samples (``NBM_SHARED_DATA``), through its real path: the published archives
(as the dry mirror packs them) -> ``data_prep`` -> the study's readers -> training -> metrics in range.

It replaces the real-data check of ``tests/test_data_prep_vision.py`` (which only asserted metrics were not None).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.fixtures import coco_archives, imagenette_archive, voc_archive
from nbmodule.data.coco import CocoDetection
from nbmodule.data.voc import VOC_CLASSES
from nbmodule.engines import replay as engine
from nbmodule.models import build_model
from nbmodule.runs import RunDir

Config = engine.Config
REAL = dict(synthetic=False, image_size=64, steps_seg=2, steps_det=2, steps_cls=2, batch_size=2, buffer_size=4,
            fpn_channels=16, latency_size=64, latency_repeats=1, n_examples=1, log_every=1, runs=["noreplay"])


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The three tasks prepared from the shared samples packed under their official archive names, offline."""
    import os

    env = os.environ.get("NBM_SHARED_DATA")
    if not env or not os.path.isdir(env):
        pytest.skip("NBM_SHARED_DATA is not set to the shared real-data folder")
    shared = Path(env)
    mirror = tmp_path_factory.mktemp("mirror")
    voc_archive(shared, mirror / "voc")
    coco_archives(shared, mirror / "coco")
    imagenette_archive(shared, mirror / "imagenette")
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NBM_MIRROR", str(mirror))
        tasks = engine.prepare_tasks(Config.from_values(REAL), root)
    return shared, root, tasks


def test_the_real_voc_mask_is_read_as_its_palette_classes(real):
    shared, _, tasks = real
    seg = tasks["seg"]
    assert not seg.synthetic and seg.source.startswith("mirror")
    raw = np.array(Image.open(shared / "voc/VOCdevkit/VOC2012/SegmentationClass/2007_000063.png"))
    assert seg.val.ids == ["2007_000063"]
    assert torch.equal(seg.val.full_mask(0), torch.from_numpy(raw).long())  # palette indices, full size
    classes = {VOC_CLASSES[c] for c in np.unique(raw) if c != 255}
    assert classes == {"background", "chair", "dog"}
    resized = seg.val[0]["mask"]
    assert resized.shape == (64, 64) and set(resized.unique().tolist()) <= {0, 9, 12, 255}


def test_the_real_coco_boxes_reach_the_model_scaled_to_the_image(real):
    shared, _, tasks = real
    det = tasks["det"]
    assert not det.synthetic and det.num_classes == 10
    source = json.loads((shared / "coco/annotations/instances_sample2017.json").read_text())
    cats = {c["id"]: c["name"] for c in source["categories"]}
    for split in ("train", "val"):  # read without augmentation: the boxes as the model's targets start
        ds = CocoDetection(det.path, split, image_size=64)
        for i, im in enumerate(ds.images):
            item = ds[i]
            anns = [a for a in source["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]
                    and cats[a["category_id"]] in det.train.classes]
            want = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
            want[:, 2:] += want[:, :2]
            want *= torch.tensor([64 / im["width"], 64 / im["height"]] * 2)
            boxes = item["boxes"].as_subclass(torch.Tensor).float()
            assert torch.allclose(boxes, want, atol=1e-3), im["file_name"]
            names = [det.train.classes[int(lab)] for lab in item["labels"]]
            assert names == [cats[a["category_id"]] for a in anns]
    assert len(det.train) + len(det.val) == 4  # the 4 sample images with one of the 10 categories


def test_short_training_on_the_real_samples_lowers_the_loss(real):
    _, _, tasks = real
    cfg = Config.from_values({**REAL, "steps_seg": 20, "steps_det": 20, "batch_size": 4, "lr": 0.01})
    for task in ("seg", "det"):
        torch.manual_seed(0)
        model = build_model("unified", num_seg_classes=21, num_det_classes=tasks["det"].num_classes,
                            num_cls_classes=10, fpn_channels=16)
        losses = [r["task_loss"] for r in engine.train_stage(model, task, tasks[task], cfg,
                                                             device=torch.device("cpu"), seed=0)]
        assert np.mean(losses[-3:]) < 0.75 * losses[0], (task, losses)


def test_the_study_runs_on_the_real_samples_with_metrics_in_range(real, tmp_path):
    _, root, tasks = real
    rd = RunDir(tmp_path, "02_sequential_replay")
    m = engine.run_study(Config.from_values(REAL), rd, tasks=tasks, progress=False)
    assert m["synthetic"] == 0
    values = {k: v for k, v in m.items() if k.endswith(engine.METRICS)}
    assert values and all(v is not None and 0.0 <= v <= 1.0 for v in values.values()), values
    data = json.loads((rd / "data.json").read_text())
    assert {d["dataset"]: d["synthetic"] for d in data.values()} == {"voc": False, "coco": False, "imagenette": False}
