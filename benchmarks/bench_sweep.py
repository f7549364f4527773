"""Notebook 04's smoke grid run sequentially in one process against ``python -m nbmodule sweep --workers 2`` on Ray.

Setting: study ``maml_sampling`` under the ``smoke`` profile (20 meta-iterations per cell, synthetic sinusoid
tasks) with ``seeds=[0, 1]``: 6 regimes x 2 seeds = 12 cells (``--quick``: 2 regimes x 1 seed, 2 meta-iterations).
Both contenders write the same run folder, figures included: the sequential one is
:func:`nbmodule.studies.execute` on the whole grid with 1 torch thread (the profile's); the sweep is
:func:`nbmodule.sweep.run_sweep` with 2 workers x 1 CPU and 1 torch thread per cell, Ray started (locally, no
dashboard) and shut down inside the timing, then the study's reduction. Both in this process, one after the
other, each timed once (a sweep is a one-off: its start-up is part of its cost); the 1-minute load average is
recorded before and after.

Keys: ``sweep_sequential_s``, ``sweep_ray_s`` (wall times), ``sweep_speedup`` (sequential / sweep),
``sweep_same_numbers`` (1 when every non-timing key of the two ``metrics.json`` is equal), ``sweep_ray_start_s``
(starting Ray), ``sweep_cell_s`` (mean time of a cell inside its worker), ``sweep_cell_overhead_s`` /
``_max_s`` (mean / largest submit-to-result time minus the cell's own: scheduling, a worker process's start and
imports, the result's transfer), ``sweep_reduce_s`` (the reduction: checkpoints gathered, files and figures
written), ``sweep_cells``, ``sweep_workers``, ``sweep_load_before``/``_after``, ``sweep_threads``.

    python benchmarks/bench_sweep.py [--quick]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbmodule.profiling import BenchResults, torch_threads  # noqa: E402
from nbmodule.runs import RunContext, RunDir, is_timing_key  # noqa: E402
from nbmodule.studies import execute, get_study  # noqa: E402

WORKERS = 2


def run(quick: bool = False) -> BenchResults:
    import ray  # noqa: F401  (the optional extra: without it the harness says so)

    from nbmodule.sweep import plan_sweep, run_sweep

    overrides = ({"regimes": ["uniform", "weighted"], "seeds": [0], "meta_iterations": 2, "eval_every": 2,
                  "checkpoint_every": 2} if quick else {"seeds": [0, 1]})
    study = get_study("maml_sampling")
    res = BenchResults(sweep_threads=1, sweep_workers=WORKERS)
    res["sweep_load_before"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_sweep(study, Path(tmp) / "sweep" / study.notebook, profile="smoke", overrides=overrides)
        cfg = study.config_class.from_values(plan.groups[0].config)
        with torch_threads(1):
            t0 = time.perf_counter()
            sequential = execute(study, cfg, RunDir(Path(tmp) / "sequential"),
                                 RunContext.create(device="cpu", progress=False, threads=1))
            res["sweep_sequential_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = run_sweep(plan, workers=WORKERS, cpus_per_cell=1, progress=False)
        res["sweep_ray_s"] = time.perf_counter() - t0
        if report.exit_code:
            raise RuntimeError(f"the sweep failed: {report.failed or report.unfinished}")
        swept = RunDir(plan.root).metrics
    science = [k for k in sequential if not is_timing_key(k)]
    res["sweep_same_numbers"] = int(all(swept.get(k) == sequential[k] for k in science) and len(science) > 0)
    res["sweep_cells"] = len(plan.cells)
    res["sweep_ray_start_s"] = report.ray_start_s
    res["sweep_reduce_s"] = report.reduce_s
    res["sweep_cell_s"] = statistics.fmean(report.cell_wall_s.values())
    overhead = [report.cell_latency_s[c] - report.cell_wall_s[c] for c in report.cell_wall_s]
    res["sweep_cell_overhead_s"] = statistics.fmean(overhead)
    res["sweep_cell_overhead_max_s"] = max(overhead)
    res.ratio("sweep_speedup", "sweep_sequential_s", "sweep_ray_s")
    res["sweep_load_after"] = os.getloadavg()[0]
    res.notes["sweep"] = (
        f"04 smoke grid ({len(plan.cells)} cells: "
        f"{' x '.join(f'{len(plan.groups[0].config[f])} {f}' for f in study.cells)}, "
        f"{plan.groups[0].config['meta_iterations']} meta-iterations each, synthetic sinusoids, cpu): sequential "
        f"execute in one process at 1 torch thread vs sweep --workers {WORKERS} (1 CPU and 1 thread per cell) on a "
        "local Ray started and stopped inside the timing; both write the whole run folder with figures; each "
        f"timed once; same numbers: {'yes' if res['sweep_same_numbers'] else 'NO'}; 1-minute load "
        f"{res['sweep_load_before']:.1f} before, {res['sweep_load_after']:.1f} after on {os.cpu_count()} CPUs "
        "(a shared machine)")
    print(f"[sweep] sequential {res['sweep_sequential_s']:.1f} s, sweep {res['sweep_ray_s']:.1f} s "
          f"(speed-up {res['sweep_speedup']:.2f}x; Ray start {report.ray_start_s:.1f} s, per-cell overhead "
          f"{res['sweep_cell_overhead_s']:.2f} s mean, {res['sweep_cell_overhead_max_s']:.2f} s max), same numbers: "
          f"{bool(res['sweep_same_numbers'])}")
    return res


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for k, v in out.items():
        print(f"{k}: {v:.6g}")
