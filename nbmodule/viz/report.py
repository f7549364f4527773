"""The results report: every table of the README's Results section, rendered from committed run folders.

    python -m nbmodule report results/ --markdown                 # print the Markdown
    python -m nbmodule report results/ --readme README.md --check # exit 1 (with a diff) when they disagree
    python -m nbmodule report results/ --readme README.md --write # replace the README's generated block

``results/<folder>/`` holds one result: a run folder (``config.json``, ``metrics.json``, ``curves/`` ...), or
one run folder per seed (``seed0/``, ``seed1/`` ...; means and Student-t 95% intervals are taken over them),
and a ``COMMAND.md`` (:data:`COMMAND_FIELDS`). Each folder is rendered by its notebook's section renderer
(:data:`RENDERERS`, by the folder's ``NN_`` prefix), so a folder added later appears without code; one that
is missing or still running renders as "not run yet" or "partial: N of M iterations". Each section ends with
one comparison table: paper value, ours, the protocol difference (computed from the run's ``config.json``
against :data:`nbmodule.viz.paper.PROTOCOLS`) and the verdict.

Also here: :func:`export_html`, the executed results notebook as a standalone HTML report.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import Config, ConfigError
from . import paper
from .paper import fmt, pm, protocol_differences, thousands, verdict
from .rundata import Progress, read_curves, read_metrics_file, read_run_config, run_progress, seed_folders, seed_metrics

__all__ = ["ResultsConfig", "export_html", "COMMAND_FIELDS", "EXPECTED", "RENDERERS", "read_command",
           "render_folder", "render_results", "readme_block", "replace_readme_block", "BEGIN", "END", "main"]


class ResultsConfig(Config):
    """Notebook 06's settings (its ``parameters`` cell uses the same names)."""

    runs: str = ""          # run root to read; "" = the root this notebook writes into (the suite's --out)
    benchmarks: str = ""    # path of benchmarks/results.json; "" = the repository's benchmarks/results.json
    results: str = ""       # committed results beside the papers; "" = the repository's results/
    explorer: bool = True   # show the interactive explorer at the end


#: The README's generated block lies between these two lines (both kept).
BEGIN = "<!-- BEGIN results report: python -m nbmodule report results/ --readme README.md --write -->"
END = "<!-- END results report -->"
#: Lines every ``COMMAND.md`` holds besides its command (a fenced ``bash`` block): ``- <field>: <value>``.
COMMAND_FIELDS = ("commit", "machine", "threads", "device", "wall time", "data")
#: Optional ``COMMAND.md`` fields: ``finding``, what the numbers say beyond the verdicts (why one misses the paper
#: when no protocol difference explains it), rendered under the result's section.
OPTIONAL_FIELDS = ("finding",)
#: The results the report expects, in reading order; others found under ``results/`` follow their notebook.
EXPECTED = ("02_sequential_replay", "03_mtml", "04_maml_sampling", "04_maml_sampling_3d", "05_maml_fewshot",
            "05_maml_fewshot_omniglot", "07_maml_rl", "07_maml_rl_cheetah_vel", "07_maml_rl_cheetah_dir")
TITLES = {
    "02": "Sequential learning with replay", "03": "Multi-task meta-learning (MTML)",
    "04": "Task-weighted MAML", "05": "MAML few-shot classification", "07": "MAML-TRPO reinforcement learning",
}


# --- COMMAND.md ------------------------------------------------------------------------------------------
def read_command(folder: str | Path) -> dict[str, str]:
    """A result's ``COMMAND.md``: ``{"command": ..., "commit": ..., "machine": ..., ...}`` (the fields found;
    ``{}`` without the file). The command is the first line of the first fenced block."""
    path = Path(folder) / "COMMAND.md"
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    out: dict[str, str] = {}
    block = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    if block and block.group(1).strip():
        out["command"] = block.group(1).strip()
    field = None
    for line in text.splitlines():
        m = re.match(r"^- (" + "|".join(COMMAND_FIELDS + OPTIONAL_FIELDS) + r"): (.+)$", line)
        if m and m.group(1) not in out:
            field = m.group(1)
            out[field] = m.group(2).strip()
        elif field and line.startswith("  ") and line.strip():  # a field continued on the next lines
            out[field] += " " + line.strip()
        else:
            field = None
    return out


# --- Markdown helpers -------------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _comparison(rows: Sequence[Sequence[str]]) -> str:
    return _table(("quantity", "paper", "ours", "protocol difference", "verdict"), rows)


def _differences(diffs: list[tuple[str, str]], extra: Sequence[str] = ()) -> str:
    parts = [f"{kind}: {text}" for kind, text in diffs] + list(extra)
    return "; ".join(parts) if parts else "none"


def _why(judged: str, diffs: list[tuple[str, str]]) -> str:
    """A verdict, with the kinds of protocol difference that may explain a miss (budget, data, protocol)."""
    if "not reproduced" not in judged or not diffs:
        return judged
    kinds = list(dict.fromkeys(kind for kind, _ in diffs))
    return f"{judged} (the run differs in {' and '.join(kinds)})"


def _m(metrics: dict[str, tuple[float, float, int]], key: str, scale: float = 1.0) -> tuple[float, float]:
    mean, ci, _ = metrics.get(key, (math.nan, math.nan, 0))
    return mean * scale, ci * scale


def _header(folder: Path, progress: Progress, unit: str = "iterations", subtitle: str = "") -> list[str]:
    """The lines every section starts with: its heading, how far it got, its data and its command."""
    key = folder.name[:2]
    title = TITLES.get(key, folder.name) + (f", {subtitle}" if subtitle else "")
    where = f"{folder.parent.name}/{folder.name}"
    lines = [f"### {key} · {title} (`{where}/`)", ""]
    cmd = read_command(folder)
    facts = [f"status: {progress.describe(unit)}"]
    runs = seed_folders(folder)
    if len(runs) > 1 or (runs and runs[0] != folder):
        facts.append(f"{len(runs)} seed folder{'s' if len(runs) != 1 else ''}")
    if cmd.get("data"):
        facts.append(f"data: {cmd['data']}")
    if cmd.get("wall time"):
        facts.append(f"wall time: {cmd['wall time']}")
    lines.append("; ".join(facts) + "." + (f" Command, commit, machine: `{where}/COMMAND.md`." if cmd else
                                           " No `COMMAND.md` yet."))
    lines.append("")
    return lines


def _config(folder: Path) -> dict[str, Any]:
    runs = seed_folders(folder)
    cfg = read_run_config(runs[0]).get("config", {}) if runs else {}
    return cfg if isinstance(cfg, dict) else {}


def _limit(*values: tuple[float, float], limit: float = math.nan) -> str:
    """Whether every (mean, 95% half-width) stays at or under ``limit``: met when each whole interval does, not
    met when some whole interval lies above it, undecided otherwise (one run: judged on its value)."""
    values = tuple(v for v in values if math.isfinite(v[0]))
    if not values:
        return "not measured yet"
    worst = max(values, key=lambda v: v[0])
    half = lambda v: v[1] if math.isfinite(v[1]) else 0.0  # noqa: E731
    if all(v[0] + half(v) <= limit for v in values):
        return f"**met** (worst task {fmt(worst[0], 1)}%)"
    if any(v[0] - half(v) > limit for v in values):
        over = max(values, key=lambda v: v[0] - half(v))
        return f"**not met**: {fmt(over[0], 1)}%, {fmt(over[0] - limit, 1)} points over"
    return f"**undecided**: worst mean {fmt(worst[0], 1)}%, its 95% interval spans the limit"


def _seeded_section(folder: Path) -> tuple[dict, list[str], dict, int]:
    """A study trained in steps over seed folders: its config, header lines, seed metrics and the most seeds
    behind any metric (0 without metrics)."""
    cfg = _config(folder)
    lines = _header(folder, run_progress(folder), "steps", "synthetic data" if cfg.get("synthetic") else "")
    m = seed_metrics(folder)
    return cfg, lines, m, max((v[2] for v in m.values()), default=0)


# --- 02 ------------------------------------------------------------------------------------------------------
def render_replay(folder: Path) -> str:
    from ..engines.replay.protocol import FORGETTING_LIMIT_PCT

    cfg, lines, m, n = _seeded_section(folder)
    if not m:
        return "\n".join(lines).rstrip() + "\n"
    lines.append(f"After the last stage (segmentation -> detection -> classification), mean ± 95% CI over {n} "
                 f"seed{'s' if n != 1 else ''} (Student's t); forgetting = relative drop of a task's metric from the "
                 "end of its own stage to the end of training (negative: it improved).")
    lines.append("")
    rows = []
    for run, prefix in (("replay", ""), ("no replay", "noreplay_"), ("LwF", "lwf_"), ("each task alone", "alone_")):
        if f"{prefix}seg_miou" not in m:
            continue
        row = [run] + [pm(*_m(m, f"{prefix}{k}"), 3) for k in ("seg_miou", "det_map", "cls_top1")]
        row += ["-", "-"] if prefix == "alone_" else [pm(*_m(m, f"{prefix}{t}_drop_pct"), 1) for t in ("seg", "det")]
        rows.append(row)
    lines.append(_table(("run", "seg mIoU", "det COCO mAP", "cls top-1", "seg forgetting (%)", "det forgetting (%)"),
                        rows))
    lines.append("")
    seg, det = _m(m, "seg_drop_pct"), _m(m, "det_drop_pct")
    judged = _limit(seg, det, limit=FORGETTING_LIMIT_PCT)
    data = "synthetic shapes in the VOC / COCO / Imagenette formats" if cfg.get("synthetic") else "the mini sets"
    diff = _differences([], [f"data: {data} at {cfg.get('image_size', '?')} px (the seed: the real mini VOC, "
                                     "COCO and Imagenette)" if cfg.get("synthetic") else f"data: {data}",
                             f"budget: {cfg.get('steps_seg', '?')} / {cfg.get('steps_det', '?')} / "
                             f"{cfg.get('steps_cls', '?')} steps per stage"])
    red = _m(m, "forgetting_reduction_pct")
    lines.append(_comparison([
        ["forgetting of each earlier task with replay", f"at most {fmt(FORGETTING_LIMIT_PCT, 0)}% (the seed's "
         "requirement; it publishes no number)", f"seg {pm(*seg, 1)}%, det {pm(*det, 1)}%", diff, judged],
        ["mean forgetting removed by replay (points)", "not published", pm(*red, 1), diff, "no published anchor"],
    ]))
    return "\n".join(lines) + "\n"


def _claim(ours: tuple[float, float], other: tuple[float, float], lower: bool, name: str, other_name: str) -> str:
    """Whether ``ours`` beats ``other`` (means with 95% half-widths): only when their intervals are disjoint."""
    if not (math.isfinite(ours[0]) and math.isfinite(other[0])):
        return "not measured yet"
    gap = (other[0] - ours[0]) if lower else (ours[0] - other[0])
    if all(math.isfinite(c) for c in (ours[1], other[1])) and abs(ours[0] - other[0]) <= ours[1] + other[1]:
        return f"**not shown**: {name} and {other_name} differ by {fmt(abs(gap), 2)}, their 95% intervals overlap"
    if not all(math.isfinite(c) for c in (ours[1], other[1])):
        return f"{name} {'better' if gap > 0 else 'worse'} than {other_name} by {fmt(abs(gap), 2)} " \
               "(one run: no interval)"
    return f"**{'supported' if gap > 0 else 'contradicted'}**: {name} {'better' if gap > 0 else 'worse'} than " \
           f"{other_name} by {fmt(abs(gap), 2)}, intervals disjoint"


# --- 03 ------------------------------------------------------------------------------------------------------
def render_mtml(folder: Path) -> str:
    from ..metrics import DELTA_M_METRICS, DENSE_METRICS

    cfg, lines, m, n = _seeded_section(folder)
    if not m:
        return "\n".join(lines).rstrip() + "\n"
    held = cfg.get("held_out", "normals")
    metric = DELTA_M_METRICS[held]  # the metric a task is judged by on its own (engines.mtml.evaluate.primary)
    lower = DENSE_METRICS[held][metric]
    lines.append(f"The held-out task ({held}, `{metric}`, {'lower' if lower else 'higher'} is better) learnt from "
                 f"each start with the same budget, on the test split; Δm (%) over the training tasks against the "
                 f"single-task models; mean ± 95% CI over {n} seed{'s' if n != 1 else ''} (Student's t).")
    lines.append("")
    rows = []
    for start, label in (("single", "from scratch"), ("mtl", "from the MTL model"), ("mtml", "from the MTML model"),
                         ("mtml_compute", "from MTML stopped at MTL's compute")):
        if f"{start}_{held}_{metric}" not in m:
            continue
        rows.append([label, pm(*_m(m, f"{start}_{held}_{metric}"), 2), pm(*_m(m, f"{start}_steps_to_target"), 1),
                     pm(*_m(m, f"{start}_delta_m"), 1) if start != "single" else "0 (the baseline)",
                     pm(*_m(m, f"{start}_adapted_delta_m"), 1) if start != "single" else "-"])
    lines.append(_table((f"start", f"held-out {held} `{metric}`", "steps to the scratch run's final value",
                         "Δm as trained (%)", "Δm after adaptation (%)"), rows))
    lines.append("")
    mtml, mtl = _m(m, f"mtml_{held}_{metric}"), _m(m, f"mtl_{held}_{metric}")
    judged = _claim(mtml, mtl, lower, "MTML", "MTL")
    diff = _differences([], ["data: rendered synthetic scenes in the NYUD_MT layout (the seed: NYU-v2, Taskonomy)"
                             if cfg.get("synthetic") else "data: real", f"model: {cfg.get('backbone', '?')}"])
    comp = [["the held-out task learns better from MTML than from MTL (the seed's claim)",
             "claimed, no number for this setting", f"MTML {pm(*mtml, 2)}, MTL {pm(*mtl, 2)}", diff, judged]]
    matched = _m(m, f"mtml_compute_{held}_{metric}")
    if math.isfinite(matched[0]):
        comp.append(["... with MTML stopped where its image passes equal MTL's", "claimed, no number for this "
                     "setting", f"MTML {pm(*matched, 2)}, MTL {pm(*mtl, 2)}", diff,
                     _claim(matched, mtl, lower, "MTML at equal compute", "MTL")])
    lines.append(_comparison(comp))
    return "\n".join(lines) + "\n"


# --- 04 ------------------------------------------------------------------------------------------------------
def render_maml_sampling(folder: Path) -> str:
    from ..meta.sampling import REGIMES

    progress = run_progress(folder)
    cfg = _config(folder)
    seeds = cfg.get("seeds") or [cfg.get("seed", 0)]
    family = cfg.get("family", "3d" if folder.name.endswith("_3d") else "2d")
    lines = _header(folder, progress, subtitle=f"{family.upper()} sinusoids")
    m = read_metrics_file(folder) if progress.status == "complete" else {}
    if not m:
        return "\n".join(lines).rstrip() + "\n"
    k = int(cfg.get("eval_steps", 10))
    lines.append(f"{family.upper()} sinusoids, {len(cfg.get('regimes', REGIMES))} sampling regimes x {len(seeds)} "
                 f"seeds, {thousands(cfg.get('meta_iterations'))} meta-iterations each. Test MSE after 1 and {k} "
                 "fine-tuning steps on the fixed test grid and on held-out tasks drawn uniformly; mean ± 95% CI over "
                 "seeds (Student's t). Lower is better.")
    lines.append("")
    def num(key: str) -> float:  # a metric the study could not compute is null in metrics.json
        v = m.get(key)
        return math.nan if v is None else float(v)

    cols = ("mse_1step", f"mse_{k}step", "heldout_mse_1step", f"heldout_mse_{k}step")
    regimes = [r for r in REGIMES if f"{r}_mse_1step" in m]
    rows = [[f"`{r}`"] + [pm(num(f"{r}_{c}"), num(f"{r}_{c}_ci95"), 3) for c in cols] for r in regimes]
    lines.append(_table(("regime", "grid MSE, 1 step", f"grid MSE, {k} steps", "held-out MSE, 1 step",
                         f"held-out MSE, {k} steps"), rows))
    lines.append("")
    diverged = _diverged_tasks(folder, k)
    if diverged:
        lines.append(f"Fine-tuning diverged (MSE not finite after {k} steps) on {diverged}: the mean over tasks is "
                     "then undefined, and a regime's interval needs two seeds with finite means (the reasons are in "
                     "`metric_notes.json`; each task's MSE in `parameter_space.csv`). '-' marks such a cell.")
        lines.append("")
    key = f"heldout_mse_{k}step"
    if not all(math.isfinite(num(f"{r}_{key}")) and math.isfinite(num(f"{r}_{key}_ci95")) for r in regimes):
        key = "heldout_mse_1step"  # the verdict needs a value for every regime
    steps_judged = key.split("_")[-1].removesuffix("step").removesuffix("s")
    u, uc = num(f"uniform_{key}"), num(f"uniform_{key}_ci95")
    better, within, worse, lower_mean = [], [], [], []
    for r in regimes:
        if r == "uniform":
            continue
        v, c = num(f"{r}_{key}"), num(f"{r}_{key}_ci95")
        (better if v + c < u - uc else worse if v - c > u + uc else within).append(f"`{r}`")
        if v < u:
            lower_mean.append(f"`{r}`")
    judged = ("**supported**" if better else "**not supported**") + \
        f": intervals below uniform's: {', '.join(better) or 'none'}; overlapping: {', '.join(within) or 'none'}; " \
        f"above: {', '.join(worse) or 'none'}; lower mean than uniform: {', '.join(lower_mean) or 'none'}"
    diff = _differences(protocol_differences(cfg, "maml_sampling"))
    after = f"after {steps_judged} step{'s' if steps_judged != '1' else ''}" + (
        f"; {k} steps diverged on some tasks" if key == "heldout_mse_1step" and k != 1 else "")
    lines.append(_comparison([[f"a biased regime beats `uniform` on the test tasks (the seed's claim; held-out MSE "
                               f"{after})", "claimed from one seed's curves, no number",
                               f"`uniform` {pm(u, uc, 3)}", diff, judged]]))
    return "\n".join(lines) + "\n"


def _diverged_tasks(folder: Path, k: int) -> str:
    """Which (regime, seed) runs had test-grid tasks whose ``k``-step MSE is not finite, and how many."""
    path = folder / "parameter_space.csv"
    col = f"mse_{k}step"
    if not path.is_file():
        return ""
    import pandas as pd

    df = pd.read_csv(path)
    if col not in df.columns:
        return ""
    bad = df[~pd.to_numeric(df[col], errors="coerce").apply(math.isfinite)]
    if bad.empty:
        return ""
    per = df.groupby(["run", "seed"]).size()
    parts = [f"`{run}` seed {seed}: {n} of {per[(run, seed)]} grid tasks"
             for (run, seed), n in bad.groupby(["run", "seed"]).size().items()]
    return "; ".join(parts)


# --- 05 ------------------------------------------------------------------------------------------------------
def render_fewshot(folder: Path) -> str:
    from .fewshot import LAKE, PAPER

    progress = run_progress(folder)
    cfg = _config(folder)
    split = cfg.get("omniglot_split", "maml" if folder.name.endswith("_omniglot") else "background")
    lines = _header(folder, progress, subtitle="MAML's Omniglot protocol" if split == "maml" else
                    "Omniglot, Lake et al.'s split")
    if not cfg:
        return "\n".join(lines).rstrip() + "\n"
    setting = f"{cfg.get('dataset', 'omniglot')}_{cfg.get('n_way', 5)}way_{cfg.get('k_shot', 1)}shot"
    m = seed_metrics(folder)
    acc = _m(m, f"{setting}_acc")
    n = m.get(f"{setting}_acc", (0, 0, 0))[2] or len(seed_folders(folder))
    split_text = {"background": "Lake et al.'s background alphabets", "maml": "MAML's split (1200 training "
                  "characters with rotations)"}.get(split, split)
    lines.append(f"{cfg.get('n_way')}-way {cfg.get('k_shot')}-shot, meta-trained on {split_text}, meta-batch "
                 f"{cfg.get('meta_batch_size')}, {thousands(cfg.get('meta_iterations'))} meta-iterations, "
                 f"{'first' if cfg.get('first_order') else 'second'} order, Conv4 ({cfg.get('downsample')}). "
                 f"Accuracy on {cfg.get('eval_episodes')} test episodes, mean ± 95% CI over {n} seed"
                 f"{'s' if n != 1 else ''} (Student's t over the seeds' means; one seed: the normal interval over "
                 "episodes, as the paper).")
    lines.append("")
    if n == 1:  # one run: the interval over episodes, as the paper reports it
        acc = (acc[0], _m(m, f"{setting}_ci95")[0] if f"{setting}_ci95" in m else _m(m, f"{setting}_acc_ci95")[0])
    rows = [["test accuracy (%)", pm(*acc, 1)]]
    lake = _m(m, "omniglot_lake20_error")
    if n == 1:  # one run: its interval over Lake et al.'s 20 runs
        lake = (lake[0], _m(m, "omniglot_lake20_error_ci95")[0])
    if math.isfinite(lake[0]):
        rows.append(["error on Lake et al.'s 20 one-shot runs (%, 20-way; each test item on its own)", pm(*lake, 1)])
    lake_t = _m(m, "omniglot_lake20_error_transductive")
    if n == 1:
        lake_t = (lake_t[0], _m(m, "omniglot_lake20_error_transductive_ci95")[0])
    if math.isfinite(lake_t[0]):  # not comparable with people's error: the items share batch statistics
        rows.append(["... the run's 20 test items as one batch (transductive batch norm; not comparable with "
                     "Lake et al.'s)", pm(*lake_t, 1)])
    if progress.status != "complete":
        for run in seed_folders(folder):
            val = read_curves(run, ["fewshot_val"]).get("fewshot_val")
            if val is not None and "val_acc" in val.columns and len(val):
                last = val.sort_values("step").iloc[-1]
                rows.append([f"{run.name if run != folder else 'run'}: last validation accuracy (%, "
                             f"{cfg.get('val_episodes')} episodes, not a test score)",
                             f"{fmt(100 * float(last['val_acc']), 1)} at iteration {int(last['step'])}"])
    lines.append(_table(("measure", "ours"), rows))
    lines.append("")
    published, published_ci = PAPER.get(setting, (math.nan, math.nan))
    diffs = protocol_differences(cfg, "fewshot")
    comp = [[f"{cfg.get('n_way')}-way {cfg.get('k_shot')}-shot accuracy (%)",
             f"{pm(published, published_ci, 1)} (Finn et al. 2017, Table 1)", pm(*acc, 1), _differences(diffs),
             _why(verdict(acc[0], acc[1], published, published_ci, digits=1), diffs)
             if progress.status == "complete" else "not measured yet"]]
    if math.isfinite(lake[0]):
        comp.append(["Lake et al.'s 20 one-shot runs, error (%)", ", ".join(f"{k} {fmt(v, 1)}" for k, v in LAKE.items())
                     + " (Lake et al. 2015)", pm(*lake, 1),
                     _differences([], ["none in the task: Lake et al.'s 20 runs, their background / evaluation "
                                       "split", *(f"budget (against MAML's): {t}" for k, t in diffs if k == "budget")]),
                     f"**not reached**: {fmt(lake[0] - LAKE['people'], 1)} points above people's error"
                     if lake[0] > LAKE["people"] else "**at or below people's error**"])
    lines.append(_comparison(comp))
    return "\n".join(lines) + "\n"


# --- 07 ------------------------------------------------------------------------------------------------------
def _maml_rl_training_so_far(folder: Path, cfg: dict[str, Any]) -> list[str]:
    """A stopped run's training loops (``curves/train.csv``): per loop, the last logged iteration of its budget and
    the training returns there (the meta-batch's tasks: a training signal, not the test protocol)."""
    train = read_curves(folder, ["train"]).get("train")
    if train is None or not {"run", "seed", "iteration", "return_0step"} <= set(train.columns):
        return []
    budget = {"maml": cfg.get("iterations"), "pretrained": cfg.get("pretrain_iterations")}
    rows = []
    for (name, seed), df in train.groupby(["run", "seed"], sort=False):
        last = df.sort_values("iteration").iloc[-1]
        method = str(name).rsplit("_", 1)[-1]
        after = float(last["return_1step"]) if "return_1step" in df.columns and method == "maml" else math.nan
        rows.append([str(name), str(seed), f"{thousands(int(last['iteration']))} of {thousands(budget.get(method))}",
                     fmt(float(last["return_0step"]), 2), fmt(after, 2)])
    return [_table(("training loop", "seed", "iterations", "return before the inner step",
                    "return after it"), rows),
            "", "Returns on the meta-batch's training tasks at the last logged iteration: a training signal, not "
            "the test protocol (held-out tasks, 0-3 steps), which runs when every loop has finished.", ""]


def render_maml_rl(folder: Path) -> str:
    from .maml_rl import ENV_TITLES, METHOD_LABELS, PAPER_READING_ERROR, PAPER_RETURNS

    progress = run_progress(folder)
    cfg = _config(folder)
    envs = cfg.get("envs") or (["nav2d"] if folder.name == "07_maml_rl" else [folder.name[len("07_maml_rl_"):]])
    lines = _header(folder, progress, subtitle=", ".join(ENV_TITLES.get(e, e) for e in envs))
    m = read_metrics_file(folder) if progress.status == "complete" else {}
    if not m:
        lines += _maml_rl_training_so_far(folder, cfg)
        return "\n".join(lines).rstrip() + "\n"
    seeds = cfg.get("seeds") or [cfg.get("seed", 0)]
    steps = int(cfg.get("eval_steps", 3))
    lines.append(f"{cfg.get('meta_batch_size')} tasks x {cfg.get('trajectories')} trajectories of horizon "
                 f"{cfg.get('horizon')}, {thousands(cfg.get('iterations'))} meta-iterations, {len(seeds)} seed"
                 f"{'s' if len(seeds) != 1 else ''}. Average return on {cfg.get('eval_goals')} held-out tasks x "
                 f"{cfg.get('eval_trajectories')} trajectories after 0-{steps} policy-gradient steps; mean ± 95% CI "
                 "over seeds (Student's t). Higher is better.")
    lines.append("")
    comp = []
    for env in envs:
        rows = []
        for method in ("maml", "maml_best", "pretrained", "random"):
            prefix = f"{env}_" if method == "maml" else f"{env}_{method}_"
            if f"{prefix}return_0step" not in m:
                continue
            rows.append([f"{METHOD_LABELS.get(method, method)}"] +
                        [pm(m.get(f"{prefix}return_{k}step", math.nan),
                            m.get(f"{prefix}return_{k}step_ci95", math.nan), 2) for k in range(steps + 1)])
        published = PAPER_RETURNS.get(env)
        if published:
            rows.append([f"MAML, {published[1]}"] + [fmt(v, 2 if env not in PAPER_READING_ERROR else 0)
                                                      for v in published[0][:steps + 1]])
        if len(envs) > 1:
            lines.append(f"**{ENV_TITLES.get(env, env)}**")
            lines.append("")
        lines.append(_table(("policy", *(f"{k} step{'s' if k != 1 else ''}" for k in range(steps + 1))), rows))
        lines.append("")
        family = "maml_rl/nav2d" if env == "nav2d" else "maml_rl/cheetah"
        # row "MAML": each loop's last policy; row "maml_best" (where evaluated): the paper's selection (App. A.2)
        variants = [("", protocol_differences(cfg, family, extra={"evaluated_policy": "last iteration"}))]
        if f"{env}_maml_best_return_0step" in m:
            variants.append(("maml_best_", protocol_differences(
                cfg, family, extra={"evaluated_policy": "best training return"})))
        reading = PAPER_READING_ERROR.get(env)  # an anchor read off a figure: judged within its reading error
        for key, diffs in variants:
            label = "MAML" if not key else "MAML (best training return)"
            diff = _differences(diffs)
            for k, value in enumerate(published[0][:steps + 1] if published else ()):
                ours = (m.get(f"{env}_{key}return_{k}step", math.nan),
                        m.get(f"{env}_{key}return_{k}step_ci95", math.nan))
                judged = verdict(*ours, value, reading)
                if reading is not None:
                    judged = judged.replace("within the paper's interval", f"within ± {fmt(reading, 0)} of the value "
                                            "read off the figure").replace("than the paper", "than the figure's value")
                paper = (f"{fmt(value, 2)} ({published[1]})" if reading is None else
                         f"{fmt(value, 0)} ± {fmt(reading, 0)} ({published[1]})")
                comp.append([f"{ENV_TITLES.get(env, env)}, {label} return after {k} step{'s' if k != 1 else ''}",
                             paper, pm(*ours, 2), diff, _why(judged, diffs)])
            if not published:
                ours = (m.get(f"{env}_{key}return_1step", math.nan), m.get(f"{env}_{key}return_1step_ci95", math.nan))
                comp.append([f"{ENV_TITLES.get(env, env)}, {label} return after 1 step", "a figure only (Finn et al. "
                             "2017, Figure 5), no table value", pm(*ours, 2), diff, "no published number to compare"])
    lines.append(_comparison(comp))
    return "\n".join(lines) + "\n"


#: Section renderer per notebook number (the first two characters of a results folder's name).
RENDERERS: dict[str, Callable[[Path], str]] = {
    "02": render_replay, "03": render_mtml, "04": render_maml_sampling, "05": render_fewshot, "07": render_maml_rl,
}


def render_folder(folder: str | Path) -> str:
    """One result folder's section (Markdown, ending with a newline)."""
    folder = Path(folder)
    renderer = RENDERERS.get(folder.name[:2])
    if renderer is None:
        raise ValueError(f"{folder}: no report section for notebook {folder.name[:2]!r} "
                         f"(known: {', '.join(RENDERERS)})")
    text = renderer(folder)
    finding = read_command(folder).get("finding")
    if finding:
        text = text.rstrip("\n") + f"\n\nFinding (`{folder.parent.name}/{folder.name}/COMMAND.md`): {finding}\n"
    return text


def _folders(results_dir: Path) -> list[Path]:
    found = {p.name for p in results_dir.iterdir() if p.is_dir() and p.name[:2] in RENDERERS} \
        if results_dir.is_dir() else set()
    names = list(EXPECTED) + sorted(found - set(EXPECTED))
    order = {n: i for i, n in enumerate(names)}
    return [results_dir / n for n in sorted(names, key=lambda n: (n[:2], order[n]))]


def render_results(results_dir: str | Path) -> str:
    """Every section, in notebook order: each expected result (missing ones say "not run yet") and any other
    folder under ``results_dir`` whose name starts with a known notebook number."""
    return "\n".join(render_folder(f) for f in _folders(Path(results_dir)))


# --- the README's generated block --------------------------------------------------------------------------
def readme_block(readme_text: str, source: str = "README.md") -> str:
    """The text between :data:`BEGIN` and :data:`END` (without them); a clear error when they are missing."""
    if readme_text.count(BEGIN) != 1 or readme_text.count(END) != 1:
        raise ConfigError(f"{source}: expected one line {BEGIN!r} and one line {END!r} around the generated results")
    return readme_text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def replace_readme_block(readme_text: str, rendered: str, source: str = "README.md") -> str:
    """``readme_text`` with its generated block replaced by ``rendered``."""
    readme_block(readme_text, source)
    head, rest = readme_text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{BEGIN}\n\n{rendered.strip()}\n\n{END}{tail}"


def main(results: str, readme: str | None = None, check: bool = False, write: bool = False) -> int:
    """``python -m nbmodule report``: print, check or write the report; 1 when ``check`` finds a difference."""
    if not Path(results).is_dir():
        raise ConfigError(f"results folder not found: {results}")
    if readme is not None and not Path(readme).is_file():
        raise ConfigError(f"README not found: {readme}")
    rendered = render_results(results)
    if readme is None:
        print(rendered, end="")
        return 0
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    current = readme_block(text, str(path))
    if check:
        if current.strip() == rendered.strip():
            print(f"{path}: the results report matches {results}")
            return 0
        diff = difflib.unified_diff(current.strip().splitlines(), rendered.strip().splitlines(),
                                    f"{path} (generated block)", f"report of {results}", lineterm="")
        print("\n".join(diff))
        print(f"{path} disagrees with {results}: run `python -m nbmodule report {results} --readme {path} --write`")
        return 1
    if write:
        path.write_text(replace_readme_block(text, rendered, str(path)), encoding="utf-8")
        print(f"{path}: results report written from {results}")
        return 0
    print(rendered, end="")
    return 0


def export_html(executed_notebook: str | Path, dest: str | Path, exclude_input: bool = False) -> Path:
    """Convert an executed notebook to one self-contained HTML file at ``dest`` and return its path.

    Images are embedded as data URIs by nbconvert's ``HTMLExporter`` (its ``embed_images`` also inlines
    markdown images), so the file can be mailed or opened offline. ``exclude_input=True`` hides the code.
    """
    import nbformat
    from nbconvert import HTMLExporter

    src = Path(executed_notebook)
    if not src.is_file():
        raise FileNotFoundError(f"executed notebook not found: {src}")
    nb = nbformat.read(str(src), as_version=4)
    exporter = HTMLExporter(template_name="lab", embed_images=True, exclude_input=exclude_input)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": src.stem}})
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(body, encoding="utf-8")
    return dest
