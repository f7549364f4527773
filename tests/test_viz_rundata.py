"""Reading run folders: discovery, curve parsing, smoothing and the over-seeds aggregation, on hand-made data."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nbmodule.runs import RunDir
from nbmodule.viz.rundata import (aggregate_seeds, final_values, find_studies, lower_is_better, metric_columns,
                                  read_curves, smooth, x_columns)


def test_find_studies_lists_folders_with_curves_including_nested(tmp_path):
    RunDir(tmp_path, "04_maml_sampling").log_curve("train", [{"run": "uniform", "seed": 0, "step": 0, "loss": 1.0}])
    RunDir(tmp_path, "03_mtml").sub("meta").log_curve("ft", [{"run": "mtml", "seed": 0, "step": 0, "f": 0.1}])
    RunDir(tmp_path, "06_results").write_metrics({"a": 1})           # no curves: not a study
    ckpt = RunDir(tmp_path, "02_x").sub("checkpoints")                 # never entered
    ckpt.log_curve("junk", [{"run": "a", "seed": 0, "step": 0, "v": 1}])
    found = find_studies(tmp_path)
    assert list(found) == ["03_mtml/meta", "04_maml_sampling"]
    assert find_studies(tmp_path / "absent") == {}


def test_read_curves_fills_missing_run_and_seed_and_finds_columns(tmp_path):
    run = RunDir(tmp_path, "s")
    run.log_curve("a", [{"step": 0, "epoch": 0, "loss": 2.0, "acc": float("nan")},
                        {"step": 1, "epoch": 0, "loss": 1.0, "acc": float("nan")}])
    (run.path / "curves" / "empty.csv").write_text("")
    curves = read_curves(run.path)
    assert list(curves) == ["a"]
    df = curves["a"]
    assert list(df["run"]) == ["a", "a"] and list(df["seed"]) == [0, 0]
    assert x_columns(df) == ["step", "epoch"]
    assert metric_columns(df) == ["loss"]  # acc is all NaN: nothing to draw


def test_smooth_ema_and_rolling_match_hand_computation():
    s = pd.Series([0.0, 3.0, 6.0, 9.0])
    assert smooth(s, "none", 5).tolist() == s.tolist()
    assert smooth(s, "rolling", 2).tolist() == [0.0, 1.5, 4.5, 7.5]
    # span 3 -> alpha 0.5; adjusted EMA: sum_i (1-a)^i x_{t-i} / sum_i (1-a)^i
    ema = smooth(s, "ema", 3).tolist()
    assert ema[1] == pytest.approx((3 + 0.5 * 0) / 1.5)
    assert ema[3] == pytest.approx((9 + 0.5 * 6 + 0.25 * 3 + 0.125 * 0) / 1.875)
    with pytest.raises(ValueError, match="smoothing must be one of"):
        smooth(s, "median", 3)


def test_aggregate_seeds_mean_and_std_per_step():
    df = pd.DataFrame({"run": ["a"] * 4 + ["b"] * 2, "seed": [0, 0, 1, 1, 0, 0], "step": [0, 1, 0, 1, 0, 1],
                       "loss": [1.0, 0.5, 3.0, 1.5, 2.0, 2.0]})
    agg = aggregate_seeds(df, "step", "loss")
    a = agg[agg["run"] == "a"]
    assert a["mean"].tolist() == [2.0, 1.0]
    assert a["std"].tolist() == pytest.approx([math.sqrt(2.0), math.sqrt(0.5)])
    assert a["n"].tolist() == [2, 2]
    b = agg[agg["run"] == "b"]
    assert b["std"].tolist() == [0.0, 0.0]  # one seed: no spread, not NaN
    with pytest.raises(KeyError, match="no column 'acc'"):
        aggregate_seeds(df, "step", "acc")


def test_final_values_take_each_seeds_last_point():
    df = pd.DataFrame({"run": ["a"] * 4, "seed": [0, 0, 1, 1], "step": [0, 10, 0, 10],
                       "val_acc": [0.2, 0.8, 0.4, 0.6]})
    t = final_values(df, "step", "val_acc")
    row = t.iloc[0]
    assert row["final_step"] == 10 and row["seeds"] == 2
    assert row["mean"] == pytest.approx(0.7)
    # Student's t with 1 degree of freedom (12.706), not the normal 1.96: two seeds say little
    assert row["ci95"] == pytest.approx(12.7062047 * np.std([0.8, 0.6], ddof=1) / math.sqrt(2))
    assert row["best"] == pytest.approx(0.8)
    assert lower_is_better("test_mse_1step") and not lower_is_better("val_acc")
