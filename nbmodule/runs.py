"""The run folder: one directory per notebook (or command-line run) holding everything it produced.

Layout of ``<out>/<name>/`` (the results notebook and the explorer read only these files)::

    config.json        the study, its validated config, device and versions (``save_config``)
    metrics.json       flat ``{key: number or null}``, merged on every ``write_metrics`` call
    curves/<name>.csv  long-format learning curves: one row per logged point (``log_curve``)
    *.png              figures (``save_figure``)
    checkpoints/*.pt   resume state (``checkpointer``): the newest and the previous good one
    .nbmodule-run.json the marker: the study and every file the project wrote here (``--restart`` deletes
                       those and nothing else)
    .nbmodule.lock     while a run holds the folder (:meth:`RunDir.lock`): its pid, host and start time

Guarantees (each has a test in ``tests/test_runs.py`` or ``tests/test_reliability.py``):

- every file is written atomically (temp file + rename, with the user's umask), because Colab disconnects
  and papermill timeouts kill kernels at arbitrary points and resume must only ever see complete files;
- a checkpoint is verified after writing, and the previous good one is kept until the new one is; a
  damaged newest checkpoint falls back to the previous one with a warning naming the bad file;
- nothing in a run folder can execute code when read: checkpoints are loaded with ``weights_only=True``
  (they hold tensors, state_dicts and plain Python values only; :func:`rng_state` stores RNG states so);
- a checkpoint made with other settings is never resumed silently: :class:`Checkpointer` compares the
  stored config with the current one and raises :class:`ResumeError` naming the fields that differ;
- every ``.pt`` file is verified on load against the CRC-32 of each member of its archive (damaged tensor
  bytes are refused, not loaded), and a damaged checkpoint falls back to the previous good one;
- one run at a time per folder (:meth:`RunDir.lock`); a lock left by a dead process is taken over;
- ``--restart`` (:meth:`RunDir.clear`) deletes only the files the marker lists, and refuses, deleting
  nothing, a folder that holds anything else;
- a non-finite loss stops training (:func:`check_finite`) naming the step and the last good checkpoint;
  a null metric has its reason beside it (``metric_notes.json``).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import platform
import random
import re
import socket
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from .config import ConfigError

if TYPE_CHECKING:  # torch is imported lazily: `python -m nbmodule list` should not pay for it
    import torch

__all__ = ["RunDir", "RunContext", "Checkpointer", "ResumeError", "CheckpointError", "RunLockedError",
           "DivergenceError", "MemoryEstimateError", "versions", "read_metrics", "read_curve", "atomic_write_bytes",
           "atomic_write_text", "is_timing_key", "compare_configs", "rng_state", "set_rng_state", "check_finite",
           "check_memory", "current_step", "verify_archive", "MARKER", "LOCK"]

#: The marker a run writes in its folder: the study and every file it wrote (what ``--restart`` may delete).
MARKER = ".nbmodule-run.json"
#: The lock file of a run folder while a run holds it (pid, host, start time).
LOCK = ".nbmodule.lock"
NOTES = "metric_notes.json"
# files the project leaves behind when killed mid-write: atomic_write_bytes' temp files, check_writable's probe
_OWN_LEFTOVERS = re.compile(r"^(\..+\.(tmp|new)|\.write-test-.*)$")

_TIMING = re.compile(r"(_s|_ms|_per_s|_s_per_iter|_seconds)$")

# -- what this process is doing: folders it holds (their markers record what it writes) and its step ---------
_HELD: dict[Path, "RunDir"] = {}
_PROGRESS: dict[str, Any] = {}


def _note_written(*paths: str | Path) -> None:
    """Record ``paths`` in the marker of every run folder this process holds that contains them."""
    if not _HELD:
        return
    for path in paths:
        path = Path(path)
        full = path.parent.resolve() / path.name
        for root, run in list(_HELD.items()):
            try:
                rel = full.relative_to(root)
            except ValueError:
                continue
            run._record(rel.as_posix())


def current_step() -> dict[str, Any]:
    """The training step this process is in (``{"name", "step", "saved", "run"}``: the checkpointed loop, its
    step, the step of its last checkpoint and its run folder), empty before any loop ran; the command line's
    Ctrl-C message names it."""
    return dict(_PROGRESS)


def _newest_checkpoint(root: Path) -> tuple[Path, int] | None:
    """The newest readable checkpoint under ``root`` (any ``checkpoints/`` folder) and its step."""
    import torch

    found = sorted((p for p in root.rglob("checkpoints/*.pt") if p.is_file()), key=lambda p: p.stat().st_mtime,
                   reverse=True)
    for path in found:
        try:
            verify_archive(path)
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return path, int(blob.get("step", 0)) if isinstance(blob, dict) else 0
        except Exception:  # a damaged one is not a good one: look further back
            continue
    return None


def check_finite(value: Any, *, step: int, what: str, run_dir: "RunDir | str | Path | None") -> None:
    """Stop training when ``value`` (a loss: a number or a tensor) is NaN or infinite.

    :class:`DivergenceError`, one line naming ``what``, the step and the last good checkpoint in ``run_dir``
    (which a rerun with a lower learning rate cannot resume: other settings), so a diverged run never goes on
    to write null metrics."""
    if hasattr(value, "detach"):
        import torch

        finite = bool(torch.isfinite(value.detach()).all())
        shown = value.detach().float().flatten()[0].item() if value.numel() == 1 else "non-finite entries"
    else:
        finite = math.isfinite(float(value))
        shown = float(value)
    if finite:
        return
    where = ""
    if run_dir is not None:
        root = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
        newest = _newest_checkpoint(root) if root.is_dir() else None
        where = (f"; the last good checkpoint is {newest[0]} (step {newest[1]})" if newest
                 else f"; no checkpoint was written in {root} before it")
    raise DivergenceError(f"training diverged: {what} is {shown} at step {step}{where}. Lower the learning rate "
                          "(or check the data) and start again in a new run folder (--out) or with --restart")


def check_memory(needed: float, *, device: Any, what: str, hint: str = "", fraction: float = 0.9) -> None:
    """Refuse, before training, what would not fit: :class:`MemoryEstimateError` when ``needed`` bytes exceed
    ``fraction`` of the memory available on ``device`` (free GPU memory, or the OS's MemAvailable). A process
    killed by the kernel says nothing, and on a shared machine the kernel may kill another one instead."""
    from .meta.strategy import available_memory

    available = available_memory(device)
    if needed > fraction * available:
        raise MemoryEstimateError(f"{what} needs about {_gib(needed)} (estimated before training) but "
                                  f"{_gib(available)} is available on {device}{'; ' + hint if hint else ''}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**28 else f"{n / 2**20:.3g} MiB"


def is_timing_key(key: str) -> bool:
    """Metric keys that measure time (``_s``, ``_ms``, ``_per_s``, ``_s_per_iter``, ``_seconds``): they
    differ between two runs of the same config, every other key must not."""
    return bool(_TIMING.search(key))


def versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour changes results."""
    out = {"python": platform.python_version()}
    for mod in ("torch", "torchvision", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # numpy/torch are dependencies; this only guards odd environments
            out[mod] = "missing"
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes | Callable[[Any], None]) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file object) to ``path`` atomically,
    with the permissions a plain ``open`` would give (``mkstemp`` alone makes files 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            data(fh) if callable(data) else fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _note_written(path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _number(key: str, value: Any) -> float | int | None:
    """metrics.json holds numbers only; NaN/inf become null so the file stays valid JSON."""
    if value is None:
        return None
    if hasattr(value, "item"):  # tensors and numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, (int, float)):
        raise TypeError(f"metric {key!r} must be a number or None, got {type(value).__name__}: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _read_json(path: Path, kind: type | None = None) -> Any:
    """A JSON file's content; :class:`ConfigError` naming the file when it is a folder, not JSON, or (with
    ``kind``) not of that JSON type."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a JSON file; move it away, or start a new run folder")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is damaged (not valid JSON: {err}); delete it, or start a new run folder") from None
    if kind is not None and not isinstance(value, kind):
        want = {dict: "an object {...}", list: "an array [...]"}.get(kind, kind.__name__)
        raise ConfigError(f"{path} is damaged: it holds a JSON {type(value).__name__}, not {want}; delete it, "
                          "or start a new run folder")
    return value


def read_metrics(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a run folder (or the file itself); empty when absent."""
    path = Path(path)
    if path.is_dir() and not path.name.endswith(".json"):
        path = path / "metrics.json"
    return _read_json(path, dict) if path.exists() else {}


def read_curve(run: str | Path, name: str) -> list[dict[str, Any]]:
    """Rows of ``curves/<name>.csv`` with numeric strings converted to floats."""
    path = Path(run) / "curves" / f"{name}.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            conv = {}
            for k, v in row.items():
                try:
                    conv[k] = float(v)
                except (TypeError, ValueError):
                    conv[k] = v
            rows.append(conv)
    return rows


def compare_configs(stored: Mapping[str, Any], current: Mapping[str, Any], *, resumable: Iterable[str] = (),
                    neutral: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Fields that differ between two config snapshots: ``(refused, grown)``.

    A ``resumable`` field may grow: a number (an iteration budget) may increase, a list (of seeds, runs) may
    gain entries while keeping the old ones; ``neutral`` fields (logging periods) may change freely; any other
    difference is refused."""
    resumable, neutral = set(resumable), set(neutral)
    refused, grown = [], []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if a == b or key in neutral:
            continue
        if key in resumable and _grew(a, b):
            grown.append(key)
        else:
            refused.append(key)
    return refused, grown


def _grew(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return b > a
    if isinstance(a, list) and isinstance(b, list):
        return len(b) > len(a) and all(x in b for x in a)
    return False


def _config_rules(config: Any) -> tuple[dict[str, Any], frozenset, frozenset]:
    if config is None:
        return {}, frozenset(), frozenset()
    if hasattr(config, "to_dict"):
        return (config.to_dict(), frozenset(getattr(config, "RESUMABLE", ())),
                frozenset(getattr(config, "NEUTRAL", ())))
    return dict(config), frozenset(), frozenset()


class ResumeError(ConfigError):
    """A run folder holds results of other settings: resuming would mix them up."""


class CheckpointError(RuntimeError):
    """No checkpoint of a run could be read."""


class RunLockedError(ConfigError):
    """Another run holds the run folder."""


class DivergenceError(RuntimeError):
    """Training produced a non-finite value (:func:`check_finite`)."""


class MemoryEstimateError(RuntimeError):
    """A run would need more memory than is available (:func:`check_memory`)."""


def describe_mismatch(where: str | Path, stored: Mapping[str, Any], current: Mapping[str, Any],
                      fields: Iterable[str]) -> str:
    diffs = ", ".join(f"{f} (stored {stored.get(f)!r}, now {current.get(f)!r})" for f in fields)
    return (f"{where} holds results made with other settings: {diffs}. Resuming would mix them up. Either "
            "write to a new run folder (--out DIR, or the notebook's `out` parameter), or discard the old "
            "results with --restart (the notebook's `restart = True`), which deletes only the files runs wrote "
            f"there (listed in {MARKER}) and nothing if the folder holds anything else.")


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as tensors and plain values (safe to load)."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def verify_archive(path: str | Path) -> None:
    """Check every member of a ``.pt`` archive against the CRC-32 stored with it (``torch.load`` does not):
    :class:`CheckpointError` naming the file and the damaged member."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        raise CheckpointError(f"{path} is damaged (not a whole torch archive: {err})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: the bytes of {bad} do not match their CRC-32")


def _safe_load(path: Path, map_location: Any = "cpu") -> Any:
    import torch

    verify_archive(path)
    return torch.load(path, map_location=map_location, weights_only=True)


class Checkpointer:
    """Resume state of one training loop in a run folder: ``checkpoints/<name>.pt`` (newest) and
    ``checkpoints/<name>.prev.pt`` (the previous good one).

    ``config`` (a config object or a dict) is stored with every checkpoint; :meth:`load` refuses, with a
    :class:`ResumeError`, a checkpoint whose config differs in a field that is neither resumable nor neutral.
    ``step`` and ``done`` describe the loaded checkpoint (0 / False when starting afresh).

    Typical use::

        ck = run.checkpointer("train", config=cfg)
        state = ck.load()
        if state: model.load_state_dict(state["model"]); ...
        for step in ck.steps(cfg.iterations, every=cfg.checkpoint_every, state=lambda: {"model": ...}):
            ...   # one iteration; a checkpoint is written after every `every`-th step and after the last
    """

    def __init__(self, run: "RunDir", name: str, *, config: Any = None, resumable: Iterable[str] = (),
                 neutral: Iterable[str] = ()):
        self.run, self.name = run, name
        self.config, res, neu = _config_rules(config)
        self.resumable = frozenset(resumable) | res
        self.neutral = frozenset(neutral) | neu
        self.step, self.done = 0, False

    @property
    def path(self) -> Path:
        return self.run.checkpoint_path(self.name)

    @property
    def previous(self) -> Path:
        return self.run.checkpoint_path(f"{self.name}.prev")

    def exists(self) -> bool:
        return self.path.is_file() or self.previous.is_file()

    def load(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The stored state (what was passed to :meth:`save`), or None when there is none."""
        bad: list[str] = []
        for path in (self.path, self.previous):
            if not path.is_file():
                continue
            try:
                blob = _safe_load(path, map_location)
                if not isinstance(blob, dict) or "state" not in blob:
                    raise CheckpointError(f"{path} is not a checkpoint of this project")
            except Exception as err:  # truncated, empty, foreign or unsafe file: try the previous one
                bad.append(f"{path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
                continue
            if bad:
                warnings.warn(f"checkpoint {bad[0]} is unreadable; resuming from the previous good one, {path}",
                              stacklevel=2)
            stored = blob.get("config") or {}
            if self.config:  # no config given: a caller inspecting the checkpoint
                refused, _ = compare_configs(stored, self.config, resumable=self.resumable, neutral=self.neutral)
                if refused:
                    raise ResumeError(describe_mismatch(self.run.path, stored, self.config, refused))
            self.step, self.done = int(blob.get("step", 0)), bool(blob.get("done", False))
            return blob["state"]
        if bad:
            raise CheckpointError(f"no readable checkpoint for {self.name!r}: {'; '.join(bad)}. Delete them to "
                                  "start over (--restart), or restore a copy")
        return None

    def save(self, state: Mapping[str, Any], *, step: int, done: bool = False) -> Path:
        """Write the checkpoint atomically, verify it loads safely, then keep the old one as ``.prev``
        (dropped once a finished loop's checkpoint is written: a mid-loop optimiser state is not needed then)."""
        import torch

        blob = {"state": dict(state), "step": int(step), "done": bool(done), "config": self.config}
        buf = io.BytesIO()
        torch.save(blob, buf)
        data = buf.getvalue()
        try:
            torch.load(io.BytesIO(data), weights_only=True)
        except Exception as err:
            raise CheckpointError(f"checkpoint {self.name!r} holds a value that cannot be loaded safely "
                                  f"(weights_only=True): {err}. Store tensors, state_dicts and plain Python "
                                  "values only (see nbmodule.runs.rng_state)") from None
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic_write_bytes(path.with_name(f".{path.name}.new"), data)
        if path.is_file():
            os.replace(path, self.previous)
        os.replace(tmp, path)
        if done and self.previous.is_file():
            self.previous.unlink()
        self.step, self.done = int(step), bool(done)
        _note_written(path, self.previous)
        if _PROGRESS.get("name") == self.name:
            _PROGRESS["saved"] = self.step
        return path

    def steps(self, total: int, *, every: int, state: Callable[[], Mapping[str, Any]]) -> Iterator[int]:
        """Steps ``self.step + 1 .. total``; after every ``every``-th step and the last one, ``state()`` is
        saved (the last with ``done=True``). Nothing is saved for a step whose body raised or broke out."""
        for step in range(self.step + 1, total + 1):
            _PROGRESS.update(name=self.name, step=step, saved=self.step, run=self.run.path)
            yield step
            if step % every == 0 or step == total:
                self.save(state(), step=step, done=step == total)

    def clear(self) -> None:
        for path in (self.path, self.previous):
            if path.is_file():
                path.unlink()
        self.step, self.done = 0, False


@dataclass
class RunContext:
    """What a study's ``run(cfg, run_dir, ctx)`` gets besides its config: where and how to run, never what.

    ``device``: torch device; ``data``: the data root; ``progress``: show progress bars; ``threads``: torch CPU
    threads (0: torch's default); ``restart``: discard an existing run folder's results instead of resuming.
    """

    device: Any = None
    data: Path = field(default_factory=Path)
    progress: bool = True
    threads: int = 0
    restart: bool = False

    @classmethod
    def create(cls, *, device: str = "auto", data: str | Path = "", progress: bool = True, threads: int = 0,
               restart: bool = False) -> "RunContext":
        """Resolve ``device="auto"`` and the data root (``$NBM_DATA`` or ``data/``)."""
        from .env import data_root, pick_device

        return cls(device=pick_device(device), data=data_root(data or None), progress=progress,
                   threads=int(threads), restart=restart)


class RunDir:
    """A run folder. ``RunDir(out, "04_maml_sampling")`` is ``<out>/04_maml_sampling/``."""

    def __init__(self, root: str | Path, name: str | None = None, *, create: bool = True):
        self.path = Path(root) / name if name else Path(root)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        self._files: set[str] | None = None  # the marker's list, while this process holds the folder
        self._marker_before: dict[str, Any] | None = None
        self._study = ""

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def sub(self, name: str) -> "RunDir":
        """A nested run folder (one per regime, seed or mode)."""
        return RunDir(self.path, name)

    # -- config and metrics -------------------------------------------------------------------
    def save_config(self, config: Any, **extra: Any) -> Path:
        """Write ``config.json``: the config's fields, ``extra`` (study, device...) and library versions."""
        data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        payload = {"config": data, **extra, "versions": versions()}
        return self.write_json("config.json", payload)

    def write_json(self, name: str, obj: Any) -> Path:
        text = json.dumps(obj, indent=2, sort_keys=True, default=str)
        return atomic_write_text(self.path / name, text)

    def read_json(self, name: str, default: Any = None, kind: type | None = None) -> Any:
        """A JSON file of the folder (``default`` when absent); ``kind``: the JSON type it must hold."""
        path = self.path / name
        return _read_json(path, kind) if path.exists() else default

    def write_metrics(self, metrics: Mapping[str, Any], reasons: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Merge flat ``{key: number}`` into ``metrics.json`` and return the whole file's content.

        A metric is never null without a reason: ``metric_notes.json`` holds ``{key: why}`` for every null
        one, from ``reasons``, else said here (a non-finite value, or a ``_ci95`` of a single value)."""
        current = read_metrics(self.path)
        notes = self.read_json(NOTES, {}, dict)
        for key, value in metrics.items():
            if not isinstance(key, str):
                raise TypeError(f"metric keys must be strings, got {key!r}")
            number = _number(key, value)
            current[key] = number
            if number is not None:
                notes.pop(key, None)
            elif reasons and key in reasons:
                notes[key] = reasons[key]
            else:
                notes[key] = _null_reason(key, value)
        if notes:
            self.write_json(NOTES, notes)
        elif (self.path / NOTES).is_file():
            (self.path / NOTES).unlink()
        self.write_json("metrics.json", current)
        return current

    @property
    def metrics(self) -> dict[str, Any]:
        return read_metrics(self.path)

    # -- curves ---------------------------------------------------------------------------------
    def log_curve(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Append rows to ``curves/<name>.csv`` (long format; columns fixed by the first row written)."""
        rows = list(rows)
        path = self.path / "curves" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not rows:
            return path
        exists = path.is_file() and path.stat().st_size > 0
        if exists:
            with path.open(newline="") as fh:
                fields = next(csv.reader(fh))
        else:
            fields = list(rows[0].keys())
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="raise")
            if not exists:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(v) for k, v in row.items()})
        _note_written(path)
        return path

    def write_curve(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Replace ``curves/<name>.csv`` with ``rows`` atomically (the old file stays until the new one is whole)."""
        rows = list(rows)
        buf = io.StringIO(newline="")
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(v) for k, v in row.items()})
        return atomic_write_text(self.path / "curves" / f"{name}.csv", buf.getvalue())

    def curve(self, name: str) -> list[dict[str, Any]]:
        return read_curve(self.path, name)

    # -- figures --------------------------------------------------------------------------------
    def save_figure(self, fig: Any, name: str, dpi: int = 120) -> Path:
        """Save a matplotlib figure as ``<name>.png`` in the run folder (atomically)."""
        path = self.path / (name if name.endswith(".png") else f"{name}.png")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        return atomic_write_bytes(path, buf.getvalue())

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_path(self, name: str = "last") -> Path:
        return self.path / "checkpoints" / f"{name}.pt"

    def checkpointer(self, name: str, *, config: Any = None, resumable: Iterable[str] = (),
                     neutral: Iterable[str] = ()) -> Checkpointer:
        """The resume state of one loop (see :class:`Checkpointer`)."""
        return Checkpointer(self, name, config=config, resumable=resumable, neutral=neutral)

    def save_checkpoint(self, state: Mapping[str, Any], name: str = "last") -> Path:
        """A one-off checkpoint without config checks (e.g. a final model): ``load_checkpoint`` reads it."""
        return Checkpointer(self, name).save(state, step=0, done=True)

    def has_checkpoint(self, name: str = "last") -> bool:
        return Checkpointer(self, name).exists()

    def load_checkpoint(self, name: str = "last", map_location: Any = "cpu") -> dict[str, Any] | None:
        """The state saved by :meth:`save_checkpoint`, or None; loaded with ``weights_only=True``."""
        return Checkpointer(self, name).load(map_location)

    def load_tensors(self, name: str, map_location: Any = "cpu") -> Any:
        """A ``.pt`` file of this run folder (e.g. ``examples.pt``), loaded with ``weights_only=True``."""
        return _safe_load(self.path / name, map_location)

    # -- the lock and the marker ------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, study: str = "") -> Iterator["RunDir"]:
        """Hold the folder for one run: an exclusive lock (``fcntl.flock`` on ``.nbmodule.lock``, which holds
        the pid, host and start time; released by the kernel even when the process is killed), and the marker
        ``.nbmodule-run.json`` recording every file written into the folder meanwhile.

        A second run on the folder raises :class:`RunLockedError` naming the holder; a lock file left by a
        dead process is taken over with a warning naming it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = _acquire(self.path / LOCK, study)
        root = self.path.resolve()
        before = _entries(self.path)
        marker = self._marker_before = self._read_marker()
        self._files = set(marker.get("files", [])) if marker else set()
        self._study = study or (marker or {}).get("study", "")
        _HELD[root] = self
        try:
            yield self
        finally:
            _HELD.pop(root, None)
            try:  # what appeared while the folder was held is this run's (even if written by other means)
                now = _entries(self.path)
                new = {f for f in now - before if f not in (MARKER, LOCK) and not _OWN_LEFTOVERS.match(Path(f).name)}
                self._files = (self._files | new) & now
                if self._files or (self.path / MARKER).exists():
                    self._write_marker()
            except OSError:
                pass
            finally:
                self._files = None
                _release(self.path / LOCK, fd)

    def _read_marker(self) -> dict[str, Any] | None:
        path = self.path / MARKER
        if not path.exists():
            return None
        marker = _read_json(path, dict)
        if not isinstance(marker.get("files", []), list):
            raise ConfigError(f"{path} is damaged: its 'files' is not a list")
        return marker

    def _write_marker(self) -> None:
        payload = {"written_by": "nbmodule", "study": self._study, "files": sorted(self._files or ())}
        data = json.dumps(payload, indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{MARKER}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, self.path / MARKER)

    def record(self, *paths: str | Path) -> None:
        """Add files written into this folder by other means (a copied checkpoint, a log) to its marker, so
        ``--restart`` may delete them; paths absolute or relative to the folder."""
        if self._files is not None:
            for path in paths:
                self._record(_relative(self.path, path))
            return
        marker = self._read_marker() or {"study": ""}
        self._files, self._study = set(marker.get("files", [])), marker.get("study", "")
        try:
            before = set(self._files)
            self._files |= {_relative(self.path, p) for p in paths} - {MARKER, LOCK}
            if self._files != before:
                self._write_marker()
        finally:
            self._files = None

    def _record(self, rel: str) -> None:
        if (self._files is not None and rel not in self._files and rel not in (MARKER, LOCK)
                and not _OWN_LEFTOVERS.match(Path(rel).name)):
            self._files.add(rel)
            self._write_marker()

    def clear(self) -> None:
        """``--restart``: delete the files runs wrote in this folder, as its marker lists them, and nothing
        else. A folder holding any other file (or no marker, unless it is empty) is refused with a
        :class:`ConfigError` listing what it holds, before anything is deleted."""
        if not self.path.is_dir():
            return
        marker = self._marker_before if self._files is not None else self._read_marker()
        recorded = set((marker or {}).get("files", [])) | (self._files or set())
        files = [rel for rel in _entries(self.path) if rel not in (MARKER, LOCK)]
        foreign = [rel for rel in files if rel not in recorded and not _OWN_LEFTOVERS.match(Path(rel).name)]
        if foreign:
            shown = ", ".join(sorted(foreign)[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
            why = (f"holds files no run of this project recorded writing ({shown})" if marker
                   else f"is not a run folder of this project (no {MARKER} marker) and holds {shown}")
            raise ConfigError(f"{self.path} {why}; --restart deletes only what runs wrote, so nothing was "
                              "deleted. Choose another --out (or --name), or move those files away yourself")
        emptied = set()
        for rel in files:
            (self.path / rel).unlink()
            emptied.update(Path(rel).parents)
        for rel in sorted(emptied - {Path(".")}, key=lambda p: -len(p.parts)):  # folders that held only those
            if not any((self.path / rel).iterdir()):
                (self.path / rel).rmdir()
        if self._files is not None:
            self._files = set()
        if (self.path / MARKER).exists():
            (self.path / MARKER).unlink()


def _relative(folder: Path, path: str | Path) -> str:
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    return (path.parent.resolve() / path.name).relative_to(folder.resolve()).as_posix()


def _entries(folder: Path) -> set[str]:
    """Every file and link under ``folder`` (links not followed), as relative POSIX paths."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        out.update((rel / n).as_posix() for n in filenames)
        out.update((rel / n).as_posix() for n in dirnames if os.path.islink(os.path.join(dirpath, n)))
    return out


def _holder(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def _describe_holder(info: Mapping[str, Any]) -> str:
    if not info:
        return "a process that left no details"
    study = f", study {info['study']}" if info.get("study") else ""
    return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}{study}"


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _acquire(path: Path, study: str) -> int:
    """Open and lock the lock file; write our details in it. Returns its descriptor."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the pid in the file decides
        fcntl = None

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no fcntl")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except BlockingIOError:
            info = _holder(_read_fd(fd))
            os.close(fd)
            raise RunLockedError(f"{path.parent} is in use by another run ({_describe_holder(info)}); wait for it "
                                 "to finish, or choose another --out (or --name)") from None
        except OSError as err:  # a file system without flock (some network mounts): the pid in the file decides
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            flocked = False
        try:  # the file we locked may have been removed (and recreated) by its releasing holder meanwhile
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = _holder(_read_fd(fd))
    here = socket.gethostname()
    if info and info.get("pid") != os.getpid():
        alive = info.get("host") != here or _pid_alive(info.get("pid"))
        if not flocked and alive:
            os.close(fd)
            raise RunLockedError(f"{path.parent} is in use by another run ({_describe_holder(info)}); wait for it "
                                 f"to finish, or, if it is gone, delete {path}")
        warnings.warn(f"{path.parent}: took over the stale lock of a run that is gone ({_describe_holder(info)})",
                      stacklevel=4)
    me = {"pid": os.getpid(), "host": here, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "study": study}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return fd


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        return ""


def _release(path: Path, fd: int) -> None:
    try:
        path.unlink()  # while still holding it: a waiting opener of the old file sees it gone and retries
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _null_reason(key: str, value: Any) -> str:
    if value is not None:
        return f"the study computed a non-finite value ({value})"
    if key.endswith("_ci95"):
        return "a 95% interval needs two or more values (seeds, runs); there was one"
    return "the study reported no value and gave no reason"


def _csv_value(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return v
