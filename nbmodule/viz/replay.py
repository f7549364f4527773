"""Figures and tables of the sequential replay study (notebook 02), drawn from its run folder only.

Reads what :mod:`nbmodule.engines.replay` writes (``stage_table.csv``, ``curves/loss.csv``,
``curves/stage_metrics.csv``, ``metrics.json``, ``examples.pt``), in that layout only. The tasks, their
metrics, the forgetting computation and the 5% limit are the engine's own definitions
(:mod:`nbmodule.engines.replay.protocol`), so a table here and a number in ``metrics.json`` cannot disagree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..engines.replay.protocol import FORGETTING_LIMIT_PCT, METRICS, TASK_METRIC, TASKS, forgetting
from ..runs import RunDir
from .plots import FigureSpec, new_figure, when_present

__all__ = ["stage_table", "read_stage_table", "drop_table", "summary_table", "data_table", "data_banner",
           "model_summary", "plot_loss_curves",
           "plot_metric_evolution", "plot_examples", "plot_replay_stages", "plot_replay_forgetting", "FIGURES",
           "FORGETTING_LIMIT_PCT"]

_STAGE_NUMBER = {task: k for k, task in enumerate(TASKS, start=1)}
_VARIANTS = (("replay", "replay", "tab:blue"), ("lwf", "LwF", "tab:purple"), ("noreplay", "no replay", "tab:gray"))


def _runs_order(runs) -> list[str]:
    return sorted(set(runs), key=lambda r: (r != "replay", r.startswith("alone"), r))


def stage_table(run_dir: str | Path) -> pd.DataFrame:
    """``stage_table.csv`` as written by the engine: columns ``run``, ``stage`` (seg|det|cls: after that stage)
    and task metrics (NaN: not learned yet). Any other layout is an error naming the file."""
    path = Path(run_dir) / "stage_table.csv"
    df = pd.read_csv(path)
    metrics = [c for c in df.columns if c not in ("run", "stage")]
    if list(df.columns[:2]) != ["run", "stage"] or not metrics or set(metrics) - set(METRICS):
        raise ValueError(f"{path}: columns {list(df.columns)}; the replay engine writes run, stage, "
                         f"{', '.join(METRICS)}")
    unknown = set(df["stage"]) - set(TASKS)
    if unknown:
        raise ValueError(f"{path}: stage values {sorted(map(str, unknown))}; expected {', '.join(TASKS)}")
    df["run"] = df["run"].astype(str)
    return df


def read_stage_table(run_dir: str | Path) -> pd.DataFrame | None:
    """:func:`stage_table` in long form (columns ``run, stage, task, value``; ``task`` is the metric's name),
    or None when the run folder has none."""
    if not (Path(run_dir) / "stage_table.csv").is_file():
        return None
    df = stage_table(run_dir)
    return df.melt(id_vars=["run", "stage"], var_name="task", value_name="value")


def drop_table(run_dir: str | Path) -> pd.DataFrame | None:
    """Forgetting per sequential run and task, from ``stage_table.csv``: the task's metric at the end of its
    own stage, at the end of training, the relative drop (%), the absolute drop (percentage points) and
    whether it is within the 5% limit. The same computation as the engine's ``{task}_drop_pct``."""
    if not (Path(run_dir) / "stage_table.csv").is_file():
        return None
    df = stage_table(run_dir)
    rows = []
    for run in _runs_order(df["run"]):
        if run.startswith("alone"):  # trained alone: nothing to forget
            continue
        g = df[df["run"] == run].set_index("stage")
        for task, metric in TASK_METRIC.items():
            if metric not in g.columns or task not in g.index:
                continue
            own = float(g.at[task, metric])
            final = float(g.at[TASKS[-1], metric]) if TASKS[-1] in g.index else np.nan
            rel, points = forgetting(own, final)
            rows.append({"run": run, "task": task, "metric": metric, "end_of_own_stage": own, "final": final,
                         "drop_pct": rel, "drop_points": points,
                         "within_limit": bool(rel <= FORGETTING_LIMIT_PCT) if np.isfinite(rel) else None})
    return pd.DataFrame(rows)


def summary_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per run of ``metrics.json``: its final metrics and mean forgetting of the earlier tasks."""
    rows = []
    for run, prefix in (("replay", ""), ("noreplay", "noreplay_"), ("lwf", "lwf_"), ("alone", "alone_")):
        if all(f"{prefix}{m}" not in metrics for m in METRICS):
            continue
        row = {"run": run, **{m: metrics.get(f"{prefix}{m}") for m in METRICS}}
        row["mean_drop_pct"] = None if run == "alone" else metrics.get(f"{prefix}mean_drop_pct")
        rows.append(row)
    return pd.DataFrame(rows)


def data_table(run_dir: str | Path) -> pd.DataFrame:
    """Where each task's data came from (``data.json``): dataset, real or synthetic, source, why, sizes."""
    data = RunDir(run_dir, create=False).read_json("data.json", {})
    return pd.DataFrame([{"task": t, "dataset": d["dataset"], "synthetic": d["synthetic"], "source": d["source"],
                          "train": d["train"], "val": d["val"], "classes": len(d["classes"]), "note": d["note"]}
                         for t, d in sorted(data.items(), key=lambda kv: TASKS.index(kv[0]))])


def data_banner(run_dir: str | Path) -> str:
    """One line per task that was trained on synthetic data (and why), or a line saying all data are real."""
    table = data_table(run_dir)
    if table.empty:
        return f"{run_dir}: no data.json"
    synthetic = table[table["synthetic"]]
    if synthetic.empty:
        return "REAL DATA: " + "; ".join(f"{r.task}: {r.dataset} from {r.source}" for r in table.itertuples())
    return "\n".join(f"SYNTHETIC DATA for {r.task} ({r.dataset}): {r.note}. Metrics of this task measure the "
                     "pipeline on shapes, not performance on the real dataset." for r in synthetic.itertuples())


def model_summary(run_dir: str | Path) -> str:
    """Backbone, where its weights came from, precision, parameters and latency (``weights.json``, metrics)."""
    run = RunDir(run_dir, create=False)
    w, m = run.read_json("weights.json", {}), run.metrics
    lat = w.get("latency", {})
    return (f"{w.get('backbone')}: weights {w.get('weights')}; training precision {w.get('precision')}; "
            f"{m.get('params', 0):,} parameters (all counted; limit 8M); latency {m.get('latency_ms', float('nan')):.1f} ms "
            f"per {lat.get('resolution')} image (batch 1, {w.get('latency_precision')}, median of "
            f"{lat.get('repeats')} on {lat.get('device')})")


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
                        label=f"stage {int(stage)}: {TASKS[int(stage) - 1]}")
                if (gs["extra_loss"] > 0).any():
                    ax.plot(gs["step"], gs["extra_loss"], color=colours.get(int(stage)), linestyle="--",
                            label=f"stage {int(stage)}: replay/LwF term")
            ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("training loss")
    return fig


def plot_metric_evolution(run_dir: str | Path) -> Figure:
    """Each task's validation metric after every stage, one line per sequential run; alone runs dotted."""
    df = pd.read_csv(Path(run_dir) / "curves" / "stage_metrics.csv")
    fig = Figure(figsize=(3.4 * len(METRICS), 3.0), layout="constrained")
    axes = fig.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS):
        for run in _runs_order(df["run"]):
            g = df[df["run"] == run].dropna(subset=[metric])
            if g.empty:
                continue
            if run.startswith("alone"):
                ax.axhline(float(g[metric].iloc[-1]), color="k", linestyle=":", linewidth=1, label="trained alone")
            else:
                ax.plot(g["stage"], g[metric], marker="o", label=run)
        ax.set_xticks(list(_STAGE_NUMBER.values()), [f"after {t}" for t in TASKS], fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def plot_examples(run_dir: str | Path, max_images: int = 3) -> Figure:
    """Validation images with truth and prediction: masks (segmentation), boxes (detection), labels.

    ``examples.pt`` is loaded with ``weights_only=True``: a run folder from elsewhere cannot run code."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    ex = RunDir(run_dir, create=False).load_tensors("examples.pt")
    n = min(max_images, min(len(ex[t]["images"]) for t in TASKS if t in ex))
    fig = Figure(figsize=(2.6 * n * 2, 2.6 * 3), layout="constrained")
    axes = fig.subplots(3, 2 * n, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    names = ex.get("classes", {})
    cmap = colormaps["tab20"].resampled(21)

    def colour_mask(mask) -> np.ndarray:
        m = mask.numpy().astype(int)
        rgb = cmap(np.clip(m, 0, 20))[..., :3]
        rgb[m == 0] = 0
        rgb[m == 255] = 1.0  # ignore = white
        return rgb

    for i in range(n):
        if "seg" in ex:
            img = ex["seg"]["images"][i].permute(1, 2, 0).numpy()
            for j, (key, title) in enumerate((("true_mask", "seg: truth"), ("pred_mask", "seg: prediction"))):
                axes[0, 2 * i + j].imshow(img)
                axes[0, 2 * i + j].imshow(colour_mask(ex["seg"][key][i]), alpha=0.45)
                axes[0, 2 * i + j].set_title(title, fontsize=8)
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
                    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
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


def _heatmap(ax, table: pd.DataFrame, fmt: str, cmap: str, norm) -> Any:
    """An annotated heatmap of ``table`` (rows x columns) on ``ax``; NaN cells stay blank."""
    values = table.to_numpy(dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            r, g, b, _ = image.cmap(image.norm(v))
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8,
                    color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    ax.set_xticks(range(values.shape[1]), list(table.columns), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]), list(table.index), fontsize=8)
    return image


def plot_replay_stages(run_dir: str | Path) -> Figure | None:
    """Stage-by-task metric table per sequential run as heatmaps, and the forgetting of every earlier task."""
    from matplotlib.colors import Normalize, TwoSlopeNorm

    long = read_stage_table(run_dir)
    if long is None:
        return None
    long = long[~long["run"].str.startswith("alone")].dropna(subset=["value"])
    if long.empty:
        return None
    runs = _runs_order(long["run"])
    metrics = [m for m in METRICS if m in set(long["task"])]
    fig, axes = new_figure(4.2 * (len(runs) + 1), 0.9 + 0.55 * max(len(TASKS), len(runs)) + 1.2,
                           ncols=len(runs) + 1)
    axes = np.atleast_1d(axes)
    scale = Normalize(float(long["value"].min()), float(long["value"].max()))  # one scale for all runs: comparable
    for ax, run in zip(axes, runs):
        table = long[long["run"] == run].pivot_table(index="stage", columns="task", values="value", aggfunc="mean")
        table = table.reindex(index=[s for s in TASKS if s in table.index], columns=metrics)
        _heatmap(ax, table, ".3g", "viridis", scale)
        ax.set_title(f"{run}: metric after each stage", fontsize=10)
        ax.set_xlabel("task metric")
        ax.set_ylabel("after stage")
    drops = drop_table(run_dir)
    drops = drops[drops["task"] != TASKS[-1]]  # the last task's own stage is the end of training
    drop = drops.pivot_table(index="run", columns="metric", values="drop_pct", dropna=False)
    drop = drop.reindex(index=runs, columns=[TASK_METRIC[t] for t in TASKS[:-1] if TASK_METRIC[t] in drop.columns])
    # Centred on the limit: green within it, red beyond; saturates at 4x the limit so small drops stay visible.
    lim = FORGETTING_LIMIT_PCT
    image = _heatmap(axes[-1], drop, ".1f", "RdYlGn_r", TwoSlopeNorm(vcenter=lim, vmin=-2 * lim, vmax=4 * lim))
    fig.colorbar(image, ax=axes[-1], label="drop from own stage, % (relative)")
    axes[-1].set_title(f"forgetting, % (limit {lim:g}%)", fontsize=10)
    axes[-1].set_xlabel("task metric")
    return fig


def plot_replay_forgetting(run_dir: str | Path) -> Figure | None:
    """Final metric per task and forgetting of the earlier tasks (relative %, with the absolute drop in
    points as bar labels) for replay, LwF and no replay, against the 5% limit."""
    drops = drop_table(run_dir)
    if drops is None or drops.empty:
        return None
    tasks = [t for t in TASKS if t in set(drops["task"])]
    earlier = [t for t in tasks if t != TASKS[-1]]
    variants = [v for v in _VARIANTS if v[0] in set(drops["run"])]
    fig, (ax_f, ax_d) = new_figure(10, 3.6, ncols=2)
    width = 0.8 / len(variants)
    for i, (run, label, colour) in enumerate(variants):
        g = drops[drops["run"] == run].set_index("task")
        offset = (i - (len(variants) - 1) / 2) * width
        finals = g.reindex(tasks)["final"].astype(float).to_numpy()
        ax_f.bar(np.arange(len(tasks)) + offset, finals, width, label=label, color=colour)
        rel = g.reindex(earlier)["drop_pct"].astype(float).to_numpy()
        pts = g.reindex(earlier)["drop_points"].astype(float).to_numpy()
        bars = ax_d.bar(np.arange(len(earlier)) + offset, np.nan_to_num(rel), width, label=label, color=colour)
        ax_d.bar_label(bars, labels=[f"{r:.1f}%\n({p:.1f} pts)" if np.isfinite(r) else "n/a"
                                     for r, p in zip(rel, pts)], fontsize=7)
    ax_d.axhline(FORGETTING_LIMIT_PCT, color="tab:red", linestyle="--", linewidth=1,
                 label=f"{FORGETTING_LIMIT_PCT:g}% limit")
    ax_f.set_xticks(np.arange(len(tasks)), [TASK_METRIC[t] for t in tasks])
    ax_d.set_xticks(np.arange(len(earlier)), [f"{t} ({TASK_METRIC[t]})" for t in earlier])
    ax_f.set_title("final metric after the last stage", fontsize=10)
    ax_d.set_title("forgetting: drop from own stage, %", fontsize=10)
    for ax in (ax_f, ax_d):
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    return fig


#: Every figure of the study, saved by ``nbmodule.studies.execute`` into the run folder as ``<name>.png``.
FIGURES = (
    FigureSpec("stage_table", plot_replay_stages, "stage_table.csv"),
    FigureSpec("forgetting", plot_replay_forgetting, "stage_table.csv"),
    FigureSpec("loss_curves", when_present(plot_loss_curves, "curves/loss.csv"), "curves/loss.csv"),
    FigureSpec("metric_evolution", when_present(plot_metric_evolution, "curves/stage_metrics.csv"),
               "curves/stage_metrics.csv"),
    FigureSpec("examples", when_present(plot_examples, "examples.pt"), "examples.pt"),
)
