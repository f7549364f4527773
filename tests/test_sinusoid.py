"""Sinusoid task families: formulas, parameter ranges, the 450-task test grid, held-out tasks."""
from __future__ import annotations

import math

import pytest
import torch

from nbmodule.data.sinusoid import evaluation_tasks, get_family, make_tasks, sinusoid


def test_sinusoid_formula_2d_and_3d():
    x = torch.tensor([[[0.0], [math.pi / 2]]], dtype=torch.float64)
    y2 = sinusoid(torch.tensor([[2.0, math.pi / 2]], dtype=torch.float64), x)  # 2 sin(x - pi/2) = -2 cos x
    assert torch.allclose(y2.flatten(), torch.tensor([-2.0, 0.0], dtype=torch.float64), atol=1e-12)
    y3 = sinusoid(torch.tensor([[3.0, 0.0, 2.0]], dtype=torch.float64), x)  # 3 sin(2x)
    assert torch.allclose(y3.flatten(), torch.tensor([0.0, 0.0], dtype=torch.float64), atol=1e-12)
    y3b = sinusoid(torch.tensor([[3.0, 0.0, 0.5]], dtype=torch.float64), x)  # 3 sin(x / 2)
    assert y3b[0, 1, 0].item() == pytest.approx(3 * math.sin(math.pi / 4))


def test_parameter_ranges():
    f2, f3 = get_family("2d"), get_family("3d")
    assert f2.low == (0.1, 0.0) and f2.high == (5.0, math.pi)
    assert f3.low[2] == 0.5 and f3.high[2] == 2.0
    p = f3.sample_params(4000, torch.Generator().manual_seed(0))
    for d in range(3):
        assert p[:, d].min() >= f3.low[d] and p[:, d].max() <= f3.high[d]
    with pytest.raises(ValueError, match="unknown sinusoid family"):
        get_family("4d")


def test_test_grid_is_the_seeds_450_tasks():
    grid = get_family("2d").test_grid()
    assert grid.shape == (450, 2)
    amps = torch.unique(grid[:, 0])
    phases = torch.unique(grid[:, 1])
    assert len(amps) == 25 and len(phases) == 18
    assert torch.allclose(amps[:3], torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64))
    assert amps.max().item() == pytest.approx(4.9)
    assert torch.allclose(torch.rad2deg(phases[:3]), torch.tensor([0.0, 10.0, 20.0], dtype=torch.float64))
    assert torch.rad2deg(phases.max()).item() == pytest.approx(170.0)
    assert get_family("3d").test_grid().shape == (1800, 3)


def test_heldout_tasks_are_fixed_and_uniform():
    f = get_family("2d")
    a, b = f.heldout(), f.heldout()
    assert a.shape == (600, 2) and torch.equal(a, b)
    assert not torch.equal(a, f.heldout(seed=1))


def test_make_tasks_shapes_ranges_and_fresh_query_points():
    params = torch.tensor([[1.0, 0.3], [4.0, 2.0]], dtype=torch.float64)
    xs, ys, xq, yq = make_tasks(params, 10, 7, torch.Generator().manual_seed(0))
    assert xs.shape == (2, 10, 1) and yq.shape == (2, 7, 1) and xs.dtype == torch.float32
    assert xs.min() >= -5 and xs.max() <= 5
    assert torch.allclose(ys, sinusoid(params, xs.double()).float(), atol=1e-5)
    assert not torch.isin(xq, xs).any()  # query points are fresh
    e1 = evaluation_tasks(params, 10, 50, seed=3)
    e2 = evaluation_tasks(params, 10, 50, seed=3)
    assert all(torch.equal(u, v) for u, v in zip(e1, e2))
