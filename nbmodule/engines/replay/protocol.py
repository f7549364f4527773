"""What the replay study measures, defined once: the tasks in their training order, the metric whose drop is
each task's forgetting, the forgetting itself, and the valid range of every metric.

The engine writes its metrics with these definitions and :mod:`nbmodule.viz.replay` draws its tables and
figures with the very same ones, so a number in ``metrics.json`` and the bar that shows it cannot disagree.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

__all__ = ["TASKS", "TASK_METRIC", "METRICS", "STAGE_COLUMNS", "FORGETTING_LIMIT_PCT", "forgetting", "mean_drop",
           "check_unit_interval", "MetricRangeError"]

#: The tasks in the order they are learned (stage 1, 2, 3).
TASKS = ("seg", "det", "cls")
#: The metric whose drop is the task's forgetting (mIoU, COCO mAP@[.5:.95], top-1 accuracy).
TASK_METRIC = {"seg": "seg_miou", "det": "det_map", "cls": "cls_top1"}
#: Every validation metric of the study; each is a fraction in [0, 1].
METRICS = ("seg_miou", "det_map", "det_map50", "cls_top1")
#: Columns of ``stage_table.csv``: one row per (run, after-stage), empty where the task is not learned yet.
STAGE_COLUMNS = ("run", "stage", *METRICS)
#: The assignment's limit on forgetting: an earlier task may lose at most 5% (relative) of its metric.
FORGETTING_LIMIT_PCT = 5.0


def forgetting(own: float | None, final: float | None) -> tuple[float, float]:
    """``(relative drop in percent, absolute drop in percentage points)`` of a metric in [0, 1] from the end
    of its task's own stage (``own``) to the end of training (``final``).

    ``forgetting(0.5, 0.45) == (10.0, 5.0)``. NaN when either value is missing, and the relative drop is NaN
    when ``own`` is 0 (nothing learned, nothing to forget). Negative values are gains (backward transfer).
    """
    if own is None or final is None or math.isnan(own) or math.isnan(final):
        return math.nan, math.nan
    rel = 100.0 * (own - final) / own if own > 0 else math.nan
    return rel, 100.0 * (own - final)


def mean_drop(drops: Iterable[float | None]) -> float:
    """Mean of the finite relative drops (percent); NaN when there is none."""
    vals = [d for d in drops if d is not None and math.isfinite(d)]
    return sum(vals) / len(vals) if vals else math.nan


class MetricRangeError(AssertionError):
    """A metric left its valid range: a bug in the evaluation, never a result to report."""


def check_unit_interval(values: Mapping[str, float | None], where: str) -> None:
    """Raise :class:`MetricRangeError` naming every value of ``values`` outside [0, 1] (None and NaN pass:
    they mean "not measured")."""
    bad = {k: v for k, v in values.items()
           if v is not None and not (isinstance(v, float) and math.isnan(v)) and not 0.0 <= float(v) <= 1.0}
    if bad:
        raise MetricRangeError(f"{where}: metric(s) outside [0, 1]: "
                               + ", ".join(f"{k}={v!r}" for k, v in bad.items()))
