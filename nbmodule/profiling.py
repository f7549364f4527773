"""Inference latency: median milliseconds per image, measured the way a reader can trust and repeat.

Batch 1, ``model.eval()`` under ``torch.inference_mode()``, ``warmup`` untimed runs first (cuDNN autotuning,
allocator, lazy init), then ``repeats`` timed runs; on CUDA each run is bracketed by
``torch.cuda.synchronize()`` so the clock sees finished kernels, not queued ones. The result states the
resolution, device and thread count it was measured with.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["measure_latency", "median_seconds"]


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
