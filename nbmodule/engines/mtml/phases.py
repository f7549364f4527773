"""The checkpointed training phases of the MTML study: dense (single-task, multi-task, fine-tuning) and meta
multi-task training, each on :meth:`nbmodule.runs.RunDir.checkpointer` (one resume mechanism).

A phase's checkpoint ``checkpoints/<phase>.pt`` holds the model, the optimiser, the data stream, the logged
rows and the config it was made with: a re-run with the same settings resumes (a finished phase is read
back, not retrained) and ends with the same numbers; a re-run with other settings is refused naming the
fields. The finished checkpoint keeps the model and its ``spec``, so it is also the model file that
``mode: meta-test`` / ``mode: test`` take as ``init_model``.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ...config import ConfigError
from ...meta import adapt
from ...models import build_model
from ...progress import progress_bar
from ...runs import RunDir, check_finite, verify_archive
from .config import MtmlConfig
from .data import BatchStream, Splits
from .evaluate import autocast, curve_metric, evaluate, recalibrated, task_loss

__all__ = ["PhaseResult", "Curve", "out_channels", "fresh_model", "train_dense", "task_subsets", "episode_loss",
           "meta_train", "meta_passes_per_step", "adapted_copy", "finetune", "load_trained", "file_sha256"]


def out_channels(task: str, num_classes: int) -> int:
    return {"seg": num_classes, "depth": 1, "normals": 3, "edges": 1}[task]


def fresh_model(cfg: MtmlConfig, tasks: Sequence[str], num_classes: int, seed: int, device: torch.device) -> nn.Module:
    """A new model for ``tasks`` whose initialisation depends on ``seed`` alone (not on earlier phases)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("mtl", tasks={t: out_channels(t, num_classes) for t in tasks}, backbone=cfg.backbone,
                            pretrained=cfg.pretrained, head_width=cfg.head_width)
    return model.to(device)


@dataclass
class Curve:
    """What a phase scores along its way: ``task``'s curve metric (:func:`curve_metric`) on ``val`` (and
    ``test``) every ``eval_every`` steps and at step 0, with BatchNorm statistics re-estimated on ``bn`` (training
    images; empty: the running statistics) for the weights of that step."""

    task: str
    val: Dataset
    test: Dataset | None
    num_classes: int
    bn: Sequence[torch.Tensor] = ()


@dataclass
class PhaseResult:
    model: nn.Module
    train_rows: list[dict[str, Any]]
    curve: list[dict[str, Any]]
    train_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    image_passes: int = 0  # images through a forward and a backward pass (the compute budget)


def _optimizer(params, cfg: MtmlConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def _checkpointer(run: RunDir, name: str, cfg: MtmlConfig, extra: Mapping[str, Any] | None = None):
    config = {**cfg.to_dict(), **(extra or {})}
    return run.checkpointer(name, config=config, neutral=cfg.NEUTRAL, resumable=cfg.RESUMABLE)


def _score(model: nn.Module, curve: Curve, cfg: MtmlConfig, device: torch.device, step: int) -> dict[str, Any]:
    metric, _ = curve_metric(curve.task)
    model = recalibrated(model, curve.bn, device)
    kw = dict(device=device, batch_size=max(cfg.batch_size, 16), num_classes=curve.num_classes,
              max_batches=cfg.eval_batches, amp=cfg.amp, boundary="proxy")
    row: dict[str, Any] = {"step": step,
                           f"val_{metric}": evaluate(model, curve.val, [curve.task], **kw)[curve.task][metric]}
    if curve.test is not None:
        row[f"test_{metric}"] = evaluate(model, curve.test, [curve.task], **kw)[curve.task][metric]
    return row


def train_dense(cfg: MtmlConfig, run: RunDir, phase: str, model: nn.Module, tasks: Sequence[str], train_data: Dataset,
                *, steps: int, lr: float, device: torch.device, seed: int, weighting: str = "uniform",
                trainable: Sequence[torch.Tensor] | None = None, curve: Curve | None = None,
                progress: bool = True, check: Mapping[str, Any] | None = None) -> PhaseResult:
    """Train ``model`` on the summed (or uncertainty-weighted) losses of ``tasks`` for ``steps`` AdamW steps at
    a constant ``lr``, resuming from / checkpointing to ``checkpoints/<phase>.pt``. ``curve``: a task scored
    on validation (and test) at step 0 and every ``eval_every`` steps. ``check``: values beyond the config
    that the checkpoint must match (e.g. the initial model's digest)."""
    model.to(device).train()
    params = list(trainable) if trainable is not None else list(model.parameters())
    log_vars = torch.zeros(len(tasks), device=device, requires_grad=True)
    opt = _optimizer(params + ([log_vars] if weighting == "uncertainty" else []), cfg, lr)
    stream = BatchStream(train_data, cfg.batch_size, seed, device)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    ck = _checkpointer(run, phase, cfg, check)
    st: dict[str, Any] = {"curve": [], "train_rows": [], "running": 0.0, "train_s": 0.0, "image_passes": 0}
    saved = ck.load()
    if saved is not None:
        model.load_state_dict(saved["model"])
        with torch.no_grad():
            log_vars.copy_(saved["log_vars"])
        st = {k: saved[k] for k in st}
        if ck.done:
            return PhaseResult(model, st["train_rows"], st["curve"], st["train_s"], {"log_vars": saved["log_vars"]},
                               st["image_passes"])
        opt.load_state_dict(saved["opt"])
        stream.load_state_dict(saved["stream"])
        scaler.load_state_dict(saved["scaler"])
    clock = [time.perf_counter()]

    def state() -> dict[str, Any]:
        st["train_s"] += time.perf_counter() - clock[0]
        clock[0] = time.perf_counter()
        out = {"model": model.state_dict(), "spec": model.spec(), "log_vars": log_vars.detach().cpu(), **st}
        if ck_step[0] < steps:  # a finished phase keeps the model only
            out.update(opt=opt.state_dict(), stream=stream.state_dict(), scaler=scaler.state_dict())
        return out

    if curve is not None and not st["curve"]:
        st["curve"].append(_score(model, curve, cfg, device, 0))
    ck_step = [ck.step]
    bar = progress_bar(total=steps, desc=phase, enabled=progress, initial=ck.step)
    for step in ck.steps(steps, every=cfg.checkpoint_every, state=state):
        ck_step[0] = step
        batch = next(stream)
        with autocast(device, cfg.amp):
            out = model(batch["image"], tasks=list(tasks))
        losses = torch.stack([task_loss(t, out[t], batch) for t in tasks])
        if weighting == "uncertainty":  # Kendall et al. 2018, as in LibMTL: L / (2 s^2) + log s
            loss = (losses / (2 * log_vars.exp()) + log_vars / 2).sum()
        else:
            loss = losses.sum()
        check_finite(loss, step=step, what=f"the {phase} loss", run_dir=run)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        st["image_passes"] += int(batch["image"].shape[0])
        st["running"] += float(loss.detach())
        if step % cfg.eval_every == 0 or step == steps:
            n = cfg.eval_every if step % cfg.eval_every == 0 else step % cfg.eval_every
            st["train_rows"].append({"step": step, "train_loss": st["running"] / n})
            st["running"] = 0.0
            if curve is not None:
                st["curve"].append(_score(model, curve, cfg, device, step))
            bar.set_postfix(loss=f"{st['train_rows'][-1]['train_loss']:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    return PhaseResult(model, st["train_rows"], st["curve"], st["train_s"], {"log_vars": log_vars.detach().cpu()},
                       st["image_passes"])


# --- meta multi-task learning --------------------------------------------------------------------------
def task_subsets(tasks: Sequence[str], min_size: int = 2) -> list[tuple[str, ...]]:
    """Every subset of ``tasks`` with at least ``min_size`` tasks (11 for four tasks and ``min_size=2``).
    With fewer tasks than ``min_size``, the one subset of all tasks."""
    subs = [c for k in range(min_size, len(tasks) + 1) for c in itertools.combinations(tasks, k)]
    return subs or [tuple(tasks)]


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


def _adapted_params(model: nn.Module, subset: Sequence[str], support: Mapping[str, torch.Tensor], *, inner_lr: float,
                    inner_steps: int, first_order: bool) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    view = _SubsetView(model, subset)
    heads = tuple(f"net.heads.{t}." for t in subset)
    params = {k: p for k, p in view.named_parameters() if k.startswith("net.encoder.") or k.startswith(heads)}
    with _batch_stats_only(model):
        fast = adapt(view, params, support["image"], support, _subset_loss(subset), steps=inner_steps,
                     inner_lr=inner_lr, first_order=first_order)
    return view, fast


def episode_loss(model: nn.Module, subset: Sequence[str], support: Mapping[str, torch.Tensor],
                 query: Mapping[str, torch.Tensor], *, inner_lr: float, inner_steps: int,
                 first_order: bool) -> torch.Tensor:
    """One MTML episode: the shared encoder and ``subset``'s heads take ``inner_steps`` SGD steps (``inner_lr``)
    on the subset's summed ``support`` loss, functionally (fast weights are new tensors), and the subset's
    loss on ``query`` with the fast weights is returned, differentiable with respect to the model's own
    parameters (second order unless ``first_order``)."""
    view, fast = _adapted_params(model, subset, support, inner_lr=inner_lr, inner_steps=inner_steps,
                                 first_order=first_order)
    q = torch.func.functional_call(view, fast, (query["image"],))
    return _subset_loss(subset)(q, query)


def meta_passes_per_step(cfg: MtmlConfig, n_subsets: int, batch: int) -> int:
    """Images through a forward and a backward pass in one MTML outer step: per subset, ``inner_steps`` support
    passes (the inner gradient, first or second order) and one query pass, each of ``batch`` images."""
    return n_subsets * (cfg.inner_steps + 1) * batch


def meta_train(cfg: MtmlConfig, run: RunDir, phase: str, model: nn.Module, tasks: Sequence[str], train_data: Dataset,
               *, device: torch.device, seed: int = 0, progress: bool = True, lr: float | None = None,
               snapshots: Sequence[int] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Meta multi-task training for ``cfg.meta_steps`` outer AdamW steps (``lr``, default ``cfg.lrs[0]``,
    constant): each draws a support and a query batch from the training split and averages :func:`episode_loss`
    over every subset of at least ``cfg.min_subset`` of ``tasks``. BatchNorm running statistics follow the
    query passes only. ``snapshots``: outer steps whose weights are kept as well (the run stopped there, as the
    rate is constant). Returns the model and ``{"train_rows", "train_s", "subsets", "image_passes",
    "snapshots": {step: {"model": state_dict, "image_passes": int}}}``."""
    model.to(device).train()
    subsets = task_subsets(tasks, cfg.min_subset)
    opt = _optimizer(model.parameters(), cfg, cfg.lrs[0] if lr is None else lr)
    support = BatchStream(train_data, cfg.batch_size, seed, device)
    query = BatchStream(train_data, cfg.batch_size, seed + 7919, device)
    wanted = sorted({int(k) for k in snapshots})
    if any(not 1 <= k <= cfg.meta_steps for k in wanted):
        raise ValueError(f"snapshots {wanted} must lie in [1, meta_steps={cfg.meta_steps}]")
    ck = _checkpointer(run, phase, cfg, {"snapshots": wanted} if wanted else None)
    st: dict[str, Any] = {"train_rows": [], "running": 0.0, "train_s": 0.0, "image_passes": 0, "snapshots": {}}
    saved = ck.load()
    info = {"subsets": [list(s) for s in subsets]}
    if saved is not None:
        model.load_state_dict(saved["model"])
        st = {k: saved[k] for k in st}
        if ck.done:
            return model, {**st, **info}
        opt.load_state_dict(saved["opt"])
        support.load_state_dict(saved["support"])
        query.load_state_dict(saved["query"])
    clock = [time.perf_counter()]
    ck_step = [ck.step]

    def state() -> dict[str, Any]:
        st["train_s"] += time.perf_counter() - clock[0]
        clock[0] = time.perf_counter()
        out = {"model": model.state_dict(), "spec": model.spec(), **st}
        if ck_step[0] < cfg.meta_steps:
            out.update(opt=opt.state_dict(), support=support.state_dict(), query=query.state_dict())
        return out

    bar = progress_bar(total=cfg.meta_steps, desc=phase, enabled=progress, initial=ck.step)
    for step in ck.steps(cfg.meta_steps, every=cfg.checkpoint_every, state=state):
        ck_step[0] = step
        xs, xq = next(support), next(query)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for sub in subsets:
            qloss = episode_loss(model, sub, xs, xq, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
                                 first_order=cfg.first_order) / len(subsets)
            qloss.backward()  # the meta-gradient of this episode, accumulated into the initial weights
            total += float(qloss.detach())
            check_finite(total, step=step, what=f"the {phase} meta-loss", run_dir=run)
            st["image_passes"] += cfg.inner_steps * int(xs["image"].shape[0]) + int(xq["image"].shape[0])
        opt.step()
        if step in wanted:
            st["snapshots"][step] = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                                     "image_passes": st["image_passes"]}
        st["running"] += total
        if step % cfg.eval_every == 0 or step == cfg.meta_steps:
            n = cfg.eval_every if step % cfg.eval_every == 0 else step % cfg.eval_every
            st["train_rows"].append({"step": step, "train_loss": st["running"] / n})
            st["running"] = 0.0
            bar.set_postfix(query_loss=f"{st['train_rows'][-1]['train_loss']:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    return model, {**st, **info}


def adapted_copy(cfg: MtmlConfig, model: nn.Module, tasks: Sequence[str], train_data: Dataset, *,
                 device: torch.device, seed: int) -> nn.Module:
    """A copy of ``model`` after ``cfg.inner_steps`` SGD steps (``cfg.inner_lr``) on one training support batch
    of all ``tasks``: the "after k adaptation steps" score, applied identically to the MTL and MTML models
    (a MAML initialisation is trained to be good after this step, an MTL model is not)."""
    batch = next(BatchStream(train_data, cfg.batch_size, seed, device))
    was = model.training
    model.train()
    _, fast = _adapted_params(model, tasks, batch, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
                              first_order=True)
    model.train(was)
    out = copy.deepcopy(model)
    with torch.no_grad():
        named = dict(out.named_parameters())
        for k, v in fast.items():
            named[k.removeprefix("net.")].copy_(v)
    return out


def finetune(cfg: MtmlConfig, run: RunDir, phase: str, model: nn.Module, task: str, splits: Splits, *, lr: float,
             device: torch.device, seed: int, progress: bool = True, check: Mapping[str, Any] | None = None,
             bn: Sequence[torch.Tensor] = ()) -> PhaseResult:
    """Learn ``task`` from ``model`` (a copy; a new head when it has none, initialised from ``seed`` only) for
    ``cfg.finetune_steps`` AdamW steps at ``lr``, scoring the task on validation and test along the way (BatchNorm
    statistics re-estimated on the training images ``bn`` at each point, when given)."""
    model = copy.deepcopy(model)
    if task not in model.heads:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.add_task(task, out_channels(task, splits.num_classes))
    trainable = list(model.parameters()) if cfg.finetune_encoder else list(model.heads[task].parameters())
    return train_dense(cfg, run, phase, model, [task], splits.train, steps=cfg.finetune_steps, lr=lr, device=device,
                       seed=seed, trainable=trainable, progress=progress, check=check,
                       curve=Curve(task, splits.val, splits.test, splits.num_classes, bn))


# --- trained models as inputs -------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_trained(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any], Path]:
    """The model of a finished phase checkpoint (``<run folder>/checkpoints/<phase>.pt``, or a run folder holding
    exactly one) and the config it was trained with. Loaded with ``weights_only=True``: a file holding anything but tensors and plain values (a
    crafted pickle) is refused without running it."""
    path = Path(path).expanduser()
    if path.is_dir():  # a run folder: its one finished model, or a list to choose from
        found = sorted(p for p in (path / "checkpoints").glob("*.pt") if not p.name.endswith(".prev.pt"))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise ConfigError(f"init_model {str(path)!r} is a run folder with {len(found)} checkpoints ({names}); "
                              "name one file: init_model=<folder>/checkpoints/<phase>.pt")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"init_model {str(path)!r}: no such file; a trained model is "
                          "<run folder>/checkpoints/<phase>.pt of an mtml run (e.g. checkpoints/mtml_lr0.001.pt)")
    try:
        verify_archive(path)  # damaged bytes are refused, not loaded (torch.load does not check the CRCs)
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses every global that is not a tensor or a plain value
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"init_model {path} cannot be loaded safely (torch.load(weights_only=True) refused it: "
                          f"{first[:200]}); only checkpoints written by this study are accepted") from None
    state = blob.get("state") if isinstance(blob, dict) else None
    if not isinstance(state, dict) or "model" not in state or "spec" not in state:
        raise ConfigError(f"init_model {path} is not a model checkpoint of the mtml study (no model and spec)")
    if not blob.get("done"):
        raise ConfigError(f"init_model {path} is the checkpoint of an unfinished phase (step {blob.get('step')}); "
                          "finish that run first")
    spec = dict(state["spec"])
    model = build_model("mtl", **spec)
    model.load_state_dict(state["model"])
    return model.to(device), dict(blob.get("config") or {}), path
