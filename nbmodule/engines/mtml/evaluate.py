"""Losses, evaluation and the derived numbers of the MTML study (Δm, Δp, steps to target)."""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ...data.nyuv2 import IGNORE_INDEX, TASKS
from ...losses import balanced_bce_loss, depth_l1_loss, normals_cosine_loss, seg_loss
from ...metrics import (DELTA_M_METRICS, DENSE_METRICS, BoundaryMeter, ConfusionMatrix, DepthMeter, EdgeProxyMeter,
                        NormalsMeter, UndefinedRelativeChange, delta_m, delta_p)
from .data import collate

__all__ = ["task_loss", "autocast", "evaluate", "primary", "curve_metric", "steps_to_target", "flat",
           "relative_scores", "bn_batches", "recalibrated", "BN_SEED"]

#: the dilation proxy's tolerance in pixels (a training-time number only; the reported one is BSDS's)
PROXY_TOLERANCE = 1
#: the training images that BatchNorm statistics are re-estimated on are the same for every row, phase and seed
BN_SEED = 20_000_804


def bn_batches(data: Dataset, n_images: int, batch_size: int) -> list[torch.Tensor]:
    """``n_images`` training images (a fixed subset drawn with :data:`BN_SEED`; all when fewer) as CPU batches of
    ``batch_size``: what :func:`recalibrated` re-estimates BatchNorm statistics on. Empty for ``n_images=0``."""
    n = min(n_images, len(data))
    if n == 0:
        return []
    idx = sorted(torch.randperm(len(data), generator=torch.Generator().manual_seed(BN_SEED))[:n].tolist())
    return [torch.stack([data[i]["image"] for i in idx[b:b + batch_size]]) for b in range(0, n, batch_size)]


def recalibrated(model: nn.Module, batches: Sequence[torch.Tensor], device: torch.device) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on ``batches`` (training images) for
    its own weights (``torch.optim.swa_utils.update_bn``: reset, then the cumulative average over the batches);
    the model itself is untouched. Without batches, ``model`` as it is (its running statistics).

    Why: MTML's query passes run adapted weights in train mode, so its running statistics track adapted
    networks, and the weights scored "as trained" are not those; scoring every row on statistics of the weights
    being scored removes that confound, for every row alike."""
    if not batches:
        return model
    out = copy.deepcopy(model)
    torch.optim.swa_utils.update_bn([b.to(device) for b in batches], out)
    return out


def task_loss(task: str, out: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of one task: CE (ignore 255), L1 on valid depth, 1 - cos on valid normals,
    class-balanced BCE on edges (in float32 under autocast's half types, else in the output's own dtype)."""
    if out.dtype in (torch.float16, torch.bfloat16):
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


def autocast(device: torch.device, enabled: bool):
    """Mixed precision where asked: float16 on CUDA (with a GradScaler), bfloat16 on CPU (no scaler needed)
    where the CPU computes it natively or ``NBM_CPU_AMP=1`` (:func:`nbmodule.env.cpu_bfloat16`; the tests
    force it, so the AMP code path also runs, and is tested, on any CPU); float32 otherwise."""
    from ...env import cpu_bfloat16

    if not enabled or (device.type == "cpu" and not cpu_bfloat16()[0]):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def primary(task: str) -> tuple[str, bool]:
    """The metric a task is judged by on its own (its Δm metric) and whether lower is better."""
    metric = DELTA_M_METRICS[task]
    return metric, DENSE_METRICS[task][metric]


def curve_metric(task: str) -> tuple[str, bool]:
    """The metric of a task's learning curves: its primary metric, except for edges, whose curves use the
    fast dilation proxy (a training-time number; the reported edge scores are BSDS's)."""
    return ("proxy_f", False) if task == "edges" else primary(task)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, tasks: Sequence[str], *, device: torch.device, batch_size: int = 16,
             num_classes: int = 40, max_batches: int = 0, amp: bool = False, boundary: str = "bsds",
             pr_curves: dict[str, Any] | None = None, thin_gt: bool = False) -> dict[str, dict[str, float]]:
    """Metrics of ``tasks`` over ``data`` (its first ``max_batches`` batches; 0 = all): ``{task: {metric: value}}``.

    seg: mIoU and pixel accuracy (%, a confusion matrix over the split); depth: abs_err, rel_err, rmse (m),
    delta1; normals: mean and median angle (degrees), within_* (%); edges: the BSDS protocol's ods_f, ois_f,
    ap (%; the benchmark's AP), or with ``boundary="proxy"`` the fast dilation proxy_f (%, training curves only);
    ``thin_gt``: thin the true edge maps first (seism's NYUD protocol). ``pr_curves``: filled with the edges'
    BSDS precision-recall curve. The model is scored with its running BatchNorm statistics (see
    :func:`recalibrated`)."""
    if boundary not in ("bsds", "proxy"):
        raise ValueError(f"boundary must be 'bsds' or 'proxy', got {boundary!r}")
    was_training = model.training
    model.eval()
    meters: dict[str, Any] = {}
    n_batches = math.ceil(len(data) / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        batch = collate([data[i] for i in range(b * batch_size, min(len(data), (b + 1) * batch_size))], device)
        with autocast(device, amp):
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
                meter = meters.setdefault(t, BoundaryMeter(thin_gt=thin_gt) if boundary == "bsds" else
                                          EdgeProxyMeter(99, PROXY_TOLERANCE))
                meter.update(o.sigmoid().cpu(), batch["edges"].cpu())
    model.train(was_training)
    res: dict[str, dict[str, float]] = {}
    for t, m in meters.items():
        if t == "seg":
            res[t] = {"miou": 100.0 * m.miou(), "pixel_acc": 100.0 * m.pixel_accuracy()}
        elif t == "edges" and boundary == "proxy":
            res[t] = {"proxy_f": 100.0 * m.compute()["proxy_f"]}
        elif t == "edges":
            bsds = m.compute()
            res[t] = {"ods_f": 100.0 * bsds["ods_f"], "ois_f": 100.0 * bsds["ois_f"], "ap": 100.0 * bsds["ap"]}
            if pr_curves is not None:
                pr_curves["edges"] = m.curve()
        else:
            res[t] = m.compute()
    return res


def steps_to_target(rows: Sequence[Mapping[str, Any]], column: str, target: float | None,
                    lower_is_better: bool) -> int | None:
    """The first ``step`` whose ``column`` reaches ``target`` (<= when lower is better), else None."""
    if target is None or not math.isfinite(target):
        return None
    for r in sorted(rows, key=lambda r: r["step"]):
        v = r[column]
        if v is not None and math.isfinite(v) and (v <= target if lower_is_better else v >= target):
            return int(r["step"])
    return None


def flat(prefix: str, res: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{task: {metric: v}}`` -> ``{"{prefix}_{task}_{metric}": v}`` (metrics.json's keys)."""
    return {f"{prefix}_{t}_{m}": v for t, ms in res.items() for m, v in ms.items()}


def relative_scores(row: str, res: Mapping[str, Mapping[str, float]],
                    baseline: Mapping[str, Mapping[str, float]]) -> dict[str, float | None]:
    """``{row}_delta_m`` (Maninis / Vandenhende) and ``{row}_delta_p`` (LibMTL) against the single-task
    models; null, with the reason printed, when a baseline metric is zero or not finite (e.g. mIoU 0 after a
    few smoke steps has no relative change). A task on one side only raises (a bug, not a score)."""
    out: dict[str, float | None] = {}
    for key, fn in (("delta_m", delta_m), ("delta_p", delta_p)):
        try:
            out[f"{row}_{key}"] = fn(res, baseline)
        except UndefinedRelativeChange as err:
            print(f"[mtml] {row}_{key} is null: {err}")
            out[f"{row}_{key}"] = None
    return out
