"""Reading run folders into tables: the only way ``nbmodule.viz`` sees results.

A run root holds one folder per notebook (``<out>/<stem>/``, see :mod:`nbmodule.runs`). Curves are long-format
CSVs ``curves/<name>.csv`` with a string column ``run`` (the configuration compared: regime, mode, setting,
task), an int column ``seed``, one or more x columns (``step``, ``epoch``, ``iteration``, ``stage``,
``shots``) and numeric metric columns. Everything here works on any folder that follows that convention, so
a new study needs no code in ``viz`` to appear in the explorer.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..metrics import ci95_factor

__all__ = ["X_COLUMNS", "KEY_COLUMNS", "find_studies", "overview", "list_curves", "read_curves", "read_metrics_file",
           "x_columns", "metric_columns", "smooth", "aggregate_seeds", "lower_is_better", "final_values",
           "seed_folders", "read_run_config", "Progress", "run_progress", "mean_ci", "seed_metrics"]

#: Columns that may serve as the x-axis of a curve, in order of preference.
X_COLUMNS = ("step", "epoch", "iteration", "stage", "shots")
#: Columns that identify a curve rather than measure something.
KEY_COLUMNS = ("run", "seed")

Smoothing = Literal["none", "ema", "rolling"]


def find_studies(runs_dir: str | Path, max_depth: int = 3) -> dict[str, Path]:
    """Run folders under ``runs_dir`` that hold curves: ``{relative name: folder}``, sorted by name.

    Nested run folders (``RunDir.sub``: one per regime or mode) count too, named ``parent/child``.
    Checkpoint folders are never entered.
    """
    root = Path(runs_dir)
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found

    def walk(folder: Path, depth: int) -> None:
        if (folder / "curves").is_dir() and any((folder / "curves").glob("*.csv")):
            found[folder.relative_to(root).as_posix() if folder != root else folder.name] = folder
        if depth >= max_depth:
            return
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name not in ("curves", "checkpoints") and not child.name.startswith("."):
                walk(child, depth + 1)

    walk(root, 0)
    return dict(sorted(found.items()))


def overview(runs_dir: str | Path) -> pd.DataFrame:
    """One row per run folder directly under ``runs_dir``: its name, how many metrics, which curves, how
    many figures, and whether it holds a ``config.json`` (folders without any of these are left out)."""
    rows = []
    root = Path(runs_dir)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        metrics = read_metrics_file(folder)
        curves = list_curves(folder)
        pngs = list(folder.glob("*.png"))
        if not (metrics or curves or pngs or (folder / "config.json").is_file()):
            continue
        rows.append({"run folder": folder.name, "metrics": len(metrics), "curves": ", ".join(curves),
                     "figures": len(pngs), "config": (folder / "config.json").is_file()})
    return pd.DataFrame(rows, columns=["run folder", "metrics", "curves", "figures", "config"])


def list_curves(run_dir: str | Path) -> list[str]:
    """Names of the curve files of a run folder (``curves/<name>.csv`` -> ``name``), sorted."""
    folder = Path(run_dir) / "curves"
    return sorted(p.stem for p in folder.glob("*.csv")) if folder.is_dir() else []


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame()
    if "run" in df.columns:
        df["run"] = df["run"].astype(str)
    else:  # a single-configuration curve: one run named after the file
        df.insert(0, "run", path.stem)
    if "seed" not in df.columns:
        df.insert(1, "seed", 0)
    return df


def read_curves(run_dir: str | Path, names: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """``{curve name: DataFrame}`` for the run folder's curve files (all, or ``names``); empty files skipped."""
    folder = Path(run_dir) / "curves"
    out: dict[str, pd.DataFrame] = {}
    for name in names if names is not None else list_curves(run_dir):
        path = folder / f"{name}.csv"
        if path.is_file():
            df = _read_csv(path)
            if not df.empty:
                out[name] = df
    return out


def read_metrics_file(path: str | Path) -> dict[str, Any]:
    """A run folder's ``metrics.json`` (or any JSON file); empty when absent or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def x_columns(df: pd.DataFrame) -> list[str]:
    """The x columns present in a curve, in :data:`X_COLUMNS` order."""
    return [c for c in X_COLUMNS if c in df.columns]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric columns that are neither keys nor x columns, and hold at least one finite value."""
    skip = set(KEY_COLUMNS) | set(X_COLUMNS)
    cols = []
    for c in df.columns:
        if c in skip or not pd.api.types.is_numeric_dtype(df[c]):
            continue
        if np.isfinite(df[c].to_numpy(dtype=float)).any():
            cols.append(c)
    return cols


def smooth(values: pd.Series, kind: Smoothing = "none", window: int = 1) -> pd.Series:
    """Smooth one curve (values in x order).

    ``ema``: exponential moving average with span ``window`` (TensorBoard-style, bias corrected by pandas'
    ``adjust=True``); ``rolling``: trailing mean over ``window`` points (fewer at the start). NaNs are skipped.
    """
    if kind == "none" or window <= 1:
        return values
    if kind == "ema":
        return values.ewm(span=window, adjust=True, ignore_na=True).mean()
    if kind == "rolling":
        return values.rolling(window, min_periods=1).mean()
    raise ValueError(f"smoothing must be one of 'none', 'ema', 'rolling', got {kind!r}")


def aggregate_seeds(df: pd.DataFrame, x: str, metric: str, kind: Smoothing = "none",
                    window: int = 1) -> pd.DataFrame:
    """Per run and x value: mean, std and count over seeds of ``metric`` (each seed smoothed first).

    Returns columns ``run, <x>, mean, std, n`` sorted by run and x; rows with a missing metric are dropped.
    """
    if x not in df.columns or metric not in df.columns:
        raise KeyError(f"curve has no column {x if x not in df.columns else metric!r} "
                       f"(columns: {', '.join(map(str, df.columns))})")
    part = df[["run", "seed", x, metric]].dropna(subset=[x, metric]).sort_values(["run", "seed", x])
    if part.empty:
        return pd.DataFrame(columns=["run", x, "mean", "std", "n"])
    # Several rows per (run, seed, x) happen when a curve has other x columns too (e.g. stage and step):
    # average them first so every seed contributes one point per x.
    part = part.groupby(["run", "seed", x], as_index=False)[metric].mean()
    part[metric] = part.groupby(["run", "seed"], group_keys=False)[metric].apply(
        lambda s: smooth(s, kind, window))
    agg = part.groupby(["run", x])[metric].agg(["mean", "std", "count"]).reset_index()
    agg = agg.rename(columns={"count": "n"})
    agg["std"] = agg["std"].fillna(0.0)
    return agg


def lower_is_better(metric: str) -> bool:
    """Whether a metric improves downwards, guessed from its name (losses, errors, angles, times, steps)."""
    return any(t in metric.lower() for t in ("loss", "err", "mse", "angle", "steps", "time", "latency", "_ms"))


def final_values(df: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """Per run: the metric at each seed's last x, as mean, std and 95% CI half-width over seeds.

    Columns: ``run, final_<x>, mean, std, ci95, seeds, best``; ``best`` is the best value any logged point
    reached (the minimum where :func:`lower_is_better`, else the maximum).
    """
    lower = lower_is_better(metric)
    rows = []
    part = df[["run", "seed", x, metric]].dropna(subset=[x, metric])
    for run, g in part.groupby("run", sort=True):
        last = g.sort_values(x).groupby("seed").tail(1)
        vals = last[metric].to_numpy(dtype=float)
        n = len(vals)
        std = float(vals.std(ddof=1)) if n > 1 else float("nan")
        rows.append({"run": run, f"final_{x}": last[x].max(), "mean": float(vals.mean()), "std": std,
                     "ci95": ci95_factor(n) * std / np.sqrt(n) if n > 1 else float("nan"), "seeds": n,
                     "best": float(g[metric].min() if lower else g[metric].max())})
    return pd.DataFrame(rows, columns=["run", f"final_{x}", "mean", "std", "ci95", "seeds", "best"])


# --- results folders: one run, or one run per seed -----------------------------------------------------
_SEED_FOLDER = re.compile(r"^seed(\d+)$")
#: config fields that count a run's planned iterations, in order of preference
_PLANNED = ("meta_iterations", "iterations")


def seed_folders(folder: str | Path) -> list[Path]:
    """The run folders behind one result: ``folder`` itself when it holds ``config.json``, else its
    sub-folders that hold one (one per seed: ``seed0/``, ``seed1/``...), ordered by the seed their config
    records, then by name (``[]`` when neither exists)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return [folder]
    if not folder.is_dir():
        return []
    subs = [p for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file()]

    def order(p: Path) -> tuple:
        seed = read_run_config(p).get("config", {})
        seed = seed.get("seed") if isinstance(seed, dict) else None
        m = _SEED_FOLDER.match(p.name)
        key = seed if isinstance(seed, int) else int(m.group(1)) if m else math.inf
        return (key, p.name)

    return sorted(subs, key=order)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``config.json`` (``{"config": {...}, "status": ..., ...}``); empty when absent."""
    return read_metrics_file(Path(run_dir) / "config.json")


@dataclass(frozen=True)
class Progress:
    """How far a result got: ``status`` is ``missing`` (no run folder), ``partial`` or ``complete``;
    ``runs_done`` of ``runs`` run folders (seeds) are complete; ``done`` of ``planned`` iterations were
    logged by the least advanced unfinished run (None where the config names no iteration count)."""
    status: str
    runs: int = 0
    runs_done: int = 0
    done: int | None = None
    planned: int | None = None

    def describe(self, unit: str = "iterations") -> str:
        """``not run yet``, ``complete`` or ``partial: 2 of 3 runs complete, 4 000 of 15 000 iterations``."""
        if self.status == "missing":
            return "not run yet"
        if self.status == "complete":
            return "complete"
        parts = []
        if self.runs > 1:
            parts.append(f"{self.runs_done} of {self.runs} runs complete")
        if self.planned:
            parts.append(f"{_thousands(self.done or 0)} of {_thousands(self.planned)} {unit}")
        return "partial: " + (", ".join(parts) if parts else "no curve or metrics.json written yet")


def _thousands(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def _logged_iterations(run_dir: Path) -> int | None:
    """The furthest iteration any curve of ``run_dir`` logged (``step`` or ``iteration``), None when none did."""
    best = None
    for df in read_curves(run_dir).values():
        for col in ("step", "iteration"):
            if col in df.columns:
                vals = pd.to_numeric(df[col], errors="coerce").dropna()
                if len(vals):
                    best = max(best or 0, int(vals.max()))
    return best


def run_progress(folder: str | Path) -> Progress:
    """:class:`Progress` of a result folder (one run folder, or ``seed<N>`` sub-folders). A run is complete
    when its ``config.json`` says ``"status": "complete"`` and it holds ``metrics.json``."""
    runs = seed_folders(folder)
    if not runs:
        return Progress("missing")
    done, least, planned = 0, None, None
    for run in runs:
        cfg = read_run_config(run)
        if cfg.get("status") == "complete" and (run / "metrics.json").is_file():
            done += 1
            continue
        fields = cfg.get("config", {}) if isinstance(cfg.get("config"), dict) else {}
        plan = next((int(fields[k]) for k in _PLANNED if isinstance(fields.get(k), (int, float))), None)
        logged = _logged_iterations(run)
        if least is None or (logged if logged is not None else -1) < least:
            least, planned = (logged if logged is not None else -1), plan
    if done == len(runs):
        return Progress("complete", len(runs), done)
    if least is None or least < 0:  # nothing logged yet: no iteration count to give
        return Progress("partial", len(runs), done)
    return Progress("partial", len(runs), done, least if planned else None, planned)


def mean_ci(values: list[float]) -> tuple[float, float, int]:
    """``(mean, Student-t 95% half-width, n)`` over the finite ``values`` (half-width NaN below 2 values)."""
    vals = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan"), 0
    half = ci95_factor(n) * float(vals.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return float(vals.mean()), half, n


def seed_metrics(folder: str | Path) -> dict[str, tuple[float, float, int]]:
    """Every numeric ``metrics.json`` key of a result's complete seed runs: ``{key: (mean, ci95, n)}`` over
    seeds (:func:`mean_ci`). A single run folder gives its values with NaN intervals."""
    per_key: dict[str, list[float]] = {}
    for run in seed_folders(folder):
        if read_run_config(run).get("status") != "complete":
            continue
        for key, value in read_metrics_file(run).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                per_key.setdefault(key, []).append(float(value))
    return {k: mean_ci(v) for k, v in sorted(per_key.items())}
