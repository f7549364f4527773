"""Notebook 06's orchestration: every registered study's figures, drawn from its run folder alone.

Each study's figures live in its own module (``nbmodule.viz.<study>.FIGURES``, see :mod:`nbmodule.studies`);
:func:`study_figures` draws those of one study and saves each as ``<NN>_<figure>.png`` into a destination run
folder (notebook 06's); :func:`show_study` does that and displays them in a notebook.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..runs import RunDir
from ..studies import get_study
from .benchmarks import plot_benchmarks
from .plots import figure_png

__all__ = ["StudyReport", "find_study_dir", "study_figures", "show_study"]


@dataclass
class StudyReport:
    """What :func:`study_figures` drew for one study, where it saved them and what it could not draw."""
    study: str
    run_dir: Path | None
    figures: dict[str, Figure] = field(default_factory=dict)
    saved: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def find_study_dir(runs_dir: str | Path, stem: str) -> Path | None:
    """The run folder of the notebook ``stem`` under ``runs_dir``: exact name, else one named ``NN_*``."""
    root = Path(runs_dir)
    if (root / stem).is_dir():
        return root / stem
    matches = sorted(p for p in root.glob(f"{stem[:3]}*") if p.is_dir()) if root.is_dir() else []
    return matches[0] if matches else None


def _save(fig: Figure, save_to: RunDir | str | Path | None, name: str) -> Path | None:
    if save_to is None:
        return None
    run = save_to if isinstance(save_to, RunDir) else RunDir(save_to)
    return run.save_figure(fig, name)


def study_figures(study: str, runs_dir: str | Path, save_to: RunDir | str | Path | None = None,
                  benchmarks: str | Path | None = None) -> StudyReport:
    """Draw every figure of ``study`` (a name, a notebook stem or number, or ``"benchmarks"``) from ``runs_dir``.

    Figures are saved as ``<NN>_<figure>.png`` into ``save_to`` when given. For ``"benchmarks"``, pass the
    path of ``results.json`` as ``benchmarks``.
    """
    if study == "benchmarks":
        path = Path(benchmarks) if benchmarks else None
        report = StudyReport("benchmarks", path)
        fig = plot_benchmarks(path) if path is not None and path.is_file() else None
        if fig is None:
            report.missing.append(f"benchmarks: no speed ratios in {path or 'benchmarks/results.json'} "
                                  "(run `make bench` or `python benchmarks/run.py` first)")
        else:
            report.figures["benchmarks"] = fig
            saved = _save(fig, save_to, "benchmarks")
            if saved:
                report.saved["benchmarks"] = saved
        return report
    spec = get_study(study, contract=False)
    key = spec.notebook[:2]
    run_dir = find_study_dir(runs_dir, spec.notebook)
    report = StudyReport(spec.notebook, run_dir)
    if run_dir is None:
        report.missing.append(f"{spec.notebook}: no run folder under {runs_dir} (run notebook {spec.notebook}.ipynb, "
                              f"or `python -m nbmodule run {spec.name} --profile cpu`)")
        return report
    for fs in spec.figures():
        try:
            fig = fs.draw(run_dir)
        except (KeyError, ValueError, pd.errors.ParserError) as err:  # a malformed file: say which, go on
            report.missing.append(f"{spec.notebook}/{fs.name}: could not read {fs.needs} in {run_dir}: {err}")
            continue
        if fig is None:
            report.missing.append(f"{spec.notebook}/{fs.name}: not drawn, {run_dir} has no {fs.needs}")
            continue
        report.figures[fs.name] = fig
        saved = _save(fig, save_to, f"{key}_{fs.name}")
        if saved:
            report.saved[fs.name] = saved
    return report


def show_study(study: str, runs_dir: str | Path, save_to: RunDir | str | Path | None = None,
               benchmarks: str | Path | None = None) -> StudyReport:
    """:func:`study_figures`, then display the figures and print one line per figure that is missing."""
    from IPython.display import Image, display

    report = study_figures(study, runs_dir, save_to, benchmarks)
    if report.run_dir is not None and report.figures:
        print(f"{report.study}: {len(report.figures)} figure(s) from {report.run_dir}")
    for line in report.missing:
        print(line)
    for fig in report.figures.values():
        # PNG bytes rather than the Figure: shows the same in Jupyter, Colab, Voila and the HTML report,
        # whatever matplotlib backend the kernel has.
        display(Image(data=figure_png(fig, dpi=80)))
    return report
