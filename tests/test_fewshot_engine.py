"""MAML few-shot engine (study ``fewshot``): the task-batched path equals the textbook loop, the config's
bounds, the study contract (run through ``execute``), resume and refusal, the Lake protocol, safe loading."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep import prepare
from nbmodule.config import ConfigError
from nbmodule.data.fewshot import FewShotSplit, LakeRuns
from nbmodule.engines import fewshot
from nbmodule.engines.fewshot import (Config, FewShotData, build_fewshot_model, check_splits, expand_head,
                                      lake20_error, lake_overlap, task_losses, train)
from nbmodule.runs import ResumeError, RunContext, RunDir, is_timing_key
from nbmodule.studies import execute, get_study
from nbmodule.viz import fewshot as viz

STUDY = get_study("fewshot")


def cfg_of(**values) -> Config:
    return Config.from_values(values, source="test")


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
@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_meta_gradient_matches_reference_loop(strategy, first_order, one_thread):
    torch.manual_seed(0)
    model = build_fewshot_model(cfg_of(hidden=6), (1, 28, 28)).double()
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


@pytest.mark.parametrize("field,value", [("n_way", 1), ("k_shot", 0), ("k_query", 0), ("hidden", 0), ("hidden", -3),
                                         ("inner_lr", 0.0), ("meta_iterations", 0), ("dataset", "cifar"),
                                         ("omniglot_split", "random"), ("data_source", "web")])
def test_config_bounds_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        cfg_of(**{field: value})


def test_config_unknown_field_and_resume_field_gone():
    with pytest.raises(ConfigError, match="unknown field 'inner_step'"):
        cfg_of(inner_step=3)
    with pytest.raises(ConfigError, match="unknown field 'resume'"):  # resuming is the run folder's job
        cfg_of(resume=False)


@pytest.mark.parametrize("name,dataset,n_way,k_shot,k_query,lr,steps,test_steps,batch,hidden,paper", [
    ("omniglot_5way1shot", "omniglot", 5, 1, 1, 0.4, 1, 3, 32, 64, 98.7),
    ("omniglot_5way5shot", "omniglot", 5, 5, 5, 0.4, 1, 3, 32, 64, 99.9),
    ("omniglot_20way1shot", "omniglot", 20, 1, 1, 0.1, 5, 5, 16, 64, 95.8),
    ("omniglot_20way5shot", "omniglot", 20, 5, 5, 0.1, 5, 5, 16, 64, 98.9),
    ("miniimagenet_5way1shot", "miniimagenet", 5, 1, 15, 0.01, 5, 10, 4, 32, 48.70),
    ("miniimagenet_5way5shot", "miniimagenet", 5, 5, 15, 0.01, 5, 10, 2, 32, 63.11)])
def test_the_papers_six_settings(name, dataset, n_way, k_shot, k_query, lr, steps, test_steps, batch, hidden, paper):
    """Finn et al. (2017), section 5.1 / MAML's code: every setting at full scale, real data, MAML's split."""
    cfg = STUDY.config(name)
    assert (cfg.dataset, cfg.n_way, cfg.k_shot, cfg.k_query, cfg.inner_lr, cfg.inner_steps, cfg.inner_steps_test,
            cfg.meta_batch_size, cfg.hidden) == (dataset, n_way, k_shot, k_query, lr, steps, test_steps, batch, hidden)
    assert cfg.meta_iterations == 60000 and cfg.meta_lr == 1e-3 and cfg.eval_episodes == 600
    assert cfg.data_source == "real" and cfg.omniglot_split == "maml" and not cfg.first_order
    assert viz.PAPER[fewshot.setting_name(cfg)][0] == paper
    assert STUDY.config("gpu").to_dict() == STUDY.config("omniglot_5way1shot").to_dict()


def test_the_cpu_experiment_trains_on_real_data_first_under_lakes_protocol():
    cfg = STUDY.config("default")
    assert cfg.data_source == "auto" and cfg.omniglot_split == "background" and cfg.lake_eval
    assert (cfg.inner_lr, cfg.inner_steps, cfg.inner_steps_test, cfg.first_order) == (0.4, 1, 3, False)  # the paper's
    assert cfg.eval_episodes == 600


# --- splits and the Lake protocol ---------------------------------------------------------------------------
def _split(n_classes, per_class=4, size=8, name="test", offset=0, rotations=False):
    imgs = np.zeros((n_classes * per_class, size, size), np.uint8)
    labels = np.repeat(np.arange(n_classes), per_class)
    for j in range(len(imgs)):
        imgs[j].flat[j % (size * size)] = 1 + (j + offset) % 250
        imgs[j, -1, -1] = offset
    return FewShotSplit(imgs, labels, range(n_classes), [f"c{i}" for i in range(n_classes)], rotations=rotations,
                        name=name)


def test_a_split_with_fewer_classes_than_n_way_is_refused_naming_it():
    splits = {"train": _split(16), "val": _split(16), "test": _split(3, rotations=True)}
    with pytest.raises(ConfigError, match=r"n_way=20: the 'train' split of omniglot \(here\) has only 16 classes"):
        check_splits(cfg_of(n_way=20), splits, where="here")
    with pytest.raises(ConfigError, match=r"n_way=13: the 'test' split .* 12 classes = 3 characters x 4 rotations"):
        check_splits(cfg_of(n_way=13), splits)
    with pytest.raises(ConfigError, match=r"k_shot=2 \+ k_query=3 = 5 images per class.*'train' split.* 4 images"):
        check_splits(cfg_of(n_way=3, k_shot=2, k_query=3), splits)
    check_splits(cfg_of(n_way=16, k_shot=1, k_query=3), {"train": splits["train"]})  # fits exactly


def test_lake_overlap_counts_pixel_identical_images():
    a, b = _split(5, offset=1), _split(5, offset=2)
    imgs = a.images[:, 0].numpy()
    support = np.stack([np.stack([imgs[0]] + [np.full((8, 8), 255, np.uint8)] * 3)])  # (1 run, 4, 8, 8)
    query = np.stack([np.stack([imgs[5], imgs[6]] + [np.full((8, 8), 254, np.uint8)] * 2)])
    runs = LakeRuns(support, query, np.zeros((1, 4), np.int64))
    assert lake_overlap(runs, [a]) == 3  # one support and two query images were seen
    assert lake_overlap(runs, [b]) == 0  # other drawings of the same shapes: no overlap
    assert lake_overlap(runs, [b, a]) == 3


def test_lake20_error_and_head_expansion(one_thread):
    torch.manual_seed(0)
    model = build_fewshot_model(cfg_of(hidden=8), (1, 28, 28))
    params = dict(model.named_parameters())
    wide = expand_head(params, 20)
    assert wide["head.weight"].shape == (20, 8)
    assert torch.allclose(wide["head.weight"][3], params["head.weight"].mean(0))
    rng = np.random.RandomState(0)
    support = (rng.rand(2, 20, 28, 28) * 255).astype(np.uint8)
    answer = np.stack([rng.permutation(20) for _ in range(2)])
    # queries = their support image
    runs = LakeRuns(support, np.stack([support[r, answer[r]] for r in range(2)]), answer)
    err, per_run = lake20_error(model, runs, steps=5, inner_lr=0.5, device="cpu")
    assert per_run.shape == (2,) and err == pytest.approx(per_run.mean())
    assert err < 80  # identical images: adapting on the support set recognises many queries (chance: 95% error)
    wrong = LakeRuns(support, runs.query, (answer + 1) % 20)  # every answer shifted: the score must collapse
    assert lake20_error(model, wrong, steps=5, inner_lr=0.5, device="cpu")[0] > err
    one, per_run_one = lake20_error(model, runs, steps=5, inner_lr=0.5, device="cpu", mode="one_at_a_time")
    assert per_run_one.shape == (2,) and one < 80
    assert lake20_error(model, wrong, steps=5, inner_lr=0.5, device="cpu", mode="one_at_a_time")[0] > one
    with pytest.raises(ValueError, match="mode must be one of"):
        lake20_error(model, runs, steps=1, inner_lr=0.5, device="cpu", mode="batch")


def test_one_query_at_a_time_uses_the_support_sets_batch_norm_statistics(one_thread):
    """Issue 19, item 5: people and BPL classify each test item on its own; so must the comparable score."""
    torch.manual_seed(0)
    model = build_fewshot_model(cfg_of(hidden=8), (1, 28, 28)).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    xs, xq = torch.rand(20, 1, 28, 28, generator=g), torch.rand(6, 1, 28, 28, generator=g)
    with torch.no_grad():
        batch = fewshot.support_statistics_logits(model, params, xs, xq)
        alone = torch.cat([fewshot.support_statistics_logits(model, params, xs, xq[i:i + 1]) for i in range(6)])
        torch.testing.assert_close(alone, batch)  # no query's prediction depends on another query
        # with the support set as the queries it is the ordinary (batch statistics) forward on the support set
        torch.testing.assert_close(fewshot.support_statistics_logits(model, params, xs, xs), model(xs))
        transductive = model(xq)  # batch norm with the 6 queries' own statistics: other numbers
        assert not torch.allclose(transductive, batch, atol=1e-3)
        assert not torch.allclose(model(xq[:1]), transductive[:1], atol=1e-3)  # it depends on the other queries


# --- the study, end to end on synthetic data ---------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare("omniglot", root / "synthetic" / "omniglot", synthetic=True, scale="smoke", seed=fewshot.DATA_SEED)
    return root


TINY = dict(data_source="synthetic", scale="smoke", hidden=16, meta_batch_size=4, meta_iterations=24, eval_every=12,
            val_episodes=20, eval_episodes=40, log_every=6, checkpoint_every=12, k_query=2, strategy="loop")


def _ctx(root, **kw):
    return RunContext.create(device="cpu", data=root, progress=False, threads=1, **kw)


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory):
    """One tiny run of the study through nbmodule.studies.execute (the notebook's and the CLI's path)."""
    run = RunDir(tmp_path_factory.mktemp("runs"), STUDY.notebook)
    metrics = execute(STUDY, cfg_of(**TINY), run, _ctx(data_root))
    return run, metrics


def initial_accuracy(cfg, split) -> float:
    """Test accuracy (percent) of the study's initialisation (the same seed, not meta-trained), adapted and scored
    exactly as the study scores the meta-trained model: the same test episodes, steps and strategy."""
    model = fewshot._init_model(cfg, split.image_shape, torch.device("cpu")).eval()
    accs, _ = fewshot.evaluate(model, split, cfg, episodes=cfg.eval_episodes, device="cpu",
                               generator=torch.Generator().manual_seed(cfg.seed + 2),
                               strategy=fewshot._eval_strategy(cfg, torch.device("cpu")))
    return float(accs.mean() * 100)


def test_run_learns_and_writes_the_run_folder(finished, data_root, one_thread):
    run, m = finished
    assert m == json.loads((run.path / "metrics.json").read_text())
    # meta-training must beat its own initialisation on the same 40 episodes (measured: 62.8% -> 73.0%, seeds
    # 1 and 2 gain 6 and 10 points), not merely chance (20%)
    cfg = cfg_of(**TINY)
    before = initial_accuracy(cfg, fewshot.load_splits(cfg, data_root / "synthetic" / "omniglot")["test"])
    assert m["omniglot_5way_1shot_acc"] > before + 5 and 0 < m["omniglot_5way_1shot_ci95"] < 15
    assert m["synthetic"] == 1 and m["omniglot_lake20_overlap_images"] == 0
    assert 0 <= m["omniglot_lake20_error"] < 95 and m["omniglot_lake20_error_ci95"] > 0
    numbers = {"omniglot_5way_1shot_acc", "omniglot_5way_1shot_ci95", "omniglot_lake20_error",
               "omniglot_lake20_error_ci95", "omniglot_lake20_error_transductive",
               "omniglot_lake20_error_transductive_ci95", "omniglot_lake20_overlap_images", "synthetic"}
    assert {k for k in m if not is_timing_key(k)} == numbers and {"fewshot_train_s", "fewshot_s_per_iter"} <= set(m)
    ev = json.loads((run.path / "evaluation.json").read_text())
    assert len(ev["test_accs"]) == 40 and m["omniglot_5way_1shot_acc"] == pytest.approx(100 * np.mean(ev["test_accs"]))
    assert ev["lake20"]["reported"] and len(ev["lake20"]["errors"]) == 20
    assert m["omniglot_lake20_error"] == pytest.approx(np.mean(ev["lake20"]["errors"]))
    # the interval over the 20 runs: Student's t with 19 degrees of freedom (2.093), not the normal 1.96
    for key, errors in (("omniglot_lake20_error", ev["lake20"]["errors"]),
                        ("omniglot_lake20_error_transductive", ev["lake20"]["errors_transductive"])):
        assert m[key] == pytest.approx(np.mean(errors))
        assert m[f"{key}_ci95"] == pytest.approx(2.0930 * np.std(errors, ddof=1) / np.sqrt(20), rel=1e-4)
    assert "comparable" in ev["protocols"]["lake20"] and "19 degrees of freedom" in ev["protocols"]["lake20"]
    train_rows, val_rows = run.curve("fewshot_train"), run.curve("fewshot_val")
    assert [r["step"] for r in val_rows] == [0, 12, 24] and [r["step"] for r in train_rows] == [6, 12, 18, 24]
    assert val_rows[-1]["val_acc"] > val_rows[0]["val_acc"]
    assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
    data = json.loads((run.path / "data.json").read_text())
    assert data["synthetic"] and data["split"] == "background" and data["lake_runs"] == 20
    for name in ("fewshot_curves", "fewshot_accuracy", "fewshot_episode"):
        assert (run.path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_the_episode_figure_comes_from_the_run_folder(finished):
    run, _ = finished
    ep = run.load_tensors("example_episode.pt")  # weights_only=True
    assert ep["xs"].dtype == torch.uint8 and ep["xs"].shape == (5, 1, 28, 28) and ep["pred"].shape == ep["yq"].shape
    assert len(ep["classes"]) == 5 and all(c.startswith("evaluation/") for c in ep["classes"])  # meta-test classes
    assert viz.plot_episode(run.path) is not None


def test_tables_and_texts_say_what_the_numbers_are(finished):
    run, m = finished
    table = viz.paper_table(m)
    assert table[["dataset", "n_way", "k_shot"]].values.tolist() == [["omniglot", 5, 1]]
    assert table.loc[0, "acc"] == m["omniglot_5way_1shot_acc"] and table.loc[0, "paper_acc"] == 98.7
    assert table.loc[0, "chance"] == 20.0
    lake = viz.lake_table(m)
    assert lake.loc["people", "error (%)"] == 4.5
    assert lake.loc["MAML (this run)", "error (%)"] == m["omniglot_lake20_error"]
    banner = viz.data_banner(run.path)
    assert "SYNTHETIC DATA" in banner and "synthetic data asked for" in banner
    text = viz.protocol_text(run.path)
    assert "40 test episodes" in text and "background alphabets" in text and "omniglot_lake20_error" in text


def test_a_changed_field_on_an_existing_run_folder_is_refused_naming_it(finished, data_root, one_thread):
    run, before = finished
    stored = (run.path / "config.json").read_text()
    with pytest.raises(ResumeError, match=r"inner_lr \(stored 0.4, now 0.1\)"):
        execute(STUDY, cfg_of(**{**TINY, "inner_lr": 0.1}), run, _ctx(data_root))
    assert (run.path / "config.json").read_text() == stored  # not rewritten with settings the results lack
    again = execute(STUDY, cfg_of(**TINY), run, _ctx(data_root))  # same settings: the same numbers
    assert {k: v for k, v in again.items() if not is_timing_key(k)} == \
        {k: v for k, v in before.items() if not is_timing_key(k)}


def test_resume_after_an_interruption_gives_the_same_numbers(data_root, tmp_path, one_thread):
    cfg = cfg_of(**{**TINY, "meta_iterations": 6, "eval_every": 3, "checkpoint_every": 2, "log_every": 3,
                    "val_episodes": 4, "eval_episodes": 8, "hidden": 8})
    data = fewshot.obtain_data(cfg, data_root)
    straight = train(cfg, data, RunDir(tmp_path / "a"), progress=False)

    class Kill(Exception):
        pass

    def kill_at_5(step):
        if step == 5:
            raise Kill
    run_b = RunDir(tmp_path / "b")
    with pytest.raises(Kill):
        train(cfg, data, run_b, progress=False, callback=kill_at_5)  # the checkpoint of step 4 survives
    resumed = train(cfg, data, run_b, progress=False)
    assert resumed.resumed_from == 4 and resumed.iterations_run == 2
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert RunDir(tmp_path / "a").curve("fewshot_val") == run_b.curve("fewshot_val")
    assert RunDir(tmp_path / "a").curve("fewshot_train") == run_b.curve("fewshot_train")
    longer = train(cfg.model_copy(update={"meta_iterations": 9}), data, run_b, progress=False)  # a budget may grow
    assert longer.resumed_from == 6 and longer.iterations_run == 3
    real = FewShotData(data.splits, data.lake, False, "test", "", data.path)  # same settings, other data
    with pytest.raises(ResumeError, match=r"data \(stored 'synthetic', now 'real'\)"):
        train(cfg.model_copy(update={"meta_iterations": 9}), real, run_b, progress=False)
    with pytest.raises(ResumeError, match=r"hidden \(stored 8, now 16\)"):
        train(cfg.model_copy(update={"meta_iterations": 9, "hidden": 16}), data, run_b, progress=False)


def test_lake_score_absent_unless_meta_trained_on_the_background_alphabets(data_root, tmp_path, one_thread):
    cfg = cfg_of(**{**TINY, "omniglot_split": "maml", "meta_iterations": 2, "eval_every": 2, "val_episodes": 4,
                    "eval_episodes": 8, "hidden": 8})
    m = execute(STUDY, cfg, RunDir(tmp_path, STUDY.notebook), _ctx(data_root))
    assert "omniglot_lake20_error" not in m and "omniglot_lake20_error_ci95" not in m
    # synthetic runs are fresh drawings, never among the meta-training images (the real ones are: test_fewshot_real)
    assert m["omniglot_lake20_overlap_images"] == 0
    lake = json.loads((tmp_path / STUDY.notebook / "evaluation.json").read_text())["lake20"]
    assert not lake["reported"] and "omniglot_split is 'maml'" in lake["reason"]
    assert lake["overlap_images"] == 0 and "0 of the runs' 800 images" in lake["reason"]
    assert "No Lake score" in viz.protocol_text(tmp_path / STUDY.notebook)
    assert np.isnan(viz.lake_table(m).loc["MAML (this run)", "error (%)"])


def test_an_impossible_episode_is_refused_before_training(data_root, tmp_path):
    run = RunDir(tmp_path, STUDY.notebook)
    # smoke synthetic Omniglot: 30 evaluation characters = 120 test classes with rotations
    with pytest.raises(ConfigError, match=r"n_way=200: the 'train' split of omniglot \(synthetic data at .*\) has "):
        execute(STUDY, cfg_of(**{**TINY, "n_way": 200}), run, _ctx(data_root))
    with pytest.raises(ConfigError, match=r"k_shot=10 \+ k_query=11 = 21 images per class.* 20 images"):
        execute(STUDY, cfg_of(**{**TINY, "k_shot": 10, "k_query": 11}), run, _ctx(data_root, restart=True))
    assert not (run.path / "checkpoints").exists() and not (run.path / "metrics.json").exists()


class _Exploit:
    """A pickle that runs code when unpickled without weights_only (it would create ``target``)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_run_folder_files_are_loaded_with_weights_only(finished, tmp_path):
    run, _ = finished
    bad = RunDir(tmp_path, STUDY.notebook)
    target = tmp_path / "pwned"
    with open(bad.path / "example_episode.pt", "wb") as fh:
        pickle.dump({"xs": _Exploit(target)}, fh)
    with pytest.raises(ValueError, match="example_episode.pt cannot be loaded safely"):
        viz.plot_episode(bad.path)
    assert not target.exists()
    # a crafted checkpoint is refused by the study's resume too (no readable checkpoint, nothing executed)
    ck = bad.checkpoint_path(fewshot.CHECKPOINT)
    ck.parent.mkdir(parents=True)
    torch.save({"state": _Exploit(target), "step": 1, "done": False, "config": {}}, ck)
    cfg = cfg_of(**{**TINY, "meta_iterations": 2, "hidden": 8})
    with pytest.raises(Exception, match="no readable checkpoint"):
        train(cfg, {"train": _split(10, size=28), "val": _split(10, size=28)}, bad, progress=False)
    assert not target.exists()


def test_auto_strategy_is_measured_recorded_and_never_slower_than_the_loop(data_root, tmp_path, one_thread):
    """strategy=auto meta-trains with what nbmodule.meta.choose_strategy measured on a real meta-batch (the
    batched path is a candidate for Conv4) and records the measurement in strategy.json; a short run skips it."""
    splits = fewshot.load_splits(cfg_of(**TINY), data_root / "synthetic" / "omniglot")
    cfg = cfg_of(**{**TINY, "strategy": "auto", "meta_iterations": 2})
    model = build_fewshot_model(cfg, splits["train"].image_shape)
    choice = fewshot.choose_strategy("auto", model, splits["train"], cfg, torch.device("cpu"), repeats=2,
                                     probe_min_iterations=1)
    assert {"loop", "batched"} <= set(choice.medians_s) and all(v > 0 for v in choice.medians_s.values())
    assert choice.protocol["measured"] and "not_measured" not in choice.protocol
    short = fewshot.choose_strategy("auto", model, splits["train"], cfg, torch.device("cpu"))
    assert short.name == "loop" and not short.medians_s and not short.protocol["measured"]
    assert "not measured, the loop" in short.protocol["not_measured"]

    run = RunDir(tmp_path, "05_maml_fewshot")
    result = train(cfg, splits, run, progress=False)
    record = json.loads((run.path / "strategy.json").read_text())
    assert record["name"] == record["ran"] == result.strategy == "loop" and record["requested"] == "auto"
    assert record["fallback"] is None and not record["protocol"]["measured"]


def test_a_short_run_is_measured_on_a_gpu_and_unmeasured_only_where_it_takes_the_loop():
    # issue 19, item 9: short runs on a GPU used to take the batched path without measuring it
    assert fewshot.unmeasured_reason("auto", 50, "cuda") is None
    assert fewshot.unmeasured_reason("auto", 50, "cpu").startswith("50 meta-iterations < 200 on a CPU")
    assert fewshot.unmeasured_reason("auto", 200, "cpu") is None
    assert "asked for" in fewshot.unmeasured_reason("batched", 50, "cuda")


def test_strategy_json_names_what_ran_when_the_batched_path_falls_back(data_root, tmp_path, one_thread, monkeypatch):
    """Issue 19, item 8: a batched path that falls back to the loop while running is recorded as the loop."""
    import nbmodule.meta.batched as batched

    def refuse(*a, **k):
        raise batched.Unsupported("an op on a shape it does not cover (test)")

    monkeypatch.setattr(batched, "batched_meta_loss", refuse)
    splits = fewshot.load_splits(cfg_of(**TINY), data_root / "synthetic" / "omniglot")
    cfg = cfg_of(**{**TINY, "strategy": "batched", "meta_iterations": 2, "hidden": 8})
    run = RunDir(tmp_path, "05_maml_fewshot")
    with pytest.warns(UserWarning, match="falls back to the loop"):
        result = train(cfg, splits, run, progress=False)
    record = json.loads((run.path / "strategy.json").read_text())
    assert record["chosen"] == "batched" and record["name"] == record["ran"] == result.strategy == "loop"
    assert "(test)" in record["fallback"]
