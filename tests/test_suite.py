"""The papermill runner: checks before running, failures recorded, the rest still run, exit status."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from nbmodule import suite


def _notebook(path: Path, params: str | None, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    cells = []
    if params is not None:
        c = nbformat.v4.new_code_cell(params)
        c.metadata["tags"] = ["parameters"]
        cells.append(c)
    cells.append(nbformat.v4.new_code_cell(body))
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture
def books(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    body = ("import json, os, pathlib\n"
            "d = pathlib.Path(out) / '{stem}'; d.mkdir(parents=True, exist_ok=True)\n"
            "(d / 'metrics.json').write_text(json.dumps({{'x': x, 'cwd_is_nbs': os.getcwd().endswith('nbs')}}))\n")
    _notebook(folder / "01_first.ipynb", "x = 1  # a number\nout = ''", body.format(stem="01_first"))
    _notebook(folder / "02_fails.ipynb", "x = 1\nout = ''", "y = 2\nraise ValueError('boom ' + str(x))")
    _notebook(folder / "03_third.ipynb", "x = 1\nout = ''", body.format(stem="03_third"))
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump({"_suite": {"smoke": {"execution_timeout": 120}},
                                        "_all": {"smoke": {"x": 5}}, "01_first": {"smoke": {"x": 7}}}))
    return folder, profiles


def test_failure_is_recorded_and_later_notebooks_still_run(books, tmp_path):
    folder, profiles = books
    out = tmp_path / "out"
    summary = suite.run_suite("smoke", out=out, notebooks_dir=folder, profiles_path=profiles, progress=False)
    status = {r["notebook"]: r for r in summary["results"]}
    assert [r["notebook"] for r in summary["results"]] == ["01_first", "02_fails", "03_third"]
    assert status["01_first"]["status"] == "ok" and status["03_third"]["status"] == "ok"
    failed = status["02_fails"]
    assert failed["status"] == "failed" and failed["error_cell"] == 2  # papermill's injected cell shifts indices
    assert "boom 5" in failed["error"] and "raise ValueError" in failed["traceback"]
    assert summary["failed"] == ["02_fails"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["results"][0]["seconds"] > 0 and (out / "02_fails.ipynb").is_file()
    m1 = json.loads((out / "01_first" / "metrics.json").read_text())
    assert m1 == {"x": 7, "cwd_is_nbs": True}  # notebook block beats _all; cwd is the notebooks folder
    assert json.loads((out / "03_third" / "metrics.json").read_text())["x"] == 5


def test_only_and_user_parameters(books, tmp_path):
    folder, profiles = books
    out = tmp_path / "o2"
    summary = suite.run_suite("smoke", only=["03"], out=out, params={"x": 11}, notebooks_dir=folder,
                              profiles_path=profiles, progress=False)
    assert [r["notebook"] for r in summary["results"]] == ["03_third"]
    assert json.loads((out / "03_third" / "metrics.json").read_text())["x"] == 11


def test_checks_fail_before_anything_runs(books, tmp_path):
    folder, profiles = books
    _notebook(folder / "04_noparams.ipynb", None, "print('hi')")
    with pytest.raises(suite.SuiteError, match="04_noparams.ipynb: no cell tagged 'parameters'"):
        suite.run_suite("smoke", out=tmp_path / "o3", notebooks_dir=folder, profiles_path=profiles)
    (folder / "04_noparams.ipynb").unlink()
    with pytest.raises(suite.SuiteError, match="zzz.*declared by none"):
        suite.run_suite("smoke", out=tmp_path / "o3", params={"zzz": 1}, notebooks_dir=folder,
                        profiles_path=profiles)
    profiles.write_text(yaml.safe_dump({"01_first": {"smoke": {"epochs": 3}}}))
    with pytest.raises(suite.SuiteError, match="injects epochs"):
        suite.run_suite("smoke", out=tmp_path / "o3", notebooks_dir=folder, profiles_path=profiles)
    with pytest.raises(suite.SuiteError, match="matches no notebook"):
        suite.run_suite("smoke", only=["09"], notebooks_dir=folder, profiles_path=profiles)
    assert not (tmp_path / "o3").exists()


def test_unparseable_parameter_line_is_an_error(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01_q.ipynb", 'out = ""  # run root; "" = $NBM_RUNS\nx = 1', "pass")
    with pytest.raises(suite.SuiteError, match="cannot parse.*out"):
        suite.declared_parameters(folder / "01_q.ipynb")


def test_cli_exit_status_and_message(books, tmp_path, capsys, monkeypatch):
    folder, profiles = books
    monkeypatch.setattr(suite, "PROFILES", profiles)
    rc = suite.main(["--profile", "smoke", "--only", "01,02", "--out", str(tmp_path / "o4"), "--notebooks",
                     str(folder), "--no-progress", "-p", "x", "3"])
    captured = capsys.readouterr()
    assert rc == 1 and "02_fails failed at cell 2" in captured.err and "boom 3" in captured.err
    assert "1/2 notebooks succeeded" in captured.out
    assert suite.main(["--profile", "smoke", "--notebooks", str(folder), "-p", "nope", "1"]) == 2


def test_real_profiles_file_is_consistent():
    """Every name a profile injects is declared by the notebook it targets (the smoke run would fail anyway)."""
    profiles = suite.load_profiles()
    books = suite.find_notebooks(suite.default_notebooks_dir())
    for profile in suite.PROFILE_NAMES:
        suite.plan(books, profile, profiles, {}, Path("/tmp/unused"))
    assert {b.stem for b in books} >= {"00_data", "01_models", "02_sequential_replay", "03_mtml",
                                       "04_maml_sampling", "05_maml_fewshot", "06_results", "07_maml_rl"}
    # the results notebook reads every study's run folder, so it runs after all of them (07 included)
    assert books[-1].stem == "06_results" and [b.stem for b in books[:-1]] == sorted(b.stem for b in books[:-1])


def test_summary_keeps_the_history_of_other_notebooks(books, tmp_path):
    """Re-running --only 03 into the same folder keeps 02's failure on record (latest result per notebook)."""
    folder, profiles = books
    out = tmp_path / "o5"
    suite.run_suite("smoke", out=out, notebooks_dir=folder, profiles_path=profiles, progress=False)
    again = suite.run_suite("smoke", only=["03"], out=out, notebooks_dir=folder, profiles_path=profiles,
                            progress=False)
    on_disk = json.loads((out / "summary.json").read_text())
    assert [r["notebook"] for r in on_disk["results"]] == ["01_first", "02_fails", "03_third"]
    assert on_disk["failed"] == ["02_fails"] and again["this_run"] == ["03_third"] and not again["this_run_failed"]
    assert all(r["finished"] and r["profile"] == "smoke" for r in on_disk["results"])
    assert not list(out.glob(".summary.json*"))  # written atomically


def test_an_unwritable_out_fails_before_any_notebook_runs(books, tmp_path, capsys, monkeypatch):
    folder, profiles = books
    monkeypatch.setattr(suite, "PROFILES", profiles)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert suite.main(["--profile", "smoke", "--out", str(blocker / "out"), "--notebooks", str(folder),
                       "--no-progress"]) == 2
    assert "cannot write to" in capsys.readouterr().err
    assert not (folder.parent / "01_first").exists()


@pytest.mark.parametrize("arg, message", [("missing.yaml", "missing.yaml: no such file"),
                                          ("[1, 2]", "not a YAML mapping"), ("a: [1", "not valid YAML")])
def test_bad_parameter_yaml_is_one_error_line(books, capsys, monkeypatch, arg, message):
    folder, profiles = books
    monkeypatch.setattr(suite, "PROFILES", profiles)
    assert suite.main(["--profile", "smoke", "--notebooks", str(folder), "-y", arg]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: -y") and message in err[0]


def test_an_empty_only_is_refused(books, capsys, monkeypatch):
    folder, profiles = books
    monkeypatch.setattr(suite, "PROFILES", profiles)
    for only in (",", "02,,03"):
        assert suite.main(["--profile", "smoke", "--only", only, "--notebooks", str(folder), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --only") and "empty notebook prefix" in err[0]


def test_a_damaged_summary_is_kept_aside(books, tmp_path, capsys):
    folder, profiles = books
    out = tmp_path / "o6"
    out.mkdir()
    (out / "summary.json").write_text('{"results": [{"notebook": "01_first"')  # cut short by a full disk
    suite.run_suite("smoke", only=["01"], out=out, notebooks_dir=folder, profiles_path=profiles, progress=False)
    assert (out / "summary.json.bad").read_text() == '{"results": [{"notebook": "01_first"'
    assert "kept it as" in capsys.readouterr().err
    assert [r["notebook"] for r in json.loads((out / "summary.json").read_text())["results"]] == ["01_first"]


def test_a_parameter_given_twice_in_yaml_is_refused(books, capsys, monkeypatch):
    folder, profiles = books
    monkeypatch.setattr(suite, "PROFILES", profiles)
    assert suite.main(["--profile", "smoke", "--notebooks", str(folder), "-y", "x: 1\nx: 2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "found the key 'x' twice (lines 1 and 2)" in err[0]
