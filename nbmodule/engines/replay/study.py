"""The study: every configured run, stage by stage (resuming from checkpoints), then all metrics and files."""
from __future__ import annotations

import copy
import csv
import io
import math
import time
from typing import Any, Callable, Sequence

import torch

from ...data.imagenette import IMAGENETTE_NAMES, IMAGENETTE_WNIDS
from ...data.replay import ReplayBuffer
from ...data.vision import collate_task
from ...models import build_model, count_parameters
from ...models.unified import UnifiedModel
from ...profiling import measure_latency
from ...progress import progress_bar
from ...runs import RunContext, RunDir, atomic_write_bytes, atomic_write_text
from .config import ReplayConfig
from .data import TaskData, prepare_tasks
from .evaluation import evaluate, predict
from .protocol import METRICS, STAGE_COLUMNS, TASK_METRIC, TASKS, check_unit_interval, forgetting, mean_drop
from .training import Precision, train_stage

__all__ = ["run", "run_study", "stage_seed", "sequential_runs"]


def stage_seed(seed: int, run: str, stage: int) -> int:
    """A seed per (run, stage) that does not depend on what ran before, so a resumed stage replays exactly."""
    return (seed * 1_000_003 + sum(ord(c) * 31 ** i for i, c in enumerate(run)) * 101 + stage) % (2 ** 62)


def sequential_runs(cfg: ReplayConfig) -> list[tuple[str, str]]:
    """``(run, method)`` of the sequential runs: the replay run first, then no replay and LwF if configured."""
    return [("replay", "replay")] + [(r, "none" if r == "noreplay" else r) for r in cfg.runs if r != "alone"]


class _Study:
    def __init__(self, cfg: ReplayConfig, tasks: dict[str, TaskData], rd: RunDir, device: torch.device, bar: Any,
                 callback: Callable[[str, int], None] | None):
        self.cfg, self.tasks, self.rd, self.device, self.bar, self.callback = cfg, tasks, rd, device, bar, callback
        self.precision = Precision(cfg.amp, device)
        self.seconds = 0.0
        self.trained_stages: list[str] = []
        # Built once: every run starts from this very initialisation, and ImageNet weights are fetched (or found
        # missing) once, not once per run
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            first = self._build(cfg.pretrained)
        self.weights_source = first.weights_source
        self.initial = {k: v.clone() for k, v in first.state_dict().items()}

    def _build(self, pretrained: bool) -> UnifiedModel:
        t = self.tasks
        return build_model("unified", num_seg_classes=t["seg"].num_classes, num_det_classes=t["det"].num_classes,
                           num_cls_classes=t["cls"].num_classes, backbone=self.cfg.backbone, pretrained=pretrained,
                           fpn_channels=self.cfg.fpn_channels, head_layers=self.cfg.head_layers)

    def model(self) -> UnifiedModel:
        model = self._build(False)
        model.load_state_dict(self.initial)
        return model.to(self.device)

    def _buffers(self, tasks: Sequence[str]) -> dict[str, ReplayBuffer]:
        """Replay buffers of the earlier ``tasks`` that are replayed, each shown its task's training set once."""
        out = {}
        for t in tasks:
            if t in self.cfg.replay_tasks:
                buf = ReplayBuffer(self.cfg.buffer_size, self.cfg.buffer_policy,
                                   seed=stage_seed(self.cfg.seed, "buf", TASKS.index(t)))
                buf.update(self.tasks[t].train)
                out[t] = buf
        return out

    def stage(self, name: str, model: UnifiedModel, task: str, k: int, run: str, method: str,
              earlier: Sequence[str], evaluate_tasks: Sequence[str], step_offset: int) -> dict[str, Any]:
        """Train one stage (resuming its checkpoint) and evaluate every task learned so far; returns
        ``{"evals", "rows", "seconds"}``. A finished stage is loaded, not trained."""
        cfg = self.cfg
        ck = self.rd.checkpointer(name, config=cfg)
        saved = ck.load()
        if saved is not None and ck.done:
            model.load_state_dict(saved["model"])
            self.seconds += float(saved["seconds"])
            if self.bar is not None:
                self.bar.update(cfg.steps(task))
            return saved
        buffers = self._buffers(earlier) if method == "replay" else None
        teacher = None
        if method == "lwf" and earlier:  # the model as it was at the start of this stage (also on resume)
            teacher = copy.deepcopy(model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        t0 = time.perf_counter()
        # torchvision's random augmentations draw from the global RNG: seed it per stage inside fork_rng (the
        # caller's RNG is untouched); a resumed stage restores the state its checkpoint saved
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(stage_seed(cfg.seed, run, k))
            rows = train_stage(model, task, self.tasks[task], cfg, device=self.device,
                               seed=stage_seed(cfg.seed, run, k), buffers=buffers, teacher=teacher, earlier=earlier,
                               run=run, stage=k, step_offset=step_offset, checkpoint=ck, resume=saved, bar=self.bar,
                               callback=self.callback)
        evals: dict[str, float] = {}
        for t in evaluate_tasks:
            evals.update(evaluate(model, t, self.tasks[t].val, self.device, cfg.batch_size, cfg.det_score_threshold,
                                  self.precision))
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.trained_stages.append(name)
        state = {"model": model.state_dict(), "evals": evals, "rows": rows, "seconds": seconds}
        ck.save(state, step=cfg.steps(task), done=True)
        return state

    def sequence(self, run: str, method: str) -> tuple[list[dict[str, float]], list[dict], UnifiedModel]:
        """Stages seg -> det -> cls; returns (evaluations after each stage, loss rows, final model). Stage 1
        has no earlier task, so it is the same computation in every run: trained once (``seq_1_seg``)."""
        model = self.model()
        evals, rows, offset = [], [], 0
        for k, task in enumerate(TASKS, start=1):
            name = "seq_1_seg" if k == 1 else f"{run}_{k}_{task}"
            res = self.stage(name, model, task, k, "seq" if k == 1 else run, method if k > 1 else "none",
                             TASKS[:k - 1], TASKS[:k], offset)
            evals.append(res["evals"])
            rows += [{**r, "run": run} for r in res["rows"]]
            offset += self.cfg.steps(task)
        return evals, rows, model

    def alone(self, task: str) -> tuple[dict[str, float], list[dict]]:
        """``task`` trained by itself from the same initialisation for the same steps (segmentation alone is
        stage 1 of the sequential runs, loaded from its checkpoint)."""
        model = self.model()
        if task == "seg":
            res = self.stage("seq_1_seg", model, "seg", 1, "seq", "none", (), ("seg",), 0)
        else:
            res = self.stage(f"alone_{task}", model, task, 1, f"alone_{task}", "none", (), (task,), 0)
        return res["evals"], [{**r, "run": f"alone_{task}"} for r in res["rows"]]


def _total_steps(cfg: ReplayConfig) -> int:
    later = cfg.steps_det + cfg.steps_cls
    total = cfg.steps_seg + later * len(sequential_runs(cfg))
    return total + (later if "alone" in cfg.runs else 0)


def _save_examples(model: UnifiedModel, tasks: dict[str, TaskData], rd: RunDir, device: torch.device, n: int,
                   score_threshold: float, precision: Precision) -> None:
    """``examples.pt``: a few validation images per task with truth and the final replay model's prediction
    (tensors, lists and strings only: read back with ``weights_only=True``)."""
    model.to(device).eval()
    readable = dict(zip(IMAGENETTE_WNIDS, IMAGENETTE_NAMES))  # Imagenette's folders are WordNet ids
    out: dict[str, Any] = {"classes": {t: [readable.get(c, str(c)) for c in getattr(d.val, "classes", ())]
                                       for t, d in tasks.items()}}
    for task, d in tasks.items():
        items = [d.val[i] for i in range(min(n, len(d.val)))]
        if not items:
            continue
        batch = collate_task(items)
        pred = predict(model, batch["image"].to(device), score_threshold, precision)
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
    atomic_write_bytes(rd.path / "examples.pt", lambda fh: torch.save(out, fh))


def _write_stage_table(rd: RunDir, rows: list[dict[str, Any]]) -> None:
    """``stage_table.csv``: columns :data:`STAGE_COLUMNS`, one row per (sequential run, after-stage)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(STAGE_COLUMNS), extrasaction="raise")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(rd.path / "stage_table.csv", buf.getvalue())


def _nan_to_none(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _sequence_metrics(prefix: str, evals: list[dict[str, float]]) -> dict[str, Any]:
    """A sequential run's metrics from its evaluations after each stage: ``stage{k}_{metric}``, the final
    metrics, each task's forgetting (``_drop_pct``, ``_drop_abs``) and ``mean_drop_pct`` of the earlier tasks."""
    out: dict[str, Any] = {}
    for k, ev in enumerate(evals, start=1):
        out.update({f"{prefix}stage{k}_{m}": v for m, v in ev.items()})
    final = evals[-1]
    out.update({f"{prefix}{m}": final.get(m) for m in METRICS})
    drops = []
    for k, task in enumerate(TASKS):
        rel, points = forgetting(evals[k][TASK_METRIC[task]], final[TASK_METRIC[task]])
        out[f"{prefix}{task}_drop_pct"], out[f"{prefix}{task}_drop_abs"] = _nan_to_none(rel), _nan_to_none(points)
        if task != TASKS[-1]:  # the last task's own stage is the end of training: nothing to forget
            drops.append(rel)
    out[f"{prefix}mean_drop_pct"] = _nan_to_none(mean_drop(drops))
    return out


def _reductions(metrics: dict[str, Any]) -> dict[str, float]:
    """How many points of mean relative drop replay (and LwF) save against no replay."""
    base, out = metrics.get("noreplay_mean_drop_pct"), {}
    for prefix, key in (("", "forgetting_reduction_pct"), ("lwf_", "lwf_forgetting_reduction_pct")):
        own = metrics.get(f"{prefix}mean_drop_pct")
        if base is not None and own is not None:
            out[key] = base - own
    return out


def run_study(cfg: ReplayConfig, rd: RunDir, *, tasks: dict[str, TaskData], device: torch.device | str = "cpu",
              progress: bool = True, callback: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Train every configured run on ``tasks`` (finished stages are loaded, an interrupted one resumes), write
    the run folder's files (see :mod:`nbmodule.engines.replay`) and return the flat metrics."""
    device = torch.device(device)
    metrics: dict[str, Any] = {}
    loss_rows: list[dict] = []
    stage_rows: list[dict] = []
    table: list[dict] = []
    with progress_bar(total=_total_steps(cfg), desc="replay study", enabled=progress) as bar:
        st = _Study(cfg, tasks, rd, device, bar, callback)
        final_model = None
        for run, method in sequential_runs(cfg):
            evals, rows, model = st.sequence(run, method)
            final_model = model if run == "replay" else final_model
            loss_rows += rows
            metrics.update(_sequence_metrics("" if run == "replay" else f"{run}_", evals))
            for k, (task, ev) in enumerate(zip(TASKS, evals), start=1):
                row = {m: ev.get(m, math.nan) for m in METRICS}
                step = sum(cfg.steps(t) for t in TASKS[:k])
                stage_rows.append({"run": run, "seed": cfg.seed, "step": step, "stage": k, **row})
                table.append({"run": run, "stage": task, **{m: "" if math.isnan(v) else v for m, v in row.items()}})
        if "alone" in cfg.runs:
            for task in TASKS:
                ev, rows = st.alone(task)
                loss_rows += rows
                stage_rows.append({"run": f"alone_{task}", "seed": cfg.seed, "step": cfg.steps(task), "stage": 1,
                                   **{m: ev.get(m, math.nan) for m in METRICS}})
                metrics.update({f"alone_{m}": v for m, v in ev.items()})
    metrics.update(_reductions(metrics))
    check_unit_interval({k: v for k, v in metrics.items() if k.endswith(METRICS)}, f"replay study in {rd.path}")

    rd.write_curve("loss", loss_rows)
    rd.write_curve("stage_metrics", stage_rows)
    _write_stage_table(rd, table)
    assert final_model is not None  # the replay run always runs
    _save_examples(final_model, tasks, rd, device, cfg.n_examples, cfg.det_score_threshold, st.precision)
    lat = measure_latency(final_model, (1, 3, cfg.latency_size, cfg.latency_size), device,
                          repeats=cfg.latency_repeats, warmup=3)
    rd.write_json("weights.json", {"backbone": cfg.backbone, "weights": st.weights_source,
                                   "precision": st.precision.describe(), "latency": lat,
                                   "latency_precision": "float32"})
    rd.write_json("data.json", {t: d.describe() for t, d in tasks.items()})
    metrics.update(params=count_parameters(final_model), latency_ms=lat["median_ms"], latency_size=cfg.latency_size,
                   latency_device_cuda=int(device.type == "cuda"),
                   pretrained=int(st.weights_source.startswith("imagenet")), train_s=st.seconds,
                   replay_per_task=cfg.replay_per_task(), synthetic=int(any(d.synthetic for d in tasks.values())))
    return metrics


def run(cfg: ReplayConfig, run_dir: RunDir, ctx: RunContext) -> dict[str, Any]:
    """The study's entry point (both doors: notebook 02 and ``python -m nbmodule run replay``): prepare the
    data under ``ctx.data``, train and evaluate every run, write the run folder, return the metrics."""
    tasks = prepare_tasks(cfg, ctx.data)
    return run_study(cfg, run_dir, tasks=tasks, device=ctx.device, progress=ctx.progress)
