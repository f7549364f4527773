"""HalfCheetah goal velocity and goal direction (Finn et al. 2017, Sec. 5.3) over gymnasium's ``HalfCheetah-v5``.

gymnasium has no Vel/Dir variants, so :class:`HalfCheetahVelEnv` and :class:`HalfCheetahDirEnv` subclass
``gymnasium.envs.mujoco.half_cheetah_v5.HalfCheetahEnv`` and override only its reward:

- goal velocity: ``-|v - v_goal| - 0.05 * |a|^2`` with ``v_goal ~ U[0, 2]``;
- goal direction: ``d * v - 0.05 * |a|^2`` with ``d = +1`` (forward) or ``-1`` (backward), each with
  probability 1/2;

``v`` is gymnasium's forward velocity of the root (x displacement over the 5 frames of one step / 0.05 s)
and ``a`` the action clipped to ``[-1, 1]`` (rllab's ``normalize`` clipped it too; the cbfinn/maml_rl code
writes the control cost as ``0.5 * 1e-1 * sum(a^2)``). Observations are gymnasium's 17 numbers (joint
positions without the root's x, then velocities), not rllab's. Horizon: the paper's 200 in the study's cheetah
configs (100 is this class's default).

:class:`HalfCheetahTasks` steps all ``T x n_traj`` trajectories of a meta-batch at once, with one of two
samplers (the same states and rewards up to the physics solver's warm start; a test checks):

- ``"rollout"``: ``mujoco.rollout`` advances every trajectory's full physics state by one environment step
  (5 physics steps) in one call on a thread pool (about 3x the throughput of the vector env on 2 cores;
  ``benchmarks/bench_maml_rl.py`` measures it);
- ``"vector"``: ``gymnasium.vector.SyncVectorEnv`` over the subclasses above, the plain fallback.

gymnasium and mujoco are imported lazily (``pip install "gymnasium[mujoco]"``), so the rest of the package
works without them.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["CTRL_COST", "cheetah_reward", "HalfCheetahTasks", "make_cheetah_env", "available_samplers"]

CTRL_COST = 0.05  # cbfinn/maml_rl: 0.5 * 1e-1 * sum(a^2)
SAMPLERS = ("auto", "rollout", "vector")


def cheetah_reward(kind: str, x_velocity: np.ndarray, action: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(reward, forward_term)`` of the Vel (``kind="vel"``, ``goal`` = target velocity) or Dir (``"dir"``,
    ``goal`` = +1/-1) task. ``x_velocity``: (...,), ``action``: (..., 6) already clipped, ``goal``: (...,)."""
    ctrl = CTRL_COST * np.square(action).sum(-1)
    if kind == "vel":
        forward = -np.abs(x_velocity - goal)
    elif kind == "dir":
        forward = goal * x_velocity
    else:
        raise ValueError(f"unknown HalfCheetah task kind {kind!r}; choose 'vel' or 'dir'")
    return forward - ctrl, forward


@contextlib.contextmanager
def _mujoco_warnings_to_python() -> Iterator[None]:
    """MuJoCo writes its warnings to ``MUJOCO_LOG.TXT`` in the working directory (it warns that
    ``half_cheetah.xml`` uses a deprecated attribute); route them to Python's ``warnings`` instead while a
    model is compiled, and restore the previous handler."""
    import mujoco

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda msg: warnings.warn(f"MuJoCo: {msg}", RuntimeWarning, stacklevel=2))
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


@functools.lru_cache(maxsize=None)
def _env_classes() -> dict[str, type]:
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

    class HalfCheetahTaskEnv(HalfCheetahEnv):
        """``HalfCheetah-v5`` whose reward is that of one meta-RL task (set with :meth:`set_task`)."""

        kind = ""

        def __init__(self, goal: float = 1.0, **kwargs: Any):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                with _mujoco_warnings_to_python():
                    super().__init__(ctrl_cost_weight=CTRL_COST, **kwargs)
            self.goal = float(goal)

        def set_task(self, goal: float) -> None:
            self.goal = float(goal)

        def step(self, action: np.ndarray):
            return super().step(np.clip(action, -1.0, 1.0))

        def _get_rew(self, x_velocity: float, action: np.ndarray):
            reward, forward = cheetah_reward(self.kind, np.asarray(x_velocity), np.asarray(action), np.asarray(self.goal))
            return float(reward), {"reward_forward": float(forward), "reward_ctrl": float(forward - reward)}

    class HalfCheetahVelEnv(HalfCheetahTaskEnv):
        """Goal velocity: reward ``-|v - goal| - 0.05 |a|^2``."""
        kind = "vel"

    class HalfCheetahDirEnv(HalfCheetahTaskEnv):
        """Goal direction: reward ``goal * v - 0.05 |a|^2`` with ``goal`` in {+1, -1}."""
        kind = "dir"

    return {"vel": HalfCheetahVelEnv, "dir": HalfCheetahDirEnv}


def make_cheetah_env(kind: str, goal: float = 1.0, **kwargs: Any):
    """One gymnasium environment of the Vel (``kind="vel"``) or Dir (``"dir"``) family."""
    classes = _env_classes()
    if kind not in classes:
        raise ValueError(f"unknown HalfCheetah task kind {kind!r}; choose 'vel' or 'dir'")
    return classes[kind](goal=goal, **kwargs)


def available_samplers() -> tuple[str, ...]:
    """Samplers that can run here: ``rollout`` needs ``mujoco.rollout`` (mujoco >= 3.1)."""
    try:
        from mujoco import rollout  # noqa: F401
    except ImportError:
        return ("vector",)
    return ("rollout", "vector")


class HalfCheetahTasks:
    """A batched Vel or Dir task family (see the module docstring). ``threads``: mujoco.rollout's pool size
    (1 runs on the calling thread)."""

    obs_dim, act_dim, task_dim = 17, 6, 1

    def __init__(self, kind: str, *, horizon: int = 100, device: torch.device | str = "cpu", sampler: str = "auto",
                 threads: int = 1):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "auto":
            sampler = available_samplers()[0]
        elif sampler not in available_samplers():
            raise ValueError("sampler='rollout' needs mujoco.rollout (mujoco >= 3.1); use sampler='vector'")
        self.kind, self.name = kind, f"cheetah_{kind}"
        self.horizon, self.device, self.sampler = horizon, torch.device(device), sampler
        self.threads = max(1, int(threads))
        self._env = make_cheetah_env(kind)  # the model, initial pose and step length
        self.frame_skip, self.dt = self._env.frame_skip, self._env.dt
        self._noise = self._env._reset_noise_scale
        self._goal: np.ndarray | None = None
        self._shape: tuple[int, int] = (0, 0)
        self._state: np.ndarray | None = None  # rollout: (B, nstate) full physics states
        self._vec: Any = None
        self._vec_size = 0
        self._pool: Any = None
        self._datas: list[Any] = []

    # -- tasks ------------------------------------------------------------------------------
    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        """``(n, 1)``: goal velocities ``U[0, 2]`` (vel) or directions ``+1/-1`` with probability 1/2 (dir)."""
        u = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        goals = 2.0 * u if self.kind == "vel" else torch.where(u < 0.5, -1.0, 1.0)
        return goals.to(device=self.device, dtype=torch.float32)

    def _initial_qpos_qvel(self, batch: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """gymnasium's reset distribution: ``qpos = init + U(-0.1, 0.1)``, ``qvel = init + 0.1 N(0, 1)``."""
        model = self._env.model
        u = torch.rand(batch, model.nq, generator=generator, dtype=torch.float64).numpy()
        n = torch.randn(batch, model.nv, generator=generator, dtype=torch.float64).numpy()
        qpos = self._env.init_qpos[None] + (2 * u - 1) * self._noise
        qvel = self._env.init_qvel[None] + self._noise * n
        return qpos, qvel

    def reset(self, tasks: Tensor, n_traj: int, generator: torch.Generator) -> Tensor:
        if tasks.ndim != 2 or tasks.shape[1] != 1:
            raise ValueError(f"HalfCheetah tasks have shape (T, 1), got {tuple(tasks.shape)}")
        t = tasks.shape[0]
        batch = t * n_traj
        self._shape = (t, n_traj)
        self._goal = np.repeat(tasks.detach().cpu().double().numpy()[:, 0], n_traj)  # (B,)
        qpos, qvel = self._initial_qpos_qvel(batch, generator)
        if self.sampler == "rollout":
            self._state = np.concatenate([np.zeros((batch, 1)), qpos, qvel], axis=1)
            obs = np.concatenate([qpos[:, 1:], qvel], axis=1)
        else:
            obs = self._reset_vector(qpos, qvel)
        return self._to_torch(obs).view(t, n_traj, self.obs_dim)

    # -- stepping ----------------------------------------------------------------------------
    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``actions: (T, N, 6)`` (clipped to [-1, 1] here) -> obs ``(T, N, 17)``, reward ``(T, N)``, done
        ``(T, N)`` (always False: HalfCheetah never terminates; the horizon ends trajectories)."""
        if self._goal is None:
            raise RuntimeError("call reset() before step()")
        t, n = self._shape
        act = actions.detach().to("cpu", torch.float64).numpy().reshape(t * n, self.act_dim).clip(-1.0, 1.0)
        if self.sampler == "rollout":
            obs, reward = self._step_rollout(act)
        else:
            obs, reward = self._step_vector(act)
        done = torch.zeros(t, n, dtype=torch.bool, device=self.device)
        return self._to_torch(obs).view(t, n, self.obs_dim), self._to_torch(reward).view(t, n), done

    def _to_torch(self, x: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(device=self.device, dtype=torch.float32)

    def _step_rollout(self, act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import mujoco
        from mujoco import rollout

        model = self._env.model
        if self._pool is None:
            self._pool = rollout.Rollout(nthread=self.threads if self.threads > 1 else 0)
            self._datas = [mujoco.MjData(model) for _ in range(self.threads)]
        assert self._state is not None
        control = np.repeat(act[:, None, :], self.frame_skip, axis=1)  # (B, frame_skip, 6)
        states, _ = self._pool.rollout(model, self._datas, self._state, control, nstep=self.frame_skip)
        new = states[:, -1]
        nq = model.nq
        x_before, x_after = self._state[:, 1], new[:, 1]
        self._state = np.ascontiguousarray(new)
        obs = np.concatenate([new[:, 2:1 + nq], new[:, 1 + nq:1 + nq + model.nv]], axis=1)
        reward, _ = cheetah_reward(self.kind, (x_after - x_before) / self.dt, act, self._goal)
        return obs, reward

    def _reset_vector(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        from gymnasium.vector import SyncVectorEnv

        batch = qpos.shape[0]
        if self._vec is None or self._vec_size != batch:
            if self._vec is not None:
                self._vec.close()
            kind = self.kind
            self._vec = SyncVectorEnv([lambda: make_cheetah_env(kind) for _ in range(batch)])
            self._vec_size = batch
        self._vec.reset(seed=0)
        obs = []
        for env, g, qp, qv in zip(self._vec.envs, self._goal, qpos, qvel):
            base = env.unwrapped
            base.set_task(g)
            base.set_state(qp, qv)
            obs.append(base._get_obs())
        return np.stack(obs)

    def _step_vector(self, act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        obs, reward, _, _, _ = self._vec.step(act)
        return obs, reward

    def close(self) -> None:
        if self._vec is not None:
            self._vec.close()
            self._vec = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
