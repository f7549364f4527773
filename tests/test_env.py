"""Where data and runs go, device choice and seeding: what every notebook's set-up cell relies on."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nbmodule import env
from nbmodule.notebook import setup

REPO = Path(__file__).resolve().parent.parent


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


_CHURN = """
import resource, torch
from nbmodule.env import keep_freed_memory
kept = keep_freed_memory()
def churn(i):  # TRPO's sizes (8-28 MB), a little larger each round, so glibc's adaptive threshold cannot learn them
    n = (8 << 20) // 4 + i * ((1 << 20) // 4)
    a = torch.ones(n); b = torch.ones(n + 1024); del a, b
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(20):
    churn(i)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_keep_freed_memory_stops_large_tensors_from_page_faulting_anew():
    """With the setting, re-allocating 8-28 MB tensors reuses the freed heap (measured: 29-33 thousand page
    faults over 20 rounds against 179 thousand); ``NBM_MALLOC=system`` leaves glibc's default (each tensor
    mapped and faulted anew). Sizes grow each round: with a repeated size glibc's own adaptive threshold
    sometimes learns it, which made a same-size churn's count vary tenfold."""
    def faults(**env):
        out = subprocess.run([sys.executable, "-c", _CHURN], capture_output=True, text=True, check=True,
                             cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **env}).stdout.split()
        return out[0], int(out[1])

    kept, with_setting = faults()
    default, without = faults(NBM_MALLOC="system")
    assert (kept, default) == ("True", "False")
    assert with_setting * 3 < without, (with_setting, without)
