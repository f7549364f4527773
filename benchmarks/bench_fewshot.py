"""Seconds per MAML meta-iteration on Conv4: the engine's strategies against a plain per-task loop.

Settings (the paper's): Omniglot 5-way 1-shot, 1 query per class, meta-batch 32, 1 inner step (64 filters,
28x28); MiniImagenet 5-way 1-shot, 15 queries, meta-batch 4, 5 inner steps (32 filters, 84x84). Second
order unless the key says ``fo`` (first order). One meta-iteration = meta-loss + backward (no optimiser step,
identical for all). Candidates, timed in the same process on the same batch:

* ``reference``: the textbook loop, one task at a time with ``torch.autograd.grad(create_graph=True)``;
* ``loop``: ``nbmodule.meta.meta_loss(strategy="loop")`` (torch.func.grad per task);
* ``grouped``: ``nbmodule.engines.fewshot.grouped_meta_loss`` (all tasks as groups of grouped convolutions);
* ``vmap``: ``meta_loss(strategy="vmap")``, first order only (second order through BatchNorm is wrong under
  vmap, see ``nbmodule.meta``).

Keys: ``fewshot_{omniglot|mini}_{candidate}[_fo]_s_per_iter``, ``..._{candidate}_speedup`` (reference time /
candidate time), ``fewshot_{setting}_engine_s_per_iter`` (what ``strategy="auto"`` picks: the fastest engine candidate),
``fewshot_on_cuda``, and on a GPU ``fewshot_mini5shot_peak_mem_gb`` (second-order MiniImagenet 5-way 5-shot,
5 steps, meta-batch 2, ``torch.cuda.max_memory_allocated``).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from nbmodule.engines.fewshot import FewShotConfig, build_fewshot_model, grouped_meta_loss
from nbmodule.meta import meta_loss
from nbmodule.profiling import median_seconds

SETTINGS = {
    # name: (dataset, image shape, n_way, k_shot, k_query, meta_batch, steps, inner_lr)
    "omniglot": ("omniglot", (1, 28, 28), 5, 1, 1, 32, 1, 0.4),
    "mini": ("miniimagenet", (3, 84, 84), 5, 1, 15, 4, 5, 0.01),
}


def reference_meta_loss(model, tasks, *, steps, inner_lr, first_order=False):
    """The plain per-task loop of MAML with ``torch.autograd.grad`` (the oracle the engine is checked against)."""
    xs, ys, xq, yq = tasks
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    losses = []
    for t in range(xs.shape[0]):
        fast = params
        for _ in range(steps):
            out = torch.func.functional_call(model, dict(zip(names, fast)), (xs[t],))
            grads = torch.autograd.grad(F.cross_entropy(out, ys[t]), fast, create_graph=not first_order)
            fast = [w - inner_lr * g for w, g in zip(fast, grads)]
        out = torch.func.functional_call(model, dict(zip(names, fast)), (xq[t],))
        losses.append(F.cross_entropy(out, yq[t]))
    return torch.stack(losses).mean()


def _tasks(shape, n_way, k_shot, k_query, T, device, gen):
    xs = torch.rand(T, n_way * k_shot, *shape, generator=gen).to(device)
    xq = torch.rand(T, n_way * k_query, *shape, generator=gen).to(device)
    ys = torch.arange(n_way).repeat_interleave(k_shot).expand(T, -1).contiguous().to(device)
    yq = torch.arange(n_way).repeat_interleave(k_query).expand(T, -1).contiguous().to(device)
    return xs, ys, xq, yq


def _candidates(model, tasks, steps, lr, first_order):
    params = lambda: dict(model.named_parameters())  # noqa: E731

    def run(loss):
        loss.backward()
        model.zero_grad(set_to_none=True)

    out = {
        "reference": lambda: run(reference_meta_loss(model, tasks, steps=steps, inner_lr=lr, first_order=first_order)),
        "loop": lambda: run(meta_loss(model, params(), tasks, F.cross_entropy, steps=steps, inner_lr=lr,
                                      first_order=first_order, strategy="loop")[0]),
        "grouped": lambda: run(grouped_meta_loss(model, params(), tasks, steps=steps, inner_lr=lr,
                                                 first_order=first_order)[0]),
    }
    if first_order:
        out["vmap"] = lambda: run(meta_loss(model, params(), tasks, F.cross_entropy, steps=steps, inner_lr=lr,
                                            first_order=True, strategy="vmap")[0])
    return out


def run(quick: bool = False) -> dict[str, float]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    results: dict[str, float] = {"fewshot_on_cuda": int(device.type == "cuda")}
    gen = torch.Generator().manual_seed(0)
    repeats = 1 if quick else 3
    for key, (dataset, shape, n_way, k_shot, k_query, T, steps, lr) in SETTINGS.items():
        if quick:  # the harness check: same code, small batches
            T, steps, k_query = max(1, T // 16), 1, min(k_query, 2)
        torch.manual_seed(0)
        model = build_fewshot_model(FewShotConfig(dataset=dataset, n_way=n_way), shape).to(device)
        tasks = _tasks(shape, n_way, k_shot, k_query, T, device, gen)
        for fo in (False, True):
            suffix = "_fo" if fo else ""
            times = {name: median_seconds(fn, device, repeats=repeats, warmup=1) for name, fn in _candidates(model, tasks, steps, lr, fo).items()}
            for name, s in times.items():
                results[f"fewshot_{key}_{name}{suffix}_s_per_iter"] = s
                if name != "reference":
                    results[f"fewshot_{key}_{name}{suffix}_speedup"] = times["reference"] / s
                    print(f"[bench_fewshot] {key}{suffix} {name}: {s:.4f} s/iter, "
                          f"{times['reference'] / s:.2f}x the per-task loop ({times['reference']:.4f} s)")
            # what strategy="auto" trains with: the fastest candidate measured at the start of training
            engine = min((n for n in times if n != "reference"), key=times.get)
            results[f"fewshot_{key}{suffix}_engine_s_per_iter"] = times[engine]
            results[f"fewshot_{key}{suffix}_engine_speedup"] = times["reference"] / times[engine]
    if device.type == "cuda" and not quick:
        torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        model = build_fewshot_model(FewShotConfig(dataset="miniimagenet"), (3, 84, 84)).to(device)
        tasks = _tasks((3, 84, 84), 5, 5, 15, 2, device, gen)
        for name, fn in _candidates(model, tasks, 5, 0.01, False).items():
            torch.cuda.reset_peak_memory_stats()
            fn()
            results[f"fewshot_mini5shot_{name}_peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        results["fewshot_mini5shot_peak_mem_gb"] = max(v for k, v in results.items() if k.endswith("_peak_mem_gb"))
    return results


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
