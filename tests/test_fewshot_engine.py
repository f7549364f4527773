"""MAML few-shot engine: the task-batched path equals the per-task loop, training learns, resume, metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep import prepare
from nbmodule.config import ConfigError, load_config, make_config
from nbmodule.data.fewshot import LakeRuns, load_lake_runs
from nbmodule.engines.fewshot import (FewShotConfig, build_fewshot_model, expand_head, lake20_error, load_splits,
                                      setting_name, task_losses, train)
from nbmodule.runs import RunDir
from nbmodule.viz.fewshot import fewshot_table, lake_table

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parent.parent / "configs" / "fewshot"


def reference(model, tasks, steps, lr, first_order):
    """Textbook MAML: one task at a time, torch.autograd.grad (create_graph for second order)."""
    xs, ys, xq, yq = tasks
    names, params = zip(*model.named_parameters())
    losses = []
    for t in range(xs.shape[0]):
        fast = list(params)
        for _ in range(steps):
            g = torch.autograd.grad(F.cross_entropy(torch.func.functional_call(model, dict(zip(names, fast)), (xs[t],)),
                                                    ys[t]), fast, create_graph=not first_order)
            fast = [w - lr * gi for w, gi in zip(fast, g)]
        losses.append(F.cross_entropy(torch.func.functional_call(model, dict(zip(names, fast)), (xq[t],)), yq[t]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("strategy", ["loop", "grouped"])
def test_meta_gradient_matches_reference_loop(strategy, first_order):
    torch.manual_seed(0)
    model = build_fewshot_model(FewShotConfig(hidden=6), (1, 28, 28)).double()
    T = 3
    tasks = (torch.rand(T, 5, 1, 28, 28, dtype=torch.double), torch.arange(5).expand(T, 5),
             torch.rand(T, 10, 1, 28, 28, dtype=torch.double), torch.arange(5).repeat(2).expand(T, 10))
    ref = reference(model, tasks, 2, 0.3, first_order)
    ref_g = torch.autograd.grad(ref, list(model.parameters()))
    loss, per_task, logits = task_losses(model, dict(model.named_parameters()), tasks, steps=2, inner_lr=0.3,
                                         first_order=first_order, strategy=strategy)
    g = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    assert per_task.shape == (T,) and logits.shape == (T, 10, 5)
    scale = max(x.abs().max() for x in ref_g)
    for (name, _), a, b in zip(model.named_parameters(), g, ref_g):
        # conv biases before BatchNorm have a zero true gradient: compare on the global scale
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9 * float(scale), msg=name)
    assert any(float(x.abs().max()) > 0 for x in g)  # the meta-gradient reaches the initial weights


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="dataset"):
        make_config(FewShotConfig, {"dataset": "cifar"})
    with pytest.raises(ConfigError, match="n_way"):
        make_config(FewShotConfig, {"n_way": 1})
    with pytest.raises(ConfigError, match="unknown field 'inner_step'"):
        make_config(FewShotConfig, {"inner_step": 3})


@pytest.mark.parametrize("name,n_way,k_shot,lr,steps,test_steps,batch", [
    ("omniglot_5way1shot", 5, 1, 0.4, 1, 3, 32), ("omniglot_5way5shot", 5, 5, 0.4, 1, 3, 32),
    ("omniglot_20way1shot", 20, 1, 0.1, 5, 5, 16), ("omniglot_20way5shot", 20, 5, 0.1, 5, 5, 16),
    ("miniimagenet_5way1shot", 5, 1, 0.01, 5, 10, 4), ("miniimagenet_5way5shot", 5, 5, 0.01, 5, 10, 2)])
def test_paper_configs(name, n_way, k_shot, lr, steps, test_steps, batch):
    cfg = load_config(FewShotConfig, REPO_CONFIGS / f"{name}.yaml")
    assert (cfg.n_way, cfg.k_shot, cfg.inner_lr, cfg.inner_steps, cfg.inner_steps_test, cfg.meta_batch_size) == \
        (n_way, k_shot, lr, steps, test_steps, batch)
    assert cfg.meta_iterations == 60000 and cfg.meta_lr == 1e-3 and cfg.eval_episodes == 600 and not cfg.synthetic
    assert cfg.k_query == (15 if cfg.dataset == "miniimagenet" else k_shot)


@pytest.fixture(scope="module")
def synthetic_omniglot(tmp_path_factory):
    return prepare("omniglot", tmp_path_factory.mktemp("data") / "omniglot", synthetic=True, scale="smoke", seed=0)


def _cfg(**kw):
    base = dict(synthetic=True, scale="smoke", hidden=16, meta_batch_size=4, meta_iterations=30, eval_every=15,
                val_episodes=20, eval_episodes=40, log_every=10, checkpoint_every=15, k_query=2)
    return FewShotConfig(**{**base, **kw})


def test_training_learns_and_writes_run_folder(synthetic_omniglot, tmp_path):
    cfg = _cfg()
    splits = load_splits(cfg, synthetic_omniglot)
    run = RunDir(tmp_path, "05_maml_fewshot")
    res = train(cfg, splits, run, device="cpu", progress=False, lake_runs=load_lake_runs(synthetic_omniglot))
    name = setting_name(cfg)
    m = json.loads((run.path / "metrics.json").read_text())
    assert m[f"{name}_acc"] > 45 and m[f"{name}_acc"] == pytest.approx(100 * res.test_accs.mean())  # chance: 20%
    assert 0 < m[f"{name}_ci95"] < 15 and len(res.test_accs) == 40
    assert 0 <= m["omniglot_lake20_error"] < 95 and m["fewshot_synthetic"] == 1
    train_rows, val_rows = run.curve("fewshot_train"), run.curve("fewshot_val")
    assert [r["step"] for r in val_rows] == [0, 15, 30] and [r["step"] for r in train_rows] == [10, 20, 30]
    assert val_rows[-1]["val_acc"] > val_rows[0]["val_acc"]
    assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
    assert set(train_rows[0]) == {"run", "seed", "step", "train_loss", "train_acc"} and train_rows[0]["run"] == name
    assert run.has_checkpoint(name)
    table = fewshot_table(m)
    assert table.loc[("Omniglot", 5, "this run"), "1-shot"].startswith(f"{m[name + '_acc']:.1f}")
    assert table.loc[("Omniglot", 5, "MAML (paper)"), "1-shot"] == "98.7 ± 0.4%"
    assert table.loc[("MiniImagenet", 5, "this run"), "5-shot"] == "-"
    assert lake_table(m).loc["human", "error (%)"] == 4.5


def test_resume_continues_to_the_same_numbers(synthetic_omniglot, tmp_path):
    cfg = _cfg(meta_iterations=6, eval_every=3, checkpoint_every=3, log_every=3, val_episodes=4, eval_episodes=4,
               hidden=8)
    splits = load_splits(cfg, synthetic_omniglot)
    straight = train(cfg, splits, RunDir(tmp_path / "a"), device="cpu", progress=False)
    run_b = RunDir(tmp_path / "b")
    train(cfg.model_copy(update={"meta_iterations": 3}), splits, run_b, device="cpu", progress=False)
    resumed = train(cfg, splits, run_b, device="cpu", progress=False)
    assert resumed.resumed_from == 3 and resumed.iterations_run == 3
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]  # noqa: E731
    assert strip(RunDir(tmp_path / "a").curve("fewshot_val")) == strip(run_b.curve("fewshot_val"))
    # a different setting in the same folder does not resume from this checkpoint
    other = train(cfg.model_copy(update={"inner_lr": 0.1}), splits, run_b, device="cpu", progress=False)
    assert other.resumed_from == 0


def test_lake20_error_and_head_expansion():
    torch.manual_seed(0)
    model = build_fewshot_model(FewShotConfig(hidden=8), (1, 28, 28))
    params = dict(model.named_parameters())
    wide = expand_head(params, 20)
    assert wide["head.weight"].shape == (20, 8) and torch.allclose(wide["head.weight"][3], params["head.weight"].mean(0))
    rng = np.random.RandomState(0)
    support = (rng.rand(2, 20, 28, 28) * 255).astype(np.uint8)
    answer = np.stack([rng.permutation(20) for _ in range(2)])
    runs = LakeRuns(support, np.stack([support[r, answer[r]] for r in range(2)]), answer)  # queries = their support image
    err, per_run = lake20_error(model, runs, steps=5, inner_lr=0.5, device="cpu")
    assert per_run.shape == (2,) and err == pytest.approx(per_run.mean())
    assert err < 80  # identical images: adapting on the support set recognises many queries (chance: 95% error)
