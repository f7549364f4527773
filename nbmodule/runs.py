"""The run folder: one directory per notebook (or CLI run) holding everything it produced.

Layout of ``<out>/<name>/`` (the results notebook and the explorer read only these files)::

    config.json        the validated config, plus seed, versions and device (written by ``save_config``)
    metrics.json       flat ``{key: number or null}``, merged on every ``write_metrics`` call
    curves/<name>.csv  long-format learning curves: one row per logged point (``log_curve``)
    *.png              figures (``save_figure``)
    checkpoints/*.pt   ``save_checkpoint`` / ``load_checkpoint``, written atomically so an interrupted
                       run never leaves a half-written file that resume would trust

Writes are atomic (temp file + rename) because Colab disconnects and papermill timeouts kill kernels at
arbitrary points, and resume must only ever see complete files.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["RunDir", "versions", "read_metrics", "read_curve"]


def versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour changes results."""
    out = {"python": platform.python_version()}
    for mod in ("torch", "torchvision", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # numpy/torch are dependencies; this only guards odd environments
            out[mod] = "missing"
    return out


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def read_metrics(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a run folder (or the file itself); empty when absent."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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


class RunDir:
    """A run folder. ``RunDir(out, "04_maml_sampling")`` is ``<out>/04_maml_sampling/``."""

    def __init__(self, root: str | Path, name: str | None = None):
        self.path = Path(root) / name if name else Path(root)
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
        """Write ``config.json``: the config's fields, ``extra`` (seed, device...) and library versions."""
        data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        payload = {"config": data, **extra, "versions": versions()}
        return self.write_json("config.json", payload)

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.path / name
        text = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        _atomic_write(path, lambda fh: fh.write(text))
        return path

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else default

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
        """Replace ``curves/<name>.csv`` with ``rows`` (use on resume to drop points past a checkpoint)."""
        path = self.path / "curves" / f"{name}.csv"
        if path.exists():
            path.unlink()
        return self.log_curve(name, rows)

    def curve(self, name: str) -> list[dict[str, Any]]:
        return read_curve(self.path, name)

    # -- figures --------------------------------------------------------------------------------
    def save_figure(self, fig: Any, name: str, dpi: int = 120) -> Path:
        """Save a matplotlib figure as ``<name>.png`` in the run folder."""
        path = self.path / (name if name.endswith(".png") else f"{name}.png")
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        return path

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_path(self, name: str = "last") -> Path:
        return self.path / "checkpoints" / f"{name}.pt"

    def save_checkpoint(self, state: Mapping[str, Any], name: str = "last") -> Path:
        """Atomically write ``state`` (tensors, state_dicts, RNG states, plain values) with torch.save."""
        import torch

        path = self.checkpoint_path(name)
        _atomic_write(path, lambda fh: torch.save(dict(state), fh))
        return path

    def has_checkpoint(self, name: str = "last") -> bool:
        return self.checkpoint_path(name).is_file()

    def load_checkpoint(self, name: str = "last", map_location: Any = "cpu") -> dict[str, Any] | None:
        """The checkpoint's state, or None when there is none. Only complete files exist (atomic writes)."""
        import torch

        path = self.checkpoint_path(name)
        if not path.is_file():
            return None
        # weights_only=False: our checkpoints hold RNG states and plain Python values we wrote ourselves.
        return torch.load(path, map_location=map_location, weights_only=False)


def _csv_value(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return v

