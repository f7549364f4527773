"""95% confidence intervals of a mean (over seeds: Student's t; over many episodes: the normal value)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["ci95_factor", "mean_confidence_interval"]


def ci95_factor(n: int | float) -> float:
    """The 95% two-sided critical value of Student's t with ``n - 1`` degrees of freedom (12.71 for 2 values,
    4.30 for 3, 1.96 in the limit): ``factor * std / sqrt(n)`` is the half-width of the confidence interval of
    a mean of ``n`` values. NaN below 2 values."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.975, n - 1)) if n >= 2 else float("nan")


def mean_confidence_interval(values: Sequence[float] | torch.Tensor, z: float | None = None) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval, ``factor * std / sqrt(n)`` (sample std): Student's t
    critical value for ``n - 1`` degrees of freedom (:func:`ci95_factor`; right for a few seeds), or the normal
    one when ``z`` is given (e.g. 1.96 over hundreds of test episodes, as few-shot papers report)."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError("mean_confidence_interval needs at least one value")
    if t.numel() == 1:
        return float(t[0]), float("nan")
    factor = z if z is not None else ci95_factor(t.numel())
    return float(t.mean()), float(factor * t.std(unbiased=True) / math.sqrt(t.numel()))
