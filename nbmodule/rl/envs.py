"""Batched meta-RL environments: every (task, trajectory) pair steps at once.

An environment here is a *task family*: ``sample_tasks(n, generator)`` draws task parameters (a goal
position, a goal velocity...), ``reset(tasks, n_traj, generator)`` starts ``n_traj`` trajectories for each of
the ``T`` tasks and ``step(actions)`` advances all ``T x n_traj`` of them. Observations, actions and rewards
are torch tensors shaped ``(T, n_traj, ...)``. HalfCheetah lives in :mod:`nbmodule.rl.cheetah` (it needs
gymnasium and mujoco); :func:`make_env` builds any of them by name.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

__all__ = ["MetaEnv", "Nav2D", "make_env", "ENV_NAMES"]

ENV_NAMES = ("nav2d", "cheetah_vel", "cheetah_dir")


class MetaEnv(Protocol):
    name: str
    obs_dim: int
    act_dim: int
    task_dim: int
    horizon: int

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor: ...

    def reset(self, tasks: Tensor, n_traj: int, generator: torch.Generator) -> Tensor: ...

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


class Nav2D:
    """2D point navigation (cbfinn/maml_rl ``point_env_randgoal.py`` behind rllab's ``normalize``), in torch.

    A point starts at the origin; the task is a goal drawn uniformly from ``[-0.5, 0.5]^2``. The policy sees
    only its position. An action ``a`` moves it by ``max_step * clip(a, -1, 1)`` (rllab's ``normalize``
    maps ``[-1, 1]`` onto the action box ``[-0.1, 0.1]^2`` and clips); the reward is minus the L2 distance
    to the goal *after* the move; a trajectory is done once both coordinates are within ``done_tol`` of the
    goal (the original tests ``|dx| < 0.01 and |dy| < 0.01``), and it lasts at most ``horizon`` steps.
    """

    name = "nav2d"
    obs_dim = act_dim = task_dim = 2

    def __init__(self, horizon: int = 100, goal_range: float = 0.5, max_step: float = 0.1, done_tol: float = 0.01,
                 device: torch.device | str = "cpu"):
        self.horizon, self.goal_range, self.max_step, self.done_tol = horizon, goal_range, max_step, done_tol
        self.device = torch.device(device)
        self._pos: Tensor | None = None
        self._goal: Tensor | None = None

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        """``(n, 2)`` goals, uniform in ``[-goal_range, goal_range]^2`` (drawn on the CPU generator)."""
        goals = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1) * self.goal_range
        return goals.to(device=self.device, dtype=torch.float32)

    def reset(self, tasks: Tensor, n_traj: int, generator: torch.Generator) -> Tensor:
        """Every trajectory starts at the origin: ``(T, n_traj, 2)`` zeros (``generator`` is unused)."""
        if tasks.ndim != 2 or tasks.shape[1] != 2:
            raise ValueError(f"Nav2D tasks are goals of shape (T, 2), got {tuple(tasks.shape)}")
        self._goal = tasks.to(self.device, torch.float32).unsqueeze(1)  # (T, 1, 2)
        self._pos = torch.zeros(tasks.shape[0], n_traj, 2, device=self.device)
        return self._pos.clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``actions: (T, N, 2)`` -> ``obs (T, N, 2)`` (new position), ``reward (T, N)``, ``done (T, N)`` bool."""
        if self._pos is None or self._goal is None:
            raise RuntimeError("call reset() before step()")
        self._pos = self._pos + self.max_step * actions.clamp(-1.0, 1.0)
        diff = self._pos - self._goal
        reward = -diff.norm(dim=-1)
        done = (diff.abs() < self.done_tol).all(dim=-1)
        return self._pos.clone(), reward, done


def make_env(name: str, *, horizon: int, device: torch.device | str = "cpu", sampler: str = "auto",
             threads: int = 1) -> MetaEnv:
    """An environment by name: ``nav2d`` (pure torch) or ``cheetah_vel`` / ``cheetah_dir`` (gymnasium's
    ``HalfCheetah-v5`` with the task's reward; ``sampler`` picks ``mujoco.rollout`` or ``SyncVectorEnv``)."""
    if name == "nav2d":
        return Nav2D(horizon=horizon, device=device)
    if name in ("cheetah_vel", "cheetah_dir"):
        try:
            import gymnasium  # noqa: F401
            import mujoco  # noqa: F401
        except ImportError as err:
            raise ImportError(f"environment {name!r} needs gymnasium and mujoco ({err}); install them with "
                              "pip install 'gymnasium[mujoco]', or choose envs: [nav2d]") from None
        from .cheetah import HalfCheetahTasks

        return HalfCheetahTasks(name.split("_")[1], horizon=horizon, device=device, sampler=sampler, threads=threads)
    raise ValueError(f"unknown environment {name!r}; choose one of {ENV_NAMES}")
