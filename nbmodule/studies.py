"""The studies: one registry, one contract, one way through the code.

A study is an engine module (``nbmodule.engines.<name>``) exposing ``NAME``, its config class ``Config`` (a
:class:`~nbmodule.config.StudyConfig` whose values live in ``nbmodule/configs/<name>/*.yaml``) and
``run(cfg, run_dir, ctx) -> metrics``, plus a viz module (``nbmodule.viz.<name>``) exposing ``FIGURES``.
Its notebook and ``python -m nbmodule run <name>`` both call :func:`execute`, so they write the same run
folder: ``config.json``, ``metrics.json``, curves, checkpoints and one PNG per figure.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from .config import ConfigError, StudyConfig, list_configs
from .runs import RunContext, RunDir, ResumeError, compare_configs, describe_mismatch

__all__ = ["Study", "STUDIES", "get_study", "study_for_notebook", "execute", "check_writable", "save_figures"]


@dataclass(frozen=True)
class Study:
    name: str
    notebook: str  # the notebook's stem; also the run folder's name
    title: str
    # The list fields whose entries are independent runs: the cells of a sweep (nbmodule.sweep), e.g. regimes x
    # seeds. Each entry keeps its own checkpoints, named by the entry and made with a config that leaves these
    # lists out, and the study's run reuses a finished one's result: so `run` over the cells' gathered
    # checkpoints trains nothing and is the study's reduction, writing what one whole-grid run writes (a step
    # that combines entries runs there: maml_rl's fine-tuning step chosen over seeds, and its evaluation).
    cells: tuple[str, ...] = ()

    @property
    def engine(self) -> Any:
        return importlib.import_module(f"nbmodule.engines.{self.name}")

    @property
    def viz(self) -> Any:
        return importlib.import_module(f"nbmodule.viz.{self.name}")

    @property
    def config_class(self) -> type[StudyConfig]:
        return self.engine.Config

    def configs(self) -> list[str]:
        return list_configs(self.name)

    def figures(self) -> tuple:
        return tuple(getattr(self.viz, "FIGURES", ()))

    def config(self, name: str | Path = "default", overrides: Mapping[str, Any] | None = None,
               *, override_source: str = "command line") -> StudyConfig:
        """The study's config from one of its YAML files (or a path), with ``overrides`` applied."""
        return self.config_class.from_file(name, overrides, override_source=override_source)


STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("replay", "02_sequential_replay",
          "Sequential segmentation, detection and classification in one model, with experience replay"),
    Study("mtml", "03_mtml", "Multi-task meta-learning for dense prediction (MTML)"),
    Study("maml_sampling", "04_maml_sampling", "Task-weighted MAML: priority-queue task sampling",
          cells=("regimes", "seeds")),
    Study("fewshot", "05_maml_fewshot", "MAML few-shot classification (Omniglot, MiniImagenet)"),
    # not baselines: every cell trains MAML, so a cell per baseline would train it once per baseline
    Study("maml_rl", "07_maml_rl", "MAML for reinforcement learning (2D navigation, HalfCheetah)",
          cells=("envs", "seeds")),
)}


@lru_cache(maxsize=None)
def _available(study: Study, contract: bool = True) -> bool:
    """The study's engine exists (and, with ``contract``, exposes ``Config`` and ``run``)."""
    if importlib.util.find_spec(f"nbmodule.engines.{study.name}") is None:
        return False
    if not contract:
        return True
    engine = study.engine
    return isinstance(getattr(engine, "Config", None), type) and callable(getattr(engine, "run", None))


def get_study(name: str, *, contract: bool = True) -> Study:
    """A study by name (``fewshot``), notebook stem (``05_maml_fewshot``) or number (``05``).

    ``contract=False`` also finds a study whose engine does not follow the contract yet (for its figures)."""
    for s in STUDIES.values():
        if name in (s.name, s.notebook, s.notebook[:2]) and _available(s, contract):
            return s
    known = ", ".join(f"{s.name} ({s.notebook})" for s in STUDIES.values() if _available(s, contract))
    raise ConfigError(f"unknown study {name!r}; studies: {known}")


def study_for_notebook(stem: str) -> Study | None:
    """The study a notebook runs, or None for notebooks that are not studies (00, 01, 06)."""
    for s in STUDIES.values():
        if s.notebook == stem and _available(s):
            return s
    return None


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` and prove a file can be written there, before anything long runs."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"cannot write to {folder}: {err.strerror or err}; choose another --out") from None
    return folder


def save_figures(study: Study, run: RunDir) -> dict[str, Path]:
    """Draw every figure of ``study`` from its run folder and save it as ``<name>.png`` there."""
    import matplotlib.pyplot as plt

    saved = {}
    for spec in study.figures():
        fig = spec.draw(run.path)
        if fig is not None:
            saved[spec.name] = run.save_figure(fig, spec.name)
            plt.close(fig)
    return saved


def _has_results(run: RunDir) -> bool:
    """Whether a run folder holds results (metrics, curves or checkpoints), not just a config.json: a folder
    whose run failed before training (a data or shape check) may be reused with corrected settings."""
    if (run.path / "metrics.json").exists():
        return True
    for dirpath, _, filenames in os.walk(run.path):
        if Path(dirpath).name in ("checkpoints", "curves") and any(not n.startswith(".") for n in filenames):
            return True
    return False


def execute(study: Study | str, cfg: StudyConfig, run_dir: RunDir | str | Path, ctx: RunContext, *,
            figures: bool = True) -> dict[str, Any]:
    """Run a study into ``run_dir`` and return its ``metrics.json``: the one path behind every door.
    ``figures=False`` skips drawing the figures (a sweep's cells: the aggregate draws them).

    The folder is held for the whole run (:meth:`~nbmodule.runs.RunDir.lock`: a second run on it is refused,
    naming the holder). An existing run folder of the same settings resumes; one whose ``config.json`` differs
    in a field that is neither resumable nor neutral is refused (:class:`~nbmodule.runs.ResumeError`) unless
    ``ctx.restart`` (which deletes only the files runs wrote there), or unless it holds no results yet (a run
    that failed before training: its folder is reused).
    """
    study = get_study(study) if isinstance(study, str) else study
    if not isinstance(cfg, study.config_class):
        raise ConfigError(f"study {study.name!r} needs a {study.config_class.__name__}, got {type(cfg).__name__}")
    folder = check_writable(run_dir.path if isinstance(run_dir, RunDir) else run_dir)
    run = RunDir(folder)
    with run.lock(study.name):
        return _execute_locked(study, cfg, run, ctx, figures)


def _execute_locked(study: Study, cfg: StudyConfig, run: RunDir, ctx: RunContext, figures: bool = True
                    ) -> dict[str, Any]:
    from .env import keep_freed_memory, seed_everything, set_threads

    if ctx.restart:
        run.clear()
    stored = run.read_json("config.json", kind=dict)
    run.metrics  # a damaged metrics.json (not an object, a folder) is named now, not after training
    current = cfg.to_dict()
    if stored is not None and not _has_results(run):
        stored = None  # nothing to mix up: the settings of a run that stopped before any result are replaced
    if stored is not None:
        if stored.get("study") != study.name:
            raise ResumeError(f"{run.path} holds a run of study {stored.get('study')!r}, not {study.name!r}; "
                              "choose another --out, or --restart to discard it")
        stored_cfg = stored.get("config", {})
        if not isinstance(stored_cfg, dict):
            raise ConfigError(f"{run.path / 'config.json'} is damaged: its 'config' is not an object")
        refused, _ = compare_configs(stored_cfg, current, resumable=cfg.RESUMABLE, neutral=cfg.NEUTRAL)
        if refused:
            raise ResumeError(describe_mismatch(run.path, stored_cfg, current, refused))
    device = getattr(ctx.device, "type", str(ctx.device))
    run.save_config(cfg, study=study.name, device=device, status="running")
    threads_before = set_threads(None)
    set_threads(ctx.threads or None)
    keep_freed_memory()  # large tensors reused instead of page-faulted anew (see nbmodule.env)
    try:
        seed_everything(int(getattr(cfg, "seed", 0)))
        metrics = study.engine.run(cfg, run, ctx)
        final = run.write_metrics(metrics)
        if figures:
            save_figures(study, run)
    except ResumeError:  # a checkpoint inside refused these settings: config.json must not claim them
        if stored is None:
            (run.path / "config.json").unlink(missing_ok=True)
        else:
            run.write_json("config.json", stored)
        raise
    except BaseException as err:  # say so in config.json (a failed write, e.g. a full disk, changes nothing)
        first = str(err).splitlines()[0] if str(err) else ""
        with contextlib.suppress(OSError):
            run.save_config(cfg, study=study.name, device=device, status=f"stopped ({type(err).__name__}: {first})")
        raise
    finally:
        set_threads(threads_before)
    run.save_config(cfg, study=study.name, device=device, status="complete")
    return final
