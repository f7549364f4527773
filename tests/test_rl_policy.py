"""The Gaussian MLP policy: batched per-task forward, log-density and KL against torch.distributions, and
per-task inner gradients from one backward pass."""
from __future__ import annotations

import pytest

import torch
from torch.distributions import Normal, kl_divergence

from nbmodule.rl import GaussianMLPPolicy, Nav2D, adapt, compute_advantages, expand_params, gaussian_kl, log_prob
from nbmodule.rl import sample_trajectories
from nbmodule.rl.maml import inner_loss, policy_log_prob

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-task ops: one thread is fastest


def test_policy_shape_and_initialisation():
    pol = GaussianMLPPolicy(2, 3)
    shapes = {k: tuple(p.shape) for k, p in pol.named_parameters()}
    assert shapes == {"log_std": (3,), "hidden.0.weight": (100, 2), "hidden.0.bias": (100,),
                      "hidden.1.weight": (100, 100), "hidden.1.bias": (100,), "mean.weight": (3, 100), "mean.bias": (3,)}
    assert torch.equal(pol.log_std, torch.zeros(3)) and torch.equal(pol.hidden[0].bias, torch.zeros(100))


def test_forward_tasks_matches_the_module_per_task():
    torch.manual_seed(0)
    pols = [GaussianMLPPolicy(2, 2, hidden=(8, 8), init_log_std=0.1 * i) for i in range(3)]
    stacked = {k: torch.stack([dict(p.named_parameters())[k] for p in pols]) for k, _ in pols[0].named_parameters()}
    obs = torch.randn(3, 7, 2)
    mean, log_std = pols[0].forward_tasks(stacked, obs)
    for i, p in enumerate(pols):
        m, s = p(obs[i])
        assert torch.allclose(mean[i], m, atol=1e-6) and torch.allclose(log_std[i, 0], s)
    shared_mean, _ = pols[0].forward_tasks(expand_params(dict(pols[0].named_parameters()), 3), obs)
    assert torch.allclose(shared_mean[1], pols[0](obs[1])[0], atol=1e-6)


def test_log_prob_and_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    m1, m2, a = (torch.randn(5, 3, generator=g) for _ in range(3))
    s1, s2 = torch.randn(3, generator=g) * 0.3, torch.randn(3, generator=g) * 0.3
    ref = Normal(m1, s1.exp()).log_prob(a).sum(-1)
    assert torch.allclose(log_prob(m1, s1, a), ref, atol=1e-5)
    ref_kl = kl_divergence(Normal(m1, s1.exp()), Normal(m2, s2.exp())).sum(-1)
    assert torch.allclose(gaussian_kl(m1, s1, m2, s2), ref_kl, atol=1e-5)
    assert torch.allclose(gaussian_kl(m1, s1, m1, s1), torch.zeros(5), atol=1e-6)


def test_one_backward_pass_gives_each_tasks_own_inner_gradient():
    torch.manual_seed(0)
    pol = GaussianMLPPolicy(2, 2, hidden=(16, 16))
    theta = dict(pol.named_parameters())
    env = Nav2D(horizon=15)
    g = torch.Generator().manual_seed(0)
    tasks = env.sample_tasks(3, g)
    batch = sample_trajectories(env, pol, expand_params(theta, 3), tasks, 4, g)
    adv = compute_advantages(batch)
    adapted = adapt(pol, theta, batch, adv, 0.1)
    for i in range(3):
        one = type(batch)(batch.obs[i:i + 1], batch.actions[i:i + 1], batch.rewards[i:i + 1], batch.mask[i:i + 1],
                          tasks[i:i + 1])
        p = {k: v.unsqueeze(0) for k, v in theta.items()}
        logp, _, _ = policy_log_prob(pol, p, one)
        grads = torch.autograd.grad(inner_loss(logp, adv[i:i + 1], one.mask).sum(), list(theta.values()))
        for (k, v), gk in zip(theta.items(), grads):
            assert torch.allclose(adapted[k][i], v - 0.1 * gk, atol=1e-6), k
