"""Sweeps: a study's grid run cell by cell, in parallel, on Ray (this machine, or a cluster).

    python -m nbmodule sweep maml_sampling --profile smoke --workers 2 regimes=[uniform,weighted] seeds=[0,1]
    python -m nbmodule sweep maml_sampling --config gpu --workers 16             # 04 at the seed's scale
    python -m nbmodule sweep fewshot --config default --grid config=omniglot_5way1shot,omniglot_20way1shot
    python -m nbmodule sweep maml_rl --config paper --address auto               # on a running Ray cluster
    python -m nbmodule sweep ... --status                                        # the table; runs nothing

A study declares which of its list fields form cells (:attr:`nbmodule.studies.Study.cells`: maml_sampling
``regimes x seeds``, maml_rl ``envs x seeds``); ``--grid key=v1,v2`` adds others (a config field, or
``config=`` files of the study), each point of that grid being a group with its own aggregate. A cell is one
ordinary study run (:func:`nbmodule.studies.execute`: the same ``run(cfg, run_dir, ctx)``, its own run folder,
checkpoints and lock) with its list fields cut to one entry, pinned to ``--cpus-per-cell`` torch threads. Ray
places the cells (``ray.remote`` with ``num_cpus``/``num_gpus``) and reruns one whose worker died; our code
only decides what a cell is and how cells combine. When every cell of a group is done, the study's own
reduction writes the group's run folder: the cells' checkpoints are gathered there and the study runs over
them, which trains nothing (each cell's finished result is reused; what combines cells runs there, e.g.
maml_rl's fine-tuning step chosen over seeds) and writes exactly what the whole grid run in one process
writes (``metrics.json`` key for key but the timings, curves, figures).

Layout of ``<out>/<notebook stem>/`` (``--out`` defaults to ``runs/``, with ``--profile``: ``runs/<profile>/``)::

    sweep.json            the driver's record: each cell's status, error, log, wall time and host
    cells/<cell>/         one run folder per cell; cell.log holds its output (and a failure's traceback)
    metrics.json, ...     the aggregate: the whole-grid run folder (without --grid)
    <group>/              with --grid: one aggregate per grid point
    summary.csv           with --grid: one row per grid point (its values, status and metrics)

A study without cell fields (fewshot: one setting per config) has one cell per grid point, whose run folder
is ``<group>/``. Rerunning the command skips finished cells, resumes interrupted ones from their checkpoints
and leaves failed ones (reported) to ``--retry-failed``. Exit status: 0 when every cell is done and every
aggregate written, 1 when a cell failed, 2 for bad input (or no Ray), 130 when interrupted.

On a cluster (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others, then
``--address auto`` on the head), every node needs this project installed and ``--out`` (and the data) on a
file system they all see: the driver reads the cells' folders to reduce them.
"""
from __future__ import annotations

import argparse
import contextlib
import filecmp
import itertools
import json
import logging
import math
import os
import re
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO

import yaml

from .config import ConfigError, parse_overrides
from .runs import atomic_write_bytes, atomic_write_text, compare_configs, describe_mismatch, read_metrics
from .studies import Study, get_study

__all__ = ["SWEEP_FILE", "CELL_LOG", "INSTALL_HINT", "Cell", "Group", "Plan", "CellState", "SweepReport",
           "SweepError", "parse_grid", "plan_sweep", "cell_states", "format_status", "run_cell", "run_sweep",
           "reduce_group", "add_arguments", "command"]

SWEEP_FILE = "sweep.json"
CELL_LOG = "cell.log"
INSTALL_HINT = 'the sweep command needs Ray: pip install -e ".[sweep]" (or: pip install ray)'
#: The local Ray instance's shared-memory object store: cells return a few numbers, so the minimum-ish size.
OBJECT_STORE_BYTES = 100 * 2**20
#: How often Ray reruns a cell whose worker process died (killed, out of memory, node lost); the rerun
#: resumes from the cell's checkpoints. A Python exception in a cell is never retried: it is reported.
MAX_RETRIES = 2


class SweepError(ConfigError):
    """A sweep that cannot run as asked (one line, exit status 2)."""


# --- the plan: groups (grid points) and their cells -----------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    id: str
    group: str                 # the id of its grid point ("" without --grid)
    config: dict[str, Any]     # the cell's validated config (its cell fields cut to one entry)
    folder: Path               # its run folder


@dataclass(frozen=True)
class Group:
    id: str                    # "" without --grid
    point: dict[str, Any]      # the --grid values of this group
    config: dict[str, Any]     # the whole group's config: what one sequential run would take
    folder: Path               # the aggregate's run folder (studies without cell fields: the one cell's)
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Plan:
    study: Study
    root: Path                 # <out>/<notebook stem>
    groups: tuple[Group, ...]
    grid: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def cells(self) -> list[Cell]:
        return [c for g in self.groups for c in g.cells]

    @property
    def reduces(self) -> bool:
        """Whether groups have an aggregate made from several cells (the study declares cell fields)."""
        return bool(self.study.cells)


def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``["inner_lr=0.01,0.001", "hidden=[40,40],[80,80]"]`` -> ``{"inner_lr": [0.01, 0.001], "hidden": [...]}``
    (values in YAML, as ``key=value`` overrides)."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, values = text.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise SweepError(f"--grid {text!r}: expected key=v1,v2,... (e.g. --grid inner_lr=0.01,0.001)")
        if key in grid:
            raise SweepError(f"--grid {key} is given twice; give all its values once: --grid {key}=v1,v2")
        try:
            parsed = yaml.safe_load(f"[{values}]")
        except yaml.YAMLError as err:
            raise SweepError(f"--grid {text!r}: not a list of YAML values ({str(err).splitlines()[0]})") from None
        if any(v is None for v in parsed):
            raise SweepError(f"--grid {text!r}: an empty value")
        if len({json.dumps(v, sort_keys=True) for v in parsed}) != len(parsed):
            raise SweepError(f"--grid {text!r}: a value is repeated")
        grid[key] = parsed
    return grid


def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_slug(v) for v in value)
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "", text) or "x"


def _point_id(point: Mapping[str, Any]) -> str:
    return "_".join(f"{k}-{_slug(v)}" for k, v in point.items())


def plan_sweep(study: Study | str, root: str | Path, *, config: str | None = None, profile: str | None = None,
               overrides: Mapping[str, Any] | None = None, grid: Mapping[str, list[Any]] | None = None) -> Plan:
    """The groups and cells of a sweep, every config validated (a bad value fails here, naming it).

    The base config is ``config`` (a file of the study) or the one ``profile`` gives its notebook, with
    ``overrides``; ``grid`` (see :func:`parse_grid`) multiplies it into groups; each group's cell fields (the
    study's :attr:`~nbmodule.studies.Study.cells`) into cells."""
    from .profiles import load_profiles, study_profile

    study = get_study(study) if isinstance(study, str) else study
    cls = study.config_class
    overrides, grid = dict(overrides or {}), {k: list(v) for k, v in (grid or {}).items()}
    if (config is None) == (profile is None):
        raise SweepError("a sweep needs exactly one of --config NAME and --profile P")
    for key in grid:
        if key == "config":
            if profile is not None:
                raise SweepError("--grid config=... names config files of the study: use it with --config, "
                                 "not --profile")
        elif key not in cls.model_fields:
            raise SweepError(f"--grid {key}: not a field of {cls.__name__} (fields: {', '.join(cls.model_fields)})")
        elif key in study.cells:
            raise SweepError(f"--grid {key}: {key} already forms the cells of {study.name} "
                             f"({' x '.join(study.cells)}); give its entries as {key}=[...]")
        if key in overrides:
            raise SweepError(f"{key} is given both as {key}=... and in --grid")
    root = Path(root)
    base = None
    if profile is not None:
        cfg, _ = study_profile(load_profiles(), profile, study.notebook, cls)
        base = {**cfg.to_dict(), **overrides}
    groups, seen = [], set()
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo))
        gid = _point_id(point)
        source = f"--grid {gid}" if point else "command line"
        fields = {k: v for k, v in point.items() if k != "config"}
        if base is not None:
            cfg = cls.from_values({**base, **fields}, source=source)
        else:
            cfg = study.config(point.get("config", config), {**overrides, **fields}, override_source=source)
        values = cfg.to_dict()
        folder = root / gid if gid else root
        cells = []
        if study.cells:
            for entries in itertools.product(*(values[f] for f in study.cells)):
                cut = {f: [e] for f, e in zip(study.cells, entries)}
                cid = "_".join(p for p in (gid, _point_id(cut)) if p)
                cell_cfg = cls.from_values({**values, **cut}, source=f"sweep cell {cid}").to_dict()
                cells.append(Cell(cid, gid, cell_cfg, root / "cells" / cid))
        else:
            cells.append(Cell(gid or study.notebook, gid, values, folder))
        for c in cells:
            if c.id in seen:
                raise SweepError(f"two cells would share the folder name {c.id!r}; rename a --grid value")
            seen.add(c.id)
        groups.append(Group(gid, point, values, folder, tuple(cells)))
    return Plan(study, root, tuple(groups), grid)


# --- state: what is done, running, failed ---------------------------------------------------------------------
@dataclass
class CellState:
    status: str                # done, running, failed, interrupted (started, not finished), pending
    error: str = ""
    log: str = ""
    wall_s: float | None = None
    host: str = ""


def _read_record(root: Path) -> dict[str, Any]:
    path = root / SWEEP_FILE
    if not path.is_file():
        return {"cells": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SweepError(f"{path} is damaged ({err}); delete it: the cells' own folders say what is done") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise SweepError(f"{path} is damaged (no 'cells' object); delete it: the cells' folders say what is done")
    return data


def _write_record(root: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(root / SWEEP_FILE, json.dumps(record, indent=1, sort_keys=True, default=str))


def _driver_alive(driver: Mapping[str, Any] | None) -> bool:
    """Whether the sweep process that wrote the record still runs (on this host; another host's: assumed)."""
    if not driver or driver.get("finished"):
        return False
    if driver.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(driver["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _stored_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _complete(study: Study, folder: Path, config: Mapping[str, Any]) -> bool:
    """A run folder that finished a run of exactly ``config`` (fields that change nothing aside)."""
    stored = _stored_config(folder)
    if not stored or stored.get("status") != "complete" or stored.get("study") != study.name:
        return False
    refused, grown = compare_configs(stored.get("config") or {}, config, resumable=study.config_class.RESUMABLE,
                                     neutral=study.config_class.NEUTRAL)
    return not refused and not grown


def cell_states(plan: Plan) -> dict[str, CellState]:
    """Each cell's state, from its run folder (done) and the sweep's record (failed, running)."""
    record = _read_record(plan.root)
    alive = _driver_alive(record.get("driver"))
    states = {}
    for cell in plan.cells:
        rec = record["cells"].get(cell.id) or {}
        log = str(cell.folder / CELL_LOG)
        state = CellState("pending", log=log, wall_s=rec.get("wall_s"), host=rec.get("host", ""))
        if _complete(plan.study, cell.folder, cell.config):
            state.status = "done"
        elif rec.get("status") == "failed":
            state.status, state.error = "failed", rec.get("error", "")
        elif rec.get("status") == "running" and alive:
            state.status = "running"
        elif rec.get("status") in ("running", "interrupted") or (cell.folder / "config.json").is_file():
            state.status = "interrupted"
        states[cell.id] = state
    return states


def _has_results(folder: Path) -> bool:
    ck = folder / "checkpoints"
    return (folder / "metrics.json").is_file() or (ck.is_dir() and any(not p.name.startswith(".")
                                                                        for p in ck.iterdir()))


def _check_folders(plan: Plan) -> None:
    """Refuse, before anything runs, a cell or aggregate folder holding results of other settings."""
    cls = plan.study.config_class
    folders = [(c.folder, c.config) for c in plan.cells]
    if plan.reduces:
        folders += [(g.folder, g.config) for g in plan.groups]
    for folder, config in folders:
        stored = _stored_config(folder)
        if not stored or not _has_results(folder):
            continue
        if stored.get("study") not in (None, plan.study.name):
            raise SweepError(f"{folder} holds a run of study {stored.get('study')!r}; choose another --out")
        refused, _ = compare_configs(stored.get("config") or {}, config, resumable=cls.RESUMABLE, neutral=cls.NEUTRAL)
        if refused:
            raise SweepError(describe_mismatch(folder, stored.get("config") or {}, config, refused)
                             .replace("--restart (the notebook's `restart = True`)", "a new --out"))


def format_status(plan: Plan, states: Mapping[str, CellState] | None = None) -> str:
    """The sweep's table: one line per cell (status, wall time, host, error and log), then the aggregates."""
    states = cell_states(plan) if states is None else states
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s.status] = counts.get(s.status, 0) + 1
    order = ("done", "running", "interrupted", "pending", "failed")
    head = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
    width = max([4, *(len(c.id) for c in plan.cells)])
    lines = [f"sweep {plan.study.name} in {plan.root}: {len(plan.cells)} cells ({head})",
             f"{'cell':{width}s}  {'status':11s}  {'wall':>8s}  detail"]
    for cell in plan.cells:
        s = states[cell.id]
        wall = f"{s.wall_s:.1f} s" if s.wall_s is not None and s.status in ("done", "failed") else ""
        detail = f"{s.error} (log: {s.log})" if s.status == "failed" else (
            f"log: {s.log}" if s.status in ("running", "interrupted") else (f"on {s.host}" if s.host else ""))
        lines.append(f"{cell.id:{width}s}  {s.status:11s}  {wall:>8s}  {detail}".rstrip())
    if plan.reduces:
        for g in plan.groups:
            waiting = sum(states[c.id].status != "done" for c in g.cells)
            what = ("complete" if _complete(plan.study, g.folder, g.config) else
                    f"waiting for {waiting} of {len(g.cells)} cells" if waiting else "cells done, not reduced yet")
            lines.append(f"aggregate {g.folder}: {what}")
    return "\n".join(lines)


# --- one cell, in a Ray worker (or any process) -------------------------------------------------------------
def _one_line(err: BaseException) -> str:
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextlib.contextmanager
def _output_to(fh: TextIO) -> Iterator[None]:
    """Send this process's stdout and stderr, Python's and the C libraries' (file descriptors 1 and 2), to ``fh``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            yield
    finally:
        with contextlib.suppress(Exception):
            fh.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _niceness() -> int | str:
    return os.nice(0) if hasattr(os, "nice") else "n/a"


def run_cell(study: str, config: Mapping[str, Any], folder: str | Path, *, threads: int = 1, device: str = "cpu",
             data: str = "") -> dict[str, Any]:
    """Run one cell (an ordinary study run, :func:`~nbmodule.studies.execute`) into ``folder`` with ``threads``
    torch threads, its output appended to ``folder/cell.log``. Returns ``{"ok", "metrics" or "error", "wall_s",
    "host", "pid", "log"}``: an exception in the study is reported (its traceback is in the log), not raised."""
    from .runs import RunContext, RunDir
    from .studies import execute

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / CELL_LOG
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "log": str(log)}
    start = time.perf_counter()
    with open(log, "a", buffering=1) as fh, _output_to(fh):
        print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} cell {folder.name} of study {study}: host {info['host']}, "
              f"pid {info['pid']}, {threads} torch threads, device {device}, nice {_niceness()}", flush=True)
        try:
            spec = get_study(study)
            cfg = spec.config_class.from_values(dict(config), source=f"sweep cell {folder.name}")
            ctx = RunContext.create(device=device, data=data, progress=False, threads=threads)
            metrics = execute(spec, cfg, RunDir(folder), ctx, figures=False)
        except Exception as err:  # reported to the driver; the other cells go on
            traceback.print_exc()
            wall = time.perf_counter() - start
            print(f"== cell failed after {wall:.1f} s: {_one_line(err)}", flush=True)
            return {**info, "ok": False, "error": _one_line(err), "wall_s": wall}
        wall = time.perf_counter() - start
        print(f"== cell done in {wall:.1f} s", flush=True)
    return {**info, "ok": True, "metrics": metrics, "wall_s": wall}


# --- the reduction -------------------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> None:
    def write(out: Any) -> None:
        with src.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                out.write(chunk)

    atomic_write_bytes(dst, write)


def reduce_group(study: Study, group: Group, *, threads: int = 1, data: str = "") -> dict[str, Any]:
    """The study's reduction over a group's finished cells: gather their checkpoints into the group's run
    folder and run the study there (:func:`~nbmodule.studies.execute`), which reuses every finished result,
    trains nothing and writes the aggregate (``metrics.json``, curves, figures) as one whole-grid run would."""
    from .runs import RunContext, RunDir
    from .studies import execute

    sources: dict[str, Path] = {}
    for cell in group.cells:
        folder = cell.folder / "checkpoints"
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not path.is_file() or path.name.startswith("."):
                continue
            other = sources.get(path.name)
            if other is not None and not filecmp.cmp(other, path, shallow=False):
                raise SweepError(f"{other} and {path} differ: {study.name}'s cells share checkpoint names, so its "
                                 f"fields {', '.join(study.cells)} cannot be cells of a sweep")
            sources[path.name] = path
    target = group.folder / "checkpoints"
    for name, src in sources.items():
        dst = target / name
        if not (dst.is_file() and filecmp.cmp(src, dst, shallow=False)):
            _copy(src, dst)
    cfg = study.config_class.from_values(group.config, source=f"sweep aggregate {group.folder}")
    ctx = RunContext.create(device="cpu", data=data, progress=False, threads=threads)
    return execute(study, cfg, RunDir(group.folder), ctx)


def _write_summary(plan: Plan) -> Path | None:
    """``summary.csv``: one row per grid point (per cell for studies without cell fields), with its metrics."""
    import pandas as pd

    if not plan.grid:
        return None
    rows = []
    for g in plan.groups:
        done = _complete(plan.study, g.folder, g.config)
        rows.append({"group": g.id, **{k: json.dumps(v) if isinstance(v, list) else v for k, v in g.point.items()},
                     "status": "complete" if done else "incomplete", "folder": str(g.folder),
                     **(read_metrics(g.folder) if done else {})})
    return atomic_write_text(plan.root / "summary.csv", pd.DataFrame(rows).to_csv(index=False))


# --- the driver ------------------------------------------------------------------------------------------------
@dataclass
class SweepReport:
    """What a sweep did. Timings in seconds: ``ray_start_s`` (starting or joining Ray), ``cell_wall_s`` (each
    cell's run inside its worker), ``cell_latency_s`` (submit to result, seen by the driver: the cell plus
    Ray's scheduling, a worker's start and the result's transfer), ``reduce_s``, ``wall_s`` (everything)."""

    plan: Plan
    states: dict[str, CellState]
    ran: list[str] = field(default_factory=list)
    aggregates: list[Path] = field(default_factory=list)
    ray_start_s: float = 0.0
    cell_wall_s: dict[str, float] = field(default_factory=dict)
    cell_latency_s: dict[str, float] = field(default_factory=dict)
    reduce_s: float = 0.0
    wall_s: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [cid for cid, s in self.states.items() if s.status == "failed"]

    @property
    def unfinished(self) -> list[str]:
        return [cid for cid, s in self.states.items() if s.status != "done"]

    @property
    def exit_code(self) -> int:
        return 1 if self.unfinished else 0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SweepError(INSTALL_HINT) from None
    return ray


def _start_ray(ray: Any, *, workers: int | None, cpus: int, gpus: float, address: str | None) -> bool:
    """Join the cluster at ``address``, or start Ray on this machine with ``workers x cpus`` CPUs (no dashboard,
    a small object store); an already initialised Ray (a notebook's, a test's) is used as it is. Returns
    whether this call started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address:
        # the cells read NBM_DATA, NBM_MIRROR... as this process does
        env = {k: v for k, v in os.environ.items() if k.startswith("NBM_")}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, **quiet)
    else:
        kwargs = dict(num_cpus=(workers or _local_workers(cpus)) * cpus, num_gpus=None if gpus > 0 else 0,
                      include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, **quiet)
        for attempt in range(1, START_ATTEMPTS + 1):
            before = _children()
            try:
                with _without_optional_grammar(), _workers_at_our_priority():
                    ray.init(**kwargs)
                break
            except Exception as err:  # Ray's own start-up timeout (ray-project/ray#65983) on a busy machine
                with contextlib.suppress(Exception):
                    ray.shutdown()
                _end(_children() - before)
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                if attempt == START_ATTEMPTS:
                    raise SweepError(f"Ray did not start on this machine ({START_ATTEMPTS} tries; 1-minute load "
                                     f"average {load:.1f}): {_one_line(err)}") from None
                logging.getLogger(__name__).warning("Ray did not start (load average %.1f): %s; trying again",
                                                    load, _one_line(err))
    return True


# Ray's raylet waits a fixed 15 s for its Python agents to start (ray-project/ray#65983), and each of them spends
# seconds of CPU importing (here: jsonschema's rfc3987 grammar, installed with Jupyter): a machine busy with
# other work can miss that window, so a local start is tried again.
START_ATTEMPTS = 3


@contextlib.contextmanager
def _workers_at_our_priority() -> Iterator[None]:
    """Start a local Ray whose workers run at this process's priority.

    Ray's raylet renices every worker by +15 (its ``worker_niceness``), which on a machine running anything else
    starves the cells: a 2D-navigation cell of notebook 07 got 3% of a core beside two ordinary training runs
    (46 s of CPU in 25 minutes, 2026-12-03). The raylet reads ``RAY_worker_niceness`` from the environment it
    starts with, so it is set to 0 for the start (unless the user set it) and this process's environment is
    restored at once. Cells then share the machine as ``python -m nbmodule run`` does; ``nice`` the sweep
    command to lower them all."""
    key = "RAY_worker_niceness"
    before = os.environ.get(key)
    if before is None:
        os.environ[key] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


@contextlib.contextmanager
def _without_optional_grammar() -> Iterator[None]:
    """Start Ray's processes (and, through them, the cells' workers) without ``rfc3987_syntax``.

    Every Ray process imports ``jsonschema``, which imports that package when it is installed (Jupyter's
    ``jsonschema[format-nongpl]`` brings it) to check IRI formats nobody here validates; building its grammar
    costs about 3.5 s of CPU per process, which on a busy machine pushes Ray's agents past the raylet's fixed
    start-up wait. ``jsonschema`` treats the package as optional (an ImportError: the format is not checked), so
    a folder (in the temporary directory, kept: workers start from it all along) holding a stand-in that raises
    ImportError is put first on the children's ``PYTHONPATH``; this process's environment is restored at once
    (the raylet starts workers with the environment it was started with)."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("rfc3987_syntax") is None:
        yield
        return
    folder = Path(tempfile.gettempdir()) / f"nbmodule-ray-{os.getuid() if hasattr(os, 'getuid') else 0}"
    init = folder / "rfc3987_syntax" / "__init__.py"
    text = 'raise ImportError("left out of the Ray processes of nbmodule.sweep: start-up time")\n'
    if not init.is_file() or init.read_text() != text:
        atomic_write_text(init, text)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), before) if p)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def _children() -> set[int]:
    try:
        import psutil
    except ImportError:
        return set()
    return {p.pid for p in psutil.Process().children()}


def _end(pids: set[int]) -> None:
    """Stop the processes a failed ``ray.init`` left behind (this process's own children, by pid)."""
    if not pids:
        return
    import psutil

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _local_workers(cpus: int) -> int:
    return max(1, (os.cpu_count() or 1) // cpus)


def _capacity(ray: Any, cpus: int, gpus: float) -> int:
    """How many cells the Ray cluster can run at once."""
    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // cpus)
    if gpus > 0:
        slots = min(slots, int(res.get("GPU", 0) // gpus))
    return max(1, slots)


def run_sweep(plan: Plan, *, workers: int | None = None, cpus_per_cell: int = 1, gpus_per_cell: float = 0.0,
              address: str | None = None, data: str = "", retry_failed: bool = False, progress: bool = True,
              echo: Callable[[str], None] | None = None) -> SweepReport:
    """Run the cells of ``plan`` that are not done on Ray (at most ``workers`` at once, each with
    ``cpus_per_cell`` CPUs and torch threads and ``gpus_per_cell`` GPUs), then reduce every group whose cells
    are all done. ``retry_failed``: run only the cells that failed before. ``echo``: where a failure's line
    goes (default: above the progress bar)."""
    from .progress import progress_bar

    if cpus_per_cell < 1:
        raise SweepError(f"--cpus-per-cell must be at least 1, got {cpus_per_cell}")
    if not (gpus_per_cell >= 0 and math.isfinite(gpus_per_cell)):
        raise SweepError(f"--gpus-per-cell must be a number >= 0 (fractions share a GPU), got {gpus_per_cell}")
    if workers is not None and workers < 1:
        raise SweepError(f"--workers must be at least 1, got {workers}")
    t_start = time.perf_counter()
    _check_folders(plan)
    record = _read_record(plan.root)
    # a driver on another host cannot be checked: there, the cells' own run-folder locks keep two sweeps apart
    d = record.get("driver") or {}
    if _driver_alive(d) and d.get("host") == socket.gethostname() and d.get("pid") != os.getpid():
        raise SweepError(f"another sweep (pid {d.get('pid')} on {d.get('host')}, started {d.get('started')}) is "
                         f"running {plan.root}; wait for it, or see its progress with --status")
    states = cell_states(plan)
    wanted = ("failed",) if retry_failed else ("pending", "interrupted")
    todo = [c for c in plan.cells if states[c.id].status in wanted]
    report = SweepReport(plan, states)
    record["study"], record["root"] = plan.study.name, str(plan.root)
    record["driver"] = {"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    plan.root.mkdir(parents=True, exist_ok=True)
    _write_record(plan.root, record)
    try:
        if todo:
            ray = _import_ray()
            t0 = time.perf_counter()
            started = _start_ray(ray, workers=workers, cpus=cpus_per_cell, gpus=gpus_per_cell, address=address)
            report.ray_start_s = time.perf_counter() - t0
            try:
                _schedule(ray, plan, todo, record, report, workers=workers, cpus=cpus_per_cell, gpus=gpus_per_cell,
                          data=data, progress=progress_bar if progress else None, echo=echo)
            finally:
                if started:
                    ray.shutdown()
        t0 = time.perf_counter()
        if plan.reduces:
            for g in plan.groups:
                if all(report.states[c.id].status == "done" for c in g.cells):
                    if any(c.id in report.ran for c in g.cells) or not _complete(plan.study, g.folder, g.config):
                        reduce_group(plan.study, g, threads=cpus_per_cell, data=data)
                    report.aggregates.append(g.folder)
        else:
            report.aggregates = [g.folder for g in plan.groups if report.states[g.cells[0].id].status == "done"]
        _write_summary(plan)
        report.reduce_s = time.perf_counter() - t0
    finally:
        record["driver"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        _write_record(plan.root, record)
    report.wall_s = time.perf_counter() - t_start
    return report


def _schedule(ray: Any, plan: Plan, todo: list[Cell], record: dict[str, Any], report: SweepReport, *,
              workers: int | None, cpus: int, gpus: float, data: str, progress: Callable[..., Any] | None,
              echo: Callable[[str], None] | None) -> None:
    """Submit ``todo`` to Ray, at most ``window`` cells in flight, and record each result as it comes."""
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES)(run_cell)
    window = workers or _capacity(ray, cpus, gpus)
    device = "cuda" if gpus > 0 else "cpu"
    states = report.states
    queue = list(todo)
    inflight: dict[Any, tuple[Cell, float]] = {}
    done = sum(s.status == "done" for s in states.values())
    bar = (progress or _silent)(total=len(plan.cells), initial=done, desc=f"sweep {plan.study.name}", unit="cell")
    say = echo or bar.write

    def note(cell: Cell, **entry: Any) -> None:
        record["cells"][cell.id] = {**(record["cells"].get(cell.id) or {}), **entry}
        _write_record(plan.root, record)

    try:
        while queue or inflight:
            while queue and len(inflight) < window:
                cell = queue.pop(0)
                ref = task.remote(plan.study.name, cell.config, str(cell.folder), threads=cpus, device=device,
                                  data=data)
                inflight[ref] = (cell, time.perf_counter())
                states[cell.id].status = "running"
                note(cell, status="running", error="", log=str(cell.folder / CELL_LOG),
                     submitted=time.strftime("%Y-%m-%d %H:%M:%S"))
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                cell, submitted = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died (killed, out of memory, node lost)
                    result = {"ok": False, "error": _one_line(err), "log": str(cell.folder / CELL_LOG)}
                report.cell_latency_s[cell.id] = time.perf_counter() - submitted
                report.ran.append(cell.id)
                state = states[cell.id]
                state.wall_s, state.host = result.get("wall_s"), result.get("host", "")
                if result.get("wall_s") is not None:
                    report.cell_wall_s[cell.id] = result["wall_s"]
                if result["ok"]:
                    state.status, state.error = "done", ""
                    bar.update(1)
                else:
                    state.status, state.error = "failed", result["error"]
                    say(f"cell {cell.id} failed: {result['error']} (log: {result['log']})")
                note(cell, status=state.status, error=state.error, wall_s=state.wall_s, host=state.host,
                     finished=time.strftime("%Y-%m-%d %H:%M:%S"))
            failed = sum(s.status == "failed" for s in states.values())
            bar.set_postfix(running=len(inflight), failed=failed, refresh=False)
            bar.refresh()
    except BaseException:  # Ctrl-C (or the driver's own error): stop the cells; a rerun resumes them
        for ref, (cell, _) in inflight.items():
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            states[cell.id].status = "interrupted"
            record["cells"][cell.id] = {**record["cells"].get(cell.id, {}), "status": "interrupted"}
        _write_record(plan.root, record)
        raise
    finally:
        bar.close()


class _silent:
    """A progress bar that shows nothing (``progress=False``); failures still print."""

    def __init__(self, **_: Any):
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_: Any) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    @staticmethod
    def write(text: str) -> None:
        print(text, file=sys.stderr, flush=True)


# --- the command line -------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``sweep`` subcommand's arguments (``python -m nbmodule sweep -h``)."""
    parser.add_argument("study", help="a study name (python -m nbmodule list), notebook stem or number")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a config of the study (name or path), over its default.yaml")
    src.add_argument("--profile", help="smoke, cpu, gpu or gpu-dry: the config its notebook gets from the suite")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="more cells: one group per value (YAML values; config=NAME1,NAME2 for config files)")
    parser.add_argument("--workers", type=int, default=None,
                        help="cells at once (default: this machine's CPUs / --cpus-per-cell; a cluster: all it fits)")
    parser.add_argument("--cpus-per-cell", type=int, default=1, help="CPUs Ray reserves and torch threads per cell")
    parser.add_argument("--gpus-per-cell", type=float, default=0.0,
                        help="GPUs per cell (0.5: two cells share one); > 0 runs cells on cuda")
    parser.add_argument("--address", help="an existing Ray cluster (auto, or ray://host:10001); default: start "
                                          "Ray on this machine")
    parser.add_argument("--out", help="run root (default: runs/, or runs/<profile>/ with --profile)")
    parser.add_argument("--data", default="", help="data root (default: $NBM_DATA or data/)")
    parser.add_argument("--status", action="store_true", help="print the cells' table and exit; runs nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run only the cells that failed before")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")


def command(args: argparse.Namespace) -> int:
    """``python -m nbmodule sweep``: plan, then ``--status`` or run; the exit status of :class:`SweepReport`."""
    from .env import runs_root

    study = get_study(args.study)
    root = Path(args.out) if args.out else runs_root() / (args.profile or "")
    plan = plan_sweep(study, root.expanduser().resolve() / study.notebook, config=args.config,
                      profile=args.profile, overrides=parse_overrides(args.overrides), grid=parse_grid(args.grid))
    if args.status:
        print(format_status(plan))
        return 0
    _import_ray()  # before anything is written: one line saying how to install it
    data = str(Path(args.data).expanduser().resolve()) if args.data else ""
    print(f"[nbmodule] sweep {study.name}: {len(plan.cells)} cells in {plan.root}"
          f" ({'Ray at ' + args.address if args.address else 'Ray on this machine'})", flush=True)
    try:
        report = run_sweep(plan, workers=args.workers, cpus_per_cell=args.cpus_per_cell,
                           gpus_per_cell=args.gpus_per_cell, address=args.address, data=data,
                           retry_failed=args.retry_failed, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted; finished cells are kept, and the same command resumes the others (--status: "
              f"where they are)", file=sys.stderr)
        return 130
    states = report.states
    print(f"[nbmodule] {sum(s.status == 'done' for s in states.values())} of {len(states)} cells done "
          f"({len(report.ran)} run now) in {report.wall_s:.1f} s")
    for cid in report.failed:
        s = states[cid]
        print(f"error: cell {cid} failed: {s.error} (log: {s.log})", file=sys.stderr)
    if report.failed:
        print(f"error: {len(report.failed)} cells failed; the others' results are kept. Rerun with --retry-failed "
              "to run only the failed ones", file=sys.stderr)
    elif report.unfinished:
        print(f"[nbmodule] {len(report.unfinished)} cells not run yet: rerun without --retry-failed to run them")
    for folder in report.aggregates:
        print(f"[nbmodule] aggregate: {folder / 'metrics.json'}")
    return report.exit_code
