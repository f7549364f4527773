"""A functional MAML engine: parameters are a dict of tensors, the model is called with ``functional_call``.

The inner loop is a pure function, :func:`adapt` (``params -> adapted params``); the outer loop is plain
PyTorch: :func:`meta_loss` returns a differentiable loss over a batch of tasks, and the caller runs
``loss.backward()`` and its optimiser. Second order by default (the inner gradients stay in the graph, so the
meta-gradient differentiates through them); ``first_order=True`` detaches them (FOMAML).

Tasks of a meta-batch run in one of three ways that compute the same numbers (tests check the meta-gradients
against each other): ``"loop"`` (one task at a time), ``"vmap"`` (``torch.func.vmap`` over tasks: per-task
linear layers become batched matmuls, much faster than a loop for small MLPs) and ``"batched"`` (the
task-batched program of :mod:`nbmodule.meta.batched`: per-task convolutions as batched GEMMs, per-task batch
norm, plain autograd). Which is fastest depends on the model, the batch and the machine, so the measured
choice is :func:`nbmodule.meta.choose_strategy` (it returns a :class:`~nbmodule.meta.StrategyChoice`, pass it
as ``strategy=``, and records every timing for the run folder). ``strategy="auto"`` is a fixed, cheap rule
(:func:`resolve_strategy`): vmap for models without convolutions, the loop for conv nets on a CPU. The
measurements behind these rules are in ``benchmarks/`` (``bench_maml_sinusoid.py``, ``bench_fewshot.py``):
vmap is 5-10x the loop on the sinusoid MLP; on Conv4 the loop and vmap are within ~10% of each other on a CPU
(vmap's grouped convolutions are not several times slower there, but not faster either), and the batched
path is what beats the loop. One correctness exception: second-order gradients through BatchNorm/LayerNorm
are wrong under vmap (functorch #534), so ``"auto"`` uses the loop there and ``"vmap"`` refuses (see
:func:`resolve_strategy`); the batched path is exact there.

Example (a user's own module, five lines of meta-training)::

    maml = MAML(net, inner_lr=0.01)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    for xs, ys, xq, yq in task_batches:            # each (T, N, ...): T tasks per meta-batch
        loss, per_task = maml.meta_loss((xs, ys, xq, yq), F.mse_loss)
        opt.zero_grad(); loss.backward(); opt.step()

BatchNorm: models meant for MAML use ``BatchNorm(track_running_stats=False)`` (batch statistics of each
task), so there are no buffers to thread through. Buffers can still be passed (``buffers=``); a model that
updates running statistics in place cannot run under vmap, so ``"auto"`` uses the loop for it.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call, grad, vmap

if TYPE_CHECKING:
    from .strategy import StrategyChoice

__all__ = [
    "LossFn", "InnerLR", "forward", "adapt", "meta_loss", "finetune_curve", "resolve_strategy", "vmap_problem", "MAML",
    "Learner",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
#: a float, one float per inner step, or a tensor per adapted parameter (Meta-SGD)
InnerLR = Union[float, Sequence[float], Mapping[str, Tensor]]
Tasks = tuple[Tensor, Tensor, Tensor, Tensor]

_STRATEGIES = ("auto", "vmap", "loop", "batched")


def forward(model: nn.Module, params: Mapping[str, Tensor], x: Tensor,
            buffers: Mapping[str, Tensor] | None = None) -> Tensor:
    """``model(x)`` with ``params`` (and ``buffers``) in place of the module's own; missing names come from
    the module itself, so ``params`` may be a subset (e.g. only a head adapts)."""
    return functional_call(model, {**params, **(buffers or {})}, (x,))


def _check_inner_lr(inner_lr: InnerLR, steps: int, params: Mapping[str, Tensor]) -> None:
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(inner_lr, Mapping):
        missing = [k for k in params if k not in inner_lr]
        if missing:
            raise ValueError(f"per-parameter inner_lr lacks entries for {missing}")
    elif isinstance(inner_lr, (list, tuple)):
        if len(inner_lr) != steps:
            raise ValueError(f"per-step inner_lr has {len(inner_lr)} values for steps={steps}; give one per step")
    elif not isinstance(inner_lr, (int, float)):
        raise TypeError(f"inner_lr must be a float, a list of floats or a dict name->Tensor, got {type(inner_lr).__name__}")


def _lr(inner_lr: InnerLR, step: int, name: str) -> float | Tensor:
    if isinstance(inner_lr, Mapping):
        return inner_lr[name]
    if isinstance(inner_lr, (list, tuple)):
        return inner_lr[step]
    return inner_lr


def _adapt(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, loss_fn: LossFn, steps: int,
           inner_lr: InnerLR, first_order: bool, buffers: Mapping[str, Tensor] | None,
           vectorised: bool = True) -> dict[str, Tensor]:
    def support_loss(p: dict[str, Tensor]) -> Tensor:
        return loss_fn(forward(model, p, x, buffers), y)

    p = dict(params)
    for step in range(steps):
        if vectorised:
            # torch.func.grad so the same code runs per task under vmap; the outer autograd still records
            # it, which is what makes the meta-gradient second order.
            g = grad(support_loss)(p)
        else:
            # plain autograd in the loop path: it also allows modules that update buffers in place
            p = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in p.items()}
            with torch.enable_grad():
                gs = torch.autograd.grad(support_loss(p), list(p.values()), create_graph=not first_order)
            g = dict(zip(p, gs))
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        p = {k: p[k] - _lr(inner_lr, step, k) * g[k] for k in p}
    return p


def adapt(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, loss_fn: LossFn, *,
          steps: int = 1, inner_lr: InnerLR = 0.01, first_order: bool = False,
          buffers: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``steps`` gradient steps of ``loss_fn(model(x), y)`` from ``params``: the adapted parameters.

    ``x``, ``y``: one task's support set (no task dim). ``params``: name -> tensor, possibly a subset of the
    model's parameters (the others stay the module's own and are not adapted). ``inner_lr``: a float, one
    float per step, or name -> tensor (Meta-SGD: learnable, per-parameter). The result stays connected to
    ``params`` (second order) unless ``first_order``.
    """
    _check_inner_lr(inner_lr, steps, params)
    return _adapt(model, params, x, y, loss_fn, steps, inner_lr, first_order, buffers)


# Under vmap, the batching rules of batch_norm's and layer_norm's backward give wrong *second-order*
# gradients (functorch issue #534, still open; measured here: 1-15% off against finite differences, while the
# loop path matches them to 1e-9). First-order results agree, so only second-order MAML avoids vmap for them.
def _normalises_with_input_statistics(m: nn.Module) -> bool:
    if isinstance(m, nn.LayerNorm):
        return True
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return m.training or not m.track_running_stats  # eval with running stats is a fixed affine map
    return False


def vmap_problem(model: nn.Module, *, first_order: bool = False) -> str | None:
    """Why ``vmap`` cannot run this model correctly, or None: second-order MAML through BatchNorm/LayerNorm
    (functorch #534: wrong meta-gradients), or a batch norm updating running statistics in place."""
    if not first_order and any(_normalises_with_input_statistics(m) for m in model.modules()):
        return ("second-order MAML through BatchNorm/LayerNorm gives wrong meta-gradients under vmap "
                "(functorch issue #534)")
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training:
            return f"{type(m).__name__} updates its running statistics in place, which vmap cannot batch"
    return None


def resolve_strategy(strategy: str, model: nn.Module, device: torch.device | str, *,
                     first_order: bool = False) -> str:
    """``"vmap"``, ``"loop"`` or ``"batched"`` for ``strategy``. ``"auto"`` = the loop for conv nets on a CPU
    (grouped convs under vmap are no faster than a loop there), for modules updating running statistics in
    place, and for second-order MAML through BatchNorm/LayerNorm (vmap's gradients are wrong there); vmap
    otherwise. Asking for ``"vmap"`` in that last case is an error rather than a silently wrong meta-gradient.
    ``"batched"`` for a model the batched path does not cover gives ``"loop"`` with a warning naming the layer.
    The measured choice is :func:`nbmodule.meta.choose_strategy`."""
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    unsafe = not first_order and any(_normalises_with_input_statistics(m) for m in model.modules())
    if strategy == "vmap" and unsafe:
        raise ValueError("strategy='vmap' with second-order MAML through BatchNorm/LayerNorm gives wrong "
                         "meta-gradients (functorch issue #534); use strategy='loop' or 'auto', or first_order=True")
    if strategy == "batched":
        from .batched import Unsupported, compile_batched

        try:
            compile_batched(model)
        except Unsupported as e:
            warnings.warn(f"strategy 'batched' falls back to the loop: {e.reason}", stacklevel=3)
            return "loop"
        return "batched"
    if strategy != "auto":
        return strategy
    if unsafe:
        return "loop"
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training:
            return "loop"
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    if has_conv and torch.device(device).type == "cpu":
        return "loop"
    return "vmap"


def _check_tasks(tasks: Sequence[Tensor]) -> Tasks:
    if len(tasks) != 4:
        raise ValueError(f"tasks must be (x_support, y_support, x_query, y_query), got {len(tasks)} items")
    xs, ys, xq, yq = tasks
    sizes = {t.shape[0] for t in tasks}
    if len(sizes) != 1:
        raise ValueError(f"all task tensors need the same leading task dim, got {[tuple(t.shape) for t in tasks]}")
    return xs, ys, xq, yq


def _map_tasks(fn: Callable[..., tuple[Tensor, ...]], tasks: Tasks, strategy: str) -> tuple[Tensor, ...]:
    if strategy == "vmap":
        return vmap(fn, randomness="different")(*tasks)
    outs = [fn(*(t[i] for t in tasks)) for i in range(tasks[0].shape[0])]
    return tuple(torch.stack(col) for col in zip(*outs))


def meta_loss(model: nn.Module, params: Mapping[str, Tensor], tasks: Sequence[Tensor], loss_fn: LossFn, *,
              steps: int = 1, inner_lr: InnerLR = 0.01, first_order: bool = False,
              weights: Tensor | Sequence[float] | None = None, strategy: "str | StrategyChoice" = "auto",
              return_outputs: bool = False, buffers: Mapping[str, Tensor] | None = None,
              chunk: int | None = None) -> tuple[Tensor, ...]:
    """The MAML objective over a batch of T tasks: ``mean_t(w_t * L_t)``, ``L_t`` = query loss after adaptation.

    ``tasks`` = ``(xs, ys, xq, yq)``, each with a leading task dim T (e.g. ``xs: (T, K, 1)``). ``weights``:
    (T,) per-task weights (importance weights), 1 by default. Returns ``(loss, per_task_losses)`` with
    ``per_task_losses: (T,)`` detached, plus ``query_outputs: (T, Q, ...)`` (detached predictions of the
    adapted models on ``xq``) when ``return_outputs``. ``strategy``: ``"auto"``, ``"loop"``, ``"vmap"``,
    ``"batched"`` or a :class:`~nbmodule.meta.StrategyChoice` from :func:`~nbmodule.meta.choose_strategy`;
    ``chunk``: tasks per batched call (``"batched"`` only; default: sized by memory, see
    :data:`nbmodule.meta.batched.CHUNK_BYTES`).
    """
    xs, ys, xq, yq = _check_tasks(tasks)
    _check_inner_lr(inner_lr, steps, params)
    strategy, chunk = _unpack(strategy, chunk)
    strat = resolve_strategy(strategy, model, xs.device, first_order=first_order or steps == 0)
    if strat == "batched":
        from .batched import Unsupported, batched_meta_loss

        try:
            losses, outputs = batched_meta_loss(model, params, (xs, ys, xq, yq), loss_fn, steps=steps,
                                                lr_of=lambda step, k: _lr(inner_lr, step, k),
                                                first_order=first_order, buffers=buffers, chunk=chunk)
            return _reduce(losses, outputs, weights, return_outputs)
        except Unsupported as e:  # found while running (e.g. an op on a shape it does not cover)
            warnings.warn(f"strategy 'batched' falls back to the loop: {e.reason}", stacklevel=2)
            strat = "loop"

    def task_loss(xs_t: Tensor, ys_t: Tensor, xq_t: Tensor, yq_t: Tensor) -> tuple[Tensor, Tensor]:
        p = _adapt(model, params, xs_t, ys_t, loss_fn, steps, inner_lr, first_order, buffers, strat == "vmap")
        out = forward(model, p, xq_t, buffers)
        return loss_fn(out, yq_t), out

    losses, outputs = _map_tasks(task_loss, (xs, ys, xq, yq), strat)  # (T,), (T, Q, ...)
    return _reduce(losses, outputs, weights, return_outputs)


def _unpack(strategy: "str | StrategyChoice", chunk: int | None) -> tuple[str, int | None]:
    if isinstance(strategy, str):
        return strategy, chunk
    return strategy.strategy, chunk if chunk is not None else strategy.chunk


def _reduce(losses: Tensor, outputs: Tensor, weights: Tensor | Sequence[float] | None,
            return_outputs: bool) -> tuple[Tensor, ...]:
    if weights is None:
        loss = losses.mean()
    else:
        w = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device)
        if w.shape != losses.shape:
            raise ValueError(f"weights must have shape {tuple(losses.shape)} (one per task), got {tuple(w.shape)}")
        loss = (w * losses).mean()
    if return_outputs:
        return loss, losses.detach(), outputs.detach()
    return loss, losses.detach()


def finetune_curve(model: nn.Module, params: Mapping[str, Tensor], tasks: Sequence[Tensor], loss_fn: LossFn, *,
                   steps: int = 10, inner_lr: InnerLR = 0.01, strategy: "str | StrategyChoice" = "auto",
                   buffers: Mapping[str, Tensor] | None = None, chunk: int | None = None) -> Tensor:
    """Evaluation: query losses of each task after 0, 1, ..., ``steps`` plain gradient steps on its support set.

    No meta-gradient is kept (parameters detached, first order). Returns ``(T, steps + 1)``; column 0 is the
    loss before adaptation, column ``s`` after ``s`` steps.
    """
    xs, ys, xq, yq = _check_tasks(tasks)
    _check_inner_lr(inner_lr, steps, params)
    strategy, chunk = _unpack(strategy, chunk)
    strat = resolve_strategy(strategy, model, xs.device, first_order=True)
    if strat == "batched":
        from .batched import Unsupported, batched_finetune_curve

        try:
            return batched_finetune_curve(model, params, (xs, ys, xq, yq), loss_fn, steps=steps,
                                          lr_of=lambda step, k: _lr(inner_lr, step, k), buffers=buffers, chunk=chunk)
        except Unsupported as e:
            warnings.warn(f"strategy 'batched' falls back to the loop: {e.reason}", stacklevel=2)
            strat = "loop"
    detached = {k: v.detach() for k, v in params.items()}
    bufs = {k: v.detach() for k, v in buffers.items()} if buffers else None

    def curve(xs_t: Tensor, ys_t: Tensor, xq_t: Tensor, yq_t: Tensor) -> tuple[Tensor]:
        p = detached
        out = [loss_fn(forward(model, p, xq_t, bufs), yq_t)]
        for step in range(steps):
            step_lr = inner_lr if isinstance(inner_lr, Mapping) else _lr(inner_lr, step, "")
            p = _adapt(model, p, xs_t, ys_t, loss_fn, 1, step_lr, True, bufs, strat == "vmap")
            if strat == "loop":
                p = {k: v.detach() for k, v in p.items()}
            out.append(loss_fn(forward(model, p, xq_t, bufs), yq_t))
        return (torch.stack(out),)

    with torch.no_grad():  # torch.func.grad still differentiates inside; nothing is recorded outside
        (losses,) = _map_tasks(curve, (xs, ys, xq, yq), strat)
    return losses


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
                 strategy: "str | StrategyChoice" = "auto", loss_fn: LossFn | None = None):
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
                        **kwargs) -> "StrategyChoice":
        """Measure the strategies on ``tasks`` (:func:`nbmodule.meta.choose_strategy`), keep the pick as this
        wrapper's ``strategy`` and return the record (write ``choice.to_dict()`` into the run folder)."""
        from .strategy import choose_strategy

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
