"""Safe archive extraction: zip and tar (gz/bz2/xz), nothing written outside the destination.

Every member is checked *before* anything is written: absolute paths, ``..`` components, symlinks or
hardlinks pointing outside the destination, and device files are refused, so a malicious or malformed
archive fails as a whole instead of leaving half its content behind.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

__all__ = ["ArchiveError", "UnsafeArchiveError", "extract", "is_archive"]


class ArchiveError(ValueError):
    """The archive is malformed or of an unknown kind."""


class UnsafeArchiveError(ArchiveError):
    """The archive would write outside its destination."""


def is_archive(path: str | Path) -> bool:
    p = str(path).lower()
    return p.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))


def _check_name(archive: Path, name: str, dest: Path) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in pure.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    target = (dest / pure).resolve()
    if target != dest and dest not in target.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside {dest}")
    return target


def _check_tar(archive: Path, tf: tarfile.TarFile, dest: Path) -> None:
    for m in tf.getmembers():
        target = _check_name(archive, m.name, dest)
        if m.issym() or m.islnk():
            link = PurePosixPath(m.linkname)
            base = target.parent if m.issym() else dest
            resolved = (base / link).resolve() if not link.is_absolute() else Path(link)
            if link.is_absolute() or (resolved != dest and dest not in resolved.parents):
                raise UnsafeArchiveError(
                    f"{archive}: link {m.name!r} -> {m.linkname!r} points outside {dest}; refusing to extract")
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
            with zipfile.ZipFile(archive) as zf:
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
                except (tarfile.TarError, EOFError, OSError) as err:
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
        if item.is_dir() and target.is_dir():
            _merge(item, target)
        else:
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(item, target)
