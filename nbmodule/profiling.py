"""Timing the way a reader can trust and repeat: inference latency, medians, interleaved comparisons.

* :func:`measure_latency`: batch 1, ``model.eval()`` under ``torch.inference_mode()``, ``warmup`` untimed runs
  first (cuDNN autotuning, allocator, lazy init), then ``repeats`` timed runs; on CUDA each run is bracketed by
  ``torch.cuda.synchronize()`` so the clock sees finished kernels, not queued ones. The result states the
  resolution, device and thread count it was measured with.
* :func:`median_seconds`: one callable; :func:`interleaved_seconds`: several compared in the same process,
  round-robin with a rotating order, so a burst of load on a shared machine hits all of them alike.
* :func:`torch_threads` sets torch's thread count for a block and restores it; :func:`global_state` /
  :func:`restore_global_state` snapshot what a benchmark may change (threads, grad mode, default dtype,
  backend flags), for harnesses that run several benchmarks in one process.
* :class:`BenchResults`: a benchmark's flat results that remember which two timings each ratio is made of.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

__all__ = ["measure_latency", "median_seconds", "interleaved_seconds", "torch_threads", "global_state",
           "restore_global_state", "BenchResults"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: str | torch.device = "cpu", *, repeats: int = 10,
                   warmup: int = 1, inner: int = 1) -> float:
    """Median wall time in seconds of one ``fn()`` call: ``warmup`` untimed calls, then ``repeats`` timings of
    ``inner`` back-to-back calls each (divided by ``inner``), CUDA synchronised around every timing."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def interleaved_seconds(fns: Mapping[str, Callable[[], Any]], device: str | torch.device = "cpu", *,
                        repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each ``fns[name]()`` call, measured round-robin: ``warmup`` untimed rounds, then ``repeats``
    timed rounds, the order rotating by one every round (nobody always runs first, right after a warm-up or
    after the slowest). Returns name -> the ``repeats`` timings; take their median."""
    device = torch.device(device)
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            if r >= warmup:
                out[name].append(time.perf_counter() - t0)
    return out


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """``torch.set_num_threads(n)`` inside the block (``None``: unchanged), the previous count restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def global_state() -> dict[str, Any]:
    """What code in this process may change globally and a benchmark must leave as it found it."""
    return {"threads": torch.get_num_threads(), "grad_enabled": torch.is_grad_enabled(),
            "default_dtype": torch.get_default_dtype(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "mkldnn": torch.backends.mkldnn.enabled, "cudnn_benchmark": torch.backends.cudnn.benchmark}


def restore_global_state(state: Mapping[str, Any]) -> list[str]:
    """Put back a :func:`global_state` snapshot; returns the names of the entries that had changed."""
    changed = [k for k, v in global_state().items() if state.get(k) != v]
    torch.set_num_threads(state["threads"])
    torch.set_grad_enabled(state["grad_enabled"])
    torch.set_default_dtype(state["default_dtype"])
    torch.use_deterministic_algorithms(state["deterministic"])
    torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    torch.backends.mkldnn.enabled = state["mkldnn"]
    torch.backends.cudnn.benchmark = state["cudnn_benchmark"]
    return changed


class BenchResults(dict):
    """A benchmark's flat ``key -> number`` results. :meth:`ratio` stores ``numerator / denominator`` of two
    reported keys and remembers them in ``.ratios`` (key -> (numerator key, denominator key)), so a test can
    check that every ratio is made of the timings printed beside it. ``.notes``: name -> the protocol in words
    (setting, threads, repeats), written next to the numbers."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ratios: dict[str, tuple[str, str]] = {}
        self.notes: dict[str, str] = {}

    def ratio(self, key: str, numerator: str, denominator: str) -> float:
        self[key] = self[numerator] / self[denominator]
        self.ratios[key] = (numerator, denominator)
        return self[key]

    def record_load(self, prefix: str, before: float, threads: int) -> str:
        """``{prefix}_load_before``/``_load_after``/``_busy`` (1-minute load averages; busy when either exceeds
        the benchmark's own ``threads`` + 0.5) and the words for its note."""
        after = os.getloadavg()[0]
        busy = max(before, after) > threads + 0.5
        self[f"{prefix}_load_before"], self[f"{prefix}_load_after"], self[f"{prefix}_busy"] = before, after, int(busy)
        text = f"1-minute load average {before:.2f} before, {after:.2f} after"
        if busy:
            text += (f" (BUSY MACHINE: above this benchmark's own {threads} thread(s) + 0.5; other work was running, "
                     "which slows per-task loops more than batched code, so these ratios are likely inflated)")
        return text


def measure_latency(model: nn.Module, input_shape: Sequence[int] = (1, 3, 512, 512), device: str | torch.device = "cpu",
                    repeats: int = 20, warmup: int = 3, channels_last: bool = False) -> dict[str, Any]:
    """Time ``model(x)`` for ``x`` of ``input_shape`` (batch 1 expected) and return milliseconds per image.

    Returns ``{"median_ms", "mean_ms", "min_ms", "p90_ms", "repeats", "warmup", "batch", "resolution"
    ("HxW"), "device", "threads"}``. The model is restored to its previous train/eval mode and device.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    first = next(model.parameters(), None)
    old_device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval().to(device)
    x = torch.rand(*input_shape, device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            _sync(device)
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training).to(old_device)
    batch = int(input_shape[0])
    per_image = [t / batch for t in times]
    ordered = sorted(per_image)
    return {
        "median_ms": statistics.median(per_image),
        "mean_ms": statistics.fmean(per_image),
        "min_ms": ordered[0],
        "p90_ms": ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))],
        "repeats": repeats, "warmup": warmup, "batch": batch,
        "resolution": f"{input_shape[-2]}x{input_shape[-1]}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "threads": torch.get_num_threads(),
    }
