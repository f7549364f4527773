"""Nothing written outside --dest, nothing deleted that data_prep did not make, errors in one line."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from data_prep import ArchiveError, DataRootError, DestinationError, UnsafeArchiveError, UnsafePathError
from data_prep import confined, extract, prepare
from data_prep import __main__ as cli
from data_prep.extract import _check_tar
from data_prep.marker import MARKER

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch):
    monkeypatch.delenv("NBM_MIRROR", raising=False)


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _escaped(tmp_path: Path, stem: str) -> list[Path]:
    """Files named ``stem*`` anywhere from two levels above tmp_path down (where an escape would land)."""
    return [p for p in tmp_path.parent.parent.rglob(f"{stem}*") if p.is_file()]


# --- confined paths ------------------------------------------------------------------------------------
def test_confined_accepts_inner_paths_and_names_the_bad_entry(tmp_path):
    assert confined(tmp_path, "a", "b/c.jpg") == (tmp_path / "a" / "b" / "c.jpg").resolve()
    for bad, why in (("../x.jpg", "'..'"), ("/etc/passwd", "absolute"), ("a/../../x", "'..'"),
                     ("..\\x.jpg", "'..'"), ("C:evil", "absolute"), ("a\x00b", "NUL")):
        with pytest.raises(UnsafePathError, match=why) as err:
            confined(tmp_path, bad, what="train.txt id")
        assert "train.txt id" in str(err.value) and repr(bad) in str(err.value)
    (tmp_path / "link").symlink_to(tmp_path.parent)  # a link already inside dest that leaves it
    with pytest.raises(UnsafePathError, match="outside"):
        confined(tmp_path, "link/x.jpg")


# --- crafted archives with --no-verify -------------------------------------------------------------------
def _run_cli(args, capsys) -> tuple[int, str]:
    rc = cli.main(args)
    err = capsys.readouterr().err
    return rc, err


def test_crafted_imagenette_member_cannot_leave_dest(tmp_path, capsys):
    tgz = tmp_path / "imagenette2-160.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        _add(tf, "imagenette2-160/train/n01440764/ok.JPEG")
        _add(tf, "imagenette2-160/train/n01440764/../../../../nette_escape.JPEG")
    dest = tmp_path / "out" / "nette"
    rc, err = _run_cli(["imagenette", "--dest", str(dest), "--source", str(tgz), "--no-verify",
                        "-o", "n_train=2", "-o", "n_val=0"], capsys)
    assert rc == 2 and err.startswith("error: ") and "nette_escape.JPEG" in err and "'..'" in err
    assert not _escaped(tmp_path, "nette_escape") and not dest.exists()


def test_crafted_voc_ids_cannot_leave_dest(tmp_path, capsys):
    tar = tmp_path / "VOCtrainval_11-May-2012.tar"
    evil = "../../../../voc_escape"
    with tarfile.open(tar, "w") as tf:
        _add(tf, "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt", f"{evil}\n".encode())
        _add(tf, "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", f"{evil}\n".encode())
        _add(tf, f"VOCdevkit/VOC2012/JPEGImages/{evil}.jpg")
        _add(tf, f"VOCdevkit/VOC2012/SegmentationClass/{evil}.png")
    dest = tmp_path / "out" / "voc"
    rc, err = _run_cli(["voc", "--dest", str(dest), "--source", str(tar), "--no-verify"], capsys)
    assert rc == 2 and "train.txt id" in err and "voc_escape" in err
    assert not _escaped(tmp_path, "voc_escape") and not dest.exists()


def test_crafted_coco_file_name_cannot_leave_dest(tmp_path, capsys):
    data = {"images": [{"id": 1, "file_name": "../../coco_escape.jpg", "width": 4, "height": 4}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4,
                             "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]}],
            "categories": [{"id": 1, "name": "person"}]}
    ann, img = tmp_path / "annotations_trainval2017.zip", tmp_path / "val2017.zip"
    with zipfile.ZipFile(ann, "w") as zf:
        zf.writestr("annotations/instances_val2017.json", json.dumps(data))
    with zipfile.ZipFile(img, "w") as zf:
        zf.writestr("val2017/../../coco_escape.jpg", b"jpeg")
    dest = tmp_path / "out" / "coco"
    rc, err = _run_cli(["coco", "--dest", str(dest), "--source", str(ann), "--source", str(img), "--no-verify",
                        "-o", "classes=[person]"], capsys)
    assert rc == 2 and "file_name" in err and "coco_escape.jpg" in err
    assert not _escaped(tmp_path, "coco_escape") and not dest.exists()


def test_symlink_chain_in_one_tar_is_refused_by_our_own_check(tmp_path):
    tar = tmp_path / "chain.tar"
    with tarfile.open(tar, "w") as tf:
        a = tarfile.TarInfo("a")
        a.type, a.linkname = tarfile.SYMTYPE, "."  # harmless alone: a points at dest itself
        tf.addfile(a)
        b = tarfile.TarInfo("a/b")
        b.type, b.linkname = tarfile.SYMTYPE, ".."  # through a, this is dest/.. : outside
        tf.addfile(b)
        _add(tf, "a/b/chain_escape.txt")
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(tar) as tf, pytest.raises(UnsafeArchiveError, match="'a/b' -> '..' points outside"):
        _check_tar(tar, tf, dest.resolve())  # our check, before Python's tar filter sees anything
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract(tar, dest)
    assert not any(dest.iterdir()) and not _escaped(tmp_path, "chain_escape")
    ok = tmp_path / "ok.tar"  # links that stay inside (even through an earlier link) are fine
    with tarfile.open(ok, "w") as tf:
        _add(tf, "d/f.txt", b"hi")
        a = tarfile.TarInfo("e")
        a.type, a.linkname = tarfile.SYMTYPE, "d"
        tf.addfile(a)
        b = tarfile.TarInfo("g")
        b.type, b.linkname = tarfile.SYMTYPE, "e/f.txt"
        tf.addfile(b)
    extract(ok, tmp_path / "okdest")
    assert (tmp_path / "okdest" / "g").read_text() == "hi"


# --- --dest never deletes a folder data_prep did not make -----------------------------------------------
def test_foreign_dest_survives_and_the_command_exits_2(tmp_path, capsys):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "thesis.txt").write_text("four years of work")
    rc, err = _run_cli(["voc", "--synthetic", "--dest", str(dest), "-o", "scale=smoke"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "did not create" in err and str(dest) in err
    assert (dest / "thesis.txt").read_text() == "four years of work"
    assert not (tmp_path / "mine.partial").exists()
    with pytest.raises(DestinationError):
        prepare("voc", dest, synthetic=True, scale="smoke", force=True)
    assert (dest / "thesis.txt").is_file()
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, err = _run_cli(["voc", "--synthetic", "--dest", str(afile)], capsys)
    assert rc == 2 and "not a folder" in err and afile.read_text() == "x"


def test_own_and_legacy_folders_are_replaced(tmp_path):
    dest = tmp_path / "voc"
    prepare("voc", dest, synthetic=True, scale="smoke", n_train=2, n_val=1, image_size=32)
    assert (dest / MARKER).is_file()
    prepare("voc", dest, synthetic=True, scale="smoke", n_train=3, n_val=1, image_size=32)  # stale: rebuilt
    ids = (dest / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text().split()
    assert len(ids) == 3
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / ".synthetic.json").write_text("{}")  # written by an earlier data_prep
    (legacy / "old.txt").write_text("old")
    prepare("voc", legacy, synthetic=True, scale="smoke", n_train=1, n_val=1, image_size=32)
    assert not (legacy / "old.txt").exists() and (legacy / MARKER).is_file()


# --- errors name the file, in one line ------------------------------------------------------------------------
def test_corrupt_archives_are_reported_with_their_path(tmp_path, capsys):
    junk, img = tmp_path / "annotations_trainval2017.zip", tmp_path / "val2017.zip"
    junk.write_bytes(b"PK\x03\x04 this is no zip")
    img.write_bytes(b"PK\x03\x04 nor this")
    with pytest.raises(ArchiveError, match=str(junk)) as err:  # zipfile's BadZipFile, with the path
        prepare("coco", tmp_path / "o", sources=[str(junk), str(img)], verify_checksums=False)
    assert "BadZipFile" in str(err.value)
    tar = tmp_path / "VOCtrainval_11-May-2012.tar"
    tar.write_bytes(b"not a tar at all" * 40)
    rc, err = _run_cli(["voc", "--dest", str(tmp_path / "v"), "--source", str(tar), "--no-verify"], capsys)
    assert rc == 2 and str(tar) in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "v").exists()


def test_nbm_data_pointing_at_a_file_is_named(tmp_path, monkeypatch, capsys):
    from nbmodule import env

    f = tmp_path / "data.txt"
    f.write_text("not a folder")
    monkeypatch.setenv("NBM_DATA", str(f))
    with pytest.raises(DataRootError, match="NBM_DATA"):
        env.data_root()
    rc, err = _run_cli(["voc", "--synthetic", "-o", "scale=smoke"], capsys)
    assert rc == 2 and "NBM_DATA" in err and str(f) in err and err.count("\n") == 1


@pytest.mark.parametrize("args, words", [
    (["voc", "--synthetic", "-o", "n_train=[5"], "not valid YAML"),
    (["voc", "--synthetic", "-o", "bogus=1"], "no option 'bogus'"),
    (["nosuch"], "invalid choice"),
    (["all", "--dest", "x"], "single dataset"),
    (["check", "voc", "-o", "n_train"], "expected key=value"),
])
def test_cli_errors_are_one_line_and_exit_2(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NBM_DATA", str(tmp_path))
    rc, err = _run_cli(args, capsys)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err


def test_cli_process_prints_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "data_prep", "voc", "--synthetic", "-o", "bogus=1",
                          "--dest", str(tmp_path / "v")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1
