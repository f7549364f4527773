"""Plots and tables of an MTML run folder (notebook 03): they read only the files the engine wrote."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..metrics import DENSE_METRICS
from ..runs import read_curve, read_metrics

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
