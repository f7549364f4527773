"""One MAML meta-iteration on MAML's sinusoid setting: nbmodule's engine against learn2learn, higher and torchopt.

Setting (Finn et al. 2017): MLP 1-40-40-1 (ReLU), K = 10 support and 10 query points per task, one inner SGD
step of 0.01, meta-batch 25, second order, MSE. One meta-iteration = meta-loss and its backward into
``.grad`` (no optimiser step: identical for all). Every peer runs its library's own MAML recipe
(``benchmarks/peers.py``) and is checked to compute the engine's meta-gradient before anything is timed;
all are timed in this process, on the same batch, interleaved (rotating order), warm-up first, medians.

The engine runs what ``nbmodule.meta.choose_strategy`` picks on this batch (``auto``: its own interleaved
measurement, made first, as training would); its candidates are timed beside it for reference.

Keys: ``maml_sinusoid_{peer}_s_per_iter``, ``maml_sinusoid_speedup_vs_{peer}`` (peer time / engine time),
``maml_sinusoid_engine_s_per_iter`` (auto's pick), ``maml_sinusoid_{loop|vmap|batchedN}_s_per_iter``,
``maml_sinusoid_threads``.

    python benchmarks/bench_maml_sinusoid.py [--quick]
"""
from __future__ import annotations

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
from nbmodule.profiling import BenchResults, interleaved_seconds  # noqa: E402

SETTING = "MLP 1-40-40-1, K=10 support + 10 query, 1 inner step lr 0.01, second order, MSE"


def check_same_meta_gradient(model, tasks, steps: int, lr: float, names, atol: float = 1e-5) -> None:
    """Every peer's meta-gradient equals the engine's (loop path) on this batch, or AssertionError."""
    ref = peers.meta_gradient(peers.engine_meta_step, model, tasks, F.mse_loss, steps, lr, strategy="loop")
    for name in names:
        got = peers.meta_gradient(peers.META_STEPS[name], model, tasks, F.mse_loss, steps, lr)
        err = max((a - b).abs().max().item() for a, b in zip(ref, got))
        if err > atol:
            raise AssertionError(f"{name}'s meta-gradient differs from the engine's by {err:.2e}")


def run(quick: bool = False) -> BenchResults:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_tasks, repeats, warmup = (5, 2, 1) if quick else (25, 15, 3)
    g = torch.Generator().manual_seed(0)
    family = get_family("2d")
    tasks = make_tasks(family.sample_params(n_tasks, g), 10, 10, g, device=device)
    torch.manual_seed(0)
    model = MLP(1, (40, 40), 1).to(device)
    steps, lr = 1, 0.01

    avail = peers.available()
    for name, why in avail.items():
        if why:
            print(f"[maml_sinusoid] skipping peer {name}: {why}")
    names = [n for n in peers.PEERS if not avail[n]]
    check_same_meta_gradient(model, tasks, steps, lr, names)

    choice = choose_strategy(model, dict(model.named_parameters()), tasks, F.mse_loss, steps=steps, inner_lr=lr,
                             repeats=repeats, warmup=warmup)
    print(f"[maml_sinusoid] auto: {choice.summary()}")

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

    res = BenchResults(maml_sinusoid_threads=torch.get_num_threads(), maml_sinusoid_on_cuda=int(device.type == "cuda"))
    for k, v in times.items():
        res[f"maml_sinusoid_{k}_s_per_iter"] = v
    res["maml_sinusoid_engine_s_per_iter"] = times[choice.name]
    for n in names:
        res.ratio(f"maml_sinusoid_speedup_vs_{n}", f"maml_sinusoid_{n}_s_per_iter", "maml_sinusoid_engine_s_per_iter")
    res.notes["maml_sinusoid"] = (f"{SETTING}; meta-batch {n_tasks}; {device}, {torch.get_num_threads()} threads; "
                                  f"{repeats} interleaved rounds after {warmup} warm-up, medians; engine = auto's "
                                  f"pick: {choice.name}")
    print(f"[maml_sinusoid] {SETTING} on {device}, {torch.get_num_threads()} threads: engine ({choice.name}) "
          f"{times[choice.name] * 1e3:.2f} ms; " + ", ".join(
              f"{n} {times[n] * 1e3:.2f} ms ({times[n] / times[choice.name]:.1f}x)" for n in names))
    return res


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for k, v in out.items():
        print(f"{k}: {v:.6g}")
