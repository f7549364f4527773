"""data_prep's shared machinery: safe extraction, verified resumable downloads, prepare() and its CLI."""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import sys
import tarfile
import threading
import time
import types
import zipfile
from pathlib import Path

import pytest

from data_prep import (ArchiveError, ChecksumError, DownloadError, Mirror, RemoteFile, UnsafeArchiveError,
                       extract, fetch, prepare)
from data_prep import __main__ as cli
from data_prep import registry
from nbmodule.data.paths import DatasetNotFoundError, dataset_dir


@pytest.fixture(autouse=True)
def _no_local_mirror(monkeypatch):
    """These tests exercise the public-mirror path: no NBM_MIRROR from the caller's environment."""
    monkeypatch.delenv("NBM_MIRROR", raising=False)


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- extraction ---------------------------------------------------------------------------------------
def test_zip_and_tar_extract(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("root/x.txt", "hello")
        zf.writestr("root/sub/y.txt", "world")
    extract(z, tmp_path / "out")
    assert (tmp_path / "out/root/sub/y.txt").read_text() == "world"
    t = tmp_path / "b.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        data = b"abc"
        info = tarfile.TarInfo("r2/z.bin"); info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    extract(t, tmp_path / "out")
    assert (tmp_path / "out/r2/z.bin").read_bytes() == b"abc"
    assert (tmp_path / "out/root/x.txt").exists()  # merged, earlier content kept


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil_abs.txt", "ok/../../evil.txt"])
def test_zip_traversal_refused_and_nothing_written(tmp_path, name):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("good.txt", "fine")
        zf.writestr(name, "pwned")
    dest = tmp_path / "dest"
    before = _listing(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract(z, dest)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil_abs.txt").exists()
    assert _listing(tmp_path) - before <= {"dest"} and not any(dest.iterdir())


def test_tar_link_leaving_destination_refused(tmp_path):
    t = tmp_path / "link.tar"
    with tarfile.open(t, "w") as tf:
        info = tarfile.TarInfo("data/escape"); info.type = tarfile.SYMTYPE; info.linkname = "../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        extract(t, tmp_path / "dest")
    assert not any((tmp_path / "dest").iterdir())


def test_malformed_archives_get_clear_errors(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not an archive at all")
    with pytest.raises(ArchiveError, match="junk.zip"):
        extract(junk, tmp_path / "d1")
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        data = bytes(range(256)) * 400
        info = tarfile.TarInfo("big.bin"); info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ArchiveError, match="cut.tar.gz"):
        extract(cut, tmp_path / "d2")
    assert not any((tmp_path / "d2").iterdir())
    with pytest.raises(ArchiveError, match="not found"):
        extract(tmp_path / "nope.zip", tmp_path / "d3")


# --- downloads -------------------------------------------------------------------------------------------
class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (SimpleHTTPRequestHandler has none); counts bytes sent."""

    sent = 0

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        type(self).sent += len(body)  # counted before sending: the client may finish before the server thread
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = type("H", (_RangeHandler,), {"sent": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, handler
    httpd.shutdown()


def test_fetch_verifies_and_resumes(server, tmp_path):
    url, root, handler = server
    payload = bytes(range(256)) * 1000
    (root / "f.bin").write_bytes(payload)
    remote = RemoteFile("f.bin", (Mirror(f"{url}/missing.bin"), Mirror(f"{url}/f.bin")),
                        sha256=hashlib.sha256(payload).hexdigest())
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "f.bin.part").write_bytes(payload[:100_000])  # an interrupted earlier download
    got = fetch(remote, cache, dataset="toy")
    assert got.read_bytes() == payload
    assert handler.sent == len(payload) - 100_000  # only the rest was transferred
    assert not (cache / "f.bin.part").exists()
    handler.sent = 0
    assert fetch(remote, cache, dataset="toy") == got and handler.sent == 0  # cached copy reused


def test_checksum_mismatch_is_reported_and_not_kept(server, tmp_path):
    url, root, _ = server
    (root / "f.bin").write_bytes(b"tampered")
    remote = RemoteFile("f.bin", (Mirror(f"{url}/f.bin"),), sha256="0" * 64)
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        fetch(remote, tmp_path / "c", dataset="toy")
    assert "toy" in str(err.value) and "--synthetic" in str(err.value)
    assert not list((tmp_path / "c").iterdir())


def test_offline_download_fails_fast_naming_dataset_url_and_synthetic(tmp_path):
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
    url = f"http://127.0.0.1:{port}/images_background.zip"  # nothing listens: refused at once, like offline
    remote = RemoteFile("images_background.zip", (Mirror(url),), md5="0" * 32)
    start = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        fetch(remote, tmp_path, dataset="omniglot")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "omniglot" in msg and url in msg and "python -m data_prep omniglot --synthetic" in msg


# --- prepare() and the CLI, on a toy dataset registered for the test ----------------------------------------
@pytest.fixture
def toy_dataset(monkeypatch, tmp_path):
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("toy/a.txt", "A")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()

    def convert(files, dest, fail=False):
        extract(files["toy.zip"], dest)
        if fail:
            raise RuntimeError("conversion failed on purpose")

    def synthesize(dest, seed=0, scale="cpu"):
        (dest / "toy").mkdir(parents=True, exist_ok=True)
        (dest / "toy" / "a.txt").write_text(f"synthetic {seed} {scale}")

    mod = types.ModuleType("toy_dataset_mod")
    mod.SPEC = registry.DatasetSpec(
        name="toy", summary="a toy", files=(RemoteFile("toy.zip", (Mirror("http://127.0.0.1:9/toy.zip"),), sha256=sha),),
        convert=convert, synthesize=synthesize, is_ready=lambda d: (d / "toy" / "a.txt").is_file())
    monkeypatch.setitem(sys.modules, "toy_dataset_mod", mod)
    monkeypatch.setitem(registry.DATASETS, "toy", "toy_dataset_mod")
    return archive


def test_prepare_from_local_source_and_synthetic(toy_dataset, tmp_path):
    dest = prepare("toy", tmp_path / "data" / "toy", sources=[str(toy_dataset)])
    assert (dest / "toy" / "a.txt").read_text() == "A"
    syn = prepare("toy", synthetic=True, root=tmp_path / "data", seed=3, scale="smoke")
    assert syn == tmp_path / "data" / "synthetic" / "toy"
    assert (syn / "toy" / "a.txt").read_text() == "synthetic 3 smoke"


def test_prepare_rejects_bad_checksum_and_failed_conversion_leaves_nothing(toy_dataset, tmp_path):
    bad = tmp_path / "other" / "toy.zip"
    bad.parent.mkdir()
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("toy/a.txt", "B")
    with pytest.raises(ChecksumError, match="toy.zip"):
        prepare("toy", tmp_path / "d" / "toy", sources=[str(bad)])
    assert not (tmp_path / "d" / "toy").exists()
    with pytest.raises(RuntimeError, match="on purpose"):
        prepare("toy", tmp_path / "d" / "toy", sources=[str(toy_dataset)], fail=True)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").glob("toy*"))


def test_cli_reports_download_failure_and_missing_source(toy_dataset, tmp_path, capsys):
    rc = cli.main(["toy", "--dest", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "toy.zip" in err and "--synthetic" in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1  # one line, no traceback
    assert cli.main(["toy", "--dest", str(tmp_path / "t"), "--source", str(tmp_path / "nope.zip")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["toy", "--synthetic", "--dest", str(tmp_path / "s"), "-o", "scale=smoke"]) == 0


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_dir("omniglot", root=tmp_path)
    assert "python -m data_prep omniglot" in str(err.value) and "--synthetic" in str(err.value)
    (tmp_path / "omniglot").mkdir()
    with pytest.raises(DatasetNotFoundError, match="missing train.npz"):
        dataset_dir("omniglot", root=tmp_path, required=("train.npz",))


def test_synthetic_data_is_rebuilt_when_options_change(toy_dataset, tmp_path):
    root = tmp_path / "data"
    prepare("toy", synthetic=True, root=root, scale="smoke")
    path = prepare("toy", synthetic=True, root=root, scale="smoke")  # reused: same options
    assert (path / "toy" / "a.txt").read_text() == "synthetic 0 smoke"
    prepare("toy", synthetic=True, root=root, scale="cpu")
    assert (path / "toy" / "a.txt").read_text() == "synthetic 0 cpu"
