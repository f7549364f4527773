"""Plots and the interactive explorer; everything here reads run folders, never live training objects.

- :mod:`.rundata`: find run folders, read long-format curves, smooth and aggregate over seeds.
- :mod:`.plots`: generic curve plots (mean over seeds with a band), PNG and HTML helpers.
- :mod:`.studies`: each study's figures (replay, MTML, MAML sampling, few-shot, benchmarks).
- :mod:`.explorer`: ``explore(runs_dir)``, the ipywidgets explorer.
- :mod:`.report`: ``export_html``, the executed results notebook as a standalone HTML file.
"""
from .explorer import Explorer, explore
from .plots import figure_png, plot_curves, table_html
from .report import ResultsConfig, export_html
from .rundata import aggregate_seeds, final_values, find_studies, overview, read_curves, smooth
from .studies import (STUDIES, StudyReport, benchmark_ratios, fewshot_table, mtml_table, plot_benchmarks,
                      plot_fewshot, plot_maml_curves, plot_maml_final, plot_maml_parameter_space,
                      plot_mtml_heldout, plot_mtml_table, plot_replay_forgetting, plot_replay_stages,
                      read_stage_table, show_study, study_figures)

__all__ = [
    "Explorer", "explore", "ResultsConfig", "export_html", "figure_png", "plot_curves", "table_html",
    "aggregate_seeds", "final_values", "find_studies", "overview", "read_curves", "smooth",
    "STUDIES", "StudyReport", "benchmark_ratios", "fewshot_table", "mtml_table", "plot_benchmarks",
    "plot_fewshot", "plot_maml_curves", "plot_maml_final", "plot_maml_parameter_space", "plot_mtml_heldout",
    "plot_mtml_table", "plot_replay_forgetting", "plot_replay_stages", "read_stage_table", "show_study",
    "study_figures",
]
