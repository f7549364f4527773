"""Figures and tables of the MAML few-shot study (notebook 05), drawn from run-folder files.

``plot_fewshot_curves(run_path)`` reads ``curves/fewshot_train.csv`` / ``fewshot_val.csv``;
``fewshot_table(metrics)`` lays ``metrics.json`` out as Table 1 of Finn et al. (2017) beside the paper;
``lake_table(metrics)`` puts ``omniglot_lake20_error`` beside Lake et al.'s human and BPL error rates;
``plot_episode`` shows one test episode (support images, queries, predictions).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..runs import read_curve
from .plots import FigureSpec, new_figure, num as _num, when_present
from .rundata import read_metrics_file

__all__ = ["plot_fewshot_curves", "fewshot_table", "lake_table", "plot_episode"]

PAPER = {
    "omniglot_5way_1shot": (98.7, 0.4), "omniglot_5way_5shot": (99.9, 0.1),
    "omniglot_20way_1shot": (95.8, 0.3), "omniglot_20way_5shot": (98.9, 0.2),
    "miniimagenet_5way_1shot": (48.70, 1.84), "miniimagenet_5way_5shot": (63.11, 0.92),
}
LAKE = {"human": 4.5, "Bayesian Program Learning": 3.3}


def plot_fewshot_curves(run_path: str | Path) -> plt.Figure:
    """Meta-train query loss (left) and validation accuracy (right) against meta-iterations, per setting."""
    train, val = read_curve(run_path, "fewshot_train"), read_curve(run_path, "fewshot_val")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    for rows, ax, col, label in ((train, ax1, "train_loss", "meta-train query loss"),
                                 (val, ax2, "val_acc", "validation accuracy")):
        df = pd.DataFrame(rows)
        if df.empty:
            ax.text(0.5, 0.5, "no points logged", ha="center", transform=ax.transAxes)
        else:
            for (name, seed), g in df.groupby(["run", "seed"]):
                ax.plot(g["step"], g[col] * (100 if col.endswith("acc") else 1), marker="." if len(g) < 30 else None,
                        label=f"{name} (seed {int(seed)})")
            ax.legend(fontsize=8)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(label + (" (%)" if col.endswith("acc") else ""))
        ax.grid(alpha=0.3)
    ax1.set_title("meta-training (after the inner steps)")
    ax2.set_title("validation episodes (test-time inner steps)")
    fig.tight_layout()
    return fig


def _fmt(mean: float | None, ci: float | None) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "-"
    return f"{mean:.1f} ± {ci:.1f}%" if ci is not None and not np.isnan(ci) else f"{mean:.1f}%"


def fewshot_table(metrics: Mapping[str, float | None], *, label: str = "this run") -> pd.DataFrame:
    """Table 1 of the paper (rows: dataset and way, columns: shots) with the paper's MAML numbers and this
    run's ``{setting}_acc ± _ci95``; settings not run show "-"."""
    rows = []
    for dataset, ways in (("Omniglot", (5, 20)), ("MiniImagenet", (5,))):
        for n in ways:
            for who in ("MAML (paper)", label):
                row = {"dataset": dataset, "N-way": n, "": who}
                for k in (1, 5):
                    key = f"{dataset.lower()}_{n}way_{k}shot"
                    if who == label:
                        row[f"{k}-shot"] = _fmt(metrics.get(f"{key}_acc"), metrics.get(f"{key}_ci95"))
                    else:
                        row[f"{k}-shot"] = _fmt(*PAPER[key])
                rows.append(row)
    return pd.DataFrame(rows).set_index(["dataset", "N-way", ""])


def lake_table(metrics: Mapping[str, float | None], *, label: str = "MAML (this run)") -> pd.DataFrame:
    """Error rates (percent) on Lake et al.'s 20 one-shot runs: people, BPL, and this model."""
    ours = metrics.get("omniglot_lake20_error")
    rows = [{"model": k, "error (%)": v} for k, v in LAKE.items()]
    rows.append({"model": label, "error (%)": None if ours is None else round(float(ours), 2)})
    return pd.DataFrame(rows).set_index("model")


def plot_episode(xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor, pred: torch.Tensor,
                 *, max_queries: int = 10) -> plt.Figure:
    """One task: support images by class (top) and queries with predicted/true labels (green right, red wrong).

    ``xs``: (N*K, C, H, W) uint8 or float, ``ys``: (N*K,), ``xq``: (Q, C, H, W), ``yq``/``pred``: (Q,)."""
    def show(ax, img, title, color="black"):
        img = img.detach().float().cpu()
        img = img / 255 if img.max() > 1.5 else img
        ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray_r" if img.shape[0] == 1 else None)
        ax.set_title(title, fontsize=8, color=color)
        ax.axis("off")

    n_way = int(ys.max()) + 1
    k = len(ys) // n_way
    q_idx = torch.arange(len(yq))[:max_queries] if len(yq) <= max_queries else \
        torch.linspace(0, len(yq) - 1, max_queries).long()
    cols = max(n_way, len(q_idx))
    rows = k + (len(q_idx) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(len(ys)):
        c, r = int(ys[i]), i % k
        show(axes[r, c], xs[i], f"support: class {c}")
    for j, qi in enumerate(q_idx.tolist()):
        ok = int(pred[qi]) == int(yq[qi])
        show(axes[k + j // cols, j % cols], xq[qi], f"pred {int(pred[qi])} / true {int(yq[qi])}",
             "tab:green" if ok else "tab:red")
    fig.suptitle("one test episode: support set (top rows), queries with the adapted model's predictions")
    fig.tight_layout()
    return fig


# --- moved from nbmodule/viz/studies.py (drawn by notebook 06) ------------------------------------
def paper_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Rows ``dataset, n_way, k_shot, acc, ci95, paper_acc, paper_ci95`` from ``{d}_{n}way_{k}shot_acc`` keys."""
    pat = re.compile(r"^([a-z0-9]+)_(\d+)way_(\d+)shot_acc$")
    rows = []
    for key, value in metrics.items():
        g = pat.match(key)
        if not g:
            continue
        ds, n, k = g.group(1), int(g.group(2)), int(g.group(3))
        paper = PAPER_BY_SETTING.get((ds, n, k), (float("nan"), float("nan")))
        rows.append({"dataset": ds, "n_way": n, "k_shot": k, "acc": _num(value),
                     "ci95": _num(metrics.get(f"{key}_ci95", metrics.get(key[:-4] + "_ci95"))),
                     "paper_acc": paper[0], "paper_ci95": paper[1]})
    df = pd.DataFrame(rows, columns=["dataset", "n_way", "k_shot", "acc", "ci95", "paper_acc", "paper_ci95"])
    return df.sort_values(["dataset", "n_way", "k_shot"], ignore_index=True)


def plot_fewshot(run_dir: str | Path) -> Figure | None:
    """Accuracy with its 95% CI beside the MAML paper's number for each setting run; and the Lake et al.
    one-shot error beside the human and BPL error rates when ``omniglot_lake20_error`` is present."""
    m = read_metrics_file(run_dir)
    table = paper_table(m)
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
        names = ["this run", *LAKE]
        vals = [lake, *LAKE.values()]
        bars = ax.bar(names, vals, color=["tab:blue", "tab:green", "tab:purple"])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_ylabel("error, %")
        ax.set_title("Omniglot one-shot (Lake et al., 20 runs)", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    return fig


#: Paper numbers by (dataset, n_way, k_shot), the same values as PAPER.
PAPER_BY_SETTING = {(k.split("_")[0], int(k.split("_")[1][:-3]), int(k.split("_")[2][:-4])): v for k, v in PAPER.items()}

#: Every figure of the study, saved by ``nbmodule.studies.execute`` into the run folder as ``<name>.png``.
FIGURES = (
    FigureSpec("fewshot_curves", when_present(plot_fewshot_curves, "curves/fewshot_train.csv"),
               "curves/fewshot_train.csv, curves/fewshot_val.csv"),
    FigureSpec("fewshot_accuracy", plot_fewshot,
               "metrics.json keys {dataset}_{n}way_{k}shot_acc (+ _ci95) or omniglot_lake20_error"),
)
