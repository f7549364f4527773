"""The papers' protocols and published numbers, each beside its source, and how a run differs from them.

The report (:mod:`nbmodule.viz.report`) compares every committed result with these: a protocol difference is
computed from the run's own ``config.json`` against :data:`PROTOCOLS` (never typed by hand), and a verdict
from the numbers (:func:`verdict`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Field", "PROTOCOLS", "protocol_differences", "verdict", "fmt", "pm", "thousands"]


@dataclass(frozen=True)
class Field:
    """One protocol setting of a paper: its value, what a difference in it is (``budget``, ``protocol``,
    ``data``), and how to name it in a sentence."""
    value: Any
    kind: str
    label: str


#: Per result family, the paper's (or the seed repository's) protocol, field by field of our config.
PROTOCOLS: dict[str, dict[str, Field]] = {
    # Finn et al. 2017, Sec. 5.1 and cbfinn/maml (main.py, Omniglot 5-way 1-shot): Table 1, 98.7 +- 0.4 %
    "fewshot": {
        "omniglot_split": Field("maml", "protocol", "Omniglot split"),
        "meta_iterations": Field(60000, "budget", "meta-iterations"),
        "meta_batch_size": Field(32, "budget", "meta-batch"),
        "downsample": Field("stride", "protocol", "Conv4 downsampling"),
        "inner_steps": Field(1, "protocol", "inner steps (training)"),
        "inner_steps_test": Field(3, "protocol", "inner steps (test)"),
        "inner_lr": Field(0.4, "protocol", "inner step size"),
        "first_order": Field(False, "protocol", "first order"),
        "meta_lr": Field(0.001, "protocol", "meta step size"),
    },
    # Finn et al. 2017, Sec. 5.3 and App. A.2: 2D navigation, Table 4
    "maml_rl/nav2d": {
        "iterations": Field(500, "budget", "meta-iterations"),
        "meta_batch_size": Field(20, "budget", "tasks per meta-batch"),
        "trajectories": Field(20, "budget", "trajectories per task"),
        "horizon": Field(100, "protocol", "horizon"),
        "inner_lr": Field(0.1, "protocol", "inner step size"),
        "max_kl": Field(0.01, "protocol", "TRPO max KL"),
        # App. A.2: "the model with the best average return during training was used for evaluation"
        "evaluated_policy": Field("best training return", "protocol", "evaluated policy"),
    },
    # Finn et al. 2017, Sec. 5.3: HalfCheetah goal velocity and direction, meta-batch 40, horizon 200
    "maml_rl/cheetah": {
        "iterations": Field(500, "budget", "meta-iterations"),
        "meta_batch_size": Field(40, "budget", "tasks per meta-batch"),
        "trajectories": Field(20, "budget", "trajectories per task"),
        "horizon": Field(200, "protocol", "horizon"),
        "inner_lr": Field(0.1, "protocol", "inner step size"),
        "max_kl": Field(0.01, "protocol", "TRPO max KL"),
        # App. A.2: "the model with the best average return during training was used for evaluation"
        "evaluated_policy": Field("best training return", "protocol", "evaluated policy"),
    },
    # the seed repository (seblee97/maml, base_config.py as gpu.yaml records it): sinusoid regression
    "maml_sampling": {
        "meta_iterations": Field(50000, "budget", "meta-iterations"),
        "meta_lr": Field(0.01, "protocol", "meta step size"),
        "meta_batch_size": Field(25, "budget", "meta-batch"),
        "k_shot": Field(10, "protocol", "K"),
        "inner_lr": Field(0.01, "protocol", "inner step size"),
    },
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def protocol_differences(config: Mapping[str, Any], family: str, extra: Mapping[str, Any] | None = None
                         ) -> list[tuple[str, str]]:
    """``[(kind, sentence)]``: every field of ``PROTOCOLS[family]`` where ``config`` (a run's ``config.json``
    ``"config"`` block, plus ``extra`` facts such as ``{"seeds": 3}``) differs from the paper, e.g.
    ``("budget", "meta-iterations 600 (paper 60 000)")``. Fields the run does not record are skipped."""
    values = {**config, **(extra or {})}
    out = []
    for key, field in PROTOCOLS[family].items():
        if key in values and not _same(values[key], field.value):
            out.append((field.kind, f"{field.label} {_show(values[key])} (paper {_show(field.value)})"))
    return out


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return thousands(v)


def thousands(v: Any) -> str:
    """An integer with a thin space between thousands (``50 000``); anything else as ``str``."""
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}".replace(",", " ")
    return "?" if v is None else str(v)


def fmt(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, ``-`` when it is missing (None or NaN)."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def pm(mean: float, ci: float, digits: int) -> str:
    """``mean ± ci`` (``mean`` alone when there is no interval; ``-`` when there is no mean)."""
    if mean is None or not math.isfinite(mean):
        return "-"
    if ci is None or not math.isfinite(ci):
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(ci, digits)}"


def verdict(ours: float, ours_ci: float, paper: float, paper_ci: float | None = None, *,
            higher_is_better: bool = True, digits: int = 2) -> str:
    """Whether a mean reproduces a published value: yes when ours lies within the paper's interval, or the
    paper's value within our 95% interval; otherwise by how much it misses and in which direction."""
    if ours is None or not math.isfinite(ours):
        return "not measured yet"
    gap = ours - paper
    if paper_ci is not None and math.isfinite(paper_ci) and abs(gap) <= paper_ci:
        return "**reproduced** (within the paper's interval)"
    if ours_ci is not None and math.isfinite(ours_ci) and abs(gap) <= ours_ci:
        return "**reproduced** (the paper's value is within our 95% CI)"
    better = gap > 0 if higher_is_better else gap < 0
    return f"**not reproduced**: {fmt(abs(gap), digits)} {'better' if better else 'worse'} than the paper"
