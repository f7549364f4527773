"""Task-weighted MAML on sinusoid regression (study ``maml_sampling``, notebook 04): meta-train one MLP per
(sampling regime, seed) and evaluate it.

    python -m nbmodule run maml_sampling --config weighted [meta_iterations=2000 seeds=[0,1]] [--out runs]

Each (regime, seed) meta-trains ``mlp`` (1-40-40-1, ReLU) with :func:`nbmodule.meta.meta_loss`, drawing
``meta_batch_size`` tasks per iteration with :func:`nbmodule.meta.sample_tasks` from a
:class:`~nbmodule.meta.PriorityQueue` over the family's parameter space, and writing the batch's
post-adaptation query losses back into the queue after each meta-step. Every ``eval_every`` iterations the
model is fine-tuned (``eval_steps`` plain steps, K support points, ``eval_points`` fresh query points) on the
fixed test grid and on the held-out tasks. A checkpoint per (regime, seed) holds the model, the optimiser, the
queue, the task generator's state and the logged rows, so a re-run with the same run folder continues where
an interrupted one stopped and ends with the same numbers.

Run folder (``<out>/04_maml_sampling/`` from either door):

``config.json``
    the study, the config, device, versions.
``metrics.json``
    per regime (mean over seeds; ``_ci95``: half-width of the Student-t 95% interval over seeds, null with
    one seed): ``{regime}_mse_0step``, ``{regime}_mse_1step``, ``{regime}_mse_10step`` (test grid),
    ``{regime}_heldout_mse_1step``, ``{regime}_heldout_mse_10step`` (600 held-out tasks), each with a
    ``_ci95`` companion; ``{regime}_s_per_iter`` (training wall time per meta-iteration).
``curves/train.csv``
    ``run`` (regime), ``seed``, ``step`` (meta-iteration), ``train_loss`` (mean post-adaptation query loss
    of the training tasks since the previous row), ``weighted_loss`` (the meta-loss actually optimised,
    with importance weights), ``epsilon`` (epsilon-greedy; else nan).
``curves/test.csv``
    ``run``, ``seed``, ``step``, ``test_mse_1step``, ``test_mse_{eval_steps}step`` (test grid means),
    ``heldout_mse_1step``, ``heldout_mse_{eval_steps}step``, ``test_mse_0step`` (before adaptation).
``parameter_space.csv``
    the final test-grid losses per task: ``run``, ``seed``, ``amplitude``, ``phase`` (degrees),
    [``frequency``], ``mse_1step``, ``mse_{eval_steps}step``, ``mse_0step``.
``grid_losses.json``
    ``{"param_names", "params": [[A, phi(, f)], ...], "steps": S, "losses": {regime: {seed: [[L_0..L_S] per
    task]}}}``: the final fine-tuning losses of every test-grid task (phase in radians).
``queues.json``
    ``{"param_names", "low", "high", "block", "snapshots": {regime: {seed: [{"step", "losses", "counts"}]}}}``:
    the priority queue (nested lists, grid shape) at ``queue_snapshots`` moments of training.
``examples.json``
    ``{"x": [...], "tasks": [{"params", "support_x", "support_y", "truth", "pred_0", "pred_1", "pred_S"}]}``
    per regime (first seed): regressions of a low, a medium and a high amplitude task.
``checkpoints/{regime}_s{seed}.pt``
    resume state (:class:`nbmodule.runs.Checkpointer`); a finished pair's results are reused on a re-run.

The figures are in :mod:`nbmodule.viz.maml_sampling`.
"""
from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any, Callable, ClassVar, Literal, Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from ..config import StudyConfig
from ..data.sinusoid import evaluation_tasks, get_family, make_tasks, sinusoid
from ..meta import REGIMES, finetune_curve, forward, meta_loss, sample_tasks
from ..meta.maml import adapt
from ..metrics import mean_confidence_interval
from ..models.mlp import mlp
from ..progress import progress_bar
from ..runs import ResumeError, RunContext, RunDir, atomic_write_text, check_finite, check_memory

__all__ = ["NAME", "Config", "MamlSamplingConfig", "train_regime", "run", "run_study", "summarise", "growable",
           "estimate_memory"]

NAME = "maml_sampling"

Regime = Literal["uniform", "epsilon_greedy", "weighted", "importance_weighted", "delta", "importance_delta"]
GRID_SEED, HELDOUT_POINTS_SEED = 1234, 4321  # fixed evaluation points: every regime and seed sees the same


class MamlSamplingConfig(StudyConfig):
    """Settings of the task-weighted MAML study; values in ``nbmodule/configs/maml_sampling/*.yaml``."""

    STUDY: ClassVar[str] = NAME
    # each (regime, seed) pair has its own checkpoint: a run folder may gain regimes and seeds; meta_iterations
    # may grow where no schedule depends on the total (:func:`growable`: not epsilon-greedy annealed over half
    # the run); queue snapshots taken before the growth are kept, later ones follow the new total
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"regimes", "seeds", "meta_iterations"})
    NEUTRAL: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})

    family: Literal["2d", "3d"]                        # sinusoid family: amplitude+phase, or + frequency
    regimes: list[Regime]                              # sampling regimes to train, each its own models
    k_shot: int = Field(gt=0, le=10_000)               # support points per task (K)
    k_query: int = Field(gt=0, le=10_000)              # query points per training task
    inner_steps: int = Field(ge=1, le=100)             # inner gradient steps during meta-training
    inner_lr: float = Field(gt=0)                      # inner step size (training and fine-tuning)
    first_order: bool                                  # FOMAML instead of second-order MAML
    meta_lr: float = Field(gt=0)                       # Adam learning rate of the meta-update
    meta_batch_size: int = Field(gt=0, le=1_000_000)   # tasks per meta-iteration (memory checked before training)
    meta_iterations: int = Field(gt=0, le=100_000_000)  # meta-iterations per (regime, seed)
    seeds: list[Annotated[int, Field(ge=0, lt=2**31)]] = Field(min_length=1, max_length=100)  # one model per seed
    hidden: list[Annotated[int, Field(gt=0, le=4096)]] = Field(min_length=1, max_length=8)  # MLP widths
    eval_every: int = Field(gt=0, le=100_000_000)      # test-grid / held-out evaluation period (iterations)
    eval_steps: int = Field(ge=1, le=1000)             # fine-tuning steps at evaluation
    eval_points: int = Field(gt=0, le=100_000)         # fresh query points per evaluation task
    heldout_tasks: int = Field(gt=0, le=1_000_000)     # held-out tasks drawn uniformly (fixed seed)
    log_every: int = Field(gt=0, le=100_000_000)       # training-loss row period (iterations)
    checkpoint_every: int = Field(gt=0, le=100_000_000)  # checkpoint period (iterations)
    queue_snapshots: int = Field(ge=1, le=1000)        # priority-queue heatmaps kept (evenly spaced, incl. 0)
    queue_init_scale: float = Field(gt=0)              # cells start uniform in [0.5, 1.5) * this
    epsilon_start: float = Field(ge=0, le=1)           # epsilon-greedy: exploration probability at first
    epsilon_final: float = Field(ge=0, le=1)           # ... after annealing
    epsilon_anneal_start: int = Field(ge=0, le=100_000_000)  # ... constant until this iteration
    epsilon_anneal_steps: Optional[int] = Field(gt=0, le=100_000_000)  # ... linear over this many (None: half the run)

    @field_validator("regimes", "seeds")
    @classmethod
    def _distinct(cls, v: list) -> list:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list without repeats, got {v}")
        return v

    def epsilon(self) -> dict[str, float]:
        steps = self.epsilon_anneal_steps or max(1, self.meta_iterations // 2)
        return {"start": self.epsilon_start, "final": self.epsilon_final,
                "anneal_start": self.epsilon_anneal_start, "anneal_steps": steps}


def _build(cfg: MamlSamplingConfig, seed: int, device: torch.device) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = mlp(in_features=1, hidden=tuple(cfg.hidden), out_features=1)  # the registry's "mlp"
    return model.to(device)


def _eval_sets(cfg: MamlSamplingConfig, device: torch.device) -> dict[str, tuple[torch.Tensor, ...]]:
    family = get_family(cfg.family)
    return {
        "grid": evaluation_tasks(family.test_grid(), cfg.k_shot, cfg.eval_points, seed=GRID_SEED, device=device),
        "heldout": evaluation_tasks(family.heldout(cfg.heldout_tasks), cfg.k_shot, cfg.eval_points,
                                    seed=HELDOUT_POINTS_SEED, device=device),
    }


def _evaluate(model: torch.nn.Module, cfg: MamlSamplingConfig, sets: dict[str, tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: finetune_curve(model, params, tasks, F.mse_loss, steps=cfg.eval_steps, inner_lr=cfg.inner_lr).cpu()
            for name, tasks in sets.items()}


def _test_row(regime: str, seed: int, step: int, curves: dict[str, torch.Tensor], s: int) -> dict[str, Any]:
    g, h = curves["grid"].mean(0), curves["heldout"].mean(0)
    return {"run": regime, "seed": seed, "step": step, "test_mse_1step": float(g[1]), f"test_mse_{s}step": float(g[s]),
            "heldout_mse_1step": float(h[1]), f"heldout_mse_{s}step": float(h[s]), "test_mse_0step": float(g[0])}


def _snapshot_steps(cfg: MamlSamplingConfig) -> list[int]:
    n = cfg.queue_snapshots
    if n == 1:
        return [cfg.meta_iterations]
    return sorted({round(i * cfg.meta_iterations / (n - 1)) for i in range(n)})


def _examples(model: torch.nn.Module, cfg: MamlSamplingConfig, device: torch.device,
              amplitudes: Sequence[float] = (0.3, 2.5, 4.7), phase: float = math.pi / 4) -> dict[str, Any]:
    """Regressions of a low, medium and high amplitude task: before, after 1 and after ``eval_steps`` steps."""
    family = get_family(cfg.family)
    extra = [1.0] if family.ndim == 3 else []
    params = torch.tensor([[a, phase, *extra] for a in amplitudes], dtype=torch.float64)
    xs, ys, _, _ = evaluation_tasks(params, cfg.k_shot, 1, seed=GRID_SEED + 1, device=device)
    x = torch.linspace(*family.x_range, 200, dtype=torch.float64)
    truth = sinusoid(params, x.view(1, -1, 1).expand(len(params), -1, -1))
    xd = x.view(-1, 1).to(device=device, dtype=torch.float32)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    tasks = []
    for i in range(len(params)):
        preds = {}
        for s in (0, 1, cfg.eval_steps):
            with torch.no_grad():
                p = adapt(model, theta, xs[i], ys[i], F.mse_loss, steps=s, inner_lr=cfg.inner_lr, first_order=True)
                preds[f"pred_{s}"] = forward(model, p, xd).flatten().cpu().tolist()
        tasks.append({"params": params[i].tolist(), "support_x": xs[i].flatten().cpu().tolist(),
                      "support_y": ys[i].flatten().cpu().tolist(), "truth": truth[i].flatten().tolist(), **preds})
    return {"x": x.tolist(), "steps": [0, 1, cfg.eval_steps], "tasks": tasks}


def growable(cfg: MamlSamplingConfig, regime: str) -> bool:
    """Whether a (regime, seed) may continue to a larger ``meta_iterations``: not when its epsilon schedule
    spans half the run (``epsilon_anneal_steps: null`` for epsilon-greedy), which a larger total would change
    from the first iteration."""
    return regime != "epsilon_greedy" or cfg.epsilon_anneal_steps is not None


def estimate_memory(cfg: MamlSamplingConfig, device: torch.device | str = "cpu") -> float:
    """Bytes the study needs at its peak, estimated before training: autograd's saved tensors of one
    meta-iteration (:func:`nbmodule.meta.strategy.estimate_peak_bytes`, measured on two tasks and scaled to
    ``meta_batch_size``) or of an evaluation (the held-out tasks or the test grid, fine-tuned at once), whichever
    is larger, plus the tasks' points."""
    from ..meta.strategy import estimate_peak_bytes, graph_bytes

    device = torch.device(device)
    family = get_family(cfg.family)
    model = _build(cfg, 0, device)
    params = dict(model.named_parameters())
    two = family.heldout(2)
    gen = torch.Generator().manual_seed(0)
    tasks = make_tasks(two, cfg.k_shot, cfg.k_query, gen, x_range=family.x_range, device=device)
    meta = estimate_peak_bytes(model, params, tasks, F.mse_loss, "loop", steps=cfg.inner_steps,
                               inner_lr=cfg.inner_lr, first_order=cfg.first_order) * cfg.meta_batch_size / 2
    evals = evaluation_tasks(two, cfg.k_shot, cfg.eval_points, seed=0, device=device)
    _, saved = graph_bytes(lambda: finetune_curve(model, params, evals, F.mse_loss, steps=1, inner_lr=cfg.inner_lr,
                                                  strategy="loop"))
    n_eval = max(cfg.heldout_tasks, len(family.test_grid()))
    evaluation = 2.0 * saved * n_eval / 2
    points = 4 * 2 * (cfg.meta_batch_size * (cfg.k_shot + cfg.k_query) + 2 * n_eval * (cfg.k_shot + cfg.eval_points))
    return max(meta, evaluation) + points


def _pair_config(cfg: MamlSamplingConfig) -> dict[str, Any]:
    """What one (regime, seed) checkpoint depends on: the config without the lists of regimes and seeds."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("regimes", "seeds")}


def train_regime(cfg: MamlSamplingConfig, regime: str, seed: int, run: RunDir, *, device: torch.device | str = "cpu",
                 bar: Any = None, callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Meta-train and evaluate one (regime, seed); resumes from ``checkpoints/{regime}_s{seed}.pt``.

    Returns ``{"train_rows", "test_rows", "grid" (M, S+1), "heldout" (N, S+1), "snapshots", "examples",
    "seconds", "iterations_run"}``. ``callback(iteration)`` runs after each iteration's checkpointing (tests
    use it to interrupt a run).
    """
    device = torch.device(device)
    family = get_family(cfg.family)
    model = _build(cfg, seed, device)
    params = dict(model.named_parameters())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.meta_lr)
    gen = torch.Generator().manual_seed(10_007 * seed + 17)
    queue = family.make_queue(gen, cfg.queue_init_scale)
    state: dict[str, Any] = {"train_rows": [], "test_rows": [], "snapshots": [], "seconds": 0.0, "acc": [0.0, 0.0, 0]}
    grows = growable(cfg, regime)
    ck = run.checkpointer(f"{regime}_s{seed}", config=_pair_config(cfg), neutral=cfg.NEUTRAL,
                          resumable={"meta_iterations"} if grows else ())
    try:
        saved = ck.load()
    except ResumeError as err:
        if grows or "meta_iterations" not in str(err):
            raise
        raise ResumeError(f"{err} (meta_iterations cannot grow for epsilon_greedy with epsilon_anneal_steps: "
                          "null: its epsilon schedule spans half the run, so a larger total changes it from the "
                          "first iteration; set epsilon_anneal_steps to grow it)") from None
    if saved is not None:
        if ck.done and "result" in saved and ck.step == cfg.meta_iterations:
            if bar is not None:
                bar.update(cfg.meta_iterations)
            return saved["result"]
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        queue.load_state_dict(saved["queue"])
        gen.set_state(saved["generator"])
        state = saved["state"]
    if bar is not None:
        bar.update(ck.step)

    sets = _eval_sets(cfg, device)
    snap_at = set(_snapshot_steps(cfg))
    eps_kw = cfg.epsilon()
    importance = regime.startswith("importance")
    s = cfg.eval_steps

    def snapshot(step: int) -> None:
        state["snapshots"].append({"step": step, "losses": queue.losses.tolist(), "counts": queue.counts.tolist()})

    def checkpoint_state() -> dict[str, Any]:
        state["seconds"] += time.perf_counter() - clock[0]
        clock[0] = time.perf_counter()
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "queue": queue.state_dict(),
                "generator": gen.get_state(), "state": state}

    if ck.step == 0 and 0 in snap_at and not state["snapshots"]:
        snapshot(0)
    start_it = ck.step
    last_eval: dict[str, torch.Tensor] | None = None
    clock = [time.perf_counter()]
    for it in ck.steps(cfg.meta_iterations, every=cfg.checkpoint_every, state=checkpoint_state):
        draw = sample_tasks(regime, queue, cfg.meta_batch_size, generator=gen, step=it, epsilon=eps_kw)
        tasks = make_tasks(draw.params, cfg.k_shot, cfg.k_query, gen, x_range=family.x_range, device=device)
        weights = draw.weights.to(device=device, dtype=torch.float32) if importance else None
        loss, per_task = meta_loss(model, params, tasks, F.mse_loss, steps=cfg.inner_steps, inner_lr=cfg.inner_lr,
                                   first_order=cfg.first_order, weights=weights)
        check_finite(loss, step=it, what=f"the meta-loss ({regime}, seed {seed})", run_dir=run)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        per_task = per_task.cpu()
        queue.update(draw.cells, per_task)
        acc = state["acc"]
        acc[0] += float(per_task.mean())
        acc[1] += float(loss.detach())
        acc[2] += 1
        if it % cfg.log_every == 0 or it == cfg.meta_iterations:
            state["train_rows"].append({"run": regime, "seed": seed, "step": it, "train_loss": acc[0] / acc[2],
                                        "weighted_loss": acc[1] / acc[2],
                                        "epsilon": draw.epsilon if draw.epsilon is not None else math.nan})
            state["acc"] = [0.0, 0.0, 0]
            if bar is not None:
                bar.set_postfix(regime=regime, seed=seed, loss=f"{acc[0] / max(acc[2], 1):.3f}", refresh=False)
        if it % cfg.eval_every == 0 or it == cfg.meta_iterations:
            last_eval = _evaluate(model, cfg, sets)
            state["test_rows"].append(_test_row(regime, seed, it, last_eval, s))
        if it in snap_at:
            snapshot(it)
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(it)

    # the loop's last iteration evaluated the final model already (unless the loop had nothing left to run)
    final = last_eval if last_eval is not None else _evaluate(model, cfg, sets)
    result = {"train_rows": state["train_rows"], "test_rows": state["test_rows"], "grid": final["grid"],
              "heldout": final["heldout"], "snapshots": state["snapshots"], "examples": _examples(model, cfg, device),
              "seconds": state["seconds"], "iterations_run": cfg.meta_iterations - start_it}
    ck.save({**checkpoint_state(), "result": result}, step=cfg.meta_iterations, done=True)
    return result


def summarise(cfg: MamlSamplingConfig, results: dict[tuple[str, int], dict[str, Any]]) -> dict[str, float | None]:
    """metrics.json entries: per regime, means over seeds (and their 95% CI half-widths) of the final losses."""
    s = cfg.eval_steps
    metrics: dict[str, float | None] = {}
    for regime in cfg.regimes:
        rs = [results[(regime, seed)] for seed in cfg.seeds]
        cols = {"mse_0step": ("grid", 0), "mse_1step": ("grid", 1), f"mse_{s}step": ("grid", s),
                "heldout_mse_1step": ("heldout", 1), f"heldout_mse_{s}step": ("heldout", s)}
        for key, (where, col) in cols.items():
            mean, ci = mean_confidence_interval([float(r[where][:, col].mean()) for r in rs])
            metrics[f"{regime}_{key}"] = mean
            metrics[f"{regime}_{key}_ci95"] = None if math.isnan(ci) else ci
        its = sum(cfg.meta_iterations for _ in rs)
        metrics[f"{regime}_s_per_iter"] = sum(r["seconds"] for r in rs) / its
    return metrics


def _rounded(obj: Any, digits: int = 6) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def _write_compact(run: RunDir, name: str, obj: Any) -> None:
    """Large JSON (grids of numbers): 6 significant digits, no indentation, non-finite as null."""
    atomic_write_text(run.path / name, json.dumps(_rounded(obj), separators=(",", ":")))


def run_study(cfg: MamlSamplingConfig, run: RunDir, *, device: torch.device | str = "cpu", progress: bool = True,
              callback: Callable[[str, int, int], None] | None = None) -> dict[str, float | None]:
    """Train every (regime, seed) of ``cfg`` (resuming finished or checkpointed ones), write the run folder
    files listed in this module's docstring and return the metrics."""
    device = torch.device(device)
    family = get_family(cfg.family)
    check_memory(estimate_memory(cfg, device), device=device,
                 what=f"meta_batch_size={cfg.meta_batch_size} (K={cfg.k_shot}+{cfg.k_query}, hidden {cfg.hidden}) "
                      f"with {cfg.heldout_tasks} held-out tasks",
                 hint="lower meta_batch_size, k_shot/k_query, hidden or heldout_tasks")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    total = len(cfg.regimes) * len(cfg.seeds) * cfg.meta_iterations
    with progress_bar(total=total, desc="meta-training", enabled=progress) as bar:
        for regime in cfg.regimes:
            for seed in cfg.seeds:
                cb = (lambda it, r=regime, sd=seed: callback(r, sd, it)) if callback is not None else None
                results[(regime, seed)] = train_regime(cfg, regime, seed, run, device=device, bar=bar, callback=cb)

    keys = [(r, sd) for r in cfg.regimes for sd in cfg.seeds]
    run.write_curve("train", [row for k in keys for row in results[k]["train_rows"]])
    run.write_curve("test", [row for k in keys for row in results[k]["test_rows"]])
    grid = family.test_grid()
    rows = []
    for r, sd in keys:
        losses = results[(r, sd)]["grid"]
        for task, p in enumerate(grid.tolist()):
            row = {"run": r, "seed": sd, "amplitude": round(p[0], 6), "phase": round(math.degrees(p[1]), 6)}
            if family.ndim == 3:
                row["frequency"] = round(p[2], 6)
            row.update({"mse_1step": float(losses[task, 1]), f"mse_{cfg.eval_steps}step": float(losses[task, -1]),
                        "mse_0step": float(losses[task, 0])})
            rows.append(row)
    atomic_write_text(run.path / "parameter_space.csv", pd.DataFrame(rows).to_csv(index=False))
    _write_compact(run, "grid_losses.json", {
        "param_names": list(family.param_names), "params": family.test_grid().tolist(), "steps": cfg.eval_steps,
        "losses": {r: {str(sd): results[(r, sd)]["grid"].tolist() for sd in cfg.seeds} for r in cfg.regimes}})
    queue = family.make_queue(torch.Generator().manual_seed(0))
    _write_compact(run, "queues.json", {
        "param_names": list(family.param_names), "low": queue.low.tolist(), "high": queue.high.tolist(),
        "block": queue.block.tolist(),
        "snapshots": {r: {str(sd): results[(r, sd)]["snapshots"] for sd in cfg.seeds} for r in cfg.regimes}})
    _write_compact(run, "examples.json", {r: results[(r, cfg.seeds[0])]["examples"] for r in cfg.regimes})
    metrics = summarise(cfg, results)
    run.write_metrics(metrics)
    return metrics


def run(cfg: MamlSamplingConfig, run_dir: RunDir, ctx: RunContext) -> dict[str, float | None]:
    """The study's entry point (both doors: notebook 04 and ``python -m nbmodule run maml_sampling``)."""
    return run_study(cfg, run_dir, device=ctx.device, progress=ctx.progress)


Config = MamlSamplingConfig
