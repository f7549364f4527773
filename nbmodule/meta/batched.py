"""Task-batched MAML: T tasks, each with its own weights, through one forward made of large batched operations.

The loop path of :func:`nbmodule.meta.meta_loss` runs each task's network on its few images (5 on Omniglot
5-way 1-shot): hundreds of tiny convolution calls per meta-iteration. Here a model is compiled once
(``torch.fx``) into a program over a leading task dim:

* a convolution with per-task weights is channels-last patch extraction plus one batched matrix product
  over tasks (``bmm``: one large GEMM per task); where a task's output maps are large (MiniImagenet's 84x84
  query images, :data:`NATIVE_ROWS`) it is the library's convolution task by task; with shared weights it is
  one ordinary convolution over all images;
* a linear layer with per-task weights is ``baddbmm`` over tasks;
* batch norm with batch statistics normalises each task with its own statistics (followed by max-pooling:
  one fused function whose backward works on the pooled entries only);
* parameter-free per-sample layers (ReLU, max-pool, flatten...) run once on all images.

Everything is differentiated by plain autograd (the custom functions in :mod:`nbmodule.meta.kernels` have
differentiable backwards), so second-order meta-gradients are exact, and tests check them against the loop
to 1e-6 in float64. Two rewrites keep the arithmetic identical while moving work to smaller tensors:
``maxpool(relu(x)) == relu(maxpool(x))``, and after batch norm ``maxpool(g * xhat + b) == |g| *
maxpool(sign(g) * xhat) + b`` with ``sign(g)`` folded into the convolution's weights (batch norm is
equivariant to a per-channel sign); a convolution bias right before batch norm has no effect on the output
(its gradient is exactly zero) and is skipped.

Tasks run in chunks (``chunk`` tasks per call; by default as many as keep the largest tensor of a call within
:data:`CHUNK_BYTES`). Covered: ``Conv2d`` (groups=1, zero padding, any kernel/stride/padding/dilation),
``Linear``, ``BatchNorm1d`` (on ``(N, F)``) / ``BatchNorm2d`` with batch statistics
(``track_running_stats=False``) or frozen running statistics (eval mode), ``LayerNorm``, and
parameter-free per-sample modules and functions (activations, max/avg pools, flatten, ``x.view(x.size(0),
-1)``, dropout with p=0 or in eval mode, ``+ - * /`` between activations or with numbers), in any module
whose forward ``torch.fx`` can trace. Anything else (a batch norm updating running statistics in place,
grouped convolutions, GroupNorm, data-dependent control flow...) raises :class:`Unsupported` with the reason;
:func:`nbmodule.meta.meta_loss` then falls back to the loop and warns.
"""
from __future__ import annotations

import copy
import operator
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .kernels import Normalize, NormPool, TaskConv, conv_output_size

__all__ = ["Unsupported", "BatchedProgram", "compile_batched", "batched_meta_loss", "batched_finetune_curve",
           "per_task_losses", "retain_freed_memory", "CHUNK_BYTES"]


class Unsupported(ValueError):
    """The model holds a layer or operation the task-batched path does not cover (``.reason`` says which)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- activations ------------------------------------------------------------------------------------------
@dataclass
class _Act:
    """An activation of all T * B images. ``nhwc``: ``t`` is (N, H, W, C) holding the logical (N, C, H, W)."""

    t: Tensor
    nhwc: bool = False

    def std(self) -> Tensor:
        return self.t.permute(0, 3, 1, 2) if self.nhwc else self.t

    def as_nhwc(self) -> Tensor:
        if self.nhwc:
            return self.t
        if self.t.dim() != 4:
            raise Unsupported(f"a 2-d convolution/pool needs a (N, C, H, W) input, got {tuple(self.t.shape)}")
        return self.t.permute(0, 2, 3, 1).contiguous()


def _from_std(t: Tensor) -> _Act:
    """Back to channels-last storage after a per-sample op on the (N, C, H, W) view."""
    if t.dim() == 4:
        return _Act(t.permute(0, 2, 3, 1).contiguous(), True)
    return _Act(t)


class _Ctx:
    """What a program step sees: the task count and each parameter as per-task ``(T, ...)`` or shared."""

    def __init__(self, model: nn.Module, task_params: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None,
                 tasks: int):
        self.model_params = dict(model.named_parameters())
        self.model_buffers = dict(model.named_buffers())
        self.task_params = task_params
        self.buffers = buffers or {}
        self.T = tasks
        self.biggest = 0  # bytes of the largest tensor a step made (im2col columns included)

    def note(self, t_or_bytes: "Tensor | int") -> None:
        b = t_or_bytes if isinstance(t_or_bytes, int) else t_or_bytes.numel() * t_or_bytes.element_size()
        self.biggest = max(self.biggest, b)

    def get(self, name: str) -> tuple[Tensor | None, bool]:
        if name in self.task_params:
            return self.task_params[name], True
        if name in self.buffers:
            return self.buffers[name], False
        if name in self.model_params:
            return self.model_params[name], False
        return self.model_buffers.get(name), False


def _per_channel(v: Tensor, per_task: bool, T: int) -> Tensor:
    """A per-channel vector as a ``(T or 1, 1, C)`` tensor broadcasting over ``(T, M, C)``."""
    return v.unsqueeze(1) if per_task else v.view(1, 1, -1)


def _tasks_view(t: Tensor, T: int) -> Tensor:
    """``(N, ..., C)`` -> ``(T, M, C)``: all positions of one task's images in the middle dim."""
    return t.reshape(T, -1, t.shape[-1])


# --- layers -----------------------------------------------------------------------------------------------
#: A per-task convolution with at least this many output positions per task (images x height x width) runs as
#: the library's convolution, task by task: the patch matrix (kh*kw times the input) would cost more memory
#: traffic than batching saves. Below it, patches + one batched GEMM over tasks.
NATIVE_ROWS = 4096
def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_geometry(m: nn.Conv2d) -> tuple[tuple[int, int], ...]:
    if m.groups != 1:
        raise Unsupported(f"Conv2d with groups={m.groups} (only groups=1)")
    if m.padding_mode != "zeros":
        raise Unsupported(f"Conv2d with padding_mode={m.padding_mode!r} (only 'zeros')")
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            p = (0, 0)
        elif any((d[i] * (k[i] - 1)) % 2 for i in range(2)):
            raise Unsupported("Conv2d padding='same' with an asymmetric padding")
        else:
            p = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    else:
        p = _pair(m.padding)
    return k, s, p, d


def _conv(x: Tensor, w: Tensor, w_task: bool, b: Tensor | None, b_task: bool, T: int,
          geom: tuple[tuple[int, int], ...], cx: "_Ctx | None" = None) -> Tensor:
    """``x: (N, H, W, C)`` channels-last -> ``(N, OH, OW, Co)``; ``w`` per-task ``(T, Co, C, kh, kw)`` or shared."""
    k, s, p, d = geom
    if not w_task:  # one convolution over all images (oneDNN/cuDNN, channels-last)
        y = F.conv2d(x.permute(0, 3, 1, 2), w, None if b_task else b, s, p, d).permute(0, 2, 3, 1).contiguous()
        if b is not None and b_task:
            y = (_tasks_view(y, T) + b.unsqueeze(1)).view(y.shape)
        return y
    n, h, wd, c = x.shape
    co = w.shape[1]
    rows = (n // T) * conv_output_size(h, k[0], s[0], p[0], d[0]) * conv_output_size(wd, k[1], s[1], p[1], d[1])
    if rows >= NATIVE_ROWS:
        # many output positions per task: the library convolution (no patch matrix in memory) task by task
        B = n // T
        ys = [F.conv2d(x[t * B:(t + 1) * B].permute(0, 3, 1, 2), w[t], None, s, p, d).permute(0, 2, 3, 1)
              for t in range(T)]
        y = ys[0].contiguous() if T == 1 else torch.cat(ys)
        if cx is not None:
            cx.note(y)
        if b is not None:
            y = (_tasks_view(y, T) + _per_channel(b, b_task, T)).view(y.shape)
        return y
    wm = w.permute(0, 3, 4, 2, 1).reshape(T, -1, co)  # rows ordered (kh, kw, C) as the patches
    y = TaskConv.apply(x, wm, ((h, wd), k, s, p, d))  # (N, OH, OW, Co)
    if cx is not None:  # the patches TaskConv made: (N, OH, OW, kh*kw*C)
        cx.note(y.numel() // co * wm.shape[1] * y.element_size())
    if b is not None:
        y = (_tasks_view(y, T) + _per_channel(b, b_task, T)).view(y.shape)
    return y


def _linear(x: Tensor, w: Tensor, w_task: bool, b: Tensor | None, b_task: bool, T: int) -> Tensor:
    if not w_task:
        y = F.linear(x, w, None if b_task else b)
        if b is not None and b_task:
            y = (y.reshape(T, -1, y.shape[-1]) + b.unsqueeze(1)).view(y.shape)
        return y
    x3 = x.reshape(T, -1, x.shape[-1])
    wt = w.transpose(1, 2)
    y = torch.bmm(x3, wt) if b is None else torch.baddbmm(_per_channel(b, b_task, T), x3, wt)
    return y.view(*x.shape[:-1], w.shape[1])


def _affine(x3: Tensor, gamma: Tensor | None, g_task: bool, beta: Tensor | None, b_task: bool, T: int) -> Tensor:
    if gamma is not None:
        g = _per_channel(gamma, g_task, T)
        if beta is not None:
            return torch.addcmul(_per_channel(beta, b_task, T), x3, g)
        return x3 * g
    return x3 + _per_channel(beta, b_task, T) if beta is not None else x3


def _max_pool(x: Tensor, m: nn.MaxPool2d) -> Tensor:
    """``(N, H, W, C)`` -> pooled ``(N, OH, OW, C)`` (native channels-last max-pool)."""
    y = F.max_pool2d(x.permute(0, 3, 1, 2), m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    return y.permute(0, 2, 3, 1).contiguous()


def _batch_stats(m: nn.modules.batchnorm._BatchNorm) -> bool:
    """True: normalises with the batch's statistics; False: with frozen running statistics."""
    if m.training and m.track_running_stats:
        raise Unsupported(f"{type(m).__name__} in training mode with track_running_stats=True updates its "
                          "running statistics in place (use track_running_stats=False for MAML, or eval mode)")
    return m.training or not m.track_running_stats


# --- the compiler ------------------------------------------------------------------------------------------
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                        nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity)
_SPATIAL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, torch.sigmoid,
                          torch.tanh, F.hardtanh, F.softplus, torch.sigmoid, F.sigmoid, F.tanh}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}


class _BatchDim:
    """``x.size(0)`` inside a traced forward: the per-task batch size, only usable as ``view(x.size(0), -1)``."""


def _users(node: fx.Node) -> list[fx.Node]:
    return list(node.users)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu)
    return node.op == "call_method" and node.target == "relu"


def _is_maxpool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and type(modules[node.target]) is nn.MaxPool2d \
        and not modules[node.target].return_indices


class BatchedProgram:
    """``program(ctx_params, x)``: ``model`` run for T tasks at once, each with its own parameters.

    Built by :func:`compile_batched`; raises :class:`Unsupported` for what it does not cover."""

    def __init__(self, model: nn.Module):
        try:
            graph = fx.symbolic_trace(model).graph
        except Exception as e:  # data-dependent control flow and the like
            raise Unsupported(f"torch.fx cannot trace {type(model).__name__}.forward: {type(e).__name__}: {e}") from e
        self.modules = dict(model.named_modules())
        self.steps: list[Callable[[dict, _Ctx], None]] = []
        self.unused: list[str] = []  # parameters the program provably does not need (their gradient is 0)
        self.input: str | None = None
        self.output: str | None = None
        self.bytes_per_task: dict[tuple, int] = {}  # (input shape without the task dim, dtype) -> largest tensor
        done: set[str] = set()
        for node in graph.nodes:
            if node.name in done:
                continue
            self._compile(node, done)
        if self.input is None or self.output is None:
            raise Unsupported("the traced forward has no input or no output")

    # each _compile_* appends one step (a closure over env, ctx) that stores its value in env[node.name]
    def _compile(self, node: fx.Node, done: set[str]) -> None:
        if node.op == "placeholder":
            if self.input is not None:
                raise Unsupported(f"forward takes more than one input ({node.name})")
            self.input = node.name
            return
        if node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise Unsupported("forward must return a single tensor")
            self.output = node.args[0].name
            return
        if node.op == "get_attr":
            raise Unsupported(f"forward reads the tensor attribute {node.target!r} directly (only through layers)")
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.Conv2d):
                chain = self._bn_chain(node)
                if chain:
                    return self._compile_conv_bn(node, chain, done)
                return self._compile_conv(node, m)
            if isinstance(m, nn.Linear):
                return self._compile_linear(node, m)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                return self._compile_batchnorm(node, m)
            if isinstance(m, nn.LayerNorm):
                return self._compile_layernorm(node, m)
            if isinstance(m, _ELEMENTWISE_MODULES) or (isinstance(m, nn.Dropout) and (m.p == 0 or not m.training)):
                if self._relu_then_pool(node):
                    return self._compile_pool_relu(node, _users(node)[0], done)
                f = copy.copy(m)
                if hasattr(f, "inplace"):
                    f.inplace = False
                return self._elementwise(node, f)
            if isinstance(m, nn.Dropout):
                raise Unsupported(f"{node.target}: Dropout in training mode (random masks differ between paths)")
            if isinstance(m, _SPATIAL_MODULES):
                if getattr(m, "return_indices", False):
                    raise Unsupported(f"{node.target}: pooling with return_indices=True")
                return self._per_sample(node, m, (), {})
            if isinstance(m, nn.Flatten):
                return self._flatten(node, m.start_dim, m.end_dim)
            raise Unsupported(f"layer {node.target} ({type(m).__name__}) is not covered by the batched path")
        if node.op == "call_function":
            return self._compile_function(node, done)
        if node.op == "call_method":
            return self._compile_method(node)
        raise Unsupported(f"graph node {node.op} {node.target}")

    # --- rewrites
    def _relu_then_pool(self, node: fx.Node) -> bool:
        users = _users(node)
        return _is_relu(node, self.modules) and len(users) == 1 and _is_maxpool(users[0], self.modules)

    def _bn_chain(self, conv: fx.Node) -> list[fx.Node]:
        """``conv -> BatchNorm2d(batch stats) [-> ReLU] [-> MaxPool2d] [-> ReLU]``, each the only user of the
        previous: the nodes after ``conv``, or [] when the pattern does not apply."""
        users = _users(conv)
        if len(users) != 1 or users[0].op != "call_module":
            return []
        bn = users[0]
        m = self.modules[bn.target]
        if not isinstance(m, nn.BatchNorm2d) or len(bn.args) != 1 or not _batch_stats(m):
            return []
        chain = [bn]
        relu_seen = pool_seen = False
        while len(_users(chain[-1])) == 1:
            nxt = _users(chain[-1])[0]
            if _is_relu(nxt, self.modules) and not relu_seen and len(nxt.args) == 1:
                relu_seen = True
            elif _is_maxpool(nxt, self.modules) and not pool_seen:
                pool_seen = True
            else:
                break
            chain.append(nxt)
        return chain

    def _compile_conv_bn(self, conv: fx.Node, chain: list[fx.Node], done: set[str]) -> None:
        m = self.modules[conv.target]
        geom = _conv_geometry(m)
        bn_node = chain[0]
        bn: nn.BatchNorm2d = self.modules[bn_node.target]
        pool = next((self.modules[n.target] for n in chain if _is_maxpool(n, self.modules)), None)
        relu = any(_is_relu(n, self.modules) for n in chain)
        src, out = conv.args[0].name, chain[-1].name
        wname, bname = f"{conv.target}.weight", f"{conv.target}.bias"
        gname, betaname = f"{bn_node.target}.weight", f"{bn_node.target}.bias"
        if m.bias is not None:
            self.unused.append(bname)  # batch norm removes any per-channel constant
        eps = bn.eps
        pool_args = None if pool is None else (pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                               pool.ceil_mode)
        done.update(n.name for n in chain)

        def step(env: dict, cx: _Ctx) -> None:
            x = env[src].as_nhwc()
            w, w_task = cx.get(wname)
            gamma, g_task = cx.get(gname) if bn.affine else (None, False)
            beta, b_task = cx.get(betaname) if bn.affine else (None, False)
            T = cx.T
            if pool is not None and gamma is not None:
                # maxpool(g * xhat + b) = |g| * maxpool(s * xhat) + b with s = sign(g), and
                # s * xhat(conv(x, w)) = xhat(conv(x, s * w)): fold s into the weights (a few KB)
                s = torch.where(gamma.detach() < 0, -1.0, 1.0).to(w.dtype)  # (T, Co) or (Co,)
                if g_task and not w_task:
                    w, w_task = w.unsqueeze(0).expand(T, *w.shape), True
                if w_task:
                    w = w * (s.view(T, -1, 1, 1, 1) if g_task else s.view(1, -1, 1, 1, 1))
                else:
                    w = w * s.view(-1, 1, 1, 1)
                gamma = gamma.abs()
            y = _conv(x, w, w_task, None, False, T, geom, cx)  # (N, OH, OW, Co)
            if pool is not None:
                z, _, _ = NormPool.apply(y, T, eps, pool_args)
                z = _affine(_tasks_view(z, T), gamma, g_task, beta, b_task, T).view(z.shape)
            else:
                xhat, _ = Normalize.apply(_tasks_view(y, T), eps)
                z = _affine(xhat, gamma, g_task, beta, b_task, T).view(y.shape)
            env[out] = _Act(F.relu(z) if relu else z, True)

        self.steps.append(step)

    def _compile_pool_relu(self, relu: fx.Node, pool_node: fx.Node, done: set[str]) -> None:
        """``maxpool(relu(x)) == relu(maxpool(x))``: the activation on the 4x smaller tensor."""
        pool = self.modules[pool_node.target]
        src, out = relu.args[0].name, pool_node.name
        done.add(pool_node.name)

        def step(env: dict, cx: _Ctx) -> None:
            env[out] = _Act(F.relu(_max_pool(env[src].as_nhwc(), pool)), True)

        self.steps.append(step)

    # --- layers with parameters
    def _compile_conv(self, node: fx.Node, m: nn.Conv2d) -> None:
        geom = _conv_geometry(m)
        src, wname, bname = node.args[0].name, f"{node.target}.weight", f"{node.target}.bias"
        has_bias = m.bias is not None

        def step(env: dict, cx: _Ctx) -> None:
            w, w_task = cx.get(wname)
            b, b_task = cx.get(bname) if has_bias else (None, False)
            env[node.name] = _Act(_conv(env[src].as_nhwc(), w, w_task, b, b_task, cx.T, geom, cx), True)

        self.steps.append(step)

    def _compile_linear(self, node: fx.Node, m: nn.Linear) -> None:
        src, wname, bname = node.args[0].name, f"{node.target}.weight", f"{node.target}.bias"
        has_bias = m.bias is not None

        def step(env: dict, cx: _Ctx) -> None:
            w, w_task = cx.get(wname)
            b, b_task = cx.get(bname) if has_bias else (None, False)
            env[node.name] = _Act(_linear(env[src].std(), w, w_task, b, b_task, cx.T))

        self.steps.append(step)

    def _compile_batchnorm(self, node: fx.Node, m: nn.modules.batchnorm._BatchNorm) -> None:
        batch = _batch_stats(m)
        src, t = node.args[0].name, node.target
        two_d = isinstance(m, nn.BatchNorm2d)

        def step(env: dict, cx: _Ctx) -> None:
            a = env[src]
            if two_d:
                x = a.as_nhwc()
            else:
                if a.t.dim() != 2:
                    raise Unsupported(f"{t}: BatchNorm1d on a {a.t.dim()}-d input (only (N, F))")
                x = a.t
            gamma, g_task = cx.get(f"{t}.weight") if m.affine else (None, False)
            beta, b_task = cx.get(f"{t}.bias") if m.affine else (None, False)
            x3 = _tasks_view(x, cx.T)
            if batch:
                xhat, _ = Normalize.apply(x3, m.eps)
            else:
                mean, _ = cx.get(f"{t}.running_mean")
                var, _ = cx.get(f"{t}.running_var")
                xhat = (x3 - mean) * torch.rsqrt(var + m.eps)
            env[node.name] = _Act(_affine(xhat, gamma, g_task, beta, b_task, cx.T).view(x.shape), two_d)

        self.steps.append(step)

    def _compile_layernorm(self, node: fx.Node, m: nn.LayerNorm) -> None:
        src, t, shape = node.args[0].name, node.target, tuple(m.normalized_shape)

        def step(env: dict, cx: _Ctx) -> None:
            x = env[src].std()
            y = F.layer_norm(x, shape, eps=m.eps)
            if m.elementwise_affine:
                T = cx.T
                yt = y.reshape(T, -1, *shape)
                lead = (1,) * (yt.dim() - 1 - len(shape))
                for name, op in (("weight", operator.mul), ("bias", operator.add)):
                    v, task = cx.get(f"{t}.{name}")
                    if v is not None:
                        yt = op(yt, v.view(T, *lead, *shape) if task else v)
                y = yt.view(x.shape)
            env[node.name] = _Act(y)

        self.steps.append(step)

    # --- parameter-free ops
    def _elementwise(self, node: fx.Node, fn: Callable[..., Tensor], *args: Any, **kwargs: Any) -> None:
        src = node.args[0].name

        def step(env: dict, cx: _Ctx) -> None:
            a = env[src]
            env[node.name] = _Act(fn(a.t, *args, **kwargs), a.nhwc)

        self.steps.append(step)

    def _per_sample(self, node: fx.Node, fn: Callable[..., Tensor], args: tuple, kwargs: dict) -> None:
        """A per-sample op on the logical (N, ...) view; 4-d results go back to channels-last."""
        src = node.args[0].name

        def step(env: dict, cx: _Ctx) -> None:
            env[node.name] = _from_std(fn(env[src].std(), *args, **kwargs))

        self.steps.append(step)

    def _flatten(self, node: fx.Node, start: int, end: int) -> None:
        src = node.args[0].name

        def step(env: dict, cx: _Ctx) -> None:
            x = env[src].std()
            s = start % x.dim()
            if s == 0:
                raise Unsupported(f"{node.name}: flatten over the batch dim")
            env[node.name] = _Act(torch.flatten(x, s, end))

        self.steps.append(step)

    def _compile_function(self, node: fx.Node, done: set[str]) -> None:
        f = node.target
        if f in _ELEMENTWISE_FUNCTIONS:
            if self._relu_then_pool(node):
                return self._compile_pool_relu(node, _users(node)[0], done)
            kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
            args = tuple(a for a in node.args[1:] if not isinstance(a, bool))  # drop a positional inplace=True
            return self._elementwise(node, f, *args, **kwargs)
        if f is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, start, end)
        if f in _BINARY:
            return self._binary(node, f)
        if f in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            return self._per_sample(node, f, tuple(node.args[1:]), dict(node.kwargs))
        raise Unsupported(f"function {getattr(f, '__name__', f)} in forward ({node.name}) is not covered")

    def _compile_method(self, node: fx.Node) -> None:
        name = node.target
        if name in _ELEMENTWISE_METHODS:
            return self._elementwise(node, lambda t: getattr(t, name)())
        if name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, start, end)
        if name == "size" and (node.args[1:] == (0,) or node.kwargs == {"dim": 0}):
            def size_step(env: dict, cx: _Ctx) -> None:
                env[node.name] = _BatchDim()
            return self.steps.append(size_step)
        if name in ("view", "reshape") and len(node.args) == 3 and isinstance(node.args[1], fx.Node) \
                and node.args[1].op == "call_method" and node.args[1].target == "size" and node.args[2] == -1:
            return self._flatten(node, 1, -1)
        if name in ("mean", "sum", "amax") and len(node.args) >= 2:
            dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else (node.args[1],)
            if all(isinstance(d, int) for d in dims):
                def reduce(t: Tensor, *a: Any, **k: Any) -> Tensor:
                    if any(d % t.dim() == 0 for d in dims):
                        raise Unsupported(f"{node.name}: .{name}() over the batch dim")
                    return getattr(t, name)(*a, **k)
                return self._per_sample(node, reduce, tuple(node.args[1:]), dict(node.kwargs))
        raise Unsupported(f"tensor method .{name}() in forward ({node.name}) is not covered")

    def _binary(self, node: fx.Node, f: Callable) -> None:
        a_arg, b_arg = node.args[0], node.args[1]

        def step(env: dict, cx: _Ctx) -> None:
            a = env[a_arg.name] if isinstance(a_arg, fx.Node) else a_arg
            b = env[b_arg.name] if isinstance(b_arg, fx.Node) else b_arg
            if isinstance(a, _Act) and isinstance(b, _Act):
                if a.nhwc != b.nhwc:
                    a, b = _Act(a.as_nhwc(), True), _Act(b.as_nhwc(), True)
                env[node.name] = _Act(f(a.t, b.t), a.nhwc)
            elif isinstance(a, _Act) and not isinstance(b, Tensor):
                env[node.name] = _Act(f(a.t, b), a.nhwc)
            elif isinstance(b, _Act) and not isinstance(a, Tensor):
                env[node.name] = _Act(f(a, b.t), b.nhwc)
            else:
                raise Unsupported(f"{node.name}: arithmetic between an activation and a tensor constant")

        self.steps.append(step)

    # --- running
    def __call__(self, model: nn.Module, task_params: Mapping[str, Tensor], x: Tensor,
                 buffers: Mapping[str, Tensor] | None = None) -> Tensor:
        """``x: (T, B, ...)`` -> outputs ``(T, B, ...)``; ``task_params``: name -> ``(T, *shape)`` (the
        parameters adapted per task); the model's other parameters and buffers are shared by all tasks."""
        T, B = x.shape[:2]
        cx = _Ctx(model, task_params, buffers, T)
        env: dict[str, Any] = {self.input: _Act(x.reshape(T * B, *x.shape[2:]))}
        for step in self.steps:
            step(env, cx)
            for v in env.values():
                if isinstance(v, _Act):
                    cx.note(v.t)
        key = (tuple(x.shape[1:]), x.dtype)
        self.bytes_per_task[key] = max(self.bytes_per_task.get(key, 0), -(-cx.biggest // T))
        out = env[self.output].std()
        return out.reshape(T, B, *out.shape[1:])

    def auto_chunk(self, xs: Tensor, xq: Tensor) -> int | None:
        """Tasks per call for ``chunk=None``: all of them on a GPU; on a CPU as many as keep the largest tensor of
        a call within :data:`CHUNK_BYTES` (None until a call has measured this input shape's per-task sizes)."""
        T = xs.shape[0]
        if xs.device.type != "cpu":
            return T
        sizes = [self.bytes_per_task.get((tuple(x.shape[1:]), x.dtype)) for x in (xs, xq)]
        if None in sizes:
            return None
        return max(1, min(T, CHUNK_BYTES[_RETAINING] // max(1, *sizes)))


_PROGRAMS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, BatchedProgram | Unsupported]]" = \
    weakref.WeakKeyDictionary()


def _frozen(v: Any) -> Any:
    """A hashable, comparable stand-in for a module attribute: plain values as themselves (tuples and lists
    element by element), anything else (a function, a tensor held as a plain attribute...) by type and identity."""
    if v is None or isinstance(v, (bool, int, float, str, torch.dtype, torch.device)):
        return v
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(_frozen(x) for x in v))
    return ("object", type(v).__qualname__, id(v))


def _structure_key(model: nn.Module) -> tuple:
    """Everything a :class:`BatchedProgram` captures from ``model`` when it is compiled: each submodule's name,
    identity, class and train mode, every plain attribute it holds (``eps``, ``padding``, ``stride``, pooling
    sizes, ``affine``, ``track_running_stats``, ``p``, ``negative_slope``, an instance-level ``forward``... whatever
    it holds), which parameters and buffers it has (a bias set to None changes the program).
    Parameter and buffer *values* are read at run time, so they are not part of it."""
    key = []
    for name, m in model.named_modules():
        attrs = tuple(sorted((k, _frozen(v)) for k, v in vars(m).items() if not k.startswith("_")))
        key.append((name, id(m), type(m), attrs, tuple((k, v is None) for k, v in m._parameters.items()),
                    tuple((k, v is None) for k, v in m._buffers.items())))
    return tuple(key)


def compile_batched(model: nn.Module) -> BatchedProgram:
    """The task-batched program of ``model``, or raises :class:`Unsupported` naming the layer or operation it
    does not cover. Memoised per module on everything the program captured (:func:`_structure_key`: the module
    tree, train/eval mode and every layer's settings), so changing e.g. a batch norm's ``eps`` or a convolution's
    stride after a first call compiles again instead of running the stale program."""
    key = _structure_key(model)
    hit = _PROGRAMS.get(model)
    if hit is not None and hit[0] == key:
        prog = hit[1]
    else:
        try:
            prog = BatchedProgram(model)
        except Unsupported as e:
            prog = e
        _PROGRAMS[model] = (key, prog)
    if isinstance(prog, Unsupported):
        raise prog
    return prog


# --- losses ------------------------------------------------------------------------------------------------
def per_task_losses(loss_fn: Callable[[Tensor, Tensor], Tensor], out: Tensor, y: Tensor) -> Tensor:
    """``(T,)``: ``loss_fn(out[t], y[t])`` for every task, vectorised for ``F.cross_entropy`` and ``F.mse_loss``
    (same numbers as the per-task calls: per-task mean over the task's examples), a loop otherwise."""
    T = out.shape[0]
    if loss_fn is F.cross_entropy and out.dim() == 3 and not y.is_floating_point() and y.shape == out.shape[:2]:
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none").view(T, -1)
        valid = (y != -100).to(ce.dtype)  # F.cross_entropy's default ignore_index, excluded from the mean
        return ce.sum(1) / valid.sum(1)
    if loss_fn is F.mse_loss and out.shape == y.shape:
        return (out - y).square().reshape(T, -1).mean(1)
    return torch.stack([loss_fn(out[t], y[t]) for t in range(T)])


# --- MAML on top of the program ------------------------------------------------------------------------------
#: On a CPU, a batched call holds at most this many bytes in its largest tensor (usually the im2col columns of
#: the second convolution): 96 MB once :func:`retain_freed_memory` is in effect (fewer, larger products win:
#: all 32 Omniglot tasks in one call; MiniImagenet's 67 MB query maps one task per call), 16 MB otherwise
#: (larger fresh blocks are mapped anew by glibc on every call and pay a page fault per 4 KB).
CHUNK_BYTES = {True: 96 * 2**20, False: 16 * 2**20}


def _chunk_slices(prog: BatchedProgram, xs: Tensor, xq: Tensor, chunk: int | None):
    """Consecutive task slices: ``chunk`` tasks each, or (None) sized by :meth:`BatchedProgram.auto_chunk`, the
    first slice a single task when the sizes are not known yet."""
    T = xs.shape[0]
    start = 0
    while start < T:
        size = chunk or prog.auto_chunk(xs, xq) or 1
        yield slice(start, min(T, start + size))
        start += size


def retain_freed_memory() -> bool:
    """Keep freed CPU memory in the process for reuse instead of handing it back to the OS: glibc's malloc
    serves every block from its heap (no ``mmap`` per large block) and trims the heap only beyond 1 GB free.
    Returns False where there is no glibc (then nothing changes).

    Why: MAML allocates tensors of several to tens of MB per step; by default glibc maps each block above an
    adaptive threshold (at most 32 MB) afresh and unmaps it when freed, so every page of it is faulted in
    again on the next step (measured here: tens of thousands of page faults per meta-iteration, 10-30% of its
    time; MiniImagenet's 84x84 query activations are 67 MB per task). This is a process-wide allocator setting,
    like PyTorch's GPU caching allocator it keeps the peak reserved; it helps every strategy (the loop too).
    :func:`nbmodule.meta.choose_strategy` calls it on a CPU and records that it did."""
    import ctypes
    import ctypes.util

    global _RETAINING
    if _RETAINING:
        return True
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    _RETAINING = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))
    return _RETAINING


_RETAINING = False


def _adapt_batched(prog: BatchedProgram, model: nn.Module, params: Mapping[str, Tensor], xs: Tensor, ys: Tensor,
                   loss_fn: Callable, steps: int, lr_of: Callable[[int, str], Any], first_order: bool,
                   buffers: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    T = xs.shape[0]
    # per-task views of the meta parameters (no copy); autograd.grad w.r.t. them gives each task's gradient.
    # Parameters that do not require grad are still adapted (from a detached start), as in the loop path.
    p = {k: (v if v.requires_grad else v.detach().requires_grad_()).unsqueeze(0).expand(T, *v.shape)
         for k, v in params.items()}
    for step in range(steps):
        live = list(p)
        support = per_task_losses(loss_fn, prog(model, p, xs, buffers), ys).sum()  # task t's gradient is its own
        grads = torch.autograd.grad(support, [p[k] for k in live], create_graph=not first_order, allow_unused=True)
        new = dict(p)
        for k, g in zip(live, grads):
            if g is not None:  # None: provably no effect on the loss (e.g. a bias before batch norm)
                # lr: a float, or a tensor shaped like one task's parameter (Meta-SGD): broadcasts over tasks
                new[k] = p[k] - lr_of(step, k) * (g.detach() if first_order else g)
        p = new
    return p


def batched_meta_loss(model: nn.Module, params: Mapping[str, Tensor], tasks: Sequence[Tensor], loss_fn: Callable,
                      *, steps: int, lr_of: Callable[[int, str], Any], first_order: bool,
                      buffers: Mapping[str, Tensor] | None = None, chunk: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """Per-task query losses ``(T,)`` (differentiable) and query outputs ``(T, Q, ...)`` (detached) after
    ``steps`` inner steps, all tasks of a chunk in one batched program. Called by :func:`nbmodule.meta.meta_loss`
    with ``strategy="batched"``; ``lr_of(step, name)`` is the inner step size."""
    prog = compile_batched(model)
    xs, ys, xq, yq = tasks
    losses, outputs = [], []
    grad_enabled = torch.is_grad_enabled()
    for sl in _chunk_slices(prog, xs, xq, chunk):
        if grad_enabled:
            p = _adapt_batched(prog, model, params, xs[sl], ys[sl], loss_fn, steps, lr_of, first_order, buffers)
            out = prog(model, p, xq[sl], buffers)
        else:  # evaluation: inner gradients need autograd, nothing is kept
            with torch.enable_grad():
                leaf = {k: v.detach().requires_grad_() for k, v in params.items()}
                p = _adapt_batched(prog, model, leaf, xs[sl], ys[sl], loss_fn, steps, lr_of, True, buffers)
            p = {k: v.detach() for k, v in p.items()}
            out = prog(model, p, xq[sl], buffers)
        losses.append(per_task_losses(loss_fn, out, yq[sl]))
        outputs.append(out.detach())
    per_task = torch.cat(losses)
    named = dict(model.named_parameters())
    unused = [t for t in (params.get(k, named.get(k)) for k in prog.unused) if t is not None and t.requires_grad]
    if unused and grad_enabled:  # exact zero gradients (as the math says) rather than None
        per_task = per_task + 0.0 * sum(u.sum() for u in unused)
    return per_task, torch.cat(outputs)


def batched_finetune_curve(model: nn.Module, params: Mapping[str, Tensor], tasks: Sequence[Tensor],
                           loss_fn: Callable, *, steps: int, lr_of: Callable[[int, str], Any],
                           buffers: Mapping[str, Tensor] | None = None, chunk: int | None = None) -> Tensor:
    """``(T, steps + 1)`` query losses after 0..steps plain (first-order) steps, batched over tasks."""
    prog = compile_batched(model)
    xs, ys, xq, yq = tasks
    rows = []
    for sl in _chunk_slices(prog, xs, xq, chunk):
        with torch.enable_grad():
            p = {k: v.detach().requires_grad_() for k, v in params.items()}
            p = {k: v.unsqueeze(0).expand(sl.stop - sl.start, *v.shape) for k, v in p.items()}
        cols = []
        for step in range(steps + 1):
            with torch.no_grad():
                cols.append(per_task_losses(loss_fn, prog(model, p, xq[sl], buffers), yq[sl]))
            if step == steps:
                break
            with torch.enable_grad():
                live = {k: v.detach().requires_grad_() for k, v in p.items()}
                support = per_task_losses(loss_fn, prog(model, live, xs[sl], buffers), ys[sl]).sum()
                grads = torch.autograd.grad(support, list(live.values()), allow_unused=True)
            p = {k: (v.detach() - lr_of(step, k) * g if g is not None else v.detach())
                 for (k, v), g in zip(live.items(), grads)}
        rows.append(torch.stack(cols, 1))
    return torch.cat(rows)
