"""Plots and the interactive explorer; everything here reads run folders, never live training objects.

- :mod:`.rundata`: find run folders, read long-format curves, smooth and aggregate over seeds.
- :mod:`.plots`: generic curve plots (mean over seeds with a band), ``FigureSpec``, PNG and HTML helpers.
- one module per study (:mod:`.replay`, :mod:`.mtml`, :mod:`.maml_sampling`, :mod:`.fewshot`, ...): its
  figures (``FIGURES``) and tables; :mod:`.benchmarks`: the speed ratios of ``benchmarks/results.json``.
- :mod:`.studies`: notebook 06's orchestration (``study_figures``, ``show_study``) over the registry.
- :mod:`.explorer`: ``explore(runs_dir)``, the ipywidgets explorer.
- :mod:`.report`: ``render_results``, the README's results tables from committed run folders (beside the papers,
  :mod:`.paper`); ``export_html``, the executed results notebook as a standalone HTML file.
"""
from .benchmarks import benchmark_ratios, plot_benchmarks
from .explorer import Explorer, explore
from .plots import FigureSpec, figure_png, plot_curves, table_html
from .report import ResultsConfig, export_html, render_results
from .rundata import aggregate_seeds, final_values, find_studies, overview, read_curves, smooth
from .studies import StudyReport, find_study_dir, show_study, study_figures

__all__ = [
    "Explorer", "explore", "ResultsConfig", "export_html", "render_results", "FigureSpec", "figure_png",
    "plot_curves", "table_html",
    "aggregate_seeds", "final_values", "find_studies", "overview", "read_curves", "smooth",
    "benchmark_ratios", "plot_benchmarks", "StudyReport", "find_study_dir", "show_study", "study_figures",
]
