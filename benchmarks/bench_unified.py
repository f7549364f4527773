"""UnifiedModel: inference latency and training throughput as the project runs it (NCHW, eager), and, as a
PyTorch measurement, the same model in channels_last memory format.

The project's engines train and evaluate in NCHW: ``unified_latency_ms`` and ``unified_train_img_per_s`` are
its speed. channels_last is the memory format cuDNN's and oneDNN's fast convolution kernels prefer; no
engine uses it, so its keys start with ``torch_channels_last_``: what PyTorch would give this model if an
engine switched, not the project's speed. Both are timed in the same process on the same weights and inputs
(warm-up first, median of repeats, ``torch.cuda.synchronize`` around each timing on a GPU), on the harness's
thread count (``unified_threads``).

Keys: ``unified_params``, ``unified_latency_ms`` (batch 1, median ms at ``unified_latency_size`` px: 512, or
256 with ``quick``), ``unified_train_img_per_s`` (forward + backward + AdamW step on a segmentation loss),
``torch_channels_last_unified_latency_ms``, ``torch_channels_last_unified_latency_speedup`` (NCHW time /
channels_last time), ``torch_channels_last_unified_train_img_per_s``, ``torch_channels_last_unified_train_speedup``
(channels_last / NCHW throughput), ``unified_threads``, ``unified_on_cuda``.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from nbmodule.models import build_model, count_parameters
from nbmodule.profiling import BenchResults, measure_latency, median_seconds


def _train_img_per_s(model, device, size: int, batch: int, steps: int, channels_last: bool) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).train().to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, model.num_seg_classes, (batch, size, size), generator=gen).to(device)

    def step():
        out = model(x)
        loss = F.cross_entropy(out["seg"], y) + out["cls"].square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = median_seconds(step, device, repeats=steps, warmup=2)
    model.to(memory_format=torch.contiguous_format)
    return batch / seconds


def run(quick: bool = False) -> BenchResults:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = 256 if quick else 512
    repeats = 3 if quick else (50 if device.type == "cuda" else 10)
    train_size, batch = (128, 4) if quick else ((512, 16) if device.type == "cuda" else (160, 8))
    steps = 2 if quick else 10
    torch.manual_seed(0)
    model = build_model("unified", backbone="mobilenet_v3_small", fpn_channels=64)
    res = BenchResults(unified_params=float(count_parameters(model)), unified_on_cuda=float(device.type == "cuda"),
                       unified_threads=torch.get_num_threads())
    base = measure_latency(model, (1, 3, size, size), device, repeats=repeats, warmup=2)["median_ms"]
    cl = measure_latency(model, (1, 3, size, size), device, repeats=repeats, warmup=2, channels_last=True)["median_ms"]
    res["unified_latency_size"] = float(size)
    res["unified_latency_ms"] = base
    res["torch_channels_last_unified_latency_ms"] = cl
    res.ratio("torch_channels_last_unified_latency_speedup", "unified_latency_ms",
              "torch_channels_last_unified_latency_ms")
    ips = _train_img_per_s(model, device, train_size, batch, steps, channels_last=False)
    ips_cl = _train_img_per_s(model, device, train_size, batch, steps, channels_last=True)
    res["unified_train_img_per_s"] = ips
    res["torch_channels_last_unified_train_img_per_s"] = ips_cl
    res.ratio("torch_channels_last_unified_train_speedup", "torch_channels_last_unified_train_img_per_s",
              "unified_train_img_per_s")
    res.notes["unified"] = (f"UnifiedModel mobilenet_v3_small, fpn 64; latency batch 1 at {size}px, {repeats} repeats; "
                            f"training batch {batch} at {train_size}px, {steps} steps; {device}, "
                            f"{torch.get_num_threads()} threads; torch_channels_last_* = PyTorch's channels_last "
                            f"format, not used by the engines")
    print(f"[bench_unified] {device}: latency {size}px {base:.1f} ms (NCHW, as the engines run) vs {cl:.1f} ms "
          f"(PyTorch channels_last): x{res['torch_channels_last_unified_latency_speedup']:.2f}; training {ips:.1f} "
          f"vs {ips_cl:.1f} img/s: x{res['torch_channels_last_unified_train_speedup']:.2f}")
    return res


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
