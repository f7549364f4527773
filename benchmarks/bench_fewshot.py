"""Seconds per MAML meta-iteration on Conv4: nbmodule's strategies and the peers, and peak memory.

Settings (the MAML paper's): Omniglot 5-way 1-shot, 1 query per class, meta-batch 32, 1 inner step of 0.4
(64 filters, 28x28); MiniImagenet 5-way 1-shot, 15 queries per class, meta-batch 4, 5 inner steps of 0.01
(32 filters, 84x84). Second order. One meta-iteration = meta-loss and its backward into ``.grad`` (no
optimiser step: identical for all). Random images (speed does not depend on content).

Timed in this process on the same batch, interleaved (rotating order), warm-up first, medians:

* the engine's candidates: ``loop`` (one task at a time), ``batched`` (the task-batched program of
  ``nbmodule.meta.batched``, tasks per call sized by memory), ``batchedN`` (all N tasks in one call);
* ``auto``: what ``nbmodule.meta.choose_strategy`` picks on this batch with its own interleaved measurement,
  made first, as training does; its time is the picked candidate's time in the comparison;
* the peers of ``benchmarks/peers.py`` (learn2learn's algorithm, higher, torchopt), each checked first to
  compute the engine's meta-gradient on this model.

Memory (MiniImagenet 5-way 5-shot, 15 queries, meta-batch 2, 5 steps, second order: the largest setting of the
paper): each engine candidate runs one meta-iteration in a fresh process; ``peak_mb`` is the rise of the
process's peak resident memory over its resident memory before the iteration (Linux ``VmHWM``, reset first
through ``/proc/self/clear_refs``; on a GPU ``max_memory_allocated``); ``graph_mb`` is what autograd saved
for the backward; ``estimate_mb`` is what ``choose_strategy``'s memory check would assume.

Keys: ``fewshot_{omniglot|mini}_{candidate}_s_per_iter``, ``fewshot_{setting}_{candidate}_speedup`` (loop time /
candidate time), ``fewshot_{setting}_auto_s_per_iter``/``_auto_speedup``, ``maml_conv4_{omniglot|mini}_{peer}
_s_per_iter``, ``maml_conv4_{setting}_speedup_vs_{peer}`` (peer time / auto time),
``fewshot_mini5shot_{candidate}_{peak|graph|estimate}_mb``, ``fewshot_omniglot_{loop|vmap|batched}_fo_s_per_iter``
and ``_fo_speedup`` (first order, where vmap is valid), ``fewshot_threads``, ``fewshot_on_cuda``.

    python benchmarks/bench_fewshot.py [--quick]
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from nbmodule.meta import choose_strategy, meta_loss  # noqa: E402
from nbmodule.meta.batched import compile_batched  # noqa: E402
from nbmodule.meta.strategy import estimate_peak_bytes, graph_bytes  # noqa: E402
from nbmodule.models import build_model  # noqa: E402
from nbmodule.profiling import BenchResults, interleaved_seconds  # noqa: E402

# name: (image shape, filters, n_way, k_shot, k_query, meta-batch, inner steps, inner lr)
SETTINGS = {
    "omniglot": ((1, 28, 28), 64, 5, 1, 1, 32, 1, 0.4),
    "mini": ((3, 84, 84), 32, 5, 1, 15, 4, 5, 0.01),
}
MEMORY = ((3, 84, 84), 32, 5, 5, 15, 2, 5, 0.01)


def make_model(shape, hidden: int, n_way: int, device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("conv4", in_channels=shape[0], n_way=n_way, hidden=hidden, image_size=shape[1]).to(device)


def make_tasks(shape, n_way: int, k_shot: int, k_query: int, T: int, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.rand(T, n_way * k_shot, *shape, generator=gen).to(device)
    xq = torch.rand(T, n_way * k_query, *shape, generator=gen).to(device)
    ys = torch.arange(n_way).repeat_interleave(k_shot).expand(T, -1).contiguous().to(device)
    yq = torch.arange(n_way).repeat_interleave(k_query).expand(T, -1).contiguous().to(device)
    return xs, ys, xq, yq


def check_peers(model, tasks, steps: int, lr: float, names) -> None:
    """Each peer's meta-gradient equals the engine's on 2 tasks of this batch (float32: 1e-4 relative)."""
    sub = tuple(t[:2] for t in tasks)
    ref = peers.meta_gradient(peers.engine_meta_step, model, sub, F.cross_entropy, steps, lr, strategy="loop")
    scale = max(r.abs().max().item() for r in ref)
    for name in names:
        got = peers.meta_gradient(peers.META_STEPS[name], model, sub, F.cross_entropy, steps, lr)
        err = max((a - b).abs().max().item() for a, b in zip(ref, got))
        if err > 1e-4 * scale + 1e-6:
            raise AssertionError(f"{name}'s meta-gradient differs from the engine's by {err:.2e} (scale {scale:.2e})")


def compare(key: str, setting: tuple, device, res: BenchResults, *, repeats: int, warmup: int, quick: bool) -> None:
    shape, hidden, n_way, k_shot, k_query, T, steps, lr = setting
    if quick:  # the harness check: the same code on tiny batches
        T, k_query, steps = 2, 1, 1
    model = make_model(shape, hidden, n_way, device)
    tasks = make_tasks(shape, n_way, k_shot, k_query, T, device)
    avail = peers.available()
    names = [n for n in peers.PEERS if not avail[n]]
    for n in peers.PEERS:
        if avail[n]:
            print(f"[bench_fewshot] skipping peer {n}: {avail[n]}")
    check_peers(model, tasks, steps, lr, names)

    choice = choose_strategy(model, dict(model.named_parameters()), tasks, F.cross_entropy, steps=steps,
                             inner_lr=lr, repeats=repeats, warmup=warmup)
    print(f"[bench_fewshot] {key} auto: {choice.summary()}")

    def engine(strategy, chunk=None):
        def step():
            model.zero_grad(set_to_none=True)
            meta_loss(model, dict(model.named_parameters()), tasks, F.cross_entropy, steps=steps, inner_lr=lr,
                      strategy=strategy, chunk=chunk)[0].backward()
        return step

    def peer(name):
        return lambda: (model.zero_grad(set_to_none=True),
                        peers.META_STEPS[name](model, tasks, F.cross_entropy, steps, lr))

    fns = {"loop": engine("loop"), "batched": engine("batched")}
    if compile_batched(model).auto_chunk(tasks[0], tasks[2]) != T:  # all tasks in one call, for reference
        fns[f"batched{T}"] = engine("batched", T)
    if choice.name not in fns:
        fns[choice.name] = engine(choice)
    fns.update({n: peer(n) for n in names})
    seconds = interleaved_seconds(fns, device, repeats=repeats, warmup=warmup)
    times = {k: statistics.median(v) for k, v in seconds.items()}
    model.zero_grad(set_to_none=True)

    for k, v in times.items():
        if k in peers.PEERS:
            res[f"maml_conv4_{key}_{k}_s_per_iter"] = v
        else:
            res[f"fewshot_{key}_{k}_s_per_iter"] = v
    loop = f"fewshot_{key}_loop_s_per_iter"
    for k in times:
        if k not in peers.PEERS and k != "loop":
            res.ratio(f"fewshot_{key}_{k}_speedup", loop, f"fewshot_{key}_{k}_s_per_iter")
    res[f"fewshot_{key}_auto_s_per_iter"] = times[choice.name]
    res.ratio(f"fewshot_{key}_auto_speedup", loop, f"fewshot_{key}_auto_s_per_iter")
    for n in names:
        res.ratio(f"maml_conv4_{key}_speedup_vs_{n}", f"maml_conv4_{key}_{n}_s_per_iter",
                  f"fewshot_{key}_auto_s_per_iter")
    res.notes[f"fewshot_{key}"] = (
        f"Conv4 {shape[1]}x{shape[2]}x{shape[0]}, {hidden} filters, {n_way}-way {k_shot}-shot, {k_query} queries per "
        f"class, meta-batch {T}, {steps} inner steps of {lr}, second order; {device}, {torch.get_num_threads()} "
        f"threads; {repeats} interleaved rounds after {warmup} warm-up, medians; auto picked {choice.name} "
        f"(its probe: {', '.join(f'{k} {v:.3g} s' for k, v in choice.medians_s.items())})")
    ranked = sorted(times.items(), key=lambda kv: kv[1])
    print(f"[bench_fewshot] {key}: " + ", ".join(f"{k} {v:.3f} s" for k, v in ranked) + f"; auto = {choice.name}")


def first_order(res: BenchResults, device, *, repeats: int, warmup: int, quick: bool) -> None:
    """Omniglot, first order: where vmap is valid too (the docstring of nbmodule.meta.maml cites this)."""
    shape, hidden, n_way, k_shot, k_query, T, steps, lr = SETTINGS["omniglot"]
    if quick:
        T = 2
    model = make_model(shape, hidden, n_way, device)
    tasks = make_tasks(shape, n_way, k_shot, k_query, T, device)

    def engine(strategy):
        def step():
            model.zero_grad(set_to_none=True)
            meta_loss(model, dict(model.named_parameters()), tasks, F.cross_entropy, steps=steps, inner_lr=lr,
                      first_order=True, strategy=strategy)[0].backward()
        return step

    times = {k: statistics.median(v) for k, v in interleaved_seconds(
        {s: engine(s) for s in ("loop", "vmap", "batched")}, device, repeats=repeats, warmup=warmup).items()}
    for k, v in times.items():
        res[f"fewshot_omniglot_{k}_fo_s_per_iter"] = v
    for k in ("vmap", "batched"):
        res.ratio(f"fewshot_omniglot_{k}_fo_speedup", "fewshot_omniglot_loop_fo_s_per_iter",
                  f"fewshot_omniglot_{k}_fo_s_per_iter")
    print("[bench_fewshot] omniglot first order: " + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()))


def _rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure_memory(strategy: str, chunk: int | None, device_name: str = "cpu") -> dict[str, float]:
    """One meta-iteration of the memory setting with ``strategy``: peak rise (MB), saved graph (MB)."""
    device = torch.device(device_name)
    shape, hidden, n_way, k_shot, k_query, T, steps, lr = MEMORY
    model = make_model(shape, hidden, n_way, device)
    tasks = make_tasks(shape, n_way, k_shot, k_query, T, device)

    def loss():
        return meta_loss(model, dict(model.named_parameters()), tasks, F.cross_entropy, steps=steps, inner_lr=lr,
                         strategy=strategy, chunk=chunk)[0]

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss().backward()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current resident size
        except OSError:
            pass
        base = _rss_kb("VmRSS")
        loss().backward()
        peak = (_rss_kb("VmHWM") - base) / 1024
    model.zero_grad(set_to_none=True)
    _, saved = graph_bytes(loss)
    return {"peak_mb": peak, "graph_mb": saved / 2**20}


def memory(res: BenchResults, device) -> None:
    T = MEMORY[5]
    cands = {"loop": ("loop", None), "batched": ("batched", None)}
    for name, (strategy, chunk) in cands.items():
        if device.type == "cuda":
            out = measure_memory(strategy, chunk, "cuda")
        else:  # a fresh process each: the peak of this one is long past
            cmd = [sys.executable, __file__, "--memory", strategy, str(chunk or 0)]
            env = {**os.environ, "NBM_BENCH_THREADS": str(torch.get_num_threads())}
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        res[f"fewshot_mini5shot_{name}_peak_mb"] = out["peak_mb"]
        res[f"fewshot_mini5shot_{name}_graph_mb"] = out["graph_mb"]
        # what choose_strategy's memory check assumes (2x the saved graph, from a sub-batch)
        shape, hidden, n_way, k_shot, k_query, _, steps, lr = MEMORY
        model = make_model(shape, hidden, n_way, device)
        tasks = make_tasks(shape, n_way, k_shot, k_query, T, device)
        est = estimate_peak_bytes(model, dict(model.named_parameters()), tasks, F.cross_entropy, strategy, chunk,
                                  steps=steps, inner_lr=lr)
        res[f"fewshot_mini5shot_{name}_estimate_mb"] = est / 2**20
    res.notes["fewshot_mini5shot"] = ("memory: Conv4 84x84x3, 32 filters, 5-way 5-shot, 15 queries, meta-batch 2, "
                                      "5 inner steps, second order, one meta-iteration (loss + backward) per fresh "
                                      "process; peak_mb = rise of peak resident memory (VmHWM) over the resident "
                                      "size before it; graph_mb = bytes autograd saved; estimate_mb = what "
                                      "choose_strategy's memory check assumes")


def run(quick: bool = False) -> BenchResults:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = BenchResults(fewshot_threads=torch.get_num_threads(), fewshot_on_cuda=int(device.type == "cuda"))
    repeats, warmup = (1, 1) if quick else (3, 1)
    for key, setting in SETTINGS.items():
        compare(key, setting, device, res, repeats=repeats, warmup=warmup, quick=quick)
    first_order(res, device, repeats=repeats, warmup=warmup, quick=quick)
    if not quick:
        memory(res, device)
    return res


if __name__ == "__main__":
    if "--memory" in sys.argv:
        i = sys.argv.index("--memory")
        torch.set_num_threads(int(os.environ.get("NBM_BENCH_THREADS", "2")))
        out = measure_memory(sys.argv[i + 1], int(sys.argv[i + 2]) or None)
        print(json.dumps(out))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
