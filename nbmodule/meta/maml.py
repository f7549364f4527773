"""The learn2learn-like MAML wrapper: :class:`MAML` over any ``nn.Module``, and :class:`Learner`.

The mathematics is :mod:`nbmodule.meta.functional` (:func:`adapt`, :func:`meta_loss`, :func:`finetune_curve`,
re-exported here); :meth:`MAML.choose_strategy` measures how tasks should run
(:func:`nbmodule.meta.choose_strategy`). Layers, each importing only the one below it:
``functional`` <- ``strategy`` <- ``maml``.

Example (a user's own module, five lines of meta-training)::

    maml = MAML(net, inner_lr=0.01)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    for xs, ys, xq, yq in task_batches:            # each (T, N, ...): T tasks per meta-batch
        loss, per_task = maml.meta_loss((xs, ys, xq, yq), F.mse_loss)
        opt.zero_grad(); loss.backward(); opt.step()
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .functional import (Choice, InnerLR, LossFn, adapt, finetune_curve, forward, meta_loss, resolve_strategy,
                         vmap_problem)
from .strategy import StrategyChoice, choose_strategy

__all__ = ["MAML", "Learner", "LossFn", "InnerLR", "forward", "adapt", "meta_loss", "finetune_curve",
           "resolve_strategy", "vmap_problem"]


class Learner:
    """A model with its own (adapted) parameters: learn2learn's ``clone()`` without copying the module.

    ``learner.adapt(x, y)`` takes inner steps in place (the result stays differentiable w.r.t. the meta
    parameters unless first order), ``learner(x)`` predicts with the adapted parameters.
    """

    def __init__(self, maml: "MAML", params: dict[str, Tensor]):
        self.maml = maml
        self.params = params

    def adapt(self, x: Tensor, y: Tensor, loss_fn: LossFn | None = None, *, steps: int | None = None,
              first_order: bool | None = None) -> "Learner":
        m = self.maml
        n = m.steps if steps is None else steps
        self.params = adapt(m.module, self.params, x, y, loss_fn or m.loss_fn, steps=n, inner_lr=m.step_lrs(n),
                            first_order=m.first_order if first_order is None else first_order)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return forward(self.maml.module, self.params, x)


class MAML(nn.Module):
    """learn2learn-style wrapper over :func:`adapt` / :func:`meta_loss` for any ``nn.Module``.

    ``adapt_names``: names (or prefixes) of the parameters adapted in the inner loop, default all trainable
    ones; the rest are shared across tasks and meta-learned only. ``learn_inner_lr=True`` gives every adapted
    parameter a learnable step size tensor initialised to ``inner_lr`` (Meta-SGD); otherwise ``inner_lr`` is a
    float or one float per step. ``maml.parameters()`` holds the module's parameters and, with Meta-SGD, the
    step sizes: pass them all to the meta-optimiser.
    """

    def __init__(self, module: nn.Module, inner_lr: float | Sequence[float] = 0.01, *, steps: int = 1,
                 first_order: bool = False, learn_inner_lr: bool = False, adapt_names: Iterable[str] | None = None,
                 strategy: "str | Choice" = "auto", loss_fn: LossFn | None = None):
        super().__init__()
        self.module = module
        self.steps = steps
        self.first_order = first_order
        self.strategy = strategy
        self.loss_fn = loss_fn
        prefixes = tuple(adapt_names) if adapt_names is not None else None
        self.adapt_names = [n for n, p in module.named_parameters() if p.requires_grad
                            and (prefixes is None or any(n == q or n.startswith(q + ".") for q in prefixes))]
        if not self.adapt_names:
            raise ValueError(f"no trainable parameter matches adapt_names={prefixes}")
        self.learn_inner_lr = learn_inner_lr
        if learn_inner_lr:
            if not isinstance(inner_lr, (int, float)):
                raise ValueError("learn_inner_lr=True needs a float inner_lr (the initial step size)")
            named = dict(module.named_parameters())
            # ParameterDict keys may not contain '.', hence the key mapping
            self.inner_lrs = nn.ParameterDict({
                n.replace(".", "__"): nn.Parameter(torch.full_like(named[n].detach(), float(inner_lr)))
                for n in self.adapt_names})
            self.inner_lr: float | Sequence[float] = float(inner_lr)
        else:
            self.inner_lr = list(inner_lr) if isinstance(inner_lr, (list, tuple)) else float(inner_lr)

    def fast_params(self) -> dict[str, Tensor]:
        """The adapted parameters (name -> the module's own tensors, so gradients reach the module)."""
        named = dict(self.module.named_parameters())
        return {n: named[n] for n in self.adapt_names}

    def step_lrs(self, steps: int) -> InnerLR:
        if self.learn_inner_lr:
            return {n: self.inner_lrs[n.replace(".", "__")] for n in self.adapt_names}
        if isinstance(self.inner_lr, list) and len(self.inner_lr) != steps:
            raise ValueError(f"per-step inner_lr has {len(self.inner_lr)} values; cannot take {steps} steps")
        return self.inner_lr

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def clone(self) -> Learner:
        """A :class:`Learner` starting at the meta parameters."""
        return Learner(self, self.fast_params())

    def adapt(self, x: Tensor, y: Tensor, loss_fn: LossFn | None = None, *, steps: int | None = None) -> Learner:
        """Adapt to one task's support set: ``maml.adapt(xs, ys)(xq)`` predicts after adaptation."""
        return self.clone().adapt(x, y, loss_fn, steps=steps)

    def _loss_fn(self, loss_fn: LossFn | None) -> LossFn:
        fn = loss_fn or self.loss_fn
        if fn is None:
            raise ValueError("give a loss_fn (here or to MAML(..., loss_fn=...))")
        return fn

    def meta_loss(self, tasks: Sequence[Tensor], loss_fn: LossFn | None = None, *,
                  weights: Tensor | Sequence[float] | None = None, steps: int | None = None,
                  return_outputs: bool = False) -> tuple[Tensor, ...]:
        """:func:`meta_loss` with this wrapper's settings: ``(loss, per_task_losses[, query_outputs])``."""
        n = self.steps if steps is None else steps
        return meta_loss(self.module, self.fast_params(), tasks, self._loss_fn(loss_fn), steps=n,
                         inner_lr=self.step_lrs(n), first_order=self.first_order, weights=weights,
                         strategy=self.strategy, return_outputs=return_outputs)

    def choose_strategy(self, tasks: Sequence[Tensor], loss_fn: LossFn | None = None, *, steps: int | None = None,
                        **kwargs) -> StrategyChoice:
        """Measure the strategies on ``tasks`` (:func:`nbmodule.meta.choose_strategy`), keep the pick as this
        wrapper's ``strategy`` and return the record (write ``choice.to_dict()`` into the run folder)."""
        n = self.steps if steps is None else steps
        self.strategy = choose_strategy(self.module, self.fast_params(), tasks, self._loss_fn(loss_fn), steps=n,
                                        inner_lr=self.step_lrs(n), first_order=self.first_order, **kwargs)
        return self.strategy

    def finetune_curve(self, tasks: Sequence[Tensor], loss_fn: LossFn | None = None, *, steps: int = 10,
                       inner_lr: InnerLR | None = None) -> Tensor:
        """:func:`finetune_curve` from the meta parameters: ``(T, steps + 1)`` query losses."""
        lr = inner_lr if inner_lr is not None else (
            self.step_lrs(steps) if self.learn_inner_lr or not isinstance(self.inner_lr, list) else self.inner_lr[0])
        return finetune_curve(self.module, self.fast_params(), tasks, self._loss_fn(loss_fn), steps=steps,
                              inner_lr=lr, strategy=self.strategy)
