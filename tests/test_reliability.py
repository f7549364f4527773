"""Nothing lost, nothing silent (issue 18): run-folder locks and markers, checkpoint integrity, divergence,
memory, and every anticipated error as one ``error:`` line. Each test is a case that failed before.

The runs are maml_sampling at its smallest (one regime, one seed, 6 meta-iterations: about a second); figures
are not drawn where they do not matter (``no_figures``)."""
from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from nbmodule import cli, runs, studies
from nbmodule.config import CONFIG_ROOT, ConfigError
from nbmodule.runs import (LOCK, MARKER, DivergenceError, RunContext, RunDir, RunLockedError,
                           check_finite)
from nbmodule.studies import execute, get_study

STUDY = get_study("maml_sampling")
TINY = {"regimes": ["uniform"], "seeds": [0], "meta_iterations": 6, "eval_every": 3, "eval_points": 5,
        "eval_steps": 2, "heldout_tasks": 10, "log_every": 2, "checkpoint_every": 2, "queue_snapshots": 2}


@pytest.fixture
def no_figures(monkeypatch):
    monkeypatch.setattr(studies, "save_figures", lambda study, run: {})


def _cfg(**over):
    return STUDY.config_class.from_values({**TINY, **over})


def _ctx(**kw):
    return RunContext.create(device="cpu", progress=False, threads=1, **kw)


def _cli(out, *args, name="run", **over):
    """``python -m nbmodule run maml_sampling`` in this process: (exit status, stderr lines)."""
    values = {**TINY, **over}
    argv = ["run", "maml_sampling", "--config", "default", "--out", str(out), "--name", name, "--no-progress",
            "--threads", "1", *args, *(f"{k}={json.dumps(v)}" for k, v in values.items())]
    return cli.main(argv)


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _one_error_line(capsys, *needles: str) -> str:
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def _science(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not runs.is_timing_key(k)}


# -- 1. --restart deletes only what runs wrote ---------------------------------------------------------------
def test_restart_refuses_a_folder_that_is_not_a_run_folder(tmp_path, capsys, no_figures):
    folder = tmp_path / "X"
    (folder / "src").mkdir(parents=True)
    (folder / "config.json").write_text('{"study": "maml_sampling", "config": {}}')
    (folder / "important.txt").write_text("keep me")
    (folder / "src" / "app.py").write_text("print('mine')")
    assert _cli(tmp_path, "--restart", name="X") == 2
    _one_error_line(capsys, "not a run folder of this project", "important.txt", "nothing was deleted")
    assert (folder / "important.txt").read_text() == "keep me" and (folder / "src" / "app.py").is_file()
    assert (folder / "config.json").is_file()


def test_restart_deletes_what_runs_wrote_and_nothing_else(tmp_path, capsys, no_figures):
    run = RunDir(tmp_path, "r")
    first = execute(STUDY, _cfg(), run, _ctx())
    marker = json.loads((run.path / MARKER).read_text())
    assert marker["study"] == "maml_sampling" and {"config.json", "metrics.json", "checkpoints/uniform_s0.pt",
                                                    "curves/train.csv", "queues.json"} <= set(marker["files"])
    assert not (run.path / LOCK).exists()  # released
    # the refusal without --restart says what --restart would delete
    with pytest.raises(studies.ResumeError, match=r"--restart.*deletes only the files runs wrote"):
        execute(STUDY, _cfg(inner_lr=0.02), run, _ctx())
    (run.path / "curves" / "my_notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"curves/my_notes\.txt.*nothing was deleted"):
        execute(STUDY, _cfg(inner_lr=0.02), run, _ctx(restart=True))
    assert (run.path / "checkpoints" / "uniform_s0.pt").is_file() and run.metrics == first
    (run.path / "curves" / "my_notes.txt").unlink()
    again = execute(STUDY, _cfg(inner_lr=0.02), run, _ctx(restart=True))
    assert again["uniform_mse_1step"] != first["uniform_mse_1step"]
    assert json.loads((run.path / "config.json").read_text())["config"]["inner_lr"] == 0.02


# -- 2. damaged checkpoint bytes are detected ----------------------------------------------------------------
def _damage_tensor_bytes(path: Path) -> None:
    """Overwrite 8 bytes of the largest tensor inside a torch archive: the zip still opens and loads."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start: start + 8] = struct.pack("<ff", 4.8e6, -4.8e6)
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch alone loads it: the damage would go unnoticed


def test_damaged_bytes_in_the_only_checkpoint_are_refused_naming_it(tmp_path, capsys, no_figures):
    assert _cli(tmp_path) == 0
    capsys.readouterr()
    folder = tmp_path / "run"
    (folder / "metrics.json").unlink()
    _damage_tensor_bytes(folder / "checkpoints" / "uniform_s0.pt")
    assert _cli(tmp_path) == 2
    _one_error_line(capsys, "no readable checkpoint", "uniform_s0.pt", "CRC-32")
    assert not (folder / "metrics.json").exists()  # no numbers from damaged bytes


def test_damaged_bytes_in_the_newest_checkpoint_fall_back_to_the_previous_one(tmp_path):
    run = RunDir(tmp_path)
    ck = run.checkpointer("train", config={"lr": 0.1})
    ck.save({"w": torch.arange(1000.0)}, step=2)
    ck.save({"w": torch.arange(1000.0) * 2}, step=4)
    _damage_tensor_bytes(ck.path)
    fresh = run.checkpointer("train", config={"lr": 0.1})
    with pytest.warns(UserWarning, match=r"train\.pt.*CRC-32.*previous good one.*train\.prev\.pt"):
        state = fresh.load()
    assert fresh.step == 2 and torch.equal(state["w"], torch.arange(1000.0))


# -- 3. one run per folder -----------------------------------------------------------------------------------
def test_a_second_run_on_a_held_folder_is_refused_naming_the_holder(tmp_path, capsys, no_figures):
    run = RunDir(tmp_path, "run")
    with run.lock("maml_sampling"):
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {os.getpid()} on host"):
            execute(STUDY, _cfg(), run, _ctx())
        assert _cli(tmp_path) == 2
        _one_error_line(capsys, f"pid {os.getpid()}", "study maml_sampling")
        assert not (run.path / "config.json").exists()  # the refused run wrote nothing
    assert not (run.path / LOCK).exists()
    assert execute(STUDY, _cfg(), run, _ctx())["uniform_mse_1step"] is not None  # free again


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, no_figures):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = RunDir(tmp_path, "run")
    import socket

    (run.path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                             "started": "2026-01-01T00:00:00", "study": "maml_sampling"}))
    with pytest.warns(UserWarning, match=rf"took over the stale lock.*pid {dead.pid}"):
        execute(STUDY, _cfg(), run, _ctx())
    assert not (run.path / LOCK).exists()


# -- 4. sizes have bounds; memory is estimated before training -----------------------------------------------
@pytest.mark.parametrize("study", ["maml_sampling", "maml_rl"])
def test_a_huge_meta_batch_is_refused_at_validation(study):
    with pytest.raises(ConfigError, match=r"meta_batch_size.*less than or equal"):
        get_study(study).config_class.from_values({"meta_batch_size": 10**9})


def _upper_bounded(info) -> bool:
    return any(hasattr(m, "le") or hasattr(m, "lt") for m in info.metadata)


@pytest.mark.parametrize("name", ["maml_sampling", "maml_rl", "fewshot", "replay", "mtml"])
def test_every_size_field_has_an_upper_bound(name):
    """Integers (sizes, counts, periods, seeds) and lists (of seeds, widths) are bounded: no value makes a run
    grow until the kernel kills it."""
    import typing

    cls = get_study(name).config_class
    missing = []
    for field, info in cls.model_fields.items():
        ann = info.annotation
        union = typing.get_origin(ann) is typing.Union
        args = [a for a in typing.get_args(ann) if a is not type(None)] if union else [ann]
        for a in args:
            if a is int and not _upper_bounded(info):
                missing.append(field)
            if typing.get_origin(a) is list and not any(hasattr(m, "max_length") for m in info.metadata):
                item = typing.get_args(a)[0] if typing.get_args(a) else None
                if typing.get_origin(item) is not typing.Literal:  # a list of distinct choices is bounded by them
                    missing.append(field)
    assert not missing, f"{cls.__name__}: fields without an upper bound: {missing}"


def test_what_cannot_fit_in_memory_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import nbmodule.meta.strategy as strategy

    monkeypatch.setattr(strategy, "available_memory", lambda device: 2**30)  # a machine with 1 GiB free
    assert _cli(tmp_path, meta_batch_size=100_000) == 2
    line = _one_error_line(capsys, "meta_batch_size=100000", "needs about", "GiB", "1 GiB is available on cpu")
    assert "lower meta_batch_size" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- 5. divergence is never silent ---------------------------------------------------------------------------
@pytest.mark.parametrize("override", ["inner_lr=.inf", "meta_lr=.nan", "queue_init_scale=-.inf"])
def test_non_finite_values_are_refused_at_validation(tmp_path, capsys, override, no_figures):
    assert _cli(tmp_path, override) == 2
    assert "finite number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path, capsys, no_figures):
    assert _cli(tmp_path, meta_lr=1e308) == 2
    line = _one_error_line(capsys, "training diverged", "meta-loss (uniform, seed 0)", "at step")
    step = int(line.split("at step ")[1].split(";")[0].split()[0])
    assert step > 1
    if step > 2:
        assert "last good checkpoint is" in line and "uniform_s0.pt (step" in line
    else:
        assert "no checkpoint was written" in line
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_check_finite_names_the_last_good_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.checkpointer("train").save({"w": torch.ones(1)}, step=40)
    check_finite(torch.tensor(1.5), step=41, what="loss", run_dir=run)
    with pytest.raises(DivergenceError, match=r"loss is nan at step 42; the last good checkpoint is .*train\.pt "
                                              r"\(step 40\)"):
        check_finite(torch.tensor(float("nan")), step=42, what="loss", run_dir=run)
    with pytest.raises(DivergenceError, match="inf at step 1; no checkpoint was written"):
        check_finite(float("inf"), step=1, what="loss", run_dir=RunDir(tmp_path, "empty"))


def test_a_null_metric_has_its_reason_beside_it(tmp_path, no_figures):
    run = RunDir(tmp_path, "run")
    metrics = execute(STUDY, _cfg(), run, _ctx())
    notes = json.loads((run.path / "metric_notes.json").read_text())
    nulls = {k for k, v in metrics.items() if v is None}
    assert nulls and set(notes) == nulls  # one seed: no interval, and it says so
    assert all("two or more" in notes[k] for k in nulls)
    run.write_metrics({"x": float("nan"), "y": None}, reasons={"y": "not measured on a CPU"})
    notes = run.read_json("metric_notes.json")
    assert notes["y"] == "not measured on a CPU" and "non-finite" in notes["x"]
    run.write_metrics({"x": 1.0})
    assert "x" not in run.read_json("metric_notes.json")


# -- 6. a run that failed before training does not block its folder -------------------------------------------
def test_a_folder_whose_run_failed_before_training_is_reused(tmp_path, capsys, monkeypatch, no_figures):
    real = STUDY.engine.run

    def data_check(cfg, run_dir, ctx):
        if cfg.k_shot == 100:
            raise ConfigError("k_shot=100: the data holds fewer points per task")
        return real(cfg, run_dir, ctx)

    monkeypatch.setattr(STUDY.engine, "run", data_check)
    assert _cli(tmp_path, k_shot=100) == 2
    _one_error_line(capsys, "k_shot=100")
    assert _cli(tmp_path, k_shot=5) == 0
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["config"]["k_shot"] == 5 and stored["status"] == "complete"


# -- 7. every anticipated error is one line, exit 2 ----------------------------------------------------------
def _bad_folder(kind: str):
    def make(out: Path) -> None:
        folder = out / "run"
        folder.mkdir(parents=True)
        name, shape = kind.split(":")
        if shape == "dir":
            (folder / name).mkdir()
        else:
            (folder / name).write_text("[1, 2]")
    return make


@pytest.mark.parametrize("args, prepare, needles", [
    (["--device", "foo"], None, ["device='foo' is not a device"]),
    (["--threads", "-3"], None, ["--threads -3"]),
    (["--data", "{out}/afile"], lambda out: (out / "afile").write_text("x"), ["is a file, not a folder"]),
    (["--config", "{out}/latin1.yaml"], lambda out: (out / "latin1.yaml").write_bytes(b"meta_lr: 0.01 # caf\xe9\n"),
     ["latin1.yaml is not UTF-8"]),
    ([], _bad_folder("metrics.json:list"), ["metrics.json is damaged", "JSON list"]),
    ([], _bad_folder("metrics.json:dir"), ["metrics.json is a folder"]),
    ([], _bad_folder("config.json:list"), ["config.json is damaged", "JSON list"]),
    ([], _bad_folder("config.json:dir"), ["config.json is a folder"]),
    (["key"], None, ["unrecognized arguments: key", "key=value"]),
    ([], lambda out: (out / "run" / "checkpoints").mkdir(parents=True) or
     (out / "run" / "checkpoints" / "uniform_s0.pt").write_bytes(b"\x00" * 64),
     ["no readable checkpoint", "uniform_s0.pt"]),
], ids=["device", "threads", "data-file", "non-utf8", "metrics-list", "metrics-dir", "config-list", "config-dir",
        "key-without-equals", "unreadable-checkpoint"])
def test_anticipated_errors_are_one_line_and_exit_2(tmp_path, capsys, no_figures, args, prepare, needles):
    if prepare is not None:
        prepare(tmp_path)
    args = [a.replace("{out}", str(tmp_path)) for a in args]
    if "--config" in args:  # a config file of its own, no overrides
        assert cli.main(["run", "maml_sampling", *args, "--out", str(tmp_path), "--name", "run"]) == 2
    else:
        assert _cli(tmp_path, *args) == 2
    _one_error_line(capsys, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    assert _cli(tmp_path, "--device", "cuda") == 2
    _one_error_line(capsys, "CUDA is not available")


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied"),
                                        (errno.EROFS, "Read-only file system")])
def test_a_full_disk_or_a_folder_made_read_only_mid_run_is_one_line(tmp_path, capsys, monkeypatch, no_figures,
                                                                    code, text):
    real, calls = runs.atomic_write_bytes, []

    def failing(path, data):  # the third file written (a checkpoint, mid-run) meets the full or read-only disk
        calls.append(path)
        if len(calls) == 3:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, data)

    monkeypatch.setattr(runs, "atomic_write_bytes", failing)
    assert _cli(tmp_path) == 2
    _one_error_line(capsys, text, str(calls[2]))


def test_offline_download_failure_is_one_line(tmp_path, capsys, monkeypatch, no_figures):
    from data_prep.fetch import DownloadError

    def offline(*a, **k):
        raise DownloadError("could not download omniglot (no network): tried https://example.invalid/x.zip")

    monkeypatch.setattr(STUDY.engine, "run", offline)
    assert _cli(tmp_path) == 2
    _one_error_line(capsys, "could not download omniglot")


def test_ctrl_c_is_one_line_exit_130_and_the_same_command_resumes(tmp_path, capsys, monkeypatch, no_figures):
    engine = STUDY.engine
    real, calls = engine.meta_loss, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "meta_loss", interrupted)
    assert _cli(tmp_path) == 130
    err = _err(capsys)
    assert err == ["interrupted at step 5 (uniform_s0, last checkpoint at step 4); the same command resumes"]
    monkeypatch.setattr(engine, "meta_loss", real)
    assert _cli(tmp_path) == 0
    straight = execute(STUDY, _cfg(), RunDir(tmp_path, "straight"), _ctx())
    assert _science(RunDir(tmp_path, "run").metrics) == _science(straight)


def test_an_unanticipated_error_keeps_its_traceback(tmp_path, monkeypatch):
    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(STUDY.engine, "meta_loss", bug)
    with pytest.raises(ZeroDivisionError):
        _cli(tmp_path)


# -- 8. strict parsing ---------------------------------------------------------------------------------------
def test_duplicate_keys_in_a_yaml_file_are_refused(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("base: default.yaml\nmeta_lr: 0.01\nmeta_lr: 0.1\n")
    (tmp_path / "default.yaml").write_text((CONFIG_ROOT / "maml_sampling" / "default.yaml").read_text())
    assert cli.main(["run", "maml_sampling", "--config", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "dup.yaml" in err and "'meta_lr' twice" in err


@pytest.mark.parametrize("values, needle", [({"meta_iterations": True}, "a boolean (true) where a number"),
                                            ({"first_order": "yes"}, "must be true or false"),
                                            ({"seeds": [0, False]}, "a boolean (false) where a number")])
def test_types_are_strict(values, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        STUDY.config_class.from_values(values)


# -- 9. iterations grow where no schedule depends on the total -----------------------------------------------
def test_meta_iterations_grow_to_the_same_numbers_as_a_longer_run(tmp_path, no_figures):
    grown = RunDir(tmp_path, "grown")
    execute(STUDY, _cfg(meta_iterations=6), grown, _ctx())
    result = execute(STUDY, _cfg(meta_iterations=12), grown, _ctx())
    straight = execute(STUDY, _cfg(meta_iterations=12), RunDir(tmp_path, "straight"), _ctx())
    assert _science(result) == _science(straight)
    assert grown.curve("test") == RunDir(tmp_path, "straight").curve("test")
    assert json.loads((grown.path / "config.json").read_text())["config"]["meta_iterations"] == 12


def test_meta_iterations_do_not_grow_where_the_schedule_spans_the_run(tmp_path, no_figures):
    run = RunDir(tmp_path, "eps")
    execute(STUDY, _cfg(regimes=["epsilon_greedy"], epsilon_anneal_steps=None), run, _ctx())
    with pytest.raises(studies.ResumeError, match=r"meta_iterations \(stored 6, now 12\).*epsilon_anneal_steps"):
        execute(STUDY, _cfg(regimes=["epsilon_greedy"], epsilon_anneal_steps=None, meta_iterations=12), run, _ctx())
    assert json.loads((run.path / "config.json").read_text())["config"]["meta_iterations"] == 6
