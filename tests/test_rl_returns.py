"""Returns, GAE, the linear feature baseline (a known regression) and per-task normalisation."""
from __future__ import annotations

import pytest
import torch

from nbmodule.rl.returns import (baseline_features, discounted_returns, fit_linear_baseline, gae, linear_baseline,
                                 normalize_per_task)
from nbmodule.rl.sampler import Batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-task ops: one thread is fastest


def test_discounted_returns_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert discounted_returns(r, 0.5)[0].tolist() == pytest.approx([1 + 1 + 0.75, 2 + 1.5, 3])


def test_gae_lambda_one_is_returns_minus_baseline_and_lambda_zero_is_td_error():
    r = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    v = torch.tensor([[0.5, 1.0, -1.0, 9.0]])   # the last step is masked: its value must not leak in
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    ret = discounted_returns(r, 0.9)
    assert gae(r, v * m, m, 0.9, 1.0)[0].tolist() == pytest.approx((ret - v * m)[0, :3].tolist() + [0.0])
    td = [1 + 0.9 * 1.0 - 0.5, 2 + 0.9 * -1.0 - 1.0, 3 + 0.0 - -1.0, 0.0]
    assert gae(r, v * m, m, 0.9, 0.0)[0].tolist() == pytest.approx(td)


def test_baseline_features_are_rllabs():
    obs = torch.tensor([[[[2.0, -20.0], [1.0, 0.5]]]])  # (T=1, N=1, H=2, 2)
    f = baseline_features(obs, torch.ones(1, 1, 2))
    assert f.shape == (1, 1, 2, 8)
    assert f[0, 0, 0].tolist() == pytest.approx([2, -10, 4, 100, 0, 0, 0, 1])
    assert f[0, 0, 1].tolist() == pytest.approx([1, 0.5, 1, 0.25, 0.01, 1e-4, 1e-6, 1])


def test_linear_baseline_recovers_a_known_regression_per_task():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(3, 5, 20, 2, generator=g)
    mask = torch.ones(3, 5, 20)
    mask[:, 0, 12:] = 0
    feats = baseline_features(obs, mask)
    w_true = torch.randn(3, feats.shape[-1], generator=g, dtype=torch.float64)
    y = (feats.double() @ w_true.unsqueeze(-1).unsqueeze(1)).squeeze(-1).float()
    y = y + 1000.0 * (1 - mask)  # garbage on masked steps must be ignored
    w = fit_linear_baseline(feats, y, mask, reg=1e-10)
    assert torch.allclose(w.double(), w_true, atol=1e-3)
    batch = Batch(obs, torch.zeros(3, 5, 20, 2), torch.zeros(3, 5, 20), mask, torch.zeros(3, 2))
    values = linear_baseline(batch, y, reg=1e-10)
    assert torch.allclose(values * mask, y * mask, atol=1e-3)


def test_ridge_coefficient_shrinks_towards_zero():
    feats = torch.ones(1, 10, 1)
    y = torch.full((1, 10), 2.0)
    w = fit_linear_baseline(feats, y, torch.ones(1, 10), reg=10.0)
    assert w.item() == pytest.approx(20 / (10 + 10))  # (X'X + reg)^-1 X'y


def test_normalize_per_task_over_unmasked_steps():
    adv = torch.tensor([[[1.0, 2.0, 3.0, 50.0]], [[10.0, 10.0, 30.0, 30.0]]])
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0, 1.0]]])
    out = normalize_per_task(adv, mask)
    std = (2 / 3) ** 0.5
    assert out[0, 0].tolist() == pytest.approx([-1 / std, 0, 1 / std, 0], rel=1e-6)
    assert out[1, 0].tolist() == pytest.approx([-1, -1, 1, 1], rel=1e-6)
