"""Differentiable-to-any-order building blocks of the task-batched MAML path (:mod:`nbmodule.meta.batched`).

Each is a ``torch.autograd.Function`` whose backward is written with differentiable operations (often the
partner function), so plain autograd differentiates through them again: second-order MAML needs the
backward of the backward. They exist because the composite versions autograd would build are memory-bound
chains of many full-size elementwise passes; these use fewer.

* :class:`TaskConv`, :class:`ConvInputGrad`, :class:`ConvWeightGrad`: a convolution with per-task weights
  as channels-last patch extraction (im2col) plus one batched matrix product over tasks (``bmm``: one large
  GEMM per task), and its two gradient maps. The three are bilinear and each one's backward is made of the
  others, so the set is closed under differentiation. When autograd is not building a graph (the last
  backward of second-order MAML), backwards reuse the patches saved by the forward instead of extracting
  them again, and gradients are summed at the image size rather than at the 9x patch size.
* :class:`Im2col` / :class:`Col2im`: patch extraction and its adjoint (scatter-add) as differentiable
  functions, for completeness and tests.
* :class:`Normalize` / :class:`NormalizeBackward`: batch normalisation without the affine part, per (task,
  channel) statistics over the middle dim of a ``(T, N, C)`` tensor, and its input-gradient map
  ``g -> r * (g - mean(g) - xhat * mean(g * xhat))``, which is self-adjoint up to the saved statistics.
* :class:`NormPool` / :class:`NormPoolBackward`: the same normalisation followed by max-pooling, whose
  gradient is a scatter of the pooled gradient: the backward works on the pooled entries and writes the
  full-size gradient in one pass.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Im2col", "Col2im", "TaskConv", "ConvInputGrad", "ConvWeightGrad", "Normalize", "NormalizeBackward",
           "conv_output_size", "im2col", "col2im"]

Pair = tuple[int, int]


def conv_output_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _spans(size: int, k: int, stride: int, pad: int, dil: int) -> tuple[int, list[tuple[int, int, int, int] | None]]:
    """Output size and, per kernel offset, ``(out_start, out_stop, in_start, in_stop)`` of the valid
    (non-padding) positions, or None when the offset only ever reads padding."""
    out = conv_output_size(size, k, stride, pad, dil)
    spans: list[tuple[int, int, int, int] | None] = []
    for i in range(k):
        off = i * dil - pad  # input index = o * stride + off
        o0 = 0 if off >= 0 else (-off + stride - 1) // stride
        o1 = min(out - 1, (size - 1 - off) // stride)
        spans.append(None if o1 < o0 else (o0, o1 + 1, o0 * stride + off, o1 * stride + off + 1))
    return out, spans


Geometry = tuple[Pair, Pair, Pair, Pair, Pair]  # (input H, W), kernel, stride, padding, dilation


def im2col(x: Tensor, geo: Geometry) -> Tensor:
    """``x: (N, H, W, C)`` -> ``(N, OH, OW, kh * kw * C)``, patch entries ordered (kh, kw, C), zero padding."""
    _, k, stride, pad, dil = geo
    n, h, w, c = x.shape
    if k == (1, 1) and stride == (1, 1) and pad == (0, 0):
        return x.contiguous()
    if pad != (0, 0):
        x = torch.nn.functional.pad(x, (0, 0, pad[1], pad[1], pad[0], pad[0]))
    else:
        x = x.contiguous()
    oh = conv_output_size(h, k[0], stride[0], pad[0], dil[0])
    ow = conv_output_size(w, k[1], stride[1], pad[1], dil[1])
    sn, sh, sw, sc = x.stride()
    # one strided gather instead of kh * kw slice copies: a (N, OH, OW, kh, kw, C) view of the padded input
    patches = x.as_strided((n, oh, ow, k[0], k[1], c),
                           (sn, sh * stride[0], sw * stride[1], sh * dil[0], sw * dil[1], sc))
    return patches.reshape(n, oh, ow, k[0] * k[1] * c)


def col2im(cols: Tensor, geo: Geometry) -> Tensor:
    """The adjoint of :func:`im2col`: ``(N, OH, OW, kh * kw * C)`` -> ``(N, H, W, C)``, each patch entry added
    back to the pixel it came from, padding entries dropped."""
    size, k, stride, pad, dil = geo
    n, _, _, kc = cols.shape
    c = kc // (k[0] * k[1])
    if k == (1, 1) and stride == (1, 1) and pad == (0, 0):
        return cols.contiguous()
    _, rows = _spans(size[0], k[0], stride[0], pad[0], dil[0])
    _, columns = _spans(size[1], k[1], stride[1], pad[1], dil[1])
    out = cols.new_zeros(n, size[0], size[1], c)
    for i, a in enumerate(rows):
        for j, b in enumerate(columns):
            if a is None or b is None:
                continue
            c0 = (i * k[1] + j) * c
            out[:, a[2]:a[3]:stride[0], b[2]:b[3]:stride[1], :] += cols[:, a[0]:a[1], b[0]:b[1], c0:c0 + c]
    return out


class Im2col(torch.autograd.Function):
    """:func:`im2col` as a differentiable function (backward: :class:`Col2im`)."""

    @staticmethod
    def forward(ctx, x: Tensor, geo: Geometry) -> Tensor:
        ctx.geo = geo
        return im2col(x, geo).clone() if geo[1:4] == ((1, 1), (1, 1), (0, 0)) else im2col(x, geo)

    @staticmethod
    def backward(ctx, g: Tensor):
        return Col2im.apply(g, ctx.geo), None


class Col2im(torch.autograd.Function):
    """:func:`col2im` as a differentiable function (backward: :class:`Im2col`)."""

    @staticmethod
    def forward(ctx, cols: Tensor, geo: Geometry) -> Tensor:
        ctx.geo = geo
        return col2im(cols, geo).clone() if geo[1:4] == ((1, 1), (1, 1), (0, 0)) else col2im(cols, geo)

    @staticmethod
    def backward(ctx, g: Tensor):
        return Im2col.apply(g, ctx.geo), None


def _by_task(t: Tensor, T: int) -> Tensor:
    return t.reshape(T, -1, t.shape[-1])


def input_grad(gy: Tensor, wm: Tensor, geo: Geometry) -> Tensor:
    """``col2im(gy @ wm^T)``: the input gradient of a per-task convolution. (Computing it instead as the
    convolution of ``gy`` with the flipped kernel, a gather and a forward-shaped GEMM, measured the same.)"""
    return col2im(torch.bmm(_by_task(gy, wm.shape[0]), wm.transpose(1, 2)).view(*gy.shape[:3], -1), geo)


class TaskConv(torch.autograd.Function):
    """``(x: (N, H, W, C), wm: (T, kh*kw*C, Co))`` -> ``y: (N, OH, OW, Co)``: task t's images (N = T * B, task-major)
    convolved with task t's weights, ``y = im2col(x) @ wm`` per task."""

    @staticmethod
    def forward(ctx, x: Tensor, wm: Tensor, geo: Geometry) -> Tensor:
        T = wm.shape[0]
        cols = im2col(x, geo)
        y = torch.bmm(_by_task(cols, T), wm)
        ctx.save_for_backward(x, wm)
        ctx.geo, ctx.cols = geo, cols
        return y.view(*cols.shape[:3], wm.shape[2])

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, wm = ctx.saved_tensors
        need_x, need_w, _ = ctx.needs_input_grad
        gx = gw = None
        if torch.is_grad_enabled():  # building a graph (create_graph): differentiable pieces
            if need_x:
                gx = ConvInputGrad.apply(gy, wm, ctx.geo)
            if need_w:
                gw = ConvWeightGrad.apply(x, gy, ctx.geo, ctx.cols, wm.shape[0])
            return gx, gw, None
        T = wm.shape[0]
        g3 = _by_task(gy, T)
        if need_x:
            gx = input_grad(gy, wm, ctx.geo)
        if need_w:
            gw = torch.bmm(_by_task(ctx.cols, T).transpose(1, 2), g3)
        return gx, gw, None


class ConvInputGrad(torch.autograd.Function):
    """``(gy: (N, OH, OW, Co), wm: (T, K, Co))`` -> ``gx = col2im(gy @ wm^T)``: the input gradient of
    :class:`TaskConv`. Its backward: ``d gy = TaskConv(gx_bar, wm)``, ``d wm = ConvWeightGrad(gx_bar, gy)``."""

    @staticmethod
    def forward(ctx, gy: Tensor, wm: Tensor, geo: Geometry) -> Tensor:
        T = wm.shape[0]
        ctx.save_for_backward(gy, wm)
        ctx.geo = geo
        return input_grad(gy, wm, geo)

    @staticmethod
    def backward(ctx, gxb: Tensor):
        gy, wm = ctx.saved_tensors
        need_g, need_w, _ = ctx.needs_input_grad
        dg = dw = None
        if torch.is_grad_enabled():
            if need_g:
                dg = TaskConv.apply(gxb, wm, ctx.geo)
            if need_w:
                dw = ConvWeightGrad.apply(gxb, gy, ctx.geo, None, wm.shape[0])
            return dg, dw, None
        T = wm.shape[0]
        c3 = _by_task(im2col(gxb, ctx.geo), T)  # one patch extraction for both products
        if need_g:
            dg = torch.bmm(c3, wm).view(gy.shape)
        if need_w:
            dw = torch.bmm(c3.transpose(1, 2), _by_task(gy, T))
        return dg, dw, None


class ConvWeightGrad(torch.autograd.Function):
    """``(x: (N, H, W, C), gy: (N, OH, OW, Co))`` -> ``gw = im2col(x)^T @ gy`` per task, ``(T, K, Co)``: the
    weight gradient of :class:`TaskConv` (``cols``: im2col(x) when the caller has it). Its backward:
    ``d x = ConvInputGrad(gy, gw_bar)``, ``d gy = TaskConv(x, gw_bar)``."""

    @staticmethod
    def forward(ctx, x: Tensor, gy: Tensor, geo: Geometry, cols: Tensor | None, tasks: int) -> Tensor:
        cols = im2col(x, geo) if cols is None else cols
        ctx.save_for_backward(x, gy)
        ctx.geo, ctx.cols = geo, cols
        return torch.bmm(_by_task(cols, tasks).transpose(1, 2), _by_task(gy, tasks))

    @staticmethod
    def backward(ctx, gwb: Tensor):
        x, gy = ctx.saved_tensors
        need_x, need_g = ctx.needs_input_grad[:2]
        dx = dg = None
        if torch.is_grad_enabled():
            if need_x:
                dx = ConvInputGrad.apply(gy, gwb, ctx.geo)
            if need_g:
                dg = TaskConv.apply(x, gwb, ctx.geo)
            return dx, dg, None, None, None
        T = gwb.shape[0]
        if need_x:
            dx = input_grad(gy, gwb, ctx.geo)
        if need_g:
            dg = torch.bmm(_by_task(ctx.cols, T), gwb).view(gy.shape)
        return dx, dg, None, None, None


def _normalize(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(xhat, r)`` for ``x: (T, N, C)``, each task by the library's batch-norm kernel on its ``(N, C)`` slice
    (statistics and normalisation in two fused passes; reductions over the middle dim of a 3-d tensor are
    several times slower), written in place into the stacked outputs."""
    T, _, c = x.shape
    x = x.contiguous()
    xhat = torch.empty_like(x)
    mean, r = x.new_empty(T, 1, c), x.new_empty(T, 1, c)
    for t in range(T):
        torch.ops.aten.native_batch_norm.out(x[t], None, None, None, None, True, 0.0, eps, out=xhat[t],
                                             save_mean=mean[t, 0], save_invstd=r[t, 0])
    return xhat, r


def _normalize_backward(g: Tensor, xhat: Tensor, r: Tensor, extra: Tensor | None = None) -> Tensor:
    """``r * (g - mean(g) - xhat * mean(g * xhat)) + xhat * extra`` in four passes over ``g``-sized tensors."""
    m1 = g.mean(1, keepdim=True)
    m2 = (g * xhat).mean(1, keepdim=True)
    coef = -(m2 * r) if extra is None else extra - m2 * r
    return torch.addcmul(-(m1 * r), g, r).addcmul_(xhat, coef)


class Normalize(torch.autograd.Function):
    """``x: (T, N, C)`` -> ``(xhat, r)``: ``xhat = (x - mean) * r``, ``r = 1 / sqrt(var + eps)`` per (t, c),
    statistics over N (biased variance, as batch norm in training)."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        xhat, r = _normalize(x, eps)
        ctx.save_for_backward(xhat, r)
        ctx.set_materialize_grads(False)
        return xhat, r

    @staticmethod
    def backward(ctx, g_xhat: Tensor | None, g_r: Tensor | None):
        xhat, r = ctx.saved_tensors
        extra = None if g_r is None else -(g_r * r.square() / xhat.shape[1])  # dr/dx = -r^2 * xhat / N
        if g_xhat is None:
            return (None if extra is None else xhat * extra), None
        if torch.is_grad_enabled():
            gx = NormalizeBackward.apply(g_xhat, xhat, r)
            return (gx if extra is None else gx + xhat * extra), None
        return _normalize_backward(g_xhat, xhat, r, extra), None


class NormalizeBackward(torch.autograd.Function):
    """``(g, xhat, r) -> r * (g - mean(g) - xhat * mean(g * xhat))``: the input gradient of :class:`Normalize`.

    Its adjoint in ``g`` is itself; the ``xhat`` and ``r`` terms come from differentiating the two means."""

    @staticmethod
    def forward(ctx, g: Tensor, xhat: Tensor, r: Tensor) -> Tensor:
        m1 = g.mean(1, keepdim=True)
        m2 = (g * xhat).mean(1, keepdim=True)
        ctx.save_for_backward(g, xhat, r, m1, m2)
        return torch.addcmul(-(m1 * r), g, r).addcmul_(xhat, -(m2 * r))

    @staticmethod
    def backward(ctx, go: Tensor):
        g, xhat, r, m1, m2 = ctx.saved_tensors
        need_g, need_xhat, need_r = ctx.needs_input_grad
        n = xhat.shape[1]
        gg = gxhat = gr = None
        if torch.is_grad_enabled():  # building a graph: differentiable pieces (the means recomputed, not saved)
            if need_g:
                gg = NormalizeBackward.apply(go, xhat, r)
            m1, m2 = g.mean(1, keepdim=True), (g * xhat).mean(1, keepdim=True)
            mo = (go * xhat).mean(1, keepdim=True)
            if need_xhat:  # out depends on xhat directly and through m2
                gxhat = -(go * (m2 * r) + g * (mo * r))
            if need_r:  # out is linear in r
                gr = (go * g).sum(1, keepdim=True) - go.sum(1, keepdim=True) * m1 - mo * m2 * n
            return gg, gxhat, gr
        so = go.sum(1, keepdim=True)
        mo = (go * xhat).mean(1, keepdim=True)
        if need_g:
            gg = torch.addcmul(-(so / n * r), go, r).addcmul_(xhat, -(mo * r))
        if need_xhat:
            gxhat = torch.mul(go, -(m2 * r)).addcmul_(g, -(mo * r))
        if need_r:
            gr = (go * g).sum(1, keepdim=True) - so * m1 - mo * m2 * n
        return gg, gxhat, gr


# --- batch norm followed by max-pooling --------------------------------------------------------------------
# The pooled maximum picks one position per window, so the gradient reaching the normalised map is a scatter
# of the pooled gradient (a quarter of the entries for 2x2 windows). NormPool / NormPoolBackward keep that
# sparsity: the means of the normalisation backward are sums over the pooled entries only.
def _pool_index(idx: Tensor) -> Tensor:
    """max_pool2d indices ``(N, C, OH, OW)`` (flat positions in H * W) -> ``(N, OH * OW, C)`` for gather/scatter
    on ``(N, H * W, C)`` maps."""
    return idx.permute(0, 2, 3, 1).reshape(idx.shape[0], -1, idx.shape[1])


class NormPool(torch.autograd.Function):
    """``x: (N, H, W, C)`` (N = T * B, task-major) -> ``(pooled, xhat, r)``: batch-normalised per task (statistics
    over each task's B images and positions, no affine), then max-pooled (``pool``: kernel, stride, padding,
    dilation, ceil_mode of ``F.max_pool2d``). ``pooled: (N, OH, OW, C)``; ``xhat: (T, B*H*W, C)`` and
    ``r: (T, 1, C)`` are returned for the backward of the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, tasks: int, eps: float, pool: tuple) -> tuple[Tensor, Tensor, Tensor]:
        n, h, w, c = x.shape
        xhat, r = _normalize(x.reshape(tasks, -1, c), eps)
        pooled, idx = torch.nn.functional.max_pool2d(xhat.view(n, h, w, c).permute(0, 3, 1, 2), *pool,
                                                     return_indices=True)
        pooled = pooled.permute(0, 2, 3, 1).contiguous()
        index = _pool_index(idx)
        ctx.save_for_backward(xhat, r, pooled)
        ctx.index, ctx.shape = index, (n, h, w, c)
        ctx.set_materialize_grads(False)
        return pooled, xhat, r

    @staticmethod
    def backward(ctx, g_pooled: Tensor | None, g_xhat: Tensor | None, g_r: Tensor | None):
        xhat, r, pooled = ctx.saved_tensors
        n, h, w, c = ctx.shape
        T = r.shape[0]
        extra = None if g_r is None else -(g_r * r.square() / xhat.shape[1])
        if torch.is_grad_enabled():
            gx = None
            if g_pooled is not None:
                gx = NormPoolBackward.apply(g_pooled, xhat, r, pooled.detach(), ctx.index)
            if g_xhat is not None:
                t = NormalizeBackward.apply(g_xhat, xhat, r)
                gx = t if gx is None else gx + t
            if extra is not None:
                gx = xhat * extra if gx is None else gx + xhat * extra
        elif g_xhat is None:
            gx = _normpool_backward(g_pooled, xhat, r, pooled, ctx.index, extra) if g_pooled is not None else \
                (None if extra is None else xhat * extra)
        else:
            g = g_xhat.clone()
            if g_pooled is not None:
                g.view(n, h * w, c).scatter_add_(1, ctx.index, g_pooled.reshape(n, -1, c))
            gx = _normalize_backward(g, xhat, r, extra)
        return (None if gx is None else gx.view(n, h, w, c)), None, None, None


def _normpool_backward(gp: Tensor, xhat: Tensor, r: Tensor, pooled: Tensor, index: Tensor,
                       extra: Tensor | None = None) -> Tensor:
    """``r * (S(gp) - mean(S(gp)) - xhat * mean(S(gp) * xhat)) + xhat * extra`` with ``S`` the pooling scatter,
    the means taken over the pooled entries only (``S(gp) * xhat`` is ``gp * pooled`` where it is non-zero)."""
    T, npos, c = xhat.shape
    g3 = gp.reshape(T, -1, c)
    m1 = g3.sum(1, keepdim=True) / npos
    m2 = (g3 * pooled.reshape(T, -1, c)).sum(1, keepdim=True) / npos
    coef = -(m2 * r) if extra is None else extra - m2 * r
    out = torch.mul(xhat, coef).sub_(m1 * r)
    n = index.shape[0]
    out.view(n, -1, c).scatter_add_(1, index, (g3 * r).view(n, -1, c))
    return out


class NormPoolBackward(torch.autograd.Function):
    """``(gp, xhat, r, pooled, index)`` -> the gradient of :class:`NormPool`'s input, ``(T, B*H*W, C)``, from the
    pooled gradient ``gp: (N, OH, OW, C)``; differentiable in ``gp``, ``xhat`` and ``r`` (``pooled`` is
    ``xhat`` gathered at ``index``: its dependence on ``xhat`` is written out in the backward)."""

    @staticmethod
    def forward(ctx, gp: Tensor, xhat: Tensor, r: Tensor, pooled: Tensor, index: Tensor) -> Tensor:
        T, npos, c = xhat.shape
        g3 = gp.reshape(T, -1, c)
        m1 = g3.sum(1, keepdim=True) / npos
        m2 = (g3 * pooled.reshape(T, -1, c)).sum(1, keepdim=True) / npos
        ctx.save_for_backward(gp, xhat, r, pooled, m1, m2)
        ctx.index = index
        return _normpool_backward(gp, xhat, r, pooled, index)

    @staticmethod
    def backward(ctx, go: Tensor):
        gp, xhat, r, pooled, m1, m2 = ctx.saved_tensors
        need_gp, need_xhat, need_r = ctx.needs_input_grad[:3]
        T, npos, c = xhat.shape
        n = ctx.index.shape[0]
        index = ctx.index
        if torch.is_grad_enabled():  # building a graph: every saved quantity recomputed from the inputs
            pooled = torch.gather(xhat.reshape(n, -1, c), 1, index).view(gp.shape)
            m1 = gp.reshape(T, -1, c).sum(1, keepdim=True) / npos
            m2 = (gp * pooled).reshape(T, -1, c).sum(1, keepdim=True) / npos
        so = go.sum(1, keepdim=True)
        mo = (go * xhat).sum(1, keepdim=True) / npos
        g_go = torch.gather(go.reshape(n, -1, c), 1, index).reshape(T, -1, c)  # go at the pooled positions
        p3, gp3 = pooled.reshape(T, -1, c), gp.reshape(T, -1, c)
        d_gp = d_xhat = d_r = None
        if need_gp:
            d_gp = ((g_go - so / npos - p3 * mo) * r).view(gp.shape)
        if need_xhat:
            scattered = torch.zeros_like(xhat).view(n, -1, c).scatter_add(1, index, (gp3 * (-(mo * r))).view(n, -1, c))
            d_xhat = scattered.view(T, npos, c) - go * (m2 * r)
        if need_r:
            d_r = (g_go * gp3).sum(1, keepdim=True) - m1 * so - mo * m2 * npos
        return d_gp, d_xhat, d_r, None, None
