"""Each study's figures, drawn from fake run folders in the suite's format; missing inputs give None."""
from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from nbmodule import viz
from nbmodule.runs import RunDir
from nbmodule.viz import benchmarks, fewshot, maml_sampling, mtml, replay
from viz_fake_runs import make_fake_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_fake_runs(tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize("key,figures", [
    ("02", ["stage_table", "forgetting"]),
    ("03", ["mtml_table", "mtml_heldout"]),
    ("04", ["curves", "parameter_space", "final_mse"]),
    ("05", ["fewshot_accuracy"]),
])
def test_every_study_draws_and_saves_its_figures(runs, tmp_path, key, figures):
    report = viz.study_figures(key, runs, save_to=RunDir(tmp_path, "06_results"))
    assert set(figures) <= set(report.figures)
    assert all("not drawn" in m or "could not read" in m for m in report.missing)  # what the fakes lack, named
    for name in figures:
        assert isinstance(report.figures[name], Figure)
        png = tmp_path / "06_results" / f"{key}_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_inputs_return_none_and_are_named(tmp_path):
    empty = RunDir(tmp_path, "02_sequential_replay").path
    assert replay.plot_replay_stages(empty) is None
    assert replay.plot_replay_forgetting(empty) is None
    assert maml_sampling.plot_curves(empty) is None
    assert maml_sampling.plot_parameter_space(empty) is None
    assert fewshot.plot_fewshot(empty) is None
    assert mtml.plot_mtml_heldout(empty) is None
    assert mtml.plot_mtml_table(empty) is None
    report = viz.study_figures("02", tmp_path)
    assert report.figures == {}
    assert any("stage_table.csv" in m for m in report.missing)
    absent = viz.study_figures("05", tmp_path)
    assert absent.run_dir is None and "no run folder" in absent.missing[0]
    bench = viz.study_figures("benchmarks", tmp_path, benchmarks=tmp_path / "nope.json")
    assert bench.figures == {} and "no speed ratios" in bench.missing[0]
    with pytest.raises(ValueError, match="unknown study"):
        viz.study_figures("09", tmp_path)


def test_forgetting_table_from_stage_table(runs):
    forget = replay.drop_table(runs / "02_sequential_replay").set_index(["run", "task"])
    assert forget.loc[("replay", "seg"), "drop_pct"] == pytest.approx(100 * (0.40 - 0.385) / 0.40)
    assert forget.loc[("noreplay", "det"), "drop_pct"] == pytest.approx(60.0)
    assert forget.loc[("replay", "cls"), "drop_pct"] == 0.0  # learned last: nothing to forget
    assert "alone" not in set(forget.index.get_level_values("run"))  # trained alone: nothing to forget


def test_fewshot_table_pairs_each_setting_with_the_paper(runs):
    table = fewshot.paper_table(json.loads((runs / "05_maml_fewshot" / "metrics.json").read_text()))
    assert table[["n_way", "k_shot"]].values.tolist() == [[5, 1], [20, 1]]
    assert table["acc"].tolist() == [91.2, 70.1]
    assert table["ci95"].tolist() == [0.8, 1.1]
    assert table["paper_acc"].tolist() == [98.7, 95.8]


def test_mtml_table_rows_are_modes_with_delta_m(runs):
    table = mtml.mtml_table(json.loads((runs / "03_mtml" / "metrics.json").read_text()))
    assert list(table.index) == ["single", "mtl", "mtml"]
    assert list(table.columns)[-2:] == ["delta_m", "steps_to_target"]
    assert table.loc["mtml", "delta_m"] == 4.0
    assert np.isnan(table.loc["single", "steps_to_target"])  # null in metrics.json
    assert table.loc["mtl", "seg_miou"] == pytest.approx(0.32)


def test_benchmark_ratios_flat_and_nested(runs):
    results = json.loads((runs / "benchmarks" / "results.json").read_text())
    table = benchmarks.benchmark_ratios(results).set_index("benchmark")["ratio"].to_dict()
    assert table == {"maml_sinusoid_speedup": 12.0, "fewshot_omniglot_engine_speedup": 0.9}
    nested = benchmarks.benchmark_ratios({"a": {"ratio": 2.0, "engine_s": 1.0}, "b": [{"name": "x", "speedup": 3}]})
    assert nested.values.tolist() == [["a.ratio", 2.0], ["b.x.speedup", 3.0]]
    assert isinstance(benchmarks.plot_benchmarks(runs / "benchmarks" / "results.json"), Figure)


def test_maml_final_reads_test_grid_keys_with_ci_not_heldout(runs):
    fig = maml_sampling.plot_final(runs / "04_maml_sampling")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["uniform", "epsilon_greedy", "weighted"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1 step(s)", "10 step(s)"]
    heights = sorted(round(p.get_height(), 4) for p in ax.patches)
    assert heights == sorted([0.3, 0.35, 0.4] + [0.1, 0.15, 0.2])  # heldout_* keys left out
    assert "before adaptation: 3.00-3.00" in ax.get_title()  # 0-step MSE named, not drawn


def test_curve_bands_span_the_seeds(runs):
    fig = viz.plot_curves(viz.read_curves(runs / "04_maml_sampling")["train"], "train_loss", "step",
                          runs=["uniform"])
    ax = fig.axes[0]
    assert len(ax.lines) == 1 and len(ax.collections) == 1  # the mean and its band
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    line = ax.lines[0].get_ydata()
    assert band.max() > line.max() and band.min() < line.min()
