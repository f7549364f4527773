"""The three meta-gradient estimators on cases with known answers.

A one-parameter Gaussian policy ``pi(a) = N(theta, 1)`` makes every derivative explicit:
``d log pi / d theta = a - theta`` and ``d^2 log pi / d theta^2 = -1``. With the inner step
``theta' = theta - alpha dL_in/dtheta`` and an outer loss ``(theta' - c)^2 / 2`` the meta-gradient is
``(1 - alpha d^2L_in/dtheta^2) (theta' - c)``, where each estimator's second derivative is written out below.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nbmodule.rl.maml import ESTIMATORS, inner_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-task ops: one thread is fastest

ALPHA, C = 0.3, 0.7


def _case():
    g = np.random.default_rng(0)
    a = g.normal(size=(2, 3, 5))                 # (T tasks, N trajectories, H steps)
    adv = g.normal(size=(2, 3, 5))
    mask = np.ones((2, 3, 5))
    mask[0, 1, 3:] = 0                            # one trajectory ends after 3 steps
    mask[1, 2, 1:] = 0
    return a, adv * mask, mask, np.array([0.2, -0.4])


def _expected(estimator: str, a, adv, mask, theta):
    """(inner gradient, inner second derivative) per task, written out by hand."""
    d = (a - theta[:, None, None]) * mask          # d log pi_t / d theta
    n = mask.sum((1, 2))
    grad = -(d * adv).sum((1, 2)) / n             # the same for every estimator
    if estimator == "maml":                        # -mean(d2 log pi * A) = mean(A)
        hess = (adv * mask).sum((1, 2)) / n
    elif estimator == "lvc":                       # -mean((d2 log pi + d^2) A)
        hess = -((d * d - 1) * adv * mask).sum((1, 2)) / n
    else:                                          # dice: -mean_t c_t (D_t^2 - k_t), D_t = sum_{t'<=t} d_t'
        c = adv - np.concatenate([adv[..., 1:], np.zeros_like(adv[..., :1])], -1)
        big_d = np.cumsum(d, -1)
        k = np.cumsum(mask, -1)
        hess = -(c * (big_d ** 2 - k) * mask).sum((1, 2)) / n
    return grad, hess


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_meta_gradient_of_each_estimator_matches_the_hand_derivation(estimator):
    a, adv, mask, theta0 = _case()
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    at, advt, maskt = (torch.tensor(x, dtype=torch.float64) for x in (a, adv, mask))
    logp = -0.5 * (at - theta.view(-1, 1, 1)) ** 2
    loss_in = inner_loss(logp, advt, maskt, estimator)
    (g_in,) = torch.autograd.grad(loss_in.sum(), theta, create_graph=True)
    adapted = theta - ALPHA * g_in
    outer = (0.5 * (adapted - C) ** 2).sum()
    (meta_grad,) = torch.autograd.grad(outer, theta)

    grad, hess = _expected(estimator, a, adv, mask, theta0)
    assert np.allclose(g_in.detach().numpy(), grad, atol=1e-12)
    expected = (1 - ALPHA * hess) * (theta0 - ALPHA * grad - C)
    assert np.allclose(meta_grad.numpy(), expected, atol=1e-12)


def test_estimators_differ_only_in_curvature():
    a, adv, mask, theta0 = _case()
    grads = {e: _expected(e, a, adv, mask, theta0) for e in ESTIMATORS}
    assert np.allclose(grads["maml"][0], grads["dice"][0]) and not np.allclose(grads["maml"][1], grads["lvc"][1])


@pytest.mark.parametrize("estimator,expected", [("maml", 1.25), ("lvc", -2.0), ("dice", -2.0)])
def test_one_step_bandit_hessian_in_expectation(estimator, expected):
    """Reward ``r(a) = -a^2`` under ``N(theta, 1)``: ``J = -(theta^2 + 1)`` so ``J'' = -2``. The ``lvc`` and ``dice``
    curvature estimates are unbiased for it; the original ``maml`` surrogate estimates ``E[-r] = theta^2 + 1``
    (the missing score-function term, Rothfuss et al. 2019)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    a = 0.5 + torch.randn(1, 400_000, 1, generator=g, dtype=torch.float64)
    r = -a ** 2
    logp = -0.5 * (a - theta) ** 2
    (g_in,) = torch.autograd.grad(-inner_loss(logp, r, torch.ones_like(r), estimator).sum(), theta, create_graph=True)
    (hess,) = torch.autograd.grad(g_in.sum(), theta)
    assert g_in.item() == pytest.approx(-1.0, abs=0.03)  # J'(0.5) = -2 theta
    assert hess.item() == pytest.approx(expected, abs=0.06)


def test_unknown_estimator_is_an_error():
    with pytest.raises(ValueError, match="maml"):
        inner_loss(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.ones(1, 1, 1), "reinforce")
