"""MAML on the real Omniglot sample (NBM_SHARED_DATA): the official small zip read unchanged, a short
5-way 1-shot meta-training that clearly learns."""
from __future__ import annotations

import torch

from data_prep import omniglot
from nbmodule.data.fewshot import load_lake_runs
from nbmodule.engines.fewshot import FewShotConfig, load_splits, setting_name, train
from nbmodule.runs import RunDir


def test_real_omniglot_short_maml_learns(shared_data, tmp_path):
    src = shared_data / "omniglot"
    folder = omniglot.convert_sources([src / "images_background_small1.zip", src / "all_runs.zip"], tmp_path / "omni")
    cfg = FewShotConfig(hidden=32, meta_batch_size=4, meta_iterations=100, k_query=2, eval_every=50, val_episodes=40,
                        eval_episodes=60, log_every=10, checkpoint_every=100, inner_lr=0.4)
    splits = load_splits(cfg, folder)
    assert splits["train"].n_base_classes + splits["val"].n_base_classes + splits["test"].n_base_classes == 136
    run = RunDir(tmp_path, "run")
    res = train(cfg, splits, run, device="cpu", progress=False, lake_runs=load_lake_runs(folder))
    val = run.curve("fewshot_val")
    assert val[-1]["val_acc"] > val[0]["val_acc"] + 0.1
    assert res.metrics[f"{setting_name(cfg)}_acc"] > 40  # chance is 20%
    assert res.metrics["omniglot_lake20_error"] < 95  # chance on the 20-way runs: 95% error
    assert torch.isfinite(torch.as_tensor(res.test_accs)).all()
