"""Every notebook runs top to bottom under papermill (smoke profile, and the GPU profile's settings for a few
iterations on real or published-layout data), and the command line gives a study notebook's numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nbmodule import suite
from nbmodule.runs import is_timing_key
from nbmodule.studies import study_for_notebook

BOOKS = [b.stem for b in suite.find_notebooks(suite.default_notebooks_dir())]
STUDY_BOOKS = [b for b in BOOKS if study_for_notebook(b) is not None]


class _Env:
    """Set environment variables for a block and restore them after."""

    def __init__(self, **values: str | None):
        self.values, self.old = values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.old[k] = os.environ.get(k)
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run of the whole suite (06 reads what the others wrote), data in a temp root."""
    root = tmp_path_factory.mktemp("smoke")
    with _Env(NBM_DATA=str(root / "data")):
        summary = suite.run_suite("smoke", out=root / "runs", progress=False)
    return root, {r["notebook"]: r for r in summary["results"]}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("stem", BOOKS)
def test_notebook_runs_in_smoke_profile(smoke_run, stem):
    root, results = smoke_run
    res = results[stem]
    assert res["status"] == "ok", f"{stem} failed at cell {res['error_cell']}: {res['error']}\n{res['traceback']}"
    assert res["seconds"] < 120 * 1.5, f"{stem} took {res['seconds']} s in the smoke profile (limit 120 s)"
    metrics = json.loads((root / "runs" / stem / "metrics.json").read_text())
    assert metrics, f"{stem} wrote an empty metrics.json"
    assert all(v is None or isinstance(v, (int, float)) for v in metrics.values())


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("stem", STUDY_BOOKS)
def test_the_command_line_gives_the_notebooks_numbers(smoke_run, stem, tmp_path):
    """`python -m nbmodule run <study> --profile smoke` writes the metrics.json and config.json that the
    notebook wrote under the suite's smoke profile (timing keys aside)."""
    root, results = smoke_run
    assert results[stem]["status"] == "ok", f"{stem} failed in the smoke run"
    study = study_for_notebook(stem)
    res = subprocess.run([sys.executable, "-m", "nbmodule", "run", study.name, "--profile", "smoke", "--out",
                          str(tmp_path), "--data", str(root / "data")], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    nb_dir, cli_dir = root / "runs" / stem, tmp_path / stem
    a = json.loads((nb_dir / "metrics.json").read_text())
    b = json.loads((cli_dir / "metrics.json").read_text())
    assert {k for k in a if not is_timing_key(k)} == {k for k in b if not is_timing_key(k)}
    differ = {k: (a[k], b[k]) for k in a if not is_timing_key(k) and a[k] != b[k]}
    assert not differ, f"{stem}: the notebook and the command line disagree on {differ}"
    assert json.loads((nb_dir / "config.json").read_text()) == json.loads((cli_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def gpu_dry_run(tmp_path_factory):
    """The gpu profile's settings for a few iterations on every notebook, offline: the data comes from a
    mirror built from the shared real samples plus tiny archives in the published layouts."""
    shared = os.environ.get("NBM_SHARED_DATA")
    if not shared or not Path(shared).is_dir():
        pytest.skip("NBM_SHARED_DATA is not set to the shared real-data folder")
    from data_prep.fixtures import build_dry_mirror

    root = tmp_path_factory.mktemp("gpu_dry")
    mirror = build_dry_mirror(root / "mirror", shared=shared)
    with _Env(NBM_DATA=str(root / "data"), NBM_MIRROR=str(mirror)):
        summary = suite.run_suite("gpu-dry", out=root / "runs", progress=False)
    return root, {r["notebook"]: r for r in summary["results"]}


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("stem", BOOKS)
def test_notebook_runs_with_the_gpu_settings_on_real_data(gpu_dry_run, stem):
    root, results = gpu_dry_run
    res = results[stem]
    assert res["status"] == "ok", f"{stem} failed at cell {res['error_cell']}: {res['error']}\n{res['traceback']}"
    metrics = json.loads((root / "runs" / stem / "metrics.json").read_text())
    if study_for_notebook(stem) is not None and "synthetic" in metrics:
        assert metrics["synthetic"] == 0, f"{stem} fell back to synthetic data in the gpu dry run"


@pytest.mark.parametrize("stem", BOOKS)
def test_notebooks_are_committed_clean(stem):
    """No outputs or execution counts in the sources; a Colab badge and GPU metadata for Colab users."""
    nb = nbformat.read(str(suite.default_notebooks_dir() / f"{stem}.ipynb"), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{stem}: strip outputs"
        assert "papermill" not in cell.metadata, f"{stem}: papermill metadata left in a cell"
    assert "colab.research.google.com/github/" in nb.cells[0].source and f"{stem}.ipynb" in nb.cells[0].source
    assert nb.metadata.get("accelerator") == "GPU" and nb.metadata["kernelspec"]["name"] == "python3"
