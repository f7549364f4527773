"""The functional MAML engine: vmap == loop, second-order meta-gradient == finite differences, options."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nbmodule.meta import MAML, adapt, finetune_curve, forward, meta_loss, resolve_strategy
from nbmodule.models import build_model


pytestmark = pytest.mark.usefixtures("one_thread")



def _tasks(t: int = 4, k: int = 5, q: int = 6, dim: int = 1, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    amp = 0.5 + torch.rand(t, 1, 1, generator=g, dtype=dtype)
    xs = torch.rand(t, k, dim, generator=g, dtype=dtype) * 4 - 2
    xq = torch.rand(t, q, dim, generator=g, dtype=dtype) * 4 - 2
    f = lambda x: amp * torch.sin(x.sum(-1, keepdim=True))  # noqa: E731
    return xs, f(xs), xq, f(xq)


def _grads(loss, params):
    return torch.autograd.grad(loss, list(params.values()))


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_and_loop_agree(first_order):
    net = build_model("mlp", hidden=(16, 16))
    params = dict(net.named_parameters())
    tasks = _tasks()
    res = {}
    for strategy in ("vmap", "loop"):
        loss, per_task, out = meta_loss(net, params, tasks, F.mse_loss, steps=2, inner_lr=[0.05, 0.02],
                                        first_order=first_order, strategy=strategy, return_outputs=True)
        res[strategy] = (loss, per_task, out, _grads(loss, params))
    (lv, pv, ov, gv), (ll, pl, ol, gl) = res["vmap"], res["loop"]
    assert per_task.shape == (4,) and out.shape == (4, 6, 1)
    assert torch.allclose(lv, ll, atol=1e-6)
    assert torch.allclose(pv, pl, atol=1e-6) and torch.allclose(ov, ol, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(gv, gl))


def test_second_order_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    tasks = _tasks(t=3, k=4, q=5, dim=2, dtype=torch.float64)
    kw = dict(steps=2, inner_lr=0.3)

    loss, _ = meta_loss(net, params, tasks, F.mse_loss, **kw)
    analytic = _grads(loss, params)
    fo_loss, _ = meta_loss(net, params, tasks, F.mse_loss, first_order=True, **kw)
    first_order = _grads(fo_loss, params)

    eps = 1e-6
    max_err, max_fo_err = 0.0, 0.0
    for (name, p), g, g_fo in zip(params.items(), analytic, first_order):
        flat = p.detach().flatten()
        for i in range(flat.numel()):
            vals = []
            for sign in (1, -1):
                q = flat.clone()
                q[i] += sign * eps
                shifted = {**params, name: q.view_as(p)}
                with torch.no_grad():
                    vals.append(meta_loss(net, shifted, tasks, F.mse_loss, **kw)[0].item())
            fd = (vals[0] - vals[1]) / (2 * eps)
            max_err = max(max_err, abs(fd - g.flatten()[i].item()))
            max_fo_err = max(max_fo_err, abs(fd - g_fo.flatten()[i].item()))
    assert max_err < 1e-7
    assert max_fo_err > 1e-4  # the check is sharp: first-order MAML's gradient is visibly different


def test_adapt_lowers_support_loss_and_keeps_graph():
    net = build_model("mlp", hidden=(16,))
    params = dict(net.named_parameters())
    xs, ys, _, _ = _tasks()
    before = F.mse_loss(forward(net, params, xs[0]), ys[0])
    new = adapt(net, params, xs[0], ys[0], F.mse_loss, steps=5, inner_lr=0.05)
    after = F.mse_loss(forward(net, new, xs[0]), ys[0])
    assert after < before
    assert set(new) == set(params)
    g = torch.autograd.grad(after, params["0.weight"])[0]
    assert g.abs().sum() > 0  # the adapted parameters are a function of the meta parameters
    fo = adapt(net, params, xs[0], ys[0], F.mse_loss, first_order=True)
    assert fo["0.weight"].requires_grad


def test_subset_adaptation_reaches_shared_parameters():
    net = build_model("mlp", hidden=(8, 8))
    head = {k: v for k, v in net.named_parameters() if k.startswith("4.")}
    tasks = _tasks()
    loss, _ = meta_loss(net, head, tasks, F.mse_loss, strategy="vmap")
    loss.backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0  # shared body is meta-learned
    adapted = adapt(net, head, tasks[0][0], tasks[1][0], F.mse_loss)
    assert set(adapted) == {"4.weight", "4.bias"}
    for strategy in ("vmap", "loop"):
        net.zero_grad()
        meta_loss(net, head, tasks, F.mse_loss, strategy=strategy)[0].backward()
        if strategy == "vmap":
            ref = net[0].weight.grad.clone()
    assert torch.allclose(ref, net[0].weight.grad, atol=1e-6)


def test_weights_scale_the_meta_loss():
    net = build_model("mlp", hidden=(8,))
    params = dict(net.named_parameters())
    tasks = _tasks()
    loss, per_task = meta_loss(net, params, tasks, F.mse_loss)
    w = torch.tensor([0.0, 1.0, 2.0, 3.0])
    wloss, _ = meta_loss(net, params, tasks, F.mse_loss, weights=w)
    assert torch.allclose(loss, per_task.mean())
    assert torch.allclose(wloss, (w * per_task).mean())
    with pytest.raises(ValueError, match="one per task"):
        meta_loss(net, params, tasks, F.mse_loss, weights=[1.0, 2.0])


def test_inner_lr_errors_name_the_problem():
    net = build_model("mlp", hidden=(8,))
    params = dict(net.named_parameters())
    tasks = _tasks()
    with pytest.raises(ValueError, match="one per step"):
        meta_loss(net, params, tasks, F.mse_loss, steps=3, inner_lr=[0.1, 0.1])
    with pytest.raises(ValueError, match="lacks entries"):
        meta_loss(net, params, tasks, F.mse_loss, inner_lr={"0.weight": torch.tensor(0.1)})
    with pytest.raises(ValueError, match="strategy"):
        meta_loss(net, params, tasks, F.mse_loss, strategy="fast")


def test_finetune_curve_matches_meta_loss_and_descends():
    net = build_model("mlp", hidden=(16,))
    params = dict(net.named_parameters())
    xs, ys, _, _ = _tasks()
    tasks = (xs, ys, xs, ys)  # query = support: every plain gradient step must lower the loss
    curve = finetune_curve(net, params, tasks, F.mse_loss, steps=4, inner_lr=0.05)
    assert curve.shape == (4, 5) and not curve.requires_grad
    zero = torch.stack([F.mse_loss(net(xs[i]), ys[i]) for i in range(4)])
    assert torch.allclose(curve[:, 0], zero.detach(), atol=1e-6)
    one = meta_loss(net, params, tasks, F.mse_loss, steps=1, inner_lr=0.05)[1]
    assert torch.allclose(curve[:, 1], one, atol=1e-6)
    assert (curve[:, 1:] < curve[:, :-1]).all()
    loop = finetune_curve(net, params, tasks, F.mse_loss, steps=4, inner_lr=0.05, strategy="loop")
    assert torch.allclose(curve, loop, atol=1e-6)


def test_auto_strategy_choice():
    mlp = build_model("mlp")
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    bn = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4, track_running_stats=False))
    bn_running = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    assert resolve_strategy("auto", mlp, "cpu") == "vmap"
    assert resolve_strategy("auto", conv, "cpu") == "loop"
    assert resolve_strategy("auto", conv, "cuda") == "vmap"
    assert resolve_strategy("auto", bn, "cuda") == "loop"  # second order through BatchNorm: not under vmap
    assert resolve_strategy("auto", bn, "cuda", first_order=True) == "vmap"
    assert resolve_strategy("auto", bn_running.train(), "cpu", first_order=True) == "loop"
    assert resolve_strategy("auto", bn_running.eval(), "cpu", first_order=True) == "vmap"
    assert resolve_strategy("vmap", conv, "cpu") == "vmap"
    with pytest.raises(ValueError, match="BatchNorm/LayerNorm"):
        resolve_strategy("vmap", bn, "cpu")


def _bn_net_and_tasks(dtype=torch.float32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2, track_running_stats=False), nn.Tanh(),
                        nn.Flatten(), nn.Linear(2 * 4 * 4, 2)).to(dtype)
    g = torch.Generator().manual_seed(1)
    xs, xq = torch.randn(3, 4, 1, 4, 4, generator=g, dtype=dtype), torch.randn(3, 6, 1, 4, 4, generator=g, dtype=dtype)
    ys, yq = torch.randint(2, (3, 4), generator=g), torch.randint(2, (3, 6), generator=g)
    return net, (xs, ys, xq, yq)


def test_batchnorm_first_order_vmap_equals_loop():
    net, tasks = _bn_net_and_tasks()
    params = dict(net.named_parameters())
    out = {s: meta_loss(net, params, tasks, F.cross_entropy, strategy=s, first_order=True, return_outputs=True)
           for s in ("vmap", "loop")}
    assert torch.allclose(out["vmap"][0], out["loop"][0], atol=1e-5)
    assert out["vmap"][2].shape == (3, 6, 2)
    gv, gl = _grads(out["vmap"][0], params), _grads(out["loop"][0], params)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gv, gl))


def test_batchnorm_second_order_meta_gradient_matches_finite_differences():
    net, tasks = _bn_net_and_tasks(torch.float64)
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    loss, _ = meta_loss(net, params, tasks, F.cross_entropy, inner_lr=0.5)  # auto: the loop path
    g = _grads(loss, params)[0].flatten()
    w = params["0.weight"].detach().flatten()
    eps = 1e-6
    for i in range(6):
        vals = []
        for sign in (1, -1):
            q = w.clone()
            q[i] += sign * eps
            with torch.no_grad():
                vals.append(meta_loss(net, {**params, "0.weight": q.view(2, 1, 3, 3)}, tasks, F.cross_entropy,
                                      inner_lr=0.5)[0].item())
        assert abs((vals[0] - vals[1]) / (2 * eps) - g[i].item()) < 1e-7


def test_buffers_are_threaded_through():
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).eval()
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    buffers["1.running_mean"] += 1.0
    params = dict(net.named_parameters())
    x = torch.randn(5, 2)
    shifted = forward(net, params, x, buffers)
    assert not torch.allclose(shifted, net(x))  # the passed buffers, not the module's, were used
    tasks = _tasks(dim=2)
    loss, _ = meta_loss(net, params, tasks, F.mse_loss, buffers=buffers, strategy="loop")
    loss_v, _ = meta_loss(net, params, tasks, F.mse_loss, buffers=buffers, strategy="vmap")
    assert torch.allclose(loss, loss_v, atol=1e-6)


def test_maml_wrapper_meta_trains_a_users_module_in_a_few_lines():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 1))
    maml = MAML(net, inner_lr=0.05, loss_fn=F.mse_loss)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)

    def batch():  # tasks y = a * x with a in [-2, 2]: one inner step should recover the slope
        a = torch.rand(16, 1, 1, generator=g) * 4 - 2
        x = torch.rand(16, 20, 1, generator=g) * 2 - 1
        return x[:, :10], a * x[:, :10], x[:, 10:], a * x[:, 10:]

    test = batch()
    before = maml.meta_loss(test)[0].item()
    for _ in range(150):
        loss, _ = maml.meta_loss(batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = maml.meta_loss(test)[0].item()
    assert after < 0.3 * before

    learner = maml.clone().adapt(test[0][0], test[1][0])
    pred = learner(test[2][0])
    assert pred.shape == (10, 1)
    pred.pow(2).mean().backward()
    assert net[0].weight.grad.abs().sum() > 0  # the meta-gradient reaches the original weights


def test_meta_sgd_learns_per_parameter_step_sizes():
    net = build_model("mlp", hidden=(8,))
    maml = MAML(net, inner_lr=0.05, learn_inner_lr=True, adapt_names=["2"])
    assert set(maml.adapt_names) == {"2.weight", "2.bias"}
    lrs = list(maml.inner_lrs.parameters())
    assert len(lrs) == 2 and all(torch.all(p == 0.05) for p in lrs)
    assert len(list(maml.parameters())) == len(list(net.parameters())) + 2
    loss, _ = maml.meta_loss(_tasks(), F.mse_loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lrs)
    curve = maml.finetune_curve(_tasks(), F.mse_loss, steps=2)
    assert curve.shape == (4, 3)
    with pytest.raises(ValueError, match="adapt_names"):
        MAML(net, adapt_names=["nope"])
