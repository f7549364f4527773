"""The replay study's engine: config bounds, replay per step, learning, AMP, the run folder from both doors, and
the protocol's definitions (forgetting, metric ranges)."""
from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

from data_prep import obtain
from nbmodule import cli
from nbmodule.config import ConfigError
from nbmodule.data.replay import ReplayBuffer
from nbmodule.engines import replay as engine
from nbmodule.engines.replay.protocol import MetricRangeError, check_unit_interval
from nbmodule.runs import ResumeError, RunContext, RunDir, compare_configs
from nbmodule.studies import execute, get_study

Config = engine.Config
# a few images of 32 px, two steps a stage: seconds per run on 2 CPU cores
TINY = dict(scale="smoke", image_size=32, n_train=6, n_val=3, steps_seg=2, steps_det=2, steps_cls=2, batch_size=2,
            buffer_size=4, fpn_channels=16, latency_size=64, latency_repeats=1, n_examples=1, log_every=1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Smoke-scale synthetic VOC / COCO / Imagenette, prepared once (as the study itself would)."""
    root = tmp_path_factory.mktemp("replay_data")
    for name in engine.DATASETS.values():
        obtain(name, root, prefer="synthetic", scale="smoke")
    return root


@pytest.fixture(scope="module")
def tasks(data_root):
    return engine.prepare_tasks(Config.from_values(TINY), data_root)


def _ctx(data_root, **kw) -> RunContext:
    return RunContext.create(device="cpu", data=data_root, progress=False, **kw)


def test_config_bounds_fail_before_training_naming_the_field():
    for bad, field in (({"replay_max": 11}, "replay_max"), ({"buffer_policy": "newest"}, "buffer_policy"),
                       ({"image_size": 100}, "image_size"), ({"image_size": 0}, "image_size"),
                       ({"latency_size": 16}, "latency_size"), ({"runs": ["lwf", "lwf"]}, "runs"),
                       ({"replay_tasks": ["seg", "seg"]}, "replay_tasks"), ({"det_classes": []}, "det_classes"),
                       ({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"), ({"scale": "huge"}, "scale")):
        with pytest.raises(ConfigError, match=field):
            Config.from_values(bad)
    with pytest.raises(ConfigError, match="unknown field 'replay_every'"):
        Config.from_values({"replay_every": 3})
    assert Config.from_values({"batch_size": 64, "replay_ratio": 1.0}).replay_per_task() == 10
    assert Config.from_values({"batch_size": 8, "replay_ratio": 0.5}).replay_per_task() == 4
    assert Config.from_values({"image_size": 32}).image_size == 32  # the smallest a stride-32 backbone takes


def test_profiles_name_configs_and_gpu_dry_keeps_the_gpu_experiment():
    from nbmodule.profiles import load_profiles, study_profile

    profiles, stem = load_profiles(), get_study("replay").notebook
    cfg = {p: study_profile(profiles, p, stem, Config)[0] for p in ("smoke", "cpu", "gpu", "gpu-dry")}
    assert cfg["cpu"] == Config.from_values({}) and cfg["cpu"].synthetic  # default.yaml is the cpu experiment
    gpu, dry = cfg["gpu"], cfg["gpu-dry"]
    assert not gpu.synthetic and gpu.image_size == 512 and gpu.backbone == "mobilenet_v3_large" and gpu.amp
    same = ("synthetic", "image_size", "backbone", "pretrained", "fpn_channels", "amp", "runs", "replay_tasks")
    assert all(getattr(dry, f) == getattr(gpu, f) for f in same)
    assert max(dry.steps_seg, dry.steps_det, dry.steps_cls) <= 3 and dry.batch_size <= 2


def test_a_config_naming_absent_coco_categories_is_refused_before_training(data_root):
    with pytest.raises(ConfigError, match=r"det data at .*'zebra'"):
        engine.prepare_tasks(Config.from_values({**TINY, "det_classes": ["zebra"]}), data_root)


def test_a_detection_set_without_boxes_is_refused_before_training(data_root, tmp_path):
    coco = shutil.copytree(data_root / "synthetic" / "coco", tmp_path / "coco")
    ann = coco / "annotations" / "instances_train2017.json"
    ann.write_text(json.dumps({**json.loads(ann.read_text()), "annotations": []}))
    with pytest.raises(ConfigError, match=r"det data at .*no training image holds a box"):
        engine.open_task(Config.from_values(TINY), "det", coco)


def test_forgetting_is_relative_percent_and_absolute_points():
    assert engine.forgetting(0.5, 0.45) == pytest.approx((10.0, 5.0))
    assert engine.forgetting(0.4, 0.5) == pytest.approx((-25.0, -10.0))  # a gain is a negative drop
    assert math.isnan(engine.forgetting(0.0, 0.0)[0]) and engine.forgetting(0.0, 0.0)[1] == 0.0
    assert all(math.isnan(v) for v in engine.forgetting(None, 0.3))
    assert engine.mean_drop([10.0, None, float("nan"), 20.0]) == 15.0 and math.isnan(engine.mean_drop([None]))


def test_a_metric_out_of_range_is_an_error_naming_it():
    check_unit_interval({"seg_miou": 0.0, "det_map": 1.0, "cls_top1": None, "det_map50": float("nan")}, "ok")
    with pytest.raises(MetricRangeError, match=r"seg_miou=1.04.*cls_top1=-0.1"):
        check_unit_interval({"seg_miou": 1.04, "det_map": 0.5, "cls_top1": -0.1}, "here")


def test_evaluation_refuses_an_impossible_value(tasks, monkeypatch):
    from nbmodule.engines.replay import evaluation

    model = get_model(tasks)
    monkeypatch.setattr(evaluation, "top1_accuracy", lambda logits, labels: 1.5)
    with pytest.raises(MetricRangeError, match=r"cls_top1=1.5"):
        engine.evaluate(model, "cls", tasks["cls"].val, torch.device("cpu"))


def get_model(tasks, **kw):
    from nbmodule.models import build_model

    return build_model("unified", num_seg_classes=tasks["seg"].num_classes, num_det_classes=tasks["det"].num_classes,
                       num_cls_classes=tasks["cls"].num_classes, fpn_channels=16, **kw)


class _Recording(ReplayBuffer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.asked: list[int] = []

    def sample(self, k, generator=None):
        self.asked.append(k)
        return super().sample(k, generator)


def test_each_step_replays_at_most_the_configured_images_per_earlier_task(tasks):
    cfg = Config.from_values({**TINY, "steps_det": 3, "batch_size": 4, "replay_ratio": 0.5})
    buf = _Recording(4, seed=0)
    buf.update(tasks["seg"].train)
    rows = engine.train_stage(get_model(tasks), "det", tasks["det"], cfg, device=torch.device("cpu"), seed=0,
                              buffers={"seg": buf})
    assert buf.asked == [2, 2, 2]
    assert all(r["extra_loss"] > 0 for r in rows)  # the replayed segmentation loss is part of every step


def test_training_a_stage_lowers_its_loss(tasks):
    cfg = Config.from_values({**TINY, "steps_seg": 30, "batch_size": 4, "lr": 0.005, "log_every": 5})
    rows = engine.train_stage(get_model(tasks), "seg", tasks["seg"], cfg, device=torch.device("cpu"), seed=0)
    assert rows[-1]["task_loss"] < 0.75 * rows[0]["task_loss"]


def test_amp_trains_in_bfloat16_on_cpu(tasks, monkeypatch):
    monkeypatch.setenv("NBM_CPU_AMP", "1")  # whether or not this CPU has native bfloat16
    cfg = Config.from_values({**TINY, "amp": True, "steps_cls": 3})
    model = get_model(tasks)
    seen = []
    model.head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    rows = engine.train_stage(model, "cls", tasks["cls"], cfg, device=torch.device("cpu"), seed=0)
    assert seen and set(seen) == {torch.bfloat16} and all(math.isfinite(r["loss"]) for r in rows)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    prec = engine.Precision(True, torch.device("cpu"))
    assert prec.dtype == torch.bfloat16 and not prec.scaler.is_enabled() and "bfloat16" in prec.describe()
    assert engine.Precision(False, torch.device("cpu")).describe() == "float32"


def test_amp_on_a_cpu_without_native_bfloat16_runs_float32_and_says_why(tasks, monkeypatch):
    """Emulated bfloat16 is many times slower (ResNet-50: 11.2 s against 0.44 s per forward pass on an AVX2
    CPU): ``amp: true`` trains in float32 there, and the run's precision record says why."""
    from nbmodule import env

    monkeypatch.delenv("NBM_CPU_AMP", raising=False)
    monkeypatch.setattr(env, "_native_bfloat16", lambda: False)
    prec = engine.Precision(True, torch.device("cpu"))
    assert not prec.enabled and "lacks natively" in prec.describe() and "NBM_CPU_AMP=1" in prec.describe()
    model = get_model(tasks)
    seen = []
    model.head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    engine.train_stage(model, "cls", tasks["cls"], Config.from_values({**TINY, "amp": True, "steps_cls": 2}),
                       device=torch.device("cpu"), seed=0)
    assert set(seen) == {torch.float32}
    monkeypatch.setattr(env, "_native_bfloat16", lambda: True)  # a CPU with AVX512-BF16 or AMX
    assert engine.Precision(True, torch.device("cpu")).enabled
    monkeypatch.setenv("NBM_CPU_AMP", "0")
    assert not engine.Precision(True, torch.device("cpu")).enabled


def test_the_float16_gradscaler_path_runs_and_checkpoints_on_cpu(tasks, monkeypatch, tmp_path):
    """The CUDA branch (float16 autocast, GradScaler, its state in the checkpoint), run on a CPU so a typo in
    it cannot wait for a GPU to be found."""
    from nbmodule.engines.replay import training

    class CpuFloat16(training.Precision):
        def __init__(self, enabled, device):
            super().__init__(enabled, device)
            self.dtype, self.scaler = torch.float16, torch.amp.GradScaler("cpu", enabled=enabled)

    monkeypatch.setattr(training, "Precision", CpuFloat16)
    monkeypatch.setenv("NBM_CPU_AMP", "1")  # autocast on, whatever this CPU's bfloat16 support
    cfg = Config.from_values({**TINY, "amp": True, "steps_cls": 3, "checkpoint_every": 2})
    ck = RunDir(tmp_path).checkpointer("cls", config=cfg)
    model = get_model(tasks)
    seen = []
    model.head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    rows = engine.train_stage(model, "cls", tasks["cls"], cfg, device=torch.device("cpu"), seed=0, checkpoint=ck)
    assert set(seen) == {torch.float16} and all(math.isfinite(r["loss"]) for r in rows)
    state = ck.load()
    assert ck.step == 2 and state["scaler"]["scale"] > 0  # the scaler's state travels with the checkpoint


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def contract_run(data_root, tmp_path_factory):
    """One run of every kind through the command line (the notebook's door is the same execute())."""
    out = tmp_path_factory.mktemp("runs")
    values = {**TINY, "runs": ["noreplay", "alone", "lwf"]}
    overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
    assert cli.main(["run", "replay", "--config", "default", "--out", str(out), "--data", str(data_root),
                     "--device", "cpu", "--no-progress", *overrides]) == 0
    return RunDir(out, get_study("replay").notebook), Config.from_values(values)


def test_the_run_folder_holds_the_contract(contract_run):
    rd, _ = contract_run
    m = rd.metrics
    for key in ("seg_miou", "det_map", "det_map50", "cls_top1", "seg_drop_pct", "det_drop_abs", "mean_drop_pct",
                "noreplay_seg_miou", "noreplay_det_drop_pct", "lwf_seg_drop_pct", "alone_seg_miou", "alone_det_map",
                "alone_cls_top1", "params", "latency_ms", "pretrained", "synthetic", "replay_per_task", "train_s"):
        assert key in m, key
    assert m["synthetic"] == 1 and m["pretrained"] == 0 and 0 < m["params"] < 8_000_000 and m["latency_ms"] > 0
    check_unit_interval({k: v for k, v in m.items() if k.endswith(engine.METRICS)}, "metrics.json")
    # stage 1 is shared: every sequential run and the segmentation-alone run start from the same model
    assert m["noreplay_stage1_seg_miou"] == m["lwf_stage1_seg_miou"] == m["stage1_seg_miou"] == m["alone_seg_miou"]
    for prefix in ("", "noreplay_", "lwf_"):  # the drops are the protocol's forgetting of the stage metrics
        for k, (task, metric) in enumerate(engine.TASK_METRIC.items(), start=1):
            rel, pts = engine.forgetting(m[f"{prefix}stage{k}_{metric}"], m[f"{prefix}{metric}"])
            assert m[f"{prefix}{task}_drop_abs"] == pytest.approx(pts)
            assert m[f"{prefix}{task}_drop_pct"] == (None if math.isnan(rel) else pytest.approx(rel))
    if m["noreplay_mean_drop_pct"] is not None and m["mean_drop_pct"] is not None:
        assert m["forgetting_reduction_pct"] == pytest.approx(m["noreplay_mean_drop_pct"] - m["mean_drop_pct"])
    table = _rows(rd / "stage_table.csv")
    assert list(table[0]) == list(engine.STAGE_COLUMNS)
    assert [(r["run"], r["stage"]) for r in table[:3]] == [("replay", "seg"), ("replay", "det"), ("replay", "cls")]
    assert table[0]["det_map"] == "" and table[2]["cls_top1"] != ""  # not learned yet -> empty
    loss = rd.curve("loss")
    assert {r["run"] for r in loss} == {"replay", "noreplay", "lwf", "alone_seg", "alone_det", "alone_cls"}
    assert {p.name for p in (rd.path / "checkpoints").glob("*.pt")} >= {
        "seq_1_seg.pt", "replay_2_det.pt", "replay_3_cls.pt", "noreplay_3_cls.pt", "lwf_2_det.pt", "alone_cls.pt"}
    assert json.loads((rd / "weights.json").read_text())["weights"] == "random (pretrained=False)"
    data = json.loads((rd / "data.json").read_text())
    assert all(d["synthetic"] and d["train"] == 6 and d["val"] == 3 for d in data.values())
    assert {f"{s.name}.png" for s in get_study("replay").figures()} <= {p.name for p in rd.path.iterdir()}


def _stamps(rd):
    return {p.name: p.stat().st_mtime_ns for p in (rd.path / "checkpoints").iterdir()}


def test_a_rerun_reads_every_stage_back_with_the_same_numbers(contract_run, data_root, tmp_path):
    src, cfg = contract_run
    rd = RunDir(shutil.copytree(src.path, tmp_path / "copy"))
    stamps = _stamps(rd)
    again = engine.run(cfg, rd, _ctx(data_root))
    first = src.metrics
    assert {k: v for k, v in again.items() if k != "latency_ms"} == {k: v for k, v in first.items() if k != "latency_ms"}
    assert _stamps(rd) == stamps  # nothing retrained


def test_a_changed_field_is_refused_naming_it_and_neutral_ones_resume(contract_run, data_root, tmp_path):
    src, cfg = contract_run
    rd = RunDir(shutil.copytree(src.path, tmp_path / "copy"))
    study, ctx = get_study("replay"), _ctx(data_root)
    stored = json.loads((rd / "config.json").read_text())
    changed = Config.from_values({**cfg.to_dict(), "lr": 0.004})
    with pytest.raises(ResumeError, match=r"lr \(stored 0.002, now 0.004\).*--restart"):
        execute(study, changed, rd, ctx)
    assert json.loads((rd / "config.json").read_text()) == stored  # config.json still tells the truth
    # past execute's check (a direct call, copied checkpoints): every stage checkpoint refuses it too
    with pytest.raises(ResumeError, match=r"lr \(stored 0.002, now 0.004\)"):
        engine.run(changed, rd, ctx)
    # neutral fields (the checkpoint period, latency repeats, example count) resume to the same numbers: execute
    # lets them through and so does every stage checkpoint
    stamps = _stamps(rd)
    neutral = Config.from_values({**cfg.to_dict(), "checkpoint_every": 1, "latency_repeats": 2, "n_examples": 2})
    assert compare_configs(stored["config"], neutral.to_dict(), resumable=Config.RESUMABLE,
                           neutral=Config.NEUTRAL)[0] == []
    again = engine.run(neutral, rd, ctx)
    assert all(again[k] == v for k, v in src.metrics.items() if k != "latency_ms")
    assert _stamps(rd) == stamps
