"""MAML for reinforcement learning: the REINFORCE inner step, the three meta-gradient estimators and the
TRPO meta-objective, all batched over tasks.

Inner step (Finn et al. 2017, App. A.2): one vanilla policy-gradient step per task,
``theta'_i = theta - alpha * grad L_in_i(theta)``, on trajectories sampled with ``theta`` from task ``i``,
with per-task normalised advantages of the linear feature baseline (:mod:`nbmodule.rl.returns`). All tasks
adapt in one backward pass: the shared parameters are expanded over a task dim
(:func:`~nbmodule.rl.policy.expand_params`), the per-task losses are summed, and the gradient with respect
to the expanded tensors is every task's own gradient.

Estimators. All three inner losses have the same value and the same gradient (the REINFORCE estimate
``-mean_t grad log pi(a_t|s_t) A_t``), so the adapted parameters are identical; they differ in their
*second* derivative, which is what the meta-gradient differentiates through the adaptation:

- ``maml``: ``-mean(log pi * A)`` (cbfinn/maml_rl). Its Hessian keeps only ``grad^2 log pi * A`` and misses
  the term of the sampling distribution's dependence on ``theta`` (Rothfuss et al. 2019, ProMP).
- ``lvc``: ``-mean(pi / stop_grad(pi) * A)``, ProMP's low-variance curvature estimator, adds the per-step
  outer products ``grad log pi_t grad log pi_t^T A_t``.
- ``dice``: DiCE (Foerster et al. 2018) with the magic box of each step's cumulative log-probability,
  ``-mean_t box(sum_{t' <= t} log pi_t') c_t``. The per-step weights ``c_t = A_t - A_{t+1}`` have the
  advantages as their reward-to-go, so the first derivative equals the other two; the second derivative
  adds every cross-time outer product (unbiased, high variance).

Outer step: TRPO (:func:`~nbmodule.rl.trpo.trpo_step`) on the post-update trajectories with the likelihood
ratio surrogate ``-mean(pi_theta' / pi_theta'_old * A')`` and the mean KL between the old and new
post-update policies. Its curvature (``HVP_MODES``):

- ``exact`` (default): the KL's Hessian through the adaptation, as the Fisher of the adapted policies pulled
  back through the inner update with forward-mode products (:mod:`nbmodule.rl.fisher`);
- ``double_backward``: the same matrix by double backpropagation through the KL (the original way, and the
  benchmark's in-process baseline; several times slower);
- ``cheap``: the adaptation's Jacobian taken as the identity (the Fisher at the adapted parameters).

``first_order`` (FOMAML, as tristandeleu/pytorch-maml-rl's ``first_order``): the inner gradient is treated as
a constant, so neither the meta-gradient nor the curvature differentiates through the adaptation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from .policy import GaussianMLPPolicy, Params, detach_params, expand_params, gaussian_kl, log_prob
from .sampler import Batch

__all__ = ["ESTIMATORS", "HVP_MODES", "inner_loss", "policy_log_prob", "adapt", "StepData", "MetaBatch",
           "adapted_params", "record_old_policy", "meta_objective", "cheap_curvature"]

ESTIMATORS = ("maml", "lvc", "dice")
HVP_MODES = ("exact", "double_backward", "cheap")


def _per_task_mean(x: Tensor, mask: Tensor) -> Tensor:
    dims = tuple(range(1, x.ndim))
    return (x * mask).sum(dims) / mask.sum(dims).clamp(min=1)


def inner_loss(logp: Tensor, adv: Tensor, mask: Tensor, estimator: str = "maml") -> Tensor:
    """Per-task inner loss ``(T,)`` from log-probabilities, advantages and mask, each ``(T, N, H)``.

    Means run over each task's unmasked steps. See the module docstring for the three estimators.
    """
    if estimator == "maml":
        return -_per_task_mean(logp * adv, mask)
    if estimator == "lvc":
        return -_per_task_mean(torch.exp(logp - logp.detach()) * adv, mask)
    if estimator == "dice":
        cum = torch.cumsum(logp * mask, dim=-1)
        box = torch.exp(cum - cum.detach())
        a = adv * mask
        c = a - torch.cat([a[..., 1:], torch.zeros_like(a[..., :1])], dim=-1)
        return -_per_task_mean(box * c, mask)
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")


def policy_log_prob(policy: GaussianMLPPolicy, params: Params, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """``(log_prob (T, N, H), mean (T, N*H, A), log_std (T, 1, A))`` of the batch's actions under per-task
    ``params``."""
    t, n, h = batch.shape
    mean, log_std = policy.forward_tasks(params, batch.obs.reshape(t, n * h, -1))
    lp = log_prob(mean, log_std, batch.actions.reshape(t, n * h, -1)).view(t, n, h)
    return lp, mean, log_std


def adapt(policy: GaussianMLPPolicy, params: Params, batch: Batch, adv: Tensor, lr: float, *,
          estimator: str = "maml", create_graph: bool = False, first_order: bool = False) -> dict[str, Tensor]:
    """One inner step for every task: per-task parameters ``theta_i - lr * grad L_in_i`` (leading dim T).

    ``params``: shared (no task dim; expanded here) or already per task (leading dim T). With
    ``create_graph`` the result stays differentiable with respect to ``params`` (second order; with
    ``first_order`` only through ``theta_i``, the inner gradient being a constant), otherwise it is detached.
    """
    t = batch.shape[0]
    shared = params["log_std"].ndim == policy.log_std.ndim
    per_task = expand_params(params, t) if shared else dict(params)
    leaves = per_task if create_graph and not first_order else {k: v.detach().requires_grad_()
                                                                for k, v in per_task.items()}
    with torch.enable_grad():
        logp, _, _ = policy_log_prob(policy, leaves, batch)
        loss = inner_loss(logp, adv, batch.mask, estimator).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph and not first_order)
    if not create_graph:
        return {k: (v - lr * g).detach() for (k, v), g in zip(per_task.items(), grads)}
    return {k: v - lr * g for (k, v), g in zip(per_task.items(), grads)}


@dataclass
class StepData:
    """Trajectories of one step and their advantages."""
    batch: Batch
    adv: Tensor


@dataclass
class MetaBatch:
    """One meta-iteration's data: ``pre[k]`` sampled with the parameters after k inner steps, ``post`` with
    the adapted ones; ``lrs[k]`` the k-th inner step size; ``old_*`` the post-update policy that sampled
    ``post`` (detached)."""
    pre: list[StepData]
    post: StepData
    lrs: Sequence[float]
    old_logp: Optional[Tensor] = None       # (T, N, H)
    old_mean: Optional[Tensor] = None       # (T, N*H, A)
    old_log_std: Optional[Tensor] = None    # (T, 1, A)
    old_params: Optional[dict[str, Tensor]] = None  # per-task adapted parameters that sampled `post`


def adapted_params(policy: GaussianMLPPolicy, params: Params, mb: MetaBatch, estimator: str,
                   create_graph: bool, first_order: bool = False) -> dict[str, Tensor]:
    """The per-task parameters after ``len(mb.pre)`` inner steps from ``params`` (shared); with no inner
    step, ``params`` expanded over the tasks."""
    p: Params = params
    for step, lr in zip(mb.pre, mb.lrs):
        p = adapt(policy, p, step.batch, step.adv, lr, estimator=estimator, create_graph=create_graph,
                  first_order=first_order)
    if not mb.pre:
        p = expand_params(params, mb.post.batch.shape[0])
    return dict(p)


def record_old_policy(policy: GaussianMLPPolicy, params: dict[str, Tensor], mb: MetaBatch) -> MetaBatch:
    """Store the sampling (post-update) policy's log-probabilities and distribution on ``mb.post``."""
    with torch.no_grad():
        logp, mean, log_std = policy_log_prob(policy, params, mb.post.batch)
    mb.old_logp, mb.old_mean, mb.old_log_std = logp, mean, log_std
    mb.old_params = detach_params(params)
    return mb


def _surrogate_and_kl(policy: GaussianMLPPolicy, p: Params, mb: MetaBatch) -> tuple[Tensor, Tensor]:
    post = mb.post
    logp, mean, log_std = policy_log_prob(policy, p, post.batch)
    ratio = torch.exp(logp - mb.old_logp)
    surr = -_per_task_mean(ratio * post.adv, post.batch.mask).mean()
    t, n, h = post.batch.shape
    kl = gaussian_kl(mb.old_mean, mb.old_log_std, mean, log_std).view(t, n, h)
    return surr, _per_task_mean(kl, post.batch.mask).mean()


def meta_objective(policy: GaussianMLPPolicy, mb: MetaBatch, estimator: str = "maml", first_order: bool = False):
    """``objective(params, create_graph) -> (surrogate loss, mean KL)`` for :func:`trpo_step`: adapt from
    ``params`` on the pre-update data (through the adaptation when ``create_graph``, with the inner gradient
    held constant when ``first_order``), then evaluate the post-update trajectories' likelihood-ratio
    surrogate and the KL to the policy that sampled them."""
    if mb.old_logp is None:
        raise ValueError("call record_old_policy(policy, adapted_params, mb) before building the objective")

    def objective(params: dict[str, Tensor], create_graph: bool) -> tuple[Tensor, Tensor]:
        with torch.set_grad_enabled(create_graph):
            p = adapted_params(policy, params, mb, estimator, create_graph, first_order)
            return _surrogate_and_kl(policy, p, mb)

    return objective


def cheap_curvature(policy: GaussianMLPPolicy, mb: MetaBatch):
    """``curvature(params)`` for :func:`trpo_step`'s cheap option: the KL at ``theta'_old + (theta - theta_old)``,
    i.e. the adaptation's Jacobian taken as the identity (the Fisher of the adapted policies)."""

    def curvature(params: dict[str, Tensor]) -> Tensor:
        anchor = {k: v.detach() for k, v in params.items()}
        p = {k: mb.old_params[k] + (params[k] - anchor[k]).unsqueeze(0) for k in params}
        return _surrogate_and_kl(policy, p, mb)[1]

    return curvature
