"""The datasets ``data_prep`` knows, and the one path that makes each ready: real or synthetic, fresh.

Each dataset module (``data_prep/<name>.py``) defines ``SPEC = DatasetSpec(...)``; this registry imports
them lazily so that ``python -m data_prep omniglot`` does not import the NYU-v2 code.

* :func:`obtain` is the front door for studies: the real dataset when it can be had (already prepared,
  the local mirrors of ``NBM_MIRROR``, the public mirrors), else synthetic data in the same format, with
  a :class:`Prepared` record saying which and why.
* :func:`prepare` makes one kind (real or synthetic) ready and returns its folder.
* :func:`check` decides readiness from the marker written at the end of every build (:mod:`data_prep.marker`);
  a stale or damaged folder is rebuilt; a folder data_prep did not make is never deleted.
"""
from __future__ import annotations

import importlib
import inspect
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from .extract import ArchiveError
from .fetch import ChecksumError, DownloadError, Fetched, RemoteFile, accept, fetch_file, read_listing
from .marker import MARKER, Status, check_folder, owned_by_data_prep, write_marker
from .roots import data_root

__all__ = ["DatasetSpec", "DATASETS", "Prepared", "DataPrepError", "DestinationError", "OptionsError",
           "get_spec", "default_dest", "prepare", "prepare_many", "obtain", "check", "folder_stats",
           "dataset_options"]

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
#: options every caller may pass whatever the dataset: used where the converter/generator takes them
GENERIC_OPTIONS = ("seed", "scale")
_STAGING_STAMP = ".nbm_staging"


class DataPrepError(RuntimeError):
    """A dataset cannot be made ready; the message says why and what to do."""


class DestinationError(DataPrepError):
    """The destination cannot be used (a file, or a non-empty folder data_prep did not make)."""


class OptionsError(DataPrepError):
    """An option the dataset's converter or generator does not take."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to obtain one dataset.

    ``convert(files, dest, **options)`` gets ``{RemoteFile.filename: local path}`` for every file in
    ``files`` (verified) and writes the layout the loaders read into ``dest``. ``synthesize(dest,
    **options)`` writes offline data in that same layout. The keyword parameters of both are the
    dataset's options (recorded in the marker: data made with other options are rebuilt).
    ``is_ready(dest)`` checks the layout right after a build. ``from_folder(folder, dest, **options)``
    (optional) converts official files already unpacked in a local folder.
    """

    name: str
    summary: str
    files: tuple[RemoteFile, ...]
    convert: Callable[..., Any]
    synthesize: Callable[..., Any]
    is_ready: Callable[[Path], bool]
    homepage: str = ""
    notes: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # documented defaults for convert/synthesize
    from_folder: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Prepared:
    """A dataset folder ready for the loaders. ``synthetic``: generated data; ``source``: where the real
    files came from (mirror, URL, local folder, cache) or ``"synthetic"``; ``note``: one line saying why
    (e.g. why it fell back to synthetic data). Usable as a path (``os.fspath``)."""

    path: Path
    synthetic: bool
    source: str
    note: str = ""

    def __fspath__(self) -> str:
        return str(self.path)


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return importlib.import_module(DATASETS[name]).SPEC


def default_dest(name: str, synthetic: bool, root: str | Path | None = None) -> Path:
    """``<data root>/<name>`` for real data, ``<data root>/synthetic/<name>`` for generated data."""
    base = data_root(root)
    return base / "synthetic" / name if synthetic else base / name


def dataset_options(fn: Callable[..., Any]) -> dict[str, Any]:
    """The options (keyword parameters with their defaults) of a converter or generator."""
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty:
            out[name] = p.default
    return out


def _effective(spec: DatasetSpec, synthetic: bool, options: dict[str, Any], seed: int, *,
               strict: bool = True) -> dict[str, Any]:
    fn = spec.synthesize if synthetic else spec.convert
    known = dataset_options(fn)
    unknown = sorted(k for k in options if k not in known and k not in GENERIC_OPTIONS)
    if unknown and strict:
        kind = "synthetic" if synthetic else "real"
        raise OptionsError(f"{spec.name} ({kind}) has no option {', '.join(map(repr, unknown))}; "
                           f"its options: {', '.join(known) or 'none'}")
    eff = {k: options.get(k, v) for k, v in known.items()}
    if "seed" in known:
        eff["seed"] = seed
    return eff


def _usable_dest(dest: Path) -> None:
    """Refuse a destination data_prep may not replace: a file, or a non-empty folder it did not make."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise DestinationError(f"--dest {dest} is a file or a link, not a folder; choose a folder")
    if dest.is_dir() and any(dest.iterdir()) and not owned_by_data_prep(dest):
        raise DestinationError(
            f"--dest {dest} is a non-empty folder that data_prep did not create (no {MARKER}); refusing to "
            "replace it. Choose a new or empty folder, or move its content away yourself (a copy made by a "
            "data_prep older than its marker files can simply be deleted).")


def _new_staging(dest: Path) -> Path:
    staging = dest.with_name(dest.name + ".partial")
    if staging.exists():
        if not (staging / _STAGING_STAMP).is_file() and (staging.is_symlink() or not staging.is_dir()
                                                         or any(staging.iterdir())):
            raise DestinationError(f"{staging} exists and was not made by data_prep; move it away first")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / _STAGING_STAMP).write_text("data_prep build in progress\n")
    return staging


def _install(staging: Path, dest: Path) -> None:
    _usable_dest(dest)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)


def _match_sources(spec: DatasetSpec, sources: Sequence[str]) -> dict[str, str]:
    """Assign each ``--source`` (URL or local file) to one of the dataset's files, by file name."""
    assigned: dict[str, str] = {}
    for src in sources:
        base = str(src).rstrip("/").rsplit("/", 1)[-1]
        match = [f for f in spec.files if f.filename == base]
        if not match and len(spec.files) == 1:
            match = list(spec.files)
        if not match:
            names = ", ".join(f.filename for f in spec.files)
            raise ValueError(f"--source {src!r} does not name a file of {spec.name!r} (expected one of: {names})")
        assigned[match[0].filename] = str(src)
    return assigned


def _gather(spec: DatasetSpec, dest: Path, sources: Sequence[str], verify_checksums: bool,
            mirrors: Sequence[str] | None) -> dict[str, Fetched]:
    cache = dest.parent / ".downloads" / spec.name
    chosen = _match_sources(spec, sources)
    out: dict[str, Fetched] = {}
    for remote in spec.files:
        src = chosen.get(remote.filename)
        if src is not None and not src.startswith(("http://", "https://", "gdrive://")):
            local = Path(src).expanduser()
            if not local.is_file():
                raise FileNotFoundError(f"--source {src}: no such file")
            note = accept(local, remote, read_listing(local.parent, remote.filename),
                          verify_checksums=verify_checksums)
            out[remote.filename] = Fetched(local, "--source", str(local), note)
        else:
            out[remote.filename] = fetch_file(remote, cache, dataset=spec.name, mirrors=mirrors,
                                              verify_checksums=verify_checksums, urls=[src] if src else ())
        f = out[remote.filename]
        print(f"[data_prep] {spec.name}: {remote.filename} from {f.location}, {f.checksum}")
    return out


def _checksum_note(fetched: dict[str, Fetched]) -> str:
    """Which checksum vouched for the files, one clause per kind of answer."""
    groups: dict[str, list[str]] = {}
    for name, f in fetched.items():
        groups.setdefault(f.checksum, []).append(name)
    return "; ".join(f"{', '.join(names) if len(names) <= 3 else f'{len(names)} files'}: {note}"
                     for note, names in groups.items())


def _summary(origins: Sequence[str]) -> str:
    uniq = list(dict.fromkeys(origins))
    return "; ".join(uniq) if uniq else "unknown"


def _build(spec: DatasetSpec, dest: Path, *, synthetic: bool, eff: dict[str, Any], sources: Sequence[str],
           verify_checksums: bool, mirrors: Sequence[str] | None, source_dir: str | Path | None) -> Prepared:
    _usable_dest(dest)
    records: dict[str, str] = {}
    fetched: dict[str, Fetched] = {}
    if synthetic:
        origin, note = "synthetic", "synthetic data"
    elif source_dir is not None and spec.from_folder is not None:
        origin, note = f"local folder {source_dir}", f"converted from the official files in {source_dir}"
        records["*"] = origin
    else:
        if source_dir is not None:  # a folder holding the archives under their published names
            mirrors = [str(source_dir), *(mirrors if mirrors is not None else _env_mirrors())]
        fetched = _gather(spec, dest, sources, verify_checksums, mirrors)
        records = {k: f"{f.origin}: {f.location} ({f.checksum})" for k, f in fetched.items()}
        origin = _summary([f.origin for f in fetched.values()])
        note = _checksum_note(fetched)
    staging = _new_staging(dest)
    try:
        if synthetic:
            spec.synthesize(staging, **eff)
        elif source_dir is not None and spec.from_folder is not None:
            spec.from_folder(Path(source_dir), staging, **eff)
        else:
            spec.convert({k: f.path for k, f in fetched.items()}, staging, **eff)
        (staging / _STAGING_STAMP).unlink()
        if not spec.is_ready(staging):
            raise DataPrepError(f"{spec.name}: the build wrote an incomplete layout (see the converter's "
                                f"messages above); nothing was installed at {dest}")
        write_marker(staging, dataset=spec.name, synthetic=synthetic, options=eff, sources=records)
        _install(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Prepared(dest, synthetic, origin, note)


def _env_mirrors() -> list[str]:
    from .roots import mirror_roots

    return mirror_roots()


def _prepare(name: str, dest: str | Path | None = None, *, sources: Sequence[str] = (), synthetic: bool = False,
             seed: int = 0, force: bool = False, verify_checksums: bool = True, root: str | Path | None = None,
             mirrors: Sequence[str] | None = None, source_dir: str | Path | None = None, deep: bool = False,
             strict: bool = True, **options: Any) -> Prepared:
    spec = get_spec(name)
    dest = Path(dest) if dest else default_dest(name, synthetic, root)
    eff = _effective(spec, synthetic, options, seed, strict=strict)
    kind = "synthetic" if synthetic else "real"
    status: Status | None = None
    if not force:
        status = check_folder(dest, dataset=name, synthetic=synthetic, options=eff, deep=deep)
        if status.ready:
            recorded = status.marker.get("sources", {})
            origin = "synthetic" if synthetic else _summary([v.split(": ", 1)[0] for v in recorded.values()])
            print(f"[data_prep] {name}: {kind} data already prepared at {dest}")
            return Prepared(dest, synthetic, origin, f"already prepared at {dest}")
        if status.state in ("stale", "damaged"):
            print(f"[data_prep] {name}: {kind} data at {dest} is {status}; rebuilding")
    start = time.perf_counter()
    try:
        out = _build(spec, dest, synthetic=synthetic, eff=eff, sources=sources, verify_checksums=verify_checksums,
                     mirrors=mirrors, source_dir=source_dir)
    except (DownloadError, ChecksumError) as err:
        if status is not None and status.state == "damaged":
            raise DataPrepError(f"{name}: the prepared copy at {dest} is damaged ({status.reason}: "
                                f"{status.path}) and cannot be rebuilt: {err}") from None
        raise
    print(f"[data_prep] {name}: {kind} data ready at {dest} ({time.perf_counter() - start:.1f} s)")
    return out


def prepare(name: str, dest: str | Path | None = None, *, sources: Sequence[str] = (), synthetic: bool = False,
            seed: int = 0, force: bool = False, verify_checksums: bool = True, root: str | Path | None = None,
            mirrors: Sequence[str] | None = None, source_dir: str | Path | None = None, deep: bool = False,
            **options: Any) -> Path:
    """Make dataset ``name`` ready at ``dest`` (default ``<data root>/[synthetic/]<name>``); return ``dest``.

    Reused when its marker says it is complete and made with the same options (see :func:`check`);
    otherwise rebuilt. ``synthetic``: generate data offline. Otherwise every file of the dataset is taken
    from ``sources`` (local files or URLs), the download cache, the local mirrors (``mirrors``, default
    ``$NBM_MIRROR``), or the public mirrors, verified, and converted. ``source_dir``: a folder of official
    files (unpacked, or archives under their published names). ``options``: the dataset's options.
    """
    return _prepare(name, dest, sources=sources, synthetic=synthetic, seed=seed, force=force,
                    verify_checksums=verify_checksums, root=root, mirrors=mirrors, source_dir=source_dir,
                    deep=deep, **options).path


def check(name: str, dest: str | Path | None = None, *, synthetic: bool = False, seed: int = 0,
          root: str | Path | None = None, deep: bool = False, **options: Any) -> Status:
    """Is ``name`` ready at ``dest``? ``Status.state``: ``ready``, ``stale`` (other options or format
    version), ``damaged`` (``Status.path`` names the missing/truncated/changed file) or ``missing``."""
    spec = get_spec(name)
    dest = Path(dest) if dest else default_dest(name, synthetic, root)
    return check_folder(dest, dataset=name, synthetic=synthetic, options=_effective(spec, synthetic, options, seed),
                        deep=deep)


def _first_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def obtain(name: str, root: str | Path | None = None, *, prefer: Literal["real", "synthetic"] = "real",
           seed: int = 0, scale: str = "cpu", fallback: bool = True, mirrors: Sequence[str] | None = None,
           source_dir: str | Path | None = None, force: bool = False, **options: Any) -> Prepared:
    """The front door for studies: dataset ``name`` under ``root`` (default: the data root).

    ``prefer="real"``: the real dataset (already prepared, or from ``source_dir``, ``NBM_MIRROR``, the
    public mirrors); when it cannot be had and ``fallback``, synthetic data at ``scale`` instead, the
    reason in ``Prepared.note``. Offline this fails over within seconds. ``prefer="synthetic"``:
    synthetic data at ``scale`` (``seed``). ``options``: the dataset's options (those the synthetic
    generator does not take are dropped on fallback)."""
    if prefer not in ("real", "synthetic"):
        raise ValueError(f"prefer must be 'real' or 'synthetic', got {prefer!r}")
    if prefer == "synthetic":
        got = _prepare(name, synthetic=True, root=root, seed=seed, scale=scale, force=force, **options)
        return replace(got, note=f"synthetic data asked for (scale {scale}, seed {seed})")
    try:
        return _prepare(name, synthetic=False, root=root, seed=seed, scale=scale, mirrors=mirrors,
                        source_dir=source_dir, force=force, **options)
    except (DestinationError, OptionsError, KeyError):
        raise
    except (DownloadError, ChecksumError, ArchiveError, DataPrepError, OSError, ValueError) as err:
        if not fallback:
            raise
        reason = _first_line(err)
    print(f"[data_prep] {name}: real data unavailable ({reason}); falling back to synthetic data")
    got = _prepare(name, synthetic=True, root=root, seed=seed, scale=scale, strict=False, **options)
    return replace(got, note=f"real {name} unavailable ({reason}); using synthetic data (scale {scale})")


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
    rows = []
    for name in names:
        start = time.perf_counter()
        row: dict[str, Any] = {"dataset": name, "kind": "synthetic" if synthetic else "real", "source": "",
                               "error": "", "note": ""}
        got: Prepared | None = None
        try:
            got = obtain(name, root, prefer="synthetic" if synthetic else "real", seed=seed, scale=scale,
                         fallback=fallback_synthetic)
            if got.synthetic and not synthetic:
                row["kind"] = "synthetic (fallback)"
                row["error"] = got.note
        except Exception as err:  # report every dataset, not just the first failure
            row["error"] = _first_line(err)
        if got is not None:
            row["source"], row["note"] = got.source, got.note
        row["path"] = str(got.path) if got else ""
        row["files"], row["bytes"] = folder_stats(got.path) if got else (0, 0)
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    return rows
