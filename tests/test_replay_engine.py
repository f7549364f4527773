"""The sequential replay engine: config validation, replay per step, loss that decreases, run folder, resume."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from data_prep import coco as prep_coco
from data_prep import imagenette as prep_imagenette
from data_prep import voc as prep_voc
from nbmodule.config import ConfigError, make_config
from nbmodule.data.replay import ReplayBuffer
from nbmodule.engines.replay import ReplayConfig, forgetting, load_task_data, run_study, train_stage, _new_model
from nbmodule.runs import RunDir

TINY = dict(image_size=64, steps_seg=2, steps_det=2, steps_cls=2, batch_size=2, buffer_size=4, latency_size=64,
            latency_repeats=1, n_examples=1, log_every=1, fpn_channels=16)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay_data")
    for mod, name in ((prep_voc, "voc"), (prep_coco, "coco"), (prep_imagenette, "imagenette")):
        mod.synthesize(root / name, seed=0, scale="smoke", n_train=6, n_val=3, image_size=64)
    return {"seg": root / "voc", "det": root / "coco", "cls": root / "imagenette"}


def test_config_rejects_more_than_ten_replayed_images_and_unknown_values():
    with pytest.raises(ConfigError, match="replay_max"):
        make_config(ReplayConfig, {"replay_max": 11})
    with pytest.raises(ConfigError, match="buffer_policy"):
        make_config(ReplayConfig, {"buffer_policy": "newest"})
    with pytest.raises(ConfigError, match="image_size"):
        make_config(ReplayConfig, {"image_size": 100})  # not a multiple of 32
    with pytest.raises(ConfigError, match="unknown field 'replay_every'"):
        make_config(ReplayConfig, {"replay_every": 3})
    assert make_config(ReplayConfig, {"batch_size": 64, "replay_ratio": 1.0}).replay_per_task() == 10
    assert make_config(ReplayConfig, {"batch_size": 8, "replay_ratio": 0.5}).replay_per_task() == 4


def test_forgetting_is_relative_percent_and_absolute_points():
    rel, pts = forgetting(0.5, 0.45)
    assert math.isclose(rel, 10.0) and math.isclose(pts, 5.0)
    assert math.isnan(forgetting(0.0, 0.0)[0])


class _Recording(ReplayBuffer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.asked: list[int] = []

    def sample(self, k, generator=None):
        self.asked.append(k)
        return super().sample(k, generator)


def test_each_step_replays_at_most_the_configured_images_per_earlier_task(tiny_data):
    cfg = make_config(ReplayConfig, {**TINY, "steps_det": 3, "batch_size": 4, "replay_ratio": 0.5})
    data = load_task_data(cfg, paths=tiny_data)
    buf = _Recording(4, seed=0)
    buf.update(data["seg"].train)
    model = _new_model(cfg, data, 0)
    rows = train_stage(model, "det", data["det"], cfg, device=torch.device("cpu"),
                       generator=torch.Generator().manual_seed(0), buffers={"seg": buf}, progress=False)
    assert buf.asked == [2, 2, 2]
    assert all(r["extra_loss"] > 0 for r in rows)  # the replayed segmentation loss is part of every step


def test_training_a_stage_lowers_its_loss(tiny_data):
    cfg = make_config(ReplayConfig, {**TINY, "steps_seg": 30, "batch_size": 4, "lr": 0.005, "log_every": 5})
    data = load_task_data(cfg, paths=tiny_data)
    model = _new_model(cfg, data, 0)
    rows = train_stage(model, "seg", data["seg"], cfg, device=torch.device("cpu"),
                       generator=torch.Generator().manual_seed(0), progress=False)
    assert rows[-1]["task_loss"] < 0.75 * rows[0]["task_loss"]


def test_run_study_writes_the_contract_and_resumes_from_checkpoints(tiny_data, tmp_path):
    cfg = make_config(ReplayConfig, {**TINY, "runs": ["noreplay", "alone", "lwf"]})
    data = load_task_data(cfg, paths=tiny_data)
    rd = RunDir(tmp_path, "02_sequential_replay")
    m = run_study(cfg, rd, data=data, seed=0, progress=False)
    for key in ("seg_miou", "det_map", "det_map50", "cls_top1", "seg_drop_pct", "det_drop_pct", "cls_drop_pct",
                "noreplay_seg_miou", "noreplay_seg_drop_pct", "noreplay_det_drop_pct", "noreplay_cls_drop_pct",
                "lwf_seg_drop_pct", "alone_seg_miou", "alone_det_map", "alone_cls_top1", "params", "latency_ms"):
        assert key in m, key
    assert 0 < m["params"] < 8_000_000 and m["latency_ms"] > 0
    assert m["cls_drop_pct"] in (0.0, None)  # the last task: its own stage is the end of training
    with open(rd / "stage_table.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["run"], r["stage"]) for r in table[:3]] == [("replay", "seg"), ("replay", "det"), ("replay", "cls")]
    assert table[0]["det_map"] == "" and table[2]["cls_top1"] != ""  # not learned yet -> empty
    loss = rd.curve("loss")
    assert {"run", "seed", "step", "stage", "loss"} <= set(loss[0])
    assert {r["run"] for r in loss} >= {"replay", "noreplay", "lwf", "alone_seg", "alone_det", "alone_cls"}
    assert {p.name for p in (rd.path / "checkpoints").iterdir()} >= {"seq_1_seg.pt", "replay_2_det.pt",
                                                                       "replay_3_cls.pt", "noreplay_3_cls.pt"}
    assert (rd / "examples.pt").is_file() and json.loads((rd / "weights.json").read_text())["weights"]
    # stage 1 is shared: the no-replay run starts from the very same segmentation model
    assert m["noreplay_stage1_seg_miou"] == m["stage1_seg_miou"] == m["alone_seg_miou"]

    # a rerun loads every finished stage instead of training it, and reproduces the numbers
    again = run_study(cfg, RunDir(tmp_path, "02_sequential_replay"), data=data, seed=0, progress=False)
    assert again["train_s"] == 0
    for key in ("seg_miou", "det_map", "cls_top1", "noreplay_seg_drop_pct", "alone_det_map"):
        assert again[key] == m[key] or (again[key] is None and m[key] is None)


def test_resume_after_an_interrupted_stage_matches_an_uninterrupted_run(tiny_data, tmp_path):
    cfg = make_config(ReplayConfig, {**TINY, "runs": []})
    data = load_task_data(cfg, paths=tiny_data)
    full = run_study(cfg, RunDir(tmp_path / "a", "r"), data=data, seed=1, progress=False)
    rd = RunDir(tmp_path / "b", "r")
    run_study(cfg, rd, data=data, seed=1, progress=False)
    rd.checkpoint_path("replay_3_cls").unlink()  # as if the kernel died during stage 3
    resumed = run_study(cfg, rd, data=data, seed=1, progress=False)
    for key in ("seg_miou", "det_map", "det_map50", "cls_top1", "seg_drop_pct"):
        a, b = full[key], resumed[key]
        assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), key


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu", "fixed_buffer"])
def test_yaml_configs_load(name):
    from pathlib import Path

    from nbmodule.config import load_config

    cfg = load_config(ReplayConfig, Path(__file__).resolve().parent.parent / "configs" / "replay" / f"{name}.yaml")
    assert cfg.replay_per_task() <= 10


def test_cli_runs_a_yaml_config(tiny_data, tmp_path):
    from nbmodule.engines.replay import main

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text("\n".join(f"{k}: {v}" for k, v in {**TINY, "runs": "[]"}.items()))
    data_root = tmp_path / "data"
    (data_root / "synthetic").mkdir(parents=True)
    for task, name in (("seg", "voc"), ("det", "coco"), ("cls", "imagenette")):
        (data_root / "synthetic" / name).symlink_to(tiny_data[task])
    assert main(["--config", str(cfg_file), "--out", str(tmp_path / "runs"), "--data", str(data_root)]) == 0
    assert (tmp_path / "runs" / "02_sequential_replay" / "metrics.json").is_file()
