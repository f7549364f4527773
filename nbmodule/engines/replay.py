"""Sequential segmentation -> detection -> classification on one ``UnifiedModel``, with anti-forgetting.

Runs (``run`` column of the curves, prefix of the metrics):

- ``replay`` (the main run, metrics without prefix): in stage 2 and 3 every step mixes in up to
  ``replay_max`` (<= 10) images per earlier task drawn from a bounded :class:`ReplayBuffer` (reservoir or
  fixed selection, ``buffer_size`` images per task), each with its own task loss.
- ``noreplay``: the same schedule without any anti-forgetting method (the ablation).
- ``lwf``: Learning without Forgetting: the model frozen at the start of the stage labels the current
  images for the earlier tasks' outputs, and the student is distilled towards them.
- ``alone``: each task trained alone from the same initialisation for the same number of steps.

Stage 1 (segmentation) is the same computation in every sequential run and in ``alone_seg`` (no earlier
task, same seed), so it is trained once and shared (checkpoint ``seq_1_seg``).

Every stage ends with a checkpoint (model, replay buffers, evaluations, loss rows); a rerun loads finished
stages instead of training them, so an interrupted notebook resumes from the last finished stage.

Run folder (``<out>/02_sequential_replay/``)::

    config.json
    metrics.json           seg_miou det_map det_map50 cls_top1 (final, replay run), {seg,det,cls}_drop_pct and
                           _drop_abs (relative % and absolute points, end of own stage -> end of training),
                           the same with noreplay_ / lwf_ prefixes, alone_{seg_miou,det_map,det_map50,cls_top1},
                           per stage {run_}stage{k}_{metric}, params, latency_ms (+ latency_size, latency_device_cuda),
                           pretrained (1 = ImageNet weights loaded), train_s
    stage_table.csv        columns run, stage (seg|det|cls: after that stage), seg_miou, det_map, det_map50,
                           cls_top1 (empty where the task is not learned yet)
    curves/loss.csv        run, seed, step (global), stage (1..3), loss, task_loss, extra_loss (replay or LwF term)
    curves/stage_metrics.csv  run, seed, step, stage, seg_miou, det_map, det_map50, cls_top1 (after each stage)
    examples.pt            a few validation images with masks, boxes and labels: truth and replay-run prediction
    weights.json           where the backbone weights came from, and the latency measurement
    checkpoints/<run>_<k>_<task>.pt
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ..config import Config
from ..data.coco import CocoDetection
from ..data.imagenette import ImagenetteFolder
from ..data.paths import dataset_dir
from ..data.replay import ReplayBuffer
from ..data.vision import TaskDataset, collate_task
from ..data.voc import VOCSegmentation
from ..losses import centernet_targets, detection_loss, distillation_loss, segmentation_loss
from ..metrics import ConfusionMatrix, coco_map, top1_accuracy
from ..models import build_model, count_parameters
from ..models.unified import UnifiedModel, decode_detections
from ..profiling import measure_latency
from ..progress import progress_bar
from ..runs import RunDir

__all__ = ["ReplayConfig", "TaskData", "load_task_data", "train_stage", "evaluate", "run_study", "TASKS",
           "TASK_METRIC", "forgetting"]

TASKS = ("seg", "det", "cls")
#: the metric whose drop is the task's forgetting
TASK_METRIC = {"seg": "seg_miou", "det": "det_map", "cls": "cls_top1"}
METRICS = ("seg_miou", "det_map", "det_map50", "cls_top1")


class ReplayConfig(Config):
    """Everything the replay study needs; fields are the notebook's parameters and configs/replay/*.yaml."""

    # data: synthetic shapes (offline) or the real mini VOC / COCO / Imagenette prepared by data_prep
    synthetic: bool = True                       # read <data>/synthetic/<name> instead of <data>/<name>
    image_size: int = Field(160, ge=64, le=1024, multiple_of=32)  # training/eval resolution (square)
    n_train: int | None = Field(None, ge=1)      # use at most this many training images per task
    n_val: int | None = Field(None, ge=1)        # ... and validation images per task
    det_classes: list[str] | None = None         # restrict COCO categories (None: all in the JSON)
    # model
    backbone: Literal["mobilenet_v3_small", "mobilenet_v3_large"] = "mobilenet_v3_small"
    pretrained: bool = False                     # try ImageNet weights (falls back to random, recorded)
    fpn_channels: int = Field(64, ge=8, le=256)
    head_layers: Literal[2, 3] = 3
    # schedule
    steps_seg: int = Field(200, ge=1)            # optimiser steps of stage 1
    steps_det: int = Field(200, ge=1)            # ... stage 2
    steps_cls: int = Field(200, ge=1)            # ... stage 3
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    # replay
    replay_tasks: list[Literal["seg", "det"]] = ["seg", "det"]  # earlier tasks that are replayed
    replay_ratio: float = Field(0.5, ge=0, le=1)  # replayed images per earlier task per step / batch_size
    replay_max: int = Field(10, ge=0, le=10)     # hard cap per earlier task per step (the assignment's 10)
    buffer_size: int = Field(40, ge=1)           # images kept per task
    buffer_policy: Literal["reservoir", "fixed"] = "reservoir"
    replay_weight: float = Field(1.0, ge=0)      # weight of each replayed task's loss
    # LwF (the regularisation alternative)
    lwf_weight: float = Field(1.0, ge=0)
    lwf_temperature: float = Field(2.0, gt=0)
    # which runs besides the main replay run
    runs: list[Literal["noreplay", "alone", "lwf"]] = ["noreplay", "alone"]
    # evaluation and reporting
    det_score_threshold: float = Field(0.05, ge=0, lt=1)
    log_every: int = Field(10, ge=1)
    latency_size: int = Field(512, ge=32, multiple_of=32)  # resolution of the latency measurement
    latency_repeats: int = Field(20, ge=1)
    n_examples: int = Field(3, ge=0, le=16)      # validation images per task saved for the figure

    @model_validator(mode="after")
    def _check(self) -> "ReplayConfig":
        if len(set(self.runs)) != len(self.runs):
            raise ValueError(f"runs has duplicates: {self.runs}")
        return self

    def replay_per_task(self) -> int:
        """Images replayed per earlier task per step: ``ceil(ratio * batch_size)`` capped at ``replay_max``."""
        return min(self.replay_max, math.ceil(self.replay_ratio * self.batch_size))

    def steps(self, task: str) -> int:
        return {"seg": self.steps_seg, "det": self.steps_det, "cls": self.steps_cls}[task]


# --- data ------------------------------------------------------------------------------------------------
class TaskData:
    """The train (augmented) and val datasets of one task."""

    def __init__(self, train: TaskDataset, val: TaskDataset):
        self.train, self.val = train, val

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def load_task_data(cfg: ReplayConfig, data_root: str | Path | None = None,
                   paths: dict[str, str | Path] | None = None) -> dict[str, TaskData]:
    """The three tasks' datasets, from ``paths[task]`` or ``<data root>/[synthetic/]{voc,coco,imagenette}``.

    ``paths`` may also point at other splits, e.g. the real samples: ``{"seg": (root, "trainval", "trainval")}``
    (a tuple of folder, train split, val split).
    """
    spec = {"seg": ("voc", VOCSegmentation, {}), "det": ("coco", CocoDetection, {"classes": cfg.det_classes}),
            "cls": ("imagenette", ImagenetteFolder, {})}
    out = {}
    for task, (name, cls, extra) in spec.items():
        given = (paths or {}).get(task)
        if isinstance(given, (tuple, list)):
            root, tr_split, va_split = given
        else:
            root = given or dataset_dir(name, root=data_root, synthetic=cfg.synthetic)
            tr_split, va_split = "train", "val"
        train = cls(root, tr_split, image_size=cfg.image_size, train=True, limit=cfg.n_train, **extra)
        val = cls(root, va_split, image_size=cfg.image_size, train=False, limit=cfg.n_val, **extra)
        out[task] = TaskData(train, val)
    return out


def _batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[list[int]]:
    """``steps`` batches of indices, epochs of seeded permutations (sampling without replacement per epoch)."""
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


# --- losses on model outputs ----------------------------------------------------------------------------
def _slice(out: dict[str, torch.Tensor], sl: slice) -> dict[str, torch.Tensor]:
    return {k: v[sl] for k, v in out.items()}


def task_loss(model: UnifiedModel, task: str, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
    """The loss of ``task`` on model outputs ``out`` for ``batch`` (targets moved to the outputs' device)."""
    dev = out["seg"].device
    if task == "seg":
        return segmentation_loss(out["seg"], batch["mask"].to(dev))
    if task == "det":
        tgt = centernet_targets(batch["boxes"], batch["labels"], model.num_det_classes,
                                tuple(out["heatmap"].shape[-2:]), stride=out["seg"].shape[-1] // out["heatmap"].shape[-1])
        return detection_loss(out["heatmap"], out["box"], {k: v.to(dev) for k, v in tgt.items()})
    if task == "cls":
        return F.cross_entropy(out["cls"], batch["label"].to(dev))
    raise ValueError(f"unknown task {task!r}")


def lwf_loss(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor], tasks: Sequence[str],
             temperature: float) -> torch.Tensor:
    """Distillation of the earlier tasks' outputs of the frozen model (LwF)."""
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


# --- one stage ---------------------------------------------------------------------------------------------
def train_stage(model: UnifiedModel, task: str, data: TaskData, cfg: ReplayConfig, *, device: torch.device,
                generator: torch.Generator, buffers: dict[str, ReplayBuffer] | None = None,
                teacher: UnifiedModel | None = None, earlier: Sequence[str] = (), run: str = "", seed: int = 0,
                stage: int = 1, step_offset: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Train ``model`` on ``task`` for ``cfg.steps(task)`` steps; return the loss rows of the curve.

    ``buffers``: replay of every earlier task that has one (``cfg.replay_per_task()`` images each per step,
    concatenated into the same forward pass so BatchNorm sees all tasks). ``teacher``: LwF on ``earlier``.
    """
    steps = cfg.steps(task)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, steps // 10)  # linear warm-up, then cosine decay to 5% of lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, i - warm) / max(1, steps - warm))))))
    k = cfg.replay_per_task()
    rows = []
    bar = progress_bar(total=steps, desc=f"{run}: stage {stage} ({task})", enabled=progress)
    for step, idx in enumerate(_batch_indices(len(data.train), cfg.batch_size, steps, generator), start=1):
        parts = [(task, collate_task([data.train[i] for i in idx]))]
        for t, buf in (buffers or {}).items():
            samples = buf.sample(k, generator=generator) if k else []
            if samples:
                parts.append((t, collate_task(samples)))
        images = torch.cat([b["image"] for _, b in parts]).to(device)
        out = model(images)
        losses, start = [], 0
        for t, b in parts:
            n = len(b["image"])
            losses.append(task_loss(model, t, _slice(out, slice(start, start + n)), b))
            start += n
        main = losses[0]
        extra = sum(losses[1:], main.new_zeros(())) * cfg.replay_weight
        if teacher is not None and earlier:
            with torch.no_grad():
                old = teacher(images)
            extra = extra + cfg.lwf_weight * lwf_loss(out, old, earlier, cfg.lwf_temperature)
        loss = main + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == steps:
            rows.append({"run": run, "seed": seed, "step": step_offset + step, "stage": stage,
                         "loss": loss.item(), "task_loss": main.item(), "extra_loss": float(extra.detach())})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update(1)
    bar.close()
    return rows


# --- evaluation --------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model: UnifiedModel, images: torch.Tensor, score_threshold: float = 0.05) -> dict[str, Any]:
    """Eval-mode predictions: ``mask (B, H, W)``, ``detections`` (list of dicts), ``cls (B,)`` and ``cls_prob``."""
    out = model(images)
    dets = decode_detections(out["heatmap"], out["box"], stride=images.shape[-1] // out["heatmap"].shape[-1],
                             score_threshold=score_threshold)
    return {"mask": out["seg"].argmax(1), "detections": dets, "cls": out["cls"].argmax(1),
            "cls_prob": out["cls"].softmax(1), "cls_logits": out["cls"]}


@torch.no_grad()
def evaluate(model: UnifiedModel, task: str, dataset: TaskDataset, device: torch.device, batch_size: int = 16,
             score_threshold: float = 0.05) -> dict[str, float]:
    """The task's validation metrics: ``seg_miou`` (at ``image_size``, 255 ignored, absent classes skipped),
    ``det_map``/``det_map50`` (pycocotools, boxes mapped back to each image's original size), ``cls_top1``."""
    model.to(device).eval()
    cm = ConfusionMatrix(model.num_seg_classes, ignore_index=255)
    preds, logits, labels = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate_task([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        images = batch["image"].to(device)
        if task == "seg":
            cm.update(model(images)["seg"].argmax(1).cpu(), batch["mask"])
        elif task == "det":
            size = images.shape[-1]
            for i, det in zip(batch["index"].tolist(), predict(model, images, score_threshold)["detections"]):
                im = dataset.images[i]
                scale = torch.tensor([im["width"] / size, im["height"] / size] * 2)
                preds.append({"boxes": det["boxes"].cpu() * scale, "scores": det["scores"].cpu(),
                              "labels": det["labels"].cpu()})
        else:
            logits.append(model(images)["cls"].cpu())
            labels.append(batch["label"])
    if task == "seg":
        return {"seg_miou": cm.miou()}
    if task == "det":
        res = coco_map(dataset.ground_truth(), preds, model.num_det_classes)
        return {"det_map": res["map"], "det_map50": res["map50"]}
    return {"cls_top1": top1_accuracy(torch.cat(logits), torch.cat(labels))}


def forgetting(own: float, final: float) -> tuple[float, float]:
    """(relative drop in percent, absolute drop in points) from the end of the own stage to the end."""
    if own is None or final is None or math.isnan(own) or math.isnan(final):
        return float("nan"), float("nan")
    rel = 100.0 * (own - final) / own if own > 0 else float("nan")
    return rel, 100.0 * (own - final)


# --- the study ---------------------------------------------------------------------------------------------
def _stage_seed(seed: int, run: str, stage: int) -> int:
    """A seed per (run, stage) that does not depend on what ran before, so resumed stages replay exactly."""
    return (seed * 1_000_003 + sum(ord(c) * 31 ** i for i, c in enumerate(run)) * 101 + stage) % (2 ** 62)


def _new_model(cfg: ReplayConfig, data: dict[str, TaskData], seed: int) -> UnifiedModel:
    torch.manual_seed(seed)  # every run starts from the same initialisation
    return build_model("unified", num_seg_classes=data["seg"].num_classes, num_det_classes=data["det"].num_classes,
                       num_cls_classes=data["cls"].num_classes, backbone=cfg.backbone, pretrained=cfg.pretrained,
                       fpn_channels=cfg.fpn_channels, head_layers=cfg.head_layers)


class _Study:
    def __init__(self, cfg: ReplayConfig, data: dict[str, TaskData], run_dir: RunDir, device: torch.device,
                 seed: int, progress: bool):
        self.cfg, self.data, self.rd, self.device, self.seed, self.progress = cfg, data, run_dir, device, seed, progress
        self.weights_source = ""
        self.trained_s = 0.0

    def model(self) -> UnifiedModel:
        m = _new_model(self.cfg, self.data, self.seed)
        self.weights_source = m.weights_source
        return m

    def _buffers_after(self, tasks: Sequence[str]) -> dict[str, ReplayBuffer]:
        """Replay buffers of ``tasks`` (those in ``replay_tasks``), each shown its task's training set once."""
        out = {}
        for t in tasks:
            if t in self.cfg.replay_tasks:
                buf = ReplayBuffer(self.cfg.buffer_size, self.cfg.buffer_policy, seed=_stage_seed(self.seed, "buf", TASKS.index(t)))
                buf.update(self.data[t].train)
                out[t] = buf
        return out

    def stage(self, name: str, model: UnifiedModel, task: str, stage: int, run: str, method: str,
              earlier: Sequence[str], evaluate_tasks: Sequence[str], step_offset: int) -> dict[str, Any]:
        """Train one stage (or load its checkpoint) and evaluate; returns ``{"evals", "rows"}``."""
        ckpt = self.rd.load_checkpoint(name)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            return {"evals": ckpt["evals"], "rows": ckpt["rows"]}
        gen = torch.Generator().manual_seed(_stage_seed(self.seed, run, stage))
        buffers = self._buffers_after(earlier) if method == "replay" else None
        teacher = None
        if method == "lwf" and earlier:
            teacher = copy.deepcopy(model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        t0 = time.perf_counter()
        # torchvision's random augmentations draw from the global RNG: seed it per stage (inside fork_rng, so
        # the caller's RNG is untouched) and a resumed stage sees the same augmentations as an uninterrupted run
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_stage_seed(self.seed, run, stage))
            rows = train_stage(model, task, self.data[task], self.cfg, device=self.device, generator=gen,
                               buffers=buffers, teacher=teacher, earlier=earlier, run=run, seed=self.seed,
                               stage=stage, step_offset=step_offset, progress=self.progress)
        self.trained_s += time.perf_counter() - t0
        evals = {}
        for t in evaluate_tasks:
            evals.update(evaluate(model, t, self.data[t].val, self.device, self.cfg.batch_size,
                                  self.cfg.det_score_threshold))
        state = {"model": model.state_dict(), "evals": evals, "rows": rows, "run": run, "stage": stage,
                 "task": task, "buffers": {t: b.state_dict() for t, b in (buffers or {}).items()}}
        self.rd.save_checkpoint(state, name)
        return {"evals": evals, "rows": rows}

    def sequence(self, run: str, method: str) -> tuple[list[dict], list[dict], UnifiedModel]:
        """Stages seg -> det -> cls; returns (per-stage evals, loss rows, final model)."""
        model = self.model()
        evals, rows, offset = [], [], 0
        for k, task in enumerate(TASKS, start=1):
            name = "seq_1_seg" if k == 1 else f"{run}_{k}_{task}"
            res = self.stage(name, model, task, k, run, method if k > 1 else "none", TASKS[:k - 1], TASKS[:k], offset)
            evals.append(res["evals"])
            rows += [{**r, "run": run} for r in res["rows"]]
            offset += self.cfg.steps(task)
        return evals, rows, model

    def alone(self, task: str, shared: dict | None) -> tuple[dict, list[dict]]:
        if task == "seg" and shared is not None:  # identical to stage 1 of the sequential runs
            return shared["evals"], [{**r, "run": "alone_seg"} for r in shared["rows"]]
        model = self.model()
        res = self.stage(f"alone_{task}", model, task, 1, f"alone_{task}", "none", (), (task,), 0)
        return res["evals"], [{**r, "run": f"alone_{task}"} for r in res["rows"]]


def _save_examples(model: UnifiedModel, data: dict[str, TaskData], run_dir: RunDir, device: torch.device,
                   n: int, score_threshold: float) -> None:
    """A few validation images with truth and prediction per task (read by the notebook's figure)."""
    model.to(device).eval()
    out: dict[str, Any] = {"classes": {t: list(getattr(d.val, "classes", [])) for t, d in data.items()}}
    for task, d in data.items():
        items = [d.val[i] for i in range(min(n, len(d.val)))]
        if not items:
            continue
        batch = collate_task(items)
        pred = predict(model, batch["image"].to(device), score_threshold)
        entry: dict[str, Any] = {"images": (batch["image"] * 255).round().to(torch.uint8)}
        if task == "seg":
            entry.update(true_mask=batch["mask"].to(torch.uint8), pred_mask=pred["mask"].cpu().to(torch.uint8))
        elif task == "det":
            entry.update(true_boxes=batch["boxes"], true_labels=batch["labels"],
                         pred=[{k: v.cpu() for k, v in p.items()} for p in pred["detections"]])
        else:
            entry.update(true_label=batch["label"], pred_label=pred["cls"].cpu(),
                         pred_prob=pred["cls_prob"].max(1).values.cpu())
        out[task] = entry
    torch.save(out, run_dir.path / "examples.pt")


def run_study(cfg: ReplayConfig, run_dir: RunDir, *, data: dict[str, TaskData], device: torch.device | str = "cpu",
              seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Run every configured run (resuming finished stages), write the run folder, return ``metrics.json``."""
    device = torch.device(device)
    run_dir.save_config(cfg, seed=seed, device=str(device))
    st = _Study(cfg, data, run_dir, device, seed, progress)
    metrics: dict[str, Any] = {}
    loss_rows: list[dict] = []
    stage_rows: list[dict] = []
    table: list[dict] = []
    seq_runs = [("replay", "replay")] + [(r, "none" if r == "noreplay" else r) for r in cfg.runs if r != "alone"]
    shared = None
    final_model = None
    for run, method in seq_runs:
        evals, rows, model = st.sequence(run, method)
        if run == "replay":
            final_model = model
        if shared is None:
            shared = {"evals": evals[0], "rows": [r for r in rows if r["stage"] == 1]}
        loss_rows += rows
        prefix = "" if run == "replay" else f"{run}_"
        offset = 0
        for k, (task, ev) in enumerate(zip(TASKS, evals), start=1):
            offset += cfg.steps(task)
            row = {m: ev.get(m, float("nan")) for m in METRICS}
            stage_rows.append({"run": run, "seed": seed, "step": offset, "stage": k, **row})
            table.append({"run": run, "stage": task, **{m: ("" if math.isnan(v) else v) for m, v in row.items()}})
            for m, v in ev.items():
                metrics[f"{prefix}stage{k}_{m}"] = v
        final = evals[-1]
        for m in METRICS:
            metrics[f"{prefix}{m}"] = final.get(m)
        for k, task in enumerate(TASKS):
            rel, absolute = forgetting(evals[k][TASK_METRIC[task]], final[TASK_METRIC[task]])
            metrics[f"{prefix}{task}_drop_pct"] = rel
            metrics[f"{prefix}{task}_drop_abs"] = absolute
    if "alone" in cfg.runs:
        for task in TASKS:
            ev, rows = st.alone(task, shared)
            loss_rows += rows
            stage_rows.append({"run": f"alone_{task}", "seed": seed, "step": cfg.steps(task), "stage": 1,
                               **{m: ev.get(m, float("nan")) for m in METRICS}})
            for m, v in ev.items():
                metrics[f"alone_{m}"] = v
    run_dir.write_curve("loss", loss_rows)
    run_dir.write_curve("stage_metrics", stage_rows)
    _write_table(run_dir, table)
    assert final_model is not None
    _save_examples(final_model, data, run_dir, device, cfg.n_examples, cfg.det_score_threshold)
    lat = measure_latency(final_model, (1, 3, cfg.latency_size, cfg.latency_size), device,
                          repeats=cfg.latency_repeats, warmup=3)
    run_dir.write_json("weights.json", {"backbone": cfg.backbone, "weights": st.weights_source, "latency": lat})
    metrics.update(params=count_parameters(final_model), latency_ms=lat["median_ms"], latency_size=cfg.latency_size,
                   latency_device_cuda=int(device.type == "cuda"), pretrained=int(st.weights_source.startswith("imagenet")),
                   train_s=st.trained_s, replay_per_task=cfg.replay_per_task())
    return run_dir.write_metrics(metrics)


def _write_table(run_dir: RunDir, rows: list[dict]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["run", "stage", *METRICS])
    writer.writeheader()
    writer.writerows(rows)
    (run_dir.path / "stage_table.csv").write_text(buf.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nbmodule.engines.replay --config configs/replay/cpu.yaml [--out runs] [--data data]``."""
    import argparse
    import json

    from ..config import load_config
    from ..env import data_root, pick_device, runs_root, seed_everything

    parser = argparse.ArgumentParser(prog="python -m nbmodule.engines.replay", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a YAML file of ReplayConfig fields (configs/replay/)")
    parser.add_argument("--out", default="", help="run root (default $NBM_RUNS or runs/)")
    parser.add_argument("--data", default="", help="data root (default $NBM_DATA or data/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    cfg = load_config(ReplayConfig, args.config)
    seed_everything(args.seed)
    device = pick_device(args.device)
    data = load_task_data(cfg, data_root(args.data or None))
    metrics = run_study(cfg, RunDir(runs_root(args.out or None), "02_sequential_replay"), data=data, device=device,
                        seed=args.seed)
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
