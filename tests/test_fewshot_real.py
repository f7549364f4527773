"""The few-shot study on the real Omniglot (``NBM_SHARED_DATA``: the complete official zips and ``all_runs.zip``).

Lake et al.'s protocol is checked by image content, not by trust: every one of the 800 images of the 20
one-shot runs is matched, pixel for pixel at 105x105, to its drawing in the official zips, and the study's
meta-training and validation characters must hold none of those characters (the MAML split must, which
shows the check can fail). The same holds on the prepared 28x28 arrays the engine trains on. Then a short
real-data run through ``execute``, the prepared data reached through ``NBM_MIRROR``.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep import obtain
from nbmodule.data.fewshot import load_lake_runs
from nbmodule.engines import fewshot
from nbmodule.engines.fewshot import Config, lake_overlap, load_splits
from nbmodule.runs import RunContext, RunDir
from nbmodule.studies import execute, get_study

STUDY = get_study("fewshot")
_CACHE: dict[str, object] = {}


@pytest.fixture
def real_root(shared_data, tmp_path_factory, monkeypatch):
    """A data root holding the real Omniglot, prepared once through the mirror (``NBM_MIRROR`` = the shared data)."""
    monkeypatch.setenv("NBM_MIRROR", str(shared_data))
    if "root" not in _CACHE:
        root = tmp_path_factory.mktemp("real_data")
        got = obtain("omniglot", root, fallback=False)
        assert not got.synthetic and "mirror" in got.source
        _CACHE["root"] = root
    return _CACHE["root"]


def _pixel_hash(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as im:
        return hashlib.sha1(np.asarray(im.convert("L")).tobytes()).hexdigest()


def _characters_by_content(zips: list[Path]) -> dict[str, set[str]]:
    """sha1 of the decoded 105x105 pixels -> the ``<set>/<alphabet>/<character>`` names drawn so."""
    out: dict[str, set[str]] = {}
    for path in zips:
        kind = "background" if "background" in path.name else "evaluation"
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                parts = name.split("/")
                if name.endswith(".png") and len(parts) >= 4:
                    out.setdefault(_pixel_hash(zf.read(name)), set()).add(f"{kind}/{parts[-3]}/{parts[-2]}")
    return out


def test_lake_runs_characters_are_disjoint_from_meta_training(shared_data, real_root):
    src = shared_data / "omniglot"
    index = _characters_by_content([src / "images_background.zip", src / "images_evaluation.zip"])
    lake_chars: set[str] = set()
    with zipfile.ZipFile(src / "all_runs.zip") as zf:
        images = [n for n in zf.namelist() if n.endswith(".png")]
        for name in images:
            found = index.get(_pixel_hash(zf.read(name)))
            assert found, f"all_runs.zip/{name} matches no drawing of the official zips"
            lake_chars |= found
    assert len(images) == 800 and all(c.startswith("evaluation/") for c in lake_chars)

    def split_chars(split: str) -> tuple[set[str], set[str]]:
        s = load_splits(Config.from_values({"omniglot_split": split}), real_root / "omniglot")
        return set(s["train"].class_names) | set(s["val"].class_names), set(s["test"].class_names)

    trained, tested = split_chars("background")
    assert len(trained) == 964 and len(tested) == 659
    assert not trained & lake_chars, f"Lake characters in meta-training: {sorted(trained & lake_chars)[:3]}"
    assert lake_chars <= tested
    maml_trained, _ = split_chars("maml")
    assert len(maml_trained & lake_chars) > len(lake_chars) // 2  # MAML's split trains on most of them


def test_on_the_training_arrays_no_lake_image_is_a_meta_training_image(real_root):
    folder = real_root / "omniglot"
    lake = load_lake_runs(folder)
    assert lake is not None and lake.support.shape == (20, 20, 28, 28)
    bg = load_splits(Config.from_values({"omniglot_split": "background"}), folder)
    assert lake_overlap(lake, [bg["train"], bg["val"]]) == 0
    assert lake_overlap(lake, [bg["test"]]) == 800  # the check finds every run image where it is
    maml = load_splits(Config.from_values({"omniglot_split": "maml"}), folder)
    assert lake_overlap(lake, [maml["train"], maml["val"]]) > 400


def test_short_real_run_learns_and_reports_the_lake_score(real_root, tmp_path, one_thread):
    # a test-sized run: 32 filters, 4 tasks, meta lr 0.003 (the untrained initialisation adapted 3 steps already
    # scores about 40% on 5-way 1-shot; 40 iterations lift the 100 fixed validation episodes to about 60%)
    cfg = Config.from_values({"hidden": 32, "meta_batch_size": 4, "meta_iterations": 40, "meta_lr": 0.003,
                              "eval_every": 20, "val_episodes": 100, "eval_episodes": 100, "log_every": 10,
                              "checkpoint_every": 40, "strategy": "loop"})
    assert cfg.data_source == "auto" and cfg.omniglot_split == "background"
    run = RunDir(tmp_path, STUDY.notebook)
    m = execute(STUDY, cfg, run, RunContext.create(device="cpu", data=real_root, progress=False, threads=1))
    assert m["synthetic"] == 0 and m["omniglot_lake20_overlap_images"] == 0
    # meta-training beats its own initialisation adapted and scored the same way on the same 100 test episodes
    # (not merely chance, 20%)
    model = fewshot._init_model(cfg, (1, 28, 28), torch.device("cpu")).eval()
    splits = load_splits(cfg, real_root / "omniglot")
    before, _ = fewshot.evaluate(model, splits["test"], cfg, episodes=cfg.eval_episodes, device="cpu",
                                 generator=torch.Generator().manual_seed(cfg.seed + 2), strategy="loop")
    assert m["omniglot_5way_1shot_acc"] > 100 * before.mean() + 8, (m["omniglot_5way_1shot_acc"], before.mean())
    assert 0 < m["omniglot_lake20_error"] < 90  # chance on the 20-way runs: 95% error
    val = run.curve("fewshot_val")
    assert val[-1]["val_acc"] > val[0]["val_acc"] + 0.1
