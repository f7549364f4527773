"""Where prepared data lives and where archives may be found: the data root (``NBM_DATA``) and the local
mirrors (``NBM_MIRROR``).

``nbmodule.env`` re-exports :func:`data_root` (``nbmodule`` may import ``data_prep``, never the reverse).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["REPO_ROOT", "DRIVE_ROOT", "DataRootError", "in_colab", "default_base", "data_root", "mirror_roots",
           "split_mirror_list"]

#: The checkout this package was installed from in editable mode (None for a plain ``pip install``).
REPO_ROOT: Path | None = (
    Path(__file__).resolve().parent.parent
    if (Path(__file__).resolve().parent.parent / "pyproject.toml").is_file()
    else None
)

DRIVE_ROOT = Path("/content/drive/MyDrive/nbmodule")


class DataRootError(NotADirectoryError):
    """``NBM_DATA`` (or an explicit data root) names something that cannot hold datasets."""


def in_colab() -> bool:
    return "google.colab" in sys.modules


def default_base() -> Path:
    """Drive when mounted in Colab (survives a disconnect), else the checkout, else the working folder."""
    if in_colab() and DRIVE_ROOT.parent.is_dir():
        return DRIVE_ROOT
    return REPO_ROOT if REPO_ROOT is not None else Path.cwd()


def data_root(path: str | Path | None = None) -> Path:
    """Root of all datasets: ``path`` if given, else ``$NBM_DATA``, else ``data/`` at the repo root.

    Raises :class:`DataRootError` naming ``NBM_DATA`` (or the path) when it points at a file."""
    if path:
        root, what = Path(path).expanduser().resolve(), f"data root {path}"
    else:
        env = os.environ.get("NBM_DATA")
        if not env:
            return default_base() / "data"
        root, what = Path(env).expanduser().resolve(), f"NBM_DATA={env}"
    if root.exists() and not root.is_dir():
        raise DataRootError(f"{what} is a file, not a folder; point it at a folder for the datasets "
                            "(it is created when missing)" + ("" if path else " or unset NBM_DATA"))
    return root


def split_mirror_list(value: str) -> list[str]:
    """``NBM_MIRROR``'s entries: separated by ``os.pathsep``; URLs (``https://...``) stay whole even where
    the separator is ``:``."""
    if not value:
        return []
    parts = value.split(os.pathsep)
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        # "https" + "//host/x": a URL cut at its scheme by the ':' separator; "host" + "8080/x": its port
        if part in ("http", "https", "file") and i + 1 < len(parts) and parts[i + 1].startswith("//"):
            part = f"{part}:{parts[i + 1]}"
            i += 1
            while i + 1 < len(parts) and parts[i + 1][:1].isdigit() and "/" not in part.split("//", 1)[1]:
                part = f"{part}:{parts[i + 1]}"
                i += 1
        if part.strip():
            out.append(part.strip())
        i += 1
    return out


def mirror_roots(value: str | None = None) -> list[str]:
    """The local mirrors to try before the public ones: ``value`` or ``$NBM_MIRROR`` (folders or URL
    prefixes, several separated by ``os.pathsep``). Folders are returned expanded, URLs as given."""
    raw = os.environ.get("NBM_MIRROR", "") if value is None else value
    out = []
    for entry in split_mirror_list(raw):
        if entry.startswith(("http://", "https://", "file://")):
            out.append(entry.rstrip("/"))
        else:
            out.append(str(Path(entry).expanduser()))
    return out
