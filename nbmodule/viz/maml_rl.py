"""Figures and tables of the MAML-RL study (notebook 07), drawn from its run folder only.

Reads what :mod:`nbmodule.engines.maml_rl` writes: ``evaluation.json`` (returns per environment, method, seed,
step and goal), ``curves/train.csv`` (training returns per iteration), ``trajectories.json`` (2D navigation
paths before and after each step) and ``metrics.json``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..metrics import ci95_factor
from .plots import FigureSpec, draw_curves, new_figure, num
from .rundata import read_curves, read_metrics_file

__all__ = ["FIGURES", "PAPER_RETURNS", "PAPER_READING_ERROR", "METHOD_LABELS", "read_evaluation", "results_table", "plot_returns_vs_steps",
           "plot_learning_curves", "plot_trajectories"]

#: Finn et al. (2017), appendix tables: MAML's average return after 0, 1, 2, 3 gradient steps, and the setting.
PAPER_RETURNS: dict[str, tuple[tuple[float, ...], str]] = {
    "nav2d": ((-40.41, -11.68, -3.33, -3.23), "Finn et al. 2017, Table 4"),
    "cheetah_dir": ((-50.69, 293.19, 313.48, 315.65), "Finn et al. 2017, Table 5 (horizon 200)"),
    # no table for goal velocity: the MAML curve of the paper's Figure 5 ("half-cheetah, goal velocity"), read
    # off the plot; the reading is good to about PAPER_READING_ERROR (its Dir panel, read the same way, gives
    # about 0 / 300 / 320 / 320 against Table 5's -50.69 / 293.19 / 313.48 / 315.65)
    "cheetah_vel": ((-130.0, -80.0, -75.0, -75.0), "Finn et al. 2017, Figure 5, read approximately"),
}
#: How far off a value read from a published figure may be (the environments whose anchor is a figure).
PAPER_READING_ERROR: dict[str, float] = {"cheetah_vel": 10.0}
#: ``maml``: the paper's fixed fine-tuning step; the others: their step chosen on validation goals (the run's
#: ``evaluation.json`` "finetune" block and "protocol" say which step each used)
METHOD_LABELS = {"maml": "MAML", "maml_tuned": "MAML, step chosen on validation",
                 "maml_best": "MAML, best training return (App. A.2)", "pretrained": "pretrained",
                 "random": "random init"}
ENV_TITLES = {"nav2d": "2D navigation", "cheetah_vel": "HalfCheetah goal velocity",
              "cheetah_dir": "HalfCheetah goal direction"}
_COLORS = {"maml": "tab:blue", "maml_tuned": "tab:cyan", "maml_best": "tab:purple", "pretrained": "tab:orange",
           "random": "tab:gray"}


def _step_label(block: Mapping[str, Any], method: str) -> str:
    """The fine-tuning steps a method was evaluated with, e.g. ``0.1, 0.05 (paper)`` or ``0.2, 0.1 (chosen)``."""
    if method in ("maml", "maml_best") or "finetune" not in block:
        return ", ".join(f"{v:g}" for v in block.get("lrs", [])) + " (paper)"
    lrs = block["finetune"].get(method.removesuffix("_tuned"), {}).get("lrs", [])
    return ", ".join(f"{v:g}" for v in lrs) + " (chosen)"


def read_evaluation(run_dir: str | Path) -> dict[str, Any]:
    """``evaluation.json`` of a run folder, or ``{}`` when absent."""
    path = Path(run_dir) / "evaluation.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _seed_means(per_seed: Mapping[str, list[list[float]]]) -> np.ndarray:
    """``(seeds, steps + 1)``: each seed's return per step, averaged over the goals."""
    return np.array([[float(np.mean(goals)) for goals in steps] for steps in per_seed.values()])


def _mean_ci(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) and the Student-t 95% half-width (NaN with one seed), as ``metrics.json``."""
    mean = values.mean(0)
    if values.shape[0] < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, ci95_factor(values.shape[0]) * values.std(0, ddof=1) / math.sqrt(values.shape[0])


def results_table(run_dir: str | Path) -> pd.DataFrame:
    """One row per (environment, method), plus the paper's MAML row where there is one: the return after
    k = 0..S steps (mean over seeds of the mean over held-out goals) and its 95% CI over seeds."""
    evaluation = read_evaluation(run_dir)
    rows = []
    for env, block in evaluation.items():
        steps = int(block["steps"])
        for method, per_seed in block["methods"].items():
            mean, ci = _mean_ci(_seed_means(per_seed))
            row: dict[str, Any] = {"env": env, "method": METHOD_LABELS.get(method, method), "seeds": len(per_seed),
                                   "fine-tuning steps": _step_label(block, method)}
            for k in range(steps + 1):
                row[f"{k} steps"] = float(mean[k])
                row[f"{k} steps ±95%"] = float(ci[k])
            rows.append(row)
        if env in PAPER_RETURNS:
            values, source = PAPER_RETURNS[env]
            row = {"env": env, "method": f"MAML, paper ({source})", "seeds": float("nan"),
                   "fine-tuning steps": "0.1, 0.05 (paper)"}
            for k in range(steps + 1):
                row[f"{k} steps"] = values[k] if k < len(values) else float("nan")
                row[f"{k} steps ±95%"] = float("nan")
            rows.append(row)
    if rows:
        return pd.DataFrame(rows).set_index(["env", "method"])
    # a run folder without evaluation.json (an older or partial run): the returns in metrics.json
    metrics = read_metrics_file(Path(run_dir) / "metrics.json")
    for key, value in metrics.items():
        if "_return_" in key and key.endswith("step"):
            rows.append({"key": key, "value": num(value), "±95%": num(metrics.get(f"{key}_ci95"))})
    return pd.DataFrame(rows)


def plot_returns_vs_steps(run_dir: str | Path) -> Figure | None:
    """Average return against the number of adaptation steps, one panel per environment: MAML, pretrained and
    random init (mean over seeds, band: 95% CI over seeds) with the paper's MAML values beside them."""
    evaluation = read_evaluation(run_dir)
    if not evaluation:
        return None
    fig, axes = new_figure(5.2 * len(evaluation), 3.8, ncols=len(evaluation))
    axes = np.atleast_1d(axes)
    for ax, (env, block) in zip(axes, evaluation.items()):
        steps = np.arange(int(block["steps"]) + 1)
        for method, per_seed in block["methods"].items():
            values = _seed_means(per_seed)
            mean, ci = _mean_ci(values)
            label = (f"{METHOD_LABELS.get(method, method)} (ours, {values.shape[0]} seed"
                     f"{'s' if values.shape[0] > 1 else ''}; steps {_step_label(block, method)})")
            color = _COLORS.get(method)
            ax.plot(steps, mean, marker="o", color=color, label=label, linewidth=1.8)
            if values.shape[0] > 1:
                ax.fill_between(steps, mean - ci, mean + ci, color=color, alpha=0.2, linewidth=0)
        if env in PAPER_RETURNS:
            paper, source = PAPER_RETURNS[env]
            n = min(len(paper), len(steps))
            ax.plot(steps[:n], paper[:n], "k--", marker="s", markersize=4, label=f"MAML, {source}")
        ax.set_xticks(steps)
        ax.set_xlabel("gradient steps at test time")
        ax.set_ylabel("average return")
        ax.set_title(ENV_TITLES.get(env, env), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return fig


def plot_learning_curves(run_dir: str | Path) -> Figure | None:
    """Training returns per meta-iteration, one panel per environment: MAML before and after its inner step,
    and the pretrained policy (mean over seeds, band: ±1 std over seeds)."""
    df = read_curves(run_dir).get("train")
    if df is None or df.empty or "iteration" not in df.columns:
        return None
    env_of = df["run"].astype(str).str.rsplit("_", n=1).str[0]
    envs = list(dict.fromkeys(env_of))
    fig, axes = new_figure(5.6 * len(envs), 3.8, ncols=len(envs))
    axes = np.atleast_1d(axes)
    for ax, env in zip(axes, envs):
        part = df[env_of == env]
        long = []
        for run, g in part.groupby("run"):
            method = str(run).rsplit("_", 1)[1]
            returns = sorted(c for c in g.columns if c.startswith("return_") and g[c].notna().any())
            for col in returns:
                k = int(col.split("_")[1].removesuffix("step"))
                label = (f"{METHOD_LABELS.get(method, method)}, after {k} inner step{'s' if k > 1 else ''}" if k
                         else f"{METHOD_LABELS.get(method, method)}, before adaptation")
                long.append(pd.DataFrame({"run": label, "seed": g["seed"], "iteration": g["iteration"],
                                          "return": g[col]}))
        if not long:
            continue
        draw_curves(ax, pd.concat(long, ignore_index=True), "return", "iteration")
        ax.set_ylabel("average return of the training trajectories")
        ax.set_title(ENV_TITLES.get(env, env), fontsize=10)
    return fig


def plot_trajectories(run_dir: str | Path, methods: tuple[str, ...] = ("maml", "pretrained"),
                      per_step: int = 2) -> Figure | None:
    """2D navigation: trajectories of the adapted policy towards a few held-out goals, before adaptation and
    after each gradient step (one row per method, one column per goal; first seed; ``per_step`` of the stored
    trajectories per step, since the policies are still noisy)."""
    path = Path(run_dir) / "trajectories.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    methods = tuple(m for m in methods if m in data["methods"]) or tuple(data["methods"])
    goals = data["goals"]
    fig, axes = new_figure(2.8 * len(goals), 2.8 * len(methods), nrows=len(methods), ncols=len(goals))
    axes = np.atleast_2d(axes).reshape(len(methods), len(goals))
    cmap = ["0.6", "tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, method in enumerate(methods):
        steps = data["methods"][method]  # [step][goal][trajectory][time][xy]
        for j, goal in enumerate(goals):
            ax = axes[i, j]
            for k, step in enumerate(steps):
                color = cmap[k % len(cmap)]
                for t, traj in enumerate(step[j][:per_step]):
                    xy = np.asarray([[0.0, 0.0], *traj]) if traj else np.zeros((1, 2))
                    label = ("pre-update" if k == 0 else f"after {k} step{'s' if k > 1 else ''}") if t == 0 else None
                    ax.plot(xy[:, 0], xy[:, 1], color=color, linewidth=1.1, alpha=0.85, label=label)
            ax.plot(*goal, marker="*", color="k", markersize=12, linestyle="none", label="goal" if j == 0 else None)
            ax.plot(0, 0, marker="o", color="k", markersize=3)
            ax.set_xlim(-0.6, 0.6)
            ax.set_ylim(-0.6, 0.6)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
            ax.set_title(f"{METHOD_LABELS.get(method, method)}, goal ({goal[0]:.2f}, {goal[1]:.2f})", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    return fig


FIGURES = (
    FigureSpec("returns_vs_steps", plot_returns_vs_steps, "evaluation.json (returns per env, method, seed, step, goal)"),
    FigureSpec("learning_curves", plot_learning_curves, "curves/train.csv (run = {env}_{method}, x = iteration)"),
    FigureSpec("trajectories", plot_trajectories, "trajectories.json (2D navigation only)"),
)
