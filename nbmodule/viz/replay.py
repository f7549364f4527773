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
from .plots import FigureSpec, new_figure, num as _num, when_present
from .rundata import read_metrics_file

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


# --- moved from nbmodule/viz/studies.py (drawn by notebook 06) ------------------------------------
def read_stage_table(run_dir: str | Path) -> pd.DataFrame | None:
    """``stage_table.csv`` in long form: columns ``run, stage, task, value`` (``None`` when absent).

    Accepts the long layout (columns ``stage``, ``task`` and a value column: ``value`` or the one numeric
    column left) and the wide one (one row per stage, one column per task metric). ``run`` defaults to
    ``replay``. Stage order is kept as first seen.
    """
    path = Path(run_dir) / "stage_table.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    if df.empty or "stage" not in df.columns:
        return None
    if "run" not in df.columns:
        df["run"] = "replay"
    df["run"] = df["run"].astype(str)
    if "task" in df.columns:
        if "value" not in df.columns:
            nums = [c for c in df.columns if c not in ("run", "stage", "task", "seed")
                    and pd.api.types.is_numeric_dtype(df[c])]
            if not nums:
                return None
            df = df.rename(columns={nums[0]: "value"})
        if "metric" in df.columns:  # name the task by its metric: "seg (miou)"
            df["task"] = df["task"].astype(str) + " (" + df["metric"].astype(str) + ")"
        long = df[["run", "stage", "task", "value"]].copy()
    else:
        keep = [c for c in df.columns if c not in ("run", "stage", "seed") and pd.api.types.is_numeric_dtype(df[c])]
        long = df.melt(id_vars=["run", "stage"], value_vars=keep, var_name="task", value_name="value")
    long["stage"] = long["stage"].astype(str)
    long["task"] = long["task"].astype(str)
    return long


def _forgetting(long: pd.DataFrame) -> pd.DataFrame:
    """Per run and task: drop (percent, relative) from the first stage the task was measured to the last."""
    stages = list(dict.fromkeys(long["stage"]))
    rows = []
    for (run, task), g in long.dropna(subset=["value"]).groupby(["run", "task"], sort=False):
        g = g.assign(order=g["stage"].map(stages.index)).sort_values("order")
        own, last = float(g["value"].iloc[0]), float(g["value"].iloc[-1])
        drop = 100.0 * (own - last) / abs(own) if own else float("nan")
        rows.append({"run": run, "task": task, "own_stage": own, "final": last, "drop_pct": drop,
                     "drop_points": own - last})
    return pd.DataFrame(rows)


def plot_replay_stages(run_dir: str | Path) -> Figure | None:
    """Stage-by-task metric table per run as heatmaps, and the forgetting of every task as a heatmap."""
    long = read_stage_table(run_dir)
    if long is None or long.empty:
        return None
    import seaborn as sns

    long = long[~long["run"].str.startswith("alone")]  # single-task runs: nothing to forget
    if long.empty:
        return None
    runs = sorted(long["run"].unique(), key=lambda r: (r != "replay", r != "noreplay", r))
    stages = list(dict.fromkeys(long["stage"]))
    tasks = list(dict.fromkeys(long["task"]))
    fig, axes = new_figure(4.2 * (len(runs) + 1), 0.9 + 0.55 * max(len(stages), len(runs)) + 1.2,
                           ncols=len(runs) + 1)
    axes = np.atleast_1d(axes)
    vmin, vmax = float(long["value"].min()), float(long["value"].max())
    for ax, run in zip(axes, runs):
        table = long[long["run"] == run].pivot_table(index="stage", columns="task", values="value",
                                                     aggfunc="mean", sort=False)
        table = table.reindex(index=[s for s in stages if s in table.index], columns=tasks)
        sns.heatmap(table, ax=ax, annot=True, fmt=".3g", cmap="viridis", cbar=False, linewidths=0.5,
                    vmin=vmin, vmax=vmax, annot_kws={"fontsize": 8})  # one scale for all runs: comparable
        ax.set_title(f"{run}: metric after each stage", fontsize=10)
        ax.set_xlabel("task")
        ax.set_ylabel("after stage")
    forget = _forgetting(long)
    drop = forget.pivot_table(index="run", columns="task", values="drop_pct", sort=False)
    drop = drop.reindex(index=runs, columns=tasks)
    # Centred on the limit: green within it, red beyond; saturates at 4x the limit so small drops stay visible.
    lim = FORGETTING_LIMIT_PCT
    sns.heatmap(drop, ax=axes[-1], annot=True, fmt=".1f", cmap="RdYlGn_r", center=lim, vmin=-2 * lim, vmax=4 * lim,
                linewidths=0.5, cbar_kws={"label": "drop from own stage, % (relative)"}, annot_kws={"fontsize": 8})
    axes[-1].set_title(f"forgetting, % (limit {FORGETTING_LIMIT_PCT:g}%)", fontsize=10)
    axes[-1].set_xlabel("task")
    axes[-1].set_ylabel("")
    return fig


def plot_replay_forgetting(run_dir: str | Path) -> Figure | None:
    """Final metric and drop per task, replay against no replay, from ``metrics.json`` (5% limit drawn)."""
    m = read_metrics_file(run_dir)
    tasks = [t for t in _TASK_METRIC if f"{t}_drop_pct" in m or f"noreplay_{t}_drop_pct" in m]
    if not tasks:
        return None
    fig, (ax_f, ax_d) = new_figure(10, 3.6, ncols=2)
    variants = [(p, label, c) for p, label, c in (("", "replay", "tab:blue"), ("lwf_", "LwF", "tab:purple"),
                                                   ("noreplay_", "no replay", "tab:gray"))
                if any(f"{p}{t}_drop_pct" in m for t in tasks)]
    width = 0.8 / len(variants)
    pos = np.arange(len(tasks))
    for i, (prefix, label, color) in enumerate(variants):
        finals = [_num(m.get(f"{prefix}{_TASK_METRIC[t]}")) for t in tasks]
        drops = [_num(m.get(f"{prefix}{t}_drop_pct")) for t in tasks]
        offset = (i - (len(variants) - 1) / 2) * width
        ax_f.bar(pos + offset, finals, width, label=label, color=color)
        bars = ax_d.bar(pos + offset, drops, width, label=label, color=color)
        ax_d.bar_label(bars, fmt="%.1f", fontsize=7)
    ax_d.axhline(FORGETTING_LIMIT_PCT, color="tab:red", linestyle="--", linewidth=1, label=f"{FORGETTING_LIMIT_PCT:g}% limit")
    ax_f.set_xticks(pos, [_TASK_METRIC[t] for t in tasks])
    ax_d.set_xticks(pos, [f"{t}_drop_pct" for t in tasks])
    ax_f.set_title("final metric after the last stage", fontsize=10)
    ax_d.set_title("forgetting: drop from own stage, %", fontsize=10)
    extra = [f"{k}={m[k]:.4g}" for k in ("params", "latency_ms") if isinstance(m.get(k), (int, float))]
    if extra:
        ax_f.set_xlabel(", ".join(extra), fontsize=8)
    for ax in (ax_f, ax_d):
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    return fig


#: Every figure of the study, saved by ``nbmodule.studies.execute`` into the run folder as ``<name>.png``.
FIGURES = (
    FigureSpec("drops", when_present(plot_drops, "stage_table.csv"), "stage_table.csv"),
    FigureSpec("loss_curves", when_present(plot_loss_curves, "curves/loss.csv"), "curves/loss.csv"),
    FigureSpec("metric_evolution", when_present(plot_metric_evolution, "curves/stage_metrics.csv"),
               "curves/stage_metrics.csv"),
    FigureSpec("examples", when_present(plot_examples, "examples.pt"), "examples.pt"),
    FigureSpec("stage_table", plot_replay_stages, "stage_table.csv"),
    FigureSpec("forgetting", plot_replay_forgetting, "metrics.json keys {seg,det,cls}_drop_pct"),
)
