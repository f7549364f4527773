"""Reading run folders into tables: the only way ``nbmodule.viz`` sees results.

A run root holds one folder per notebook (``<out>/<stem>/``, see :mod:`nbmodule.runs`). Curves are long-format
CSVs ``curves/<name>.csv`` with a string column ``run`` (the configuration compared: regime, mode, setting,
task), an int column ``seed``, one or more x columns (``step``, ``epoch``, ``iteration``, ``stage``,
``shots``) and numeric metric columns. Everything here works on any folder that follows that convention, so
a new study needs no code in ``viz`` to appear in the explorer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..metrics import ci95_factor

__all__ = ["X_COLUMNS", "KEY_COLUMNS", "find_studies", "overview", "list_curves", "read_curves", "read_metrics_file",
           "x_columns", "metric_columns", "smooth", "aggregate_seeds", "lower_is_better", "final_values"]

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
