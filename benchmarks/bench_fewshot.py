"""Seconds per MAML meta-iteration on Conv4: nbmodule's strategies and the peers, and peak memory.

Settings (the MAML paper's): Omniglot 5-way 1-shot, 1 query per class, meta-batch 32, 1 inner step of 0.4
(64 filters, 28x28); MiniImagenet 5-way 1-shot, 15 queries per class, meta-batch 4, 5 inner steps of 0.01
(32 filters, 84x84). Second order. One meta-iteration = meta-loss and its backward into ``.grad`` (no
optimiser step: identical for all). Random images (speed does not depend on content).

Timed in this process on the same batch, interleaved (rotating order), 1 warm-up round then 5 timed rounds,
medians, at 1 and at 2 torch threads (``--quick``: 1 thread only):

* the engine's candidates: ``loop`` (one task at a time), ``batched`` (the task-batched program of
  ``nbmodule.meta.batched``, tasks per call sized by memory), ``batchedN`` (all N tasks in one call);
* ``auto``: what ``nbmodule.meta.choose_strategy`` picks on this batch with its own interleaved measurement,
  made first, as training does; its time is the picked candidate's time in the comparison;
* every peer of ``benchmarks/peers.py`` that is valid on the figure (learn2learn's algorithm, higher, torchopt
  with tasks in a loop; PyTorch's torch.func recipe and torchopt's functional API with tasks under
  ``vmap``, which are valid in first order only here: Conv4 has batch norm, functorch #534), each checked first
  to compute the engine's meta-gradient on this model; the invalid ones are named with the reason in the note.

Process-wide settings: ``nbmodule.meta.batched.retain_freed_memory`` (glibc keeps freed memory) is applied once,
before anything is timed, so every contender (peers included) runs with the same allocator. The 1-minute load
average is recorded before and after each figure (``*_load_before``/``_load_after``) and a figure is flagged
``*_busy = 1`` (and its note says so) when either exceeds the benchmark's own threads + 0.5: other work was
running, and per-task loops lose more to a busy machine than batched GEMMs do, so such ratios are inflated.

Memory (MiniImagenet 5-way 5-shot, 15 queries, meta-batch 2, 5 steps, second order: the largest setting of the
paper): each engine candidate runs one meta-iteration in a fresh process; ``peak_mb`` is the rise of the
process's peak resident memory over its resident memory before the iteration (Linux ``VmHWM``, reset first
through ``/proc/self/clear_refs``; on a GPU ``max_memory_allocated``); ``graph_mb`` is what autograd saved
for the backward; ``estimate_mb`` is what ``choose_strategy``'s memory check would assume.

Keys (``{n}t``: n torch threads): ``fewshot_{omniglot|mini}_{n}t_{candidate}_s_per_iter``,
``fewshot_{setting}_{n}t_{candidate}_speedup`` (loop time / candidate time), ``fewshot_{setting}_{n}t_auto_s_per_iter``
/ ``_auto_speedup``, ``maml_conv4_{setting}_{n}t_{peer}_s_per_iter``, ``maml_conv4_{setting}_{n}t_speedup_vs_{peer}``
(peer time / auto time) and ``_speedup_vs_fastest_peer`` (the fastest valid peer's time / auto time);
first order (Omniglot, where vmap and the vmap peers are valid): ``fewshot_omniglot_fo_{n}t_{loop|vmap|batched}
_s_per_iter``, ``_speedup`` (vs the loop), ``maml_conv4_omniglot_fo_{n}t_{peer}_s_per_iter``,
``maml_conv4_omniglot_fo_{n}t_speedup_vs_fastest_peer`` (vs the faster of vmap and batched);
``fewshot_mini5shot_{candidate}_{peak|graph|estimate}_mb``; ``*_load_before``, ``*_load_after``, ``*_busy``;
``fewshot_threads`` (the harness's thread count), ``fewshot_on_cuda``.

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
from nbmodule.meta.batched import compile_batched, retain_freed_memory  # noqa: E402
from nbmodule.meta.strategy import estimate_peak_bytes, graph_bytes  # noqa: E402
from nbmodule.models import build_model  # noqa: E402
from nbmodule.profiling import BenchResults, interleaved_seconds, torch_threads  # noqa: E402

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


def valid_peers(model, first_order: bool) -> tuple[list[str], dict[str, str]]:
    """The peers that can run here and are valid on ``model``, and why the others are left out."""
    avail = peers.available()
    names, left_out = [], {}
    for n in peers.PEERS:
        why = avail[n] or peers.valid(n, model, first_order)
        if why:
            left_out[n] = why
        else:
            names.append(n)
    return names, left_out


def check_peers(model, tasks, steps: int, lr: float, names, first_order: bool = False) -> None:
    """Each peer's meta-gradient equals the engine's on 2 tasks of this batch (float32: 1e-4 relative)."""
    sub = tuple(t[:2] for t in tasks)
    ref = peers.meta_gradient(peers.engine_meta_step, model, sub, F.cross_entropy, steps, lr, first_order,
                              strategy="loop")
    scale = max(r.abs().max().item() for r in ref)
    for name in names:
        got = peers.meta_gradient(peers.META_STEPS[name], model, sub, F.cross_entropy, steps, lr, first_order)
        err = max((a - b).abs().max().item() for a, b in zip(ref, got))
        if err > 1e-4 * scale + 1e-6:
            raise AssertionError(f"{name}'s meta-gradient differs from the engine's by {err:.2e} (scale {scale:.2e})")


def compare(key: str, setting: tuple, device, res: BenchResults, *, repeats: int, warmup: int, quick: bool,
            threads: int) -> None:
    shape, hidden, n_way, k_shot, k_query, T, steps, lr = setting
    if quick:  # the harness check: the same code on tiny batches
        T, k_query, steps = 2, 1, 1
    load_before = os.getloadavg()[0]
    tk = f"{key}_{threads}t"
    model = make_model(shape, hidden, n_way, device)
    tasks = make_tasks(shape, n_way, k_shot, k_query, T, device)
    names, left_out = valid_peers(model, first_order=False)
    for n, why in left_out.items():
        print(f"[bench_fewshot] {tk}: peer {n} left out: {why}")
    check_peers(model, tasks, steps, lr, names)

    choice = choose_strategy(model, dict(model.named_parameters()), tasks, F.cross_entropy, steps=steps,
                             inner_lr=lr, repeats=repeats, warmup=warmup)
    print(f"[bench_fewshot] {tk} auto: {choice.summary()}")

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
            res[f"maml_conv4_{tk}_{k}_s_per_iter"] = v
        else:
            res[f"fewshot_{tk}_{k}_s_per_iter"] = v
    loop = f"fewshot_{tk}_loop_s_per_iter"
    for k in times:
        if k not in peers.PEERS and k != "loop":
            res.ratio(f"fewshot_{tk}_{k}_speedup", loop, f"fewshot_{tk}_{k}_s_per_iter")
    res[f"fewshot_{tk}_auto_s_per_iter"] = times[choice.name]
    res.ratio(f"fewshot_{tk}_auto_speedup", loop, f"fewshot_{tk}_auto_s_per_iter")
    for n in names:
        res.ratio(f"maml_conv4_{tk}_speedup_vs_{n}", f"maml_conv4_{tk}_{n}_s_per_iter", f"fewshot_{tk}_auto_s_per_iter")
    fastest = min(names, key=lambda n: times[n]) if names else None
    if fastest:
        res.ratio(f"maml_conv4_{tk}_speedup_vs_fastest_peer", f"maml_conv4_{tk}_{fastest}_s_per_iter",
                  f"fewshot_{tk}_auto_s_per_iter")
    load = res.record_load(f"fewshot_{tk}", load_before, threads)
    res.notes[f"fewshot_{tk}"] = (
        f"Conv4 {shape[1]}x{shape[2]}x{shape[0]}, {hidden} filters, {n_way}-way {k_shot}-shot, {k_query} queries per "
        f"class, meta-batch {T}, {steps} inner steps of {lr}, second order; {device}, {threads} thread(s); random "
        f"images; {repeats} interleaved rounds after {warmup} warm-up, medians; glibc retains freed memory for every "
        f"contender; auto picked {choice.name} (its probe: "
        f"{', '.join(f'{k} {v:.3g} s' for k, v in choice.medians_s.items())}); fastest peer: {fastest}; peers left "
        f"out: {'; '.join(f'{n}: {w}' for n, w in left_out.items()) or 'none'}; {load}")
    ranked = sorted(times.items(), key=lambda kv: kv[1])
    print(f"[bench_fewshot] {tk}: " + ", ".join(f"{k} {v:.3f} s" for k, v in ranked) + f"; auto = {choice.name}; "
          + load)


def first_order(res: BenchResults, device, *, repeats: int, warmup: int, quick: bool, threads: int) -> None:
    """Omniglot, first order: where vmap and the vmap peers are valid too (the docstring of
    nbmodule.meta.functional cites this)."""
    shape, hidden, n_way, k_shot, k_query, T, steps, lr = SETTINGS["omniglot"]
    if quick:
        T = 2
    load_before = os.getloadavg()[0]
    tk = f"omniglot_fo_{threads}t"
    model = make_model(shape, hidden, n_way, device)
    tasks = make_tasks(shape, n_way, k_shot, k_query, T, device)
    names, left_out = valid_peers(model, first_order=True)
    check_peers(model, tasks, steps, lr, names, first_order=True)

    def engine(strategy):
        def step():
            model.zero_grad(set_to_none=True)
            meta_loss(model, dict(model.named_parameters()), tasks, F.cross_entropy, steps=steps, inner_lr=lr,
                      first_order=True, strategy=strategy)[0].backward()
        return step

    def peer(name):
        return lambda: (model.zero_grad(set_to_none=True),
                        peers.META_STEPS[name](model, tasks, F.cross_entropy, steps, lr, True))

    fns = {s: engine(s) for s in ("loop", "vmap", "batched")}
    fns.update({n: peer(n) for n in names})
    times = {k: statistics.median(v) for k, v in interleaved_seconds(fns, device, repeats=repeats,
                                                                     warmup=warmup).items()}
    model.zero_grad(set_to_none=True)
    for k, v in times.items():
        res[f"maml_conv4_{tk}_{k}_s_per_iter" if k in peers.PEERS else f"fewshot_{tk}_{k}_s_per_iter"] = v
    for k in ("vmap", "batched"):
        res.ratio(f"fewshot_{tk}_{k}_speedup", f"fewshot_{tk}_loop_s_per_iter", f"fewshot_{tk}_{k}_s_per_iter")
    best = min(("vmap", "batched"), key=lambda k: times[k])
    fastest = min(names, key=lambda n: times[n]) if names else None
    if fastest:
        res.ratio(f"maml_conv4_{tk}_speedup_vs_fastest_peer", f"maml_conv4_{tk}_{fastest}_s_per_iter",
                  f"fewshot_{tk}_{best}_s_per_iter")
    load = res.record_load(f"fewshot_{tk}", load_before, threads)
    res.notes[f"fewshot_{tk}"] = (
        f"Conv4 Omniglot 5-way 1-shot as fewshot_omniglot, first order; {device}, {threads} thread(s); "
        f"{repeats} interleaved rounds after {warmup} warm-up, medians; glibc retains freed memory for every "
        f"contender; engine = the faster of vmap and batched ({best}); fastest peer: {fastest}; peers left out: "
        f"{'; '.join(f'{n}: {w}' for n, w in left_out.items()) or 'none'}; {load}")
    print(f"[bench_fewshot] {tk}: " + ", ".join(f"{k} {v:.3f} s" for k, v in sorted(times.items(),
                                                                                     key=lambda kv: kv[1])) + "; " + load)


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


#: torch thread counts every timing figure is measured at (the issue's "1 and 2 threads")
THREADS = (1, 2)


def run(quick: bool = False) -> BenchResults:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = BenchResults(fewshot_threads=torch.get_num_threads(), fewshot_on_cuda=int(device.type == "cuda"))
    if device.type == "cpu":  # process-wide: once, before anything is timed, so it holds for every contender
        retain_freed_memory()
    repeats, warmup = (1, 1) if quick else (5, 1)
    # NBM_BENCH_FEWSHOT_SETTINGS=omniglot: only Omniglot (second and first order), no MiniImagenet figure and no
    # memory figure (a partial run when the machine is too busy for the full one; the note says what was left out)
    settings = [k for k in os.environ.get("NBM_BENCH_FEWSHOT_SETTINGS", ",".join(SETTINGS)).split(",") if k]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"NBM_BENCH_FEWSHOT_SETTINGS: unknown setting(s) {unknown}; use some of {list(SETTINGS)}")
    for threads in ((1,) if quick else THREADS):
        with torch_threads(threads):
            for key in settings:
                compare(key, SETTINGS[key], device, res, repeats=repeats, warmup=warmup, quick=quick,
                        threads=threads)
            if "omniglot" in settings:
                first_order(res, device, repeats=repeats, warmup=warmup, quick=quick, threads=threads)
    if not quick and "mini" in settings:
        memory(res, device)
    left = [k for k in SETTINGS if k not in settings]
    if left:
        res.notes["fewshot_partial"] = (f"partial run: {', '.join(left)} not measured (and, without mini, no memory "
                                        "figure); NBM_BENCH_FEWSHOT_SETTINGS=" + ",".join(settings))
    return res


if __name__ == "__main__":
    if "--memory" in sys.argv:
        i = sys.argv.index("--memory")
        torch.set_num_threads(int(os.environ.get("NBM_BENCH_THREADS", "2")))
        out = measure_memory(sys.argv[i + 1], int(sys.argv[i + 2]) or None)
        print(json.dumps(out))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
