"""The run folder: one directory per notebook (or command-line run) holding everything it produced.

Layout of ``<out>/<name>/`` (the results notebook and the explorer read only these files)::

    config.json        the study, its validated config, device and versions (``save_config``)
    metrics.json       flat ``{key: number or null}``, merged on every ``write_metrics`` call
    curves/<name>.csv  long-format learning curves: one row per logged point (``log_curve``)
    *.png              figures (``save_figure``)
    checkpoints/*.pt   resume state (``checkpointer``): the newest and the previous good one

Guarantees (each has a test in ``tests/test_runs.py``):

- every file is written atomically (temp file + rename, with the user's umask), because Colab disconnects
  and papermill timeouts kill kernels at arbitrary points and resume must only ever see complete files;
- a checkpoint is verified after writing, and the previous good one is kept until the new one is; a
  damaged newest checkpoint falls back to the previous one with a warning naming the bad file;
- nothing in a run folder can execute code when read: checkpoints are loaded with ``weights_only=True``
  (they hold tensors, state_dicts and plain Python values only; :func:`rng_state` stores RNG states so);
- a checkpoint made with other settings is never resumed silently: :class:`Checkpointer` compares the
  stored config with the current one and raises :class:`ResumeError` naming the fields that differ.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import random
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from .config import ConfigError

if TYPE_CHECKING:  # torch is imported lazily: `python -m nbmodule list` should not pay for it
    import torch

__all__ = ["RunDir", "RunContext", "Checkpointer", "ResumeError", "CheckpointError", "versions", "read_metrics",
           "read_curve", "atomic_write_bytes", "atomic_write_text", "is_timing_key", "compare_configs",
           "rng_state", "set_rng_state"]

_TIMING = re.compile(r"(_s|_ms|_per_s|_s_per_iter|_seconds)$")


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is damaged (not valid JSON: {err}); delete it, or start a new run folder") from None


def read_metrics(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a run folder (or the file itself); empty when absent."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    return _read_json(path) if path.is_file() else {}


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


def describe_mismatch(where: str | Path, stored: Mapping[str, Any], current: Mapping[str, Any],
                      fields: Iterable[str]) -> str:
    diffs = ", ".join(f"{f} (stored {stored.get(f)!r}, now {current.get(f)!r})" for f in fields)
    return (f"{where} holds results made with other settings: {diffs}. Resuming would mix them up. Either "
            "write to a new run folder (--out DIR, or the notebook's `out` parameter), or discard the old "
            "results with --restart (the notebook's `restart = True`).")


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


def _safe_load(path: Path, map_location: Any = "cpu") -> Any:
    import torch

    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
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
        return path

    def steps(self, total: int, *, every: int, state: Callable[[], Mapping[str, Any]]) -> Iterator[int]:
        """Steps ``self.step + 1 .. total``; after every ``every``-th step and the last one, ``state()`` is
        saved (the last with ``done=True``). Nothing is saved for a step whose body raised or broke out."""
        for step in range(self.step + 1, total + 1):
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

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.path / name
        return _read_json(path) if path.is_file() else default

    def write_metrics(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Merge flat ``{key: number}`` into ``metrics.json`` and return the whole file's content."""
        current = read_metrics(self.path)
        for key, value in metrics.items():
            if not isinstance(key, str):
                raise TypeError(f"metric keys must be strings, got {key!r}")
            current[key] = _number(key, value)
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

    def clear(self) -> None:
        """Delete everything in the run folder (``--restart``): only run folders (with a config.json or
        a checkpoints/ folder) or empty folders are cleared."""
        if not self.path.is_dir():
            return
        entries = list(self.path.iterdir())
        if entries and not ((self.path / "config.json").is_file() or (self.path / "checkpoints").is_dir()):
            raise ConfigError(f"{self.path} is not a run folder (no config.json or checkpoints/), so --restart "
                              "will not delete what it holds; choose another --out")
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _csv_value(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return v
