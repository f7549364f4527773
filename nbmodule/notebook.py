"""The set-up every notebook's first code cell calls (after Colab has installed the package).

It turns the plain values of the ``parameters`` cell into the things a notebook needs: the device, a seeded
generator, the data root and the notebook's run folder, and prints them so a reader sees where results go.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .env import data_root, in_colab, pick_device, runs_root, seed_everything, set_threads
from .runs import RunDir

__all__ = ["NotebookContext", "setup"]


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
    """Prepare a notebook run: device, seeds, data root (``$NBM_DATA``) and run folder ``<out>/<name>/``.

    ``out``/``data`` empty mean the defaults of :func:`nbmodule.env.runs_root` / :func:`data_root`.
    ``threads`` > 0 limits torch's CPU threads.
    """
    if mount:
        mount_drive()
    set_threads(threads or None)
    ctx = NotebookContext(
        name=name,
        device=pick_device(device),
        generator=seed_everything(seed),
        seed=seed,
        data=data_root(data or None),
        run=RunDir(runs_root(out or None), name),
        progress=progress,
    )
    if verbose:
        print(ctx.describe())
    return ctx
