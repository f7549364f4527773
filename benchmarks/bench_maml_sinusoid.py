"""One MAML meta-iteration on MAML's sinusoid setting: nbmodule's engine against every peer of ``peers.py``.

Setting (Finn et al. 2017): MLP 1-40-40-1 (ReLU), K = 10 support and 10 query points per task, one inner SGD
step of 0.01, meta-batch 25, second order, MSE. One meta-iteration = meta-loss and its backward into
``.grad`` (no optimiser step: identical for all). Every peer runs its library's own MAML recipe
(``benchmarks/peers.py``): learn2learn's algorithm, higher and torchopt with the tasks in a loop, and the ones
that batch the tasks as a user of those libraries would: PyTorch's ``torch.func`` recipe (``functional_call`` +
``grad`` + ``vmap`` over tasks) and torchopt's functional API under ``vmap`` (valid here: no batch norm). Each is
checked to compute the engine's meta-gradient before anything is timed; all are timed in this process, on the
same batch, interleaved (rotating order), warm-up first, medians, at 1 and at 2 torch threads (``--quick``: 1).
``nbmodule.meta.batched.retain_freed_memory`` (process-wide) is applied once before anything is timed, so every
contender runs with the same allocator. The 1-minute load average is recorded before and after each thread
count, and the figure flagged busy (``*_busy``, and in the note) when either exceeds its threads + 0.5.

The engine runs what ``nbmodule.meta.choose_strategy`` picks on this batch (``auto``: its own interleaved
measurement, made first, as training would); its candidates are timed beside it for reference.

Keys (``{n}t``: n torch threads): ``maml_sinusoid_{n}t_{peer}_s_per_iter``, ``maml_sinusoid_{n}t_speedup_vs_{peer}``
(peer time / engine time), ``maml_sinusoid_{n}t_speedup_vs_fastest_peer``, ``maml_sinusoid_{n}t_engine_s_per_iter``
(auto's pick), ``maml_sinusoid_{n}t_{loop|vmap|batchedN}_s_per_iter``, ``maml_sinusoid_{n}t_load_before``/
``_load_after``/``_busy``, ``maml_sinusoid_threads`` (the harness's thread count).

    python benchmarks/bench_maml_sinusoid.py [--quick]
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from nbmodule.data.sinusoid import get_family, make_tasks  # noqa: E402
from nbmodule.meta import choose_strategy  # noqa: E402
from nbmodule.models.mlp import MLP  # noqa: E402
from nbmodule.meta.batched import retain_freed_memory  # noqa: E402
from nbmodule.profiling import BenchResults, interleaved_seconds, torch_threads  # noqa: E402

SETTING = "MLP 1-40-40-1, K=10 support + 10 query, 1 inner step lr 0.01, second order, MSE"


def check_same_meta_gradient(model, tasks, steps: int, lr: float, names, atol: float = 1e-5) -> None:
    """Every peer's meta-gradient equals the engine's (loop path) on this batch, or AssertionError."""
    ref = peers.meta_gradient(peers.engine_meta_step, model, tasks, F.mse_loss, steps, lr, strategy="loop")
    for name in names:
        got = peers.meta_gradient(peers.META_STEPS[name], model, tasks, F.mse_loss, steps, lr)
        err = max((a - b).abs().max().item() for a, b in zip(ref, got))
        if err > atol:
            raise AssertionError(f"{name}'s meta-gradient differs from the engine's by {err:.2e}")


def figure(res: BenchResults, model, tasks, device, *, threads: int, repeats: int, warmup: int) -> None:
    """Every contender at ``threads`` torch threads: keys ``maml_sinusoid_{threads}t_*``."""
    steps, lr = 1, 0.01
    load_before = os.getloadavg()[0]
    tk = f"maml_sinusoid_{threads}t"
    avail = peers.available()
    left_out = {n: avail[n] or peers.valid(n, model, False) for n in peers.PEERS}
    left_out = {n: w for n, w in left_out.items() if w}
    for name, why in left_out.items():
        print(f"[maml_sinusoid] peer {name} left out: {why}")
    names = [n for n in peers.PEERS if n not in left_out]
    check_same_meta_gradient(model, tasks, steps, lr, names)

    choice = choose_strategy(model, dict(model.named_parameters()), tasks, F.mse_loss, steps=steps, inner_lr=lr,
                             repeats=repeats, warmup=warmup)
    print(f"[maml_sinusoid] {threads} thread(s), auto: {choice.summary()}")

    def engine(strategy):
        return lambda: (model.zero_grad(set_to_none=True),
                        peers.engine_meta_step(model, tasks, F.mse_loss, steps, lr, strategy=strategy))

    def peer(name):
        return lambda: (model.zero_grad(set_to_none=True),
                        peers.META_STEPS[name](model, tasks, F.mse_loss, steps, lr))

    fns = {c: engine(c) for c in ("loop", "vmap")}
    if choice.strategy == "batched":
        fns[choice.name] = engine(choice)
    fns.update({n: peer(n) for n in names})
    times = {k: statistics.median(v) for k, v in
             interleaved_seconds(fns, device, repeats=repeats, warmup=warmup).items()}
    model.zero_grad(set_to_none=True)

    for k, v in times.items():
        res[f"{tk}_{k}_s_per_iter"] = v
    res[f"{tk}_engine_s_per_iter"] = times[choice.name]
    for n in names:
        res.ratio(f"{tk}_speedup_vs_{n}", f"{tk}_{n}_s_per_iter", f"{tk}_engine_s_per_iter")
    fastest = min(names, key=lambda n: times[n]) if names else None
    if fastest:
        res.ratio(f"{tk}_speedup_vs_fastest_peer", f"{tk}_{fastest}_s_per_iter", f"{tk}_engine_s_per_iter")
    load = res.record_load(tk, load_before, threads)
    res.notes[tk] = (f"{SETTING}; meta-batch {tasks[0].shape[0]}; {device}, {threads} thread(s); {repeats} "
                     f"interleaved rounds after {warmup} warm-up, medians; glibc retains freed memory for every "
                     f"contender; engine = auto's pick: {choice.name}; fastest peer: {fastest}; peers left out: "
                     f"{'; '.join(f'{n}: {w}' for n, w in left_out.items()) or 'none'}; {load}")
    print(f"[maml_sinusoid] {SETTING} on {device}, {threads} thread(s): engine ({choice.name}) "
          f"{times[choice.name] * 1e3:.2f} ms; " + ", ".join(
              f"{n} {times[n] * 1e3:.2f} ms ({times[n] / times[choice.name]:.1f}x)" for n in names) + "; " + load)


#: torch thread counts every figure is measured at
THREADS = (1, 2)


def run(quick: bool = False) -> BenchResults:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_tasks, repeats, warmup = (5, 2, 1) if quick else (25, 15, 3)
    g = torch.Generator().manual_seed(0)
    family = get_family("2d")
    tasks = make_tasks(family.sample_params(n_tasks, g), 10, 10, g, device=device)
    torch.manual_seed(0)
    model = MLP(1, (40, 40), 1).to(device)
    if device.type == "cpu":  # process-wide: once, before anything is timed, so it holds for every contender
        retain_freed_memory()
    res = BenchResults(maml_sinusoid_threads=torch.get_num_threads(), maml_sinusoid_on_cuda=int(device.type == "cuda"))
    for threads in ((1,) if quick else THREADS):
        with torch_threads(threads):
            figure(res, model, tasks, device, threads=threads, repeats=repeats, warmup=warmup)
    return res


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for k, v in out.items():
        print(f"{k}: {v:.6g}")
