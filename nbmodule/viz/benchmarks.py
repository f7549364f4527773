"""The benchmark figure of notebook 06: speed ratios from ``benchmarks/results.json``."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from matplotlib.figure import Figure

from .plots import new_figure
from .rundata import read_metrics_file

__all__ = ["benchmark_ratios", "plot_benchmarks"]


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
