"""Small fake run folders in exactly the suite's on-disk format, for the viz and explorer tests.

They stand in for the studies' real outputs (so the viz tests do not depend on training anything): each
folder has ``metrics.json`` with its study's contract keys, long-format ``curves/<name>.csv`` (columns
``run, seed, <x>, metrics...``) and the study-specific files (02: ``stage_table.csv``; 04: a test grid).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from nbmodule.runs import RunDir

REGIMES = ("uniform", "epsilon_greedy", "weighted")


def make_fake_runs(root: Path, seeds: int = 3, steps: int = 20) -> Path:
    """Write four study run folders and ``benchmarks/results.json`` under ``root``; return ``root``."""
    root = Path(root)
    # 04: regimes x seeds, two curve files, a test grid over amplitude x phase
    maml = RunDir(root, "04_maml_sampling")
    rows, test_rows = [], []
    for r, regime in enumerate(REGIMES):
        for seed in range(seeds):
            for step in range(steps):
                decay = math.exp(-step / (5 + 3 * r))
                rows.append({"run": regime, "seed": seed, "step": step * 100,
                             "train_loss": 2.0 * decay + 0.1 * seed + 0.05,
                             "weighted_loss": 3.0 * decay + 0.2,
                             "epsilon": max(0.1, 1 - step / steps) if regime == "epsilon_greedy" else float("nan")})
            for step in range(0, steps, 5):
                test_rows.append({"run": regime, "seed": seed, "step": step * 100,
                                  "test_mse_1step": 1.0 / (1 + step) + 0.1 * r + 0.01 * seed,
                                  "test_mse_10step": 0.5 / (1 + step) + 0.05 * r,
                                  "heldout_mse_1step": 1.1 / (1 + step) + 0.1 * r,
                                  "test_mse_0step": 3.0})
    maml.log_curve("train", rows)
    maml.log_curve("test", test_rows)
    grid = [{"run": regime, "seed": 0, "amplitude": round(0.1 + 0.2 * a, 2), "phase": 10 * p,
             "mse_1step": 1.0 / (0.3 + 0.2 * a) + 0.05 * r}
            for r, regime in enumerate(REGIMES) for a in range(25) for p in range(18)]
    _csv(maml.path / "parameter_space.csv", grid)
    metrics = {}
    for i, reg in enumerate(REGIMES):
        for k in (0, 1, 10):
            value = 3.0 if k == 0 else 0.3 + 0.05 * i - (0.2 if k == 10 else 0)
            metrics.update({f"{reg}_mse_{k}step": value, f"{reg}_mse_{k}step_ci95": 0.02,
                            f"{reg}_heldout_mse_{k}step": value + 0.01, f"{reg}_heldout_mse_{k}step_ci95": None})
        metrics[f"{reg}_s_per_iter"] = 0.01
    maml.write_metrics(metrics)

    # 02: stage table (long), per-stage loss curve, contract metrics
    replay = RunDir(root, "02_sequential_replay")
    # the engine's layout: one row per (run, after-stage), one column per task metric, empty = not learned yet
    values = {"replay": {"seg_miou": [0.40, 0.39, 0.385], "det_map": [None, 0.20, 0.195], "cls_top1": [None, None, 0.70]},
              "noreplay": {"seg_miou": [0.40, 0.22, 0.10], "det_map": [None, 0.20, 0.08], "cls_top1": [None, None, 0.71]},
              "alone": {"seg_miou": [0.40, None, None], "det_map": [None, 0.21, None], "cls_top1": [None, None, 0.72]}}
    table = [{"run": run, "stage": stage, **{m: ("" if v[s] is None else v[s]) for m, v in tasks.items()}}
             for run, tasks in values.items() for s, stage in enumerate(("seg", "det", "cls"))]
    _csv(replay.path / "stage_table.csv", table)
    replay.log_curve("loss", [{"run": run, "seed": 0, "step": i, "stage": i // 10 + 1, "loss": 1.0 / (1 + i % 10)}
                              for run in ("replay", "noreplay") for i in range(30)])
    replay.write_metrics({"seg_miou": 0.385, "det_map": 0.195, "det_map50": 0.35, "cls_top1": 0.70,
                          "seg_drop_pct": 3.75, "det_drop_pct": 2.5, "cls_drop_pct": 0.0,
                          "noreplay_seg_miou": 0.10, "noreplay_det_map": 0.08, "noreplay_det_map50": 0.15,
                          "noreplay_cls_top1": 0.71, "noreplay_seg_drop_pct": 75.0, "noreplay_det_drop_pct": 60.0,
                          "noreplay_cls_drop_pct": 0.0, "params": 3_100_000, "latency_ms": 21.5})

    # 03: held-out task fine-tuning curve per mode, contract metrics
    mtml = RunDir(root, "03_mtml")
    mtml.log_curve("heldout", [{"run": mode, "seed": 0, "step": step, "val_ods": (1 - math.exp(-step / tau)) * 0.6}
                               for mode, tau in (("single", 40), ("mtl", 25), ("mtml", 10)) for step in range(0, 101, 5)])
    mtml.log_curve("train", [{"run": run, "seed": 0, "step": step, "train_loss": 1 / (1 + step)}
                             for run in ("single_seg", "mtl", "mtml") for step in range(0, 50, 5)])
    metrics = {}
    for i, mode in enumerate(("single", "mtl", "mtml")):
        metrics.update({f"{mode}_seg_miou": 0.30 + 0.02 * i, f"{mode}_depth_abs_err": 0.60 - 0.03 * i,
                        f"{mode}_normals_mean_angle": 30.0 - i, f"{mode}_edges_ods_f": 0.55 + 0.02 * i,
                        f"{mode}_delta_m": 0.0 if mode == "single" else 2.0 * i,
                        f"{mode}_steps_to_target": [100, 60, 20][i]})
    metrics.update({"single_steps_to_target": None, "heldout_target": 0.55, "encoder_pretrained": 0,
                    "mtml_train_s": 12.0})
    mtml.write_metrics(metrics)

    # 05: learning curve and the few-shot table
    fewshot = RunDir(root, "05_maml_fewshot")
    fewshot.log_curve("fewshot_train", [{"run": "omniglot_5way_1shot", "seed": 0, "step": s * 10,
                                         "train_loss": 1.6 * math.exp(-s / 8), "train_acc": 0.9 - 0.7 * math.exp(-s / 6)}
                                        for s in range(15)])
    fewshot.log_curve("fewshot_val", [{"run": "omniglot_5way_1shot", "seed": 0, "step": s * 10,
                                       "val_loss": 1.5 * math.exp(-s / 8), "val_acc": 0.88 - 0.68 * math.exp(-s / 6)}
                                      for s in range(0, 15, 2)])
    fewshot.write_metrics({"omniglot_5way_1shot_acc": 91.2, "omniglot_5way_1shot_acc_ci95": 0.8,
                           "omniglot_20way_1shot_acc": 70.1, "omniglot_20way_1shot_acc_ci95": 1.1,
                           "omniglot_lake20_error": 30.5})

    bench = root / "benchmarks"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "results.json").write_text(json.dumps({  # flat keys, as benchmarks/run.py merges them
        "maml_sinusoid_engine_s_per_iter": 0.01, "maml_sinusoid_loop_s_per_iter": 0.12,
        "maml_sinusoid_speedup": 12.0, "fewshot_omniglot_engine_speedup": 0.9,
        "_machine": "x86_64 2 cpus, torch threads 2, no GPU", "_updated": "2026-08-01"}))
    return root


def _csv(path: Path, rows: list[dict]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
