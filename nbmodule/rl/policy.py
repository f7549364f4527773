"""The Gaussian MLP policy of MAML-RL, with per-task weights stacked for batched rollouts.

``GaussianMLPPolicy`` is an ordinary ``nn.Module`` (2 hidden layers of 100 ReLU units by default, a linear
mean head and a state-independent log-std initialised to 0, as in Finn et al. 2017, App. A.2), so
``dict(policy.named_parameters())`` is the meta-parameter dict. Meta-learning needs one set of weights per
task: :meth:`GaussianMLPPolicy.forward_tasks` takes every parameter with a leading task dim ``T`` and runs
all tasks at once with ``torch.baddbmm`` (``benchmarks/bench_maml_rl.py`` times ``vmap(functional_call)`` with
per-task weights against it: about 2x slower for a 20 x 20 x 100 rollout, one thread). :func:`expand_params`
gives shared parameters that task dim without copying, so one backward pass through it yields every task's
own gradient.

The log-std is clamped below at ``MIN_LOG_STD = log(1e-6)`` wherever the policy is evaluated (as
tristandeleu/pytorch-maml-rl does): a policy whose std collapses would otherwise overflow ``exp(-log_std)``
in float32 (at log-std < -88) and turn log-densities into NaN. The clamp passes no gradient below the bound.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["GaussianMLPPolicy", "MIN_LOG_STD", "expand_params", "log_prob", "gaussian_kl", "detach_params"]

Params = Mapping[str, Tensor]
#: lower bound of the policy's log-std (std >= 1e-6), as tristandeleu/pytorch-maml-rl's ``min_log_std``
MIN_LOG_STD = math.log(1e-6)


class GaussianMLPPolicy(nn.Module):
    """``pi(a | s) = N(mean(s), diag(exp(log_std))^2)`` with ``mean`` an MLP and ``log_std`` a free vector.

    Weights are Xavier-uniform and biases zero (rllab's initialisation, which the paper's code used).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (100, 100), init_log_std: float = 0.0):
        super().__init__()
        if obs_dim < 1 or act_dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"need obs_dim, act_dim >= 1 and positive hidden widths, got {obs_dim}, {act_dim}, {hidden}")
        widths = [obs_dim, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.mean = nn.Linear(widths[-1], act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        for layer in (*self.hidden, self.mean):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.obs_dim, self.act_dim = obs_dim, act_dim

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs: (..., obs_dim)`` -> ``mean: (..., act_dim)``, ``log_std: (act_dim,)`` (clamped at ``MIN_LOG_STD``)
        with the module's own weights."""
        x = obs
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.mean(x), self.log_std.clamp(min=MIN_LOG_STD)

    def forward_tasks(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Every task with its own weights. ``params``: this module's names, each with a leading task dim T
        (``hidden.0.weight: (T, 100, obs_dim)``...); ``obs: (T, M, obs_dim)``. Returns ``mean: (T, M, act_dim)``
        and ``log_std: (T, 1, act_dim)`` (clamped at ``MIN_LOG_STD``)."""
        x = obs
        for i in range(len(self.hidden)):
            x = torch.relu(torch.baddbmm(params[f"hidden.{i}.bias"].unsqueeze(1), x,
                                         params[f"hidden.{i}.weight"].transpose(1, 2)))
        mean = torch.baddbmm(params["mean.bias"].unsqueeze(1), x, params["mean.weight"].transpose(1, 2))
        return mean, params["log_std"].clamp(min=MIN_LOG_STD).unsqueeze(1)


def expand_params(params: Params, tasks: int) -> dict[str, Tensor]:
    """Shared parameters viewed with a leading task dim (no copy); gradients taken with respect to the
    expanded tensors are per task, and flow back to ``params`` summed over tasks."""
    return {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}


def detach_params(params: Params) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in params.items()}


def log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """Log-density of ``actions`` under the diagonal Gaussian, summed over the action dim: ``(...)``."""
    z = (actions - mean) * torch.exp(-log_std)
    return -0.5 * z.pow(2).sum(-1) - log_std.sum(-1) - 0.5 * mean.shape[-1] * math.log(2 * math.pi)


def gaussian_kl(old_mean: Tensor, old_log_std: Tensor, new_mean: Tensor, new_log_std: Tensor) -> Tensor:
    """``KL(old || new)`` of diagonal Gaussians, summed over the action dim (TRPO's constraint)."""
    old_var, new_var = torch.exp(2 * old_log_std), torch.exp(2 * new_log_std)
    return (new_log_std - old_log_std + (old_var + (old_mean - new_mean).pow(2)) / (2 * new_var) - 0.5).sum(-1)
