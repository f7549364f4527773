"""Multi-task meta-learning for dense prediction (MTML): single-task, multi-task and meta multi-task training
of segmentation, depth, surface normals and edges, then meta-testing on a held-out task.

Modes (``MTMLConfig.mode`` for the CLI; :func:`run_study` runs them all for notebook 03):

* ``single``: one model per task, trained from scratch (the Δm baseline and the from-scratch curve).
* ``mtl``: one shared encoder with a head per task, a weighted sum of losses (``weighting``: uniform, or
  Kendall et al.'s uncertainty weighting with learnt log-variances).
* ``mtml``: meta-learning over tasks as episodes, on :func:`nbmodule.meta.adapt`. Each outer step draws a
  support and a query batch from the *training* split; for every subset of at least ``min_subset``
  training tasks (11 for four tasks, 4 for three), the shared encoder and that subset's heads take
  ``inner_steps`` SGD steps on the subset's summed support loss (functionally: fast weights are new
  tensors, the model's weights are never overwritten), the subset's loss on the query batch is computed with
  the fast weights, and the mean over subsets is back-propagated to the initial weights (first order by
  default, ``first_order=False`` for second order). BatchNorm running statistics are updated by the query
  passes only (the support passes normalise with batch statistics and leave the buffers alone).
  The meta-trained model's training tasks are scored after the same inner step on one training support
  batch (:func:`adapted_copy`): a MAML initialisation is trained to be good after adaptation, not before.
* ``meta_test``: load a trained model (any mode's folder), attach a new head for ``task`` (or keep its
  head when it already has one) and fine-tune, evaluating the task every ``eval_every`` steps.

The seed code's defects are avoided by construction: no aliased ``state_dict`` copies (fast weights are
functional), query batches come from training data (validation is never in a gradient), mIoU is per class
from a confusion matrix, RMSE has its square root, iterators are advanced with ``next()``.

Run folder (``<out>/03_mtml/`` from the notebook; ``--out`` from the CLI)::

    config.json                 MTMLConfig, seed, device, versions
    metrics.json                {mode}_{task}_{metric} for modes single, mtl, mtml and tasks seg, depth,
                                normals, edges (test split; metrics: seg miou, pixel_acc; depth abs_err,
                                rel_err, rmse, delta1; normals mean, median, within_11_25, within_22_5,
                                within_30 (degrees / percent); edges ods), {mode}_delta_m (percent vs single),
                                {mode}_steps_to_target (fine-tuning steps to reach the single-task model's
                                final val metric on the held-out task; null if never), heldout_target,
                                {mode}_train_s (wall time), encoder_pretrained (1 = ImageNet weights)
    curves/train.csv            run (single_<task> | mtl | mtml | <mode>_ft_<task>), seed, step, train_loss
    curves/heldout.csv          run (single | mtl | mtml), seed, step, val_<metric> of the held-out task
                                (its primary metric: seg miou, depth abs_err, normals mean, edges ods)
    examples.pt                 a few test images with targets and every mode's predictions (plots)
    phases/<phase>/             one folder per trained model (single_<task>, mtl, mtml, <mode>_ft_<task>):
        config.json, metrics.json (its test metrics), checkpoints/last.pt (resume: model, optimiser,
        weighting, data stream and RNG states, step, curve rows), checkpoints/final.pt (model + spec)

A phase whose ``final.pt`` exists is loaded, not retrained; one with only ``last.pt`` resumes from it and
ends with the same numbers as an uninterrupted run. ``test(folder)`` evaluates any phase folder.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from ..config import Config
from ..data.nyuv2 import IGNORE_INDEX, TASKS
from ..losses import balanced_bce_loss, depth_l1_loss, normals_cosine_loss, seg_loss
from ..meta import adapt
from ..metrics import DENSE_METRICS, ConfusionMatrix, DepthMeter, EdgeMeter, NormalsMeter, delta_m
from ..models import build_model
from ..progress import progress_bar
from ..runs import RunDir

__all__ = ["MTMLConfig", "PRIMARY", "prepare_data", "load_data", "out_channels", "task_loss", "evaluate",
           "BatchStream", "train_dense", "meta_train", "adapted_copy", "finetune", "run_study", "test", "load_phase_model",
           "task_subsets", "steps_to_target"]

#: the metric a held-out task is judged by (and whether lower is better)
PRIMARY = {"seg": "miou", "depth": "abs_err", "normals": "mean", "edges": "ods"}
Task = Literal["seg", "depth", "normals", "edges"]


class MTMLConfig(Config):
    """Everything notebook 03 and ``python -m nbmodule.mtml`` need (YAML files in configs/mtml/)."""

    # what to run (the CLI's verbs pick the mode; the notebook runs single, mtl and mtml)
    mode: Literal["single", "mtl", "mtml", "meta_test"] = "mtml"
    seed: int = 0
    device: str = "auto"
    # data
    dataset: Literal["nyuv2", "nyuv2_13", "taskonomy"] = "nyuv2"  # nyuv2_13: MTAN's 13-class .npy layout
    synthetic: bool = True            # synthetic scenes (data_prep.scenes) instead of the real dataset
    scale: Literal["smoke", "cpu", "full"] = "cpu"  # size of the synthetic set generated when missing
    data_path: str = ""               # explicit dataset folder; "" = <data root>/[synthetic/]<dataset>
    layout: Literal["auto", "nyud_mt", "mtan"] = "auto"
    image_size: tuple[int, int] | None = None  # (H, W) to resize to; None = stored size
    train_split: str = "train"
    val_split: str = "val"            # curves of the held-out task (real NYU-v2 has no val: use "val" = test)
    test_split: str = "test"          # the table
    cache: bool = True                # keep decoded samples in memory (small sets only)
    # tasks
    tasks: list[Task] = Field(default_factory=lambda: ["seg", "depth", "normals", "edges"])
    held_out: Task | Literal[""] = "normals"  # meta-tested task ("" = none)
    # model
    backbone: Literal["resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large"] = \
        "mobilenet_v3_small"
    pretrained: bool = False          # ImageNet weights for the encoder (needs a download)
    head_width: int = Field(32, gt=0)
    # optimisation (single, mtl, and the outer loop of mtml)
    batch_size: int = Field(8, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    steps: int = Field(200, gt=0)     # single-task and multi-task training steps
    weighting: Literal["uniform", "uncertainty"] = "uniform"
    amp: bool = False                 # mixed precision (CUDA only; meta-training stays fp32)
    # meta-learning
    meta_steps: int = Field(100, gt=0)  # outer steps
    inner_lr: float = Field(0.01, gt=0)
    inner_steps: int = Field(1, ge=1)
    first_order: bool = True
    min_subset: int = Field(2, ge=1)  # smallest task subset adapted on (the seed: 2)
    # meta-testing / fine-tuning the held-out task
    finetune_steps: int = Field(200, gt=0)
    finetune_lr: float = Field(1e-3, gt=0)
    finetune_encoder: bool = True     # False: only the new head is trained
    pretrained_run: str = ""          # meta_test: the trained model's phase folder
    task: Task | Literal[""] = ""     # meta_test: the task to attach or fine-tune
    # evaluation, checkpoints
    eval_every: int = Field(10, gt=0)
    eval_batches: int = Field(0, ge=0)  # val batches per curve point (0 = whole split)
    checkpoint_every: int = Field(50, gt=0)
    out: str = "runs/mtml"            # CLI run root (the notebook uses its own run folder)
    name: str = ""                    # CLI run name ("" = the mode)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or not v:
            raise ValueError(f"tasks must be a non-empty list without repeats, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "MTMLConfig":
        if self.held_out and self.held_out not in self.tasks:
            raise ValueError(f"held_out={self.held_out!r} must be one of tasks {self.tasks}")
        if (self.dataset == "nyuv2_13" or self.layout == "mtan") and "edges" in self.tasks:
            raise ValueError("the MTAN .npy layout (nyuv2_13) has no edges: remove 'edges' from tasks")
        if self.mode == "meta_test" and not (self.pretrained_run and self.task):
            raise ValueError("mode='meta_test' needs pretrained_run (a trained model's folder) and task")
        return self

    @property
    def train_tasks(self) -> list[str]:
        return [t for t in self.tasks if t != self.held_out]


# --- data --------------------------------------------------------------------------------------------
def prepare_data(cfg: MTMLConfig, data_root: str | Path | None = None) -> Path:
    """The dataset folder: ``cfg.data_path`` as given; real data downloaded (mirrors in order) unless already
    prepared; synthetic scenes (at ``cfg.scale``) written when missing or written at another scale."""
    import json

    from data_prep.registry import prepare

    from ..env import data_root as _root

    if cfg.data_path:
        return Path(cfg.data_path)
    if not cfg.synthetic:
        return prepare(cfg.dataset, _root(data_root) / cfg.dataset)
    dest = _root(data_root) / "synthetic" / cfg.dataset
    meta = dest / "SYNTHETIC.json"
    current = json.loads(meta.read_text()) if meta.is_file() else {}
    if current.get("scale") != cfg.scale or current.get("seed") != 0:
        prepare(cfg.dataset, dest, synthetic=True, seed=0, force=True, scale=cfg.scale)
    return dest


def load_data(cfg: MTMLConfig, root: Path, split: str):
    """The dataset of ``split`` (NYU-v2 layouts or Taskonomy) giving the sample dicts of :mod:`nbmodule.data.nyuv2`."""
    if cfg.dataset in ("nyuv2", "nyuv2_13"):
        from ..data.nyuv2 import NYUDv2

        return NYUDv2(root, split, tasks=cfg.tasks, size=cfg.image_size, layout=cfg.layout, cache=cfg.cache)
    from ..data.taskonomy import Taskonomy

    return Taskonomy(root, split, tasks=cfg.tasks, size=cfg.image_size, cache=cfg.cache)


def out_channels(task: str, num_classes: int) -> int:
    return {"seg": num_classes, "depth": 1, "normals": 3, "edges": 1}[task]


def collate(samples: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]).to(device, non_blocking=True) for k in samples[0]}


class BatchStream:
    """Endless shuffled batches (epochs without replacement) from a seeded generator; resumable via
    :meth:`state_dict` (the generator state, the epoch's permutation and the position in it)."""

    def __init__(self, data, batch_size: int, seed: int, device: torch.device):
        self.data, self.batch_size, self.device = data, min(batch_size, len(data)), device
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(data), generator=self.gen)
        self.pos = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.data), generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size].tolist()
        self.pos += self.batch_size
        return collate([self.data[i] for i in idx], self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


# --- losses and evaluation ---------------------------------------------------------------------------
def task_loss(task: str, out: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of one task: CE (ignore 255), L1 on valid depth, 1 - cos on valid normals,
    class-balanced BCE on edges."""
    out = out.float()
    if task == "seg":
        return seg_loss(out, batch["seg"], IGNORE_INDEX)
    if task == "depth":
        return depth_l1_loss(out, batch["depth"], batch["depth_mask"])
    if task == "normals":
        return normals_cosine_loss(out, batch["normals"], batch["normals_mask"])
    if task == "edges":
        return balanced_bce_loss(out, batch["edges"])
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def _edge_tolerance(shape: Sequence[int]) -> int:
    """BSDS's matching distance, 0.0075 of the image diagonal, in whole pixels (at least 1)."""
    return max(1, round(0.0075 * math.hypot(shape[-2], shape[-1])))


@torch.no_grad()
def evaluate(model: nn.Module, data, tasks: Sequence[str], *, device: torch.device, batch_size: int = 16,
             num_classes: int = 40, max_batches: int = 0) -> dict[str, dict[str, float]]:
    """Metrics of ``tasks`` over ``data`` (the first ``max_batches`` batches, 0 = all): ``{task: {metric: value}}``."""
    was_training = model.training
    model.eval()
    meters: dict[str, Any] = {}
    n_batches = math.ceil(len(data) / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        batch = collate([data[i] for i in range(b * batch_size, min(len(data), (b + 1) * batch_size))], device)
        out = model(batch["image"], tasks=list(tasks))
        for t in tasks:
            o = out[t].float()
            if t == "seg":
                meters.setdefault(t, ConfusionMatrix(num_classes, IGNORE_INDEX)).update(o.argmax(1), batch["seg"])
            elif t == "depth":
                meters.setdefault(t, DepthMeter()).update(o, batch["depth"], batch["depth_mask"])
            elif t == "normals":
                meters.setdefault(t, NormalsMeter()).update(o, batch["normals"], batch["normals_mask"])
            elif t == "edges":
                meters.setdefault(t, EdgeMeter(49, _edge_tolerance(o.shape))).update(o.sigmoid(), batch["edges"])
    model.train(was_training)
    res = {}
    for t, m in meters.items():
        if t == "seg":
            res[t] = {"miou": 100.0 * m.miou(), "pixel_acc": 100.0 * m.pixel_accuracy()}
        elif t == "edges":
            res[t] = {"ods": m.compute()["ods"]}
        else:
            res[t] = m.compute()
    return res


def steps_to_target(rows: Sequence[Mapping[str, Any]], column: str, target: float, lower_is_better: bool) -> int | None:
    """The first ``step`` whose ``column`` reaches ``target`` (<= when lower is better), else None."""
    for r in sorted(rows, key=lambda r: r["step"]):
        v = r[column]
        if v is not None and math.isfinite(v) and (v <= target if lower_is_better else v >= target):
            return int(r["step"])
    return None


def task_subsets(tasks: Sequence[str], min_size: int = 2) -> list[tuple[str, ...]]:
    """Every subset of ``tasks`` with at least ``min_size`` tasks (11 for four tasks and ``min_size=2``).
    With fewer tasks than ``min_size``, the one subset of all tasks."""
    subs = [c for k in range(min_size, len(tasks) + 1) for c in itertools.combinations(tasks, k)]
    return subs or [tuple(tasks)]


# --- training phases ---------------------------------------------------------------------------------
def _model_from_spec(spec: Mapping[str, Any], device: torch.device) -> nn.Module:
    return build_model("mtl", **spec).to(device)


def load_phase_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The trained model of a phase folder (``checkpoints/final.pt``, else ``last.pt``) and its checkpoint."""
    run = RunDir(folder)
    state = run.load_checkpoint("final") or run.load_checkpoint("last")
    if state is None:
        raise FileNotFoundError(f"{folder} holds no checkpoints/final.pt or last.pt: not a trained model folder")
    model = _model_from_spec(state["spec"], torch.device(device))
    model.load_state_dict(state["model"])
    return model, state


class _Phase:
    """Checkpoint/resume bookkeeping shared by the training loops of one phase folder."""

    def __init__(self, run: RunDir, name: str):
        self.run = run.sub("phases").sub(name)
        self.name = name

    def resume(self, model: nn.Module) -> dict | None:
        """The finished phase's state, loaded into ``model``; None when the phase has not finished."""
        final = self.run.load_checkpoint("final")
        if final is not None:
            model.load_state_dict(final["model"])
        return final

    def finish(self, model: nn.Module, curve: list, train_rows: list, extra: Mapping[str, Any]) -> dict:
        state = {"model": model.state_dict(), "spec": model.spec(), "curve": curve, "train_rows": train_rows, **extra}
        self.run.save_checkpoint(state, "final")
        return state


def _optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train_dense(cfg: MTMLConfig, run: RunDir, phase: str, model: nn.Module, tasks: Sequence[str], train_data,
                *, steps: int, lr: float, device: torch.device, curve_task: str | None = None, val_data=None,
                num_classes: int = 40, weighting: str = "uniform", trainable: Sequence[torch.Tensor] | None = None,
                seed: int = 0, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train ``model`` on ``tasks`` for ``steps`` steps (weighted sum of task losses), checkpointing into
    ``run/phases/<phase>``. With ``curve_task``, ``val_data`` is scored on that task's primary metric at step 0
    and every ``eval_every`` steps. Returns the model and the final state (``curve``, ``train_rows``, ``train_s``)."""
    ph = _Phase(run, phase)
    final = ph.resume(model)
    if final is not None:
        return model, final
    model.to(device).train()
    params = list(trainable) if trainable is not None else list(model.parameters())
    log_vars = torch.zeros(len(tasks), device=device, requires_grad=True)
    opt = _optimizer(params + ([log_vars] if weighting == "uncertainty" else []), lr, cfg.weight_decay)
    stream = BatchStream(train_data, cfg.batch_size, seed, device)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, curve, rows, elapsed = 0, [], [], 0.0
    last = ph.run.load_checkpoint("last")
    if last is not None:
        model.load_state_dict(last["model"])
        opt.load_state_dict(last["opt"])
        with torch.no_grad():
            log_vars.copy_(last["log_vars"])
        stream.load_state_dict(last["stream"])
        torch.set_rng_state(last["rng"])
        step, curve, rows, elapsed = last["step"], last["curve"], last["train_rows"], last["train_s"]
    running = last["running"] if last is not None else 0.0  # loss summed since the last logged row
    metric = PRIMARY.get(curve_task or "", "")

    def score(at: int) -> None:
        res = evaluate(model, val_data, [curve_task], device=device, batch_size=max(cfg.batch_size, 16),
                       num_classes=num_classes, max_batches=cfg.eval_batches)
        curve.append({"step": at, f"val_{metric}": res[curve_task][metric]})

    if curve_task and step == 0 and not curve:
        score(0)
    bar = progress_bar(total=steps, desc=phase, enabled=progress, initial=step)
    t0 = time.perf_counter()
    while step < steps:
        batch = next(stream)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            out = model(batch["image"], tasks=list(tasks))
        losses = torch.stack([task_loss(t, out[t], batch) for t in tasks])
        if weighting == "uncertainty":  # Kendall et al. 2018, as in LibMTL: L/(2 s^2) + log s
            loss = (losses / (2 * log_vars.exp()) + log_vars / 2).sum()
        else:
            loss = losses.sum()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step += 1
        running += float(loss.detach())
        if step % cfg.eval_every == 0 or step == steps:
            rows.append({"step": step, "train_loss": running / (cfg.eval_every if step % cfg.eval_every == 0
                                                                 else step % cfg.eval_every)})
            running = 0.0
            if curve_task:
                score(step)
            bar.set_postfix(loss=f"{rows[-1]['train_loss']:.3f}")
        bar.update(1)
        if step % cfg.checkpoint_every == 0 and step < steps:
            ph.run.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "log_vars": log_vars.detach(),
                                    "stream": stream.state_dict(), "rng": torch.get_rng_state(), "step": step,
                                    "curve": curve, "train_rows": rows, "running": running,
                                    "train_s": elapsed + time.perf_counter() - t0}, "last")
    bar.close()
    elapsed += time.perf_counter() - t0
    state = ph.finish(model, curve, rows, {"train_s": elapsed, "log_vars": log_vars.detach().cpu()})
    return model, state


@contextmanager
def _batch_stats_only(model: nn.Module):
    """BatchNorm normalises with batch statistics and leaves its running buffers alone (inside
    ``torch.func.grad`` an in-place buffer update is not allowed, and support passes should not move them)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


class _SubsetView(nn.Module):
    """``model`` restricted to some heads, so the functional calls of ``adapt`` run only those heads."""

    def __init__(self, model: nn.Module, tasks: Sequence[str]):
        super().__init__()
        self.net = model
        self.tasks = tuple(tasks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(x, tasks=self.tasks)


def _subset_loss(tasks: Sequence[str]) -> Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], torch.Tensor]:
    def loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(task_loss(t, out[t], batch) for t in tasks)
    return loss


def meta_train(cfg: MTMLConfig, run: RunDir, phase: str, model: nn.Module, tasks: Sequence[str], train_data, *,
               device: torch.device, seed: int = 0, progress: bool = True) -> tuple[nn.Module, dict]:
    """Meta multi-task training (see the module docstring) for ``cfg.meta_steps`` outer steps."""
    ph = _Phase(run, phase)
    final = ph.resume(model)
    if final is not None:
        return model, final
    model.to(device).train()
    subsets = task_subsets(tasks, cfg.min_subset)
    opt = _optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    support = BatchStream(train_data, cfg.batch_size, seed, device)
    query = BatchStream(train_data, cfg.batch_size, seed + 7919, device)
    step, rows, elapsed = 0, [], 0.0
    last = ph.run.load_checkpoint("last")
    if last is not None:
        model.load_state_dict(last["model"])
        opt.load_state_dict(last["opt"])
        support.load_state_dict(last["support"])
        query.load_state_dict(last["query"])
        torch.set_rng_state(last["rng"])
        step, rows, elapsed = last["step"], last["train_rows"], last["train_s"]
    running = last["running"] if last is not None else 0.0
    bar = progress_bar(total=cfg.meta_steps, desc=phase, enabled=progress, initial=step)
    t0 = time.perf_counter()
    while step < cfg.meta_steps:
        xs, xq = next(support), next(query)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for sub in subsets:
            view = _SubsetView(model, sub)
            heads = tuple(f"net.heads.{t}." for t in sub)
            params = {k: p for k, p in view.named_parameters() if k.startswith("net.encoder.") or k.startswith(heads)}
            loss_fn = _subset_loss(sub)
            with _batch_stats_only(model):
                fast = adapt(view, params, xs["image"], xs, loss_fn, steps=cfg.inner_steps, inner_lr=cfg.inner_lr,
                             first_order=cfg.first_order)
            q = torch.func.functional_call(view, fast, (xq["image"],))
            qloss = loss_fn(q, xq) / len(subsets)
            qloss.backward()  # accumulates the meta-gradient of this episode into the initial weights
            total += float(qloss.detach())
        opt.step()
        step += 1
        running += total
        if step % cfg.eval_every == 0 or step == cfg.meta_steps:
            n = cfg.eval_every if step % cfg.eval_every == 0 else step % cfg.eval_every
            rows.append({"step": step, "train_loss": running / n})
            running = 0.0
            bar.set_postfix(query_loss=f"{rows[-1]['train_loss']:.3f}")
        bar.update(1)
        if step % cfg.checkpoint_every == 0 and step < cfg.meta_steps:
            ph.run.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "support": support.state_dict(),
                                    "query": query.state_dict(), "rng": torch.get_rng_state(), "step": step,
                                    "train_rows": rows, "running": running,
                                    "train_s": elapsed + time.perf_counter() - t0}, "last")
    bar.close()
    elapsed += time.perf_counter() - t0
    state = ph.finish(model, [], rows, {"train_s": elapsed, "subsets": [list(s) for s in subsets]})
    return model, state


def adapted_copy(cfg: MTMLConfig, model: nn.Module, tasks: Sequence[str], train_data, *, device: torch.device,
                 seed: int = 0) -> nn.Module:
    """A copy of a meta-trained ``model`` after its test-time adaptation: ``cfg.inner_steps`` inner steps
    (``cfg.inner_lr``) on one training support batch of all ``tasks``, exactly as in meta-training. A MAML
    initialisation is trained to be good *after* this step, so this is how its training tasks are scored."""
    view = _SubsetView(model, tasks)
    heads = tuple(f"net.heads.{t}." for t in tasks)
    params = {k: p for k, p in view.named_parameters() if k.startswith("net.encoder.") or k.startswith(heads)}
    batch = next(BatchStream(train_data, cfg.batch_size, seed, device))
    model.train()
    with _batch_stats_only(model):
        fast = adapt(view, params, batch["image"], batch, _subset_loss(tasks), steps=cfg.inner_steps,
                     inner_lr=cfg.inner_lr, first_order=True)
    out = copy.deepcopy(model)
    with torch.no_grad():
        named = dict(out.named_parameters())
        for k, v in fast.items():
            named[k.removeprefix("net.")].copy_(v)
    return out


def finetune(cfg: MTMLConfig, run: RunDir, phase: str, model: nn.Module, task: str, train_data, val_data, *,
             device: torch.device, num_classes: int, seed: int = 0, progress: bool = True) -> tuple[nn.Module, dict]:
    """Meta-testing: attach ``task`` to ``model`` (unless it has that head) and fine-tune it with a curve."""
    if task not in model.heads:
        gen_state = torch.get_rng_state()
        torch.manual_seed(seed + 104729)  # the new head's initialisation does not depend on earlier phases
        model.add_task(task, out_channels(task, num_classes))
        torch.set_rng_state(gen_state)
    trainable = (list(model.parameters()) if cfg.finetune_encoder else list(model.heads[task].parameters()))
    return train_dense(cfg, run, phase, model, [task], train_data, steps=cfg.finetune_steps, lr=cfg.finetune_lr,
                       device=device, curve_task=task, val_data=val_data, num_classes=num_classes,
                       trainable=trainable, seed=seed, progress=progress)


# --- the study (notebook 03) -------------------------------------------------------------------------
def _flat(prefix: str, res: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {f"{prefix}_{t}_{m}": v for t, ms in res.items() for m, v in ms.items()}


def run_study(cfg: MTMLConfig, run: RunDir, *, device: torch.device, data_root: str | Path | None = None,
              progress: bool = True, n_examples: int = 4) -> dict[str, Any]:
    """Single-task baselines, MTL and MTML on the training tasks, meta-testing of the held-out task from
    each (and from scratch = the single-task curve), test metrics, Δm and steps to target. Writes the run
    folder described in the module docstring and returns ``metrics.json``'s content."""
    torch.manual_seed(cfg.seed)
    run.save_config(cfg, seed=cfg.seed, device=str(device))
    root = prepare_data(cfg, data_root)
    train, val, test_ = (load_data(cfg, root, s) for s in (cfg.train_split, cfg.val_split, cfg.test_split))
    ncls = train.num_classes
    spec = {"backbone": cfg.backbone, "pretrained": cfg.pretrained, "head_width": cfg.head_width}
    ev = dict(device=device, batch_size=max(cfg.batch_size, 16), num_classes=ncls)
    held = cfg.held_out
    results: dict[str, dict[str, dict[str, float]]] = {}
    curves: dict[str, list] = {}
    train_rows: list[dict] = []
    metrics: dict[str, Any] = {}
    models: dict[str, dict[str, nn.Module]] = {"single": {}, "mtl": {}, "mtml": {}}

    def fresh(tasks: Sequence[str], salt: int) -> nn.Module:
        torch.manual_seed(cfg.seed * 1000 + salt)  # each phase's initialisation is fixed by the seed alone
        return build_model("mtl", tasks={t: out_channels(t, ncls) for t in tasks}, **spec).to(device)

    # 1. single-task models (the held-out one records the from-scratch curve)
    results["single"] = {}
    for i, t in enumerate(cfg.tasks):
        steps = cfg.finetune_steps if t == held else cfg.steps
        m, st = train_dense(cfg, run, f"single_{t}", fresh([t], i), [t], train, steps=steps, lr=cfg.lr,
                            device=device, curve_task=t if t == held else None, val_data=val, num_classes=ncls,
                            seed=cfg.seed * 1000 + i, progress=progress)
        results["single"][t] = evaluate(m, test_, [t], **ev)[t]
        train_rows += [{"run": f"single_{t}", "seed": cfg.seed, **r} for r in st["train_rows"]]
        metrics["single_train_s"] = metrics.get("single_train_s", 0.0) + st["train_s"]
        models["single"][t] = m
        if t == held:
            curves["single"] = st["curve"]
    # 2. multi-task and meta multi-task models on the training tasks, then meta-testing on the held-out task
    for mode in ("mtl", "mtml"):
        base = fresh(cfg.train_tasks, 100 if mode == "mtl" else 200)
        if mode == "mtl":
            m, st = train_dense(cfg, run, "mtl", base, cfg.train_tasks, train, steps=cfg.steps, lr=cfg.lr, device=device,
                                num_classes=ncls, weighting=cfg.weighting, seed=cfg.seed * 1000 + 100, progress=progress)
        else:
            m, st = meta_train(cfg, run, "mtml", base, cfg.train_tasks, train, device=device,
                               seed=cfg.seed * 1000 + 200, progress=progress)
        train_rows += [{"run": mode, "seed": cfg.seed, **r} for r in st["train_rows"]]
        metrics[f"{mode}_train_s"] = st["train_s"]
        scored = m if mode == "mtl" else adapted_copy(cfg, m, cfg.train_tasks, train, device=device,
                                                         seed=cfg.seed * 1000 + 400)
        results[mode] = evaluate(scored, test_, cfg.train_tasks, **ev)
        models[mode] = {t: scored for t in cfg.train_tasks}
        if held:
            ft, fst = finetune(cfg, run, f"{mode}_ft_{held}", copy.deepcopy(m), held, train, val, device=device,
                               num_classes=ncls,
                               seed=cfg.seed * 1000 + 300, progress=progress)
            results[mode][held] = evaluate(ft, test_, [held], **ev)[held]
            curves[mode] = fst["curve"]
            train_rows += [{"run": f"{mode}_ft_{held}", "seed": cfg.seed, **r} for r in fst["train_rows"]]
            metrics[f"{mode}_finetune_s"] = fst["train_s"]
            models[mode][held] = ft
    # 3. metrics.json: tables, Δm, steps to target
    for mode, res in results.items():
        metrics.update(_flat(mode, res))
        try:
            metrics[f"{mode}_delta_m"] = 0.0 if mode == "single" else delta_m(res, results["single"])
        except ValueError as err:  # a zero baseline (e.g. mIoU 0 after a few smoke steps) has no relative change
            print(f"[mtml] {mode}_delta_m is null: {err}")
            metrics[f"{mode}_delta_m"] = None
    if held:
        metric = PRIMARY[held]
        lower = DENSE_METRICS[held][metric]
        target = curves["single"][-1][f"val_{metric}"]
        metrics["heldout_target"] = target
        metrics["heldout_finetune_steps"] = cfg.finetune_steps
        for mode in ("single", "mtl", "mtml"):
            metrics[f"{mode}_steps_to_target"] = steps_to_target(curves[mode], f"val_{metric}", target, lower)
        run.write_curve("heldout", [{"run": mode, "seed": cfg.seed, **r} for mode in ("single", "mtl", "mtml")
                                    for r in curves[mode]])
    else:
        for mode in ("single", "mtl", "mtml"):
            metrics[f"{mode}_steps_to_target"] = None
    metrics["encoder_pretrained"] = int(cfg.pretrained)
    run.write_curve("train", train_rows)
    _save_examples(run, models, test_, cfg.tasks, device, n_examples)
    return run.write_metrics(metrics)


@torch.no_grad()
def _save_examples(run: RunDir, models: Mapping[str, Mapping[str, nn.Module]], data, tasks: Sequence[str],
                   device: torch.device, n: int) -> None:
    batch = collate([data[i] for i in range(min(n, len(data)))], device)
    preds: dict[str, dict[str, torch.Tensor]] = {}
    for mode, per_task in models.items():
        preds[mode] = {}
        for t in tasks:
            if t in per_task:
                m = per_task[t]
                was = m.training
                m.eval()
                o = m(batch["image"], tasks=[t])[t].float()
                m.train(was)
                preds[mode][t] = (o.argmax(1) if t == "seg" else o.sigmoid() if t == "edges" else o).cpu()
    targets = {k: v.cpu() for k, v in batch.items()}
    torch.save({"batch": targets, "preds": preds, "tasks": list(tasks)}, run.path / "examples.pt")


# --- CLI entry points --------------------------------------------------------------------------------
def run_mode(cfg: MTMLConfig, run: RunDir, *, device: torch.device, data_root: str | Path | None = None,
             progress: bool = True) -> dict[str, Any]:
    """One mode of the CLI (``train``/``meta-train``/``meta-test``): trains into ``run`` and writes its
    test metrics (``{mode}_{task}_{metric}``) to ``run/metrics.json``."""
    torch.manual_seed(cfg.seed)
    run.save_config(cfg, seed=cfg.seed, device=str(device))
    root = prepare_data(cfg, data_root)
    train, val, test_ = (load_data(cfg, root, s) for s in (cfg.train_split, cfg.val_split, cfg.test_split))
    ncls = train.num_classes
    ev = dict(device=device, batch_size=max(cfg.batch_size, 16), num_classes=ncls)
    spec = {"backbone": cfg.backbone, "pretrained": cfg.pretrained, "head_width": cfg.head_width}
    metrics: dict[str, Any] = {}
    if cfg.mode == "single":
        for i, t in enumerate(cfg.tasks):
            torch.manual_seed(cfg.seed * 1000 + i)
            model = build_model("mtl", tasks={t: out_channels(t, ncls)}, **spec).to(device)
            m, st = train_dense(cfg, run, f"single_{t}", model, [t], train, steps=cfg.steps, lr=cfg.lr, device=device,
                                curve_task=t, val_data=val, num_classes=ncls, seed=cfg.seed * 1000 + i, progress=progress)
            metrics.update(_flat("single", {t: evaluate(m, test_, [t], **ev)[t]}))
            run.write_curve(f"val_{t}", [{"run": f"single_{t}", "seed": cfg.seed, **r} for r in st["curve"]])
    elif cfg.mode in ("mtl", "mtml"):
        torch.manual_seed(cfg.seed * 1000 + 100)
        tasks = cfg.train_tasks
        model = build_model("mtl", tasks={t: out_channels(t, ncls) for t in tasks}, **spec).to(device)
        if cfg.mode == "mtl":
            m, st = train_dense(cfg, run, "mtl", model, tasks, train, steps=cfg.steps, lr=cfg.lr, device=device,
                                num_classes=ncls, weighting=cfg.weighting, seed=cfg.seed * 1000 + 100, progress=progress)
        else:
            m, st = meta_train(cfg, run, "mtml", model, tasks, train, device=device, seed=cfg.seed * 1000 + 100,
                               progress=progress)
            m = adapted_copy(cfg, m, tasks, train, device=device, seed=cfg.seed * 1000 + 400)
        metrics.update(_flat(cfg.mode, evaluate(m, test_, tasks, **ev)))
        run.write_curve("train", [{"run": cfg.mode, "seed": cfg.seed, **r} for r in st["train_rows"]])
    else:  # meta_test
        model, state = load_phase_model(cfg.pretrained_run, device)
        m, st = finetune(cfg, run, f"ft_{cfg.task}", model, cfg.task, train, val, device=device, num_classes=ncls,
                         seed=cfg.seed * 1000 + 300, progress=progress)
        metrics.update(_flat("meta_test", {cfg.task: evaluate(m, test_, [cfg.task], **ev)[cfg.task]}))
        run.write_curve(f"val_{cfg.task}", [{"run": f"ft_{cfg.task}", "seed": cfg.seed, **r} for r in st["curve"]])
    return run.write_metrics(metrics)


def test(folder: str | Path, *, split: str = "", device: torch.device | str = "cpu",
         data_path: str = "", data_root: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the trained model of any phase folder on ``split`` (default: its config's test split).

    The folder's nearest ``config.json`` (the phase's run folder) says where its data is; writes
    ``test_metrics.json`` into the folder and returns ``{task: {metric: value}}``.
    """
    folder = Path(folder)
    model, _ = load_phase_model(folder, device)
    cfg_file = next((p / "config.json" for p in [folder, *folder.parents] if (p / "config.json").is_file()), None)
    if cfg_file is None:
        raise FileNotFoundError(f"no config.json in {folder} or its parents: cannot tell which data it was trained on")
    import json

    values = json.loads(cfg_file.read_text())["config"]
    if data_path:
        values["data_path"] = data_path
    cfg = MTMLConfig.model_validate({**values, "mode": "mtml", "pretrained_run": "", "task": ""})
    root = prepare_data(cfg, data_root)
    data = load_data(cfg, root, split or cfg.test_split)
    res = evaluate(model, data, list(model.tasks), device=torch.device(device), batch_size=16,
                   num_classes=data.num_classes)
    RunDir(folder).write_json("test_metrics.json", res)
    return res
