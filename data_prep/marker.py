"""Freshness, decided once: the marker ``data_prep`` writes at the end of every conversion or generation.

``<dest>/.nbm_prepared.json`` records the dataset, real or synthetic, the options that shaped the data
(scale, seed, split sizes...), the data_prep format version, where the files came from, and every file
with its size (plus its sha256 when it is at most :data:`HASH_LIMIT` bytes). :func:`check` reads it back
and says ``ready``, ``stale`` (made with other options or by another format version), ``damaged`` (a file
is missing, has another size or another checksum; the path is named) or ``missing``.

Checks are quick by default: every file's size, and the checksums of the small index files (JSON, text,
CSV) and, when the data hold at most :data:`QUICK_HASH_TOTAL` bytes of hashed files, of everything.
``deep=True`` (``python -m data_prep check NAME --deep``) verifies every recorded checksum.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

__all__ = ["MARKER", "FORMAT_VERSION", "LEGACY_MARKERS", "HASH_LIMIT", "Status", "write_marker", "read_marker",
           "check_folder", "owned_by_data_prep", "normalise"]

MARKER = ".nbm_prepared.json"
#: bump when a converter or generator writes different files for the same inputs and options
FORMAT_VERSION = 2
HASH_LIMIT = 64 * 1024 * 1024
QUICK_HASH_TOTAL = 256 * 1024 * 1024
_INDEX_SUFFIXES = (".json", ".txt", ".csv")
#: files by which folders written by earlier data_prep versions are recognised as data_prep's own
LEGACY_MARKERS = (".synthetic.json", "SYNTHETIC.json")

State = Literal["ready", "stale", "damaged", "missing"]


@dataclass(frozen=True)
class Status:
    """What :func:`check_folder` found. ``path``: the offending file when ``damaged``."""

    state: State
    reason: str = ""
    path: Path | None = None
    marker: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.state}{where}: {self.reason}" if self.reason else self.state


def normalise(value: Any) -> Any:
    """Options as plain JSON values (tuples -> lists, paths -> str, sorted keys) so they compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_marker(dest: str | Path, *, dataset: str, synthetic: bool, options: Mapping[str, Any],
                 sources: Mapping[str, str] | None = None) -> dict:
    """Record every file under ``dest`` (written last: a folder holding it is complete)."""
    dest = Path(dest)
    files = {}
    for p in sorted(dest.rglob("*")):
        if p.is_symlink() or not p.is_file() or p.name == MARKER:
            continue
        rel = p.relative_to(dest).as_posix()
        size = p.stat().st_size
        files[rel] = {"size": size, **({"sha256": _sha256(p)} if size <= HASH_LIMIT else {})}
    marker = {"marker": "data_prep", "format_version": FORMAT_VERSION, "dataset": dataset,
              "synthetic": bool(synthetic), "options": normalise(dict(options)),
              "sources": normalise(dict(sources or {})),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "files": files}
    tmp = dest / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, dest / MARKER)
    return marker


def read_marker(dest: str | Path) -> dict | None:
    """The marker of ``dest`` or None when it has none; a corrupt one raises ``ValueError`` naming it."""
    path = Path(dest) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable data_prep marker ({err})") from None
    if not isinstance(data, dict) or data.get("marker") != "data_prep" or not isinstance(data.get("files"), dict):
        raise ValueError(f"{path}: not a data_prep marker")
    return data


def owned_by_data_prep(folder: str | Path) -> bool:
    """Whether data_prep made ``folder`` (its marker, or the marker files of earlier versions)."""
    folder = Path(folder)
    if (folder / MARKER).is_file() or any((folder / m).is_file() for m in LEGACY_MARKERS):
        return True
    meta = folder / "meta.json"  # the few-shot format written by every data_prep version
    if meta.is_file():
        try:
            from .formats import FEWSHOT_FORMAT

            return json.loads(meta.read_text()).get("format") == FEWSHOT_FORMAT
        except (OSError, ValueError, AttributeError):
            return False
    return False


def check_folder(dest: str | Path, *, dataset: str, synthetic: bool, options: Mapping[str, Any],
                 deep: bool = False) -> Status:
    """Is ``dest`` a complete, intact copy of ``dataset`` made with ``options``? (see module docstring)"""
    dest = Path(dest)
    if not dest.is_dir():
        return Status("missing", f"no folder {dest}")
    try:
        marker = read_marker(dest)
    except ValueError as err:
        return Status("damaged", str(err), dest / MARKER)
    if marker is None:
        if any(dest.iterdir()):
            why = "made by an earlier data_prep version" if owned_by_data_prep(dest) else "not made by data_prep"
            return Status("stale", f"{dest} has no {MARKER} ({why})")
        return Status("missing", f"{dest} is empty")
    if marker.get("format_version") != FORMAT_VERSION:
        return Status("stale", f"written by data_prep format {marker.get('format_version')}, "
                               f"this version writes {FORMAT_VERSION}", marker=marker)
    if marker.get("dataset") != dataset:
        return Status("stale", f"holds {marker.get('dataset')!r}, not {dataset!r}", marker=marker)
    if bool(marker.get("synthetic")) != bool(synthetic):
        kind = "synthetic" if marker.get("synthetic") else "real"
        return Status("stale", f"holds {kind} data", marker=marker)
    want, have = normalise(dict(options)), marker.get("options", {})
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff:
        what = ", ".join(f"{k}: {have.get(k)!r} -> {want.get(k)!r}" for k in diff)
        return Status("stale", f"made with other options ({what})", marker=marker)
    files = marker["files"]
    hashed_total = sum(f["size"] for f in files.values() if "sha256" in f)
    hash_all = deep or hashed_total <= QUICK_HASH_TOTAL
    for rel, info in files.items():
        path = dest / rel
        if not path.is_file():
            return Status("damaged", f"file {rel} is missing", path, marker)
        size = path.stat().st_size
        if size != info.get("size"):
            return Status("damaged", f"file {rel} has {size} bytes, {info.get('size')} were written", path, marker)
    for rel, info in files.items():
        if "sha256" in info and (hash_all or rel.endswith(_INDEX_SUFFIXES)):
            path = dest / rel
            if _sha256(path) != info["sha256"]:
                return Status("damaged", f"file {rel} changed since it was written (sha256 differs)", path, marker)
    return Status("ready", "", marker=marker)
