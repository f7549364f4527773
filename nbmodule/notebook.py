"""The glue every notebook's first code cells call (after Colab has installed the package).

A study notebook calls :func:`start` with its ``globals()``: the parameters cell's values become the study's
validated config (a mistyped value fails here, before any training), the runtime parameters (device, out,
data, threads, progress, restart, mount_drive) become a :class:`~nbmodule.runs.RunContext` and the run folder
``<out>/<notebook stem>/``. ``session.execute()`` is :func:`nbmodule.studies.execute`, the same call as
``python -m nbmodule run <study>``; ``session.show(name)`` displays a figure it saved. Notebooks that are not
studies (00, 01, 06) call :func:`setup`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import StudyConfig, pick
from .env import data_root, in_colab, pick_device, runs_root, seed_everything, set_threads
from .runs import RunContext, RunDir
from .studies import Study, execute, get_study

__all__ = ["NotebookContext", "StudySession", "setup", "start", "show_png"]


@dataclass
class NotebookContext:
    name: str
    device: torch.device
    generator: torch.Generator
    seed: int
    data: Path
    run: RunDir
    progress: bool

    def describe(self) -> str:
        return json.dumps({"notebook": self.name, "device": str(self.device), "seed": self.seed,
                           "data_root": str(self.data), "run_folder": str(self.run.path),
                           "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=1)


def mount_drive() -> None:
    """Mount Google Drive in Colab (interactive sign-in: only when a parameter asks, never under papermill)."""
    if not in_colab():
        raise RuntimeError("mount_drive=True only works in Google Colab")
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount("/content/drive")


def setup(name: str, *, seed: int = 0, device: str = "auto", out: str = "", data: str = "",
          mount: bool = False, threads: int = 0, progress: bool = True, verbose: bool = True) -> NotebookContext:
    """Prepare a notebook that is not a study: device, seeds, data root (``$NBM_DATA``) and ``<out>/<name>/``."""
    if mount:
        mount_drive()
    set_threads(threads or None)
    ctx = NotebookContext(name=name, device=pick_device(device), generator=seed_everything(seed), seed=seed,
                          data=data_root(data or None), run=RunDir(runs_root(out or None), name), progress=progress)
    if verbose:
        print(ctx.describe())
    return ctx


def show_png(path: str | Path) -> None:
    """Display a PNG file (works in Jupyter, Colab, Voila and in the HTML report)."""
    from IPython.display import Image, display

    display(Image(filename=str(path)))


@dataclass
class StudySession:
    """A study notebook's state: the study, its config, the runtime context and the run folder."""

    study: Study
    cfg: StudyConfig
    ctx: RunContext
    run: RunDir

    def execute(self) -> dict[str, Any]:
        """Train and evaluate (or resume): :func:`nbmodule.studies.execute`; returns ``metrics.json``."""
        return execute(self.study, self.cfg, self.run, self.ctx)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.run.metrics

    def show(self, *names: str) -> None:
        """Display the study's saved figures ``<name>.png`` (all of them when no name is given), saying which
        could not be drawn and why."""
        specs = {s.name: s for s in self.study.figures()}
        for name in names or tuple(specs):
            path = self.run.path / f"{name}.png"
            if path.is_file():
                show_png(path)
            else:
                needs = specs[name].needs if name in specs else "a figure of that name"
                print(f"{name}: not drawn ({self.run.path} has no {needs})")


def start(study: str, params: Mapping[str, Any], *, verbose: bool = True) -> StudySession:
    """A study notebook's set-up from its parameters (pass ``globals()``)."""
    spec = get_study(study)
    cls = spec.config_class
    cfg = cls.from_values(pick(params, cls), source="the notebook's parameters cell")
    if params.get("mount_drive"):
        mount_drive()
    ctx = RunContext.create(device=params.get("device", "auto"), data=params.get("data", ""),
                            progress=bool(params.get("progress", True)), threads=int(params.get("threads", 0) or 0),
                            restart=bool(params.get("restart", False)))
    set_threads(ctx.threads or None)
    session = StudySession(spec, cfg, ctx, RunDir(runs_root(params.get("out") or None), spec.notebook))
    if verbose:
        print(json.dumps({"study": spec.name, "device": str(ctx.device), "data_root": str(ctx.data),
                          "run_folder": str(session.run.path), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}, indent=1))
        print(cfg.model_dump_json(indent=1))
    return session
