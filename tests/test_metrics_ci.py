"""Confidence intervals of a mean: Student's t over a few seeds, the normal value only when asked for."""
from __future__ import annotations

import math

import pytest

from nbmodule.metrics import ci95_factor, mean_confidence_interval


def test_few_values_get_students_t_by_hand():
    # 3 seeds: t(0.975, 2) = 4.3027; values 1, 2, 3 have mean 2 and sample std 1
    mean, half = mean_confidence_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert ci95_factor(2) == pytest.approx(12.7062, rel=1e-5) and ci95_factor(1) != ci95_factor(1)  # NaN
    assert ci95_factor(10_000) == pytest.approx(1.96, abs=1e-3)


def test_the_normal_interval_is_used_only_when_asked_and_one_value_has_none():
    assert mean_confidence_interval([1.0, 2.0, 3.0], z=1.96)[1] == pytest.approx(1.96 / math.sqrt(3))
    mean, half = mean_confidence_interval([5.0])
    assert mean == 5.0 and math.isnan(half)
    with pytest.raises(ValueError, match="at least one value"):
        mean_confidence_interval([])
