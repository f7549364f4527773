"""Config validation and the run folder: what every engine and notebook relies on."""
from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
from pydantic import Field

from nbmodule.config import Config, ConfigError, load_config, make_config, pick
from nbmodule.runs import RunDir, read_curve


class Toy(Config):
    regime: Literal["uniform", "delta"] = "uniform"
    lr: float = Field(0.01, gt=0)
    steps: int = 10


def test_make_config_applies_values_and_overrides():
    cfg = make_config(Toy, {"regime": "delta", "lr": 0.1}, steps=3)
    assert (cfg.regime, cfg.lr, cfg.steps) == ("delta", 0.1, 3)


def test_unknown_field_names_the_field_and_the_known_ones():
    with pytest.raises(ConfigError) as err:
        make_config(Toy, {"stpes": 3}, source="parameters cell")
    msg = str(err.value)
    assert "'stpes'" in msg and "parameters cell" in msg and "steps" in msg


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"regime.*'uniform' or 'delta'"):
        make_config(Toy, {"regime": "greedy"})


def test_bound_violation_fails_before_use():
    with pytest.raises(ConfigError, match="lr"):
        make_config(Toy, {"lr": -1.0})
    cfg = make_config(Toy)
    with pytest.raises(Exception, match="lr"):
        cfg.lr = 0.0  # assignments are validated too


def test_yaml_with_base_chain(tmp_path):
    (tmp_path / "base.yaml").write_text("lr: 0.5\nsteps: 7\n")
    (tmp_path / "delta.yaml").write_text("base: base.yaml\nregime: delta\nsteps: 9\n")
    cfg = load_config(Toy, tmp_path / "delta.yaml")
    assert (cfg.regime, cfg.lr, cfg.steps) == ("delta", 0.5, 9)
    (tmp_path / "bad.yaml").write_text("base: base.yaml\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml.*learning_rate"):
        load_config(Toy, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(Toy, tmp_path / "missing.yaml")


def test_pick_takes_only_config_fields():
    assert pick({"lr": 0.2, "seed": 1, "steps": 4}, Toy) == {"lr": 0.2, "steps": 4}


def test_metrics_merge_and_reject_non_numbers(tmp_path):
    run = RunDir(tmp_path, "04_maml_sampling")
    run.write_metrics({"a": 1, "b": torch.tensor(0.5)})
    merged = run.write_metrics({"b": 0.25, "c": float("nan"), "d": None})
    assert merged == {"a": 1, "b": 0.25, "c": None, "d": None}
    assert json.loads((run.path / "metrics.json").read_text()) == merged
    with pytest.raises(TypeError, match="'e'"):
        run.write_metrics({"e": "high"})


def test_curves_append_and_replace(tmp_path):
    run = RunDir(tmp_path)
    run.log_curve("train", [{"run": "uniform", "seed": 0, "step": 1, "loss": 2.0}])
    run.log_curve("train", [{"run": "uniform", "seed": 0, "step": 2, "loss": 1.5}])
    rows = read_curve(run.path, "train")
    assert [r["step"] for r in rows] == [1.0, 2.0] and rows[1]["loss"] == 1.5 and rows[0]["run"] == "uniform"
    run.write_curve("train", rows[:1])
    assert len(run.curve("train")) == 1


def test_checkpoint_roundtrip_and_config_snapshot(tmp_path):
    run = RunDir(tmp_path, "x")
    assert run.load_checkpoint() is None and not run.has_checkpoint()
    gen = torch.Generator().manual_seed(3)
    run.save_checkpoint({"step": 5, "w": torch.ones(2), "rng": gen.get_state()})
    state = run.load_checkpoint()
    assert state["step"] == 5 and torch.equal(state["w"], torch.ones(2))
    g2 = torch.Generator(); g2.set_state(state["rng"])
    assert torch.equal(torch.rand(3, generator=g2), torch.rand(3, generator=gen))
    assert not list((run.path / "checkpoints").glob(".*"))  # atomic write leaves no temp file
    run.save_config(make_config(Toy), seed=1)
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["config"]["regime"] == "uniform" and cfg["seed"] == 1 and "torch" in cfg["versions"]


def test_parse_override_reads_yaml_values_and_blames_the_override():
    from nbmodule.config import parse_override, parse_overrides

    assert parse_override("steps=500") == ("steps", 500)
    assert parse_override("tasks=[seg, depth]") == ("tasks", ["seg", "depth"])
    assert parse_override("name=a=b") == ("name", "a=b")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("steps")
    with pytest.raises(ConfigError, match=r"override 'n_way=\[5'.*not valid YAML"):
        parse_override("n_way=[5")
    with pytest.raises(ConfigError, match="given twice"):
        parse_overrides(["a=1", "a=2"])


def test_a_base_cycle_is_an_error_not_a_recursion(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nlr: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nsteps: 2\n")
    with pytest.raises(ConfigError, match=r"base: chain loops.*a\.yaml.*b\.yaml.*a\.yaml"):
        load_config(Toy, tmp_path / "a.yaml")
