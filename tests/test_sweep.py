"""Sweeps (``python -m nbmodule sweep``): cells planned from a study's declared list fields and --grid, one
ordinary study run per cell, and an aggregate that equals the whole grid run in one process; resumable,
fault-isolated, and the same on Ray with 2 local workers (the Ray tests share one local Ray instance)."""
from __future__ import annotations

import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbmodule import cli
from nbmodule.profiles import load_profiles, study_profile
from nbmodule.runs import RunContext, RunDir, is_timing_key, read_metrics
from nbmodule.studies import execute, get_study
from nbmodule.sweep import (CELL_LOG, INSTALL_HINT, SWEEP_FILE, SweepError, cell_states, parse_grid,
                            plan_sweep, reduce_group, run_cell)

REPO = Path(__file__).resolve().parent.parent
# the smoke grid: 2 regimes x 2 seeds of the smoke profile (20 meta-iterations, checkpoints every 10)
GRID = ["regimes=[uniform,weighted]", "seeds=[0,1]"]
OVERRIDES = {"regimes": ["uniform", "weighted"], "seeds": [0, 1]}


def _science(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not is_timing_key(k)}


def _plan(root: Path, **kw):
    return plan_sweep("maml_sampling", root / "04_maml_sampling", profile="smoke", overrides=OVERRIDES, **kw)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> dict:
    """The whole 2 x 2 grid run in this process by the study itself (``nbmodule run``'s path)."""
    study = get_study("maml_sampling")
    cfg, _ = study_profile(load_profiles(), "smoke", study.notebook, study.config_class)
    cfg = study.config_class.from_values({**cfg.to_dict(), **OVERRIDES})
    folder = tmp_path_factory.mktemp("sequential") / "04_maml_sampling"
    metrics = execute(study, cfg, RunDir(folder), RunContext.create(device="cpu", progress=False, threads=1),
                      figures=False)
    assert len(_science(metrics)) == 2 * 10  # 5 losses and their intervals per regime
    return metrics


# --- planning ---------------------------------------------------------------------------------------------------
def test_grid_values_are_yaml_lists_and_bad_ones_name_themselves():
    assert parse_grid(["inner_lr=0.01,0.001", "hidden=[40,40],[80]"]) == {
        "inner_lr": [0.01, 0.001], "hidden": [[40, 40], [80]]}
    for bad, msg in ((["inner_lr"], "expected key=v1,v2"), (["a=1", "a=2"], "given twice"),
                     (["a=1,1"], "repeated"), (["a=1,,2"], "not a list of YAML values"),
                     (["a=1,null"], "empty value")):
        with pytest.raises(SweepError, match=msg):
            parse_grid(bad)


def test_cells_are_the_studys_declared_list_fields_cut_to_one_entry(tmp_path):
    plan = _plan(tmp_path)
    assert [c.id for c in plan.cells] == ["regimes-uniform_seeds-0", "regimes-uniform_seeds-1",
                                          "regimes-weighted_seeds-0", "regimes-weighted_seeds-1"]
    cell = plan.cells[1]
    assert cell.config["regimes"] == ["uniform"] and cell.config["seeds"] == [1]
    assert cell.folder == tmp_path / "04_maml_sampling" / "cells" / cell.id
    assert {k: v for k, v in cell.config.items() if k not in OVERRIDES} == {
        k: v for k, v in plan.groups[0].config.items() if k not in OVERRIDES}
    assert plan.groups[0].folder == tmp_path / "04_maml_sampling"  # the aggregate: the usual run folder
    # --grid multiplies groups, each with its aggregate folder
    plan = _plan(tmp_path, grid={"inner_lr": [0.01, 0.001]})
    assert [g.id for g in plan.groups] == ["inner_lr-0.01", "inner_lr-0.001"]
    assert len(plan.cells) == 8 and plan.cells[4].config["inner_lr"] == 0.001
    assert plan.groups[1].folder == tmp_path / "04_maml_sampling" / "inner_lr-0.001"
    # maml_rl: environments x seeds (every cell trains MAML, so baselines stay together)
    rl = plan_sweep("maml_rl", tmp_path / "rl", config="default", overrides={"seeds": [0, 1, 2]})
    assert [c.id for c in rl.cells] == ["envs-nav2d_seeds-0", "envs-nav2d_seeds-1", "envs-nav2d_seeds-2"]
    # fewshot has no list field: one cell per --grid point, its run folder the group's
    few = plan_sweep("fewshot", tmp_path / "few", config="default",
                     grid={"config": ["omniglot_5way1shot", "omniglot_20way1shot"]})
    assert [(c.id, c.config["n_way"]) for c in few.cells] == [("config-omniglot_5way1shot", 5),
                                                             ("config-omniglot_20way1shot", 20)]
    assert few.cells[0].folder == few.groups[0].folder == tmp_path / "few" / "config-omniglot_5way1shot"


def test_bad_sweeps_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(SweepError, match="seeds already forms the cells"):
        _plan(tmp_path, grid={"seeds": [0, 1]})
    with pytest.raises(SweepError, match="not a field of MamlSamplingConfig"):
        _plan(tmp_path, grid={"nope": [1]})
    with pytest.raises(SweepError, match="use it with --config"):
        _plan(tmp_path, grid={"config": ["default"]})
    with pytest.raises(Exception, match="inner_lr"):
        _plan(tmp_path, grid={"inner_lr": [0.01, -1.0]})


def test_status_prints_the_table_without_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails: --status must not need it
    argv = ["sweep", "maml_sampling", "--profile", "smoke", "--out", str(tmp_path), *GRID]
    assert cli.main([*argv, "--status"]) == 0
    out = capsys.readouterr().out
    assert "4 cells (4 pending)" in out and re.search(r"^regimes-weighted_seeds-1 +pending$", out, re.M)
    assert "waiting for 4 of 4 cells" in out
    # without Ray, running says how to install it in one line, exit status 2, nothing written
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {INSTALL_HINT}" and 'pip install -e ".[sweep]"' in err
    assert not (tmp_path / "04_maml_sampling").exists()


# --- cells and the reduction, without Ray -----------------------------------------------------------------------
def test_cells_reduce_to_the_sequential_run_and_a_failing_cell_is_reported(tmp_path, sequential):
    """Each cell run on its own (in this process), then the study's reduction: the sequential numbers, and the
    aggregate's checkpoints are the cells' own (the reduction trained nothing)."""
    plan = _plan(tmp_path)
    bad = plan.cells[1]
    damaged = bad.folder / "checkpoints" / "uniform_s1.pt"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a checkpoint")
    results = {c.id: run_cell("maml_sampling", c.config, c.folder, threads=1) for c in plan.cells}
    assert not results[bad.id]["ok"] and "uniform_s1" in results[bad.id]["error"]
    assert "Traceback" in (bad.folder / CELL_LOG).read_text()
    assert all(r["ok"] for cid, r in results.items() if cid != bad.id)
    states = cell_states(plan)
    assert states[bad.id].status == "interrupted" and states[plan.cells[0].id].status == "done"
    damaged.unlink()
    assert run_cell("maml_sampling", bad.config, bad.folder, threads=1)["ok"]
    assert {s.status for s in cell_states(plan).values()} == {"done"}
    metrics = reduce_group(plan.study, plan.groups[0])
    assert _science(metrics) == _science(sequential)
    for cell in plan.cells:
        for ck in (cell.folder / "checkpoints").iterdir():
            assert filecmp.cmp(ck, plan.root / "checkpoints" / ck.name, shallow=False)
    assert (plan.root / "curves.png").is_file() and not (plan.cells[0].folder / "curves.png").exists()


# --- on Ray ------------------------------------------------------------------------------------------------------
def _ray_processes() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)
            if any(n in " ".join(p.cmdline()) for n in ("raylet", "gcs_server", "ray::"))]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs, as the sweep starts it) for the Ray tests; shut down, leaving no process."""
    ray = pytest.importorskip("ray")
    from nbmodule.sweep import _start_ray

    assert _start_ray(ray, workers=2, cpus=1, gpus=0, address=None)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        deadline = time.time() + 30
        while _ray_processes() and time.time() < deadline:
            time.sleep(0.5)
        assert not _ray_processes(), "Ray left processes behind"


def _sweep(tmp_path, *extra):
    return cli.main(["sweep", "maml_sampling", "--profile", "smoke", "--workers", "2", "--out", str(tmp_path),
                     "--no-progress", *GRID, *extra])


def test_sweep_on_two_ray_workers_equals_the_sequential_run(tmp_path, ray_cluster, sequential, capsys):
    """The issue's check: `sweep maml_sampling --profile smoke --workers 2` on a 2 x 2 grid writes the
    sequential run's metrics.json (non-timing keys), each cell's log in its folder; a rerun runs nothing."""
    assert _sweep(tmp_path) == 0
    root = tmp_path / "04_maml_sampling"
    assert _science(read_metrics(root)) == _science(sequential)
    record = json.loads((root / SWEEP_FILE).read_text())
    assert {c["status"] for c in record["cells"].values()} == {"done"} and len(record["cells"]) == 4
    for cell in (root / "cells").iterdir():
        log = (cell / CELL_LOG).read_text()
        assert "1 torch threads" in log and "cell done" in log
        # the cells run at the driver's priority, not Ray's default +15 (which starves them beside other jobs)
        assert f"nice {os.nice(0)}" in log, log.splitlines()[0]
    capsys.readouterr()
    assert _sweep(tmp_path) == 0  # everything done: skipped, the aggregate kept
    assert "4 of 4 cells done (0 run now)" in capsys.readouterr().out
    assert _sweep(tmp_path, "--status") == 0
    assert "4 cells (4 done)" in capsys.readouterr().out


def test_a_failing_cell_is_reported_the_others_finish_and_retry_failed_reruns_it(tmp_path, ray_cluster,
                                                                                  sequential, capsys):
    bad = tmp_path / "04_maml_sampling" / "cells" / "regimes-weighted_seeds-0" / "checkpoints" / "weighted_s0.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\0" * 64)  # a damaged checkpoint: this cell fails, the others must not
    assert _sweep(tmp_path) == 1
    err = capsys.readouterr().err
    assert "error: cell regimes-weighted_seeds-0 failed: CheckpointError" in err
    assert f"log: {bad.parent.parent / CELL_LOG}" in err and "--retry-failed" in err
    root = tmp_path / "04_maml_sampling"
    states = {cid: s.status for cid, s in cell_states(_plan(tmp_path)).items()}
    assert sorted(states.values()) == ["done", "done", "done", "failed"]
    assert not (root / "metrics.json").exists()  # no aggregate from three of four cells
    assert _sweep(tmp_path) == 1  # a plain rerun leaves a failed cell failed (and says so)
    bad.unlink()
    assert _sweep(tmp_path, "--retry-failed") == 0
    assert "(1 run now)" in capsys.readouterr().out
    assert _science(read_metrics(root)) == _science(sequential)


def test_a_sweep_killed_midway_resumes_to_the_same_numbers(tmp_path, ray_cluster, sequential):
    """The driver (on the cluster of the fixture, through --address) is killed with SIGKILL once one cell is
    done; the rerun keeps that cell, resumes the others and ends with the sequential numbers."""
    root = tmp_path / "04_maml_sampling"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nbmodule", "sweep", "maml_sampling", "--profile", "smoke", "--workers", "2",
           "--out", str(tmp_path), "--no-progress", "--address", ray_cluster, *GRID]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done: set[str] = set()
    try:
        deadline = time.time() + 240
        while not done and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
            try:
                cells = json.loads((root / SWEEP_FILE).read_text())["cells"]
            except (OSError, ValueError, KeyError):
                continue
            done = {cid for cid, c in cells.items() if c.get("status") == "done"}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert done, "no cell finished before the kill"
    # Ray ends the dead driver's tasks; wait for their workers before resuming in the same folders
    import psutil

    deadline = time.time() + 60
    while time.time() < deadline and any("run_cell" in " ".join(p.cmdline()) for p in psutil.process_iter()
                                         if _cmdline_ok(p)):
        time.sleep(0.5)
    plan = _plan(tmp_path)
    from nbmodule.sweep import run_sweep

    report = run_sweep(plan, workers=2, progress=False)
    assert report.exit_code == 0
    assert not done & set(report.ran), "finished cells must not run again"
    assert _science(read_metrics(root)) == _science(sequential)


def _cmdline_ok(proc) -> bool:
    try:
        proc.cmdline()
        return True
    except Exception:
        return False
