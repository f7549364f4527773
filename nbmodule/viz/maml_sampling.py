"""Figures and tables of the task-weighted MAML study (notebook 04), drawn from its run folder only.

Reads what :mod:`nbmodule.engines.maml_sampling` writes: ``curves/train.csv``, ``curves/test.csv``,
``parameter_space.csv``, ``queues.json``, ``examples.json`` and ``metrics.json``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..meta.sampling import REGIMES
from .plots import FigureSpec, draw_curves, new_figure, num, run_palette, when_present
from .rundata import metric_columns, read_curves, read_metrics_file, x_columns

__all__ = ["FIGURES", "results_table", "plot_curves", "read_parameter_space", "plot_parameter_space", "plot_final",
           "plot_queue_heatmaps", "plot_examples"]


def results_table(metrics: Mapping[str, Any], regimes: Sequence[str] | None = None, eval_steps: int = 10
                  ) -> pd.DataFrame:
    """One row per regime: test-grid MSE before, after 1 and after ``eval_steps`` steps, held-out MSE, each
    with its 95% CI over seeds (``metrics.json`` keys ``{regime}_mse_{k}step`` and ``_ci95``)."""
    regimes = list(regimes or [r for r in REGIMES if f"{r}_mse_1step" in metrics])
    cols = {"MSE before": "mse_0step", "MSE 1 step": "mse_1step", f"MSE {eval_steps} steps": f"mse_{eval_steps}step",
            "held-out 1 step": "heldout_mse_1step", f"held-out {eval_steps} steps": f"heldout_mse_{eval_steps}step"}
    rows = {}
    for r in regimes:
        row = {}
        for label, key in cols.items():
            row[label] = num(metrics.get(f"{r}_{key}"))
            row[f"{label} ±95%"] = num(metrics.get(f"{r}_{key}_ci95"))
        rows[r] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _curves_over_steps(run_dir: str | Path) -> list[tuple[str, pd.DataFrame, str, str]]:
    """(curve name, frame, x, metric) for every metric of every curve with an x column."""
    out = []
    for name, df in read_curves(run_dir).items():
        xs = x_columns(df)
        if not xs:
            continue
        for metric in metric_columns(df):
            out.append((name, df, xs[0], metric))
    return out


def plot_curves(run_dir: str | Path, max_panels: int = 4) -> Figure | None:
    """Every regime's curves (training and test fine-tuning losses) over meta-iterations, band = ±1 std
    over seeds, one panel per metric (the first ``max_panels``; log scale since losses span decades)."""
    def priority(panel: tuple[str, pd.DataFrame, str, str]) -> int:
        metric = panel[3]
        if metric == "train_loss":
            return 0
        if metric.startswith("test_mse") and not metric.endswith("_0step"):
            return 1
        if metric.startswith("heldout_mse"):
            return 2
        return 3 if "loss" in metric or "mse" in metric else 4

    panels = sorted(_curves_over_steps(run_dir), key=priority)[:max_panels]
    if not panels:
        return None
    ncols = min(2, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = new_figure(6.0 * ncols, 3.6 * nrows, nrows=nrows, ncols=ncols)
    axes = np.atleast_1d(axes).ravel()
    for ax, (name, df, x, metric) in zip(axes, panels):
        positive = (df[metric].dropna() > 0).all()
        present = set(df["run"])
        order = [r for r in REGIMES if r in present] + sorted(present - set(REGIMES))
        draw_curves(ax, df, metric, x, runs=order, logy=bool(positive) and ("loss" in metric or "mse" in metric))
        ax.set_title(f"{name}: {metric}", fontsize=10)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def read_parameter_space(run_dir: str | Path) -> pd.DataFrame | None:
    """``parameter_space.csv``: final test-grid losses per task (columns ``run, seed, amplitude, phase``
    (degrees) [, ``frequency``], ``mse_0step, mse_1step, mse_<S>step``); None when absent."""
    path = Path(run_dir) / "parameter_space.csv"
    return pd.read_csv(path) if path.is_file() else None


def plot_parameter_space(run_dir: str | Path) -> Figure | None:
    """Test loss after adaptation against the task amplitude (low amplitudes are the hard case), one line
    per regime (mean over phases/frequencies and seeds), and, where a ``phase`` column exists, the mean
    loss over the amplitude × phase grid of the first regime."""
    run_dir = Path(run_dir)
    df = read_parameter_space(run_dir)
    if df is None or "amplitude" not in df.columns:
        return None
    if "run" not in df.columns:
        df["run"] = "maml"
    df["run"] = df["run"].astype(str)
    losses = [c for c in metric_columns(df) if c not in ("amplitude", "phase", "frequency")]
    if not losses:
        return None
    metric = "mse_1step" if "mse_1step" in losses else next((c for c in losses if "loss" in c or "mse" in c), losses[0])
    has_phase = "phase" in df.columns and df["phase"].nunique() > 1
    fig, axes = new_figure(11 if has_phase else 6.5, 3.8, ncols=2 if has_phase else 1)
    ax = np.atleast_1d(axes)[0]
    palette = run_palette(df["run"].unique())
    by_amp = df.groupby(["run", "amplitude"])[metric].mean().reset_index()
    for run, g in by_amp.groupby("run"):
        ax.plot(g["amplitude"], g[metric], label=run, color=palette[run], linewidth=1.5)
    ax.set_xlabel("amplitude")
    ax.set_ylabel(f"{metric}, mean over phases")
    ax.set_yscale("log" if (by_amp[metric] > 0).all() else "linear")
    ax.set_title("test loss across the parameter space", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if has_phase:
        present = set(df["run"])
        first = next((r for r in REGIMES if r in present), sorted(present)[0])  # uniform: the baseline
        grid = df[df["run"] == first].pivot_table(index="phase", columns="amplitude", values=metric, aggfunc="mean")
        ax2 = np.atleast_1d(axes)[1]
        mesh = ax2.pcolormesh(grid.columns.to_numpy(dtype=float), grid.index.to_numpy(dtype=float),
                              grid.to_numpy(dtype=float), cmap="magma", shading="nearest")
        fig.colorbar(mesh, ax=ax2, label=metric)
        ax2.set_xlabel("amplitude")
        ax2.set_ylabel("phase (degrees)")
        ax2.set_title(f"{first}: {metric} by amplitude and phase", fontsize=10)
    return fig


def plot_final(run_dir: str | Path) -> Figure | None:
    """Final test MSE after 1 and 10 adaptation steps per regime (``{regime}_mse_{1,10}step``)."""
    m = read_metrics_file(run_dir)
    pat = re.compile(r"^(.+)_mse_(\d+)step$")
    rows = [(g.group(1), int(g.group(2)), num(v), num(m.get(f"{k}_ci95"))) for k, v in m.items()
            if (g := pat.match(k)) and not g.group(1).endswith("_heldout")]
    if not rows:
        return None
    df = pd.DataFrame(rows, columns=["regime", "steps", "mse", "ci95"])
    order = [r for r in REGIMES if r in set(df["regime"])] + sorted(set(df["regime"]) - set(REGIMES))
    before = df[df["steps"] == 0]["mse"]
    if (df["steps"] > 0).any():  # the pre-update loss is ~10x larger and would flatten the comparison
        df = df[df["steps"] > 0]
    steps = sorted(set(df["steps"]))
    fig, ax = new_figure(max(7.5, 1.3 * len(order) + 2), 3.6)
    width = 0.8 / len(steps)
    pos = np.arange(len(order))
    blues = ["#9ecae1", "#4292c6", "#08519c", "#08306b"]
    for i, k in enumerate(steps):
        part = df[df["steps"] == k].set_index("regime").reindex(order)
        bars = ax.bar(pos + (i - (len(steps) - 1) / 2) * width, part["mse"], width, label=f"{k} step(s)",
                      yerr=part["ci95"].fillna(0), capsize=2, color=blues[min(i, len(blues) - 1)])
        ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=1)
    ax.set_xticks(pos, order, rotation=20, fontsize=8)
    ax.set_ylabel("test-grid MSE (95% CI over seeds)")
    note = f" (before adaptation: {before.min():.2f}-{before.max():.2f})" if before.notna().any() else ""
    ax.set_title(f"test MSE after adaptation, per sampling regime{note}", fontsize=10)
    ax.legend(title="fine-tuning", fontsize=8, frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_queue_heatmaps(run_dir: str | Path, regimes: Sequence[str] | None = None, seed: int | None = None,
                        value: str = "losses"):
    """The priority queue (``value``: "losses" or "counts") as amplitude x phase heatmaps: one row per regime,
    one column per snapshot (3D: mean over frequency). Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    data = json.loads((Path(run_dir) / "queues.json").read_text())
    snaps = data["snapshots"]
    regimes = [r for r in (regimes or list(snaps)) if r in snaps]
    ncols = max(len(next(iter(snaps[r].values()))) for r in regimes)
    fig, axes = plt.subplots(len(regimes), ncols, figsize=(2.8 * ncols, 2.3 * len(regimes)), squeeze=False)
    fig.subplots_adjust(hspace=0.45, wspace=0.25)
    lo, hi = data["low"], data["high"]
    extent = (math.degrees(lo[1]), math.degrees(hi[1]), lo[0], hi[0])
    for i, r in enumerate(regimes):
        runs = snaps[r]
        shots = runs[str(seed)] if seed is not None else next(iter(runs.values()))
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(shots):
                ax.set_visible(False)
                continue
            grid = np.asarray(shots[j][value], dtype=float)
            if grid.ndim == 3:
                grid = grid.mean(axis=2)
            im = ax.imshow(grid, origin="lower", aspect="auto", extent=extent, cmap="viridis")
            ax.set_title(f"{r}, iteration {shots[j]['step']}", fontsize=7)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("amplitude", fontsize=8)
            if i == len(regimes) - 1:
                ax.set_xlabel("phase (degrees)", fontsize=8)
        fig.colorbar(im, ax=list(axes[i]), shrink=0.9, pad=0.01)
    fig.suptitle(f"priority queue ({value}: latest post-adaptation loss per cell)" if value == "losses"
                 else f"priority queue ({value})", fontsize=10)
    return fig


def plot_examples(run_dir: str | Path, regimes: Sequence[str] | None = None):
    """Example regressions (low, medium, high amplitude): ground truth, K support points, the meta-learned
    model before adaptation and after 1 and ``eval_steps`` steps. One row per regime (default: uniform and
    the first other regime present)."""
    import matplotlib.pyplot as plt

    data = json.loads((Path(run_dir) / "examples.json").read_text())
    if regimes is None:
        regimes = ([r for r in data if r == "uniform"] + [r for r in data if r != "uniform"])[:2]
    regimes = [r for r in regimes if r in data]
    ntask = max(len(data[r]["tasks"]) for r in regimes)
    fig, axes = plt.subplots(len(regimes), ntask, figsize=(4.0 * ntask, 2.8 * len(regimes)), squeeze=False)
    fig.subplots_adjust(hspace=0.35)
    for i, r in enumerate(regimes):
        ex = data[r]
        x = ex["x"]
        for j, task in enumerate(ex["tasks"]):
            ax = axes[i, j]
            ax.plot(x, task["truth"], color="k", linewidth=2, label="ground truth")
            for s, style in zip(ex["steps"], (":", "--", "-")):
                label = "pre-update" if s == 0 else f"after {s} step{'s' if s > 1 else ''}"
                ax.plot(x, task[f"pred_{s}"], linestyle=style, linewidth=1.5, label=label)
            ax.scatter(task["support_x"], task["support_y"], color="red", s=18, zorder=3, label="K support points")
            ax.set_title(f"{r}: amplitude {task['params'][0]:.1f}", fontsize=9)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    return fig


FIGURES = (
    FigureSpec("curves", plot_curves, "curves/train.csv and curves/test.csv (run = regime, x = step)"),
    FigureSpec("parameter_space", plot_parameter_space, "parameter_space.csv"),
    FigureSpec("final_mse", plot_final, "metrics.json keys {regime}_mse_{k}step"),
    FigureSpec("queue_heatmaps", when_present(plot_queue_heatmaps, "queues.json"), "queues.json"),
    FigureSpec("examples", when_present(plot_examples, "examples.json"), "examples.json"),
)
