"""The figures of each study, drawn from its run folder alone (never from live training objects).

Every ``plot_*`` function takes a run folder (``<out>/<stem>/``) and returns a matplotlib ``Figure``, or
``None`` when the files it needs are absent (the caller says what is missing: see :data:`STUDIES`).
:func:`study_figures` draws all figures of one study and saves each as ``<NN>_<figure>.png`` into a
destination run folder (notebook 06's); :func:`show_study` does that and displays them in a notebook.

Inputs read, per study (the contracts of issues 3-6):

- 02 sequential replay: ``stage_table.csv`` (the metric of every task learned so far after every stage,
  for the replay run and the no-replay ablation) and ``metrics.json`` keys ``seg_miou det_map det_map50
  cls_top1 {seg,det,cls}_drop_pct``, the same with ``noreplay_``, ``params``, ``latency_ms``.
- 03 MTML: ``metrics.json`` keys ``{mode}_{task}_{metric}``, ``{mode}_delta_m``, ``{mode}_steps_to_target``
  and a held-out-task fine-tuning curve (``run`` = mode, x = ``step``).
- 04 MAML sampling: curves with ``run`` = regime (bands over seeds), a table with an ``amplitude`` column
  (test loss across the parameter space) and ``metrics.json`` keys ``{regime}_mse_1step``/``_mse_10step``.
- 05 MAML few-shot: ``metrics.json`` keys ``{dataset}_{n}way_{k}shot_acc`` and ``_ci95`` (percent) and
  ``omniglot_lake20_error``, drawn beside the MAML paper's numbers.
- benchmarks: ``benchmarks/results.json``, any nesting; entries named ``*ratio*``/``*speedup*`` are drawn.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..runs import RunDir
from .plots import draw_curves, figure_png, new_figure, run_palette
from .rundata import lower_is_better, metric_columns, read_curves, read_metrics_file, x_columns

__all__ = [
    "PAPER_FEWSHOT", "LAKE_REFERENCE", "FORGETTING_LIMIT_PCT", "MAML_REGIMES", "MTML_MODES", "MTML_TASKS",
    "read_stage_table", "plot_replay_stages", "plot_replay_forgetting",
    "plot_maml_curves", "read_parameter_space", "plot_maml_parameter_space", "plot_maml_final",
    "fewshot_table", "plot_fewshot", "plot_fewshot_curves",
    "mtml_table", "plot_mtml_heldout", "plot_mtml_table",
    "benchmark_ratios", "plot_benchmarks",
    "FigureSpec", "Study", "STUDIES", "StudyReport", "find_study_dir", "study_figures", "show_study",
]

#: MAML (Finn et al., 2017), Tables 1-2: test accuracy in percent and the 95% CI half-width.
PAPER_FEWSHOT: dict[tuple[str, int, int], tuple[float, float]] = {
    ("omniglot", 5, 1): (98.7, 0.4), ("omniglot", 5, 5): (99.9, 0.1),
    ("omniglot", 20, 1): (95.8, 0.3), ("omniglot", 20, 5): (98.9, 0.2),
    ("miniimagenet", 5, 1): (48.70, 1.84), ("miniimagenet", 5, 5): (63.11, 0.92),
}
#: Lake et al. (2015), the 20-run Omniglot one-shot benchmark: error rates in percent.
LAKE_REFERENCE = {"human": 4.5, "BPL": 3.3}
#: The replay study's limit on forgetting (relative drop from the end of a task's own stage, percent).
FORGETTING_LIMIT_PCT = 5.0
MAML_REGIMES = ("uniform", "epsilon_greedy", "weighted", "importance_weighted", "delta", "importance_delta")
MTML_MODES = ("single", "mtl", "mtml")
MTML_TASKS = ("seg", "depth", "normals", "edges")
_REPLAY_TASKS = {"seg": "seg_miou", "det": "det_map", "cls": "cls_top1"}


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


# --- 02 sequential replay ---------------------------------------------------------------------------
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
    tasks = [t for t in _REPLAY_TASKS if f"{t}_drop_pct" in m or f"noreplay_{t}_drop_pct" in m]
    if not tasks:
        return None
    fig, (ax_f, ax_d) = new_figure(10, 3.6, ncols=2)
    variants = [(p, label, c) for p, label, c in (("", "replay", "tab:blue"), ("lwf_", "LwF", "tab:purple"),
                                                   ("noreplay_", "no replay", "tab:gray"))
                if any(f"{p}{t}_drop_pct" in m for t in tasks)]
    width = 0.8 / len(variants)
    pos = np.arange(len(tasks))
    for i, (prefix, label, color) in enumerate(variants):
        finals = [_num(m.get(f"{prefix}{_REPLAY_TASKS[t]}")) for t in tasks]
        drops = [_num(m.get(f"{prefix}{t}_drop_pct")) for t in tasks]
        offset = (i - (len(variants) - 1) / 2) * width
        ax_f.bar(pos + offset, finals, width, label=label, color=color)
        bars = ax_d.bar(pos + offset, drops, width, label=label, color=color)
        ax_d.bar_label(bars, fmt="%.1f", fontsize=7)
    ax_d.axhline(FORGETTING_LIMIT_PCT, color="tab:red", linestyle="--", linewidth=1, label=f"{FORGETTING_LIMIT_PCT:g}% limit")
    ax_f.set_xticks(pos, [_REPLAY_TASKS[t] for t in tasks])
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


# --- 04 MAML task-weighted sampling -----------------------------------------------------------------
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


def plot_maml_curves(run_dir: str | Path, max_panels: int = 4) -> Figure | None:
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
        order = [r for r in MAML_REGIMES if r in present] + sorted(present - set(MAML_REGIMES))
        draw_curves(ax, df, metric, x, runs=order, logy=bool(positive) and ("loss" in metric or "mse" in metric))
        ax.set_title(f"{name}: {metric}", fontsize=10)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def _find_table_with(run_dir: Path, column: str) -> pd.DataFrame | None:
    """The first CSV in the run folder (top level, then curves/) having ``column``."""
    for path in sorted(run_dir.glob("*.csv")) + sorted((run_dir / "curves").glob("*.csv")):
        try:
            head = pd.read_csv(path, nrows=0)
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        if column in head.columns:
            return pd.read_csv(path)
    return None


def read_parameter_space(run_dir: str | Path) -> pd.DataFrame | None:
    """Final test-grid losses per task: ``parameter_space.csv``, else built from ``grid_losses.json``
    (columns ``run, seed, amplitude, phase`` (degrees) [, ``frequency``], ``mse_0step, mse_1step, mse_<S>step``),
    else any CSV of the run folder with an ``amplitude`` column. ``None`` when there is none."""
    run_dir = Path(run_dir)
    path = run_dir / "parameter_space.csv"
    if path.is_file():
        return pd.read_csv(path)
    grid = read_metrics_file(run_dir / "grid_losses.json")
    if grid.get("params") and grid.get("losses"):
        names = list(grid.get("param_names") or ["amplitude", "phase", "frequency"][:len(grid["params"][0])])
        params = pd.DataFrame(grid["params"], columns=names)
        if "phase" in params:  # radians in this file, degrees in parameter_space.csv
            params["phase"] = np.degrees(params["phase"]).round(6)
        steps = sorted({0, 1, int(grid.get("steps") or 1)})
        frames = []
        for regime, by_seed in grid["losses"].items():
            for seed, losses in by_seed.items():
                arr = np.asarray(losses, dtype=float)  # (tasks, steps + 1)
                part = params.copy()
                part.insert(0, "seed", int(seed))
                part.insert(0, "run", regime)
                for k in steps:
                    if k < arr.shape[1]:
                        part[f"mse_{k}step"] = arr[:, k]
                frames.append(part)
        return pd.concat(frames, ignore_index=True) if frames else None
    return _find_table_with(run_dir, "amplitude")


def plot_maml_parameter_space(run_dir: str | Path) -> Figure | None:
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
        first = next((r for r in MAML_REGIMES if r in present), sorted(present)[0])  # uniform: the baseline
        grid = df[df["run"] == first].pivot_table(index="phase", columns="amplitude", values=metric, aggfunc="mean")
        ax2 = np.atleast_1d(axes)[1]
        mesh = ax2.pcolormesh(grid.columns.to_numpy(dtype=float), grid.index.to_numpy(dtype=float),
                              grid.to_numpy(dtype=float), cmap="magma", shading="nearest")
        fig.colorbar(mesh, ax=ax2, label=metric)
        ax2.set_xlabel("amplitude")
        ax2.set_ylabel("phase (degrees)")
        ax2.set_title(f"{first}: {metric} by amplitude and phase", fontsize=10)
    return fig


def plot_maml_final(run_dir: str | Path) -> Figure | None:
    """Final test MSE after 1 and 10 adaptation steps per regime (``{regime}_mse_{1,10}step``)."""
    m = read_metrics_file(run_dir)
    pat = re.compile(r"^(.+)_mse_(\d+)step$")
    rows = [(g.group(1), int(g.group(2)), _num(v), _num(m.get(f"{k}_ci95"))) for k, v in m.items()
            if (g := pat.match(k)) and not g.group(1).endswith("_heldout")]
    if not rows:
        return None
    df = pd.DataFrame(rows, columns=["regime", "steps", "mse", "ci95"])
    order = [r for r in MAML_REGIMES if r in set(df["regime"])] + sorted(set(df["regime"]) - set(MAML_REGIMES))
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


# --- 05 MAML few-shot -------------------------------------------------------------------------------
def fewshot_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Rows ``dataset, n_way, k_shot, acc, ci95, paper_acc, paper_ci95`` from ``{d}_{n}way_{k}shot_acc`` keys."""
    pat = re.compile(r"^([a-z0-9]+)_(\d+)way_(\d+)shot_acc$")
    rows = []
    for key, value in metrics.items():
        g = pat.match(key)
        if not g:
            continue
        ds, n, k = g.group(1), int(g.group(2)), int(g.group(3))
        paper = PAPER_FEWSHOT.get((ds, n, k), (float("nan"), float("nan")))
        rows.append({"dataset": ds, "n_way": n, "k_shot": k, "acc": _num(value),
                     "ci95": _num(metrics.get(f"{key}_ci95", metrics.get(key[:-4] + "_ci95"))),
                     "paper_acc": paper[0], "paper_ci95": paper[1]})
    df = pd.DataFrame(rows, columns=["dataset", "n_way", "k_shot", "acc", "ci95", "paper_acc", "paper_ci95"])
    return df.sort_values(["dataset", "n_way", "k_shot"], ignore_index=True)


def plot_fewshot(run_dir: str | Path) -> Figure | None:
    """Accuracy with its 95% CI beside the MAML paper's number for each setting run; and the Lake et al.
    one-shot error beside the human and BPL error rates when ``omniglot_lake20_error`` is present."""
    m = read_metrics_file(run_dir)
    table = fewshot_table(m)
    lake = _num(m.get("omniglot_lake20_error"))
    if table.empty and np.isnan(lake):
        return None
    has_lake = not np.isnan(lake)
    ncols = int(not table.empty) + int(has_lake)
    fig, axes = new_figure(7.0 if ncols == 1 else 11.0, 3.8, ncols=ncols,
                           gridspec_kw={"width_ratios": [3, 1.3]} if ncols == 2 else None)
    axes = list(np.atleast_1d(axes))
    if not table.empty:
        ax = axes.pop(0)
        labels = [f"{r.dataset}\n{r.n_way}-way {r.k_shot}-shot" for r in table.itertuples()]
        pos = np.arange(len(table))
        w = 0.38
        ours = ax.bar(pos - w / 2, table["acc"], w, yerr=table["ci95"].fillna(0), capsize=3, label="this run",
                      color="tab:blue")
        paper = ax.bar(pos + w / 2, table["paper_acc"], w, yerr=table["paper_ci95"].fillna(0), capsize=3,
                       label="MAML paper", color="tab:orange", alpha=0.8)
        ax.bar_label(ours, fmt="%.1f", fontsize=7, padding=2)
        ax.bar_label(paper, fmt="%.1f", fontsize=7, padding=2)
        chance = 100.0 / table["n_way"].to_numpy(dtype=float)
        ax.scatter(pos - w / 2, chance, marker="_", s=300, color="black", label="chance", zorder=3)
        ax.set_xticks(pos, labels, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("test accuracy, % (95% CI)")
        ax.set_title("few-shot accuracy against the MAML paper", fontsize=10)
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        ax.grid(True, axis="y", alpha=0.3)
    if has_lake:
        ax = axes.pop(0)
        names = ["this run", *LAKE_REFERENCE]
        vals = [lake, *LAKE_REFERENCE.values()]
        bars = ax.bar(names, vals, color=["tab:blue", "tab:green", "tab:purple"])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_ylabel("error, %")
        ax.set_title("Omniglot one-shot (Lake et al., 20 runs)", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_fewshot_curves(run_dir: str | Path) -> Figure | None:
    """Meta-training loss and validation accuracy of every setting (``run``) over meta-iterations."""
    curves = read_curves(run_dir)
    wanted = [(n, c) for n, df in curves.items() if x_columns(df) for c in metric_columns(df)
              if c in ("val_acc", "train_loss")]
    wanted.sort(key=lambda p: p[1] != "val_acc")
    if not wanted:
        return None
    fig, axes = new_figure(6.0 * len(wanted), 3.6, ncols=len(wanted))
    for ax, (name, metric) in zip(np.atleast_1d(axes), wanted):
        df = curves[name]
        draw_curves(ax, df, metric, x_columns(df)[0])
        ax.set_title(f"{name}: {metric}", fontsize=10)
    return fig


# --- 03 MTML ----------------------------------------------------------------------------------------
def mtml_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Modes as rows, ``{task}_{metric}`` columns, then ``delta_m`` and ``steps_to_target`` if present."""
    rows: dict[str, dict[str, float]] = {}
    modes = sorted({k.split("_", 1)[0] for k in metrics if "_" in k},
                   key=lambda s: (MTML_MODES.index(s) if s in MTML_MODES else len(MTML_MODES), s))
    for mode in modes:
        for key, value in metrics.items():
            if not key.startswith(mode + "_"):
                continue
            rest = key[len(mode) + 1:]
            if rest in ("delta_m", "steps_to_target") or rest.split("_", 1)[0] in MTML_TASKS:
                rows.setdefault(mode, {})[rest] = _num(value)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame.from_dict(rows, orient="index")
    first = sorted([c for c in df.columns if c not in ("delta_m", "steps_to_target")],
                   key=lambda c: (MTML_TASKS.index(c.split("_", 1)[0]), c))
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
        if x_columns(df) and len(set(df["run"]) & set(MTML_MODES + ("scratch", "mtl_pretrained"))) >= 2:
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


# --- benchmarks -------------------------------------------------------------------------------------
def _flatten(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            name = v.get("name") if isinstance(v, dict) else None
            yield from _flatten(v, f"{prefix}.{name or i}" if prefix else str(name or i))
    else:
        yield prefix, obj


def benchmark_ratios(results: dict[str, Any]) -> pd.DataFrame:
    """Every numeric entry named like a ratio or speed-up in ``benchmarks/results.json`` (any nesting):
    columns ``benchmark`` (dotted path) and ``ratio`` (> 1: the engine is faster than its reference)."""
    rows = [(k, float(v)) for k, v in _flatten(results)
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            and re.search(r"ratio|speedup|speed_up|times_faster", k.rsplit(".", 1)[-1], re.I)]
    return pd.DataFrame(rows, columns=["benchmark", "ratio"])


def plot_benchmarks(results_json: str | Path) -> Figure | None:
    """Speed ratios from ``benchmarks/results.json`` as horizontal bars on a log axis (1 = parity)."""
    results = read_metrics_file(results_json)
    table = benchmark_ratios(results)
    if table.empty:
        return None
    fig, ax = new_figure(8.0, 0.45 * len(table) + 1.4)
    colors = ["tab:green" if r >= 1 else "tab:red" for r in table["ratio"]]
    bars = ax.barh(table["benchmark"], table["ratio"], color=colors)
    ax.bar_label(bars, fmt="%.2fx", fontsize=8, padding=2)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("speed ratio (reference time / engine time; > 1 = faster)")
    ax.set_title("benchmarks", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


# --- orchestration ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FigureSpec:
    name: str
    draw: Callable[[Path], Figure | None]
    needs: str  # what the figure reads, for the message when it cannot be drawn


@dataclass(frozen=True)
class Study:
    stem: str
    title: str
    figures: tuple[FigureSpec, ...]


STUDIES: dict[str, Study] = {s.stem[:2]: s for s in (
    Study("02_sequential_replay", "Sequential segmentation, detection and classification with replay", (
        FigureSpec("replay_stage_table", plot_replay_stages, "stage_table.csv"),
        FigureSpec("replay_forgetting", plot_replay_forgetting, "metrics.json keys {seg,det,cls}_drop_pct"),
    )),
    Study("03_mtml", "Multi-task meta-learning for dense prediction", (
        FigureSpec("mtml_heldout", plot_mtml_heldout, "a held-out-task curve in curves/ (run = mode, x = step)"),
        FigureSpec("mtml_table", plot_mtml_table, "metrics.json keys {mode}_{task}_{metric}, {mode}_delta_m"),
    )),
    Study("04_maml_sampling", "MAML with task-weighted sampling", (
        FigureSpec("maml_curves", plot_maml_curves, "curves/*.csv with run = regime and an x column"),
        FigureSpec("maml_parameter_space", plot_maml_parameter_space,
                   "parameter_space.csv or grid_losses.json (test-grid losses per task)"),
        FigureSpec("maml_final", plot_maml_final, "metrics.json keys {regime}_mse_1step/_mse_10step"),
    )),
    Study("05_maml_fewshot", "MAML few-shot classification", (
        FigureSpec("fewshot_accuracy", plot_fewshot,
                   "metrics.json keys {dataset}_{n}way_{k}shot_acc (+ _ci95) or omniglot_lake20_error"),
        FigureSpec("fewshot_curves", plot_fewshot_curves, "curves with a val_acc or train_loss column"),
    )),
)}


@dataclass
class StudyReport:
    """What :func:`study_figures` drew for one study, where it saved them and what it could not draw."""
    study: str
    run_dir: Path | None
    figures: dict[str, Figure] = field(default_factory=dict)
    saved: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def find_study_dir(runs_dir: str | Path, stem: str) -> Path | None:
    """The run folder of the notebook ``stem`` under ``runs_dir``: exact name, else one named ``NN_*``."""
    root = Path(runs_dir)
    if (root / stem).is_dir():
        return root / stem
    matches = sorted(p for p in root.glob(f"{stem[:3]}*") if p.is_dir()) if root.is_dir() else []
    return matches[0] if matches else None


def _save(fig: Figure, save_to: RunDir | str | Path | None, name: str) -> Path | None:
    if save_to is None:
        return None
    run = save_to if isinstance(save_to, RunDir) else RunDir(save_to)
    return run.save_figure(fig, name)


def study_figures(study: str, runs_dir: str | Path, save_to: RunDir | str | Path | None = None,
                  benchmarks: str | Path | None = None) -> StudyReport:
    """Draw every figure of ``study`` (``"02"``..``"05"``, a stem, or ``"benchmarks"``) from ``runs_dir``.

    Figures are saved as ``<NN>_<figure>.png`` into ``save_to`` when given. For ``"benchmarks"``, pass the
    path of ``results.json`` as ``benchmarks``.
    """
    if study == "benchmarks":
        path = Path(benchmarks) if benchmarks else None
        report = StudyReport("benchmarks", path)
        fig = plot_benchmarks(path) if path is not None and path.is_file() else None
        if fig is None:
            report.missing.append(f"benchmarks: no speed ratios in {path or 'benchmarks/results.json'} "
                                  "(run `make bench` or `python benchmarks/run.py` first)")
        else:
            report.figures["benchmarks"] = fig
            saved = _save(fig, save_to, "benchmarks")
            if saved:
                report.saved["benchmarks"] = saved
        return report
    key = study[:2]
    if key not in STUDIES:
        raise KeyError(f"unknown study {study!r}; known: {', '.join(s.stem for s in STUDIES.values())}, benchmarks")
    spec = STUDIES[key]
    run_dir = find_study_dir(runs_dir, spec.stem)
    report = StudyReport(spec.stem, run_dir)
    if run_dir is None:
        report.missing.append(f"{spec.stem}: no run folder under {runs_dir} (run notebook {spec.stem}.ipynb, "
                              f"or `python -m nbmodule.suite --only {key}`)")
        return report
    for fs in spec.figures:
        try:
            fig = fs.draw(run_dir)
        except (KeyError, ValueError, pd.errors.ParserError) as err:  # a malformed file: say which, go on
            report.missing.append(f"{spec.stem}/{fs.name}: could not read {fs.needs} in {run_dir}: {err}")
            continue
        if fig is None:
            report.missing.append(f"{spec.stem}/{fs.name}: not drawn, {run_dir} has no {fs.needs}")
            continue
        report.figures[fs.name] = fig
        saved = _save(fig, save_to, f"{key}_{fs.name}")
        if saved:
            report.saved[fs.name] = saved
    return report


def show_study(study: str, runs_dir: str | Path, save_to: RunDir | str | Path | None = None,
               benchmarks: str | Path | None = None) -> StudyReport:
    """:func:`study_figures`, then display the figures and print one line per figure that is missing."""
    from IPython.display import Image, display

    report = study_figures(study, runs_dir, save_to, benchmarks)
    if report.run_dir is not None and report.figures:
        print(f"{report.study}: {len(report.figures)} figure(s) from {report.run_dir}")
    for line in report.missing:
        print(line)
    for fig in report.figures.values():
        # PNG bytes rather than the Figure: shows the same in Jupyter, Colab, Voila and the HTML report,
        # whatever matplotlib backend the kernel has.
        display(Image(data=figure_png(fig, dpi=80)))
    return report
