"""One MAML-RL meta-iteration (sample, adapt, sample again, TRPO) and the adaptation test protocol.

:func:`meta_iteration` with ``inner_steps >= 1`` is MAML-TRPO (Finn et al. 2017); with ``inner_steps = 0`` it
is plain multi-task TRPO on the pre-update trajectories, which trains the paper's "pretrained" baseline (one
policy for all tasks). :func:`evaluate_adaptation` runs the test protocol: on fixed goals, sample with the
current parameters, take a REINFORCE step on those trajectories (``alpha`` for the first step, ``alpha / 2``
for later ones), sample *fresh* trajectories with the adapted parameters, and so on; a step's return is the
undiscounted sum of rewards of a trajectory, averaged over the trajectories of each goal.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import Tensor

from .envs import MetaEnv
from .fisher import quadratic_model
from .maml import HVP_MODES, MetaBatch, StepData, adapt, meta_objective, record_old_policy
from .policy import GaussianMLPPolicy, detach_params, expand_params
from .returns import compute_advantages
from .sampler import Batch, sample_trajectories
from .trpo import TRPOInfo, trpo_step

__all__ = ["MetaRLSettings", "Timer", "meta_iteration", "trpo_update", "evaluation_lrs", "evaluate_adaptation"]


@dataclass(frozen=True)
class MetaRLSettings:
    """The algorithm's settings (the study config's fields of the same names)."""
    meta_batch_size: int = 20
    trajectories: int = 20
    inner_lr: float = 0.1
    inner_steps: int = 1
    estimator: str = "maml"
    hvp: str = "exact"            # exact (Fisher pull-back), double_backward (the same matrix, slower), cheap
    first_order: bool = False     # FOMAML: no derivative through the inner update
    gamma: float = 0.99
    gae_lambda: float = 1.0
    baseline_reg: float = 1e-5
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15


class Timer:
    """Wall-clock seconds accumulated per phase (CUDA synchronised, so GPU work is counted where it runs)."""

    def __init__(self, device: torch.device | str = "cpu", seconds: Mapping[str, float] | None = None):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = dict(seconds or {})

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


def _advantages(batch: Batch, s: MetaRLSettings) -> Tensor:
    return compute_advantages(batch, s.gamma, s.gae_lambda, s.baseline_reg)


def meta_iteration(env: MetaEnv, policy: GaussianMLPPolicy, theta: dict[str, Tensor], s: MetaRLSettings,
                   generator: torch.Generator, timer: Timer | None = None, *, inner_steps: int | None = None
                   ) -> tuple[dict[str, Tensor], dict[str, float], TRPOInfo]:
    """One meta-iteration from the meta-parameters ``theta``: returns ``(new theta, stats, trpo info)``.

    ``stats``: ``return_{k}step`` (mean return of the trajectories sampled after k inner steps, k = 0 ..
    inner_steps) and ``env_steps``. ``inner_steps`` overrides ``s.inner_steps`` (0: pretraining).
    """
    timer = timer or Timer()
    steps = s.inner_steps if inner_steps is None else inner_steps
    tasks = env.sample_tasks(s.meta_batch_size, generator)
    p = expand_params(theta, s.meta_batch_size)
    pre: list[StepData] = []
    stats: dict[str, float] = {}
    env_steps = 0
    for k in range(steps + 1):
        with timer("sampling"):
            batch = sample_trajectories(env, policy, p, tasks, s.trajectories, generator)
        stats[f"return_{k}step"] = float(batch.returns().mean())
        env_steps += batch.steps()
        with timer("inner"):
            adv = _advantages(batch, s)
            if k < steps:
                pre.append(StepData(batch, adv))
                p = adapt(policy, p, batch, adv, s.inner_lr, estimator=s.estimator)
    stats["env_steps"] = float(env_steps)
    mb = record_old_policy(policy, p, MetaBatch(pre, StepData(batch, adv), [s.inner_lr] * steps))
    with timer("trpo"):
        new, info = trpo_update(policy, theta, mb, s)
    return new, stats, info


def trpo_update(policy: GaussianMLPPolicy, theta: dict[str, Tensor], mb: MetaBatch, s: MetaRLSettings
                ) -> tuple[dict[str, Tensor], TRPOInfo]:
    """The TRPO meta-update of ``theta`` on a recorded meta-batch, with the settings' curvature (``s.hvp``),
    estimator and ``first_order``."""
    if s.hvp not in HVP_MODES:
        raise ValueError(f"hvp must be one of {HVP_MODES}, got {s.hvp!r}")
    objective = meta_objective(policy, mb, s.estimator, s.first_order)
    # double_backward differentiates `objective` twice (with first_order its KL's Hessian is the cheap one)
    model = None if s.hvp == "double_backward" else quadratic_model(
        policy, mb, s.estimator, curvature="cheap" if s.hvp == "cheap" else "exact", first_order=s.first_order)
    return trpo_step(theta, objective, max_kl=s.max_kl, cg_iters=s.cg_iters, damping=s.cg_damping,
                     backtrack_ratio=s.backtrack_ratio, max_backtracks=s.max_backtracks, model=model)


def evaluation_lrs(inner_lr: float, steps: int) -> list[float]:
    """The test-time step sizes: ``alpha`` for the first step, ``alpha / 2`` after (Finn et al. 2017)."""
    return [inner_lr if k == 0 else inner_lr / 2 for k in range(steps)]


@torch.no_grad()
def evaluate_adaptation(env: MetaEnv, policy: GaussianMLPPolicy, theta: Mapping[str, Tensor], goals: Tensor,
                        s: MetaRLSettings, *, trajectories: int, steps: int, generator: torch.Generator,
                        keep: int = 0, keep_trajectories: int = 5) -> dict[str, object]:
    """Returns after 0..``steps`` REINFORCE steps on each goal, with fresh trajectories at every step.

    Returns ``{"returns": (steps + 1, G) tensor}`` (mean over the goal's trajectories) and, when ``keep`` > 0,
    ``"observations"``: for k = 0..steps, the observed states of ``keep_trajectories`` trajectories for the
    first ``keep`` goals, as nested lists ``[goal][trajectory][step][dim]`` (unmasked steps only).
    """
    theta = detach_params(theta)
    g = goals.shape[0]
    p = expand_params(theta, g)
    lrs = evaluation_lrs(s.inner_lr, steps)
    rets, kept = [], []
    for k in range(steps + 1):
        batch = sample_trajectories(env, policy, p, goals, trajectories, generator)
        rets.append(batch.returns().mean(1).cpu())
        if keep:
            obs, mask = batch.obs[:keep, :keep_trajectories].cpu(), batch.mask[:keep, :keep_trajectories].cpu()
            kept.append([[o[m > 0].tolist() for o, m in zip(obs_g, mask_g)] for obs_g, mask_g in zip(obs, mask)])
        if k < steps:
            adv = _advantages(batch, s)
            p = adapt(policy, p, batch, adv, lrs[k], estimator="maml")
    out: dict[str, object] = {"returns": torch.stack(rets)}
    if keep:
        out["observations"] = kept
    return out
