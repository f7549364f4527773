"""The maml_rl study: configs, a tiny run end to end (files, keys, figures), resume to the same numbers."""
from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

import nbmodule.engines.maml_rl as engine
from nbmodule.config import ConfigError, list_configs
from nbmodule.engines.maml_rl import MamlRLConfig, run
from nbmodule.runs import RunContext, RunDir
from nbmodule.viz.maml_rl import FIGURES, results_table

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-task ops: one thread is fastest

REPO = Path(__file__).resolve().parent.parent
TINY = dict(envs=["nav2d"], seeds=[0, 1], hidden=[16, 16], horizon=20, meta_batch_size=3, trajectories=3,
            iterations=3, pretrain_iterations=2, eval_goals=3, eval_trajectories=3, eval_steps=2, show_goals=2,
            checkpoint_every=1, validation_goals=3, finetune_lrs=[0.05, 0.1])


@pytest.fixture
def ctx() -> RunContext:
    return RunContext(device=torch.device("cpu"), progress=False, threads=1)


def test_every_config_file_is_valid():
    names = list_configs("maml_rl")
    assert {"default", "paper", "gpu", "cheetah_vel", "cheetah_dir"} <= set(names)
    for name in names:
        cfg = MamlRLConfig.from_file(name)
        assert cfg.horizon == (100 if cfg.envs == ["nav2d"] else 200)  # the paper's horizons
    paper = MamlRLConfig.from_file("paper")
    assert (paper.meta_batch_size, paper.trajectories, paper.iterations, paper.max_kl) == (20, 20, 500, 0.01)


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="estimator"):
        MamlRLConfig.from_values({"estimator": "reinforce"})
    with pytest.raises(ConfigError, match="envs"):
        MamlRLConfig.from_values({"envs": ["nav2d", "nav2d"]})
    with pytest.raises(ConfigError, match="unknown field 'meta_lr'"):
        MamlRLConfig.from_values({"meta_lr": 0.1})


def test_notebook_parameters_equal_default_yaml():
    nb = json.loads((REPO / "notebooks" / "07_maml_rl.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    values = {}
    for node in ast.parse("".join(cell["source"])).body:
        values[node.targets[0].id] = ast.literal_eval(node.value)
    defaults = MamlRLConfig.defaults()
    assert {k: values[k] for k in defaults} == defaults
    assert set(values) - set(defaults) == {"device", "out", "data", "mount_drive", "progress", "threads", "restart"}
    assert nb["metadata"]["accelerator"] == "GPU" and nb["metadata"]["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_tiny_run_writes_every_key_file_and_figure(tmp_path, ctx):
    cfg = MamlRLConfig.from_values(TINY)
    metrics = run(cfg, RunDir(tmp_path), ctx)
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())["nav2d"]
    for method, prefix in (("maml", "nav2d"), ("maml_tuned", "nav2d_maml_tuned"), ("pretrained", "nav2d_pretrained"),
                           ("random", "nav2d_random")):
        for k in range(3):  # mean and Student-t half-width (1 dof: 12.706) over the two seeds' goal means
            per_seed = torch.tensor([sum(evaluation["methods"][method][s][k]) / 3 for s in ("0", "1")],
                                    dtype=torch.float64)
            assert metrics[f"{prefix}_return_{k}step"] == pytest.approx(per_seed.mean().item(), rel=1e-5)
            assert metrics[f"{prefix}_return_{k}step_ci95"] == pytest.approx(
                12.7062 * per_seed.std().item() / math.sqrt(2), rel=1e-2)  # float32 means: cancellation
    assert metrics["maml_rl_s_per_iter"] > 0 and metrics["maml_rl_trpo_s_per_iter"] > 0
    assert len(evaluation["goals"]) == 3 and evaluation["lrs"] == [0.1, 0.05]
    # every method's fine-tuning step is the grid's best on the validation tasks, and says so
    for method in ("maml", "pretrained", "random"):
        block = evaluation["finetune"][method]
        assert set(block["validation"]) == {repr(a) for a in cfg.finetune_lrs}
        assert block["lr"] == float(max(block["validation"], key=block["validation"].get))
        assert block["lrs"] == [block["lr"], block["lr"] / 2]
        assert metrics[f"nav2d_{method}_finetune_lr"] == block["lr"]
    assert "fixed" in evaluation["protocol"] and "chosen" in evaluation["protocol"]
    per_seed = evaluation["methods"]["maml"]["1"]
    assert len(per_seed) == 3 and len(per_seed[0]) == 3
    assert metrics["nav2d_return_1step"] == pytest.approx(
        sum(sum(evaluation["methods"]["maml"][s][1]) / 3 for s in ("0", "1")) / 2, rel=1e-5)
    rows = RunDir(tmp_path).curve("train")
    assert [r["run"] for r in rows].count("nav2d_maml") == 6 and [r["run"] for r in rows].count("nav2d_pretrained") == 4
    assert all(r["kl"] <= cfg.max_kl for r in rows)
    traj = json.loads((tmp_path / "trajectories.json").read_text())
    assert len(traj["goals"]) == 2 and len(traj["methods"]["maml"]) == 3  # steps 0..2
    for spec in FIGURES:
        assert spec.draw(tmp_path) is not None, spec.name
    table = results_table(tmp_path)
    assert ("nav2d", "MAML, paper (Finn et al. 2017, Table 4)") in table.index
    assert table.loc[("nav2d", "MAML"), "1 steps"] == pytest.approx(metrics["nav2d_return_1step"], rel=1e-6)


def test_random_init_is_the_untrained_policy_of_the_same_seed(tmp_path, ctx):
    cfg = MamlRLConfig.from_values({**TINY, "iterations": 0, "pretrain_iterations": 0, "seeds": [0]})
    metrics = run(cfg, RunDir(tmp_path), ctx)
    assert metrics["nav2d_maml_finetune_lr"] == metrics["nav2d_random_finetune_lr"]  # same validation data
    for k in range(3):  # untrained MAML and pretrained policies are the random initialisation, same noise
        assert metrics[f"nav2d_maml_tuned_return_{k}step"] == metrics[f"nav2d_random_return_{k}step"]
        assert metrics[f"nav2d_pretrained_return_{k}step"] == metrics[f"nav2d_random_return_{k}step"]


def test_the_papers_model_selection_evaluates_each_seeds_best_training_return(tmp_path, ctx):
    """Finn et al. App. A.2: "the model with the best average return during training was used for evaluation".
    The policy whose sampled trajectories had the highest post-update training return (iteration i's
    trajectories come from the policy after i - 1 TRPO steps) is evaluated as ``maml_best``."""
    cfg = MamlRLConfig.from_values({**TINY, "iterations": 5, "baselines": []})
    metrics = run(cfg, RunDir(tmp_path), ctx)
    rows = [r for r in RunDir(tmp_path).curve("train") if r["run"] == "nav2d_maml"]
    best = json.loads((tmp_path / "evaluation.json").read_text())["nav2d"]["best"]
    assert best["evaluated"] is True
    for seed in (0, 1):
        mine = [r for r in rows if r["seed"] == seed]
        top = max(mine, key=lambda r: r["return_1step"])  # the first of equals, as the engine
        assert best["iterations"][str(seed)] == top["iteration"] - 1
        assert best["training_returns"][str(seed)] == pytest.approx(top["return_1step"], rel=1e-6)
        ckpt = torch.load(tmp_path / "checkpoints" / f"nav2d_maml_s{seed}.pt", weights_only=False)["state"]
        assert ckpt["best_since"] == 1 and ckpt["best"]["iteration"] == best["iterations"][str(seed)]
    for k in range(3):
        assert metrics[f"nav2d_maml_best_return_{k}step"] is not None
    # the final policy (after iteration 5's TRPO step) never sampled training trajectories: it cannot be chosen
    assert all(i < cfg.iterations for i in best["iterations"].values())


@pytest.mark.parametrize("earlier", [-1e9, 1e9], ids=["curve-rules-out-earlier", "earlier-may-be-better"])
def test_a_checkpoint_that_did_not_track_the_best_policy(tmp_path, ctx, monkeypatch, earlier):
    """A loop resumed from a checkpoint of an earlier version tracked the best policy only from then on: it is
    evaluated only when the training curve (a row per iteration) rules out an earlier, better iteration."""
    cfg = MamlRLConfig.from_values({**TINY, "seeds": [0], "baselines": []})
    calls = {"n": 0}
    real = engine.meta_iteration

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "meta_iteration", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, RunDir(tmp_path), ctx)
    monkeypatch.setattr(engine, "meta_iteration", real)
    path = tmp_path / "checkpoints" / "nav2d_maml_s0.pt"
    saved = torch.load(path, weights_only=False)
    for key in ("best", "best_since"):  # a checkpoint written before the study tracked the best policy
        del saved["state"][key]
    assert [r["iteration"] for r in saved["state"]["rows"]] == [1, 2]  # the untracked iterations
    for row in saved["state"]["rows"]:
        row["return_1step"] = earlier
    torch.save(saved, path)
    metrics = run(cfg, RunDir(tmp_path), ctx)
    best = json.loads((tmp_path / "evaluation.json").read_text())["nav2d"]["best"]
    if earlier < 0:  # the curve proves no untracked iteration was better: exact, and says how it knows
        assert best["evaluated"] is True and best["tracked_from"] == {"0": 3}
        assert best["best_before_tracking"]["0"] == earlier
        assert best["iterations"]["0"] == 2  # iteration 3 sampled with the policy after 2 TRPO steps
        assert "nav2d_maml_best_return_1step" in metrics
    else:
        assert best["evaluated"] is False and "from iteration 3 for seed 0" in best["why"]
        assert "nav2d_maml_best_return_1step" not in metrics and "nav2d_return_1step" in metrics


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, ctx, monkeypatch):
    cfg = MamlRLConfig.from_values({**TINY, "seeds": [0]})
    reference = run(cfg, RunDir(tmp_path / "ref"), ctx)

    calls = {"n": 0}
    real = engine.meta_iteration

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # during MAML's third iteration, after two checkpoints
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "meta_iteration", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, RunDir(tmp_path / "cut"), ctx)
    monkeypatch.setattr(engine, "meta_iteration", real)
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "nav2d_maml_s0.pt", weights_only=True)
    assert ckpt["step"] == 2
    # the stopped run's folder shows its learning curve so far: the reference's first two rows
    partial = RunDir(tmp_path / "cut").curve("train")
    assert [r["iteration"] for r in partial] == [1, 2] and {r["run"] for r in partial} == {"nav2d_maml"}
    assert json.dumps(partial) == json.dumps(RunDir(tmp_path / "ref").curve("train")[:2])
    resumed = run(cfg, RunDir(tmp_path / "cut"), ctx)
    for key, value in reference.items():
        if not key.endswith(("_s", "_s_per_iter")):
            assert resumed[key] == value, key
    assert json.dumps(RunDir(tmp_path / "cut").curve("train")) == json.dumps(RunDir(tmp_path / "ref").curve("train"))


def test_a_finished_run_grows_in_iterations_and_seeds(tmp_path, ctx, monkeypatch):
    cfg = MamlRLConfig.from_values({**TINY, "seeds": [0], "baselines": []})
    run(cfg, RunDir(tmp_path / "a"), ctx)
    bigger = MamlRLConfig.from_values({**TINY, "seeds": [0, 1], "baselines": [], "iterations": 5})
    calls = {"n": 0}
    real = engine.meta_iteration

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "meta_iteration", counting)
    grown = run(bigger, RunDir(tmp_path / "a"), ctx)
    assert calls["n"] == 2 + 5  # seed 0 continues from iteration 3; seed 1 starts
    fresh = run(bigger, RunDir(tmp_path / "b"), ctx)
    for key in ("nav2d_return_0step", "nav2d_return_1step", "nav2d_return_1step_ci95", "nav2d_return_2step"):
        assert grown[key] == fresh[key], key
    assert "nav2d_pretrained_return_0step" not in grown


def test_pretrained_gets_as_many_environment_steps_as_maml(tmp_path, ctx):
    cfg = MamlRLConfig.from_values({**TINY, "seeds": [0], "iterations": 1, "pretrain_iterations": 1})
    run(cfg, RunDir(tmp_path), ctx)
    rows = {r["run"]: r for r in RunDir(tmp_path).curve("train")}
    # 3 tasks x 3 trajectories x horizon 20, before and after the inner step (no Nav2D trajectory reaches its
    # goal exactly this early, so every step is taken)
    assert rows["nav2d_maml"]["env_steps"] == rows["nav2d_pretrained"]["env_steps"] == 2 * 3 * 3 * 20


def test_a_pretrained_checkpoint_of_the_old_protocol_is_refused(tmp_path, ctx):
    cfg = MamlRLConfig.from_values({**TINY, "seeds": [0], "iterations": 1, "pretrain_iterations": 2})
    run(cfg, RunDir(tmp_path), ctx)
    path = tmp_path / "checkpoints" / "nav2d_pretrained_s0.pt"
    blob = torch.load(path, weights_only=True)
    del blob["state"]["trajectories_per_task"]  # as written before the like-for-like protocol
    torch.save(blob, path)
    bigger = MamlRLConfig.from_values({**TINY, "seeds": [0], "iterations": 1, "pretrain_iterations": 3})
    with pytest.raises(ConfigError, match="trajectories per task and iteration"):
        run(bigger, RunDir(tmp_path), ctx)


def test_maml_adapts_post_update_beats_pre_update(tmp_path, ctx):
    """A short MAML run (seconds): after 15 meta-iterations, one policy-gradient step on 20 held-out goals raises
    the return well above the unadapted policy's, and by much more than the same step raises the untrained
    initialisation's (measured: +7.5 against +2.3), so the check measures what meta-training learnt."""
    values = dict(TINY, seeds=[0], hidden=[32, 32], horizon=30, meta_batch_size=10, trajectories=10, iterations=15,
                  baselines=["random"], eval_goals=20, eval_trajectories=10, eval_steps=1, show_goals=0,
                  inner_lr=0.3, finetune_lrs=[0.3], checkpoint_every=15)
    m = run(MamlRLConfig.from_values(values), RunDir(tmp_path), ctx)
    maml_gain = m["nav2d_return_1step"] - m["nav2d_return_0step"]
    untrained_gain = m["nav2d_random_return_1step"] - m["nav2d_random_return_0step"]
    assert m["nav2d_return_1step"] > m["nav2d_return_0step"] + 4.0, m
    assert maml_gain > untrained_gain + 3.0, (maml_gain, untrained_gain)
