"""Where data and runs go, device choice and seeding: what every notebook's set-up cell relies on."""
from __future__ import annotations

import pytest
import torch

from nbmodule import env
from nbmodule.notebook import setup


def test_data_and_runs_roots_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NBM_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("NBM_RUNS", str(tmp_path / "r"))
    assert env.data_root() == tmp_path / "d" and env.runs_root() == tmp_path / "r"
    assert env.data_root(tmp_path / "x") == tmp_path / "x"  # an explicit path wins
    monkeypatch.delenv("NBM_DATA")
    assert env.data_root() == env.REPO_ROOT / "data"  # default: data/ at the repository root


def test_pick_device():
    assert env.pick_device("cpu") == torch.device("cpu")
    assert env.pick_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            env.pick_device("cuda")


def test_setup_seeds_and_creates_run_folder(tmp_path, capsys):
    ctx = setup("04_maml_sampling", seed=7, device="cpu", out=str(tmp_path), data=str(tmp_path / "data"))
    a = torch.rand(3, generator=ctx.generator)
    ctx2 = setup("04_maml_sampling", seed=7, device="cpu", out=str(tmp_path), verbose=False)
    assert torch.equal(a, torch.rand(3, generator=ctx2.generator))
    assert ctx.run.path == tmp_path / "04_maml_sampling" and ctx.run.path.is_dir()
    assert ctx.data == tmp_path / "data" and '"seed": 7' in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="Colab"):
        setup("x", out=str(tmp_path), mount=True, verbose=False)
