"""MAML for reinforcement learning (study ``maml_rl``, notebook 07): MAML-TRPO on 2D navigation and
HalfCheetah goal velocity / direction, against a pretrained and a randomly initialised policy.

    python -m nbmodule run maml_rl --config paper [seeds=[0] iterations=100] [--out runs]

For each environment in ``envs`` and each seed, the study

1. meta-trains a Gaussian MLP policy with MAML (:func:`nbmodule.rl.meta_iteration`): per iteration,
   ``meta_batch_size`` tasks, ``trajectories`` trajectories per task before and after ``inner_steps``
   REINFORCE steps of size ``inner_lr``, then one TRPO step (``max_kl``, conjugate gradient, line search)
   through the adaptation with the chosen ``estimator`` and ``hvp``;
2. trains the "pretrained" baseline (if in ``baselines``): the same policy from the same initialisation,
   trained with multi-task TRPO on the same task distribution without adaptation;
3. evaluates MAML, pretrained and the random initialisation (``random``) with the test protocol
   (:func:`nbmodule.rl.evaluate_adaptation`): ``eval_goals`` held-out tasks (fixed by ``eval_seed``, the same
   for every seed and method) x ``eval_trajectories`` trajectories, returns after 0..``eval_steps`` steps of
   ``inner_lr`` then ``inner_lr / 2``, fresh trajectories at each step.

A return is the undiscounted sum of a trajectory's rewards over the horizon (a 2D-navigation trajectory ends
early when it reaches its goal, so its later rewards are 0), averaged over the trajectories and the goals:
the paper's measure. Each training loop is checkpointed (:class:`nbmodule.runs.Checkpointer`), so a re-run
on the same folder continues where an interrupted one stopped and ends with the same numbers.

Run folder (``<out>/07_maml_rl/``):

``metrics.json``
    per environment ``E`` and step ``k`` (means over seeds; ``_ci95``: half-width of the Student-t 95% interval
    over seeds, null with one seed): ``E_return_{k}step`` (MAML), ``E_pretrained_return_{k}step``,
    ``E_random_return_{k}step``, each with ``_ci95``; timings ``maml_rl_s_per_iter`` (one MAML meta-iteration,
    mean over environments and seeds) split into ``maml_rl_sampling_s_per_iter``, ``maml_rl_inner_s_per_iter``
    (advantages and adaptation) and ``maml_rl_trpo_s_per_iter``; ``maml_rl_pretrain_s_per_iter``;
    ``maml_rl_eval_s``.
``curves/train.csv``
    ``run`` (``{env}_{method}``), ``seed``, ``iteration``, ``return_0step`` (mean return of the trajectories
    sampled before adaptation), ``return_1step`` .. (after each inner step; MAML only), ``loss_before``,
    ``loss_after`` (TRPO surrogate), ``kl`` (mean KL of the accepted step), ``backtracks``, ``accepted``,
    ``env_steps``; averaged over the ``log_every`` iterations up to ``iteration``.
``evaluation.json``
    ``{env: {"goals": [[...]], "steps": S, "lrs": [...], "methods": {method: {seed: [[return per goal] per
    step]}}}}``.
``trajectories.json``
    2D navigation only: ``{"goals": [[x, y]...], "methods": {method: [[[[x, y] per time step] per
    trajectory] per goal] per step]}}`` for the first seed and ``show_goals`` goals.
``checkpoints/{env}_{method}_s{seed}.pt``, ``checkpoints/{env}_eval_{method}_s{seed}.pt``
    resume state of each training loop; the evaluation of a finished policy.

The figures and tables are in :mod:`nbmodule.viz.maml_rl`.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from ..config import StudyConfig
from ..metrics import mean_confidence_interval
from ..progress import progress_bar
from ..rl import GaussianMLPPolicy, MetaRLSettings, Timer, evaluate_adaptation, evaluation_lrs, make_env, meta_iteration
from ..rl.envs import ENV_NAMES, MetaEnv
from ..runs import RunContext, RunDir

__all__ = ["NAME", "NOTEBOOK", "Config", "MamlRLConfig", "METHODS", "run", "train_policy", "evaluate_policy",
           "summarise"]

NAME = "maml_rl"
NOTEBOOK = "07_maml_rl"
METHODS = ("maml", "pretrained", "random")
_METHOD_SALT = {"maml": 1, "pretrained": 2}


class MamlRLConfig(StudyConfig):
    """Settings of the MAML-RL study; values in ``nbmodule/configs/maml_rl/*.yaml`` (``default.yaml``: all)."""

    STUDY: ClassVar[str] = NAME
    # budgets may grow, and a run folder may gain seeds, environments and baselines (one checkpoint per loop)
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"iterations", "pretrain_iterations", "seeds", "envs", "baselines"})
    NEUTRAL: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})

    envs: list[Literal["nav2d", "cheetah_vel", "cheetah_dir"]] = Field(min_length=1)  # task families, in turn
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)  # one policy per seed (CIs over seeds)
    hidden: list[Annotated[int, Field(gt=0, le=4096)]] = Field(min_length=1, max_length=8)  # policy MLP widths
    horizon: int = Field(gt=0)                     # steps per trajectory
    meta_batch_size: int = Field(gt=0)             # tasks per meta-iteration
    trajectories: int = Field(gt=0)                # trajectories per task, before and after each inner step
    iterations: int = Field(ge=0)                  # MAML meta-iterations per (env, seed)
    inner_lr: float = Field(gt=0)                  # REINFORCE step size alpha (evaluation: alpha, then alpha/2)
    inner_steps: int = Field(ge=1, le=5)           # inner steps while meta-training
    estimator: Literal["maml", "lvc", "dice"]      # meta-gradient estimator (the inner loss's curvature)
    hvp: Literal["exact", "cheap"]                 # TRPO's Hessian-vector product: through the adaptation or not
    gamma: float = Field(gt=0, le=1)               # discount
    gae_lambda: float = Field(ge=0, le=1)          # GAE lambda (1: returns minus baseline)
    baseline_reg: float = Field(gt=0)              # ridge coefficient of the linear feature baseline
    max_kl: float = Field(gt=0)                    # TRPO trust region (mean KL)
    cg_iters: int = Field(ge=1)                    # conjugate-gradient iterations
    cg_damping: float = Field(ge=0)                # damping added to the Hessian-vector product
    backtrack_ratio: float = Field(gt=0, lt=1)     # line search: step shrink factor ...
    max_backtracks: int = Field(ge=1)              # ... and number of trials
    baselines: list[Literal["pretrained", "random"]]  # comparisons evaluated beside MAML
    pretrain_iterations: int = Field(ge=0)         # multi-task TRPO iterations of the pretrained policy
    eval_goals: int = Field(gt=0)                  # held-out tasks of the evaluation
    eval_trajectories: int = Field(gt=0)           # trajectories per held-out task and step
    eval_steps: int = Field(ge=0, le=10)           # adaptation steps evaluated (0..eval_steps)
    eval_seed: int = Field(ge=0)                   # fixes the held-out tasks (the same for every seed)
    show_goals: int = Field(ge=0, le=16)           # 2D navigation: goals whose trajectories are stored
    sampler: Literal["auto", "rollout", "vector"]  # HalfCheetah: mujoco.rollout or gymnasium SyncVectorEnv
    log_every: int = Field(gt=0)                   # training-curve row period (iterations, averaged)
    checkpoint_every: int = Field(gt=0)            # checkpoint period (iterations)

    @field_validator("envs", "seeds", "baselines")
    @classmethod
    def _distinct(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"must not repeat an entry, got {v}")
        return v

    def settings(self) -> MetaRLSettings:
        return MetaRLSettings(
            meta_batch_size=self.meta_batch_size, trajectories=self.trajectories, inner_lr=self.inner_lr,
            inner_steps=self.inner_steps, estimator=self.estimator, hvp=self.hvp, gamma=self.gamma,
            gae_lambda=self.gae_lambda, baseline_reg=self.baseline_reg, max_kl=self.max_kl, cg_iters=self.cg_iters,
            cg_damping=self.cg_damping, backtrack_ratio=self.backtrack_ratio, max_backtracks=self.max_backtracks)

    def methods(self) -> list[str]:
        return ["maml", *[m for m in METHODS[1:] if m in self.baselines]]

    def training_iterations(self, method: str) -> int:
        return {"maml": self.iterations, "pretrained": self.pretrain_iterations}.get(method, 0)


Config = MamlRLConfig


def _initial_policy(env: MetaEnv, cfg: MamlRLConfig, seed: int, device: torch.device) -> GaussianMLPPolicy:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, tuple(cfg.hidden))
    return policy.to(device)


# A (env, method, seed) checkpoint does not depend on which other seeds, environments or baselines a run holds.
_PAIR_NEUTRAL = frozenset({"seeds", "envs", "baselines"})


def _pair_checkpointer(run: RunDir, name: str, cfg: MamlRLConfig) -> Any:
    return run.checkpointer(name, config=cfg, neutral=cfg.NEUTRAL | _PAIR_NEUTRAL)


def _params(policy: GaussianMLPPolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.named_parameters()}


def train_policy(cfg: MamlRLConfig, env: MetaEnv, policy: GaussianMLPPolicy, method: str, seed: int, run: RunDir,
                 *, device: torch.device, bar: Any = None) -> dict[str, Any]:
    """Train ``method`` ("maml" or "pretrained") for one seed from ``policy``'s initial weights, resuming from
    ``checkpoints/{env}_{method}_s{seed}.pt``. Returns ``{"params", "rows", "seconds", "iterations"}``."""
    total = cfg.training_iterations(method)
    inner_steps = cfg.inner_steps if method == "maml" else 0
    settings = cfg.settings()
    theta = _params(policy)
    gen = torch.Generator().manual_seed(1_000_003 * seed + 7919 * _METHOD_SALT[method] + 101 * ENV_NAMES.index(env.name))
    ck = _pair_checkpointer(run, f"{env.name}_{method}_s{seed}", cfg)
    state = ck.load()
    rows: list[dict[str, Any]] = []
    acc: dict[str, float] = {}
    timer = Timer(device)
    if state is not None:
        theta = {k: v.to(device) for k, v in state["params"].items()}
        gen.set_state(state["generator"])
        rows, acc, timer.seconds = list(state["rows"]), dict(state["acc"]), dict(state["seconds"])
    if bar is not None:
        bar.update(min(ck.step, total))

    def snapshot() -> dict[str, Any]:
        return {"params": {k: v.detach().cpu() for k, v in theta.items()}, "generator": gen.get_state(),
                "rows": rows, "acc": dict(acc), "seconds": dict(timer.seconds)}

    run_name = f"{env.name}_{method}"
    for it in ck.steps(total, every=cfg.checkpoint_every, state=snapshot):
        theta, stats, info = meta_iteration(env, policy, theta, settings, gen, timer, inner_steps=inner_steps)
        stats.update(loss_before=info.loss_before, loss_after=info.loss_after, kl=info.kl,
                     backtracks=float(info.backtracks), accepted=float(info.accepted))
        for key, value in stats.items():
            acc[key] = acc.get(key, 0.0) + value
        acc["n"] = acc.get("n", 0.0) + 1
        if it % cfg.log_every == 0 or it == total:
            n = acc.pop("n")
            rows.append({"run": run_name, "seed": seed, "iteration": it, **{k: v / n for k, v in acc.items()}})
            acc.clear()
            if bar is not None:
                bar.set_postfix(run=run_name, seed=seed, ret=f"{rows[-1][f'return_{inner_steps}step']:.1f}",
                                refresh=False)
        if bar is not None:
            bar.update(1)
    return {"params": theta, "rows": rows, "seconds": dict(timer.seconds), "iterations": total}


def evaluate_policy(cfg: MamlRLConfig, env: MetaEnv, policy: GaussianMLPPolicy, theta: dict[str, torch.Tensor],
                    method: str, seed: int, trained: int, goals: torch.Tensor, run: RunDir) -> dict[str, Any]:
    """The test protocol for one (method, seed), cached in ``checkpoints/{env}_eval_{method}_s{seed}.pt`` and
    recomputed when the policy was trained further since. Returns ``{"returns": (S + 1, G), "observations"?,
    "seconds"}``."""
    import time

    ck = _pair_checkpointer(run, f"{env.name}_eval_{method}_s{seed}", cfg)
    state = ck.load()
    if state is not None and int(state["trained"]) == trained:
        return state
    gen = torch.Generator().manual_seed(7919 * cfg.eval_seed + seed)  # the same noise for every method
    keep = cfg.show_goals if (env.name == "nav2d" and seed == cfg.seeds[0]) else 0
    t0 = time.perf_counter()
    result = evaluate_adaptation(env, policy, theta, goals, cfg.settings(), trajectories=cfg.eval_trajectories,
                                 steps=cfg.eval_steps, generator=gen, keep=min(keep, cfg.eval_goals))
    state = {"trained": trained, "returns": result["returns"], "seconds": time.perf_counter() - t0}
    if keep:
        state["observations"] = result["observations"]
    ck.save(state, step=trained, done=True)
    return state


def _per_iter(seconds: float, iterations: int) -> float | None:
    return seconds / iterations if iterations else None


def summarise(cfg: MamlRLConfig, evaluations: dict[tuple[str, str, int], dict[str, Any]],
              trainings: dict[tuple[str, str, int], dict[str, Any]]) -> dict[str, float | None]:
    """metrics.json: returns per (env, method, step), mean and 95% CI over seeds, and the timings."""
    metrics: dict[str, float | None] = {}
    for env in cfg.envs:
        for method in cfg.methods():
            prefix = env if method == "maml" else f"{env}_{method}"
            for k in range(cfg.eval_steps + 1):
                values = [float(evaluations[(env, method, s)]["returns"][k].mean()) for s in cfg.seeds]
                mean, ci = mean_confidence_interval(values)
                metrics[f"{prefix}_return_{k}step"] = mean
                metrics[f"{prefix}_return_{k}step_ci95"] = None if math.isnan(ci) else ci
    for method, key in (("maml", "maml_rl"), ("pretrained", "maml_rl_pretrain")):
        runs = [t for (_, m, _), t in trainings.items() if m == method]
        its = sum(t["iterations"] for t in runs)
        total = sum(sum(t["seconds"].values()) for t in runs)
        metrics[f"{key}_s_per_iter"] = _per_iter(total, its)
        if method == "maml":
            for phase in ("sampling", "inner", "trpo"):
                metrics[f"maml_rl_{phase}_s_per_iter"] = _per_iter(sum(t["seconds"].get(phase, 0.0) for t in runs), its)
    metrics["maml_rl_eval_s"] = sum(float(e["seconds"]) for e in evaluations.values())
    return metrics


def run(cfg: MamlRLConfig, run_dir: RunDir, ctx: RunContext) -> dict[str, float | None]:
    """The study's entry point (both doors: notebook 07 and ``python -m nbmodule run maml_rl``): train, evaluate,
    write the run folder files listed in this module's docstring and return the metrics."""
    device = torch.device(ctx.device)
    threads = int(getattr(ctx, "threads", 0) or torch.get_num_threads())
    methods = cfg.methods()
    trained_methods = [m for m in methods if m != "random"]
    total = len(cfg.envs) * len(cfg.seeds) * sum(cfg.training_iterations(m) for m in trained_methods)
    trainings: dict[tuple[str, str, int], dict[str, Any]] = {}
    evaluations: dict[tuple[str, str, int], dict[str, Any]] = {}
    evaluation_json: dict[str, Any] = {}
    trajectories: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    # every environment first, so a missing dependency (gymnasium, mujoco) fails before any training
    envs = {name: make_env(name, horizon=cfg.horizon, device=device, sampler=cfg.sampler, threads=threads)
            for name in cfg.envs}
    try:
        with progress_bar(total=total, desc="meta-training", enabled=ctx.progress) as bar:
            for env_name, env in envs.items():
                goals = env.sample_tasks(cfg.eval_goals, torch.Generator().manual_seed(cfg.eval_seed))
                for seed in cfg.seeds:
                    for method in methods:
                        policy = _initial_policy(env, cfg, seed, device)
                        if method == "random":
                            theta, trained = _params(policy), 0
                        else:
                            result = train_policy(cfg, env, policy, method, seed, run_dir, device=device, bar=bar)
                            trainings[(env_name, method, seed)] = result
                            rows.extend(result["rows"])
                            theta, trained = result["params"], result["iterations"]
                        evaluations[(env_name, method, seed)] = evaluate_policy(
                            cfg, env, policy, theta, method, seed, trained, goals, run_dir)
                evaluation_json[env_name] = {
                    "goals": goals.cpu().tolist(), "steps": cfg.eval_steps,
                    "lrs": evaluation_lrs(cfg.inner_lr, cfg.eval_steps),
                    "methods": {m: {str(s): evaluations[(env_name, m, s)]["returns"].tolist() for s in cfg.seeds}
                                for m in methods}}
                if env_name == "nav2d" and cfg.show_goals:
                    first = cfg.seeds[0]
                    trajectories = {"goals": goals[:cfg.show_goals].cpu().tolist(), "seed": first,
                                    "methods": {m: evaluations[("nav2d", m, first)]["observations"] for m in methods}}
    finally:
        for env in envs.values():
            close = getattr(env, "close", None)
            if close is not None:
                close()
    columns = list(dict.fromkeys(k for row in rows for k in row))  # MAML rows have more returns than pretraining's
    run_dir.write_curve("train", [{k: row.get(k, math.nan) for k in columns} for row in rows])
    run_dir.write_json("evaluation.json", evaluation_json)
    if trajectories:
        run_dir.write_json("trajectories.json", trajectories)
    return summarise(cfg, evaluations, trainings)
