"""The datasets ``data_prep`` knows: where to fetch them, how to lay them out, how to fake them offline.

Each dataset module (``data_prep/<name>.py``) defines ``SPEC = DatasetSpec(...)``; this registry imports
them lazily so that ``python -m data_prep omniglot`` does not import the NYU-v2 code.
"""
from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .fetch import Mirror, RemoteFile, fetch, verify

__all__ = ["DatasetSpec", "DATASETS", "get_spec", "default_dest", "prepare", "prepare_many", "folder_stats"]

#: dataset name -> module defining its SPEC. Order is the order ``00_data`` builds them in.
DATASETS: dict[str, str] = {
    "omniglot": "data_prep.omniglot",
    "miniimagenet": "data_prep.miniimagenet",
    "nyuv2": "data_prep.nyuv2",
    "nyuv2_13": "data_prep.nyuv2_13",  # MTAN's 13-class .npy layout (spec in data_prep/nyuv2.py)
    "taskonomy": "data_prep.taskonomy",
    "voc": "data_prep.voc",
    "coco": "data_prep.coco",
    "imagenette": "data_prep.imagenette",
}


@dataclass(frozen=True)
class DatasetSpec:
    """How to obtain one dataset.

    ``convert(files, dest, **options)`` gets ``{RemoteFile.filename: local path}`` for every file in
    ``files`` (already downloaded and checksum-verified) and writes the layout the loaders read into
    ``dest``. ``synthesize(dest, seed=..., **options)`` writes offline data in that same layout.
    ``is_ready(dest)`` says whether ``dest`` already holds a usable copy.
    """

    name: str
    summary: str
    files: tuple[RemoteFile, ...]
    convert: Callable[..., None]
    synthesize: Callable[..., Any]
    is_ready: Callable[[Path], bool]
    homepage: str = ""
    notes: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # documented defaults for convert/synthesize


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return importlib.import_module(DATASETS[name]).SPEC


def default_dest(name: str, synthetic: bool, root: str | Path | None = None) -> Path:
    """``<data root>/<name>`` for real data, ``<data root>/synthetic/<name>`` for generated data."""
    from nbmodule.env import data_root

    base = data_root(root)
    return base / "synthetic" / name if synthetic else base / name


def _match_sources(spec: DatasetSpec, sources: Sequence[str]) -> dict[str, str]:
    """Assign each ``--source`` (URL or local file) to one of the dataset's files, by file name."""
    assigned: dict[str, str] = {}
    for src in sources:
        base = src.rstrip("/").rsplit("/", 1)[-1]
        match = [f for f in spec.files if f.filename == base]
        if not match and len(spec.files) == 1:
            match = list(spec.files)
        if not match:
            names = ", ".join(f.filename for f in spec.files)
            raise ValueError(f"--source {src!r} does not name a file of {spec.name!r} (expected one of: {names})")
        assigned[match[0].filename] = src
    return assigned


def prepare(name: str, dest: str | Path | None = None, *, sources: Sequence[str] = (), synthetic: bool = False,
            seed: int = 0, force: bool = False, verify_checksums: bool = True, root: str | Path | None = None,
            **options: Any) -> Path:
    """Make dataset ``name`` ready at ``dest`` and return ``dest``.

    ``synthetic``: write generated data offline. Otherwise every file of the dataset is taken from
    ``sources`` (local files or URLs), a download cache, or its mirrors in order, verified, converted.
    """
    spec = get_spec(name)
    dest = Path(dest) if dest else default_dest(name, synthetic, root)
    if synthetic:
        # Synthetic data is reused only when made with the same seed and options (a smoke-scale copy must
        # not silently stand in for the cpu-scale one).
        marker = dest / ".synthetic.json"
        wanted = json.dumps({"seed": seed, "options": options}, sort_keys=True, default=str)
        if not force and dest.is_dir() and spec.is_ready(dest) and marker.is_file() and marker.read_text() == wanted:
            print(f"[data_prep] {name}: synthetic data already at {dest}")
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        spec.synthesize(dest, seed=seed, **options)
        marker.write_text(wanted)
        print(f"[data_prep] {name}: synthetic data written to {dest}")
        return dest
    if not force and dest.is_dir() and spec.is_ready(dest):
        print(f"[data_prep] {name}: already prepared at {dest}")
        return dest
    cache = dest.parent / ".downloads" / name
    cache.mkdir(parents=True, exist_ok=True)
    chosen = _match_sources(spec, sources)
    files: dict[str, Path] = {}
    for remote in spec.files:
        src = chosen.get(remote.filename)
        if src is not None and not src.startswith(("http://", "https://", "gdrive://")):
            local = Path(src).expanduser()
            if not local.is_file():
                raise FileNotFoundError(f"--source {src}: no such file")
            if verify_checksums:
                verify(local, remote)
            files[remote.filename] = local
            continue
        if src is not None:
            remote = RemoteFile(remote.filename, (Mirror(src, "--source"),) + remote.mirrors,
                                remote.sha256, remote.md5, remote.size)
        if not verify_checksums:
            remote = RemoteFile(remote.filename, remote.mirrors)
        files[remote.filename] = fetch(remote, cache, dataset=name)
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        spec.convert(files, staging, **options)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    print(f"[data_prep] {name}: ready at {dest}")
    return dest


def folder_stats(path: Path) -> tuple[int, int]:
    """(number of files, total bytes) under ``path``."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def prepare_many(names: Sequence[str], *, synthetic: bool, root: str | Path | None = None, scale: str = "cpu",
                 seed: int = 0, fallback_synthetic: bool = True) -> list[dict[str, Any]]:
    """Prepare several datasets, one row per dataset (what notebook 00 shows as a table).

    A real dataset that cannot be obtained (offline, dead mirror) is reported with its error and, when
    ``fallback_synthetic``, replaced by synthetic data so the later notebooks still run; the row says so.
    """
    import time

    rows = []
    for name in names:
        start = time.perf_counter()
        row: dict[str, Any] = {"dataset": name, "kind": "synthetic" if synthetic else "real", "error": ""}
        try:
            path = (prepare(name, synthetic=True, root=root, seed=seed, scale=scale) if synthetic
                    else prepare(name, root=root, seed=seed))
        except Exception as err:  # report every dataset, not just the first failure
            row["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
            if synthetic or not fallback_synthetic:
                path = None
            else:
                path = prepare(name, synthetic=True, root=root, seed=seed, scale=scale)
                row["kind"] = "synthetic (fallback)"
        row["path"] = str(path) if path else ""
        row["files"], row["bytes"] = folder_stats(path) if path else (0, 0)
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    return rows
