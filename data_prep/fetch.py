"""Downloads: local mirrors first (``NBM_MIRROR``), then the public mirrors in order; checksums; resume.

A file is only trusted after its checksum matches: the published one, or, for a copy in a mirror that was
repackaged (its checksum differs from the official one), a checksum listed in a file beside it
(``SHA256SUMS``, ``MD5SUMS``, ``<file>.sha256``, ``<file>.md5``, in ``sha256sum`` format); the result says
which one matched. A partial download (``*.part``) is resumed with an HTTP Range request on the next try.
Offline, every host is probed once with a short timeout, so the whole search fails within seconds; the
error names the dataset, every place tried with its reason, and the ``--synthetic`` alternative.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .roots import mirror_roots

__all__ = ["Mirror", "RemoteFile", "Fetched", "DownloadError", "ChecksumError", "file_hash", "verify",
           "accept", "read_listing", "fetch", "fetch_file", "LISTINGS"]

CHUNK = 1 << 20
#: files beside an archive that may list its checksum (sha256sum / md5sum format)
LISTINGS = ("SHA256SUMS", "MD5SUMS", "{name}.sha256", "{name}.md5")
PROBE_TIMEOUT = 4.0


class DownloadError(RuntimeError):
    """No mirror of a file could be fetched; the message lists each place tried and why it failed."""


class ChecksumError(ValueError):
    """A file's checksum differs from the published one (and from any listed beside it)."""


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


@dataclass(frozen=True)
class Fetched:
    """A verified local file: ``path`` (used in place for a local mirror), ``origin`` ("cache",
    "--source", "mirror <root>" or "<url>"), ``location`` (the file or URL read) and ``checksum`` (which
    checksum matched, in words)."""

    path: Path
    origin: str
    location: str
    checksum: str


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


# --- checksum listings beside a file ------------------------------------------------------------------
def parse_listing(text: str, filename: str, source: str) -> list[tuple[str, str, str]]:
    """``(algorithm, hex, source)`` entries of a sha256sum/md5sum-format text that name ``filename``
    (a ``<file>.sha256`` holding only the hash counts too)."""
    out = []
    for line in text.splitlines():
        bits = line.strip().split(None, 1)
        if not bits or bits[0].startswith("#"):
            continue
        digest = bits[0].lower()
        algo = {64: "sha256", 32: "md5"}.get(len(digest))
        if algo is None or any(c not in "0123456789abcdef" for c in digest):
            continue
        name = bits[1].strip().lstrip("*") if len(bits) > 1 else None
        if name is not None and name.removeprefix("./") != filename:
            continue
        if name is None and not source.endswith((f"{filename}.sha256", f"{filename}.md5")):
            continue
        out.append((algo, digest, source))
    return out


def read_listing(where: str | Path, filename: str, timeout: float = 10.0) -> list[tuple[str, str, str]]:
    """Checksums listed for ``filename`` in the listing files of folder or URL prefix ``where``."""
    out = []
    for pattern in LISTINGS:
        name = pattern.format(name=filename)
        if isinstance(where, Path) or not str(where).startswith(("http://", "https://", "file://")):
            path = Path(where) / name
            if path.is_file():
                try:
                    out += parse_listing(path.read_text(errors="replace"), filename, str(path))
                except OSError:
                    continue
        else:
            url = f"{str(where).rstrip('/')}/{name}"
            try:
                req = urllib.request.Request(url, headers={"User-Agent": "nbmodule-data-prep/0.2"})
                with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user's mirror
                    text = resp.read(1 << 20).decode(errors="replace")
            except (urllib.error.URLError, OSError, ValueError):
                continue
            out += parse_listing(text, filename, url)
    return out


def accept(path: str | Path, remote: RemoteFile, listings: Sequence[tuple[str, str, str]] = (), *,
           location: str | None = None, verify_checksums: bool = True) -> str:
    """Check ``path`` against the official checksum, then against ``listings`` (from :func:`read_listing`).

    Returns which checksum matched, in words; raises :class:`ChecksumError` naming the file, every
    expected checksum with its source, and the file's own."""
    where = location or str(path)
    if not verify_checksums:
        return "not verified (--no-verify)"
    hashes: dict[str, str] = {}

    def digest(algo: str) -> str:
        if algo not in hashes:
            hashes[algo] = file_hash(path, algo)
        return hashes[algo]

    official = [(a, e.lower()) for a, e in (("sha256", remote.sha256), ("md5", remote.md5)) if e]
    for algo, expected in official:
        if digest(algo) == expected:
            return f"official {algo}"
    for algo, expected, source in listings:
        if digest(algo) == expected:
            note = f"{algo} listed in {source}"
            if official:
                note += f" (the official {official[0][0]} {official[0][1]} differs)"
            return note
    if not official and not listings:
        return f"no published checksum; sha256 {digest('sha256')}"
    wanted = [f"official {a} {e}" for a, e in official] + [f"{a} {e} listed in {s}" for a, e, s in listings]
    got = ", ".join(f"{a} {digest(a)}" for a in dict.fromkeys([a for a, _ in official] + [a for a, _, _ in listings]))
    raise ChecksumError(f"checksum mismatch for {where}: expected {' or '.join(wanted)}; got {got}. "
                        "The file is corrupt or not the one published.")


# --- transport --------------------------------------------------------------------------------------------
_PROBED: dict[tuple[str, int], str | None] = {}


def _unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why ``url``'s host cannot be reached (DNS or TCP connect, probed once per process), or None."""
    if url.startswith("gdrive://"):
        host, port = "drive.google.com", 443
    else:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    key = (host, port)
    if key not in _PROBED:
        try:
            with socket.create_connection(key, timeout=timeout):
                _PROBED[key] = None
        except OSError as err:
            _PROBED[key] = f"host {host}:{port} unreachable ({type(err).__name__}: {err})"
    return _PROBED[key]


def _http_download(url: str, part: Path, timeout: float) -> None:
    """Download ``url`` into ``part``, resuming from its current size when the server allows ranges."""
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "nbmodule-data-prep/0.2"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - URLs come from our registry or the user
        mode = "ab" if start and resp.status == 206 else "wb"  # 200 on a ranged request: server restarts
        total = int(resp.headers.get("Content-Length") or 0)
        bar = None
        if total > 16 * CHUNK:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"), leave=False)
        try:
            with open(part, mode) as fh:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    fh.write(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()


def _gdrive_download(file_id: str, part: Path) -> None:
    import gdown

    out = gdown.download(id=file_id, output=str(part), quiet=False, resume=True)
    if out is None:  # gdown returns None instead of raising on some failures (quota, permission)
        raise DownloadError(f"gdown could not fetch Drive id {file_id} (quota exceeded or not shared?)")


_NET_ERRORS = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError, DownloadError,
               RuntimeError)


def _listing_cache(target: Path, note: str, path: Path) -> None:
    """Remember, beside a cached download accepted through a listing, the checksum that vouched for it."""
    if " listed in " in note:
        target.with_name(target.name + ".sha256").write_text(f"{file_hash(path)}  {target.name}\n")


def fetch_file(remote: RemoteFile, dest_dir: str | Path, *, dataset: str, timeout: float = 20.0,
               mirrors: Sequence[str] | None = None, verify_checksums: bool = True,
               urls: Sequence[str] = ()) -> Fetched:
    """A verified copy of ``remote``: the download cache ``dest_dir``, else the local mirrors (``mirrors``,
    default ``$NBM_MIRROR``; ``<mirror>/<file>`` and ``<mirror>/<dataset>/<file>``; folders are used in
    place), else ``urls`` (e.g. a ``--source`` URL) and the public mirrors, downloaded into ``dest_dir``."""
    dest_dir = Path(dest_dir)
    name = remote.filename
    target = dest_dir / name
    if target.is_file():
        note = accept(target, remote, read_listing(dest_dir, name), verify_checksums=verify_checksums)
        return Fetched(target, "cache", str(target), note)
    failures: list[str] = []
    roots = mirror_roots() if mirrors is None else list(mirrors)
    part = target.with_name(name + ".part")
    for root in roots:
        is_url = root.startswith(("http://", "https://", "file://"))
        for prefix in (root.rstrip("/"), f"{root.rstrip('/')}/{dataset}") if is_url else (root, str(Path(root) / dataset)):
            if not is_url:
                cand = Path(prefix) / name
                if not cand.is_file():
                    continue
                try:
                    note = accept(cand, remote, read_listing(cand.parent, name), verify_checksums=verify_checksums)
                except (ChecksumError, OSError) as err:
                    failures.append(f"mirror {cand}: {err}")
                    continue
                return Fetched(cand, f"mirror {root}", str(cand), note)
            url = f"{prefix}/{name}"
            why = _unreachable(url)
            if why:
                failures.append(f"mirror {url}: {why}")
                break
            dest_dir.mkdir(parents=True, exist_ok=True)
            try:
                part.unlink(missing_ok=True)  # a different source: do not resume someone else's bytes
                _http_download(url, part, timeout)
            except _NET_ERRORS as err:
                part.unlink(missing_ok=True)
                failures.append(f"mirror {url}: {type(err).__name__}: {err}")
                continue
            try:
                note = accept(part, remote, read_listing(prefix, name), location=url, verify_checksums=verify_checksums)
            except ChecksumError as err:
                part.unlink(missing_ok=True)
                failures.append(f"mirror {url}: {err}")
                continue
            os.replace(part, target)
            _listing_cache(target, note, target)
            return Fetched(target, f"mirror {root}", url, note)
    for mirror in [*(Mirror(u, "--source") for u in urls), *remote.mirrors]:
        why = _unreachable(mirror.url)
        if why:
            failures.append(f"{mirror.url}: {why}")
            continue
        dest_dir.mkdir(parents=True, exist_ok=True)
        try:
            if mirror.is_gdrive:
                _gdrive_download(mirror.url.removeprefix("gdrive://"), part)
            else:
                _http_download(mirror.url, part, timeout)
            note = accept(part, remote, location=mirror.url, verify_checksums=verify_checksums)
        except ChecksumError as err:
            part.unlink(missing_ok=True)
            failures.append(f"{mirror.url}: {err}")
            continue
        except _NET_ERRORS as err:
            failures.append(f"{mirror.url}: {type(err).__name__}: {err}")
            continue
        os.replace(part, target)
        if note.startswith("no published checksum"):
            print(f"[data_prep] {name}: {note}")
        return Fetched(target, mirror.url, mirror.url, note)
    tried = "\n".join(f"  - {f}" for f in failures) or "  (no mirrors listed)"
    raise DownloadError(
        f"could not download {name} for dataset {dataset!r} ({remote.describe_checksum()}).\n"
        f"Tried, in order:\n{tried}\n"
        f"Put the file at {target} yourself, in a folder named by NBM_MIRROR, pass it with "
        f"`python -m data_prep {dataset} --source FILE`, or run `python -m data_prep {dataset} --synthetic` "
        "for offline synthetic data in the same format.")


def fetch(remote: RemoteFile, dest_dir: str | Path, *, dataset: str, timeout: float = 20.0,
          mirrors: Sequence[str] | None = None, verify_checksums: bool = True) -> Path:
    """Return a verified local copy of ``remote`` (see :func:`fetch_file`), downloading it if needed."""
    return fetch_file(remote, dest_dir, dataset=dataset, timeout=timeout, mirrors=mirrors,
                      verify_checksums=verify_checksums).path
