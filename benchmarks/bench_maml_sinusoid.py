"""One MAML meta-iteration: the functional engine (vmap over tasks) against a per-task loop in the style of
learn2learn / higher (clone the module, adapt it with ``autograd.grad(create_graph=True)``, backprop each
task's query loss), on MAML's sinusoid setting: MLP 1-40-40-1, K = 10, one inner step of 0.01, meta-batch 25,
Adam 1e-3, second order. Both compute the same meta-gradient (checked here before timing).

Also measured, to justify ``strategy="auto"``: the engine's own loop path on the same MLP, and vmap against
the loop on a small conv net (5-way tasks), where vmap's grouped convolutions lose on a CPU.

    python benchmarks/bench_maml_sinusoid.py [--quick]
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbmodule.data.sinusoid import get_family, make_tasks  # noqa: E402
from nbmodule.meta import meta_loss  # noqa: E402
from nbmodule.models.mlp import MLP  # noqa: E402
from nbmodule.profiling import median_seconds  # noqa: E402




def _clone_module(module: nn.Module) -> nn.Module:
    """learn2learn's ``clone_module``: a copy whose parameters are differentiable clones of the original's."""
    clone = copy.deepcopy(module)
    for (name, p), sub in zip(module.named_parameters(), _param_owners(clone)):
        owner, attr = sub
        owner._parameters[attr] = p.clone()
    return clone


def _param_owners(module: nn.Module) -> list[tuple[nn.Module, str]]:
    out = []
    for mod in module.modules():
        for attr in list(mod._parameters):
            if mod._parameters[attr] is not None:
                out.append((mod, attr))
    return out


def _l2l_step(model: nn.Module, tasks, inner_lr: float, opt: torch.optim.Optimizer) -> None:
    """One meta-iteration the learn2learn way: clone, adapt in place, backprop every task separately."""
    xs, ys, xq, yq = tasks
    t = xs.shape[0]
    opt.zero_grad(set_to_none=True)
    for i in range(t):
        learner = _clone_module(model)
        owners = _param_owners(learner)
        params = [owner._parameters[attr] for owner, attr in owners]
        grads = torch.autograd.grad(F.mse_loss(learner(xs[i]), ys[i]), params, create_graph=True)
        for (owner, attr), p, g in zip(owners, params, grads):
            owner._parameters[attr] = p - inner_lr * g
        (F.mse_loss(learner(xq[i]), yq[i]) / t).backward()
    opt.step()


def _engine_step(model: nn.Module, tasks, inner_lr: float, opt: torch.optim.Optimizer, strategy: str) -> None:
    params = dict(model.named_parameters())
    opt.zero_grad(set_to_none=True)
    loss, _ = meta_loss(model, params, tasks, F.mse_loss, inner_lr=inner_lr, strategy=strategy)
    loss.backward()
    opt.step()


def _check_same_gradient(model: nn.Module, tasks, inner_lr: float) -> None:
    dummy = torch.optim.SGD(model.parameters(), lr=0.0)
    _l2l_step(model, tasks, inner_lr, dummy)
    ref = [p.grad.clone() for p in model.parameters()]
    _engine_step(model, tasks, inner_lr, dummy, "vmap")
    for a, b in zip(ref, (p.grad for p in model.parameters())):
        if not torch.allclose(a, b, atol=1e-5, rtol=1e-4):
            raise AssertionError("the engine and the learn2learn-style loop disagree on the meta-gradient")


def _conv_net() -> nn.Module:
    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(block(1, 32), block(32, 32), block(32, 32), nn.Flatten(), nn.Linear(32 * 3 * 3, 5))


def run(quick: bool = False) -> dict[str, float]:
    torch.set_num_threads(1)  # fixed: the CPU comparison must not depend on the machine's load balancing
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats, warmup = (7, 2) if quick else (30, 5)
    g = torch.Generator().manual_seed(0)
    family = get_family("2d")
    tasks = make_tasks(family.sample_params(25, g), 10, 10, g, device=device)
    torch.manual_seed(0)
    model = MLP(1, (40, 40), 1).to(device)
    _check_same_gradient(model, tasks, 0.01)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    t_l2l = median_seconds(lambda: _l2l_step(model, tasks, 0.01, opt), device, repeats=repeats, warmup=warmup)
    t_vmap = median_seconds(lambda: _engine_step(model, tasks, 0.01, opt, "vmap"), device, repeats=repeats, warmup=warmup)
    t_loop = median_seconds(lambda: _engine_step(model, tasks, 0.01, opt, "loop"), device, repeats=repeats, warmup=warmup)

    # conv net, 5-way 1-shot tasks with 5 query images per class: where vmap becomes grouped convolutions
    n_tasks, size = (2, 28) if quick else (4, 28)
    xs = torch.randn(n_tasks, 5, 1, size, size, generator=g).to(device)
    xq = torch.randn(n_tasks, 25, 1, size, size, generator=g).to(device)
    ys = torch.arange(5).repeat(n_tasks, 1).to(device)
    yq = torch.arange(5).repeat_interleave(5).repeat(n_tasks, 1).to(device)
    conv = _conv_net().to(device)
    conv_opt = torch.optim.Adam(conv.parameters(), lr=1e-3)

    def conv_step(strategy: str) -> None:
        conv_opt.zero_grad(set_to_none=True)
        loss, _ = meta_loss(conv, dict(conv.named_parameters()), (xs, ys, xq, yq), F.cross_entropy,
                            inner_lr=0.4, strategy=strategy)
        loss.backward()
        conv_opt.step()

    conv_reps = (3, 1) if quick else (10, 2)
    t_conv_vmap = median_seconds(lambda: conv_step("vmap"), device, repeats=conv_reps[0], warmup=conv_reps[1])
    t_conv_loop = median_seconds(lambda: conv_step("loop"), device, repeats=conv_reps[0], warmup=conv_reps[1])

    res = {
        "maml_sinusoid_on_cuda": int(device.type == "cuda"),
        "maml_sinusoid_engine_s_per_iter": t_vmap,
        "maml_sinusoid_loop_s_per_iter": t_l2l,
        "maml_sinusoid_engine_loop_path_s_per_iter": t_loop,
        "maml_sinusoid_speedup": t_l2l / t_vmap,
        "maml_sinusoid_vmap_over_engine_loop_speedup": t_loop / t_vmap,
        "maml_conv_vmap_s_per_iter": t_conv_vmap,
        "maml_conv_loop_s_per_iter": t_conv_loop,
        "maml_conv_loop_over_vmap_speedup": t_conv_vmap / t_conv_loop,
    }
    print(f"[maml_sinusoid] one meta-iteration (MLP 1-40-40-1, 25 tasks, K=10, 2nd order) on {device}: "
          f"engine (vmap) {t_vmap * 1e3:.2f} ms, learn2learn-style loop {t_l2l * 1e3:.2f} ms "
          f"-> speedup {res['maml_sinusoid_speedup']:.1f}x (engine loop path {t_loop * 1e3:.2f} ms)")
    print(f"[maml_sinusoid] conv net, {n_tasks} 5-way tasks: vmap {t_conv_vmap * 1e3:.1f} ms, loop "
          f"{t_conv_loop * 1e3:.1f} ms -> loop is {res['maml_conv_loop_over_vmap_speedup']:.2f}x faster")
    return res


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for k, v in out.items():
        print(f"{k}: {v:.6g}")
