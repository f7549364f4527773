"""Every notebook runs top to bottom under papermill in the smoke profile, through the suite runner."""
from __future__ import annotations

import json
import os

import nbformat
import pytest

from nbmodule import suite

BOOKS = [b.stem for b in suite.find_notebooks(suite.default_notebooks_dir())]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run of the whole suite (06 reads what the others wrote), offline data in a temp root."""
    root = tmp_path_factory.mktemp("smoke")
    old = os.environ.get("NBM_DATA")
    os.environ["NBM_DATA"] = str(root / "data")
    try:
        summary = suite.run_suite("smoke", out=root / "runs", progress=False)
    finally:
        if old is None:
            os.environ.pop("NBM_DATA", None)
        else:
            os.environ["NBM_DATA"] = old
    return root / "runs", {r["notebook"]: r for r in summary["results"]}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("stem", BOOKS)
def test_notebook_runs_in_smoke_profile(smoke_run, stem):
    out, results = smoke_run
    res = results[stem]
    assert res["status"] == "ok", f"{stem} failed at cell {res['error_cell']}: {res['error']}\n{res['traceback']}"
    assert res["seconds"] < 120 * 1.5, f"{stem} took {res['seconds']} s in the smoke profile (limit 120 s)"
    metrics = json.loads((out / stem / "metrics.json").read_text())
    assert metrics, f"{stem} wrote an empty metrics.json"
    assert all(v is None or isinstance(v, (int, float)) for v in metrics.values())


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
