"""Downloads: resumable HTTP(S), Google Drive through gdown, checksums, and mirrors tried in order.

A download is only trusted after its checksum matches; a partial file (``*.part``) is resumed with an HTTP
Range request on the next try. Offline, the first connection fails within seconds and the error names the
dataset, every URL tried with its reason, and the ``--synthetic`` alternative.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Mirror", "RemoteFile", "DownloadError", "ChecksumError", "file_hash", "verify", "fetch"]

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """No mirror of a file could be fetched; the message lists each URL and why it failed."""


class ChecksumError(ValueError):
    """A file's checksum differs from the published one."""


@dataclass(frozen=True)
class Mirror:
    """One place a file can be fetched from: an http(s) URL or ``gdrive://<file id>``."""

    url: str
    note: str = ""

    @property
    def is_gdrive(self) -> bool:
        return self.url.startswith("gdrive://")


@dataclass(frozen=True)
class RemoteFile:
    """A file of a dataset: its name on disk, its checksum(s), and the mirrors to try in order.

    ``sha256``/``md5`` may be None only where the publisher gives none (the file is then trusted after a
    complete download, and the computed sha256 is printed so a user can pin it).
    """

    filename: str
    mirrors: tuple[Mirror, ...]
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None  # bytes, for the message only

    def describe_checksum(self) -> str:
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return "no published checksum"


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, remote: RemoteFile) -> None:
    """Raise :class:`ChecksumError` naming the file and both hashes when ``path`` does not match."""
    for algo, expected in (("sha256", remote.sha256), ("md5", remote.md5)):
        if expected:
            got = file_hash(path, algo)
            if got.lower() != expected.lower():
                raise ChecksumError(
                    f"checksum mismatch for {path}: expected {algo} {expected}, got {got}. "
                    "The file is corrupt or not the published one; delete it and download again.")
            return


def _http_download(url: str, part: Path, timeout: float) -> None:
    """Download ``url`` into ``part``, resuming from its current size when the server allows ranges."""
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "nbmodule-data-prep/0.1"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - URLs come from our registry or the user
        mode = "ab" if start and resp.status == 206 else "wb"  # 200 on a ranged request: server restarts
        with open(part, mode) as fh:
            shutil.copyfileobj(resp, fh, CHUNK)


def _gdrive_download(file_id: str, part: Path) -> None:
    import gdown

    out = gdown.download(id=file_id, output=str(part), quiet=False, resume=True)
    if out is None:  # gdown returns None instead of raising on some failures (quota, permission)
        raise DownloadError(f"gdown could not fetch Drive id {file_id} (quota exceeded or not shared?)")


def fetch(remote: RemoteFile, dest_dir: str | Path, *, dataset: str, timeout: float = 20.0) -> Path:
    """Return ``dest_dir/<filename>``, downloading it from the first mirror that works and verifying it.

    A file already present and matching its checksum is reused (a local or Drive cache).
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / remote.filename
    if target.is_file():
        verify(target, remote)
        return target
    part = target.with_name(target.name + ".part")
    failures: list[str] = []
    for mirror in remote.mirrors:
        try:
            if mirror.is_gdrive:
                _gdrive_download(mirror.url.removeprefix("gdrive://"), part)
            else:
                _http_download(mirror.url, part, timeout)
            verify(part, remote)
        except ChecksumError as err:
            part.unlink(missing_ok=True)
            failures.append(f"{mirror.url}: {err}")
            continue
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError,
                DownloadError, RuntimeError) as err:
            failures.append(f"{mirror.url}: {type(err).__name__}: {err}")
            continue
        os.replace(part, target)
        if not (remote.sha256 or remote.md5):
            print(f"[data_prep] {target.name}: no published checksum; sha256 is {file_hash(target)}")
        return target
    tried = "\n".join(f"  - {f}" for f in failures) or "  (no mirrors listed)"
    raise DownloadError(
        f"could not download {remote.filename} for dataset {dataset!r} ({remote.describe_checksum()}).\n"
        f"Tried, in order:\n{tried}\n"
        f"Put the file at {target} yourself, pass it with `python -m data_prep {dataset} --source FILE`, or "
        f"run `python -m data_prep {dataset} --synthetic` for offline synthetic data in the same format.")
