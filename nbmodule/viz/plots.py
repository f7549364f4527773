"""Generic plots of long-format curves: mean over seeds with a band, optional smoothing and log scale.

Figures are built with ``matplotlib.figure.Figure`` (not pyplot), so nothing is shown behind the caller's
back: a notebook shows a figure with ``display(fig)``, the explorer turns it into PNG bytes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..metrics import ci95_factor
from .rundata import Smoothing, aggregate_seeds

__all__ = ["FigureSpec", "when_present", "num", "new_figure", "run_palette", "plot_curves", "draw_curves", "figure_png", "table_html"]


@dataclass(frozen=True)
class FigureSpec:
    """One figure of a study: ``draw(run_folder) -> Figure | None`` (None when the files it needs are
    absent; ``needs`` says which, for the message)."""
    name: str
    draw: Callable[[Path], Figure | None]
    needs: str


def when_present(draw: Callable[[Path], Figure | None], *files: str) -> Callable[[Path], Figure | None]:
    """``draw``, returning None instead when one of ``files`` (relative to the run folder) is absent."""
    def guarded(run: Path) -> Figure | None:
        return draw(run) if all((Path(run) / f).is_file() for f in files) else None
    guarded.__doc__ = draw.__doc__
    return guarded


def num(v: Any) -> float:
    """A metrics.json value as a float (None and non-numbers: NaN)."""
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def new_figure(width: float = 7.0, height: float = 4.0, nrows: int = 1, ncols: int = 1, **kw) -> tuple[Figure, object]:
    """A figure (constrained layout) and its axes, without pyplot's global state."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=True, **kw)


def run_palette(runs: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """A stable colour per run name (sorted), so a run keeps its colour when the selection changes."""
    import seaborn as sns

    names = sorted(set(map(str, runs)))
    colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", max(len(names), 1))
    return {name: tuple(colors[i]) for i, name in enumerate(names)}


def draw_curves(ax, df: pd.DataFrame, metric: str, x: str, runs: Sequence[str] | None = None,
                smoothing: Smoothing = "none", window: int = 1, logy: bool = False,
                palette: Mapping[str, tuple] | None = None, band: str = "std") -> list[str]:
    """Draw ``metric`` against ``x`` on ``ax``, one line per run (mean over seeds) with a band.

    ``band``: ``"std"`` (mean ± one standard deviation over seeds), ``"ci95"`` (± t(0.975, n-1) std/√n) or
    ``"none"``. Returns the runs actually drawn (those with at least one point).
    """
    agg = aggregate_seeds(df, x, metric, smoothing, window)
    wanted = list(runs) if runs is not None else sorted(agg["run"].unique())
    palette = dict(palette or run_palette(df["run"].unique()))
    drawn = []
    for run in wanted:
        g = agg[agg["run"] == run]
        if g.empty:
            continue
        xs, mean = g[x].to_numpy(dtype=float), g["mean"].to_numpy(dtype=float)
        color = palette.get(run)
        seeds = int(g["n"].max())
        label = f"{run} ({seeds} seeds)" if seeds > 1 else run
        marker = "o" if len(xs) <= 12 else None
        ax.plot(xs, mean, label=label, color=color, marker=marker, markersize=4, linewidth=1.6)
        if band != "none" and seeds > 1:
            half = g["std"].to_numpy(dtype=float)
            if band == "ci95":
                n = g["n"].to_numpy(dtype=float)
                half = np.array([ci95_factor(k) for k in n]) * half / np.sqrt(n)
            ax.fill_between(xs, mean - half, mean + half, color=color, alpha=0.2, linewidth=0)
        drawn.append(run)
    if logy:
        # A log axis cannot show values <= 0: say so instead of silently dropping them.
        if (agg.loc[agg["run"].isin(drawn), "mean"] <= 0).any():
            ax.set_yscale("symlog", linthresh=1e-3)
        else:
            ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no points for the selected runs", ha="center", va="center", transform=ax.transAxes)
    return drawn


def plot_curves(df: pd.DataFrame, metric: str, x: str, runs: Sequence[str] | None = None,
                smoothing: Smoothing = "none", window: int = 1, logy: bool = False, title: str | None = None,
                band: str = "std", size: tuple[float, float] = (7.0, 4.0)) -> Figure:
    """One figure of ``metric`` against ``x`` for ``runs`` of a long-format curve (see :func:`draw_curves`)."""
    fig, ax = new_figure(*size)
    draw_curves(ax, df, metric, x, runs, smoothing, window, logy, band=band)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for ``ipywidgets.Image`` and HTML reports)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def table_html(df: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    """A small HTML table (no index) with numbers formatted to 4 significant digits."""
    if df.empty:
        return "<p><i>no values</i></p>"
    fmt = {c: float_format.format for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    style = ("<style>.nbm-values td, .nbm-values th {padding: 2px 10px; text-align: right}"
             " .nbm-values td:first-child, .nbm-values th:first-child {text-align: left}</style>")
    return style + df.to_html(index=False, formatters=fmt, na_rep="–", border=0, classes="nbm-values")
