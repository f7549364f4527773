"""Training throughput (images per second) of the MTML multi-task model, four dense tasks.

One training step = forward of the shared encoder and the four heads, the four losses of
:func:`nbmodule.engines.mtml.task_loss`, backward and an AdamW step, on a fixed batch. Timed in the same
process, same weights and batch, warm-up first, median of repeats:

* on a GPU (the gpu profile's setting, ResNet-50 at 288x384, batch 8): ``fp32`` against ``amp`` (float16
  autocast + GradScaler, as ``MtmlConfig.amp``), ``torch.cuda.synchronize()`` around each timing;
* on a CPU (the cpu profile's setting, MobileNet-v3-small at 60x80, batch 8, 2 threads; ``quick``: 48x64,
  batch 4, 1 thread): contiguous ``fp32`` (how the engine trains) against the ``channels_last`` memory
  format, a PyTorch measurement (no engine uses channels_last): its keys start with ``torch_channels_last_``.

Also the MTML outer step (4 task subsets of 3 training tasks, first order, fp32) in images per second, where
an image counts once per subset it is used in (support + query).

Keys: ``mtml_fp32_img_s``, on a GPU ``mtml_amp_img_s`` and ``mtml_amp_speedup`` (the engine's ``amp`` option,
amp / fp32 throughput), on a CPU ``torch_channels_last_mtml_img_s`` and ``torch_channels_last_mtml_speedup``,
``mtml_meta_step_img_s``, ``mtml_threads``, ``mtml_on_cuda``.
"""
from __future__ import annotations

import tempfile

import torch

from nbmodule.engines.mtml import MtmlConfig, meta_train, task_loss
from nbmodule.models import build_model
from nbmodule.profiling import BenchResults, median_seconds
from nbmodule.runs import RunDir

TASKS = {"seg": 40, "depth": 1, "normals": 3, "edges": 1}


def _batch(n: int, size: tuple[int, int], device: torch.device, gen: torch.Generator) -> dict[str, torch.Tensor]:
    h, w = size
    normals = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=gen), dim=1)
    b = {"image": torch.rand(n, 3, h, w, generator=gen), "seg": torch.randint(0, 40, (n, h, w), generator=gen),
         "depth": 1 + 4 * torch.rand(n, 1, h, w, generator=gen), "normals": normals,
         "edges": (torch.rand(n, 1, h, w, generator=gen) < 0.05).float()}
    b["depth_mask"] = b["depth"] > 0
    b["normals_mask"] = torch.ones(n, 1, h, w, dtype=torch.bool)
    return {k: v.to(device) for k, v in b.items()}


def _train_step(model, opt, batch, *, amp: bool, scaler, device: torch.device):
    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = model(batch["image"])
        loss = sum(task_loss(t, out[t], batch) for t in TASKS)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


def run(quick: bool = False) -> BenchResults:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if quick else 2)
    try:
        if cuda:
            backbone, size, n = ("resnet18", (144, 192), 8) if quick else ("resnet50", (288, 384), 8)
        else:
            backbone, size, n = ("mobilenet_v3_small", (48, 64), 4) if quick else ("mobilenet_v3_small", (60, 80), 8)
        repeats, inner = (1, 2) if quick else (5, 5)
        gen = torch.Generator().manual_seed(0)
        batch = _batch(n, size, device, gen)
        res = BenchResults(mtml_on_cuda=int(cuda), mtml_threads=torch.get_num_threads())
        torch.manual_seed(0)
        model = build_model("mtl", tasks=TASKS, backbone=backbone).to(device)
        state = {k: v.clone() for k, v in model.state_dict().items()}

        def measure(candidate: str) -> float:
            model.load_state_dict(state)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            amp = candidate == "amp"
            scaler = torch.amp.GradScaler("cuda", enabled=amp)
            b = batch
            if candidate == "channels_last":
                model.to(memory_format=torch.channels_last)
                b = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
            else:
                model.to(memory_format=torch.contiguous_format)
            s = median_seconds(_train_step(model, opt, b, amp=amp, scaler=scaler, device=device), device,
                               repeats=repeats, warmup=inner, inner=inner)
            return n / s

        cand = "amp" if cuda else "channels_last"
        base = measure("fp32")
        other = measure(cand)
        res["mtml_fp32_img_s"] = base
        label = "mtml_amp" if cand == "amp" else "torch_channels_last_mtml"
        res[f"{label}_img_s"] = other
        res.ratio(f"{label}_speedup", f"{label}_img_s", "mtml_fp32_img_s")
        print(f"mtml: {cand} {other:.1f} img/s vs fp32 {base:.1f} img/s on {device} ({backbone}, {size}): "
              f"x{other / base:.2f}")

        # the MTML outer step: 4 subsets of 3 training tasks, support + query batches
        model.to(memory_format=torch.contiguous_format)
        data = [{k: v[i].cpu() for k, v in batch.items()} for i in range(n)]
        with tempfile.TemporaryDirectory() as tmp:
            steps = 1 if quick else 4
            common = dict(batch_size=n, eval_every=1, checkpoint_every=1000, backbone=backbone, min_subset=2)
            cfg = MtmlConfig.from_values({**common, "meta_steps": 1}, source="bench_mtml")
            meta_train(cfg, RunDir(tmp), "warm", model, ["seg", "depth", "edges"], data, device=device, progress=False)
            cfg = MtmlConfig.from_values({**common, "meta_steps": steps}, source="bench_mtml")
            _, st = meta_train(cfg, RunDir(tmp), "timed", model, ["seg", "depth", "edges"], data, device=device,
                               progress=False)
        res["mtml_meta_step_img_s"] = st["image_passes"] / st["train_s"]  # forward+backward passes, counted
        res.notes["mtml"] = (f"{backbone} at {size[0]}x{size[1]}, batch {n}, {device}, "
                             f"{torch.get_num_threads()} threads, "
                             f"median of {repeats} timings of {inner} steps; torch_channels_last_* = PyTorch's "
                             f"channels_last format, not used by the engine")
        print(f"mtml: meta-training {res['mtml_meta_step_img_s']:.1f} img/s (4 subsets x support+query)")
        return res
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(run())
