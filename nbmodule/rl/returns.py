"""Returns, the linear feature baseline and advantages, per task and batched over tasks.

The baseline is rllab's ``LinearFeatureBaseline`` (used by cbfinn/maml_rl, ProMP and the PyTorch ports):
features ``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]`` of the (clipped) observation ``o`` and the step index
``t``, a ridge regression of the discounted returns-to-go on them (coefficient 1e-5, raised tenfold while the
solve fails), fitted on one task's trajectories and evaluated on the same ones. It is solved batched over
tasks with ``torch.linalg.solve_ex`` in float64 (``torch.lstsq`` no longer exists).

Advantages are GAE(gamma, lambda) on that baseline (lambda = 1: returns-to-go minus baseline), normalised
to zero mean and unit variance within each task.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .sampler import Batch

__all__ = ["discount_matrix", "discounted_returns", "baseline_features", "fit_linear_baseline", "linear_baseline",
           "gae", "normalize_per_task", "compute_advantages"]


def discount_matrix(horizon: int, factor: float, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Tensor:
    """``(H, H)`` upper-triangular ``M[i, j] = factor^(j - i)`` for ``j >= i``: ``x @ M.T`` is the discounted
    sum of each row's future, ``y_t = sum_{k >= t} factor^(k - t) x_k``."""
    idx = torch.arange(horizon, device=device, dtype=torch.float64)
    power = idx.view(1, -1) - idx.view(-1, 1)
    m = torch.where(power >= 0, torch.tensor(float(factor), dtype=torch.float64, device=device) ** power.clamp(min=0),
                    torch.zeros((), dtype=torch.float64, device=device))
    return m.to(dtype)


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """Returns-to-go ``R_t = sum_{k >= t} gamma^(k - t) r_k`` along the last dim (rewards past the end are 0)."""
    m = discount_matrix(rewards.shape[-1], gamma, dtype=rewards.dtype, device=rewards.device)
    return rewards @ m.T


def baseline_features(obs: Tensor, mask: Tensor) -> Tensor:
    """``(T, N, H, 2 * obs_dim + 4)``: ``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]`` with ``o`` clipped to
    [-10, 10] (rllab's features), zero on masked steps."""
    o = obs.clamp(-10, 10)
    h = obs.shape[2]
    t = (torch.arange(h, device=obs.device, dtype=obs.dtype) / 100.0).view(1, 1, h, 1).expand(*obs.shape[:3], 1)
    feats = torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1)


def fit_linear_baseline(features: Tensor, targets: Tensor, mask: Tensor, reg: float = 1e-5,
                        attempts: int = 5) -> Tensor:
    """Per-task ridge regression: ``(T, F)`` coefficients minimising ``|X w - y|^2 + reg |w|^2`` over the
    unmasked rows. ``features: (T, ..., F)``, ``targets``, ``mask: (T, ...)``. Solved in float64; when a
    solve fails or is not finite, ``reg`` grows tenfold (rllab's rule), up to ``attempts`` times."""
    t, f = features.shape[0], features.shape[-1]
    x = (features * mask.unsqueeze(-1)).reshape(t, -1, f).double()
    y = (targets * mask).reshape(t, -1, 1).double()
    xtx = x.transpose(1, 2) @ x
    xty = x.transpose(1, 2) @ y
    eye = torch.eye(f, dtype=torch.float64, device=x.device)
    for _ in range(attempts):
        w, info = torch.linalg.solve_ex(xtx + reg * eye, xty)
        if bool((info == 0).all()) and bool(torch.isfinite(w).all()):
            return w.squeeze(-1).to(features.dtype)
        reg *= 10
    raise FloatingPointError(f"the linear baseline could not be fitted (ridge coefficient up to {reg / 10:g})")


def linear_baseline(batch: Batch, returns: Tensor, reg: float = 1e-5) -> Tensor:
    """Baseline values ``(T, N, H)``: fitted on each task's trajectories, evaluated on the same ones."""
    feats = baseline_features(batch.obs, batch.mask)
    w = fit_linear_baseline(feats, returns, batch.mask, reg)
    return (feats @ w.view(w.shape[0], 1, -1, 1)).squeeze(-1) * batch.mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation along the last dim: ``delta_t = r_t + gamma V_{t+1} - V_t`` with
    ``V = 0`` after a trajectory's end, ``A_t = sum_k (gamma lam)^k delta_{t+k}``; 0 on masked steps."""
    next_values = torch.cat([values[..., 1:] * mask[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (rewards + gamma * next_values - values) * mask
    m = discount_matrix(rewards.shape[-1], gamma * lam, dtype=rewards.dtype, device=rewards.device)
    return (deltas @ m.T) * mask


def normalize_per_task(adv: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(A - mean) / (std + eps)`` over each task's unmasked steps (population std, as rllab); ``(T, ...)``."""
    dims = tuple(range(1, adv.ndim))
    n = mask.sum(dims, keepdim=True).clamp(min=1)
    mean = (adv * mask).sum(dims, keepdim=True) / n
    var = ((adv - mean).pow(2) * mask).sum(dims, keepdim=True) / n
    return (adv - mean) / (var.sqrt() + eps) * mask


def compute_advantages(batch: Batch, gamma: float = 0.99, lam: float = 1.0, reg: float = 1e-5,
                       normalize: bool = True) -> Tensor:
    """The advantages of the inner and outer updates: ``(T, N, H)``, normalised per task by default."""
    returns = discounted_returns(batch.rewards, gamma)
    values = linear_baseline(batch, returns, reg)
    adv = gae(batch.rewards, values, batch.mask, gamma, lam)
    return normalize_per_task(adv, batch.mask) if normalize else adv
