"""Notebook 06 under papermill on fake run folders: a figure per study, PNGs saved, an HTML report exported."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from nbmodule.viz import export_html
from viz_fake_runs import make_fake_runs

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "06_results.ipynb"


def _execute(out: Path, **params) -> Path:
    import papermill

    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(Path(sys.prefix) / "share" / "jupyter"),
                                                  os.environ.get("JUPYTER_PATH", "")]).strip(os.pathsep)
    executed = out / "06_results.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(executed), parameters={"out": str(out), "progress": False,
                               "threads": 1, **params}, kernel_name="python3", cwd=str(REPO / "notebooks"),
                               progress_bar=False, execution_timeout=300)
    return executed


@pytest.mark.slow
def test_notebook_06_shows_every_study_and_exports_html(tmp_path):
    runs = make_fake_runs(tmp_path, seeds=2, steps=8)
    executed = _execute(runs, benchmarks=str(runs / "benchmarks" / "results.json"))
    folder = runs / "06_results"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["studies_with_runs"] == 4
    assert all(metrics[f"figures_{k}"] >= 1 for k in ("replay", "mtml", "maml_sampling", "fewshot", "benchmarks"))
    assert metrics["figures_maml_rl"] == 0  # no RL run among the fake folders: nothing drawn, nothing invented
    pngs = {p.name for p in folder.glob("*.png")}
    assert {"02_stage_table.png", "03_mtml_heldout.png", "04_curves.png", "05_fewshot_accuracy.png",
            "benchmarks.png"} <= pngs
    assert json.loads((folder / "config.json").read_text())["config"]["runs"] == ""
    nb = nbformat.read(str(executed), as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images == metrics["figures"]

    report = export_html(executed, folder / "report.html")
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64") >= metrics["figures"]


def test_show_study_without_runs_says_what_is_missing(tmp_path, capsys):
    """What notebook 06 prints for each study when nothing ran (the suite's smoke test runs it that way)."""
    from nbmodule.viz import show_study

    for key, stem in (("02", "02_sequential_replay"), ("03", "03_mtml"), ("04", "04_maml_sampling"),
                      ("05", "05_maml_fewshot")):
        report = show_study(key, tmp_path, tmp_path / "06_results")
        assert report.figures == {} and report.run_dir is None
        assert f"{stem}: no run folder under {tmp_path}" in capsys.readouterr().out
    show_study("benchmarks", tmp_path, benchmarks=tmp_path / "none.json")
    assert "benchmarks: no speed ratios" in capsys.readouterr().out
    assert not list((tmp_path / "06_results").glob("*.png"))


def test_export_html_needs_an_executed_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="executed notebook not found"):
        export_html(tmp_path / "missing.ipynb", tmp_path / "r.html")
