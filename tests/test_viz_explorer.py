"""The explorer's controls, driven in pytest: setting a control's value redraws the plot and the table."""
from __future__ import annotations

import pytest

from nbmodule import viz
from viz_fake_runs import make_fake_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_fake_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def explorer(runs):
    return viz.explore(runs, study="04_maml_sampling")


def test_controls_are_filled_from_the_run_folder(explorer):
    e = explorer
    assert e.study.options == ("02_sequential_replay", "03_mtml", "04_maml_sampling", "05_maml_fewshot")
    labels = [label for label, _ in e.metric.options]
    assert labels == ["test: test_mse_1step", "test: test_mse_10step", "test: heldout_mse_1step", "test: test_mse_0step",
                      "train: train_loss", "train: weighted_loss", "train: epsilon"]
    assert set(e.runs.value) == {"uniform", "epsilon_greedy", "weighted"}  # all runs selected at first
    assert e.x.options == ("step",)
    assert e.plot.value[:4] == b"\x89PNG"
    assert "test_mse_1step" in e.table.value and "uniform" in e.table.value
    assert e.window.disabled  # no smoothing: the window slider does nothing


def test_changing_the_metric_redraws_plot_and_table(explorer):
    e = explorer
    png, table, draws = e.plot.value, e.table.value, e.draws
    e.metric.value = ("train", "train_loss")
    assert e.draws == draws + 1  # one redraw per change, not one per refilled option
    assert e.plot.value != png and e.table.value != table
    assert e.figure.axes[0].get_ylabel() == "train_loss"
    assert "train_loss" in e.table.value
    # the final value of uniform, seeds 0..2: 2*exp(-19/5) + 0.1*seed + 0.05, averaged
    final = e.final.set_index("run").loc["uniform", "mean"]
    assert final == pytest.approx(2 * 2.718281828 ** (-19 / 5) + 0.15, rel=1e-6)


def test_runs_selection_log_scale_and_smoothing(explorer):
    e = explorer
    e.metric.value = ("train", "train_loss")
    e.runs.value = ("uniform",)
    assert len(e.figure.axes[0].lines) == 1 and list(e.final["run"]) == ["uniform"]
    raw = e.figure.axes[0].lines[0].get_ydata().copy()
    e.logy.value = True
    assert e.figure.axes[0].get_yscale() == "log"
    e.smoothing.value = "rolling"
    assert not e.window.disabled
    e.window.value = 5
    smoothed = e.figure.axes[0].lines[0].get_ydata()
    assert smoothed[0] == pytest.approx(raw[0]) and smoothed[-1] > raw[-1]  # trailing mean of a falling curve
    assert "rolling window 5" in e.status.value


def test_switching_study_refills_runs_metrics_and_x(explorer):
    e = explorer
    e.study.value = "02_sequential_replay"
    assert e.metric.options == (("loss", ("loss", "loss")),)
    assert set(e.runs.options) == {"replay", "noreplay"}
    assert e.x.options == ("step", "stage")
    e.x.value = "stage"
    assert e.figure.axes[0].get_xlabel() == "stage"
    assert "final_stage" in e.final.columns


def test_empty_runs_folder_says_so(tmp_path):
    e = viz.explore(tmp_path)
    assert "No run folders with curves" in e.status.value
    assert e.study.disabled and e.metric.disabled
    with pytest.raises(ValueError, match="no study 'nope'"):
        viz.explore(make_fake_runs(tmp_path / "r", seeds=1, steps=3), study="nope")
