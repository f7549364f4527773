"""Plots and tables of an MTML run folder (notebook 03): they read only the files the engine wrote."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..metrics import DENSE_METRICS
from ..runs import read_curve, read_metrics
from .plots import FigureSpec, draw_curves, new_figure, num as _num, run_palette, when_present
from .rundata import lower_is_better, metric_columns, read_curves, read_metrics_file, x_columns

__all__ = ["metrics_table", "plot_heldout_curves", "plot_train_curves", "plot_examples", "ANCHORS_NYU13"]

MODES = ("single", "mtl", "mtml")
TASKS = ("seg", "depth", "normals", "edges")

#: published anchors on NYU-v2 13-class (Auto-Lambda's table, ResNet-50, 3 tasks; Δm in %)
ANCHORS_NYU13 = pd.DataFrame(
    {"seg_miou": [43.37, None, None, None], "depth_abs_err": [0.5224, None, None, None],
     "normals_mean": [22.40, None, None, None], "delta_m": [0.0, 3.57, 6.50, 8.21]},
    index=["single-task", "equal weighting", "uncertainty", "Auto-Lambda"])


def metrics_table(run: str | Path) -> pd.DataFrame:
    """Rows = modes, columns = ``(task, metric)`` plus Δm (%) and steps to target, from ``metrics.json``.
    Arrows in the column names say whether lower (↓) or higher (↑) is better."""
    m = read_metrics(run)
    rows = {}
    for mode in MODES:
        row = {}
        for task in TASKS:
            for metric, lower in DENSE_METRICS[task].items():
                key = f"{mode}_{task}_{metric}"
                if key in m:
                    row[(task, f"{metric} {'↓' if lower else '↑'}")] = m[key]
        if row:
            row[("all", "Δm % ↑")] = m.get(f"{mode}_delta_m")
            row[("held-out", "steps to target ↓")] = m.get(f"{mode}_steps_to_target")
            rows[mode] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df


def plot_heldout_curves(run: str | Path) -> Figure:
    """The held-out task's val metric against fine-tuning steps for every mode, the single-task model's
    final value as a dashed line and each mode's steps-to-target as a dot."""
    rows = read_curve(run, "heldout")
    m = read_metrics(run)
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    if not rows:
        ax.text(0.5, 0.5, "no held-out task in this run", ha="center", transform=ax.transAxes)
        return fig
    df = pd.DataFrame(rows)
    col = next(c for c in df.columns if c.startswith("val_"))
    labels = {"single": "from scratch (single-task)", "mtl": "MTL-pretrained", "mtml": "MTML (meta-trained)"}
    for mode, g in df.groupby("run", sort=False):
        g = g.groupby("step", as_index=False)[col].mean()
        line, = ax.plot(g["step"], g[col], label=labels.get(mode, mode))
        s = m.get(f"{mode}_steps_to_target")
        if s is not None:
            ax.plot([s], [g.loc[g["step"] == s, col].mean()], "o", color=line.get_color())
    if m.get("heldout_target") is not None:
        ax.axhline(m["heldout_target"], ls="--", color="gray", lw=1, label="single-task final")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(col.removeprefix("val_") + " (val)")
    ax.legend()
    return fig


def plot_train_curves(run: str | Path) -> Figure:
    """Training loss of every phase (single-task models, MTL, MTML query loss, fine-tuning)."""
    df = pd.DataFrame(read_curve(run, "train"))
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for name, g in df.groupby("run", sort=False):
        ax.plot(g["step"], g["train_loss"], label=name)
    ax.set_xlabel("step (outer step for mtml)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _show(ax, task: str, x) -> None:
    x = np.asarray(x)
    if task == "image":
        ax.imshow(np.clip(np.moveaxis(x, 0, -1), 0, 1))
    elif task == "seg":
        x = np.where(x == 255, -1, x).astype(float)
        ax.imshow(np.ma.masked_less(x, 0), cmap="tab20", vmin=0, vmax=39, interpolation="nearest")
    elif task == "depth":
        ax.imshow(x[0], cmap="viridis")
    elif task == "normals":
        n = x / np.maximum(np.linalg.norm(x, axis=0, keepdims=True), 1e-6)
        ax.imshow(np.moveaxis((n + 1) / 2, 0, -1))
    elif task == "edges":
        ax.imshow(x[0], cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_examples(run: str | Path, index: int = 0) -> Figure:
    """One test image: rows = ground truth and each mode's prediction, columns = image and the four tasks."""
    import torch

    ex = torch.load(Path(run) / "examples.pt", map_location="cpu", weights_only=False)
    tasks = ex["tasks"]
    modes = [mo for mo in MODES if mo in ex["preds"]]
    fig = Figure(figsize=(2.2 * (len(tasks) + 1), 1.9 * (len(modes) + 1)), layout="constrained")
    axes = fig.subplots(len(modes) + 1, len(tasks) + 1, squeeze=False)
    b = ex["batch"]
    for r, who in enumerate(["ground truth", *modes]):
        _show(axes[r, 0], "image", b["image"][index])
        axes[r, 0].set_ylabel(who)
        for c, t in enumerate(tasks, start=1):
            val = b[t][index] if r == 0 else ex["preds"][who].get(t, None)
            if val is None:
                axes[r, c].axis("off")
                continue
            _show(axes[r, c], t, val if r == 0 else val[index])
            if r == 0:
                axes[r, c].set_title(t)
    return fig


# --- moved from nbmodule/viz/studies.py (drawn by notebook 06) ------------------------------------
def mtml_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Modes as rows, ``{task}_{metric}`` columns, then ``delta_m`` and ``steps_to_target`` if present."""
    rows: dict[str, dict[str, float]] = {}
    modes = sorted({k.split("_", 1)[0] for k in metrics if "_" in k},
                   key=lambda s: (MODES.index(s) if s in MODES else len(MODES), s))
    for mode in modes:
        for key, value in metrics.items():
            if not key.startswith(mode + "_"):
                continue
            rest = key[len(mode) + 1:]
            if rest in ("delta_m", "steps_to_target") or rest.split("_", 1)[0] in TASKS:
                rows.setdefault(mode, {})[rest] = _num(value)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame.from_dict(rows, orient="index")
    first = sorted([c for c in df.columns if c not in ("delta_m", "steps_to_target")],
                   key=lambda c: (TASKS.index(c.split("_", 1)[0]), c))
    df = df[first + [c for c in ("delta_m", "steps_to_target") if c in df.columns]]
    df.index.name = "mode"
    return df


def plot_mtml_table(run_dir: str | Path) -> Figure | None:
    """Every task's metrics per mode with Δm (%), as an annotated table coloured per column."""
    table = mtml_table(read_metrics_file(run_dir))
    if table.empty:
        return None
    import seaborn as sns

    # Colour each column on its own scale (metrics have different units), darker = better whichever way
    # the metric points; annotate the raw values.
    span = (table.max() - table.min()).replace(0, 1)
    good = (table - table.min()) / span
    for col in table.columns:
        if lower_is_better(col):
            good[col] = 1 - good[col]
    labels = np.vectorize(lambda v: "–" if np.isnan(v) else f"{v:.3g}")(table.to_numpy(dtype=float))
    fig, ax = new_figure(max(6.0, 1.05 * table.shape[1] + 1.5), 0.6 * table.shape[0] + 1.8)
    sns.heatmap(good.astype(float).fillna(0.0), ax=ax, annot=labels, fmt="", cmap="Greens", cbar=False,
                linewidths=0.5, vmin=-0.3, vmax=1.3, annot_kws={"fontsize": 8})
    names = {"delta_m": "Δm, %", "steps_to_target": "steps to\ntarget"}
    ax.set_xticklabels([names.get(c, c.replace("_", "\n", 1)) for c in table.columns], fontsize=7, rotation=0)
    ax.set_yticklabels(table.index, rotation=0)
    ax.set_ylabel("")
    ax.set_title("per-task metrics by mode (darker = better in its column); Δm against single-task", fontsize=9)
    return fig


def _heldout_curve(run_dir: str | Path) -> tuple[str, pd.DataFrame] | None:
    curves = read_curves(run_dir)
    if not curves:
        return None
    for name, df in curves.items():  # a curve named for held-out fine-tuning first
        if any(t in name for t in ("heldout", "held_out", "meta_test", "finetune", "fine_tune")) and x_columns(df):
            return name, df
    for name, df in curves.items():  # else one comparing at least two modes
        if x_columns(df) and len(set(df["run"]) & set(MODES + ("scratch", "mtl_pretrained"))) >= 2:
            return name, df
    return None


def plot_mtml_heldout(run_dir: str | Path) -> Figure | None:
    """Held-out task metric against fine-tuning steps for each mode, with the single-task target and the
    steps each mode needed to reach it (``{mode}_steps_to_target``) marked."""
    found = _heldout_curve(run_dir)
    if found is None:
        return None
    name, df = found
    metrics = [c for c in metric_columns(df) if "loss" not in c] or metric_columns(df)
    if not metrics:
        return None
    x = x_columns(df)[0]
    m = read_metrics_file(run_dir)
    panels = metrics[:2]
    fig, axes = new_figure(6.2 * len(panels), 3.8, ncols=len(panels))
    palette = run_palette(df["run"].unique())
    for ax, metric in zip(np.atleast_1d(axes), panels):
        draw_curves(ax, df, metric, x, palette=palette)
        target = _num(m.get("heldout_target"))
        if not np.isnan(target) and metric == panels[0]:
            ax.axhline(target, color="black", linestyle="--", linewidth=1, label="single-task target")
            ax.legend(fontsize=8, frameon=False)
        for run in sorted(df["run"].unique()):
            steps = _num(m.get(f"{run}_steps_to_target"))
            if not np.isnan(steps):
                ax.axvline(steps, color=palette[run], linestyle=":", linewidth=1.2)
        ax.set_title(f"held-out task ({name}): {metric}; dotted = steps to target", fontsize=9)
    return fig


#: Every figure of the study, saved by ``nbmodule.studies.execute`` into the run folder as ``<name>.png``.
FIGURES = (
    FigureSpec("heldout_curves", when_present(plot_heldout_curves, "curves/heldout.csv"), "curves/heldout.csv"),
    FigureSpec("train_curves", when_present(plot_train_curves, "curves/train.csv"), "curves/train.csv"),
    FigureSpec("examples_0", when_present(plot_examples, "examples.pt"), "examples.pt"),
    FigureSpec("mtml_table", plot_mtml_table, "metrics.json keys {mode}_{task}_{metric}, {mode}_delta_m"),
    FigureSpec("mtml_heldout", plot_mtml_heldout, "a held-out-task curve in curves/ (run = mode, x = step)"),
)
