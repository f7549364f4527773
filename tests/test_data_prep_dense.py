"""NYU-v2 (both layouts) and Taskonomy acquisition: mirrors, conversion from archives, real 13-class labels."""
import importlib
import io
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from data_prep import nyuv2 as nyu_prep
from data_prep import scenes, taskonomy as tk_prep
from data_prep.registry import get_spec, prepare
from nbmodule.data.nyuv2 import NYUDv2, load_label13_png
from nbmodule.data.taskonomy import Taskonomy

fetch_mod = importlib.import_module("data_prep.fetch")  # the package re-exports a function of that name
COUNTS = {"train": 3, "val": 2, "test": 2}


def test_mirrors_are_listed_in_order_and_each_failure_is_named(tmp_path, monkeypatch):
    urls = [m.url for m in nyu_prep.FILES[0].mirrors]
    assert urls[0] == "gdrive://14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw"
    assert urls[2] == "gdrive://11pWuQXMFBNMIIB4VYMzi9RPE-nMOBU8g" and "ethz" in urls[1]
    assert "dropbox" in nyu_prep.FILES_13[0].mirrors[0].url
    assert get_spec("nyuv2_13").name == "nyuv2_13"

    def no_drive(file_id, part):
        raise fetch_mod.DownloadError(f"quota exceeded for {file_id}")

    def no_http(url, part, timeout):
        raise ConnectionError(f"unreachable {url}")

    monkeypatch.setattr(fetch_mod, "_gdrive_download", no_drive)
    monkeypatch.setattr(fetch_mod, "_http_download", no_http)
    with pytest.raises(fetch_mod.DownloadError) as err:
        fetch_mod.fetch(nyu_prep.FILES[0], tmp_path, dataset="nyuv2")
    msg = str(err.value)
    for url in urls:
        assert url in msg
    assert msg.index(urls[0]) < msg.index(urls[1]) < msg.index(urls[2]) and "--synthetic" in msg


def test_nyud_mt_archive_nested_one_folder_deep_converts(tmp_path):
    src = scenes.write_nyud_mt(tmp_path / "src" / "NYUD_MT", seed=1, scale="smoke", counts=COUNTS, size=(24, 32))
    archive = tmp_path / "NYUD_MT.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="NYUD_MT")
    dest = prepare("nyuv2", tmp_path / "nyuv2", sources=[str(archive)])
    assert nyu_prep.is_ready(dest)
    ds = NYUDv2(dest, "train")
    assert len(ds) == 3 and ds.num_classes == 40
    s = ds[0]
    assert s["depth_mask"].dtype == torch.bool and s["normals_mask"].shape == (1, 24, 32)
    assert set(s["edges"].unique().tolist()) <= {0.0, 1.0}


def test_mtan_zip_converts_and_resizes(tmp_path):
    src = scenes.write_mtan_npy(tmp_path / "src" / "nyuv2", seed=2, scale="smoke", counts=COUNTS, size=(24, 32))
    archive = tmp_path / "nyuv2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in src.rglob("*.npy"):
            zf.write(p, p.relative_to(src.parent).as_posix())
    dest = prepare("nyuv2_13", tmp_path / "nyuv2_13", sources=[str(archive)])
    ds = NYUDv2(dest, "val", tasks=("seg", "depth", "normals"), size=(12, 16))
    s = ds[1]
    assert ds.layout == "mtan" and ds.num_classes == 13 and len(ds) == 2
    assert s["image"].shape == (3, 12, 16) and s["seg"].shape == (12, 16)
    assert torch.allclose(s["normals"][:, s["normals_mask"][0]].norm(dim=0), torch.ones(1), atol=1e-5)
    with pytest.raises(ValueError, match="no edge labels"):
        NYUDv2(dest, "val")


def test_wrong_archive_is_named(tmp_path):
    archive = tmp_path / "NYUD_MT.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        data = b"hello"
        info = tarfile.TarInfo("readme.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="no folder with images/ and gt_sets/"):
        prepare("nyuv2", tmp_path / "nyuv2", sources=[str(archive)])
    assert not (tmp_path / "nyuv2").exists()


def test_taskonomy_tars_convert_to_the_loader_layout(tmp_path):
    syn = scenes.write_taskonomy(tmp_path / "syn", seed=3, scale="smoke", counts=COUNTS, size=(24, 32))
    files = {}
    for split, (building,) in tk_prep.BUILDINGS.items():
        for domain in tk_prep.DOMAINS:
            name = f"{building}_{domain}.tar"
            with tarfile.open(tmp_path / name, "w") as tf:  # the official tars hold <domain>/...png
                tf.add(syn / f"synthetic_{split}" / domain, arcname=domain)
            files[name] = tmp_path / name
    assert set(files) == {f.filename for f in tk_prep.FILES}
    assert [m.url for m in tk_prep.FILES[0].mirrors] == [
        "https://datasets.epfl.ch/taskonomy/allensville_rgb.tar",
        "http://downloads.cs.stanford.edu/downloads/taskonomy_data/rgb/allensville_rgb.tar"]
    dest = tmp_path / "taskonomy"
    dest.mkdir()
    tk_prep.convert(files, dest)
    assert tk_prep.is_ready(dest)
    ds = Taskonomy(dest, "val")
    s = ds[0]
    assert len(ds) == 2 and s["seg"].max() < 17
    assert ((s["depth"] > 0) == s["depth_mask"]).all() and s["depth"].max() < 12
    eu = Taskonomy(dest, "val", depth_domain="depth_euclidean")[0]["depth"]
    assert (eu >= s["depth"] - 1e-3).all()  # distance to the centre >= distance along the axis


def test_real_13_class_labels_load_unchanged(shared_data):
    from PIL import Image

    files = sorted((shared_data / "nyuv2" / "test_labels_13").glob("*.png"))
    assert len(files) == 654
    seen = set()
    for f in files[:40]:
        raw = np.array(Image.open(f))
        lab = load_label13_png(f)
        assert lab.shape == (480, 640) == raw.shape
        assert torch.equal(lab == 255, torch.from_numpy(raw == 0))
        assert torch.equal(lab[lab != 255], torch.from_numpy(raw[raw != 0].astype(np.int64) - 1))
        seen |= set(lab.unique().tolist())
    assert seen <= set(range(13)) | {255} and len(seen) > 10
