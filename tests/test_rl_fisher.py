"""The Fisher pull-back TRPO step (hvp: exact) against the double-backward step in float64, for every estimator;
the cheap curvature, first-order MAML, and the log-std lower bound."""
from __future__ import annotations

import math

import pytest
import torch

from nbmodule.rl import (GaussianMLPPolicy, MetaRLSettings, Nav2D, adapt, compute_advantages, expand_params,
                         log_prob, meta_iteration, sample_trajectories)
from nbmodule.rl.algo import trpo_update
from nbmodule.rl.fisher import quadratic_model
from nbmodule.rl.maml import ESTIMATORS, MetaBatch, StepData, cheap_curvature, meta_objective, record_old_policy
from nbmodule.rl.policy import MIN_LOG_STD
from nbmodule.rl.trpo import flatten, hessian_vector_product

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-task ops: one thread is fastest


def _meta_batch(estimator="maml", inner_steps=1, lr=0.1, dtype=torch.float64, hidden=(8, 8), tasks=3, traj=4,
                horizon=12, seed=0):
    torch.manual_seed(seed)
    pol = GaussianMLPPolicy(2, 2, hidden=hidden).to(dtype)
    with torch.no_grad():  # off the ReLU kinks of zero biases, and a log-std that is not the same for both dims
        for layer in pol.hidden:
            layer.bias.normal_(0.0, 0.1)
        pol.log_std.copy_(torch.tensor([0.1, -0.2]))
    theta = {k: v.detach() for k, v in pol.named_parameters()}
    env = Nav2D(horizon=horizon)
    g = torch.Generator().manual_seed(seed)
    goals = env.sample_tasks(tasks, g)
    p, pre = expand_params(theta, tasks), []
    for _ in range(inner_steps):
        batch = sample_trajectories(env, pol, p, goals, traj, g)
        adv = compute_advantages(batch)
        pre.append(StepData(batch, adv))
        p = adapt(pol, p, batch, adv, lr, estimator=estimator)
    post = sample_trajectories(env, pol, p, goals, traj, g)
    mb = MetaBatch(pre, StepData(post, compute_advantages(post)), [lr] * inner_steps)
    return pol, theta, record_old_policy(pol, p, mb)


def _settings(**kw):
    # 5 CG iterations: on these 116 parameters, 10 iterations at damping 1e-5 amplify rounding (1e-16 in a
    # product) to ~1e-6 in the direction, and do so for the double-backward step against itself when its
    # product is merely computed as hvp(3 v) / 3; at 5 both agree to ~1e-14
    return MetaRLSettings(**{"max_kl": 0.01, "cg_iters": 5, **kw})


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_fisher_step_equals_the_double_backward_step_float64(estimator, inner_steps):
    pol, theta, mb = _meta_batch(estimator, inner_steps)
    new, info = trpo_update(pol, theta, mb, _settings(estimator=estimator, hvp="exact"))
    old, info_old = trpo_update(pol, theta, mb, _settings(estimator=estimator, hvp="double_backward"))
    assert info.accepted and info_old.accepted and info.backtracks == info_old.backtracks
    step, step_old = flatten(new) - flatten(theta), flatten(old) - flatten(theta)
    assert step_old.norm() > 1e-3
    assert _rel(step, step_old) < 1e-6
    assert info.kl == pytest.approx(info_old.kl, rel=1e-6)
    assert info.loss_after == pytest.approx(info_old.loss_after, rel=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_curvature_product_and_gradient_equal_double_backprop_float64(estimator):
    pol, theta, mb = _meta_batch(estimator, hidden=(6, 5))
    p = {k: v.clone().requires_grad_() for k, v in theta.items()}
    loss, kl = meta_objective(pol, mb, estimator)(p, True)
    grad = flatten(torch.autograd.grad(loss, list(p.values()), retain_graph=True))
    hvp = hessian_vector_product(kl, list(p.values()))
    loss2, grad2, fvp = quadratic_model(pol, mb, estimator)(theta)
    assert float(loss2) == pytest.approx(loss.detach().item(), abs=1e-15)
    assert _rel(grad2, grad) < 1e-10
    for seed in range(2):
        v = torch.randn(grad.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert _rel(fvp(v), hvp(v)) < 1e-10
    # the cheap option: the adaptation's Jacobian taken as the identity
    cheap = hessian_vector_product(cheap_curvature(pol, mb)(p), list(p.values()))(v)
    assert _rel(quadratic_model(pol, mb, estimator, curvature="cheap")(theta)[2](v), cheap) < 1e-10
    assert _rel(cheap, hvp(v)) > 1e-3


def test_first_order_equals_the_exact_step_when_the_inner_step_is_zero():
    pol, theta, mb = _meta_batch(lr=0.0)
    exact, info = trpo_update(pol, theta, mb, _settings(inner_lr=0.0))
    fomaml, info_fo = trpo_update(pol, theta, mb, _settings(inner_lr=0.0, first_order=True))
    fomaml_db, _ = trpo_update(pol, theta, mb, _settings(inner_lr=0.0, first_order=True, hvp="double_backward"))
    assert info.accepted and _rel(flatten(fomaml) - flatten(theta), flatten(exact) - flatten(theta)) < 1e-9
    assert _rel(flatten(fomaml_db) - flatten(theta), flatten(exact) - flatten(theta)) < 1e-9
    assert info_fo.grad_norm == pytest.approx(info.grad_norm, rel=1e-9)
    # with a real inner step, FOMAML drops the adaptation's Jacobian: a different gradient and step
    pol, theta, mb = _meta_batch(lr=0.5)
    exact, info = trpo_update(pol, theta, mb, _settings())
    fomaml, info_fo = trpo_update(pol, theta, mb, _settings(first_order=True))
    fomaml_db, info_db = trpo_update(pol, theta, mb, _settings(first_order=True, hvp="double_backward"))
    assert info_fo.grad_norm != pytest.approx(info.grad_norm, rel=1e-3)
    assert _rel(flatten(fomaml) - flatten(theta), flatten(exact) - flatten(theta)) > 1e-3
    assert _rel(flatten(fomaml) - flatten(theta), flatten(fomaml_db) - flatten(theta)) < 1e-6


def test_a_collapsed_std_stays_finite():
    """std = exp(-100) underflows and exp(100) overflows float32: without the lower bound every log-density
    is NaN. With it, sampling, the inner step and the TRPO step stay finite, and no gradient pushes the
    clamped log-std."""
    a, mean = torch.zeros(3, 2), torch.zeros(3, 2)
    collapsed = torch.full((2,), -100.0)
    assert torch.isnan(log_prob(mean, collapsed, a)).all()  # the unbounded formula
    torch.manual_seed(0)
    pol = GaussianMLPPolicy(2, 2, hidden=(16, 16))
    with torch.no_grad():
        pol.log_std.fill_(-100.0)
    assert pol(torch.zeros(1, 2))[1].tolist() == pytest.approx([MIN_LOG_STD] * 2)
    theta = {k: v.detach() for k, v in pol.named_parameters()}
    g = torch.Generator().manual_seed(0)
    for hvp in ("exact", "double_backward"):
        new, stats, info = meta_iteration(Nav2D(horizon=10), pol, theta, _settings(meta_batch_size=2, trajectories=3,
                                                                                    hvp=hvp), g)
        assert all(math.isfinite(v) for v in stats.values()) and math.isfinite(info.loss_before)
        assert all(torch.isfinite(v).all() for v in new.values())
        assert torch.equal(new["log_std"], theta["log_std"])
