"""The MTML engine: config errors, episodes, meta-gradient, resume, the study's run-folder contract, CLI."""
import json
import math

import pytest
import torch

from nbmodule.config import ConfigError, make_config
from nbmodule.engines import mtml
from nbmodule.engines.mtml import MTMLConfig, steps_to_target, task_subsets
from nbmodule.runs import RunDir

TINY = dict(scale="smoke", backbone="mobilenet_v3_small", head_width=8, batch_size=4, steps=4, meta_steps=2,
            finetune_steps=4, eval_every=2, checkpoint_every=2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Synthetic scenes (smoke scale, small counts) shared by the tests of this module."""
    from data_prep.registry import prepare

    root = tmp_path_factory.mktemp("data")
    prepare("nyuv2", root / "synthetic" / "nyuv2", synthetic=True, scale="smoke",
            counts={"train": 12, "val": 4, "test": 4}, size=(32, 40))
    return root


def test_subsets_of_at_least_two_tasks():
    assert len(task_subsets(["seg", "depth", "normals", "edges"])) == 11
    assert task_subsets(["seg", "depth", "edges"]) == [("seg", "depth"), ("seg", "edges"), ("depth", "edges"),
                                                       ("seg", "depth", "edges")]
    assert task_subsets(["seg"]) == [("seg",)]


def test_steps_to_target_respects_direction():
    rows = [{"step": 0, "v": 50.0}, {"step": 10, "v": 40.0}, {"step": 20, "v": 30.0}]
    assert steps_to_target(rows, "v", 40.0, lower_is_better=True) == 10
    assert steps_to_target(rows, "v", 20.0, lower_is_better=True) is None
    assert steps_to_target(rows, "v", 45.0, lower_is_better=False) == 0


@pytest.mark.parametrize("values, message", [
    ({"held_out": "edges", "tasks": ["seg", "depth"]}, "held_out='edges' must be one of tasks"),
    ({"backbone": "vgg16"}, "backbone"),
    ({"mode": "meta_test"}, "needs pretrained_run"),
    ({"dataset": "nyuv2_13"}, "has no edges"),
    ({"weighting": "gradnorm"}, "uniform"),
    ({"stepz": 3}, "unknown field 'stepz'"),
])
def test_bad_config_fails_before_training(values, message):
    with pytest.raises(ConfigError, match=message):
        make_config(MTMLConfig, values, source="test")


def _cfg(**kw):
    return make_config(MTMLConfig, {**TINY, **kw})


def _data(cfg, root, split="train"):
    return mtml.load_data(cfg, mtml.prepare_data(cfg, root), split)


def test_meta_step_is_functional_and_reaches_encoder_and_heads(data_root, tmp_path):
    cfg = _cfg(meta_steps=1, tasks=["seg", "depth", "edges"], held_out="")
    train = _data(cfg, data_root)
    torch.manual_seed(0)
    model = mtml.build_model("mtl", tasks={"seg": 40, "depth": 1, "edges": 1}, backbone=cfg.backbone, head_width=8)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    seen = []
    orig = train.__getitem__
    train.__getitem__ = lambda i: (seen.append(i), orig(i))[1]  # only training samples are ever read
    model, state = mtml.meta_train(cfg, RunDir(tmp_path), "mtml", model, ["seg", "depth", "edges"], train,
                                   device=torch.device("cpu"), progress=False)
    assert state["subsets"] == [["seg", "depth"], ["seg", "edges"], ["depth", "edges"], ["seg", "depth", "edges"]]
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("encoder.") for k in changed)
    assert {t for t in ("seg", "depth", "edges") if any(k.startswith(f"heads.{t}.") for k in changed)} == {"seg", "depth", "edges"}
    assert all(v.requires_grad and v.is_leaf for v in model.parameters())  # still the module's own leaves


def test_training_resumes_to_the_same_numbers(data_root, tmp_path):
    cfg = _cfg(steps=6, checkpoint_every=3)
    train, val = _data(cfg, data_root), _data(cfg, data_root, "val")

    def run(folder):
        torch.manual_seed(0)
        model = mtml.build_model("mtl", tasks={"depth": 1, "normals": 3}, backbone=cfg.backbone, head_width=8)
        return mtml.train_dense(cfg, RunDir(folder), "p", model, ["depth", "normals"], train, steps=6, lr=1e-3,
                                device=torch.device("cpu"), curve_task="depth", val_data=val, weighting="uncertainty",
                                progress=False)

    a_model, a = run(tmp_path / "a")
    run(tmp_path / "b")
    ph = RunDir(tmp_path / "b" / "phases" / "p")
    ph.checkpoint_path("final").unlink()  # as if interrupted after the step-3 checkpoint
    assert ph.load_checkpoint("last")["step"] == 3
    b_model, b = run(tmp_path / "b")
    for (k, va), vb in zip(a_model.state_dict().items(), b_model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a["curve"] == b["curve"] and [r["step"] for r in a["curve"]] == [0, 2, 4, 6]
    assert a["train_rows"] == b["train_rows"]
    assert a["log_vars"].abs().sum() > 0  # uncertainty weights were learnt


def test_study_writes_the_contract_and_test_reads_any_phase(data_root, tmp_path):
    cfg = _cfg()
    run = RunDir(tmp_path, "03_mtml")
    metrics = mtml.run_study(cfg, run, device=torch.device("cpu"), data_root=data_root, progress=False, n_examples=2)
    for mode in ("single", "mtl", "mtml"):
        for task, names in {"seg": ["miou", "pixel_acc"], "depth": ["abs_err", "rel_err", "rmse", "delta1"],
                            "normals": ["mean", "median", "within_11_25", "within_22_5", "within_30"],
                            "edges": ["ods"]}.items():
            for name in names:
                assert math.isfinite(metrics[f"{mode}_{task}_{name}"]), (mode, task, name)
        assert f"{mode}_steps_to_target" in metrics and f"{mode}_delta_m" in metrics
    assert metrics["single_delta_m"] == 0.0
    assert metrics["single_steps_to_target"] is not None  # the single-task curve reaches its own final value
    assert json.loads((run.path / "metrics.json").read_text()) == metrics
    rows = run.curve("heldout")
    assert {r["run"] for r in rows} == {"single", "mtl", "mtml"}
    assert sorted({int(r["step"]) for r in rows}) == [0, 2, 4]
    assert list(rows[0]) == ["run", "seed", "step", "val_mean"]
    assert {r["run"] for r in run.curve("train")} >= {"single_seg", "mtl", "mtml", "mtml_ft_normals"}
    assert (run.path / "examples.pt").is_file()
    res = mtml.test(run.path / "phases" / "mtml_ft_normals", data_root=data_root)
    assert set(res) == {"seg", "depth", "edges", "normals"}
    assert res["normals"]["mean"] == pytest.approx(metrics["mtml_normals_mean"])
    # the figures read the folder
    from nbmodule.viz import mtml as viz

    table = viz.metrics_table(run.path)
    assert table.loc["mtml", ("normals", "mean ↓")] == pytest.approx(metrics["mtml_normals_mean"])
    viz.plot_heldout_curves(run.path)
    viz.plot_examples(run.path, 1)


def test_cli_train_meta_test_and_test(data_root, tmp_path, monkeypatch, capsys):
    from nbmodule.mtml import main

    monkeypatch.setenv("NBM_DATA", str(data_root))
    cfg = tmp_path / "mtl.yaml"
    cfg.write_text("base: " + str(mtml.__file__).replace("nbmodule/engines/mtml.py", "configs/mtml/multi_task_baseline.yaml")
                   + "\nscale: smoke\n")
    common = ["--out", str(tmp_path / "runs"), "--no-progress", "-o", "steps=2", "-o", "batch_size=4",
              "-o", "head_width=8", "-o", "tasks=[depth,normals]", "-o", "eval_every=2"]
    assert main(["train", "--config", str(cfg), *common]) == 0
    mtl_phase = tmp_path / "runs" / "multi_task_baseline" / "phases" / "mtl"
    assert (mtl_phase / "checkpoints" / "final.pt").is_file()
    assert main(["meta-train", "--config", str(cfg), *common]) == 2
    assert "is not run by 'meta-train'" in capsys.readouterr().err
    mt = tmp_path / "mt.yaml"
    mt.write_text(cfg.read_text().replace("multi_task_baseline.yaml", "meta_testing.yaml")
                  + f"pretrained_run: {mtl_phase}\n")
    assert main(["meta-test", "--config", str(mt), *common, "-o", "finetune_steps=2"]) == 0
    out = json.loads((tmp_path / "runs" / "meta_testing" / "metrics.json").read_text())
    assert math.isfinite(out["meta_test_normals_mean"])
    assert main(["test", "--run", str(mtl_phase)]) == 0
    assert "abs_err" in capsys.readouterr().out
