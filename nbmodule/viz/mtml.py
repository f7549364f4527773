"""Figures and tables of an MTML run folder (notebook 03; notebook 06 draws :data:`FIGURES`).

Everything here reads the files :mod:`nbmodule.engines.mtml` writes, and only those: ``metrics.json``,
``config.json``, ``curves/heldout.csv``, ``curves/train.csv``, ``curves/edges_pr.csv`` and ``examples.pt``
(loaded with ``weights_only=True``). Task -> metric maps come from :mod:`nbmodule.metrics`; the published
anchors are defined here, once, each with its source and setting.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..metrics import DENSE_METRICS, delta_m
from ..runs import RunDir, read_metrics
from .plots import FigureSpec, new_figure, num as _num, run_palette, when_present
from .rundata import lower_is_better

__all__ = ["ROWS", "TASKS", "STARTS", "ANCHORS", "split_key", "mtml_table", "budget_table", "seeds_table",
           "anchors_table", "read_heldout", "plot_mtml_table", "plot_mtml_heldout", "plot_train_curves", "plot_edges_pr",
           "plot_examples", "FIGURES"]

TASKS = tuple(DENSE_METRICS)
#: the rows of metrics.json (``{row}_{task}_{metric}``), in display order, with what each one is
ROWS = {
    "single": "single-task models (held-out task: learnt from scratch)",
    "mtl": "MTL, as trained",
    "mtl_adapted": "MTL after k adaptation steps",
    "mtml": "MTML, as trained",
    "mtml_adapted": "MTML after k adaptation steps",
    "mtml_compute": "MTML stopped at MTL's image passes (equal compute), as trained",
    "mtml_compute_adapted": "MTML at equal compute after k adaptation steps",
    "meta_test": "the held-out task learnt from init_model",
    "test": "init_model on the test split",
}
#: the starts the held-out task is learnt from (``run`` of curves/heldout.csv)
STARTS = {"single": "from scratch", "mtl": "from the MTL model", "mtml": "from the MTML model",
          "mtml_compute": "from MTML at MTL's compute", "meta_test": "from init_model"}
TARGETS = ("delta_p", "delta_m", "steps_to_target")

#: Published numbers, each shown only beside a run of its own setting. Auto-Lambda's benchmark table
#: (Liu et al. 2022, github.com/lorenmt/auto-lambda README, "Benchmark"; Split architecture, ResNet-50 trained
#: from scratch, mean of 3 seeds): NYUv2 13 classes, 3 tasks, 288x384; its Delta MTL averages one metric per
#: task (mIoU, depth absolute error, mean angle; utils.py, TaskMetric.compute_metric).
ANCHORS: dict[str, dict[str, Any]] = {
    "auto_lambda_nyuv2_13": {
        "source": "Liu et al. 2022 (Auto-Lambda), github.com/lorenmt/auto-lambda README: Split, ResNet-50 "
                  "from scratch, 3 seeds",
        "setting": {"dataset": "nyuv2_13", "synthetic": False, "tasks": ["seg", "depth", "normals"]},
        "delta": {"seg": "miou", "depth": "abs_err", "normals": "mean"},
        "rows": {  # seg mIoU %, depth abs err m, normals mean angle deg, Delta MTL %
            "Single-task": (43.37, 0.5224, 22.40, 0.0),
            "Equal weighting": (44.64, 0.4332, 24.48, 3.57),
            "Uncertainty (Kendall)": (45.98, 0.4126, 24.09, 6.50),
            "Auto-Lambda": (47.17, 0.4097, 23.68, 8.21),
        },
    },
}


def split_key(key: str) -> tuple[str, str, str] | None:
    """``"mtml_adapted_seg_miou"`` -> ``("mtml_adapted", "seg", "miou")``; None for other keys."""
    for row in sorted(ROWS, key=len, reverse=True):
        if key.startswith(row + "_"):
            rest = key[len(row) + 1:]
            task, _, metric = rest.partition("_")
            if task in TASKS and metric:
                return row, task, metric
            return None
    return None


def _column_order(col: str) -> tuple:
    if col in TARGETS:
        return (len(TASKS), TARGETS.index(col), "")
    task, _, metric = col.partition("_")
    known = list(DENSE_METRICS[task])
    return (TASKS.index(task), known.index(metric) if metric in known else len(known), metric)


def mtml_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Rows = the rows present (single, mtl, mtl_adapted, mtml, mtml_adapted, ...), columns =
    ``{task}_{metric}`` (tasks and metrics in :data:`nbmodule.metrics.DENSE_METRICS` order), then
    ``delta_p``, ``delta_m`` and ``steps_to_target`` where written. Missing entries are NaN."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = split_key(key)
        if parts is not None:
            rows.setdefault(parts[0], {})[f"{parts[1]}_{parts[2]}"] = _num(value)
    for row in list(rows):
        for target in TARGETS:
            if f"{row}_{target}" in metrics:
                rows[row][target] = _num(metrics[f"{row}_{target}"])
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame.from_dict(rows, orient="index")
    df = df[sorted(df.columns, key=_column_order)]
    df = df.loc[[r for r in ROWS if r in df.index]]
    df.index.name = "row"
    return df


def budget_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """What each trained row got: optimiser steps, inner steps, images drawn, forward+backward image passes
    (the compute; single: summed over its per-task models), the training rate kept on validation, adaptation
    steps k of the ``_adapted`` rows, training seconds (every rate of the grid)."""
    cols = {"optimizer_steps": "optimiser steps", "inner_steps": "inner SGD steps",
            "train_images": "images drawn", "image_passes": "image passes (fwd+bwd)", "lr": "rate (val)",
            "adapted_steps": "k (adapted rows)", "train_s": "training s"}
    data = {row: {label: metrics.get(f"{row}_{key}") for key, label in cols.items()}
            for row in ("single", "mtl", "mtml", "mtml_compute") if any(f"{row}_{key}" in metrics for key in cols)}
    return pd.DataFrame.from_dict(data, orient="index")


def seeds_table(summary: Mapping[str, Any], digits: int = 2) -> pd.DataFrame:
    """The rows of :func:`mtml_table` as "mean ± half-width" strings from a seeds summary
    (:func:`nbmodule.engines.mtml.summarize_seeds`: 95% intervals, Student's t), for the primary metric of each
    task (:data:`nbmodule.metrics.DELTA_M_METRICS`), Δm, Δp and steps to target; "(n of N)" marks a value
    that only some seeds have (a target not reached)."""
    from ..metrics import DELTA_M_METRICS

    n_seeds = summary.get("n_seeds")
    cols = [f"{t}_{m}" for t, m in DELTA_M_METRICS.items()] + ["delta_m", "delta_p", "steps_to_target"]
    data: dict[str, dict[str, str]] = {}
    for row in ROWS:
        cells = {}
        for col in cols:
            key = f"{row}_{col}"
            if key not in summary:
                continue
            mean, half, n = summary[key], summary.get(f"{key}_ci95"), summary.get(f"{key}_n")
            text = "–" if mean is None else f"{mean:.{digits}f}" + ("" if half is None else f" ± {half:.{digits}f}")
            if n is not None and n_seeds is not None and n < n_seeds:
                text += f" ({n} of {n_seeds})"
            cells[col] = text
        if cells:
            data[row] = cells
    df = pd.DataFrame.from_dict(data, orient="index")
    return df[[c for c in cols if c in df.columns]]


def _config(run: str | Path) -> dict[str, Any]:
    path = Path(run) / "config.json"
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("config") or {})
    except (json.JSONDecodeError, AttributeError):
        return {}


def _same_setting(config: Mapping[str, Any], setting: Mapping[str, Any]) -> bool:
    for key, want in setting.items():
        have = config.get(key)
        if key == "tasks":
            if sorted(have or []) != sorted(want):
                return False
        elif have != want:
            return False
    return True


def anchors_table(run: str | Path) -> tuple[pd.DataFrame | None, str]:
    """The published numbers of this run's setting beside this run's own, with the source, or ``(None, why)``.

    This run's rows are re-scored with the anchor's own Δ definition (its metric per task) against this
    run's single-task models, so the Δ column compares like with like."""
    config, metrics = _config(run), read_metrics(run)
    for name, anchor in ANCHORS.items():
        if not _same_setting(config, anchor["setting"]):
            continue
        which = anchor["delta"]
        tasks = list(which)
        cols = [f"{t}_{which[t]}" for t in tasks] + ["delta"]
        rows = {f"{label} (published)": dict(zip(cols, values)) for label, values in anchor["rows"].items()}
        table = mtml_table(metrics)
        if "single" in table.index:
            base = {t: {which[t]: table.loc["single"].get(f"{t}_{which[t]}")} for t in tasks}
            for row in table.index:
                vals = {c: table.loc[row].get(c) for c in cols[:-1]}
                res = {t: {which[t]: vals[f"{t}_{which[t]}"]} for t in tasks}
                try:
                    vals["delta"] = 0.0 if row == "single" else delta_m(res, base, which)
                except ValueError:
                    vals["delta"] = float("nan")
                rows[f"this run: {row}"] = vals
        return pd.DataFrame.from_dict(rows, orient="index"), anchor["source"]
    want = "; ".join(f"{n}: {a['setting']}" for n, a in ANCHORS.items())
    return None, (f"no published anchor has this run's setting (dataset {config.get('dataset')!r}, synthetic "
                  f"{config.get('synthetic')}, tasks {config.get('tasks')}); anchors exist for {want}")


def plot_mtml_table(run_dir: str | Path) -> Figure | None:
    """Every task's test metrics per row with Δp, Δm and steps to target, as an annotated table coloured per
    column (darker = better, whichever way the column points)."""
    table = mtml_table(read_metrics(run_dir))
    if table.empty:
        return None
    import seaborn as sns

    span = (table.max() - table.min()).replace(0, 1)
    good = (table - table.min()) / span
    for col in table.columns:
        task, _, metric = col.partition("_")
        lower = DENSE_METRICS[task].get(metric, lower_is_better(col)) if task in DENSE_METRICS else \
            col == "steps_to_target"
        if lower:
            good[col] = 1 - good[col]
    labels = np.vectorize(lambda v: "–" if np.isnan(v) else f"{v:.3g}")(table.to_numpy(dtype=float))
    fig, ax = new_figure(max(6.0, 0.8 * table.shape[1] + 1.5), 0.55 * table.shape[0] + 1.9)
    sns.heatmap(good.astype(float).fillna(0.0), ax=ax, annot=labels, fmt="", cmap="Greens", cbar=False,
                linewidths=0.5, vmin=-0.3, vmax=1.3, annot_kws={"fontsize": 7})
    names = {"delta_m": "Δm %", "delta_p": "Δp %", "steps_to_target": "steps to\ntarget"}
    ax.set_xticklabels([names.get(c, c.replace("_", "\n", 1)) for c in table.columns], fontsize=6, rotation=0)
    ax.set_yticklabels(table.index, rotation=0, fontsize=8)
    ax.set_ylabel("")
    ax.set_title("test metrics per row (darker = better in its column); Δ over the training tasks vs single-task",
                 fontsize=8)
    return fig


def read_heldout(run_dir: str | Path) -> tuple[pd.DataFrame, str] | None:
    """The held-out curves the engine kept (``curves/heldout.csv``, rows with ``selected`` = 1 when the column
    exists) and the column to plot: ``test_<metric>``, or ``val_<metric>`` in a file without test scores."""
    path = Path(run_dir) / "curves" / "heldout.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    if df.empty or "step" not in df.columns or "run" not in df.columns:
        return None
    if "selected" in df.columns:
        df = df[df["selected"] == 1]
    cols = [c for c in df.columns if c.startswith("test_")] or [c for c in df.columns if c.startswith("val_")]
    return (df, cols[0]) if cols else None


def plot_mtml_heldout(run_dir: str | Path) -> Figure | None:
    """The held-out task's test metric against its learning steps from each start (the learning rate each
    kept on validation), the from-scratch run's final value as a dashed line and each start's steps to
    reach it as a dotted line."""
    found = read_heldout(run_dir)
    if found is None:
        return None
    df, col = found
    m = read_metrics(run_dir)
    fig, ax = new_figure(6.5, 4.0)
    palette = run_palette(df["run"].unique())
    for start, g in df.groupby("run", sort=False):
        g = g.groupby("step", as_index=False)[col].mean()
        lr = m.get(f"{start}_finetune_lr")
        label = STARTS.get(start, start) + (f" (lr {lr:g})" if isinstance(lr, (int, float)) else "")
        ax.plot(g["step"], g[col], color=palette[start], label=label)
        steps = _num(m.get(f"{start}_steps_to_target"))
        if not np.isnan(steps):
            ax.axvline(steps, color=palette[start], linestyle=":", linewidth=1.2)
    target = _num(m.get("heldout_target"))
    if not np.isnan(target):
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label="from scratch, final")
    ax.set_xlabel("steps learning the held-out task")
    split = "test" if col.startswith("test_") else "validation"
    task = _config(run_dir).get("held_out") or "held-out task"
    ax.set_ylabel(f"{task} {col.split('_', 1)[1]} ({split})")
    ax.set_title("held-out task: same budget from each start; dotted = steps to the from-scratch result",
                 fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    return fig


def plot_train_curves(run_dir: str | Path) -> Figure | None:
    """Training loss of every phase (single-task models, MTL, MTML's mean query loss, the held-out runs)."""
    path = Path(run_dir) / "curves" / "train.csv"
    df = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if df.empty:
        return None
    fig, ax = new_figure(7.0, 4.0)
    for name, g in df.groupby("run", sort=False):
        ax.plot(g["step"], g["train_loss"], label=name, linewidth=1)
    ax.set_xlabel("step (MTML: outer step)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2, frameon=False)
    return fig


def plot_edges_pr(run_dir: str | Path) -> Figure | None:
    """The BSDS precision-recall curve of the edges of every row, with each row's ODS F."""
    path = Path(run_dir) / "curves" / "edges_pr.csv"
    df = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if df.empty:
        return None
    m = read_metrics(run_dir)
    fig, ax = new_figure(5.0, 4.5)
    palette = run_palette(df["run"].unique())
    for row, g in df.groupby("run", sort=False):
        ods = _num(m.get(f"{row}_edges_ods_f"))
        ax.plot(g["recall"], g["precision"], color=palette[row], label=f"{row} (ODS F {ods:.1f})")
    f = np.linspace(0.1, 0.9, 9)
    r = np.linspace(0.01, 1, 200)
    for fv in f:  # iso-F curves, as in the BSDS plots
        p = fv * r / (2 * r - fv)
        ok = (p > 0) & (p <= 1)
        ax.plot(r[ok], p[ok], color="lightgray", linewidth=0.6, zorder=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("edges, BSDS protocol (max_dist 0.011, 99 thresholds)", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    return fig


def _show(ax, task: str, x, num_classes: int) -> None:
    x = np.asarray(x)
    if task == "image":
        ax.imshow(np.clip(np.moveaxis(x, 0, -1), 0, 1))
    elif task == "seg":
        x = np.where(x == 255, -1, x).astype(float)
        ax.imshow(np.ma.masked_less(x, 0), cmap="tab20", vmin=0, vmax=max(num_classes - 1, 1),
                  interpolation="nearest")
    elif task == "depth":
        ax.imshow(x[0], cmap="viridis")
    elif task == "normals":
        n = x / np.maximum(np.linalg.norm(x, axis=0, keepdims=True), 1e-6)
        ax.imshow(np.moveaxis((n + 1) / 2, 0, -1))
    elif task == "edges":
        ax.imshow(x[0], cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_examples(run_dir: str | Path, index: int = 0) -> Figure | None:
    """One test image: rows = ground truth and each row's prediction, columns = image and the tasks."""
    path = Path(run_dir) / "examples.pt"
    if not path.is_file():
        return None
    ex = RunDir(run_dir).load_tensors("examples.pt")  # weights_only=True
    tasks = ex["tasks"]
    who = [r for r in ROWS if r in ex["preds"]]
    b = ex["batch"]
    if index >= len(b["image"]):
        return None
    num_classes = int(max([int(b["seg"].max()) + 1 if "seg" in b and (b["seg"] < 255).any() else 1]
                          + [int(p["seg"].max()) + 1 for p in ex["preds"].values() if "seg" in p]))
    fig = Figure(figsize=(2.0 * (len(tasks) + 1), 1.7 * (len(who) + 1)), layout="constrained")
    axes = fig.subplots(len(who) + 1, len(tasks) + 1, squeeze=False)
    for r, name in enumerate(["ground truth", *who]):
        _show(axes[r, 0], "image", b["image"][index], num_classes)
        axes[r, 0].set_ylabel(name, fontsize=8)
        for c, t in enumerate(tasks, start=1):
            val = b[t][index] if r == 0 else (ex["preds"][name][t][index] if t in ex["preds"][name] else None)
            if val is None:
                axes[r, c].axis("off")
                continue
            _show(axes[r, c], t, val, num_classes)
            if r == 0:
                axes[r, c].set_title(t, fontsize=9)
    return fig


#: Every figure of the study, saved by ``nbmodule.studies.execute`` into the run folder as ``<name>.png``.
FIGURES = (
    FigureSpec("mtml_table", plot_mtml_table, "metrics.json keys {row}_{task}_{metric}"),
    FigureSpec("mtml_heldout", plot_mtml_heldout, "curves/heldout.csv (a held-out task)"),
    FigureSpec("train_curves", plot_train_curves, "curves/train.csv"),
    FigureSpec("edges_pr", plot_edges_pr, "curves/edges_pr.csv (edges among the tasks)"),
    FigureSpec("examples", when_present(plot_examples, "examples.pt"), "examples.pt"),
)
