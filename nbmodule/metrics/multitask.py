"""Multi-task summaries: Δm (Maninis et al., Vandenhende et al.) and LibMTL's Δp against single-task models."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from .dense import DENSE_METRICS

__all__ = ["DELTA_M_METRICS", "DELTA_P_METRICS", "UndefinedRelativeChange", "delta_m", "delta_p"]


#: Δm of Maninis et al. (2019) as Vandenhende et al. compute it (``calculate_multi_task_performance`` in
#: github.com/SimonVandenhende/Multi-Task-Learning-PyTorch, evaluation/evaluate_utils.py): one metric per
#: task. Also the metric a held-out task's curve and its steps to target are judged by.
DELTA_M_METRICS: dict[str, str] = {"seg": "miou", "depth": "rmse", "normals": "mean", "edges": "ods_f"}
#: LibMTL's Δp (``count_improvement`` in github.com/median-research-group/LibMTL, LibMTL/utils.py) over its
#: NYUv2 metric sets: every listed metric, averaged within the task first, then over tasks.
DELTA_P_METRICS: dict[str, tuple[str, ...]] = {
    "seg": ("miou", "pixel_acc"), "depth": ("abs_err", "rel_err"),
    "normals": ("mean", "median", "within_11_25", "within_22_5", "within_30"), "edges": ("ods_f",),
}



class UndefinedRelativeChange(ValueError):
    """A relative change with no value: a baseline metric that is zero, missing or not finite (e.g. mIoU 0 after
    a few smoke steps). Tasks missing on one side are a different error (a plain ValueError): a bug, not data."""


def _relative_gain(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]],
                   which: Mapping[str, Sequence[str]], name: str) -> float:
    only_m = [t for t in which if t in metrics and t not in baseline]
    only_b = [t for t in which if t in baseline and t not in metrics]
    if only_m or only_b:
        sides = ([f"{only_m} in the metrics but not in the baseline"] if only_m else []) + \
                ([f"{only_b} in the baseline but not in the metrics"] if only_b else [])
        raise ValueError(f"{name}: tasks {' and '.join(sides)}; compare the same tasks on both sides")
    per_task = []
    for task, names in which.items():
        if task not in metrics:
            continue
        rel = []
        for metric in names:
            m, b = metrics[task].get(metric), baseline[task].get(metric)
            if m is None or b is None or not math.isfinite(m) or not math.isfinite(b) or b == 0:
                raise UndefinedRelativeChange(f"{name} needs finite, non-zero {task}.{metric} in both (got {m}, "
                                              f"baseline {b})")
            sign = -1.0 if DENSE_METRICS[task][metric] else 1.0
            rel.append(sign * (m - b) / b * 100.0)
        per_task.append(sum(rel) / len(rel))
    if not per_task:
        raise ValueError(f"{name}: none of the tasks {list(which)} is in the metrics or the baseline")
    return sum(per_task) / len(per_task)


def delta_m(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]],
            which: Mapping[str, str] | None = None) -> float:
    """Multi-task performance Δm (%) against single-task models, as Maninis et al. (2019) and Vandenhende et
    al. (2021) define it: the mean over tasks of ``(-1)^l (M_t - B_t) / B_t * 100`` with ONE metric per task
    (``which``, default :data:`DELTA_M_METRICS`: mIoU, depth RMSE, mean angle error, edge ODS F; ``l`` = 1
    where lower is better). Both arguments map task -> metric -> value and must hold the same tasks of
    ``which`` (a task on one side only raises, naming it). Positive = better than single-task."""
    which = DELTA_M_METRICS if which is None else which
    return _relative_gain(metrics, baseline, {t: (m,) for t, m in which.items()}, "delta_m")


def delta_p(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]],
            which: Mapping[str, Sequence[str]] | None = None) -> float:
    """LibMTL's multi-metric variant Δp (%): within each task the mean relative change over several metrics
    (``which``, default :data:`DELTA_P_METRICS`), then the mean over tasks, so a task with five metrics weighs
    as much as one with one."""
    return _relative_gain(metrics, baseline, DELTA_P_METRICS if which is None else which, "delta_p")
