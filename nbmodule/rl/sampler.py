"""Sampling trajectories of every task of a meta-batch at once.

:func:`sample_trajectories` rolls out ``n_traj`` trajectories for each of ``T`` tasks with per-task policy
weights (``params`` with a leading task dim, see :meth:`GaussianMLPPolicy.forward_tasks`): one batched
policy call and one batched environment step per time step, no worker processes. The result is a
:class:`Batch` of padded ``(T, N, H, ...)`` tensors with a mask marking the steps a trajectory really took
(a Nav2D trajectory ends when it reaches its goal).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .envs import MetaEnv
from .policy import GaussianMLPPolicy, Params

__all__ = ["Batch", "sample_trajectories"]


@dataclass
class Batch:
    """Trajectories of T tasks x N trajectories x H steps (padded after a trajectory ends).

    ``obs: (T, N, H, obs_dim)`` the observation an action was taken in, ``actions: (T, N, H, act_dim)``,
    ``rewards: (T, N, H)`` (0 where ``mask`` is 0), ``mask: (T, N, H)`` float, 1 for steps taken,
    ``tasks: (T, task_dim)``.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    tasks: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        t, n, h = self.mask.shape
        return t, n, h

    def returns(self) -> Tensor:
        """``(T, N)``: each trajectory's undiscounted return, the sum of its rewards (the paper's measure)."""
        return self.rewards.sum(-1)

    def steps(self) -> int:
        """Environment steps actually taken."""
        return int(self.mask.sum())


@torch.no_grad()
def sample_trajectories(env: MetaEnv, policy: GaussianMLPPolicy, params: Params, tasks: Tensor, n_traj: int,
                        generator: torch.Generator, horizon: int | None = None) -> Batch:
    """Roll out ``n_traj`` trajectories of ``horizon`` (default ``env.horizon``) steps for every task.

    ``params``: per-task weights, every tensor with leading dim ``T = len(tasks)``. Actions are drawn as
    ``mean + std * eps`` with ``eps`` from ``generator`` (a CPU generator, so CPU and GPU runs draw the
    same noise). A finished trajectory keeps being stepped but its steps are masked out; the loop stops
    early once every trajectory has finished.
    """
    horizon = horizon or env.horizon
    t = tasks.shape[0]
    first = next(iter(params.values()))
    if first.shape[0] != t:
        raise ValueError(f"params have {first.shape[0]} task rows for {t} tasks")
    device, dtype = first.device, first.dtype  # trajectories in the policy's dtype (float64 in gradient checks)
    obs = env.reset(tasks, n_traj, generator).to(device, dtype)
    alive = torch.ones(t, n_traj, dtype=torch.bool, device=device)
    all_obs, all_act, all_rew, all_mask = [], [], [], []
    for _ in range(horizon):
        mean, log_std = policy.forward_tasks(params, obs)  # (T, N, A), (T, 1, A)
        eps = torch.randn(mean.shape, generator=generator).to(device, dtype)
        action = mean + torch.exp(log_std) * eps
        next_obs, reward, done = env.step(action)
        maskf = alive.to(mean.dtype)
        all_obs.append(obs)
        all_act.append(action)
        all_rew.append(reward.to(device, dtype) * maskf)
        all_mask.append(maskf)
        alive = alive & ~done.to(device)
        obs = next_obs.to(device, dtype)
        if not bool(alive.any()):
            break
    steps = len(all_mask)
    batch = Batch(torch.stack(all_obs, 2), torch.stack(all_act, 2), torch.stack(all_rew, 2), torch.stack(all_mask, 2),
                  tasks)
    if steps < horizon:  # pad to the full horizon so every batch has the same shape
        pad = horizon - steps

        def padded(x: Tensor) -> Tensor:
            shape = list(x.shape)
            shape[2] = pad
            return torch.cat([x, x.new_zeros(shape)], 2)

        batch = Batch(padded(batch.obs), padded(batch.actions), padded(batch.rewards), padded(batch.mask), tasks)
    return batch
