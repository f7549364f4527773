"""TRPO: conjugate gradient, the exact Hessian-vector product through the adaptation against finite
differences (float64), the cheap one, and the trust region kept by the line search."""
from __future__ import annotations

import pytest
import torch

from nbmodule.rl import GaussianMLPPolicy, Nav2D, adapt, compute_advantages, expand_params, sample_trajectories
from nbmodule.rl.maml import MetaBatch, StepData, cheap_curvature, meta_objective, record_old_policy
from nbmodule.rl.trpo import conjugate_gradient, flatten, hessian_vector_product, trpo_step, unflatten

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-task ops: one thread is fastest


def test_conjugate_gradient_solves_an_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6)
    assert torch.allclose(a @ x, b, atol=1e-8)


def test_conjugate_gradient_returns_the_product_of_its_solution_after_few_iterations():
    """``x^T A x`` (TRPO's step scale) from the accumulated products equals one more product, also when CG
    stops before convergence (3 of 12 iterations), where ``A x != b``."""
    g = torch.Generator().manual_seed(1)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + 1e-3 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x, ax = conjugate_gradient(lambda v: a @ v, b, iters=3, with_product=True)
    assert not torch.allclose(ax, b, atol=1e-3)
    torch.testing.assert_close(ax, a @ x, rtol=1e-12, atol=1e-12)
    assert torch.equal(x, conjugate_gradient(lambda v: a @ v, b, iters=3))


def _meta_batch(dtype=torch.float32, hidden=(16, 16), tasks=3, traj=4, horizon=12, seed=0):
    torch.manual_seed(seed)
    pol = GaussianMLPPolicy(2, 2, hidden=hidden).to(dtype)
    with torch.no_grad():  # zero biases put every first step (at the origin) on ReLU kinks: move off them
        for layer in pol.hidden:
            layer.bias.normal_(0.0, 0.1)
    theta = {k: v.detach() for k, v in pol.named_parameters()}
    env = Nav2D(horizon=horizon)
    g = torch.Generator().manual_seed(seed)
    goals = env.sample_tasks(tasks, g)
    pre = sample_trajectories(env, pol, expand_params(theta, tasks), goals, traj, g)
    adv = compute_advantages(pre)
    adapted = adapt(pol, theta, pre, adv, 0.1)
    post = sample_trajectories(env, pol, adapted, goals, traj, g)
    mb = MetaBatch([StepData(pre, adv)], StepData(post, compute_advantages(post)), [0.1])
    return pol, theta, record_old_policy(pol, adapted, mb)


def _kl_grad(objective, theta, flat):
    p = {k: v.clone().requires_grad_() for k, v in unflatten(flat, theta).items()}
    _, kl = objective(p, True)
    return flatten(list(torch.autograd.grad(kl, list(p.values()))))


def test_exact_hvp_through_the_adaptation_matches_finite_differences_float64():
    pol, theta, mb = _meta_batch(torch.float64, hidden=(8, 8))
    objective = meta_objective(pol, mb, "maml")
    p = {k: v.clone().requires_grad_() for k, v in theta.items()}
    _, kl = objective(p, True)
    assert kl.item() == pytest.approx(0.0, abs=1e-12)
    hvp = hessian_vector_product(kl, list(p.values()))
    flat = flatten(theta)
    for seed in range(2):
        v = torch.randn(flat.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        eps = 1e-6
        fd = (_kl_grad(objective, theta, flat + eps * v) - _kl_grad(objective, theta, flat - eps * v)) / (2 * eps)
        hv = hvp(v)
        assert torch.allclose(hv, fd, rtol=1e-5, atol=1e-9 * fd.abs().max().item())
        # the adaptation's Jacobian matters: the cheap product (Jacobian = identity) is a different matrix
        cheap = hessian_vector_product(cheap_curvature(pol, mb)(p), list(p.values()))(v)
        assert not torch.allclose(cheap, hv, rtol=1e-3)


def test_cheap_hvp_is_the_mean_fisher_of_the_adapted_policies_float64():
    pol, theta, mb = _meta_batch(torch.float64, hidden=(8,))
    p = {k: v.clone().requires_grad_() for k, v in theta.items()}
    flat = flatten(theta)
    v = torch.randn(flat.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cheap = hessian_vector_product(cheap_curvature(pol, mb)(p), list(p.values()))(v)
    # by hand: shift every task's adapted parameters by the same delta and differentiate the mean KL twice
    shift = unflatten(torch.zeros_like(flat), theta)

    def kl_at(delta_flat):
        delta = unflatten(delta_flat, theta)
        q = {k: mb.old_params[k] + delta[k].unsqueeze(0) for k in theta}
        from nbmodule.rl.maml import _surrogate_and_kl
        return _surrogate_and_kl(pol, q, mb)[1]

    zero = flatten(shift).requires_grad_()
    (g1,) = torch.autograd.grad(kl_at(zero), zero, create_graph=True)
    (expected,) = torch.autograd.grad(g1 @ v, zero)
    assert torch.allclose(cheap, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("hvp", ["exact", "cheap"])
@pytest.mark.parametrize("max_kl", [0.01, 1e-4])
def test_trpo_step_improves_the_surrogate_within_the_trust_region(hvp, max_kl):
    pol, theta, mb = _meta_batch()
    objective = meta_objective(pol, mb, "maml")
    new, info = trpo_step(theta, objective, max_kl=max_kl, curvature=cheap_curvature(pol, mb) if hvp == "cheap" else None)
    assert info.accepted and info.loss_after < info.loss_before
    loss, kl = objective({k: v.clone() for k, v in new.items()}, False)
    assert kl.item() <= max_kl and kl.item() == pytest.approx(info.kl, rel=1e-4)
    assert loss.item() == pytest.approx(info.loss_after, rel=1e-4, abs=1e-7)
    assert kl.item() > 0.05 * max_kl  # the step uses the trust region rather than vanishing


def test_line_search_backtracks_and_rejects_when_nothing_improves():
    """loss = sum(x) + 100 |x - x0|^2, KL = |x - x0|^2 / 2: the full step (length sqrt(2 max_kl)) overshoots; the
    loss first decreases after 9 halvings by 0.8, so 5 trials reject the step and keep the parameters."""
    x0 = {"x": torch.zeros(4, dtype=torch.float64)}

    def objective(p, create_graph):
        d = p["x"] - x0["x"]
        return p["x"].sum() + 100 * (d * d).sum(), 0.5 * (d * d).sum()

    new, info = trpo_step(x0, objective, max_kl=0.01, max_backtracks=15)
    assert info.accepted and info.backtracks == 9 and info.kl <= 0.01
    assert new["x"].tolist() == pytest.approx([-(0.8 ** 9) * (0.02 ** 0.5) / 2] * 4, rel=1e-4)
    same, info = trpo_step(x0, objective, max_kl=0.01, max_backtracks=5)
    assert not info.accepted and torch.equal(same["x"], x0["x"]) and info.loss_after == info.loss_before
