"""Local mirrors (NBM_MIRROR), real data first, and the offline dry mirror of every dataset.

Everything here runs offline: the shared real samples (NBM_SHARED_DATA) are the mirror."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import shutil
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from data_prep import DATASETS, DownloadError, Mirror, RemoteFile, obtain, prepare
from data_prep import __main__ as cli
from data_prep import registry
from data_prep.fetch import fetch_file
from data_prep.marker import read_marker
from data_prep.omniglot import FILES as OMNIGLOT_FILES
from data_prep.roots import mirror_roots, split_mirror_list

OFFICIAL = {f.filename: f for f in OMNIGLOT_FILES}


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch):
    monkeypatch.delenv("NBM_MIRROR", raising=False)


def _private(remote: RemoteFile) -> RemoteFile:
    """The same file without public mirrors: a test never depends on (or reaches) the network."""
    return dataclasses.replace(remote, mirrors=())


def test_mirror_list_keeps_urls_whole():
    assert split_mirror_list("/a/b:rel:https://h.org:8080/x/y:http://h2/z") == [
        "/a/b", "rel", "https://h.org:8080/x/y", "http://h2/z"]
    assert split_mirror_list("") == []
    assert mirror_roots("~/m:https://h/x/")[1] == "https://h/x"


# --- real Omniglot through the shared folder as NBM_MIRROR ------------------------------------------------
@pytest.fixture(scope="module")
def shared_module():
    """The shared real samples, for module-scoped fixtures (``shared_data`` is per test)."""
    env = os.environ.get("NBM_SHARED_DATA")
    if not env or not Path(env).is_dir():
        pytest.skip("NBM_SHARED_DATA is not set to the shared real-data folder")
    return Path(env)


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory, shared_module):
    """Real Omniglot prepared offline with NBM_MIRROR=<shared data> (the complete zips, our repackaging);
    the mirror is found before any public URL is tried."""
    shared = shared_module
    root = tmp_path_factory.mktemp("real")
    mp = pytest.MonkeyPatch()
    mp.setenv("NBM_MIRROR", str(shared))
    try:
        got = obtain("omniglot", root, prefer="real", fallback=False)
    finally:
        mp.undo()
    return root, got, shared


def test_real_omniglot_from_the_shared_mirror(omniglot_root):
    from nbmodule.data.fewshot import load_lake_runs, omniglot_splits

    root, got, shared = omniglot_root
    assert not got.synthetic and got.path == root / "omniglot"
    assert got.source == f"mirror {shared}"
    listing = shared / "omniglot" / "SHA256SUMS"
    assert f"sha256 listed in {listing}" in got.note and "official sha256" in got.note  # all_runs.zip is official
    recorded = read_marker(got.path)["sources"]
    assert f"sha256 listed in {listing}" in recorded["images_background.zip"]
    assert "md5 68d2efa1b9178cc56df9314c21c6e718 differs" in recorded["images_background.zip"]
    splits = omniglot_splits(got.path, split="background")
    assert splits["train"].n_base_classes + splits["val"].n_base_classes == 964
    assert splits["test"].n_base_classes == 659
    assert load_lake_runs(got.path).support.shape == (20, 20, 28, 28)


def test_tampered_copy_in_a_mirror_is_refused_naming_file_and_checksums(shared_data, tmp_path):
    mirror = tmp_path / "mirror" / "omniglot"
    mirror.mkdir(parents=True)
    data = bytearray((shared_data / "omniglot" / "all_runs.zip").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (mirror / "all_runs.zip").write_bytes(bytes(data))
    shutil.copy(shared_data / "omniglot" / "SHA256SUMS", mirror / "SHA256SUMS")
    remote = _private(OFFICIAL["all_runs.zip"])
    start = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        fetch_file(remote, tmp_path / "cache", dataset="omniglot", mirrors=[str(tmp_path / "mirror")])
    msg = str(err.value)
    assert time.perf_counter() - start < 10
    got = hashlib.sha256(bytes(data)).hexdigest()
    assert str(mirror / "all_runs.zip") in msg and "checksum mismatch" in msg
    assert remote.sha256 in msg and got in msg and str(mirror / "SHA256SUMS") in msg
    assert not (tmp_path / "cache" / "all_runs.zip").exists()


def test_listed_checksum_accepts_a_repackaged_copy_and_says_so(shared_data, tmp_path):
    remote = _private(OFFICIAL["images_background.zip"])
    got = fetch_file(remote, tmp_path / "cache", dataset="omniglot", mirrors=[str(shared_data)])
    assert got.path == shared_data / "omniglot" / "images_background.zip"  # used in place, not copied
    assert got.origin == f"mirror {shared_data}" and "listed in" in got.checksum
    # without the listing beside it, the repackaged copy is refused
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "images_background.zip").symlink_to(got.path)
    with pytest.raises(DownloadError, match="md5 68d2efa1b9178cc56df9314c21c6e718"):
        fetch_file(remote, tmp_path / "cache2", dataset="omniglot", mirrors=[str(lone)])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    hits: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).hits.append(self.path)
        super().do_GET()


def test_url_mirror_with_listing_and_dataset_folder(tmp_path):
    www = tmp_path / "www" / "toy"
    www.mkdir(parents=True)
    payload = b"our repackaged copy"
    (www / "f.bin").write_bytes(payload)
    (www / "f.bin.sha256").write_text(hashlib.sha256(payload).hexdigest() + "\n")
    handler = type("H", (_Quiet,), {"hits": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path / "www")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        remote = RemoteFile("f.bin", (), sha256="1" * 64)
        got = fetch_file(remote, tmp_path / "cache", dataset="toy", mirrors=[url])
        assert got.path.read_bytes() == payload and got.origin == f"mirror {url}"
        assert got.checksum.startswith(f"sha256 listed in {url}/toy/f.bin.sha256")
        n = len(handler.hits)
        again = fetch_file(remote, tmp_path / "cache", dataset="toy", mirrors=[url])
        assert again.origin == "cache" and len(handler.hits) == n  # the cache remembers the listed checksum
    finally:
        httpd.shutdown()


# --- real data first, synthetic fallback ----------------------------------------------------------------------
@pytest.fixture
def unreachable_toy(monkeypatch):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    def convert(files, dest, n=3):
        (dest / "x.txt").write_text("real")

    def synthesize(dest, seed=0, scale="cpu", n=3):
        (dest / "x.txt").write_text(f"synthetic {scale} {seed}")

    mod = types.ModuleType("toy_obtain_mod")
    mod.SPEC = registry.DatasetSpec(
        name="toyobtain", summary="toy", convert=convert, synthesize=synthesize,
        files=(RemoteFile("toy.tar", (Mirror(f"http://127.0.0.1:{port}/toy.tar"),), md5="0" * 32),),
        is_ready=lambda d: (d / "x.txt").is_file())
    monkeypatch.setitem(sys.modules, "toy_obtain_mod", mod)
    monkeypatch.setitem(registry.DATASETS, "toyobtain", "toy_obtain_mod")


def test_obtain_falls_back_to_synthetic_fast_and_says_why(unreachable_toy, tmp_path):
    start = time.perf_counter()
    got = obtain("toyobtain", tmp_path, prefer="real", scale="smoke", seed=4)
    assert time.perf_counter() - start < 10
    assert got.synthetic and got.source == "synthetic" and got.path == tmp_path / "synthetic" / "toyobtain"
    assert "real toyobtain unavailable" in got.note and "toy.tar" in got.note and "scale smoke" in got.note
    assert (got.path / "x.txt").read_text() == "synthetic smoke 4"
    with pytest.raises(DownloadError):
        obtain("toyobtain", tmp_path, fallback=False)
    syn = obtain("toyobtain", tmp_path, prefer="synthetic", scale="smoke", seed=4)
    assert syn.synthetic and syn.path == got.path
    rows = registry.prepare_many(["toyobtain"], synthetic=False, root=tmp_path, scale="smoke", seed=4)
    assert rows[0]["kind"] == "synthetic (fallback)" and "unavailable" in rows[0]["error"]


# --- the dry mirror: every dataset's real path, offline ---------------------------------------------------------
@pytest.fixture(scope="module")
def dry_mirror(tmp_path_factory, shared_module):
    shared = shared_module
    dest = tmp_path_factory.mktemp("dry") / "mirror"
    assert cli.main(["dry-mirror", "--shared", str(shared), "--dest", str(dest), "--frames", "1"]) == 0
    return dest


def test_dry_mirror_holds_the_published_file_names(dry_mirror):
    for name in DATASETS:
        spec = registry.get_spec(name)
        listing = (dry_mirror / name / "SHA256SUMS").read_text()
        for f in spec.files:
            assert (dry_mirror / name / f.filename).is_file(), f.filename
            assert f.filename in listing


def test_every_dataset_prepares_from_the_dry_mirror_and_loads(dry_mirror, omniglot_root, monkeypatch):
    import torch

    from nbmodule.data.coco import CocoDetection
    from nbmodule.data.fewshot import miniimagenet_splits
    from nbmodule.data.imagenette import ImagenetteFolder
    from nbmodule.data.nyuv2 import NYUDv2
    from nbmodule.data.taskonomy import Taskonomy
    from nbmodule.data.voc import VOCSegmentation

    root = omniglot_root[0]  # Omniglot's zips in the dry mirror are the shared ones: converted once above
    monkeypatch.setenv("NBM_MIRROR", str(dry_mirror))
    for f in OMNIGLOT_FILES:  # ... but they resolve through the dry mirror too
        assert fetch_file(_private(f), root / ".cache", dataset="omniglot").path.parent == dry_mirror / "omniglot"
    got = {}
    for name in DATASETS:
        got[name] = obtain(name, root, prefer="real", fallback=False)
        assert not got[name].synthetic and got[name].source.startswith("mirror "), (name, got[name])
    mini = miniimagenet_splits(got["miniimagenet"].path)
    ep = mini["test"].sample(2, 5, 1, 15, generator=torch.Generator().manual_seed(0))
    assert ep.xs.shape == (2, 5, 3, 84, 84) and ep.xq.shape == (2, 75, 3, 84, 84)
    nyu = NYUDv2(got["nyuv2"].path, "train")
    s = nyu[0]
    assert len(nyu) == 2 and nyu.ids[0].startswith("img_5") and s["image"].shape == (3, 480, 640)
    assert s["edges"].shape == (1, 480, 640) and s["seg"].max() < 40
    mtan = NYUDv2(got["nyuv2_13"].path, "val", tasks=("seg", "depth", "normals"))
    assert mtan.layout == "mtan" and len(mtan) == 1 and mtan[0]["image"].shape == (3, 288, 384)
    tk = Taskonomy(got["taskonomy"].path, "train")
    assert len(tk) == 1 and tk[0]["image"].shape == (3, 512, 512) and tk[0]["depth_mask"].any()
    voc = VOCSegmentation(got["voc"].path, "train", image_size=64)
    assert len(voc) == 1 and set(voc[0]["mask"].unique().tolist()) <= set(range(21)) | {255}
    assert len(VOCSegmentation(got["voc"].path, "val", image_size=64)) == 1
    coco = CocoDetection(got["coco"].path, "train", image_size=64)
    assert coco.num_classes == 10 and len(coco) >= 1 and len(CocoDetection(got["coco"].path, "val")) >= 1
    nette = ImagenetteFolder(got["imagenette"].path, "train", image_size=64)
    assert nette.num_classes == 10 and len(nette) == 24 + 9  # balanced: 24 of the 35 tench, 1 of each other class
    with open(next((got["imagenette"].path / "imagenette2-160" / "val").rglob("*.JPEG")), "rb") as fh:
        from PIL import Image

        assert min(Image.open(fh).size) == 160  # the -160 archive's resolution
