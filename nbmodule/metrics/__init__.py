"""Metrics: pure functions and accumulators on tensors, each tested on hand-computed cases, grouped by what
they measure. Every public name is importable from ``nbmodule.metrics`` itself.

* :mod:`.ranges`: :class:`MetricRangeError`, :func:`check_range` (a value outside its range is a bug);
* :mod:`.intervals`: 95% confidence intervals of a mean (Student's t over seeds);
* :mod:`.dense`: per-pixel metrics (confusion matrix and mIoU, depth errors, normal angles);
* :mod:`.boundary`: edges (the BSDS benchmark's ODS / OIS / AP, a fast proxy for training curves);
* :mod:`.detection`: recognition metrics of the replay study (COCO box mAP, top-1);
* :mod:`.multitask`: multi-task summaries against single-task models (Δm, Δp).
"""
from __future__ import annotations

from .boundary import BoundaryMeter, EdgeProxyMeter, boundary_scores, bsds_ap, thin_boundaries
from .dense import DENSE_METRICS, ConfusionMatrix, DepthMeter, NormalsMeter
from .detection import coco_map, top1_accuracy
from .intervals import ci95_factor, mean_confidence_interval
from .multitask import DELTA_M_METRICS, DELTA_P_METRICS, UndefinedRelativeChange, delta_m, delta_p
from .ranges import MetricRangeError, check_range

__all__ = ["MetricRangeError", "check_range", "ConfusionMatrix", "ci95_factor", "mean_confidence_interval",
           "top1_accuracy", "coco_map", "DENSE_METRICS", "DELTA_M_METRICS", "DELTA_P_METRICS", "DepthMeter",
           "NormalsMeter", "EdgeProxyMeter", "BoundaryMeter", "boundary_scores", "bsds_ap", "thin_boundaries",
           "delta_m", "delta_p", "UndefinedRelativeChange"]
