"""The MTML study: config errors, the meta-gradient, resume, the run-folder contract and its protocols
(like-for-like held-out comparison, both scorings of MTL and MTML, Δm / Δp), and run-folder safety."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

from nbmodule import cli
from nbmodule.config import ConfigError
from nbmodule.engines import mtml
from nbmodule.engines.mtml import Config, episode_loss, steps_to_target, task_subsets
from nbmodule.models import build_model
from nbmodule.engines.mtml import study as study_mod
from nbmodule.runs import ResumeError, RunContext, RunDir
from nbmodule.studies import execute

# steps x batch = 16 image passes = one MTML step (4 subsets x (1 inner + 1 query) x 2 images): equal compute
TINY = dict(steps=8, meta_steps=2, lrs=[0.001, 0.01], finetune_steps=4, finetune_lrs=[0.001, 0.01], eval_every=2,
            batch_size=2, head_width=4, checkpoint_every=2, n_examples=2, bn_images=4)
CPU = dict(device="cpu", progress=False)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Synthetic scenes in the NYUD_MT layout: 8 train, 4 val, 4 test frames of 32x40."""
    from data_prep.registry import prepare

    root = tmp_path_factory.mktemp("data") / "nyuv2"
    prepare("nyuv2", root, synthetic=True, scale="smoke", counts={"train": 8, "val": 4, "test": 4}, size=(32, 40))
    return root


def _use(mp, folder):
    from data_prep.registry import Prepared

    mp.setattr(study_mod, "prepare_data", lambda cfg, root: Prepared(folder, True, "synthetic"))


@pytest.fixture
def tiny(monkeypatch, tiny_data):
    _use(monkeypatch, tiny_data)
    return tiny_data


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, tiny_data):
    """One tiny run of the whole study through the shared door (nbmodule.studies.execute)."""
    mp = pytest.MonkeyPatch()
    _use(mp, tiny_data)
    cfg = Config.from_values(TINY)
    run = RunDir(tmp_path_factory.mktemp("runs"), "03_mtml")
    metrics = execute("mtml", cfg, run, RunContext.create(**CPU))
    yield cfg, run, metrics
    mp.undo()


# --- config ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values, message", [
    ({"image_size": [3, 3]}, "field 'image_size'.*at least 32 pixels"),
    ({"val_split": "test"}, "both 'test'.*reported on a different test split"),
    ({"val_holdout": 10}, "val_holdout=10 goes with val_split: holdout"),
    ({"val_split": "holdout"}, "val_holdout=0 goes with val_split: holdout"),
    ({"held_out": "edges", "tasks": ["seg", "depth"]}, "held_out='edges' must be one of tasks"),
    ({"dataset": "nyuv2_13"}, "has no edges"),
    ({"mode": "meta-test"}, "needs init_model"),
    ({"mode": "train", "tasks": ["normals"]}, "leaves nothing to train"),
    ({"finetune_lrs": []}, "field 'finetune_lrs'"),
    ({"tasks": ["seg", "seg"]}, "must not repeat"),
    ({"backbone": "vgg16"}, "field 'backbone'"),
    ({"first_order": False}, "no second derivative of its hardsigmoid"),
    ({"stepz": 3}, "unknown field 'stepz'"),
])
def test_bad_config_fails_before_training(values, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_values(values, source="test")


def test_stored_images_too_small_for_the_encoder_are_refused(tmp_path):
    from data_prep.registry import prepare

    root = prepare("nyuv2", tmp_path / "small", synthetic=True, scale="smoke",
                   counts={"train": 2, "val": 1, "test": 1}, size=(24, 32))
    with pytest.raises(ConfigError, match="image_size: the samples of .* are 24x32"):
        mtml.load_splits(Config.from_values({}), root)


def test_a_damaged_file_is_named(tmp_path):
    from data_prep.registry import prepare

    from nbmodule.data.nyuv2 import DatasetDamagedError

    root = prepare("nyuv2", tmp_path / "d", synthetic=True, scale="smoke", counts={"train": 2, "val": 1, "test": 1},
                   size=(32, 40))
    s = mtml.load_splits(Config.from_values({"cache": False}), root)
    bad = sorted((root / "depth").glob("*.npy"))[0]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(DatasetDamagedError, match=f"{bad.name} cannot be read.*python -m data_prep nyuv2 --force"):
        for data in (s.train, s.val, s.test):
            for i in range(len(data)):
                data[i]


def test_holdout_validation_is_carved_out_of_train_and_disjoint_from_test(tiny_data):
    from nbmodule.engines.mtml.data import frame_ids

    cfg = Config.from_values({"val_split": "holdout", "val_holdout": 3, "test_split": "val"})
    s = mtml.load_splits(cfg, tiny_data)
    assert (len(s.train), len(s.val)) == (5, 3)
    train, val, test = (set(frame_ids(d)) for d in (s.train, s.val, s.test))
    assert not (train & val) and not (val & test) and len(train | val) == 8
    assert set(frame_ids(mtml.load_splits(cfg, tiny_data).val)) == val  # the same frames every time
    with pytest.raises(ConfigError, match="val_holdout=8: the training split 'train' .* has only 8 frames"):
        mtml.load_splits(Config.from_values({"val_split": "holdout", "val_holdout": 8}), tiny_data)


# --- pieces ---------------------------------------------------------------------------------------------------
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
    assert steps_to_target(rows, "v", None, lower_is_better=False) is None


def _batch(n, h, w, gen, dtype=torch.float32):
    normals = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=gen, dtype=dtype), dim=1)
    return {"image": torch.rand(n, 3, h, w, generator=gen, dtype=dtype),
            "seg": torch.randint(0, 5, (n, h, w), generator=gen),
            "normals": normals, "normals_mask": torch.ones(n, 1, h, w, dtype=torch.bool),
            "edges": (torch.rand(n, 1, h, w, generator=gen) < 0.2).to(dtype)}


def test_second_order_meta_gradient_matches_finite_differences():
    """The gradient an MTML episode back-propagates (second order: through the inner SGD step, the heads and
    BatchNorm's batch statistics) equals central finite differences of the episode's query loss, in
    float64; the first-order gradient does not."""
    torch.manual_seed(0)
    model = build_model("mtl", tasks={"seg": 5, "normals": 3}, backbone="resnet18", head_width=4).double().train()
    gen = torch.Generator().manual_seed(1)
    support, query = _batch(4, 32, 32, gen, torch.float64), _batch(4, 32, 32, gen, torch.float64)

    def objective(first_order=False):
        return episode_loss(model, ("seg", "normals"), support, query, inner_lr=0.01, inner_steps=1,
                            first_order=first_order)

    params = dict(model.named_parameters())
    names = ["heads.seg.predict.weight", "encoder.stages.0.0.weight", "encoder.stages.1.0.conv1.weight"]
    second = torch.autograd.grad(objective(), [params[n] for n in names])
    first = torch.autograd.grad(objective(first_order=True), [params[n] for n in names])
    eps = 1e-6
    for name, g2, g1 in zip(names, second, first):
        p, idx = params[name], (0,) * params[name].dim()
        with torch.no_grad():
            p[idx] += eps
            up = float(objective())
            p[idx] -= 2 * eps
            down = float(objective())
            p[idx] += eps
        fd = (up - down) / (2 * eps)
        assert abs(fd) > 1e-6, name  # a coordinate that matters
        assert float(g2[idx]) == pytest.approx(fd, rel=1e-5), name
        assert float(g1[idx]) != pytest.approx(fd, rel=1e-2), name  # the second-order terms are real


def test_meta_step_is_functional_and_reaches_encoder_and_heads(tiny_data, tmp_path):
    cfg = Config.from_values({**TINY, "meta_steps": 1})
    train = mtml.load_splits(cfg, tiny_data).train
    torch.manual_seed(0)
    model = build_model("mtl", tasks={"seg": 40, "depth": 1, "edges": 1}, backbone=cfg.backbone, head_width=4)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    model, info = mtml.meta_train(cfg, RunDir(tmp_path), "mtml", model, ["seg", "depth", "edges"], train,
                                  device=torch.device("cpu"), progress=False)
    assert info["subsets"] == [["seg", "depth"], ["seg", "edges"], ["depth", "edges"], ["seg", "depth", "edges"]]
    # counted in the loop: per subset one support (inner gradient) and one query pass of 2 images each
    assert info["image_passes"] == 4 * 2 * 2 == mtml.meta_passes_per_step(cfg, 4, 2)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("encoder.") for k in changed)
    assert {t for t in ("seg", "depth", "edges") if any(k.startswith(f"heads.{t}.") for k in changed)} == \
        {"seg", "depth", "edges"}
    assert all(v.requires_grad and v.is_leaf for v in model.parameters())  # still the module's own leaves


def test_an_interrupted_phase_resumes_to_the_same_numbers(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("NBM_CPU_AMP", "1")  # bfloat16 on the CPU, native or not
    cfg = Config.from_values({**TINY, "steps": 4, "checkpoint_every": 2, "amp": True})
    s = mtml.load_splits(cfg, tiny_data)
    curve = mtml.phases.Curve("depth", s.val, s.test, s.num_classes)

    def train(folder):
        model = mtml.fresh_model(cfg, ["depth", "normals"], s.num_classes, 7, torch.device("cpu"))
        return mtml.train_dense(cfg, RunDir(folder), "p", model, ["depth", "normals"], s.train, steps=4, lr=1e-3,
                                device=torch.device("cpu"), seed=3, weighting="uncertainty", curve=curve,
                                progress=False)

    a = train(tmp_path / "a")
    batches = {"n": 0}
    real = mtml.phases.BatchStream.__next__

    def killed_in_step_3(stream):
        batches["n"] += 1
        if batches["n"] == 3:
            raise KeyboardInterrupt
        return real(stream)

    monkeypatch.setattr(mtml.phases.BatchStream, "__next__", killed_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b")
    monkeypatch.undo()
    monkeypatch.setenv("NBM_CPU_AMP", "1")  # undo() dropped it too: the resumed run must be in bfloat16 as well
    assert torch.load(tmp_path / "b" / "checkpoints" / "p.pt", weights_only=True)["step"] == 2
    b = train(tmp_path / "b")
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.curve == b.curve and [r["step"] for r in a.curve] == [0, 2, 4]
    assert a.train_rows == b.train_rows
    assert a.extra["log_vars"].abs().sum() > 0  # uncertainty weights were learnt


# --- the study's contract and protocols -------------------------------------------------------------------------
ROWS = ("single", "mtl", "mtl_adapted", "mtml", "mtml_adapted", "mtml_compute", "mtml_compute_adapted")
STARTS = ("single", "mtl", "mtml", "mtml_compute")


def test_study_writes_every_row_budget_and_figure(study_run):
    cfg, run, metrics = study_run
    names = {"seg": ["miou", "pixel_acc"], "depth": ["abs_err", "rel_err", "rmse", "delta1"],
             "edges": ["ods_f", "ois_f", "ap"],
             "normals": ["mean", "median", "within_11_25", "within_22_5", "within_30"]}
    for row in ROWS:
        for task in cfg.train_tasks:
            for name in names[task]:
                assert math.isfinite(metrics[f"{row}_{task}_{name}"]), (row, task, name)
    for start in STARTS:
        assert all(math.isfinite(metrics[f"{start}_normals_{n}"]) for n in names["normals"])
    assert metrics["mtl_optimizer_steps"] == cfg.steps and metrics["mtml_optimizer_steps"] == cfg.meta_steps
    assert metrics["mtml_inner_steps"] == cfg.meta_steps * 4 * cfg.inner_steps  # 4 subsets of 3 tasks
    assert metrics["mtl_adapted_steps"] == metrics["mtml_adapted_steps"] == cfg.inner_steps
    assert metrics["synthetic"] == 1 and metrics["encoder_pretrained"] == 0
    assert "single_delta_m" not in metrics  # nothing to compare the baseline with
    assert metrics["bn_images"] == 4
    assert json.loads((run.path / "metrics.json").read_text()) == metrics
    for name in ("mtml_table", "mtml_heldout", "train_curves", "edges_pr", "examples"):
        assert (run.path / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    ex = torch.load(run.path / "examples.pt", weights_only=True)
    assert set(ex["preds"]) == set(ROWS) and ex["preds"]["mtml"]["normals"].shape[0] == 2


def test_delta_m_and_delta_p_match_a_hand_computation(study_run):
    """Recomputed from metrics.json alone with the published definitions (one metric per task for Δm;
    LibMTL's sets for Δp), over the training tasks."""
    cfg, _, m = study_run
    dm_metric = {"seg": ("miou", 1), "depth": ("rmse", -1), "edges": ("ods_f", 1)}
    dp_metrics = {"seg": [("miou", 1), ("pixel_acc", 1)], "depth": [("abs_err", -1), ("rel_err", -1)],
                  "edges": [("ods_f", 1)]}

    def rel(row, task, metric, sign):
        base = m[f"single_{task}_{metric}"]
        return None if base == 0 else sign * (m[f"{row}_{task}_{metric}"] - base) / base * 100

    for row in ROWS[1:]:
        dm = [rel(row, t, *dm_metric[t]) for t in cfg.train_tasks]
        dp = [[rel(row, t, *mv) for mv in dp_metrics[t]] for t in cfg.train_tasks]
        assert None not in dm and not any(None in d for d in dp), row  # every baseline metric is non-zero here
        assert m[f"{row}_delta_m"] == pytest.approx(sum(dm) / len(dm)), row
        assert m[f"{row}_delta_p"] == pytest.approx(np.mean([np.mean(d) for d in dp])), row


def test_relative_scores_are_null_only_for_a_zero_baseline_and_raise_for_a_missing_task():
    from nbmodule.engines.mtml.evaluate import relative_scores

    base = {"seg": {"miou": 40.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2, "rmse": 1.0}}
    res = {"seg": {"miou": 44.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2, "rmse": 1.0}}
    assert relative_scores("mtl", res, base)["mtl_delta_m"] == pytest.approx(5.0)
    zero = {**base, "seg": {"miou": 0.0, "pixel_acc": 60.0}}
    assert relative_scores("mtl", res, zero) == {"mtl_delta_m": None, "mtl_delta_p": None}
    with pytest.raises(ValueError, match=r"\['depth'\] in the baseline but not in the metrics"):
        relative_scores("mtl", {"seg": res["seg"]}, base)


def test_mtl_and_mtml_are_scored_both_ways_on_the_same_support_batch(study_run):
    cfg, _, m = study_run
    for kind in ("mtl", "mtml"):
        assert m[f"{kind}_depth_rmse"] != m[f"{kind}_adapted_depth_rmse"]  # the adaptation step did something
    assert {k.split("_", 2)[-1] for k in m if k.startswith("mtl_adapted_")} == \
        {k.split("_", 2)[-1] for k in m if k.startswith("mtml_adapted_")}


def test_heldout_task_is_learnt_like_for_like_selected_on_val_reported_on_test(study_run):
    cfg, run, m = study_run
    df = pd.read_csv(run.path / "curves" / "heldout.csv")
    assert {"val_mean", "test_mean", "lr", "selected"} <= set(df.columns)
    for start in STARTS:
        mine = df[df["run"] == start]
        assert sorted(mine["lr"].unique()) == sorted(cfg.finetune_lrs)  # the same grid from every start ...
        assert all(sorted(g["step"]) == [0, 2, 4] for _, g in mine.groupby("lr"))  # ... and the same budget
        finals = mine[mine["step"] == cfg.finetune_steps].set_index("lr")
        best = finals["val_mean"].idxmin()  # normals: mean angle, lower is better; chosen on validation
        assert m[f"{start}_finetune_lr"] == best and finals.loc[best, "selected"] == 1
        kept = mine[mine["lr"] == best].sort_values("step")
        # the reported metric is the kept model's *test* score, the last point of its test curve
        assert m[f"{start}_normals_mean"] == pytest.approx(kept["test_mean"].iloc[-1])
        assert not np.allclose(kept["val_mean"], kept["test_mean"])  # two different splits
        reached = kept[kept["test_mean"] <= m["heldout_target"]]["step"]
        assert m[f"{start}_steps_to_target"] == (int(reached.min()) if len(reached) else None)
    scratch = df[(df["run"] == "single") & (df["selected"] == 1)].sort_values("step")
    assert m["heldout_target"] == pytest.approx(scratch["test_mean"].iloc[-1])
    s = m["mtml_steps_to_target"]
    assert m["mtml_reaches_target_in_half"] == int(s is not None and s <= cfg.finetune_steps / 2)


def test_every_method_chooses_its_rate_from_the_same_grid_on_validation(study_run):
    """single (per task, its metric), MTL, MTML and MTML at equal compute (validation Δm against the single-task
    models) each train at every rate of lrs and keep the best validation value; curves/selection.csv has them."""
    cfg, run, m = study_run
    sel = pd.read_csv(run.path / "curves" / "selection.csv")
    for row in [f"single_{t}" for t in cfg.train_tasks] + ["mtl", "mtml", "mtml_compute"]:
        mine = sel[sel["run"] == row]
        assert sorted(mine["lr"]) == sorted(cfg.lrs) and mine["selected"].sum() == 1, row
        task = row.removeprefix("single_")
        lower = row.startswith("single_") and mtml.primary(task)[1]
        assert (mine["criterion"] == ("val_delta_m" if not row.startswith("single_") else
                                      f"val_{mtml.primary(task)[0]}")).all()
        best = mine["value"].idxmin() if lower else mine["value"].idxmax()
        assert mine.loc[best, "selected"] == 1 and m[f"{row}_lr"] == mine.loc[best, "lr"], row


def test_both_budgets_side_by_side_with_image_passes_counted(study_run):
    """Equal optimiser steps (mtl vs mtml) and equal compute (mtl vs mtml_compute): forward+backward image passes
    counted in the loops; MTML's compute is 4 subsets x 2 passes per step, so the compute-matched MTML has MTL's."""
    cfg, _, m = study_run
    assert m["mtl_image_passes"] == cfg.steps * cfg.batch_size == 16
    assert m["mtml_image_passes"] == cfg.meta_steps * 4 * (cfg.inner_steps + 1) * cfg.batch_size == 32
    assert m["mtml_compute_image_passes"] == m["mtl_image_passes"] and m["mtml_compute_optimizer_steps"] == 1
    assert m["single_image_passes"] == len(cfg.train_tasks) * cfg.steps * cfg.batch_size
    assert m["mtml_compute_delta_m"] != m["mtml_delta_m"]  # a different model, scored on its own


def test_the_equal_compute_model_is_the_run_stopped_there(tiny_data, tmp_path):
    """The snapshot MTML keeps at step k has the weights of the same run trained for k steps only."""
    cfg = Config.from_values({**TINY, "meta_steps": 2})
    train = mtml.load_splits(cfg, tiny_data).train

    def meta(meta_steps, snapshots, folder):
        c = Config.from_values({**TINY, "meta_steps": meta_steps})
        model = mtml.fresh_model(c, ["seg", "depth"], 40, 5, torch.device("cpu"))
        return mtml.meta_train(c, RunDir(folder), "m", model, ["seg", "depth"], train, device=torch.device("cpu"),
                               seed=3, progress=False, lr=0.01, snapshots=snapshots)

    full, info = meta(2, [1], tmp_path / "a")
    short, short_info = meta(1, [], tmp_path / "b")
    snap = info["snapshots"][1]
    assert snap["image_passes"] == short_info["image_passes"] == info["image_passes"] // 2
    for k, v in short.state_dict().items():
        assert torch.equal(snap["model"][k], v), k
    assert not all(torch.equal(snap["model"][k], v) for k, v in full.state_dict().items())


def test_recalibrated_statistics_are_the_training_images_batch_averages_and_leave_the_model_alone():
    bn = torch.nn.BatchNorm2d(3)
    model = torch.nn.Sequential(bn)
    bn.running_mean.fill_(100.0)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 3, 5, 5, generator=gen) * (i + 1) for i in range(3)]
    out = mtml.recalibrated(model, batches, torch.device("cpu"))
    means = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(out[0].running_mean, means, atol=1e-6)
    assert torch.allclose(out[0].running_var, variances, atol=1e-6)
    assert (bn.running_mean == 100.0).all() and bn.momentum == 0.1 and model.training  # untouched
    assert mtml.recalibrated(model, [], torch.device("cpu")) is model  # bn_images 0: the running statistics


def test_rows_are_scored_with_statistics_of_the_weights_scored(study_run, tiny):
    """MTML's running statistics track the adapted networks of its query passes; its "as trained" row is scored
    with statistics re-estimated for its own weights, on the run's fixed training images, and that differs."""
    cfg, run, m = study_run
    s = mtml.load_splits(cfg, tiny)
    model, _, _ = mtml.load_trained(run.path / "checkpoints" / f"mtml_lr{m['mtml_lr']:g}.pt", torch.device("cpu"))
    kw = dict(device=torch.device("cpu"), batch_size=16, num_classes=s.num_classes)
    batches = mtml.bn_batches(s.train, cfg.bn_images, 16)
    scored = mtml.evaluate(mtml.recalibrated(model, batches, torch.device("cpu")), s.test, ["depth"], **kw)
    assert scored["depth"]["rmse"] == pytest.approx(m["mtml_depth_rmse"])
    as_stored = mtml.evaluate(model, s.test, ["depth"], **kw)
    assert as_stored["depth"]["rmse"] != pytest.approx(m["mtml_depth_rmse"])


def test_viz_reads_the_run_folder(study_run):
    from nbmodule.viz import mtml as viz

    _, run, m = study_run
    table = viz.mtml_table(m)
    assert list(table.index) == list(ROWS)
    assert list(table.columns)[-3:] == ["delta_p", "delta_m", "steps_to_target"]
    assert table.loc["mtml_adapted", "seg_miou"] == pytest.approx(m["mtml_adapted_seg_miou"])
    assert np.isnan(table.loc["mtl_adapted", "normals_mean"])  # the held-out task is learnt from mtl, not adapted
    anchors, why = viz.anchors_table(run.path)
    assert anchors is None and "synthetic True" in why  # no published number beside synthetic scenes
    assert viz.budget_table(m).loc["mtml", "optimiser steps"] == m["mtml_optimizer_steps"]
    assert viz.budget_table(m).loc["mtml_compute", "image passes (fwd+bwd)"] == m["mtml_compute_image_passes"]
    assert viz.read_heldout(run.path)[0]["selected"].eq(1).all()


def test_mode_test_scores_a_trained_model_from_its_checkpoint(study_run, tiny, tmp_path):
    cfg, run, m = study_run
    model_file = run.path / "checkpoints" / f"mtml_lr{m['mtml_lr']:g}.pt"
    test_cfg = Config.from_values({**TINY, "mode": "test", "init_model": str(model_file)})
    out = execute("mtml", test_cfg, RunDir(tmp_path, "t"), RunContext.create(**CPU))
    for task in cfg.train_tasks:
        for key, value in out.items():
            if key.startswith(f"test_{task}_"):
                assert value == pytest.approx(m["mtml_" + key[len("test_"):]]), key


def test_seeds_are_summarised_with_students_t_and_only_seeds_may_differ(tmp_path):
    def folder(name, seed, metrics, **config):
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"config": {"seed": seed, "steps": 8, **config}}))
        (path / "metrics.json").write_text(json.dumps(metrics))
        return path

    a = folder("a", 0, {"mtml_delta_m": 10.0, "mtml_steps_to_target": 20, "note": "x"})
    b = folder("b", 1, {"mtml_delta_m": 14.0, "mtml_steps_to_target": None, "note": "y"})
    c = folder("c", 2, {"mtml_delta_m": 12.0, "mtml_steps_to_target": 40, "note": "z"})
    out = mtml.summarize_seeds([a, b, c], out=tmp_path / "summary.json")
    # values 10, 14, 12: mean 12, sample std 2, t(0.975, 2) = 4.3027 -> half-width 4.3027 x 2 / sqrt(3)
    assert out["mtml_delta_m"] == 12.0 and out["mtml_delta_m_ci95"] == pytest.approx(4.302653 * 2 / math.sqrt(3))
    assert out["mtml_steps_to_target"] == 30.0 and out["mtml_steps_to_target_n"] == 2  # a null is left out, counted
    assert out["seeds"] == [0, 1, 2] and "note" not in out
    assert json.loads((tmp_path / "summary.json").read_text()) == out
    from nbmodule.viz.mtml import seeds_table

    table = seeds_table(out)
    assert table.loc["mtml", "delta_m"] == f"12.00 ± {4.302653 * 2 / math.sqrt(3):.2f}"
    assert table.loc["mtml", "steps_to_target"].endswith("(2 of 3)")
    with pytest.raises(ValueError, match=r"differ in \['steps'\]"):
        mtml.summarize_seeds([a, folder("d", 3, {}, steps=9)])
    with pytest.raises(ValueError, match="repeat a seed"):
        mtml.summarize_seeds([a, folder("e", 0, {})])


# --- run-folder safety (issue 13) ---------------------------------------------------------------------------
def test_changed_settings_on_a_run_folder_are_refused_naming_the_field(tiny, tmp_path, capsys):
    """A 2-step MTML model is never reported under a config that says 6: both doors refuse, and the engine
    itself refuses too when called directly."""
    args = ["run", "mtml", "--config", "meta_multitask_baseline", "--mode", "meta-train", "--out", str(tmp_path),
            "--no-progress", "--device", "cpu"] + [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    assert cli.main(args) == 0
    folder = tmp_path / "03_mtml"
    stored = (folder / "config.json").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "mtml_seg_miou" in metrics and "single_seg_miou" not in metrics  # --mode meta-train: MTML only
    assert cli.main(args[:-len(TINY)] + [f"{k}={json.dumps(v)}" for k, v in {**TINY, "meta_steps": 6}.items()]) == 2
    assert "meta_steps (stored 2, now 6)" in capsys.readouterr().err
    assert (folder / "config.json").read_text() == stored
    changed = Config.from_values({**TINY, "mode": "meta-train", "held_out": "normals", "inner_lr": 0.02})
    with pytest.raises(ResumeError, match=r"inner_lr \(stored 0.01, now 0.02\)"):
        mtml.run(changed, RunDir(folder), RunContext.create(**CPU))


def test_meta_test_learns_the_held_out_task_from_a_trained_model(tiny, tmp_path):
    ctx = RunContext.create(**CPU)
    one_rate = Config.from_values({**TINY, "mode": "meta-train", "lrs": [0.001]})  # one model in the folder
    execute("mtml", one_rate, RunDir(tmp_path, "meta"), ctx)
    m = execute("mtml", Config.from_values({**TINY, "mode": "meta-test", "init_model": str(tmp_path / "meta")}),
                RunDir(tmp_path, "mt"), ctx)  # a run folder with one model names it
    assert math.isfinite(m["meta_test_normals_mean"]) and m["meta_test_finetune_lr"] in TINY["finetune_lrs"]
    with pytest.raises(ConfigError, match="run folder with 2 checkpoints .*lr0.001.pt"):
        execute("mtml", Config.from_values({**TINY, "mode": "test", "init_model": str(tmp_path / "mt")}),
                RunDir(tmp_path, "t"), ctx)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_model_file_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "final.pt"
    torch.save({"state": {"model": _Evil(marker), "spec": {}}, "done": True}, evil)
    code = cli.main(["run", "mtml", "--config", "default", "--mode", "test", f"init_model={evil}", "--out",
                     str(tmp_path / "runs"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "cannot be loaded safely" in err
    assert not marker.exists()
    assert cli.main(["run", "mtml", "--config", "default", "--mode", "test", f"init_model={tmp_path / 'nope.pt'}",
                     "--out", str(tmp_path / "runs2"), "--no-progress"]) == 2
    assert "no such file" in capsys.readouterr().err
