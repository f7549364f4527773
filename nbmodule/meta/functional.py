"""MAML's functional core: parameters are a dict of tensors, the model is called with ``functional_call``.

The inner loop is a pure function, :func:`adapt` (``params -> adapted params``); the outer loop is plain
PyTorch: :func:`meta_loss` returns a differentiable loss over a batch of tasks, and the caller runs
``loss.backward()`` and its optimiser. Second order by default (the inner gradients stay in the graph, so the
meta-gradient differentiates through them); ``first_order=True`` detaches them (FOMAML). The
learn2learn-like wrapper over these functions is :class:`nbmodule.meta.MAML` (:mod:`nbmodule.meta.maml`).

Tasks of a meta-batch run in one of three ways that compute the same numbers (tests check the meta-gradients
against each other): ``"loop"`` (one task at a time), ``"vmap"`` (``torch.func.vmap`` over tasks: per-task
linear layers become batched matmuls) and ``"batched"`` (the task-batched program of
:mod:`nbmodule.meta.batched`: per-task convolutions as batched GEMMs, per-task batch norm, plain autograd).
Which is fastest depends on the model, the batch and the machine, so it is measured:
:func:`nbmodule.meta.choose_strategy` (:mod:`nbmodule.meta.strategy`) times the valid candidates on a real
meta-batch and returns a :class:`~nbmodule.meta.StrategyChoice` to pass as ``strategy=`` and to record. That is
what the few-shot study uses with ``strategy: auto`` (it measures on a GPU, and on a CPU for runs of 200
meta-iterations or more; shorter CPU runs take the loop and record "not measured": see
:func:`nbmodule.engines.fewshot.choose_strategy`); the timings behind it, beside the peer libraries', are in
``benchmarks/bench_maml_sinusoid.py`` and ``benchmarks/bench_fewshot.py``.

``strategy="auto"`` passed to :func:`meta_loss` itself is a fixed rule for callers that do not measure
(:func:`resolve_strategy`): the loop for conv nets on a CPU and for models whose vmap would be wrong, vmap
otherwise. It is a safe default, not the fastest choice: on Conv4 the measured choice is usually the batched
path. One correctness exception shapes every rule: second-order gradients through BatchNorm/LayerNorm are
wrong under vmap (functorch #534), so ``"auto"`` uses the loop there, ``"vmap"`` refuses, and
``choose_strategy`` excludes vmap with that reason; the batched path is exact there.

``meta_loss(..., report={})`` fills the dict with the strategy that actually ran (``"strategy"``) and, when the
batched path fell back to the loop at run time, why (``"fallback"``): run records use it, not the request.

BatchNorm: models meant for MAML use ``BatchNorm(track_running_stats=False)`` (batch statistics of each
task), so there are no buffers to thread through. Buffers can still be passed (``buffers=``); a model that
updates running statistics in place cannot run under vmap, so ``"auto"`` uses the loop for it.
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping, Protocol, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call, grad, vmap

__all__ = ["LossFn", "InnerLR", "Choice", "forward", "adapt", "meta_loss", "finetune_curve", "resolve_strategy",
           "vmap_problem"]

LossFn = Callable[[Tensor, Tensor], Tensor]
#: a float, one float per inner step, or a tensor per adapted parameter (Meta-SGD)
InnerLR = Union[float, Sequence[float], Mapping[str, Tensor]]
Tasks = tuple[Tensor, Tensor, Tensor, Tensor]


class Choice(Protocol):
    """What ``strategy=`` accepts besides a name: a :class:`nbmodule.meta.StrategyChoice` (a measured pick)."""

    strategy: str
    chunk: int | None

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
              weights: Tensor | Sequence[float] | None = None, strategy: "str | Choice" = "auto",
              return_outputs: bool = False, buffers: Mapping[str, Tensor] | None = None,
              chunk: int | None = None, report: dict | None = None) -> tuple[Tensor, ...]:
    """The MAML objective over a batch of T tasks: ``mean_t(w_t * L_t)``, ``L_t`` = query loss after adaptation.

    ``tasks`` = ``(xs, ys, xq, yq)``, each with a leading task dim T (e.g. ``xs: (T, K, 1)``). ``weights``:
    (T,) per-task weights (importance weights), 1 by default. Returns ``(loss, per_task_losses)`` with
    ``per_task_losses: (T,)`` detached, plus ``query_outputs: (T, Q, ...)`` (detached predictions of the
    adapted models on ``xq``) when ``return_outputs``. ``strategy``: ``"auto"``, ``"loop"``, ``"vmap"``,
    ``"batched"`` or a :class:`~nbmodule.meta.StrategyChoice` from :func:`~nbmodule.meta.choose_strategy`;
    ``chunk``: tasks per batched call (``"batched"`` only; default: sized by memory, see
    :data:`nbmodule.meta.batched.CHUNK_BYTES`). ``report``: a dict, filled with what actually ran:
    ``"strategy"`` (``loop``, ``vmap`` or ``batched``) and ``"fallback"`` (why the batched path fell back to the
    loop while running, else None), for run records that must name what ran rather than what was asked for.
    """
    xs, ys, xq, yq = _check_tasks(tasks)
    _check_inner_lr(inner_lr, steps, params)
    strategy, chunk = _unpack(strategy, chunk)
    strat = resolve_strategy(strategy, model, xs.device, first_order=first_order or steps == 0)
    if report is not None:
        report.update(strategy=strat, fallback=None)
        if strategy == "batched" and strat != "batched":  # resolve_strategy found a layer it does not cover
            from .batched import Unsupported, compile_batched

            try:
                compile_batched(model)
            except Unsupported as e:
                report["fallback"] = f"not covered by the batched path: {e.reason}"
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
            if report is not None:
                report.update(strategy="loop", fallback=f"the batched path fell back to the loop while running: "
                                                        f"{e.reason}")

    def task_loss(xs_t: Tensor, ys_t: Tensor, xq_t: Tensor, yq_t: Tensor) -> tuple[Tensor, Tensor]:
        p = _adapt(model, params, xs_t, ys_t, loss_fn, steps, inner_lr, first_order, buffers, strat == "vmap")
        out = forward(model, p, xq_t, buffers)
        return loss_fn(out, yq_t), out

    losses, outputs = _map_tasks(task_loss, (xs, ys, xq, yq), strat)  # (T,), (T, Q, ...)
    return _reduce(losses, outputs, weights, return_outputs)


def _unpack(strategy: "str | Choice", chunk: int | None) -> tuple[str, int | None]:
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
                   steps: int = 10, inner_lr: InnerLR = 0.01, strategy: "str | Choice" = "auto",
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
