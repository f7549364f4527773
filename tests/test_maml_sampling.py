"""The task-weighted MAML study engine: config, run folder files, learning, checkpoint/resume."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from nbmodule.config import ConfigError
from nbmodule.engines.maml_sampling import MamlSamplingConfig, run_study, train_regime
from nbmodule.meta import REGIMES
from nbmodule.runs import RunDir
from nbmodule.viz.maml_sampling import plot_examples, plot_queue_heatmaps


pytestmark = pytest.mark.usefixtures("one_thread")



def _tiny(**kw) -> MamlSamplingConfig:
    base = dict(regimes=["uniform", "importance_weighted"], meta_iterations=12, meta_batch_size=5, eval_every=6,
                eval_points=5, heldout_tasks=20, log_every=3, checkpoint_every=4, queue_snapshots=3, hidden=[16, 16])
    return MamlSamplingConfig.from_values({**base, "seeds": [0], **kw})


def test_config_rejects_bad_values_with_the_field_name():
    with pytest.raises(ConfigError, match="regimes"):
        MamlSamplingConfig.from_values({"regimes": ["uniform", "greedy"]})
    with pytest.raises(ConfigError, match="unknown field 'meta_iters'"):
        MamlSamplingConfig.from_values({"meta_iters": 5})
    with pytest.raises(ConfigError, match="inner_lr"):
        MamlSamplingConfig.from_values({"inner_lr": -0.1})
    with pytest.raises(ConfigError, match="family"):
        MamlSamplingConfig.from_values({"family": "4d"})
    with pytest.raises(ConfigError, match="hidden.0"):  # a zero-width network would train until killed
        MamlSamplingConfig.from_values({"hidden": [0]})
    with pytest.raises(ConfigError, match="seeds"):
        MamlSamplingConfig.from_values({"seeds": [0, 0]})


def test_the_seed_settings_come_from_gpu_yaml():
    for regime in REGIMES:
        cfg = MamlSamplingConfig.from_file(regime)
        assert cfg.regimes == [regime]
        assert cfg.meta_lr == 0.01 and cfg.meta_iterations == 50000 and cfg.seeds == [0, 1, 2]
    paper = MamlSamplingConfig.from_file("paper")
    assert paper.meta_lr == 1e-3 and paper.meta_iterations == 70000 and paper.regimes == ["uniform"]


def test_run_study_writes_the_run_folder(tmp_path):
    cfg = _tiny()
    run = RunDir(tmp_path, "04_maml_sampling")
    metrics = run_study(cfg, run, progress=False)
    space = pd.read_csv(run.path / "parameter_space.csv")
    test = pd.read_csv(run.path / "curves" / "test.csv")
    for regime in cfg.regimes:
        # one seed: each number is the mean over the 450 grid tasks of the final model (parameter_space.csv), the
        # held-out ones the final row of the test curve; no interval from one seed
        for key in ("mse_1step", "mse_10step", "mse_0step"):
            assert metrics[f"{regime}_{key}"] == pytest.approx(space[space.run == regime][key].mean(), rel=1e-6)
        final = test[(test.run == regime) & (test.step == 12)].iloc[0]
        for key in ("heldout_mse_1step", "heldout_mse_10step"):
            assert metrics[f"{regime}_{key}"] == pytest.approx(final[key], rel=1e-6)
        assert metrics[f"{regime}_mse_1step"] == pytest.approx(final["test_mse_1step"], rel=1e-6)
        assert all(metrics[f"{regime}_{k}_ci95"] is None for k in ("mse_1step", "heldout_mse_10step"))
    on_disk = json.loads((run.path / "metrics.json").read_text())
    assert on_disk["uniform_mse_1step"] == pytest.approx(metrics["uniform_mse_1step"])
    train = pd.read_csv(run.path / "curves" / "train.csv")
    assert list(train.columns[:3]) == ["run", "seed", "step"] and "train_loss" in train
    assert set(train["run"]) == set(cfg.regimes) and train["step"].max() == 12
    test = pd.read_csv(run.path / "curves" / "test.csv")
    assert {"test_mse_1step", "test_mse_10step", "heldout_mse_1step"} <= set(test.columns)
    assert sorted(test[test.run == "uniform"]["step"]) == [6, 12]
    space = pd.read_csv(run.path / "parameter_space.csv")
    assert len(space) == 2 * 450 and {"amplitude", "phase", "mse_1step"} <= set(space.columns)
    final = test[(test.run == "uniform") & (test.step == 12)]["test_mse_1step"].item()
    assert space[space.run == "uniform"]["mse_1step"].mean() == pytest.approx(final, rel=1e-5)
    queues = json.loads((run.path / "queues.json").read_text())
    snaps = queues["snapshots"]["importance_weighted"]["0"]
    assert [s["step"] for s in snaps] == [0, 6, 12]
    assert sum(map(sum, snaps[-1]["counts"])) == 12 * 5  # every drawn task wrote its cell
    examples = json.loads((run.path / "examples.json").read_text())
    assert len(examples["uniform"]["tasks"]) == 3 and len(examples["uniform"]["x"]) == 200
    import matplotlib
    matplotlib.use("Agg")
    assert plot_queue_heatmaps(run.path).axes and plot_examples(run.path).axes


def test_meta_training_lowers_the_test_loss(tmp_path):
    cfg = _tiny(regimes=["weighted"], meta_iterations=150, meta_batch_size=10, meta_lr=0.01, eval_every=150,
                checkpoint_every=150, log_every=50, hidden=[40, 40])
    res = train_regime(cfg, "weighted", 0, RunDir(tmp_path), device="cpu")
    before, after = res["grid"][:, 0].mean().item(), res["grid"][:, 1].mean().item()
    start = res["train_rows"][0]["train_loss"]
    end = res["train_rows"][-1]["train_loss"]
    assert end < 0.8 * start
    assert after < before  # one inner step helps on the test grid
    assert res["grid"][:, 1].mean() < 3.0  # the loss of predicting 0 for every test task is about 4.1


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path):
    cfg = _tiny(regimes=["epsilon_greedy", "delta"], meta_iterations=12, checkpoint_every=4)
    ref = run_study(cfg, RunDir(tmp_path, "straight"), progress=False)

    class Stop(Exception):
        pass

    def interrupt(regime, seed, it):
        if regime == "delta" and it == 10:  # after the checkpoint at 8, mid-way through the second regime
            raise Stop

    interrupted = RunDir(tmp_path, "interrupted")
    with pytest.raises(Stop):
        run_study(cfg, interrupted, progress=False, callback=interrupt)
    ck = interrupted.checkpointer("delta_s0")
    assert ck.load() is not None and ck.step == 8 and not ck.done
    done = interrupted.checkpointer("epsilon_greedy_s0")
    assert "result" in done.load() and done.done
    resumed_from = []
    resumed = run_study(cfg, interrupted, progress=False, callback=lambda r, s, it: resumed_from.append((r, it)))
    assert resumed_from[0] == ("delta", 9)  # finished regime skipped, the other continued after its checkpoint
    numbers = [k for k in ref if not k.endswith("_s_per_iter")]
    assert {k: ref[k] for k in numbers} == {k: resumed[k] for k in numbers}
    a = pd.read_csv(tmp_path / "straight" / "curves" / "train.csv")
    b = pd.read_csv(tmp_path / "interrupted" / "curves" / "train.csv")
    pd.testing.assert_frame_equal(a, b)
    qa = json.loads((tmp_path / "straight" / "queues.json").read_text())
    qb = json.loads((tmp_path / "interrupted" / "queues.json").read_text())
    assert qa == qb
    wa = RunDir(tmp_path, "straight").load_checkpoint("delta_s0")["model"]
    wb = interrupted.load_checkpoint("delta_s0")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_3d_family_runs_end_to_end(tmp_path):
    cfg = _tiny(family="3d", regimes=["delta"], meta_iterations=4, eval_every=4, checkpoint_every=4, queue_snapshots=2)
    run = RunDir(tmp_path)
    metrics = run_study(cfg, run, progress=False)
    space = pd.read_csv(run.path / "parameter_space.csv")
    assert len(space) == 1800 and "frequency" in space
    # the 3-d grid's 1800 tasks (amplitude x phase x frequency) are what the metric averages
    assert metrics["delta_mse_1step"] == pytest.approx(space["mse_1step"].mean(), rel=1e-6)
    assert metrics["delta_mse_0step"] == pytest.approx(space["mse_0step"].mean(), rel=1e-6)
    snaps = json.loads((run.path / "queues.json").read_text())["snapshots"]["delta"]["0"]
    assert torch.tensor(snaps[0]["losses"]).shape == (49, 36, 8)
    import matplotlib
    matplotlib.use("Agg")
    assert plot_queue_heatmaps(run.path).axes
