"""One training stage of the ``UnifiedModel`` on one task, with replay or LwF, mixed precision and mid-stage
checkpoints (a stage interrupted at any step resumes to the same numbers as an uninterrupted one)."""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ...data.replay import ReplayBuffer
from ...data.vision import collate_task
from ...losses import centernet_targets, detection_loss, distillation_loss, segmentation_loss
from ...models.unified import UnifiedModel
from ...runs import Checkpointer, check_finite
from .config import ReplayConfig
from .data import TaskData

__all__ = ["Precision", "task_loss", "lwf_loss", "batch_indices", "train_stage"]


class Precision:
    """Mixed precision for one device: ``bfloat16`` autocast on CPU (no scaler needed: bfloat16 has float32's
    range) where the CPU has native bfloat16 or ``NBM_CPU_AMP=1`` (:func:`nbmodule.env.cpu_bfloat16`),
    ``float16`` autocast with a ``GradScaler`` on CUDA; disabled (and on other devices, e.g. MPS): plain
    float32 everywhere."""

    def __init__(self, enabled: bool, device: torch.device):
        from ...env import cpu_bfloat16

        cpu_ok, self.cpu_note = cpu_bfloat16() if enabled and device.type == "cpu" else (False, "")
        self.enabled = bool(enabled) and (device.type == "cuda" or cpu_ok)
        self.device_type = device.type if self.enabled else "cpu"
        self.dtype = torch.float16 if self.device_type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.device_type == "cuda")

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def describe(self) -> str:
        if not self.enabled:
            return self.cpu_note or "float32"
        return f"autocast {str(self.dtype).removeprefix('torch.')} on {self.device_type}" + (
            " with GradScaler" if self.scaler.is_enabled() else "")


def _float(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in out.items()}


def _slice(out: dict[str, torch.Tensor], sl: slice) -> dict[str, torch.Tensor]:
    return {k: v[sl] for k, v in out.items()}


def task_loss(model: UnifiedModel, task: str, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
    """The loss of ``task`` on (float32) model outputs ``out`` for ``batch``: cross-entropy per pixel (255
    ignored), CenterNet focal heatmap + box regression, cross-entropy per image."""
    dev = out["seg"].device
    if task == "seg":
        return segmentation_loss(out["seg"], batch["mask"].to(dev))
    if task == "det":
        stride = out["seg"].shape[-1] // out["heatmap"].shape[-1]
        tgt = centernet_targets(batch["boxes"], batch["labels"], model.num_det_classes,
                                tuple(out["heatmap"].shape[-2:]), stride=stride)
        return detection_loss(out["heatmap"], out["box"], {k: v.to(dev) for k, v in tgt.items()})
    if task == "cls":
        return F.cross_entropy(out["cls"], batch["label"].to(dev))
    raise ValueError(f"unknown task {task!r}")


def lwf_loss(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor], tasks: Sequence[str],
             temperature: float) -> torch.Tensor:
    """Learning without Forgetting: distil the frozen model's outputs of the earlier ``tasks``."""
    total = new["seg"].new_zeros(())
    for t in tasks:
        if t == "seg":
            total = total + distillation_loss(new["seg"], old["seg"], "softmax", temperature)
        elif t == "det":
            total = total + distillation_loss(new["heatmap"], old["heatmap"], "sigmoid") \
                + 0.1 * distillation_loss(new["box"], old["box"], "l1")
        elif t == "cls":
            total = total + distillation_loss(new["cls"], old["cls"], "softmax", temperature)
    return total


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[list[int]]:
    """``steps`` batches of indices into ``n`` items: epochs of seeded permutations, so every item is seen
    once per epoch (a batch may span two epochs)."""
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


def _schedule(steps: int) -> Callable[[int], float]:
    """Linear warm-up over the first 10% of the stage, then cosine decay to 5% of the peak rate."""
    warm = max(1, steps // 10)

    def factor(i: int) -> float:
        decay = min(1.0, max(0, i - warm) / max(1, steps - warm))
        return min(1.0, (i + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * decay)))
    return factor


def train_stage(model: UnifiedModel, task: str, data: TaskData, cfg: ReplayConfig, *, device: torch.device,
                seed: int, buffers: dict[str, ReplayBuffer] | None = None, teacher: UnifiedModel | None = None,
                earlier: Sequence[str] = (), run: str = "", stage: int = 1, step_offset: int = 0,
                checkpoint: Checkpointer | None = None, resume: dict[str, Any] | None = None, bar: Any = None,
                callback: Callable[[str, int], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` on ``task`` for ``cfg.steps(task)`` optimiser steps; return the loss rows of the curve.

    Every step: a batch of ``task`` (seeded order, ``seed``) plus ``cfg.replay_per_task()`` images of every
    earlier task in ``buffers``, concatenated into one forward pass (so BatchNorm sees every task); each part
    gets its own task loss, the replayed ones weighted by ``replay_weight``. ``teacher``: LwF distillation of
    the ``earlier`` tasks' outputs. Gradients are clipped to norm 10; AdamW with :func:`_schedule`.

    ``checkpoint``: every ``cfg.checkpoint_every`` steps the full state (model, optimiser, schedule, scaler,
    the batch generator, the global torch RNG that drives augmentation, the rows) is saved to it; pass the
    loaded state as ``resume`` to continue from it. The caller seeds the global RNG for the stage.
    ``callback(run, step)`` runs after each step (tests interrupt a run with it).
    """
    steps = cfg.steps(task)
    model.to(device).train()
    prec = Precision(cfg.amp, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps))
    gen = torch.Generator().manual_seed(seed)
    batches = batch_indices(len(data.train), cfg.batch_size, steps, gen)  # drawn first: the same on resume
    rows: list[dict[str, Any]] = []
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["schedule"])
        if resume.get("scaler"):
            prec.scaler.load_state_dict(resume["scaler"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["rng"])
        rows, start = list(resume["rows"]), int(resume["step"])
        if bar is not None:
            bar.update(start)
    k = cfg.replay_per_task()
    for step in range(start + 1, steps + 1):
        parts = [(task, collate_task([data.train[i] for i in batches[step - 1]]))]
        for t, buf in (buffers or {}).items():
            samples = buf.sample(k, generator=gen) if k else []
            if samples:
                parts.append((t, collate_task(samples)))
        images = torch.cat([b["image"] for _, b in parts]).to(device)
        with prec.autocast():
            out = model(images)
        out = _float(out)
        losses, first = [], 0
        for t, b in parts:
            n = len(b["image"])
            losses.append(task_loss(model, t, _slice(out, slice(first, first + n)), b))
            first += n
        main = losses[0]
        extra = sum(losses[1:], main.new_zeros(())) * cfg.replay_weight
        if teacher is not None and earlier:
            with torch.no_grad(), prec.autocast():
                old = teacher(images)
            extra = extra + cfg.lwf_weight * lwf_loss(out, _float(old), earlier, cfg.lwf_temperature)
        loss = main + extra
        if not torch.isfinite(loss):  # the parts are named only then (each .item() waits for the device)
            check_finite(loss, step=step, run_dir=checkpoint.run if checkpoint is not None else None,
                         what=f"the loss of {run} stage {stage} ({task}; task {main.item():.4g}, replay/LwF "
                              f"{float(extra):.4g}; or disable amp)")
        opt.zero_grad(set_to_none=True)
        prec.scaler.scale(loss).backward()
        prec.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        prec.scaler.step(opt)
        prec.scaler.update()
        sched.step()
        if step % cfg.log_every == 0 or step == steps:
            rows.append({"run": run, "seed": cfg.seed, "step": step_offset + step, "stage": stage,
                         "loss": loss.item(), "task_loss": main.item(), "extra_loss": float(extra.detach())})
        if bar is not None:
            bar.set_postfix(run=run, stage=f"{stage} {task}", loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)
        if checkpoint is not None and step % cfg.checkpoint_every == 0 and step < steps:
            checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "schedule": sched.state_dict(), "scaler": prec.scaler.state_dict(),
                             "generator": gen.get_state(), "rng": torch.get_rng_state(), "rows": rows,
                             "step": step}, step=step)
        if callback is not None:
            callback(run, step)
    return rows
