"""Valid ranges of metrics: a value outside its range is a bug upstream, never a result."""
from __future__ import annotations

import math

__all__ = ["MetricRangeError", "check_range"]


class MetricRangeError(ValueError):
    """A metric left its valid range: a bug upstream (wrong units, a wrong count), never a result to report."""


def check_range(name: str, value: float, low: float, high: float) -> float:
    """``value`` if it lies in ``[low, high]`` (NaN passes: it means "no data"); otherwise raise
    :class:`MetricRangeError` naming the metric, the value and the range."""
    v = float(value)
    if not math.isnan(v) and not (low - 1e-9 * max(1.0, abs(high)) <= v <= high + 1e-9 * max(1.0, abs(high))):
        raise MetricRangeError(f"metric {name} = {v!r} is outside its valid range [{low}, {high}]")
    return v
