"""Figures and tables of the sequential replay study (notebook 02), drawn from its run folder only.

Reads ``curves/loss.csv``, ``curves/stage_metrics.csv``, ``stage_table.csv``, ``metrics.json`` and
``examples.pt`` as written by :mod:`nbmodule.engines.replay`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..runs import read_metrics

__all__ = ["stage_table", "drop_table", "plot_drops", "plot_loss_curves", "plot_metric_evolution", "plot_examples",
           "FORGETTING_LIMIT_PCT"]

FORGETTING_LIMIT_PCT = 5.0
_TASK_METRIC = {"seg": "seg_miou", "det": "det_map", "cls": "cls_top1"}
_STAGE_TASK = {1: "seg", 2: "det", 3: "cls"}


def _runs_order(runs) -> list[str]:
    return sorted(set(runs), key=lambda r: (r != "replay", r.startswith("alone"), r))


def stage_table(run_dir: str | Path) -> pd.DataFrame:
    """``stage_table.csv``: one row per (run, after-stage), one column per task metric (NaN = not learned)."""
    return pd.read_csv(Path(run_dir) / "stage_table.csv")


def drop_table(run_dir: str | Path) -> pd.DataFrame:
    """Per sequential run and task: metric at the end of its own stage, final metric, drop in % and points,
    and whether the drop is within the 5% limit."""
    m = read_metrics(run_dir)
    table = stage_table(run_dir)
    rows = []
    for run in _runs_order(table["run"]):
        prefix = "" if run == "replay" else f"{run}_"
        for k, (task, metric) in enumerate(_TASK_METRIC.items(), start=1):
            own = m.get(f"{prefix}stage{k}_{metric}")
            rel = m.get(f"{prefix}{task}_drop_pct")
            rows.append({"run": run, "task": task, "metric": metric, "end_of_own_stage": own,
                         "final": m.get(f"{prefix}{metric}"), "drop_pct": rel,
                         "drop_points": m.get(f"{prefix}{task}_drop_abs"),
                         "within_5pct": None if rel is None else bool(rel <= FORGETTING_LIMIT_PCT)})
    return pd.DataFrame(rows)


def plot_loss_curves(run_dir: str | Path) -> Figure:
    """Training loss per run over global steps, coloured by stage (task), with the replay/LwF term dashed."""
    df = pd.read_csv(Path(run_dir) / "curves" / "loss.csv")
    seq = [r for r in _runs_order(df["run"]) if not r.startswith("alone")]
    alone = [r for r in _runs_order(df["run"]) if r.startswith("alone")]
    panels = seq + (["alone"] if alone else [])
    fig = Figure(figsize=(4.2 * len(panels), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    colours = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}
    for ax, panel in zip(axes, panels):
        if panel == "alone":
            for run in alone:
                g = df[df["run"] == run]
                ax.plot(g["step"], g["task_loss"], marker="o", markersize=2, label=run)
            ax.set_title("each task alone", fontsize=10)
        else:
            g = df[df["run"] == panel]
            for stage, gs in g.groupby("stage"):
                ax.plot(gs["step"], gs["task_loss"], color=colours.get(int(stage)), marker="o", markersize=2,
                        label=f"stage {int(stage)}: {_STAGE_TASK.get(int(stage))}")
                if (gs["extra_loss"] > 0).any():
                    ax.plot(gs["step"], gs["extra_loss"], color=colours.get(int(stage)), linestyle="--",
                            label=f"stage {int(stage)}: replay/LwF term")
            ax.set_title(f"{panel}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("training loss")
    return fig


def plot_metric_evolution(run_dir: str | Path) -> Figure:
    """Each task's validation metric after every stage, one line per sequential run; alone runs dashed."""
    df = pd.read_csv(Path(run_dir) / "curves" / "stage_metrics.csv")
    metrics = ["seg_miou", "det_map", "det_map50", "cls_top1"]
    fig = Figure(figsize=(3.4 * len(metrics), 3.0), layout="constrained")
    axes = fig.subplots(1, len(metrics))
    for ax, metric in zip(axes, metrics):
        for run in _runs_order(df["run"]):
            g = df[df["run"] == run].dropna(subset=[metric])
            if g.empty:
                continue
            if run.startswith("alone"):
                ax.axhline(float(g[metric].iloc[-1]), color="k", linestyle=":", linewidth=1, label="trained alone")
            else:
                ax.plot(g["stage"], g[metric], marker="o", label=run)
        ax.set_xticks([1, 2, 3], ["after seg", "after det", "after cls"], fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def plot_examples(run_dir: str | Path, max_images: int = 3) -> Figure:
    """Validation images with truth and prediction: masks (segmentation), boxes (detection), labels."""
    ex = torch.load(Path(run_dir) / "examples.pt", weights_only=False)
    from matplotlib import colormaps

    n = min(max_images, min(len(ex[t]["images"]) for t in ("seg", "det", "cls") if t in ex))
    fig = Figure(figsize=(2.6 * n * 2, 2.6 * 3), layout="constrained")
    axes = fig.subplots(3, 2 * n)
    for ax in axes.ravel():
        ax.axis("off")
    names = ex.get("classes", {})
    cmap = colormaps["tab20"].resampled(21)

    def colour_mask(mask: torch.Tensor) -> np.ndarray:
        m = mask.numpy().astype(int)
        rgb = cmap(np.clip(m, 0, 20))[..., :3]
        rgb[m == 0] = 0
        rgb[m == 255] = 1.0  # ignore = white
        return rgb

    for i in range(n):
        if "seg" in ex:
            img = ex["seg"]["images"][i].permute(1, 2, 0).numpy()
            axes[0, 2 * i].imshow(img)
            axes[0, 2 * i].imshow(colour_mask(ex["seg"]["true_mask"][i]), alpha=0.45)
            axes[0, 2 * i].set_title("seg: truth", fontsize=8)
            axes[0, 2 * i + 1].imshow(img)
            axes[0, 2 * i + 1].imshow(colour_mask(ex["seg"]["pred_mask"][i]), alpha=0.45)
            axes[0, 2 * i + 1].set_title("seg: prediction", fontsize=8)
        if "det" in ex:
            d = ex["det"]
            det_names = names.get("det", [])
            for j, (title, boxes, labels, scores, colour) in enumerate((
                    ("det: truth", d["true_boxes"][i], d["true_labels"][i], None, "lime"),
                    ("det: prediction (score>0.3)", d["pred"][i]["boxes"], d["pred"][i]["labels"],
                     d["pred"][i]["scores"], "red"))):
                ax = axes[1, 2 * i + j]
                ax.imshow(d["images"][i].permute(1, 2, 0).numpy())
                keep = range(len(boxes)) if scores is None else [k for k in range(len(boxes)) if scores[k] > 0.3]
                for k in keep:
                    x1, y1, x2, y2 = boxes[k].tolist()
                    ax.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
                        (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
                    lab = int(labels[k])
                    text = det_names[lab] if lab < len(det_names) else str(lab)
                    if scores is not None:
                        text += f" {float(scores[k]):.2f}"
                    ax.text(x1, y1, text, fontsize=6, color="white", backgroundcolor=colour, va="bottom")
                ax.set_title(title, fontsize=8)
        if "cls" in ex:
            c = ex["cls"]
            cls_names = names.get("cls", [])
            t, p = int(c["true_label"][i]), int(c["pred_label"][i])
            ax = axes[2, 2 * i]
            ax.imshow(c["images"][i].permute(1, 2, 0).numpy())
            lt = cls_names[t] if t < len(cls_names) else t
            lp = cls_names[p] if p < len(cls_names) else p
            ax.set_title(f"cls: truth {lt}\npred {lp} ({float(c['pred_prob'][i]):.2f})", fontsize=8,
                         color="green" if t == p else "red")
    return fig


def plot_drops(run_dir: str | Path) -> Figure:
    """Forgetting per task (relative %, end of own stage -> end of training) for every sequential run,
    against the 5% limit; bar labels give the absolute drop in points too."""
    d = drop_table(run_dir)
    d = d[d["task"] != "cls"]  # the last task cannot be forgotten: its own stage is the end of training
    runs = _runs_order(d["run"])
    tasks = list(dict.fromkeys(d["task"]))
    fig = Figure(figsize=(1.8 + 1.6 * len(tasks) * len(runs) / 2, 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        g = d[d["run"] == run].set_index("task").reindex(tasks)
        vals = g["drop_pct"].astype(float).to_numpy()
        bars = ax.bar(np.arange(len(tasks)) + (i - (len(runs) - 1) / 2) * width, vals, width, label=run)
        ax.bar_label(bars, labels=[f"{v:.1f}%\n({p:.1f} pts)" if np.isfinite(v) else "n/a"
                                   for v, p in zip(vals, g["drop_points"].astype(float))], fontsize=7)
    ax.axhline(FORGETTING_LIMIT_PCT, color="tab:red", linestyle="--", linewidth=1, label="5% limit")
    ax.set_xticks(np.arange(len(tasks)), [f"{t} ({_TASK_METRIC[t]})" for t in tasks])
    ax.set_ylabel("drop from own stage, %")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig
