"""An ipywidgets explorer over run folders: pick a study, runs, a metric, the x-axis, smoothing, log scale.

Generic over the curve convention of :mod:`nbmodule.viz.rundata` (study = a run folder with ``curves/``,
runs = values of ``run``, metric = numeric columns of a curve file, x = the x columns present), so it knows
nothing about any particular study. The widget glue is thin: every redraw calls the pure functions
:func:`~nbmodule.viz.plots.plot_curves` and :func:`~nbmodule.viz.rundata.final_values`, and shows the result
as a PNG ``Image`` widget and an ``HTML`` table, which render the same in JupyterLab, Jupyter Notebook,
Colab and Voila. Only core widgets that exist in ipywidgets 7.7 (Colab's) and 8.x are used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..env import in_colab
from .plots import figure_png, plot_curves, table_html
from .rundata import find_studies, final_values, metric_columns, read_curves, x_columns

__all__ = ["Explorer", "explore"]

_SMOOTHING = (("none", "none"), ("EMA", "ema"), ("rolling mean", "rolling"))


class Explorer:
    """Controls and output of the explorer; ``explorer.widget`` is the box to display.

    Attributes a test (or a user) can drive: ``study``, ``runs``, ``metric``, ``x``, ``smoothing``,
    ``window``, ``logy`` (the controls; setting ``.value`` redraws synchronously), ``plot`` (an ``Image``
    widget holding the PNG), ``table`` (an ``HTML`` widget), ``figure`` (the last matplotlib figure) and
    ``final`` (the last table as a DataFrame).
    """

    def __init__(self, runs_dir: str | Path, study: str | None = None, dpi: int = 90):
        import ipywidgets as w

        self.runs_dir = Path(runs_dir)
        self.dpi = dpi
        self.studies = find_studies(self.runs_dir)
        self._curves: dict[str, pd.DataFrame] = {}
        self._busy = False
        self.figure = None
        self.final = pd.DataFrame()
        self.draws = 0

        wide = {"description_width": "70px"}
        self.study = w.Dropdown(options=list(self.studies), description="study", style=wide,
                                layout=w.Layout(width="300px"))
        self.metric = w.Dropdown(options=[], description="metric", style=wide, layout=w.Layout(width="340px"))
        self.x = w.Dropdown(options=[], description="x-axis", style=wide, layout=w.Layout(width="200px"))
        self.runs = w.SelectMultiple(options=[], description="runs", style=wide, rows=6,
                                     layout=w.Layout(width="340px"))
        self.smoothing = w.Dropdown(options=list(_SMOOTHING), value="none", description="smoothing", style=wide,
                                    layout=w.Layout(width="220px"))
        self.window = w.IntSlider(value=10, min=2, max=100, description="window", style=wide,
                                  continuous_update=False, disabled=True, layout=w.Layout(width="300px"))
        self.logy = w.Checkbox(value=False, description="log scale", indent=False)
        self.status = w.HTML(value="")
        # align_self: keep the PNG at its own size instead of stretching it across the box
        self.plot = w.Image(format="png", layout=w.Layout(max_width="100%", align_self="flex-start"))
        self.table = w.HTML(value="")
        self.widget = w.VBox([
            w.HBox([self.study, self.metric, self.x]),
            w.HBox([self.runs, w.VBox([self.smoothing, self.window, self.logy])]),
            self.status, self.plot, self.table,
        ])
        # CSS classes name the controls for browser tests and custom styling.
        self.widget.add_class("nbm-explorer")
        for name in ("study", "metric", "x", "runs", "smoothing", "window", "logy", "status", "plot", "table"):
            getattr(self, name).add_class(f"nbm-{name}")

        self.study.observe(self._on_study, names="value")
        self.metric.observe(self._on_metric, names="value")
        for control in (self.runs, self.x, self.window, self.logy):
            control.observe(self._on_change, names="value")
        self.smoothing.observe(self._on_smoothing, names="value")

        if not self.studies:
            self.status.value = (f"<b>No run folders with curves under <code>{self.runs_dir}</code>.</b> "
                                 "Run the study notebooks (or <code>python -m nbmodule.suite</code>) first.")
            for c in (self.study, self.metric, self.x, self.runs, self.smoothing, self.window, self.logy):
                c.disabled = True
            return
        if study is not None and study not in self.studies:
            raise ValueError(f"no study {study!r} under {self.runs_dir}; found: {', '.join(self.studies)}")
        self._busy = True
        self.study.value = study or next(iter(self.studies))
        self._busy = False
        self._load_study()
        self.redraw()

    # -- notebook display ------------------------------------------------------------------------
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- state ----------------------------------------------------------------------------------
    @property
    def curve_name(self) -> str | None:
        return self.metric.value[0] if self.metric.value else None

    @property
    def metric_name(self) -> str | None:
        return self.metric.value[1] if self.metric.value else None

    def _load_study(self) -> None:
        """Read the selected study's curves and fill the metric choices (curve file × numeric column)."""
        self._curves = read_curves(self.studies[self.study.value])
        several = len(self._curves) > 1
        options = [(f"{name}: {m}" if several else m, (name, m))
                   for name, df in self._curves.items() if x_columns(df) for m in metric_columns(df)]
        self._busy = True
        try:
            self.metric.options = options
            self.metric.value = options[0][1] if options else None
        finally:
            self._busy = False
        self._load_curve()

    def _load_curve(self, keep_runs: tuple[str, ...] = ()) -> None:
        """Fill the run and x-axis choices from the curve file of the selected metric."""
        df = self._curves.get(self.curve_name) if self.curve_name else None
        runs = sorted(df["run"].unique()) if df is not None else []
        xs = x_columns(df) if df is not None else []
        self._busy = True
        try:
            previous_x = self.x.value
            self.runs.options = runs
            kept = tuple(r for r in keep_runs if r in runs)
            self.runs.value = kept or tuple(runs)
            self.x.options = xs
            self.x.value = previous_x if previous_x in xs else (xs[0] if xs else None)
        finally:
            self._busy = False

    # -- observers ------------------------------------------------------------------------------
    def _on_study(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        self._load_study()
        self.redraw()

    def _on_metric(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        old = change.get("old")
        if not old or not change["new"] or old[0] != change["new"][0]:  # another curve file: other runs/x
            self._load_curve(keep_runs=tuple(self.runs.value))
        self.redraw()

    def _on_smoothing(self, change: dict[str, Any]) -> None:
        self.window.disabled = change["new"] == "none"
        self._on_change(change)

    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._busy:
            self.redraw()

    # -- drawing --------------------------------------------------------------------------------
    def redraw(self) -> None:
        """Draw the selected metric for the selected runs and the table of final values below it."""
        df = self._curves.get(self.curve_name) if self.curve_name else None
        if df is None or not self.x.value:
            self.status.value = (f"<i>{self.study.value}: no curve with an x column "
                                 f"({', '.join(('step', 'epoch', 'iteration', 'stage', 'shots'))}) "
                                 "and a numeric metric.</i>")
            self.plot.value = b""
            self.table.value = ""
            return
        runs = list(self.runs.value)
        title = f"{self.study.value} · {self.curve_name}"
        self.figure = plot_curves(df, self.metric_name, self.x.value, runs, smoothing=self.smoothing.value,
                                  window=self.window.value, logy=self.logy.value, title=title)
        self.plot.value = figure_png(self.figure, dpi=self.dpi)
        self.final = final_values(df[df["run"].isin(runs)], self.x.value, self.metric_name)
        seeds = int(df[df["run"].isin(runs)]["seed"].nunique()) if runs else 0
        band = "mean ± 1 std over seeds" if seeds > 1 else "one seed"
        smoothing = "" if self.smoothing.value == "none" else f", {self.smoothing.value} window {self.window.value}"
        self.status.value = (f"<small>{len(runs)} run(s) of <code>{self.studies[self.study.value]}/curves/"
                             f"{self.curve_name}.csv</code>; {band}{smoothing}</small>")
        self.table.value = (f"<b>{self.metric_name}</b> at the last {self.x.value} of each run "
                            f"(mean over seeds, 95% CI)" + table_html(self.final))
        self.draws += 1


def explore(runs_dir: str | Path, study: str | None = None) -> Explorer:
    """Build the explorer over every run folder under ``runs_dir``; display it by making it a cell's
    last expression (or ``display(explorer)``). In Colab, enables its custom widget manager first."""
    if in_colab():
        from google.colab import output  # type: ignore[import-not-found]

        output.enable_custom_widget_manager()
    return Explorer(runs_dir, study=study)
