"""The task-batched MAML path: the loop's meta-gradient to 1e-6 in float64, any covered stack, honest fallback."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nbmodule.meta import MAML, finetune_curve, meta_loss
from nbmodule.meta.batched import BatchedProgram, Unsupported, compile_batched, per_task_losses
from nbmodule.meta.kernels import (Col2im, ConvInputGrad, ConvWeightGrad, Im2col, Normalize, NormalizeBackward,
                                   NormPool, NormPoolBackward, TaskConv)
from nbmodule.models.conv4 import Conv4

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64


def _images(T, n_way, shape, seed=0, k=1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(T, n_way * k, *shape, generator=g, dtype=D)
    xq = torch.rand(T, n_way * k, *shape, generator=g, dtype=D)
    y = torch.arange(n_way).repeat_interleave(k).expand(T, -1).contiguous()
    return xs, y, xq, y.clone()


def _meta_grads(model, tasks, strategy, params=None, loss_fn=F.cross_entropy, **kw):
    params = dict(model.named_parameters()) if params is None else params
    loss, per_task, out = meta_loss(model, params, tasks, loss_fn, strategy=strategy, return_outputs=True, **kw)
    leaves = list(dict.fromkeys([*params.values(), *model.parameters()]))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss.detach(), per_task, out, [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]


def _assert_same(model, tasks, tol=1e-6, **kw):
    ref = _meta_grads(model, tasks, "loop", **kw)
    got = _meta_grads(model, tasks, "batched", **kw)
    assert torch.allclose(ref[0], got[0], atol=tol, rtol=0)
    assert torch.allclose(ref[1], got[1], atol=tol, rtol=0)
    assert torch.allclose(ref[2], got[2], atol=tol, rtol=0)
    scale = max(g.abs().max().item() for g in ref[3])
    assert scale > 1e-3  # a meta-gradient that is not trivially zero
    for a, b in zip(ref[3], got[3]):
        assert torch.allclose(a, b, atol=tol, rtol=0), (a - b).abs().max()


def _conv4(shape, hidden, n_way):
    torch.manual_seed(0)
    m = Conv4(shape[0], n_way, hidden, shape[1]).to(D)
    with torch.no_grad():  # negative and positive batch-norm scales: the sign-folding rewrite must hold for both
        for i in (1, 5, 9, 13):
            m.features[i].weight.uniform_(-1.5, 1.5)
            m.features[i].bias.uniform_(-0.3, 0.3)
    return m


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("dataset", ["omniglot", "miniimagenet"])
def test_conv4_meta_gradient_equals_the_loop(dataset, steps, first_order):
    shape, hidden, lr = ((1, 28, 28), 64, 0.4) if dataset == "omniglot" else ((3, 84, 84), 32, 0.05)
    model = _conv4(shape, hidden, n_way=2)
    tasks = _images(2, 2, shape)
    _assert_same(model, tasks, steps=steps, inner_lr=lr, first_order=first_order, chunk=1)


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_strided_conv4_of_mamls_omniglot_code_matches_the_loop(first_order):
    """MAML's Omniglot network (stride-2 convs, no pooling, mean over the last 2x2 maps) on the batched path."""
    torch.manual_seed(0)
    model = Conv4(1, 5, 8, 28, downsample="stride").to(D)
    with torch.no_grad():
        for i in (1, 4, 7, 10):
            model.features[i].weight.uniform_(-1.5, 1.5)
    assert model(torch.rand(3, 1, 28, 28, dtype=D)).shape == (3, 5) and model.n_features == 8
    _assert_same(model, _images(3, 5, (1, 28, 28), seed=2), steps=2, inner_lr=0.4, first_order=first_order)


def test_chunk_sizes_give_the_same_numbers():
    model = _conv4((1, 28, 28), 8, 3)
    tasks = _images(5, 3, (1, 28, 28))
    ref = _meta_grads(model, tasks, "batched", steps=2, inner_lr=0.3, chunk=5)
    for chunk in (1, 2):
        got = _meta_grads(model, tasks, "batched", steps=2, inner_lr=0.3, chunk=chunk)
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(ref[3], got[3]))


class UserNet(nn.Module):
    """A stack a user might build: strided/dilated convs, no bias, a residual add, functional ops, eval-mode BN."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(6, track_running_stats=False)
        self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.c3 = nn.Conv2d(6, 5, (1, 3), padding=(0, 1))
        self.b3 = nn.BatchNorm2d(5)  # eval mode: frozen running statistics
        self.head = nn.Sequential(nn.Linear(5 * 4 * 4, 7), nn.Tanh(), nn.Linear(7, 3))

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = h + torch.sigmoid(self.c2(h))  # residual
        h = self.pool(h)
        h = F.leaky_relu(self.b3(self.c3(h)), 0.1)
        return self.head(h.view(h.size(0), -1))


def test_a_users_stack_matches_the_loop():
    torch.manual_seed(0)
    net = UserNet().to(D)
    with torch.no_grad():
        net.b3.running_mean.uniform_(-0.2, 0.2)
        net.b3.running_var.uniform_(0.5, 2.0)
    net.b3.eval()
    tasks = _images(3, 3, (3, 11, 11))
    for first_order in (False, True):
        _assert_same(net, tasks, steps=2, inner_lr=0.2, first_order=first_order, chunk=2)


@pytest.mark.parametrize("pool_first", [False, True])
def test_sequential_variants_match_the_loop(pool_first):
    torch.manual_seed(1)
    tail = [nn.MaxPool2d(2), nn.ReLU()] if pool_first else [nn.ReLU(), nn.MaxPool2d(2)]
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, affine=pool_first, track_running_stats=False),
                        *tail, nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 2 * 2, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.ELU(),
                        nn.LayerNorm(6), nn.Linear(6, 2)).to(D)
    _assert_same(net, _images(3, 2, (1, 12, 12), k=2), steps=3, inner_lr=0.3, chunk=2)


def test_mlp_regression_subset_weights_meta_sgd():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)).to(D)
    g = torch.Generator().manual_seed(0)
    xs, xq = torch.rand(4, 5, 1, generator=g, dtype=D), torch.rand(4, 6, 1, generator=g, dtype=D)
    tasks = (xs, torch.sin(3 * xs), xq, torch.sin(3 * xq))
    _assert_same(net, tasks, loss_fn=F.mse_loss, steps=2, inner_lr=[0.1, 0.05], weights=torch.tensor([1., 2., 0., 1.]))
    head = {k: v for k, v in net.named_parameters() if k.startswith("2.")}  # only the head adapts
    _assert_same(net, tasks, params=head, loss_fn=F.mse_loss, steps=2, inner_lr=0.1)
    lrs = {k: torch.full_like(v, 0.07).requires_grad_() for k, v in net.named_parameters()}  # Meta-SGD
    ref = _meta_grads(net, tasks, "loop", loss_fn=F.mse_loss, inner_lr=lrs)
    got = _meta_grads(net, tasks, "batched", loss_fn=F.mse_loss, inner_lr=lrs)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(ref[3], got[3]))
    maml = MAML(net, inner_lr=0.07, learn_inner_lr=True, strategy="batched", loss_fn=F.mse_loss)
    loss, _ = maml.meta_loss(tasks)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in maml.inner_lrs.parameters())


def test_finetune_curve_and_evaluation_without_grad():
    model = _conv4((1, 28, 28), 8, 3)
    tasks = _images(3, 3, (1, 28, 28))
    p = dict(model.named_parameters())
    ref = finetune_curve(model, p, tasks, F.cross_entropy, steps=3, inner_lr=0.3, strategy="loop")
    got = finetune_curve(model, p, tasks, F.cross_entropy, steps=3, inner_lr=0.3, strategy="batched", chunk=2)
    assert torch.allclose(ref, got, atol=1e-8)
    with torch.no_grad():  # evaluation: inner steps still work, nothing is recorded
        a = meta_loss(model, p, tasks, F.cross_entropy, steps=2, inner_lr=0.3, strategy="loop", return_outputs=True)
        b = meta_loss(model, p, tasks, F.cross_entropy, steps=2, inner_lr=0.3, strategy="batched", return_outputs=True)
    assert not b[0].requires_grad
    assert torch.allclose(a[2], b[2], atol=1e-8)


def test_bias_before_batch_norm_gets_an_exact_zero_gradient():
    model = _conv4((1, 28, 28), 8, 2)
    tasks = _images(2, 2, (1, 28, 28))
    meta_loss(model, dict(model.named_parameters()), tasks, F.cross_entropy, strategy="batched")[0].backward()
    assert model.features[0].bias.grad is not None and torch.all(model.features[0].bias.grad == 0)
    assert model.features[0].weight.grad.abs().sum() > 0


def test_unsupported_layers_fall_back_to_the_loop_and_say_why():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).to(D)
    with pytest.raises(Unsupported, match="GroupNorm"):
        compile_batched(net)
    tasks = _images(2, 2, (1, 6, 6))
    with pytest.warns(UserWarning, match="falls back to the loop.*GroupNorm"):
        got = _meta_grads(net, tasks, "batched")
    ref = _meta_grads(net, tasks, "loop")
    assert all(torch.allclose(a, b) for a, b in zip(ref[3], got[3]))
    running = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 2)).train()
    with pytest.raises(Unsupported, match="running statistics in place"):
        BatchedProgram(running)
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2))
    with pytest.raises(Unsupported, match="groups=2"):
        BatchedProgram(grouped)

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(Unsupported, match="torch.fx cannot trace"):
        BatchedProgram(Branchy())


def test_per_task_losses_match_per_task_calls():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(3, 4, 5, generator=g)
    y = torch.randint(5, (3, 4), generator=g)
    y[1, 2] = -100  # ignored, as F.cross_entropy does
    ref = torch.stack([F.cross_entropy(out[t], y[t]) for t in range(3)])
    assert torch.allclose(per_task_losses(F.cross_entropy, out, y), ref)
    target = torch.randn(3, 4, 5, generator=g)
    ref = torch.stack([F.mse_loss(out[t], target[t]) for t in range(3)])
    assert torch.allclose(per_task_losses(F.mse_loss, out, target), ref)
    huber = torch.stack([F.huber_loss(out[t], target[t]) for t in range(3)])
    assert torch.allclose(per_task_losses(F.huber_loss, out, target), huber)


# --- the custom autograd functions: first and second derivatives against finite differences ----------------
GEOMETRIES = [((4, 3), (3, 3), (1, 1), (1, 1), (1, 1)), ((5, 4), (3, 2), (2, 1), (1, 0), (1, 2)),
              ((3, 3), (1, 1), (1, 1), (0, 0), (1, 1))]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=["3x3", "strided-dilated", "1x1"])
def test_conv_functions_second_derivatives(geo):
    (h, w), k, s, p, d = geo
    T, B, C, Co = 2, 1, 2, 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T * B, h, w, C, generator=g, dtype=D, requires_grad=True)
    wm = torch.randn(T, k[0] * k[1] * C, Co, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: TaskConv.apply(a, b, geo), (x, wm))
    y = TaskConv.apply(x, wm, geo).detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: ConvInputGrad.apply(a, b, geo), (y, wm))
    assert torch.autograd.gradgradcheck(lambda a, b: ConvWeightGrad.apply(a, b, geo, None, T), (x, y))
    assert torch.autograd.gradcheck(lambda a: Im2col.apply(a, geo), (x,))
    cols = Im2col.apply(x, geo).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: Col2im.apply(a, geo), (cols,))
    for t in range(T):  # task t's images with task t's weights, as F.conv2d computes them
        ref = F.conv2d(x.permute(0, 3, 1, 2)[t * B:(t + 1) * B], wm[t].view(*k, C, Co).permute(3, 2, 0, 1), stride=s,
                       padding=p, dilation=d)
        assert torch.allclose(TaskConv.apply(x, wm, geo)[t * B:(t + 1) * B].permute(0, 3, 1, 2), ref)


def test_normalisation_functions_second_derivatives():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a: Normalize.apply(a, 1e-5)[0], (x,))
    assert torch.autograd.gradgradcheck(lambda a: Normalize.apply(a, 1e-5)[1], (x,))
    xhat, r = (t.detach().requires_grad_() for t in Normalize.apply(x, 1e-5))
    gin = torch.randn(2, 7, 3, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradgradcheck(NormalizeBackward.apply, (gin, xhat, r))  # exact to third order too
    T, B, H, W, C = 2, 1, 4, 3, 2  # 2 tasks of 1 image, 4x3, 2 channels; 2x2 windows, ceil mode
    img = torch.randn(T * B, H, W, C, generator=g, dtype=D, requires_grad=True)
    pool = (2, 2, 0, 1, True)
    assert torch.autograd.gradgradcheck(lambda a: NormPool.apply(a, T, 1e-5, pool)[0], (img,))
    _, xh, rr = NormPool.apply(img, T, 1e-5, pool)
    _, idx = F.max_pool2d(xh.detach().view(T * B, H, W, C).permute(0, 3, 1, 2), *pool, return_indices=True)
    index = idx.permute(0, 2, 3, 1).reshape(T * B, -1, C)
    gp = torch.randn(T * B, 2, 2, C, generator=g, dtype=D, requires_grad=True)
    pooled = torch.gather(xh.detach().reshape(T * B, -1, C), 1, index).view(gp.shape)
    xh, rr = xh.detach().requires_grad_(), rr.detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b, c: NormPoolBackward.apply(a, b, c, pooled, index), (gp, xh, rr))
    # against batch norm + max-pool with the tasks as channel groups (per-task statistics)
    ref = F.max_pool2d(F.batch_norm(img.view(T, B, H, W, C).permute(1, 0, 4, 2, 3).reshape(B, T * C, H, W), None, None,
                                    training=True, eps=1e-5), *pool)
    got = NormPool.apply(img, T, 1e-5, pool)[0].view(T, B, 2, 2, C).permute(1, 0, 4, 2, 3).reshape(B, T * C, 2, 2)
    assert torch.allclose(got, ref)



def _changes():
    """Settings of a compiled network changed in place after a first batched call (issue 19, item 7); the net
    ends with a global average pool, so no change alters the head's input size."""
    def eps(m):
        m[1].eps = 0.5

    def padding(m):
        m[0].padding = (0, 0)

    def stride(m):
        m[4].stride = (2, 2)

    def pooling(m):
        m[3].kernel_size, m[3].padding = 3, 1

    def affine(m):  # a batch norm losing its affine parameters: the program must not read them
        m[5].affine = False
        m[5].weight = m[5].bias = None

    return {"eps": eps, "padding": padding, "stride": stride, "pooling": pooling, "affine": affine}


@pytest.mark.parametrize("change", list(_changes()))
def test_a_layer_setting_changed_after_compiling_compiles_again(change):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=False), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=False),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).to(D)
    tasks = _images(3, 3, (1, 12, 12))
    _assert_same(m, tasks, steps=1, inner_lr=0.3)  # compiles and caches the program
    before = compile_batched(m)
    _changes()[change](m)
    assert compile_batched(m) is not before
    _assert_same(m, tasks, steps=1, inner_lr=0.3)  # the stale program gives other numbers than the loop
    assert compile_batched(m) is compile_batched(m)  # and the new one is cached
