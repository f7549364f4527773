"""Resume and run-folder safety of the replay study: an interrupted stage resumes to the same numbers, and files
read back from a run folder cannot run code. (Changed settings are refused in test_replay_engine.py.)"""
from __future__ import annotations

import math
import pickle

import pytest

from data_prep import obtain
from nbmodule.engines import replay as engine
from nbmodule.runs import CheckpointError, RunDir
from nbmodule.viz import replay as viz

Config = engine.Config
TINY = dict(scale="smoke", image_size=32, n_train=6, n_val=3, steps_seg=2, steps_det=4, steps_cls=2, batch_size=2,
            buffer_size=4, fpn_channels=16, latency_size=64, latency_repeats=1, n_examples=1, log_every=1,
            checkpoint_every=2, runs=[])
KEYS = ("seg_miou", "det_map", "det_map50", "cls_top1", "stage2_seg_miou", "stage2_det_map", "seg_drop_abs")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay_data")
    for name in engine.DATASETS.values():
        obtain(name, root, prefer="synthetic", scale="smoke")
    return root


@pytest.fixture(scope="module")
def tasks(data_root):
    return engine.prepare_tasks(Config.from_values(TINY), data_root)


@pytest.fixture(scope="module")
def finished(tasks, tmp_path_factory):
    """One uninterrupted run: its folder and metrics."""
    rd = RunDir(tmp_path_factory.mktemp("full"), "02_sequential_replay")
    cfg = Config.from_values(TINY)
    rd.save_config(cfg, study="replay")
    return rd, engine.run_study(cfg, rd, tasks=tasks, progress=False)


class _Kill(Exception):
    pass


def test_a_stage_interrupted_mid_way_resumes_to_the_same_numbers(tasks, finished, tmp_path):
    cfg = Config.from_values(TINY)
    rd = RunDir(tmp_path, "r")

    def kill(run, step):  # the kernel dies after step 3 of stage 2 (its step-2 checkpoint is on disk)
        if run == "replay" and step == 3 and rd.checkpointer("replay_2_det").exists():
            raise _Kill

    with pytest.raises(_Kill):
        engine.run_study(cfg, rd, tasks=tasks, progress=False, callback=kill)
    ck = rd.checkpointer("replay_2_det", config=cfg)
    assert ck.load() is not None and ck.step == 2 and not ck.done  # a mid-stage checkpoint
    steps = []
    resumed = engine.run_study(cfg, rd, tasks=tasks, progress=False, callback=lambda run, s: steps.append((run, s)))
    assert steps[:2] == [("replay", 3), ("replay", 4)]  # stage 1 was read back; stage 2 went on from step 3
    full = finished[1]
    for key in KEYS:
        a, b = full[key], resumed[key]
        assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), key
    assert rd.curve("loss") == finished[0].curve("loss")


class _Payload:
    """Unpickling this would run code (what a crafted file in a shared run folder does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_pickles_in_a_run_folder_are_refused_without_running(finished, tasks, tmp_path):
    marker = tmp_path / "executed"
    run = tmp_path / "shared_run"
    run.mkdir()
    (run / "examples.pt").write_bytes(pickle.dumps({"seg": _Payload(marker)}))
    with pytest.raises(Exception, match="Weights only load failed|Unsupported|not a whole torch archive"):
        viz.plot_examples(run)
    assert not marker.exists()
    # a crafted checkpoint: the study refuses to resume from it, and runs nothing
    rd = RunDir(tmp_path, "crafted")
    (rd.path / "checkpoints").mkdir()
    (rd.path / "checkpoints" / "seq_1_seg.pt").write_bytes(pickle.dumps({"state": _Payload(marker)}))
    with pytest.raises(CheckpointError, match="seq_1_seg.pt"):
        engine.run_study(Config.from_values(TINY), rd, tasks=tasks, progress=False)
    assert not marker.exists()
