"""Fault injection: a run killed by SIGKILL at ten random moments (mid-iteration, during a checkpoint write,
between a checkpoint's renames, while writing the study's result files) always resumes, by the same call, to
the same numbers and files as an uninterrupted run.

The runs are forked from this process (no interpreter start per kill: the whole test takes seconds) and use
the smallest maml_sampling config: two regimes, one seed, 16 meta-iterations, a checkpoint every 2."""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch

from nbmodule import runs, studies
from nbmodule.runs import LOCK, RunContext, RunDir, is_timing_key
from nbmodule.studies import execute, get_study

STUDY = get_study("maml_sampling")
CONFIG = {"regimes": ["uniform", "weighted"], "seeds": [0], "meta_iterations": 16, "eval_every": 8,
          "eval_points": 5, "eval_steps": 3, "heldout_tasks": 10, "log_every": 2, "checkpoint_every": 2,
          "queue_snapshots": 3}
FILES = ["curves/train.csv", "curves/test.csv", "parameter_space.csv", "queues.json", "grid_losses.json",
         "examples.json"]


def _run(folder: Path) -> dict:
    cfg = STUDY.config_class.from_values(CONFIG)
    return execute(STUDY, cfg, RunDir(folder), RunContext.create(device="cpu", progress=False, threads=1))


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(folder: Path, counter, plan: tuple) -> None:
    """A forked run of the study, with the fault ``plan`` armed; never returns."""
    try:
        torch.set_num_threads(1)  # no OpenMP pool in a forked child
        engine = STUDY.engine
        real_loss = engine.meta_loss

        def counting(*a, **k):  # the parent times its kills by this count of meta-iterations
            with counter.get_lock():
                counter.value += 1
            return real_loss(*a, **k)

        engine.meta_loss = counting
        kind = plan[0]
        if kind in ("checkpoint-write", "result-write"):
            real_write, seen = runs.atomic_write_bytes, [0]

            def write(path, data):
                path = Path(path)
                hit = path.name.endswith(".pt.new") if kind == "checkpoint-write" else path.name == "queues.json"
                if hit:
                    seen[0] += 1
                    if seen[0] == plan[1]:  # half the bytes reach the disk, then the process dies
                        blob = data if isinstance(data, bytes) else b"x" * 4096
                        with open(path.with_name(f".{path.name}.partial.tmp"), "wb") as fh:
                            fh.write(blob[: len(blob) // 2])
                            fh.flush()
                            os.fsync(fh.fileno())
                        _kill_self()
                return real_write(path, data)

            runs.atomic_write_bytes = write
        elif kind == "checkpoint-rename":
            real_replace, seen = os.replace, [0]

            def replace(src, dst):
                if str(src).endswith(".pt.new"):  # the new checkpoint is whole; the old one is already .prev
                    seen[0] += 1
                    if seen[0] == plan[1]:
                        _kill_self()
                return real_replace(src, dst)

            os.replace = replace
        _run(folder)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _science(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not is_timing_key(k)}


def test_sigkill_at_ten_random_moments_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(studies, "save_figures", lambda study, run: {})
    torch.set_num_threads(1)
    straight = _run(tmp_path / "straight")

    rng = random.Random(18)
    timed = [("timed", rng.randint(1, 4), rng.uniform(0, 0.02)) for _ in range(7)]
    plans = timed + [("checkpoint-write", rng.randint(1, 2)), ("checkpoint-rename", rng.randint(1, 2))]
    rng.shuffle(plans)
    plans.append(("result-write", 1))  # the last kill: after training, while the study's files are written
    ctx = multiprocessing.get_context("fork")
    folder = tmp_path / "killed"
    landed = []
    for plan in plans:
        counter = ctx.Value("i", 0)
        child = ctx.Process(target=_child, args=(folder, counter, plan))
        child.start()
        if plan[0] == "timed":
            deadline = time.monotonic() + 60
            while counter.value < plan[1] and child.is_alive() and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(plan[2])
            child.kill()
        child.join(60)
        assert child.exitcode == -signal.SIGKILL, f"{plan}: the run was not killed (exit status {child.exitcode})"
        landed.append(plan)
    assert len(landed) == 10
    assert (folder / LOCK).exists()  # the last kill left its lock file behind: the next run takes it over

    with pytest.warns(UserWarning, match="took over the stale lock"):
        resumed = _run(folder)
    assert _science(resumed) == _science(straight)
    for name in FILES:
        assert (folder / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    marker = json.loads((folder / runs.MARKER).read_text())
    assert "checkpoints/uniform_s0.pt" in marker["files"] and not (folder / LOCK).exists()
