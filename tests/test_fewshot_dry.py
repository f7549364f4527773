"""The GPU path of the few-shot study, tested on a CPU: the paper's MiniImagenet setting (84x84 RGB, 32 filters,
5 inner steps, 15 queries, 10 test steps) for two meta-iterations on an archive in the exact published layout
(``images.zip`` + the official split CSVs, built by ``data_prep.fixtures`` from the shared real samples),
found through ``NBM_MIRROR``, verified, converted and loaded by the real code; no network, no fallback."""
from __future__ import annotations

import json

from data_prep.fixtures import miniimagenet_archive
from nbmodule.profiles import load_profiles, study_profile
from nbmodule.runs import RunContext, RunDir
from nbmodule.studies import execute, get_study

STUDY = get_study("fewshot")


def test_gpu_dry_profile_is_the_gpu_config_with_a_few_iterations():
    dry, _ = study_profile(load_profiles(), "gpu-dry", STUDY.notebook, STUDY.config_class)
    gpu = STUDY.config("gpu")
    short = {"meta_iterations", "eval_every", "val_episodes", "eval_episodes", "log_every", "checkpoint_every"}
    assert {k: v for k, v in dry.to_dict().items() if k not in short} == \
        {k: v for k, v in gpu.to_dict().items() if k not in short}
    assert dry.data_source == "real" and dry.meta_batch_size == 32 and dry.hidden == 64 and dry.meta_iterations <= 5


def test_miniimagenet_paper_setting_on_the_published_layout(shared_data, tmp_path, monkeypatch, one_thread):
    mirror = tmp_path / "mirror"
    miniimagenet_archive(shared_data, mirror / "miniimagenet")
    monkeypatch.setenv("NBM_MIRROR", str(mirror))
    cfg = STUDY.config("miniimagenet_5way1shot", {"meta_iterations": 1, "eval_every": 1, "val_episodes": 1,
                                                  "eval_episodes": 2, "log_every": 1, "checkpoint_every": 1})
    assert cfg.data_source == "real" and cfg.hidden == 32 and cfg.inner_steps == 5 and cfg.k_query == 15
    run = RunDir(tmp_path / "runs", STUDY.notebook)
    m = execute(STUDY, cfg, run, RunContext.create(device="cpu", data=tmp_path / "data", progress=False, threads=1))
    assert m["synthetic"] == 0 and 0 <= m["miniimagenet_5way_1shot_acc"] <= 100
    assert not any(k.startswith("omniglot_lake20") for k in m)
    data = json.loads((run.path / "data.json").read_text())
    assert data["splits"]["train"]["image_shape"] == [3, 84, 84] and "mirror" in data["source"]
    ev = json.loads((run.path / "evaluation.json").read_text())
    assert "MiniImagenet" in ev["lake20"]["reason"] and len(ev["test_accs"]) == 2
    assert [r["step"] for r in run.curve("fewshot_train")] == [1]
    assert (run.path / "fewshot_episode.png").is_file()
