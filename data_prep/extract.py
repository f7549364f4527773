"""Safe archive extraction and confined output paths: nothing is written outside the destination.

Every member is checked *before* anything is written: absolute paths, ``..`` components, links pointing
outside the destination (following, virtually, the links the same archive creates earlier: ``a -> .``
then ``a/b -> ..`` is refused), and device files are refused, so a malicious or malformed archive fails
as a whole instead of leaving half its content behind.

Converters that build output paths from data (archive member names, ``train.txt`` ids, JSON
``file_name`` fields, CSV entries) go through :func:`confined`, which refuses any entry that would land
outside its destination and names it. :func:`open_zip`, :func:`open_tar` and :func:`archive_errors` turn
``BadZipFile`` / ``tarfile.ReadError`` / truncation into an :class:`ArchiveError` naming the archive.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

__all__ = ["ArchiveError", "UnsafeArchiveError", "UnsafePathError", "extract", "is_archive", "confined",
           "open_zip", "open_tar", "archive_errors"]


class ArchiveError(ValueError):
    """The archive is malformed or of an unknown kind."""


class UnsafeArchiveError(ArchiveError):
    """The archive would write outside its destination."""


class UnsafePathError(UnsafeArchiveError):
    """A path built from data (member name, id, JSON field) would land outside its destination."""


def is_archive(path: str | Path) -> bool:
    p = str(path).lower()
    return p.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))


def _bad_part(part: str) -> str | None:
    """Why one data-given path piece is unsafe, or None."""
    if "\x00" in part:
        return "contains a NUL byte"
    norm = part.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "is an absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "contains '..'"
    return None


def confined(dest: str | Path, *parts: str, what: str = "entry") -> Path:
    """``dest/part/part...`` resolved, refusing any data-given piece that would leave ``dest``.

    ``parts`` may hold ``/``-separated sub-paths (a member name). ``what`` names the source of the
    entry in the message (e.g. ``"train.txt id"``). Raises :class:`UnsafePathError` naming the entry."""
    root = Path(dest).resolve()
    entry = "/".join(parts)
    for part in parts:
        why = _bad_part(str(part))
        if why:
            raise UnsafePathError(f"{what} {entry!r} {why}; refusing to write it (destination {dest})")
    target = root.joinpath(*(p for part in parts for p in str(part).replace("\\", "/").split("/") if p))
    target = target.resolve()
    if target != root and root not in target.parents:
        raise UnsafePathError(f"{what} {entry!r} would be written outside {dest}; refusing")
    return target


@contextlib.contextmanager
def archive_errors(archive: str | Path) -> Iterator[None]:
    """Report a corrupt/truncated archive met while reading it as :class:`ArchiveError` naming ``archive``."""
    try:
        yield
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise ArchiveError(f"{archive}: corrupt or truncated archive ({type(err).__name__}: {err})") from None


@contextlib.contextmanager
def open_zip(archive: str | Path) -> Iterator[zipfile.ZipFile]:
    """``zipfile.ZipFile(archive)`` whose errors name the archive."""
    archive = Path(archive)
    if not archive.is_file():
        raise ArchiveError(f"archive not found: {archive}")
    with archive_errors(archive):
        zf = zipfile.ZipFile(archive)
    with zf, archive_errors(archive):
        yield zf


@contextlib.contextmanager
def open_tar(archive: str | Path) -> Iterator[tarfile.TarFile]:
    """``tarfile.open(archive)`` (any compression) whose errors name the archive."""
    archive = Path(archive)
    if not archive.is_file():
        raise ArchiveError(f"archive not found: {archive}")
    with archive_errors(archive):
        tf = tarfile.open(archive)
    with tf, archive_errors(archive):
        yield tf


def _check_name(archive: Path, name: str, dest: Path) -> Path:
    why = _bad_part(name)
    if why:
        raise UnsafeArchiveError(f"{archive}: member {name!r} {why}; refusing to extract")
    target = (dest / PurePosixPath(name.replace("\\", "/"))).resolve()
    if target != dest and dest not in target.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside {dest}; refusing to extract")
    return target


def _resolve_virtual(parts: list[str], links: dict[str, str]) -> list[str] | None:
    """Normalise a path inside the destination, following the symlinks the archive made so far
    (``links``: member path -> link target). None when it leaves the destination."""
    out: list[str] = []
    queue = list(parts)
    hops = 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(part)
        target = links.get("/".join(out))
        if target is not None:
            hops += 1
            if hops > 64 or target.startswith("/"):
                return None
            out.pop()  # the link's target is relative to the folder holding the link
            queue = target.split("/") + queue
    return out


def _check_tar(archive: Path, tf: tarfile.TarFile, dest: Path) -> None:
    links: dict[str, str] = {}
    for m in tf.getmembers():
        _check_name(archive, m.name, dest)
        parts = [p for p in m.name.replace("\\", "/").split("/") if p not in ("", ".")]
        parent = _resolve_virtual(parts[:-1], links)
        if parent is None:
            raise UnsafeArchiveError(
                f"{archive}: member {m.name!r} lies behind a link that leaves {dest}; refusing to extract")
        if m.issym() or m.islnk():
            link = m.linkname.replace("\\", "/")
            base = parent if m.issym() else []  # hard links are relative to the archive root
            resolved = None if link.startswith("/") else _resolve_virtual(base + link.split("/"), links)
            if resolved is None:
                raise UnsafeArchiveError(
                    f"{archive}: link {m.name!r} -> {m.linkname!r} points outside {dest}; refusing to extract")
            if m.issym():
                links["/".join(parent + parts[-1:])] = link
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or fifo; refusing to extract")


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` into ``dest`` after validating every member; return ``dest``.

    Raises :class:`UnsafeArchiveError` for traversal or escaping links, :class:`ArchiveError` for a
    truncated, corrupt or unknown archive. On any error nothing new is left inside ``dest``.
    """
    archive = Path(archive)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    if not archive.is_file():
        raise ArchiveError(f"archive not found: {archive}")
    staging = dest / f".extracting-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if zipfile.is_zipfile(archive):
            with open_zip(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise ArchiveError(f"{archive}: member {bad!r} is corrupt (CRC mismatch)")
                for info in zf.infolist():
                    _check_name(archive, info.filename, dest)
                    # zip symlinks carry S_IFLNK in the high bits of external_attr
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symlink; refusing")
                zf.extractall(staging)
        else:
            try:
                tf = tarfile.open(archive)
            except tarfile.TarError as err:
                raise ArchiveError(f"{archive}: not a zip or tar archive, or corrupt ({err})") from None
            with tf:
                try:
                    _check_tar(archive, tf, dest)
                    if hasattr(tarfile, "data_filter"):
                        tf.extractall(staging, filter="data")
                    else:  # pragma: no cover - Python < 3.11.4; members were validated above
                        tf.extractall(staging)
                except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
                    raise ArchiveError(f"{archive}: truncated or corrupt archive ({err})") from None
        _merge(staging, dest)  # move validated content into place only once the whole archive extracted
    except zipfile.BadZipFile as err:
        raise ArchiveError(f"{archive}: corrupt zip ({err})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _merge(src: Path, dst: Path) -> None:
    """Move everything in ``src`` into ``dst``, merging folders and replacing files."""
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir() and not item.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge(item, target)
        else:
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.exists():
                shutil.rmtree(target)
            os.replace(item, target)
