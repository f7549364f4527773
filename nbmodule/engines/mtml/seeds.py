"""Several seeds of the MTML study: each seed is an ordinary run folder (``seed=S``); the reduction over them is
this module's :func:`summarize_seeds`, the same whether the seeds ran one after another or side by side."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from ...metrics import ci95_factor, mean_confidence_interval
from ...runs import read_metrics

__all__ = ["summarize_seeds"]

#: config fields that may differ between the seeds of one summary (everything else must match)
SEED_FIELDS = ("seed",)


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an mtml run folder (no config.json)")
    blob = json.loads(path.read_text())
    return dict(blob.get("config", blob))


def summarize_seeds(folders: Sequence[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Mean and 95% interval over the seeds' run folders of every numeric key of their ``metrics.json``:
    ``{key}`` the mean, ``{key}_ci95`` the half-width (Student's t, n - 1 degrees of freedom), ``{key}_n`` the
    number of seeds with a value (a null, e.g. a target never reached, is left out and counted here), plus
    ``seeds``. Refuses folders whose configs differ in anything but the seed (naming the fields), or repeat a
    seed. ``out``: also written there as JSON."""
    paths = [Path(f) for f in folders]
    if len(paths) < 2:
        raise ValueError(f"summarize_seeds needs at least two run folders, got {len(paths)}")
    configs = [_config(p) for p in paths]
    seeds = [c.get("seed") for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the run folders repeat a seed: {seeds}")
    for p, c in zip(paths[1:], configs[1:]):
        differ = sorted(k for k in set(c) | set(configs[0]) if k not in SEED_FIELDS and c.get(k) != configs[0].get(k))
        if differ:
            raise ValueError(f"{p} and {paths[0]} differ in {differ}: only the seed may differ between seeds of "
                             "one summary")
    runs = [read_metrics(p) for p in paths]
    keys = sorted({k for m in runs for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   or v is None})
    out_metrics: dict[str, Any] = {"seeds": seeds, "n_seeds": len(paths), "ci95_factor": ci95_factor(len(paths))}
    for k in keys:
        vals = [m.get(k) for m in runs]
        nums = [float(v) for v in vals if isinstance(v, (int, float)) and math.isfinite(float(v))]
        if not nums:
            out_metrics[k], out_metrics[f"{k}_ci95"] = None, None
        else:
            mean, half = mean_confidence_interval(nums)
            out_metrics[k], out_metrics[f"{k}_ci95"] = mean, (None if math.isnan(half) else half)
        out_metrics[f"{k}_n"] = len(nums)
    if out is not None:
        Path(out).write_text(json.dumps(out_metrics, indent=2, sort_keys=True) + "\n")
    return out_metrics
