"""MAML meta-gradients the way the peer libraries compute them, for side-by-side timing (not a benchmark itself).

Each ``*_meta_step(model, tasks, loss_fn, steps, inner_lr, first_order)`` accumulates the meta-gradient of the
mean query loss over the T tasks into ``model``'s ``.grad`` (the caller zeroes them), exactly as that library's
own MAML example does it:

* ``learn2learn``: learn2learn 0.2.0's algorithm, reimplemented (its wheel does not build on Python 3.11):
  ``MAML.clone()`` is ``clone_module`` (a *shallow* copy of the module tree whose parameters are
  ``param.clone()``, not ``deepcopy``), ``adapt`` is ``autograd.grad(..., create_graph=second_order)`` then
  ``update_module`` (each parameter replaced by ``p + (-lr * g)`` in the clone's ``_parameters``), and its
  Omniglot example calls ``evaluation_error.backward()`` once per task and divides the gradients by the
  meta-batch size afterwards;
* ``higher`` 0.2.1: ``higher.innerloop_ctx(model, SGD(lr), copy_initial_weights=False)`` per task,
  ``diffopt.step(loss)`` per inner step, the query loss backpropagated per task (its maml-omniglot example);
* ``torchopt`` 0.7.3: the functional API (``torchopt.sgd`` + ``update(..., inplace=False)`` +
  ``apply_updates(..., inplace=False)`` on the parameters of ``functional_call``), tasks in a loop, the
  stacked query losses averaged and backpropagated once (its few-shot example's outer step);
* ``torch.func`` (PyTorch's own MAML recipe, ``functorch/examples/maml_regression`` and ``maml_omniglot``):
  a per-task loss function that takes ``steps`` inner steps with ``torch.func.grad`` of the support loss
  through ``functional_call``, mapped over the tasks with ``torch.func.vmap``; the mean query loss
  backpropagated once;
* ``torchopt_vmap``: the same, the inner step being torchopt's functional SGD (``init``/``update``/
  ``apply_updates``, ``inplace=False``) inside the vmapped per-task function (torchopt's functorch examples).

A user of torch.func or torchopt would batch the tasks with vmap, so the vmap recipes are peers wherever they
are valid: not for second-order MAML through batch norm or layer norm, whose meta-gradients are wrong under
vmap (functorch #534; :func:`valid` says so and the benchmarks exclude them there, with that reason).

``available()`` says which peers import here and why the others do not.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call

Tasks = Sequence[Tensor]
PEERS = ("learn2learn", "higher", "torchopt", "torch_func", "torchopt_vmap")
#: the peers that batch the tasks with torch.func.vmap (valid only where vmap's meta-gradient is right)
VMAP_PEERS = ("torch_func", "torchopt_vmap")
_MODULE = {"higher": "higher", "torchopt": "torchopt", "torchopt_vmap": "torchopt"}


def available() -> dict[str, str]:
    """peer -> "" when it can run here, else the reason it cannot."""
    out = {"learn2learn": "", "torch_func": ""}  # reimplemented here / part of torch
    for name, module in _MODULE.items():
        try:
            __import__(module)
            out[name] = ""
        except Exception as e:  # ImportError, or a broken install
            out[name] = f"{module} not importable ({type(e).__name__}: {e}); install the project's bench extra"
    return out


def valid(peer: str, model: nn.Module, first_order: bool) -> str:
    """"" when ``peer`` computes the right meta-gradient for ``model``, else why not (the vmap recipes: second
    order through batch norm/layer norm, functorch #534; a batch norm updating running statistics)."""
    if peer not in VMAP_PEERS:
        return ""
    from nbmodule.meta.functional import vmap_problem

    problem = vmap_problem(model, first_order=first_order)
    return f"not valid here: {problem}" if problem else ""


# --- learn2learn (reimplemented from learn2learn/utils/__init__.py and algorithms/maml.py) ------------------
def clone_module(module: nn.Module, memo: dict | None = None) -> nn.Module:
    """A copy of the module tree sharing everything but its parameters and submodule dicts; each parameter is
    ``param.clone()`` (differentiable w.r.t. the original), shared parameters stay shared (``memo``)."""
    memo = {} if memo is None else memo
    clone = module.__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = module._parameters.copy()
    clone._buffers = module._buffers.copy()
    clone._modules = module._modules.copy()
    for key, p in module._parameters.items():
        if p is not None:
            ptr = p.data_ptr()
            if ptr not in memo:
                memo[ptr] = p.clone()
            clone._parameters[key] = memo[ptr]
    for key, b in module._buffers.items():
        if b is not None and b.requires_grad:
            clone._buffers[key] = b.clone()
    for key, sub in module._modules.items():
        if sub is not None:
            clone._modules[key] = clone_module(sub, memo)
    return clone


def update_module(module: nn.Module, updates: Sequence[Tensor]) -> nn.Module:
    """learn2learn's ``update_module``: every parameter ``p`` replaced by ``p + update`` in place in the tree."""
    new = {id(p): p + u for p, u in zip(module.parameters(), updates)}
    for mod in module.modules():
        for key, p in mod._parameters.items():
            if p is not None and id(p) in new:
                mod._parameters[key] = new[id(p)]
    return module


def learn2learn_meta_step(model: nn.Module, tasks: Tasks, loss_fn: Callable, steps: int, inner_lr: float,
                          first_order: bool = False) -> None:
    xs, ys, xq, yq = tasks
    T = xs.shape[0]
    second_order = not first_order
    for t in range(T):
        learner = clone_module(model)  # MAML.clone()
        for _ in range(steps):  # learner.adapt(loss)
            params = list(learner.parameters())
            grads = torch.autograd.grad(loss_fn(learner(xs[t]), ys[t]), params, retain_graph=second_order,
                                        create_graph=second_order)
            update_module(learner, [-inner_lr * g for g in grads])
        loss_fn(learner(xq[t]), yq[t]).backward()  # evaluation_error.backward(), per task
    for p in model.parameters():  # p.grad.data.mul_(1.0 / meta_batch_size)
        if p.grad is not None:
            p.grad.mul_(1.0 / T)


# --- higher ----------------------------------------------------------------------------------------------------
def higher_meta_step(model: nn.Module, tasks: Tasks, loss_fn: Callable, steps: int, inner_lr: float,
                     first_order: bool = False) -> None:
    import higher

    xs, ys, xq, yq = tasks
    T = xs.shape[0]
    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    for t in range(T):
        # first order: detach the inner gradients (track_higher_grads=False would cut the initial weights off too)
        detach = (lambda gs: [g.detach() for g in gs]) if first_order else None
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(steps):
                diffopt.step(loss_fn(fnet(xs[t]), ys[t]), grad_callback=detach)
            (loss_fn(fnet(xq[t]), yq[t]) / T).backward()


# --- torchopt ---------------------------------------------------------------------------------------------------
def torchopt_meta_step(model: nn.Module, tasks: Tasks, loss_fn: Callable, steps: int, inner_lr: float,
                       first_order: bool = False) -> None:
    import torchopt

    xs, ys, xq, yq = tasks
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p for _, p in model.named_parameters())
    inner_opt = torchopt.sgd(lr=inner_lr)
    losses = []
    for t in range(xs.shape[0]):
        p, state = params, inner_opt.init(params)
        for _ in range(steps):
            loss = loss_fn(functional_call(model, dict(zip(names, p)), (xs[t],)), ys[t])
            grads = torch.autograd.grad(loss, p, create_graph=not first_order)
            updates, state = inner_opt.update(grads, state, inplace=False)
            p = torchopt.apply_updates(p, updates, inplace=False)
        losses.append(loss_fn(functional_call(model, dict(zip(names, p)), (xq[t],)), yq[t]))
    torch.stack(losses).mean().backward()


# --- torch.func: PyTorch's MAML recipe (vmap over tasks) ------------------------------------------------------
def torch_func_meta_step(model: nn.Module, tasks: Tasks, loss_fn: Callable, steps: int, inner_lr: float,
                         first_order: bool = False) -> None:
    from torch.func import grad, vmap

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())

    def loss_for_task(x_spt: Tensor, y_spt: Tensor, x_qry: Tensor, y_qry: Tensor) -> Tensor:
        def compute_loss(new_params: dict, x: Tensor, y: Tensor) -> Tensor:
            return loss_fn(functional_call(model, (new_params, buffers), (x,)), y)

        new_params = params
        for _ in range(steps):
            grads = grad(compute_loss)(new_params, x_spt, y_spt)
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            new_params = {k: new_params[k] - inner_lr * grads[k] for k in new_params}
        return compute_loss(new_params, x_qry, y_qry)

    vmap(loss_for_task)(*tasks).mean().backward()


# --- torchopt's functional optimiser inside the vmapped per-task function --------------------------------------
def torchopt_vmap_meta_step(model: nn.Module, tasks: Tasks, loss_fn: Callable, steps: int, inner_lr: float,
                            first_order: bool = False) -> None:
    import torchopt
    from torch.func import grad, vmap

    names = [n for n, _ in model.named_parameters()]
    params = tuple(p for _, p in model.named_parameters())
    buffers = dict(model.named_buffers())
    inner_opt = torchopt.sgd(lr=inner_lr)

    def loss_for_task(x_spt: Tensor, y_spt: Tensor, x_qry: Tensor, y_qry: Tensor) -> Tensor:
        def compute_loss(p: tuple, x: Tensor, y: Tensor) -> Tensor:
            return loss_fn(functional_call(model, ({**dict(zip(names, p)), **buffers}), (x,)), y)

        p, state = params, inner_opt.init(params)
        for _ in range(steps):
            grads = grad(compute_loss)(p, x_spt, y_spt)
            if first_order:
                grads = tuple(g.detach() for g in grads)
            updates, state = inner_opt.update(grads, state, inplace=False)
            p = torchopt.apply_updates(p, updates, inplace=False)
        return compute_loss(p, x_qry, y_qry)

    vmap(loss_for_task)(*tasks).mean().backward()


META_STEPS = {"learn2learn": learn2learn_meta_step, "higher": higher_meta_step, "torchopt": torchopt_meta_step,
              "torch_func": torch_func_meta_step, "torchopt_vmap": torchopt_vmap_meta_step}


def engine_meta_step(model: nn.Module, tasks: Tasks, loss_fn: Callable, steps: int, inner_lr: float,
                     first_order: bool = False, strategy="auto") -> None:
    """nbmodule's engine in the same form: ``meta_loss(...)[0].backward()``."""
    from nbmodule.meta import meta_loss

    meta_loss(model, dict(model.named_parameters()), tasks, loss_fn, steps=steps, inner_lr=inner_lr,
              first_order=first_order, strategy=strategy)[0].backward()


def meta_gradient(step: Callable, model: nn.Module, tasks: Tasks, loss_fn: Callable, steps: int, inner_lr: float,
                  first_order: bool = False, **kwargs) -> list[Tensor]:
    """The meta-gradient one ``*_meta_step`` accumulates, as a list of tensors (``.grad`` restored to None)."""
    model.zero_grad(set_to_none=True)
    step(model, tasks, loss_fn, steps, inner_lr, first_order, **kwargs)
    out = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out
