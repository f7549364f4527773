"""data_prep converters for Omniglot and MiniImagenet: small archives made here (and the real files when
NBM_SHARED_DATA is set), read unchanged and converted into the few-shot array layout."""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import miniimagenet, omniglot, prepare
from nbmodule.data.fewshot import load_class_arrays, load_lake_runs, read_meta


def _png_1bit(seed: int, size: int = 105) -> bytes:
    rng = np.random.RandomState(seed)
    arr = np.full((size, size), 255, np.uint8)
    r, c = rng.randint(10, size - 30, size=2)
    arr[r:r + 20, c:c + 4] = 0  # a black stroke
    buf = io.BytesIO()
    Image.fromarray(arr).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def _omniglot_zip(path: Path, top: str, chars: dict[str, int], drawers: int = 3) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/", "")
        for i, (key, seed) in enumerate(chars.items()):
            for d in range(drawers):
                zf.writestr(f"{top}/{key}/{i:04d}_{d + 1:02d}.png", _png_1bit(seed * 100 + d))


def _runs_zip(path: Path, n_runs: int = 2, n: int = 4) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for r in range(1, n_runs + 1):
            lines = []
            for j in range(n):
                zf.writestr(f"run{r:02d}/training/class{j + 1:02d}.png", _png_1bit(r * 10 + j))
            for i in range(n):
                j = (i + 1) % n  # item i belongs to class j
                zf.writestr(f"run{r:02d}/test/item{i + 1:02d}.png", _png_1bit(r * 10 + j))
                lines.append(f"run{r:02d}/test/item{i + 1:02d}.png run{r:02d}/training/class{j + 1:02d}.png")
            zf.writestr(f"run{r:02d}/class_labels.txt", "\n".join(lines) + "\n")


def test_omniglot_convert_reads_official_layout(tmp_path):
    bg, ev, runs = tmp_path / "images_background.zip", tmp_path / "images_evaluation.zip", tmp_path / "all_runs.zip"
    _omniglot_zip(bg, "images_background", {"Latin/character01": 1, "Latin/character02": 2, "Greek/character01": 3})
    _omniglot_zip(ev, "images_evaluation", {"Atlantean/character01": 4})
    _runs_zip(runs)
    dest = tmp_path / "out"
    omniglot.convert({"images_background.zip": bg, "images_evaluation.zip": ev, "all_runs.zip": runs}, dest)
    assert omniglot.is_ready(dest)
    arrays = load_class_arrays(dest, "all")
    assert arrays.classes == ["background/Greek/character01", "background/Latin/character01",
                              "background/Latin/character02", "evaluation/Atlantean/character01"]
    assert arrays.images.shape == (12, 28, 28) and arrays.images.dtype == np.uint8
    assert np.bincount(arrays.labels).tolist() == [3, 3, 3, 3]
    # strokes are bright (inverted like MAML), the background is 0
    assert arrays.images[:, 0, 0].max() == 0 and arrays.images.max() > 100
    lake = load_lake_runs(dest)
    assert lake.support.shape == (2, 4, 28, 28) and lake.query.shape == (2, 4, 28, 28)
    assert lake.answer.tolist() == [[1, 2, 3, 0], [1, 2, 3, 0]]
    # the test item shows the same image as its training class (identical PNGs here)
    np.testing.assert_array_equal(lake.query[0, 0], lake.support[0, 1])


def test_omniglot_overlapping_small_zips_are_deduplicated(tmp_path):
    a, b = tmp_path / "images_background_small1.zip", tmp_path / "images_background_small2.zip"
    _omniglot_zip(a, "images_background_small1", {"Greek/character01": 1, "Korean/character01": 2})
    _omniglot_zip(b, "images_background_small2", {"Greek/character01": 1, "Tagalog/character01": 5})
    dest = omniglot.convert_sources([a, b], tmp_path / "out")
    arrays = load_class_arrays(dest, "all")
    assert len(arrays.classes) == 3 and len(arrays.labels) == 9


def test_omniglot_prepare_with_local_source_and_checksum(tmp_path):
    bg = tmp_path / "images_background.zip"
    _omniglot_zip(bg, "images_background", {"Latin/character01": 1})
    # a repackaged file fails the published checksum, naming both hashes
    from data_prep import ChecksumError

    with pytest.raises(ChecksumError, match="md5"):
        prepare("omniglot", tmp_path / "o", sources=[str(bg)])


def test_omniglot_without_images_fails_clearly(tmp_path):
    empty = tmp_path / "images_background.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "nothing")
    with pytest.raises(ValueError, match="no Omniglot character images"):
        omniglot.convert_sources([empty], tmp_path / "out")


def test_omniglot_synthetic_writes_raw_layout_and_lake_runs(tmp_path):
    dest = prepare("omniglot", tmp_path / "syn", synthetic=True, scale="smoke", seed=3)
    assert (dest / "raw" / "images_background.zip").is_file() and (dest / "raw" / "all_runs.zip").is_file()
    meta = read_meta(dest)
    assert meta["synthetic"] and meta["scale"] == "smoke"
    n_bg, n_ev = omniglot.SCALES["smoke"]
    assert len(meta["parts"]["all"]["classes"]) == n_bg + n_ev
    lake = load_lake_runs(dest)
    assert lake.support.shape[:2] == (20, 20) and sorted(lake.answer[0].tolist()) == list(range(20))
    with pytest.raises(ValueError, match="unknown scale"):
        omniglot.synthesize(tmp_path / "x", scale="huge")


def _mini_files(tmp_path: Path, classes_per_split=(3, 2, 2), per_class=4, size=40):
    rng = np.random.RandomState(0)
    csvs, wnid = {}, 0
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as zf:
        for split, n in zip(miniimagenet.SPLITS, classes_per_split):
            rows = []
            for _ in range(n):
                wnid += 1
                for i in range(per_class):
                    name = f"n{wnid:08d}{i:08d}.jpg"
                    buf = io.BytesIO()
                    Image.fromarray(rng.randint(0, 255, (size, size + 10, 3), dtype=np.uint8)).save(buf, "JPEG")
                    zf.writestr(f"images/{name}", buf.getvalue())
                    rows.append((name, f"n{wnid:08d}"))
            csvs[split] = tmp_path / f"{split}.csv"
            with open(csvs[split], "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["filename", "label"])
                w.writerows(rows)
    return csvs, tmp_path / "images.zip"


def test_miniimagenet_convert_resizes_and_splits(tmp_path):
    csvs, images = _mini_files(tmp_path)
    dest = tmp_path / "out"
    miniimagenet.convert({"images.zip": images, **{f"{s}.csv": p for s, p in csvs.items()}}, dest)
    assert miniimagenet.is_ready(dest)
    for split, n in zip(miniimagenet.SPLITS, (3, 2, 2)):
        arrays = load_class_arrays(dest, split)
        assert arrays.images.shape == (n * 4, 84, 84, 3) and arrays.images.dtype == np.uint8
        assert len(arrays.classes) == n and np.bincount(arrays.labels).tolist() == [4] * n


def test_miniimagenet_missing_image_is_named(tmp_path):
    csvs, images = _mini_files(tmp_path)
    with open(csvs["test"], "a") as fh:
        fh.write("n9999999900000001.jpg,n99999999\n")
    with pytest.raises(KeyError, match="n9999999900000001.jpg"):
        miniimagenet.convert_sources(csvs, images, tmp_path / "out")


def test_miniimagenet_synthetic(tmp_path):
    dest = prepare("miniimagenet", tmp_path / "syn", synthetic=True, scale="smoke")
    n_train, n_val, n_test, per = miniimagenet.SCALES["smoke"]
    arrays = load_class_arrays(dest, "train")
    assert arrays.images.shape == (n_train * per, 84, 84, 3)
    assert (dest / "raw" / "train.csv").is_file()


# --- the real files (NBM_SHARED_DATA) ----------------------------------------------------------------------
def test_real_omniglot_small_zips_and_runs(shared_data, tmp_path):
    src = shared_data / "omniglot"
    dest = omniglot.convert_sources([src / "images_background_small1.zip", src / "images_background_small2.zip",
                                     src / "all_runs.zip"], tmp_path / "omni")
    arrays = load_class_arrays(dest, "all")
    # 136 + 156 characters, Greek and Latin in both zips
    assert len(arrays.classes) == len(set(arrays.classes))
    assert 136 < len(arrays.classes) < 136 + 156
    assert np.bincount(arrays.labels).min() == 20 and arrays.images.shape[1:] == (28, 28)
    lake = load_lake_runs(dest)
    assert lake.support.shape == (20, 20, 28, 28)
    # run01/class_labels.txt: item01 -> class08, item02 -> class09 (first two lines of the official file)
    assert lake.answer[0, :2].tolist() == [7, 8]


def test_real_miniimagenet_csvs_and_derived_images(shared_data, tmp_path):
    src = shared_data / "miniimagenet"
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        rows = miniimagenet._read_csv(src / f"{split}.csv")
        assert len({label for _, label in rows}) == n and len(rows) == 600 * n
    csvs, images = miniimagenet.find_sources(src / "derived_84x84")
    dest = miniimagenet.convert_sources(csvs, images, tmp_path / "mini")
    assert load_class_arrays(dest, "train").images.shape[1:] == (84, 84, 3)
