"""Sequential segmentation -> detection -> classification on one ``UnifiedModel`` (study ``replay``, notebook 02).

    python -m nbmodule run replay --config default [steps_seg=300 runs=[noreplay,alone,lwf]] [--out runs]

Runs (``run`` column of the curves, prefix of the metrics):

- ``replay`` (the main run, metrics without prefix): in stages 2 and 3 every step mixes in up to
  ``replay_max`` (<= 10) images per earlier task drawn from a bounded :class:`~nbmodule.data.replay.ReplayBuffer`
  (reservoir or fixed selection, ``buffer_size`` images per task), each with its own task loss.
- ``noreplay``: the same schedule without any anti-forgetting method (the ablation).
- ``lwf``: Learning without Forgetting: the model frozen at the start of the stage labels the current images
  for the earlier tasks' outputs, and the student is distilled towards them.
- ``alone``: each task trained by itself from the same initialisation for the same number of steps.

Stage 1 (segmentation) is the same computation in every sequential run and in ``alone_seg``, so it is trained
once and shared (checkpoint ``seq_1_seg``). Data: :func:`~nbmodule.engines.replay.data.prepare_tasks` (real
mini VOC / COCO / Imagenette, or synthetic shapes in the same formats). Metrics follow each benchmark's
protocol (:mod:`~nbmodule.engines.replay.evaluation`; mIoU at each image's original resolution); forgetting
and the task -> metric map are defined once in :mod:`~nbmodule.engines.replay.protocol`.

Run folder (``<out>/02_sequential_replay/`` from either door):

``config.json``
    the study, the config, device, versions.
``metrics.json``
    ``seg_miou``, ``det_map``, ``det_map50``, ``cls_top1`` (final, replay run; fractions in [0, 1]);
    ``{seg,det,cls}_drop_pct`` and ``_drop_abs`` (relative % and absolute percentage points, end of the task's
    own stage -> end of training); ``mean_drop_pct`` (mean relative drop of seg and det); the same with
    ``noreplay_`` / ``lwf_`` prefixes; ``forgetting_reduction_pct`` (``noreplay_mean_drop_pct -
    mean_drop_pct``; ``lwf_forgetting_reduction_pct`` likewise); ``alone_{seg_miou,det_map,det_map50,
    cls_top1}``; per stage ``{prefix}stage{k}_{metric}``; ``params``, ``latency_ms`` (median, batch 1, float32,
    at ``latency_size``; ``latency_device_cuda``), ``pretrained`` (1 = ImageNet weights loaded),
    ``replay_per_task``, ``synthetic`` (1 = some task trained on synthetic data), ``train_s``.
``stage_table.csv``
    columns ``run, stage, seg_miou, det_map, det_map50, cls_top1``: one row per (sequential run, after-stage
    seg|det|cls), empty where the task is not learned yet.
``curves/loss.csv``
    ``run, seed, step`` (global), ``stage`` (1..3), ``loss``, ``task_loss``, ``extra_loss`` (replay or LwF).
``curves/stage_metrics.csv``
    ``run, seed, step, stage`` and the four metrics after each stage (``alone_<task>`` runs: one row).
``examples.pt``
    a few validation images per task with truth and the final replay model's prediction (tensors only).
``weights.json``, ``data.json``
    where the backbone weights came from, the precision and the latency measurement; where each task's
    data came from (real or synthetic, source, why), sizes and classes.
``checkpoints/{seq_1_seg,<run>_<k>_<task>,alone_<task>}.pt``
    resume state (:class:`nbmodule.runs.Checkpointer`): mid-stage every ``checkpoint_every`` steps, then the
    finished stage with its evaluations. A checkpoint of other settings is refused, naming the fields.

The figures and tables are in :mod:`nbmodule.viz.replay`.
"""
from __future__ import annotations

from .config import ReplayConfig
from .data import DATASETS, TaskData, open_task, prepare_tasks
from .evaluation import add_at_label_size, evaluate, predict
from .protocol import FORGETTING_LIMIT_PCT, METRICS, STAGE_COLUMNS, TASK_METRIC, TASKS, forgetting, mean_drop
from .study import run, run_study, sequential_runs, stage_seed
from .training import Precision, batch_indices, lwf_loss, task_loss, train_stage

__all__ = ["NAME", "Config", "ReplayConfig", "run", "run_study", "TaskData", "prepare_tasks", "open_task", "DATASETS",
           "train_stage", "task_loss", "lwf_loss", "batch_indices", "Precision", "evaluate", "predict",
           "add_at_label_size", "TASKS", "TASK_METRIC", "METRICS", "STAGE_COLUMNS", "FORGETTING_LIMIT_PCT",
           "forgetting", "mean_drop", "sequential_runs", "stage_seed"]

NAME = "replay"
Config = ReplayConfig
