"""Figures and tables of the MAML few-shot study (notebook 05), drawn from its run folder only.

Reads what :mod:`nbmodule.engines.fewshot` writes: ``metrics.json``, ``config.json``, ``data.json``,
``evaluation.json``, ``example_episode.pt`` (loaded with ``weights_only=True``) and
``curves/fewshot_{train,val}.csv``.

Tables: :func:`paper_table` (each setting run beside Table 1 of Finn et al. 2017), :func:`lake_table` (the
Lake et al. 20-run error beside people and BPL). Text: :func:`data_banner` (real or synthetic data, and why),
:func:`protocol_text` (the protocol behind each number). Figures (``FIGURES``): learning curves, accuracy
against the paper (and the Lake score), one test episode.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..runs import RunDir, read_curve
from .plots import FigureSpec, new_figure, num, when_present
from .rundata import read_metrics_file

__all__ = ["FIGURES", "PAPER", "PAPER_SOURCE", "LAKE", "LAKE_SOURCE", "paper_table", "lake_table", "read_evaluation",
           "data_banner", "protocol_text", "plot_fewshot_curves", "plot_fewshot", "plot_episode"]

#: MAML's test accuracy (percent, 95% CI) per setting: Table 1 (Omniglot) and Table 2 (MiniImagenet, second order).
PAPER: dict[str, tuple[float, float]] = {
    "omniglot_5way_1shot": (98.7, 0.4), "omniglot_5way_5shot": (99.9, 0.1),
    "omniglot_20way_1shot": (95.8, 0.3), "omniglot_20way_5shot": (98.9, 0.2),
    "miniimagenet_5way_1shot": (48.70, 1.84), "miniimagenet_5way_5shot": (63.11, 0.92),
}
PAPER_SOURCE = ("Finn, Abbeel & Levine (2017), Model-Agnostic Meta-Learning, Tables 1-2: MAML's split of Omniglot "
                "(1200 training characters), 600 test episodes")
#: Error rates (percent) on the 20 one-shot runs of Lake et al. (2015), Science 350(6266), Fig. 2.
LAKE: dict[str, float] = {"people": 4.5, "Bayesian Program Learning": 3.3}
LAKE_SOURCE = "Lake, Salakhutdinov & Tenenbaum (2015), Science 350(6266): 20-way one-shot runs, people and BPL"

_SETTING = re.compile(r"^([a-z0-9]+)_(\d+)way_(\d+)shot_acc$")


def _read_json(run_path: str | Path, name: str) -> dict[str, Any]:
    path = Path(run_path) / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    return data if isinstance(data, dict) else {}


def read_evaluation(run_path: str | Path) -> dict[str, Any]:
    """``evaluation.json`` (protocols, per-episode accuracies, the Lake decision); empty when absent."""
    return _read_json(run_path, "evaluation.json")


# --- tables --------------------------------------------------------------------------------------------
def paper_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per setting in ``metrics`` (keys ``{dataset}_{n}way_{k}shot_acc`` and ``_ci95``, percent):
    ``dataset, n_way, k_shot, acc, ci95, paper_acc, paper_ci95, chance``."""
    rows = []
    for key, value in metrics.items():
        g = _SETTING.match(key)
        if not g:
            continue
        ds, n, k = g.group(1), int(g.group(2)), int(g.group(3))
        setting = key[: -len("_acc")]
        paper = PAPER.get(setting, (float("nan"), float("nan")))
        rows.append({"dataset": ds, "n_way": n, "k_shot": k, "acc": num(value),
                     "ci95": num(metrics.get(f"{setting}_ci95", metrics.get(f"{key}_ci95"))),
                     "paper_acc": paper[0], "paper_ci95": paper[1], "chance": 100.0 / n})
    cols = ["dataset", "n_way", "k_shot", "acc", "ci95", "paper_acc", "paper_ci95", "chance"]
    return pd.DataFrame(rows, columns=cols).sort_values(["dataset", "n_way", "k_shot"], ignore_index=True)


def lake_table(metrics: Mapping[str, Any], *, label: str = "MAML (this run)") -> pd.DataFrame:
    """Error rates (percent) on Lake et al.'s 20 one-shot runs: people, BPL (:data:`LAKE`), this run with each
    test item classified on its own (``label``: the comparable row; NaN when ``omniglot_lake20_error`` is
    absent, i.e. not measured under Lake et al.'s protocol) and, when present, this run scored transductively
    (the 20 items as one batch: not comparable to people or BPL). ``95% CI``: Student's t over the 20 runs."""
    rows = [{"model": k, "error (%)": v, "95% CI": float("nan")} for k, v in LAKE.items()]
    rows.append({"model": label, "error (%)": num(metrics.get("omniglot_lake20_error")),
                 "95% CI": num(metrics.get("omniglot_lake20_error_ci95"))})
    if "omniglot_lake20_error_transductive" in metrics:
        rows.append({"model": f"{label}, transductive (not comparable)",
                     "error (%)": num(metrics.get("omniglot_lake20_error_transductive")),
                     "95% CI": num(metrics.get("omniglot_lake20_error_transductive_ci95"))})
    return pd.DataFrame(rows).set_index("model")


# --- text ----------------------------------------------------------------------------------------------
def data_banner(run_path: str | Path) -> str:
    """Markdown: which data the run used. Synthetic data gets a loud banner with the reason (a fallback
    names why the real data could not be had)."""
    data = _read_json(run_path, "data.json")
    if not data:
        return f"No `data.json` in {run_path}: the study has not run there yet."
    name = {"omniglot": "Omniglot", "miniimagenet": "MiniImagenet"}.get(data.get("dataset"), data.get("dataset"))
    sizes = ", ".join(f"{k}: {v['classes']} classes ({v['images']} images)" for k, v in data.get("splits", {}).items())
    if data.get("synthetic"):
        return (f"> **⚠ SYNTHETIC DATA.** This run trained and was scored on generated data in {name}'s format, "
                f"not on {name}: {data.get('note') or 'synthetic data was asked for'}. Its numbers show that the "
                f"code works; they are not comparable with the paper's or with people's. Splits: {sizes}.")
    return f"**Data: real {name}** ({data.get('source')}; {data.get('note')}). Splits: {sizes}."


def protocol_text(run_path: str | Path) -> str:
    """Markdown: the protocol behind every number of the run, and why the Lake score is absent if it is."""
    ev = read_evaluation(run_path)
    if not ev:
        return f"No `evaluation.json` in {run_path}: the study has not finished there yet."
    p = ev.get("protocols", {})
    lake = ev.get("lake20", {})
    lines = [f"- **Training**: {p.get('training')}.", f"- **Split**: {p.get('split')}.",
             f"- **`{ev.get('setting')}_acc` ± `_ci95`**: {p.get('accuracy')}.", f"- **Data**: {p.get('data')}."]
    if lake.get("reported"):
        lines.append(f"- **`omniglot_lake20_error`** (one test item at a time, comparable to people and BPL) and "
                     f"**`omniglot_lake20_error_transductive`**: {p.get('lake20')} ({lake.get('reason')}).")
    else:
        lines.append(f"- **No Lake score** (`omniglot_lake20_error` is not written): {lake.get('reason')}.")
    return "\n".join(lines)


# --- figures -------------------------------------------------------------------------------------------
def plot_fewshot_curves(run_path: str | Path) -> Figure | None:
    """Meta-train query loss (left) and validation accuracy (right) against meta-iterations."""
    train, val = read_curve(run_path, "fewshot_train"), read_curve(run_path, "fewshot_val")
    if not train and not val:
        return None
    fig, (ax1, ax2) = new_figure(11, 3.6, ncols=2)
    for rows, ax, col, label in ((train, ax1, "train_loss", "meta-train query loss"),
                                 (val, ax2, "val_acc", "validation accuracy")):
        df = pd.DataFrame(rows)
        if df.empty or col not in df:
            ax.text(0.5, 0.5, "no points logged", ha="center", transform=ax.transAxes)
        else:
            for (name, seed), g in df.groupby(["run", "seed"]):
                ax.plot(g["step"], g[col] * (100 if col.endswith("acc") else 1), marker="." if len(g) < 30 else None,
                        label=f"{name} (seed {int(seed)})")
            ax.legend(fontsize=8)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(label + (" (%)" if col.endswith("acc") else ""))
        ax.grid(alpha=0.3)
    ax1.set_title("meta-training (query loss after the inner steps)", fontsize=10)
    ax2.set_title("fixed validation episodes (test-time inner steps)", fontsize=10)
    return fig


def plot_fewshot(run_path: str | Path) -> Figure | None:
    """Accuracy with its 95% CI beside the MAML paper's number for each setting run, and the Lake et al.
    one-shot error beside people's and BPL's when ``omniglot_lake20_error`` is present."""
    m = read_metrics_file(run_path)
    table = paper_table(m)
    lake = num(m.get("omniglot_lake20_error"))
    if table.empty and np.isnan(lake):
        return None
    cfg = _read_json(run_path, "config.json").get("config", {})
    synthetic = bool(m.get("synthetic"))
    ours_label = "this run" + (" (SYNTHETIC data)" if synthetic else "")
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
        ours = ax.bar(pos - w / 2, table["acc"], w, yerr=table["ci95"].fillna(0), capsize=3, label=ours_label,
                      color="tab:blue")
        paper = ax.bar(pos + w / 2, table["paper_acc"], w, yerr=table["paper_ci95"].fillna(0), capsize=3,
                       label="MAML paper", color="tab:orange", alpha=0.8)
        ax.bar_label(ours, fmt="%.1f", fontsize=7, padding=2)
        ax.bar_label(paper, fmt="%.1f", fontsize=7, padding=2)
        ax.scatter(pos - w / 2, table["chance"], marker="_", s=300, color="black", label="chance", zorder=3)
        ax.set_xticks(pos, labels, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("test accuracy, % (95% CI)")
        title = "few-shot accuracy against the MAML paper"
        if cfg.get("omniglot_split") == "background" and cfg.get("dataset") == "omniglot":
            title += "\n(this run: background/evaluation alphabets; the paper: MAML's split)"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        ax.grid(True, axis="y", alpha=0.3)
    if has_lake:
        ax = axes.pop(0)
        names = [ours_label.replace(" (", "\n("), *LAKE]
        vals = [lake, *LAKE.values()]
        bars = ax.bar(range(len(vals)), vals, yerr=[num(m.get("omniglot_lake20_error_ci95")) if not
                                                    np.isnan(num(m.get("omniglot_lake20_error_ci95"))) else 0, 0, 0],
                      capsize=3, color=["tab:blue", "tab:green", "tab:purple"])
        ax.set_xticks(range(len(vals)), [n.replace("Bayesian Program Learning", "BPL") for n in names], fontsize=8)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_ylabel("error, %")
        ax.set_title("Omniglot one-shot\n(Lake et al., 20 runs, 20-way)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def _load_episode(run_path: str | Path) -> dict[str, Any]:
    path = Path(run_path) / "example_episode.pt"
    try:
        ep = RunDir(run_path, create=False).load_tensors("example_episode.pt")
    except Exception as err:  # unsafe pickle, truncated file: refuse with the path, never execute
        raise ValueError(f"{path} cannot be loaded safely (weights_only=True): {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    missing = {"xs", "ys", "xq", "yq", "pred"} - set(ep if isinstance(ep, dict) else {})
    if missing:
        raise ValueError(f"{path} is not an example episode of this study (missing {sorted(missing)})")
    return ep


def plot_episode(run_path: str | Path, *, max_queries: int = 10) -> Figure | None:
    """One test episode (``example_episode.pt``): the support set by class (top rows) and queries with the
    adapted model's prediction (green right, red wrong)."""
    if not (Path(run_path) / "example_episode.pt").is_file():
        return None
    ep = _load_episode(run_path)
    xs, ys, xq, yq, pred = (ep[k] for k in ("xs", "ys", "xq", "yq", "pred"))
    n_way = int(ys.max()) + 1
    k = len(ys) // n_way
    q_idx = list(range(len(yq)))[:max_queries] if len(yq) <= max_queries else \
        np.linspace(0, len(yq) - 1, max_queries).round().astype(int).tolist()
    cols = n_way
    rows = k + (len(q_idx) + cols - 1) // cols
    fig, axes = new_figure(1.3 * cols, 1.45 * rows + 0.4, nrows=rows, ncols=cols)
    axes = np.atleast_2d(axes).reshape(rows, cols)
    for ax in axes.flat:
        ax.axis("off")

    def show(ax: Any, img: Any, title: str, color: str = "black") -> None:
        img = img.float() / 255
        ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray_r" if img.shape[0] == 1 else None)
        ax.set_title(title, fontsize=8, color=color)

    order = [0] * n_way
    for i in range(len(ys)):
        c = int(ys[i])
        show(axes[order[c], c], xs[i], f"support: class {c}")
        order[c] += 1
    for j, qi in enumerate(q_idx):
        ok = int(pred[qi]) == int(yq[qi])
        show(axes[k + j // cols, j % cols], xq[qi], f"pred {int(pred[qi])} / true {int(yq[qi])}",
             "tab:green" if ok else "tab:red")
    fig.suptitle(f"one test episode of {ep.get('setting', '')}: support set (top), queries after "
                 f"{ep.get('steps', '?')} adaptation steps", fontsize=9)
    return fig


#: Every figure of the study, saved by ``nbmodule.studies.execute`` into the run folder as ``<name>.png``.
FIGURES = (
    FigureSpec("fewshot_curves", plot_fewshot_curves, "curves/fewshot_train.csv or curves/fewshot_val.csv"),
    FigureSpec("fewshot_accuracy", plot_fewshot,
               "metrics.json keys {dataset}_{n}way_{k}shot_acc (+ _ci95) or omniglot_lake20_error"),
    FigureSpec("fewshot_episode", when_present(plot_episode, "example_episode.pt"), "example_episode.pt"),
)
