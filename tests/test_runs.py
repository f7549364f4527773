"""The run folder's guarantees: resume only the same settings, survive a damaged checkpoint, never execute a
pickle, atomic writes with the user's umask."""
from __future__ import annotations

import os
import pickle
import random
import warnings

import numpy as np
import pytest
import torch

from nbmodule.runs import (CheckpointError, ResumeError, RunDir, compare_configs, is_timing_key, rng_state,
                           set_rng_state)


def _loop(run: RunDir, total: int, config: dict, stop_at: int | None = None, **rules) -> tuple[list[int], dict]:
    """A toy training loop on the checkpointer: w accumulates the step numbers it saw."""
    ck = run.checkpointer("train", config=config, **rules)
    state = ck.load() or {"w": torch.zeros(())}
    w = state["w"].clone()
    seen = []
    for step in ck.steps(total, every=2, state=lambda: {"w": w.clone()}):
        if stop_at is not None and step == stop_at:
            break
        w += step
        seen.append(step)
    return seen, {"w": float(w), "step": ck.step, "done": ck.done}


def test_interrupted_loop_resumes_to_the_same_result(tmp_path):
    straight = _loop(RunDir(tmp_path, "a"), 7, {"lr": 0.1})[1]
    run = RunDir(tmp_path, "b")
    seen, _ = _loop(run, 7, {"lr": 0.1}, stop_at=6)  # dies during step 6: the last checkpoint is step 4
    assert seen == [1, 2, 3, 4, 5]
    seen, final = _loop(run, 7, {"lr": 0.1})
    assert seen == [5, 6, 7] and final == straight == {"w": 28.0, "step": 7, "done": True}


def test_changed_settings_are_refused_naming_the_fields(tmp_path):
    run = RunDir(tmp_path)
    _loop(run, 4, {"lr": 0.1, "hidden": [40, 40], "log_every": 5})
    with pytest.raises(ResumeError) as err:
        _loop(run, 4, {"lr": 0.2, "hidden": [40, 40], "log_every": 5})
    msg = str(err.value)
    assert "lr (stored 0.1, now 0.2)" in msg and "--restart" in msg and "--out" in msg and "hidden" not in msg
    # a neutral field may change, a resumable one may grow (and the loop continues), but not shrink
    seen, final = _loop(run, 6, {"lr": 0.1, "hidden": [40, 40], "log_every": 9}, neutral={"log_every"},
                        resumable={"total"})
    assert seen == [5, 6] and final["w"] == 21.0
    refused, grown = compare_configs({"total": 6, "lr": 1}, {"total": 8, "lr": 1}, resumable={"total"})
    assert (refused, grown) == ([], ["total"])
    assert compare_configs({"total": 6}, {"total": 4}, resumable={"total"}) == (["total"], [])
    assert compare_configs({"seeds": [0, 1]}, {"seeds": [0, 1, 2]}, resumable={"seeds"}) == ([], ["seeds"])
    assert compare_configs({"seeds": [0, 1]}, {"seeds": [1, 2]}, resumable={"seeds"}) == (["seeds"], [])


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    run = RunDir(tmp_path)
    _loop(run, 6, {"lr": 0.1}, stop_at=5)  # checkpoints at steps 2 and 4: newest 4, previous 2
    ck = run.checkpointer("train", config={"lr": 0.1})
    data = ck.path.read_bytes()
    ck.path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * 64}[damage])
    with pytest.warns(UserWarning, match=r"train\.pt.*unreadable.*previous good one.*train\.prev\.pt"):
        state = ck.load()
    assert ck.step == 2 and float(state["w"]) == 3.0
    ck.previous.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint.*train\.pt.*train\.prev\.pt"):
        run.checkpointer("train", config={"lr": 0.1}).load()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_pickle_in_a_run_folder_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir(tmp_path, "shared")
    ck = run.checkpointer("final")
    ck.path.parent.mkdir(parents=True)
    with ck.path.open("wb") as fh:
        torch.save({"state": {"model": _Exploit()}, "step": 1}, fh, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="final.pt"):
        run.load_checkpoint("final")
    (run.path / "examples.pt").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError, match=r"examples\.pt is damaged \(not a whole torch archive"):
        run.load_tensors("examples.pt")  # not even unpickled: a plain pickle is no torch archive
    assert not (tmp_path / "pwned").exists()


def test_save_refuses_what_could_not_be_loaded_safely(tmp_path):
    with pytest.raises(CheckpointError, match="weights_only"):
        RunDir(tmp_path).checkpointer("x").save({"rng": np.random.get_state()}, step=1)


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    run.save_checkpoint({"rng": rng_state()})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_state(run.load_checkpoint()["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_files_keep_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = RunDir(tmp_path)
        paths = [run.write_json("a.json", {}), run.save_checkpoint({"x": torch.ones(1)}), run.write_curve("c", [{"x": 1}])]
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in paths} == {oct(0o644)}


def test_write_curve_keeps_the_old_file_until_the_new_one_is_whole(tmp_path):
    run = RunDir(tmp_path)
    run.write_curve("train", [{"step": 1, "loss": 2.0}])
    with pytest.raises(ValueError):  # a row with a column the header lacks fails while writing
        run.write_curve("train", [{"step": 1, "loss": 1.0}, {"step": 2, "oops": 3}])
    assert run.curve("train") == [{"step": 1.0, "loss": 2.0}]
    assert not list((run.path / "curves").glob(".*"))


def test_timing_keys_are_told_apart():
    assert all(map(is_timing_key, ["latency_ms", "train_s", "images_per_s", "maml_rl_s_per_iter", "x_seconds"]))
    assert not any(map(is_timing_key, ["seg_miou", "uniform_mse_1step", "steps", "n_shots", "delta_m"]))


def test_damaged_json_names_the_file(tmp_path):
    run = RunDir(tmp_path)
    (run.path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metrics\.json is damaged"):
        run.metrics


def test_a_finished_loop_keeps_only_its_final_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    _loop(run, 6, {"lr": 0.1})
    ck = run.checkpointer("train", config={"lr": 0.1})
    assert ck.path.is_file() and not ck.previous.exists() and ck.load() is not None and ck.done


def test_no_warning_on_a_clean_resume(tmp_path):
    run = RunDir(tmp_path)
    _loop(run, 4, {"lr": 0.1}, stop_at=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loop(run, 4, {"lr": 0.1})


def test_files_written_by_other_means_can_be_recorded_for_restart(tmp_path):
    """A sweep's cell log or copied checkpoints are the project's too once recorded: --restart may delete them."""
    from nbmodule.config import ConfigError

    run = RunDir(tmp_path, "cell")
    (run.path / "cell.log").write_text("log")
    with pytest.raises(ConfigError, match=r"cell\.log.*nothing was deleted"):
        run.clear()
    run.record(run.path / "cell.log")
    (run.path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        run.clear()
    assert (run.path / "cell.log").is_file()
    (run.path / "notes.txt").unlink()
    run.clear()
    assert list(run.path.iterdir()) == []
