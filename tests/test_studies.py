"""The study contract: one registry, values in YAML only, notebooks equal to their default.yaml, one command
line whose bad input exits 2 with one line, and a run folder that is never silently reused."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml
from pydantic_core import PydanticUndefined

from nbmodule import cli
from nbmodule.config import CONFIG_ROOT, ConfigError, list_configs
from nbmodule.profiles import PROFILE_NAMES, RUNTIME, load_profiles, study_profile
from nbmodule.runs import ResumeError, RunContext, RunDir
from nbmodule.studies import STUDIES, execute, get_study, study_for_notebook

REPO = Path(__file__).resolve().parent.parent
AVAILABLE = [s for s in STUDIES if study_for_notebook(STUDIES[s].notebook) is not None]


def _parameters_cell(stem: str) -> dict:
    nb = nbformat.read(str(REPO / "notebooks" / f"{stem}.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def test_the_registry_lists_the_studies_with_their_notebooks():
    assert {"maml_sampling"} <= set(AVAILABLE)
    for name in AVAILABLE:
        study = get_study(name)
        assert get_study(study.notebook) is study and get_study(study.notebook[:2]) is study
        assert (REPO / "notebooks" / f"{study.notebook}.ipynb").is_file()
        assert "default" in study.configs() and study.figures()
    with pytest.raises(ConfigError, match="unknown study 'nope'.*maml_sampling"):
        get_study("nope")


@pytest.mark.parametrize("name", AVAILABLE)
def test_values_live_in_yaml_only(name):
    """No field of a study's config has a default in Python: default.yaml holds every value once."""
    cls = get_study(name).config_class
    with_defaults = [f for f, info in cls.model_fields.items()
                     if info.default is not PydanticUndefined or info.default_factory is not None]
    assert not with_defaults, f"{cls.__name__} fields with Python defaults: {with_defaults}"
    default = yaml.safe_load((CONFIG_ROOT / name / "default.yaml").read_text())
    assert set(default) == set(cls.model_fields), "default.yaml must name every field, and nothing else"
    for config in list_configs(name):  # every shipped config is valid
        get_study(name).config(config)


@pytest.mark.parametrize("name", AVAILABLE)
def test_notebook_parameters_equal_default_yaml(name):
    study = get_study(name)
    params = _parameters_cell(study.notebook)
    default = study.config_class.defaults()
    fields = {k: v for k, v in params.items() if k not in RUNTIME}
    assert set(fields) == set(default), (f"{study.notebook}: parameters {sorted(set(fields) ^ set(default))} "
                                          "differ from default.yaml's fields")
    for key, value in default.items():
        assert fields[key] == value, f"{study.notebook}: {key} = {fields[key]!r}, default.yaml says {value!r}"
    assert set(RUNTIME) <= set(params), f"{study.notebook}: runtime parameters missing"


@pytest.mark.parametrize("name", AVAILABLE)
def test_every_profile_resolves_to_a_valid_config(name):
    study = get_study(name)
    profiles = load_profiles()
    assert set(profiles[study.notebook]) == set(PROFILE_NAMES), f"{study.notebook} needs every profile"
    for profile in PROFILE_NAMES:
        cfg, runtime = study_profile(profiles, profile, study.notebook, study.config_class)
        assert set(runtime) <= set(RUNTIME)


def test_profiles_name_a_config_file_not_copies_of_values():
    """A profile block overrides a few fields; most of a study's values come from its config file."""
    profiles = load_profiles()
    for name in AVAILABLE:
        study = get_study(name)
        fields = set(study.config_class.model_fields)
        for profile, block in profiles[study.notebook].items():
            assert "config" in block, f"{study.notebook}.{profile} must name its config file"
            assert len(set(block) & fields) <= len(fields) // 2, f"{study.notebook}.{profile} copies a config"


def _run(args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "nbmodule", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["run", "nope", "--config", "default"], "unknown study 'nope'"),
    (["run", "maml_sampling", "--config", "missing"], "config 'missing' not found"),
    (["run", "maml_sampling", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "maml_sampling", "--config", "default", "hidden=[0]"], "field 'hidden.0'"),
    (["run", "maml_sampling", "--config", "default", "hidden=[0"], "override 'hidden=[0'"),
    (["run", "maml_sampling", "--config", "default", "stpes=3"], "unknown field 'stpes'"),
    (["run", "maml_sampling", "--config", "default", "--mode", "train"], "has no modes"),
])
def test_bad_input_exits_2_with_one_error_line(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: ") and message in "\n".join(err)


def test_a_config_file_error_names_the_file_not_the_override(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: default.yaml\nmeta_lr: -1\n")
    (tmp_path / "default.yaml").write_text((CONFIG_ROOT / "maml_sampling" / "default.yaml").read_text())
    assert cli.main(["run", "maml_sampling", "--config", str(bad), "meta_iterations=5"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "meta_lr" in err and "command line" not in err
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    assert cli.main(["run", "maml_sampling", "--config", str(loop)]) == 2
    assert "base: chain loops" in capsys.readouterr().err


def test_unwritable_out_is_refused_before_anything_runs(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # also refused for root, unlike a read-only folder
    assert cli.main(["run", "maml_sampling", "--config", "default", "--out", str(blocker / "runs")]) == 2
    assert f"cannot write to {blocker}" in capsys.readouterr().err


TINY = {"meta_iterations": 6, "seeds": [0], "regimes": ["uniform", "delta"], "eval_every": 3, "eval_points": 5,
        "heldout_tasks": 10, "log_every": 2, "checkpoint_every": 2, "queue_snapshots": 2}


def test_execute_refuses_a_run_folder_of_other_settings_and_keeps_its_config(tmp_path, one_thread):
    study = get_study("maml_sampling")
    cfg = study.config_class.from_values(TINY)
    ctx = RunContext.create(device="cpu", progress=False)
    run = RunDir(tmp_path, study.notebook)
    first = execute(study, cfg, run, ctx)
    assert {f"{spec.name}.png" for spec in study.figures()} <= {p.name for p in run.path.iterdir()}
    stored = json.loads((run.path / "config.json").read_text())
    assert stored["study"] == "maml_sampling" and stored["status"] == "complete" and stored["config"] == cfg.to_dict()
    changed = study.config_class.from_values({**TINY, "inner_lr": 0.02})
    with pytest.raises(ResumeError, match=r"inner_lr \(stored 0.01, now 0.02\)"):
        execute(study, changed, run, ctx)
    assert json.loads((run.path / "config.json").read_text()) == stored  # not rewritten
    assert execute(study, cfg, run, ctx) == first  # same settings: results reused, same numbers
    (run.path / "config.json").unlink()  # checkpoints copied without their config.json: they still refuse
    with pytest.raises(ResumeError, match="inner_lr"):
        execute(study, changed, run, ctx)
    assert not (run.path / "config.json").exists()  # and no config.json claims settings the results lack
    again = execute(study, changed, run, RunContext.create(device="cpu", progress=False, restart=True))
    assert again["uniform_mse_1step"] != first["uniform_mse_1step"]
    assert json.loads((run.path / "config.json").read_text())["config"]["inner_lr"] == 0.02


def test_the_wheel_ships_every_config_and_profile_and_list_works_anywhere(tmp_path):
    """A notebook opened from Colab installs the package from git, non-editable, with no checkout beside it."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, timeout=300, capture_output=True)
    wheel = next(wheel_dir.glob("nbmodule-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"nbmodule/configs/{p.relative_to(CONFIG_ROOT)}" for p in CONFIG_ROOT.rglob("*.yaml")}
    assert shipped and shipped <= names, f"missing from the wheel: {sorted(shipped - names)[:5]}"
    assert "nbmodule/profiles.yaml" in names and any(n.startswith("data_prep/") for n in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # what a non-editable install puts in site-packages
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path[:0] = [sys.argv[1]] + sys.argv[2:]; "
                          "import runpy; sys.argv = ['nbmodule', 'list']; runpy.run_module('nbmodule', run_name='__main__')",
                          str(target), *[p for p in sys.path if "site-packages" in p]],
                         capture_output=True, text=True, cwd=empty, timeout=120)
    assert res.returncode == 0, res.stderr
    assert str(target) in subprocess.run(
        [sys.executable, "-S", "-c", "import sys; sys.path[:0] = [sys.argv[1]] + sys.argv[2:]; import nbmodule; "
         "print(nbmodule.__file__)", str(target), *[p for p in sys.path if "site-packages" in p]],
        capture_output=True, text=True, cwd=empty).stdout
    for name in AVAILABLE:
        assert name in res.stdout and "default" in res.stdout
