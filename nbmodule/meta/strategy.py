"""Measured choice of how the tasks of a meta-batch run: :func:`choose_strategy` -> :class:`StrategyChoice`.

The candidates compute the same meta-gradient (tests check it) and differ only in speed and memory:

* ``loop``: one task at a time (always valid, the reference);
* ``vmap``: ``torch.func.vmap`` over tasks (not for second order through batch norm: functorch #534);
* ``batched``: the task-batched program of :mod:`nbmodule.meta.batched`, tasks per call sized by memory
  (only for models it covers; otherwise excluded with the reason).

Protocol: on a CPU, :func:`nbmodule.meta.batched.retain_freed_memory` first (the allocator training will run
with). Every candidate's peak memory is then estimated on a small sub-batch (twice the bytes autograd keeps
for the backward, scaled to the full meta-batch: :func:`estimate_peak_bytes`) and candidates that would not
fit in ``memory_fraction`` of the free memory are excluded before they ever run at full size. The rest run
one full meta-iteration each (meta-loss and meta-gradient, no optimiser step) in interleaved rounds, the order
rotating every round: ``warmup`` untimed rounds, then ``repeats`` timed rounds; the pick is the lowest median,
and a candidate must beat the loop's median to be picked. The whole record (every timing, medians, memory,
exclusions, threads, device, shapes) is :meth:`StrategyChoice.to_dict`, for the run folder.
"""
from __future__ import annotations

import statistics
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..profiling import interleaved_seconds
from .batched import Unsupported, compile_batched, retain_freed_memory
from .functional import meta_loss, resolve_strategy, vmap_problem

__all__ = ["StrategyChoice", "choose_strategy", "decide", "available_memory", "graph_bytes", "estimate_peak_bytes"]


@dataclass
class StrategyChoice:
    """The measured pick: pass it as ``meta_loss(..., strategy=choice)`` (it carries ``chunk`` too)."""

    strategy: str
    chunk: int | None = None
    requested: str = "auto"
    medians_s: dict[str, float] = field(default_factory=dict)   # candidate -> median seconds per meta-iteration
    seconds: dict[str, list[float]] = field(default_factory=dict)  # candidate -> every timed round
    peak_bytes: dict[str, float] = field(default_factory=dict)  # candidate -> estimated peak for the full batch
    excluded: dict[str, str] = field(default_factory=dict)      # candidate -> why it was not a candidate
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``loop``, ``vmap``, ``batched`` (chunks sized by memory) or ``batchedN`` (N tasks per call)."""
        return _label(self.strategy, self.chunk)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}

    def summary(self) -> str:
        times = ", ".join(f"{k} {v:.3g} s" for k, v in sorted(self.medians_s.items(), key=lambda kv: kv[1]))
        out = f"strategy {self.name} (requested {self.requested}); medians per meta-iteration: {times or 'not timed'}"
        if self.excluded:
            out += "; excluded: " + "; ".join(f"{k}: {v}" for k, v in self.excluded.items())
        return out


def _label(strategy: str, chunk: int | None) -> str:
    """``batched`` (tasks per call sized by memory, see :data:`nbmodule.meta.batched.CHUNK_BYTES`) or ``batchedN``."""
    return f"batched{chunk}" if strategy == "batched" and chunk else strategy


def available_memory(device: torch.device | str) -> int:
    """Bytes that can still be allocated: free GPU memory, or the OS's MemAvailable on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional: Linux's own count
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 2**62


def graph_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the bytes of the distinct storages autograd saved for the backward while it ran: the
    memory a meta-loss keeps alive until its backward (the dominant term of its peak)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def estimate_peak_bytes(model: nn.Module, params: Mapping[str, Tensor], tasks: Sequence[Tensor], loss_fn: Callable,
                        strategy: str, chunk: int | None = None, *, steps: int = 1, inner_lr: Any = 0.01,
                        first_order: bool = False, buffers: Mapping[str, Tensor] | None = None) -> float:
    """Peak memory of one meta-iteration on all T tasks, estimated from a sub-batch (one chunk of at most 4
    tasks for ``batched``, 2 tasks otherwise): twice the bytes autograd saves, scaled to T tasks (every task's
    graph lives until the backward; the backward allocates gradients of about the same size as it frees).
    ``vmap`` (whose ``torch.func`` transforms refuse the saved-tensor hooks that count the bytes) is counted as
    the loop: it keeps the same per-task tensors, stacked."""
    if strategy == "vmap":
        strategy = "loop"
    T = tasks[0].shape[0]
    k = max(1, min(T, chunk or 1, 4) if strategy == "batched" else min(T, 2))
    sub = tuple(t[:k] for t in tasks)
    _, saved = graph_bytes(lambda: meta_loss(model, params, sub, loss_fn, steps=steps, inner_lr=inner_lr,
                                             first_order=first_order, buffers=buffers, strategy=strategy,
                                             chunk=chunk)[0])
    return 2.0 * saved * T / k


def decide(medians: Mapping[str, float]) -> str:
    """The candidate with the lowest median, provided it beats the loop's median (ties and losses: the loop)."""
    best = min(medians, key=lambda k: medians[k])
    if "loop" in medians and not medians[best] < medians["loop"]:
        return "loop"
    return best


def choose_strategy(model: nn.Module, params: Mapping[str, Tensor], tasks: Sequence[Tensor], loss_fn: Callable, *,
                    steps: int = 1, inner_lr: Any = 0.01, first_order: bool = False,
                    buffers: Mapping[str, Tensor] | None = None, requested: str = "auto",
                    candidates: Sequence[str | tuple[str, int | None]] | None = None, repeats: int = 5,
                    warmup: int = 1, memory_fraction: float = 0.8, memory_budget: int | None = None,
                    retain_memory: bool = True) -> StrategyChoice:
    """Measure the valid strategies on this meta-batch and return the fastest that fits in memory.

    ``requested`` other than ``"auto"`` is checked and returned unmeasured (``batched`` falls back to the loop,
    with the reason in ``excluded``, for models it does not cover). ``candidates``: override the list, as names
    or ``("batched", chunk)`` pairs (chunk None: sized by memory). ``memory_budget``: bytes (default
    ``memory_fraction`` of the free memory). ``retain_memory``: on a CPU, first call
    :func:`nbmodule.meta.batched.retain_freed_memory` (a process-wide allocator setting; recorded in
    ``protocol``), so the measurement sees the allocator training will run with.
    No ``.grad`` is touched and the global RNG state is restored.
    """
    xs = tasks[0]
    device = xs.device
    T = xs.shape[0]
    protocol = {"repeats": repeats, "warmup": warmup, "interleaved": True, "statistic": "median",
                "threads": torch.get_num_threads(), "device": str(device), "tasks": T,
                "support_shape": list(tasks[0].shape), "query_shape": list(tasks[2].shape), "steps": steps,
                "first_order": first_order, "dtype": str(xs.dtype)}
    if retain_memory and device.type == "cpu":
        protocol["allocator"] = ("glibc malloc keeps freed memory (no mmap per block, heap trimmed beyond 1 GB free)"
                                 if retain_freed_memory() else "default (no glibc)")
    excluded: dict[str, str] = {}
    if requested not in ("auto", "loop", "vmap", "batched"):
        raise ValueError(f"requested must be auto, loop, vmap or batched, got {requested!r}")

    def batched_ok() -> bool:
        try:
            compile_batched(model)
            return True
        except Unsupported as e:
            excluded["batched"] = f"not covered by the batched path: {e.reason}"
            return False

    if requested != "auto":
        if requested == "batched" and not batched_ok():
            warnings.warn(f"strategy 'batched' falls back to the loop: {excluded['batched']}", stacklevel=2)
            return StrategyChoice("loop", None, requested, excluded=excluded, protocol=protocol)
        if requested == "vmap":
            resolve_strategy("vmap", model, device, first_order=first_order or steps == 0)  # raises where wrong
        return StrategyChoice(requested, None, requested, protocol=protocol)

    if candidates is None:
        cands: list[tuple[str, int | None]] = [("loop", None)]
        problem = vmap_problem(model, first_order=first_order or steps == 0)
        if problem is None:
            cands.append(("vmap", None))
        else:
            excluded["vmap"] = problem
        if batched_ok():  # tasks per call sized by memory (all of them on a GPU)
            cands.append(("batched", None))
    else:
        cands = [(c, None) if isinstance(c, str) else tuple(c) for c in candidates]
        if any(s == "batched" for s, _ in cands) and not batched_ok():
            cands = [c for c in cands if c[0] != "batched"]
        if not any(s == "loop" for s, _ in cands):
            cands.insert(0, ("loop", None))

    meta_params = list({id(t): t for t in [*params.values(), *model.parameters()] if t.requires_grad}.values())

    ran: dict[str, dict[str, Any]] = {}  # label -> what the last timed call of that candidate actually ran

    def iteration(strategy: str, chunk: int | None) -> Callable[[], None]:
        report = ran.setdefault(_label(strategy, chunk), {})

        def run() -> None:
            loss = meta_loss(model, params, tasks, loss_fn, steps=steps, inner_lr=inner_lr, first_order=first_order,
                             buffers=buffers, strategy=strategy, chunk=chunk, report=report)[0]
            torch.autograd.grad(loss, meta_params, allow_unused=True)
        return run

    budget = memory_budget if memory_budget is not None else int(memory_fraction * available_memory(device))
    protocol["memory_budget_bytes"] = budget
    devices = [device] if device.type == "cuda" else []
    peaks: dict[str, float] = {}
    fitting: list[tuple[str, int | None]] = []
    with torch.random.fork_rng(devices=devices):
        # memory first, on a sub-batch of whole chunks, scaled to T tasks: nothing too big ever runs in full
        for strategy, chunk in cands:
            label = _label(strategy, chunk)
            peaks[label] = estimate_peak_bytes(model, params, tasks, loss_fn, strategy, chunk, steps=steps,
                                               inner_lr=inner_lr, first_order=first_order, buffers=buffers)
            if peaks[label] > budget:
                excluded[label] = (f"would not fit: ~{peaks[label] / 2**30:.2f} GiB estimated for {T} tasks "
                                   f"> budget {budget / 2**30:.2f} GiB")
            else:
                fitting.append((strategy, chunk))
        if any(c == ("batched", None) for c in fitting):
            protocol["batched_tasks_per_call"] = compile_batched(model).auto_chunk(tasks[0], tasks[2])
        if not fitting:  # nothing fits: the smallest is the only hope
            smallest = min(cands, key=lambda c: peaks[_label(*c)])
            fitting = [smallest]
            excluded.pop(_label(*smallest), None)
            warnings.warn(f"no strategy fits the memory budget; trying the smallest, {_label(*smallest)}", stacklevel=2)
        runs = {_label(s, c): iteration(s, c) for s, c in fitting}
        # a single candidate needs no race
        seconds = interleaved_seconds(runs, device, repeats=repeats, warmup=warmup) if len(runs) > 1 else {}
    # a candidate that ran something else (the batched path falling back to the loop while running) was timing
    # that other strategy under its own label: it is no candidate, and the record says why
    for label, report in ran.items():
        if seconds and report.get("fallback"):
            excluded[label] = report["fallback"]
            seconds.pop(label, None)
            fitting = [c for c in fitting if _label(*c) != label] or [("loop", None)]
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    best = decide(medians) if medians else _label(*fitting[0])
    strategy, chunk = next((s, c) for s, c in fitting if _label(s, c) == best)
    return StrategyChoice(strategy, chunk, requested, medians, seconds,
                          {k: v for k, v in peaks.items()}, excluded, protocol)
