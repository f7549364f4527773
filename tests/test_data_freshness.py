"""Freshness decided once: the marker data_prep writes after every build, read back by check()/prepare()."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from data_prep import MARKER, DataPrepError, OptionsError, check, prepare
from data_prep import registry
from data_prep.fetch import Mirror, RemoteFile
from data_prep.marker import check_folder, write_marker


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.delenv("NBM_MIRROR", raising=False)


@pytest.fixture(scope="module")
def omniglot_smoke(tmp_path_factory):
    """Synthetic Omniglot at smoke scale, built once; tests copy it before damaging it."""
    root = tmp_path_factory.mktemp("fresh")
    prepare("omniglot", synthetic=True, root=root, scale="smoke", seed=1)
    return root


def _copy(src_root, tmp_path):
    import shutil

    shutil.copytree(src_root, tmp_path / "root", symlinks=True)
    return tmp_path / "root", tmp_path / "root" / "synthetic" / "omniglot"


def test_marker_records_every_file_options_and_version(omniglot_smoke):
    dest = omniglot_smoke / "synthetic" / "omniglot"
    marker = json.loads((dest / MARKER).read_text())
    assert marker["dataset"] == "omniglot" and marker["synthetic"] is True
    assert marker["options"] == {"seed": 1, "scale": "smoke", "image_size": 28}
    files = marker["files"]
    assert {"meta.json", "all_images.npy", "all_labels.npy", "lake20.npz", "raw/all_runs.zip"} <= set(files)
    assert files["all_images.npy"]["size"] == (dest / "all_images.npy").stat().st_size
    assert len(files["meta.json"]["sha256"]) == 64
    assert not list(dest.glob(".synthetic.json")) and not list(dest.glob("SYNTHETIC.json"))  # one marker only
    st = check("omniglot", synthetic=True, root=omniglot_smoke, scale="smoke", seed=1)
    assert st.ready and st.state == "ready"


def test_other_options_make_the_data_stale(omniglot_smoke):
    st = check("omniglot", synthetic=True, root=omniglot_smoke, scale="cpu", seed=1)
    assert st.state == "stale" and "scale" in st.reason and "'smoke' -> 'cpu'" in st.reason
    st = check("omniglot", synthetic=True, root=omniglot_smoke, scale="smoke", seed=2)
    assert st.state == "stale" and "seed" in st.reason
    assert check("omniglot", synthetic=False, root=omniglot_smoke).state == "missing"
    with pytest.raises(OptionsError, match="no option 'n_chars'"):
        check("omniglot", synthetic=True, root=omniglot_smoke, n_chars=3)


@pytest.mark.parametrize("damage", ["truncate_npy", "delete_file", "corrupt_meta", "corrupt_marker", "flip_json"])
def test_damage_is_detected_and_named(omniglot_smoke, tmp_path, damage):
    root, dest = _copy(omniglot_smoke, tmp_path)
    if damage == "truncate_npy":
        p = dest / "all_images.npy"
        p.write_bytes(p.read_bytes()[:1000])
    elif damage == "delete_file":
        p = dest / "all_labels.npy"
        p.unlink()
    elif damage == "corrupt_meta":
        p = dest / "meta.json"
        p.write_text("{not json")
    elif damage == "corrupt_marker":
        p = dest / MARKER
        p.write_text('{"files": ')
    else:  # same size, one byte changed: only a checksum sees it
        p = dest / "meta.json"
        data = bytearray(p.read_bytes())
        data[5] = ord("X") if data[5] != ord("X") else ord("Y")
        p.write_bytes(bytes(data))
    st = check("omniglot", synthetic=True, root=root, scale="smoke", seed=1)
    assert st.state == "damaged" and st.path == p and p.name in str(st)
    if damage not in ("truncate_npy", "corrupt_meta"):
        return  # rebuilding takes seconds: shown for two kinds of damage
    # prepare() rebuilds the damaged copy, and the result is whole again
    prepare("omniglot", synthetic=True, root=root, scale="smoke", seed=1)
    assert check("omniglot", synthetic=True, root=root, scale="smoke", seed=1).ready
    np.load(dest / "all_images.npy")
    json.loads((dest / "meta.json").read_text())


def test_sizes_are_checked_even_when_the_data_are_too_big_to_hash(tmp_path, monkeypatch):
    from data_prep import marker

    (tmp_path / "big.npy").write_bytes(b"x" * 1000)
    (tmp_path / "index.json").write_text("{}")
    monkeypatch.setattr(marker, "HASH_LIMIT", 100)  # big.npy gets no checksum
    write_marker(tmp_path, dataset="d", synthetic=False, options={})
    rec = json.loads((tmp_path / MARKER).read_text())["files"]
    assert "sha256" not in rec["big.npy"] and "sha256" in rec["index.json"]
    assert check_folder(tmp_path, dataset="d", synthetic=False, options={}).ready
    (tmp_path / "big.npy").write_bytes(b"x" * 999)
    st = check_folder(tmp_path, dataset="d", synthetic=False, options={})
    assert st.state == "damaged" and "999 bytes" in st.reason
    assert check_folder(tmp_path, dataset="other", synthetic=False, options={}).state == "stale"


@pytest.fixture
def offline_toy(monkeypatch, tmp_path):
    """A real dataset whose only mirror is unreachable (a closed local port)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    def convert(files, dest):
        (dest / "data.txt").write_text("real")

    def synthesize(dest, seed=0, scale="cpu"):
        (dest / "data.txt").write_text(f"synthetic {scale}")

    mod = types.ModuleType("toy_fresh_mod")
    mod.SPEC = registry.DatasetSpec(
        name="toyfresh", summary="toy", convert=convert, synthesize=synthesize,
        files=(RemoteFile("toy.zip", (Mirror(f"http://127.0.0.1:{port}/toy.zip"),), sha256="0" * 64),),
        is_ready=lambda d: (d / "data.txt").is_file())
    monkeypatch.setitem(sys.modules, "toy_fresh_mod", mod)
    monkeypatch.setitem(registry.DATASETS, "toyfresh", "toy_fresh_mod")
    return tmp_path


def test_damaged_real_data_that_cannot_be_rebuilt_is_reported_with_its_path(offline_toy):
    dest = offline_toy / "toyfresh"
    dest.mkdir()
    (dest / "data.txt").write_text("real")
    write_marker(dest, dataset="toyfresh", synthetic=False, options={})
    assert prepare("toyfresh", root=offline_toy) == dest  # intact: reused without any download
    (dest / "data.txt").write_text("re")
    with pytest.raises(DataPrepError) as err:
        prepare("toyfresh", root=offline_toy)
    msg = str(err.value)
    assert "damaged" in msg and str(dest / "data.txt") in msg and "toy.zip" in msg
    assert (dest / "data.txt").read_text() == "re"  # nothing deleted when the rebuild is impossible
