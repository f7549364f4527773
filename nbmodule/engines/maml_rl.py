"""MAML for reinforcement learning (study ``maml_rl``, notebook 07): MAML-TRPO on 2D navigation and
HalfCheetah goal velocity / direction, against a pretrained and a randomly initialised policy.

    python -m nbmodule run maml_rl --config paper [seeds=[0] iterations=100] [--out runs]

For each environment in ``envs`` and each seed, the study

1. meta-trains a Gaussian MLP policy with MAML (:func:`nbmodule.rl.meta_iteration`): per iteration,
   ``meta_batch_size`` tasks, ``trajectories`` trajectories per task before and after ``inner_steps``
   REINFORCE steps of size ``inner_lr``, then one TRPO step (``max_kl``, conjugate gradient, line search)
   through the adaptation with the chosen ``estimator`` and ``hvp``;
2. trains the "pretrained" baseline (if in ``baselines``): the same policy from the same initialisation,
   trained with multi-task TRPO on the same task distribution without adaptation, on as many environment
   steps per iteration as MAML (``trajectories x (inner_steps + 1)`` trajectories per task: MAML samples
   before and after each inner step);
3. chooses each method's fine-tuning step on validation tasks: ``validation_goals`` tasks (drawn with seed
   ``eval_seed + 1``, not the test tasks) x ``eval_trajectories`` trajectories, for every ``alpha`` of the grid
   ``finetune_lrs`` (steps ``alpha`` then ``alpha / 2``, the paper's schedule), the one with the highest mean
   return after 1..``eval_steps`` steps (mean over seeds, goals and steps): the same grid, data and rule for
   every method, as MTML's learning-rate grid;
4. evaluates with the test protocol (:func:`nbmodule.rl.evaluate_adaptation`): ``eval_goals`` held-out tasks
   (fixed by ``eval_seed``, the same for every seed and method) x ``eval_trajectories`` trajectories, returns
   after 0..``eval_steps`` steps, fresh trajectories at each step: MAML under the paper's fixed step
   (``inner_lr`` then ``inner_lr / 2``: method ``maml``) and under its chosen step (``maml_tuned``), the
   pretrained policy and the random initialisation (``random``) under their chosen steps.

A return is the undiscounted sum of a trajectory's rewards over the horizon (a 2D-navigation trajectory ends
early when it reaches its goal, so its later rewards are 0), averaged over the trajectories and the goals:
the paper's measure. Each training loop is checkpointed (:class:`nbmodule.runs.Checkpointer`), so a re-run
on the same folder continues where an interrupted one stopped and ends with the same numbers.

Run folder (``<out>/07_maml_rl/``):

``metrics.json``
    per environment ``E`` and step ``k`` (means over seeds; ``_ci95``: half-width of the Student-t 95% interval
    over seeds, null with one seed): ``E_return_{k}step`` (MAML, the paper's fixed step),
    ``E_maml_tuned_return_{k}step`` (MAML, its step chosen on validation), ``E_maml_best_return_{k}step`` (the
    paper's model selection: each seed's MAML policy of the best training return, the paper's fixed step),
    ``E_pretrained_return_{k}step`` and
    ``E_random_return_{k}step`` (their steps chosen on validation), each with ``_ci95``;
    ``E_{method}_finetune_lr`` (the chosen ``alpha`` of ``maml``, ``pretrained``, ``random``); timings ``maml_rl_s_per_iter`` (one MAML meta-iteration,
    mean over environments and seeds) split into ``maml_rl_sampling_s_per_iter``, ``maml_rl_inner_s_per_iter``
    (advantages and adaptation) and ``maml_rl_trpo_s_per_iter``; ``maml_rl_pretrain_s_per_iter``;
    ``maml_rl_eval_s`` (test evaluations), ``maml_rl_validation_s`` (the step choice).
``curves/train.csv``
    ``run`` (``{env}_{method}``), ``seed``, ``iteration``, ``return_0step`` (mean return of the trajectories
    sampled before adaptation), ``return_1step`` .. (after each inner step; MAML only), ``loss_before``,
    ``loss_after`` (TRPO surrogate), ``kl`` (mean KL of the accepted step), ``backtracks``, ``accepted``,
    ``env_steps``; averaged over the ``log_every`` iterations up to ``iteration``. Rewritten at every
    checkpoint while the run trains (the rows so far), so a stopped run's folder holds its curve.
``evaluation.json``
    ``{env: {"protocol": "...", "goals": [[...]], "steps": S, "lrs": [...] (the paper's fixed schedule, method
    ``maml``), "finetune": {method: {"lr": alpha, "lrs": [...], "validation": {alpha: mean return}}},
    "methods": {method: {seed: [[return per goal] per step]}}, "best": {...}}}`` with methods ``maml``,
    ``maml_tuned``, ``maml_best``, ``pretrained``, ``random``; ``best`` says from which iteration each seed's
    ``maml_best`` policy comes (or why it was not evaluated).
``trajectories.json``
    2D navigation only: ``{"goals": [[x, y]...], "methods": {method: [[[[x, y] per time step] per
    trajectory] per goal] per step]}}`` for the first seed and ``show_goals`` goals.
``checkpoints/{env}_{method}_s{seed}.pt``, ``checkpoints/{env}_eval_{method}_s{seed}.pt``,
``checkpoints/{env}_val_{method}_s{seed}.pt``
    resume state of each training loop; the evaluation of a finished policy; its validation returns per step.

The figures and tables are in :mod:`nbmodule.viz.maml_rl`.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from ..config import StudyConfig
from ..metrics import mean_confidence_interval
from ..progress import progress_bar
from ..rl import GaussianMLPPolicy, MetaRLSettings, Timer, evaluate_adaptation, evaluation_lrs, make_env, meta_iteration
from ..rl.envs import ENV_NAMES, MetaEnv
from ..runs import ResumeError, RunContext, RunDir, check_finite, check_memory

__all__ = ["NAME", "NOTEBOOK", "Config", "MamlRLConfig", "METHODS", "EVALUATED", "run", "train_policy",
           "evaluate_policy", "validation_returns", "choose_finetune_lr", "summarise"]

NAME = "maml_rl"
NOTEBOOK = "07_maml_rl"
METHODS = ("maml", "pretrained", "random")
#: what the test protocol evaluates: ``maml`` under the paper's fixed step, everything else under its chosen step
EVALUATED = ("maml", "maml_tuned", "pretrained", "random")
_METHOD_SALT = {"maml": 1, "pretrained": 2}


class MamlRLConfig(StudyConfig):
    """Settings of the MAML-RL study; values in ``nbmodule/configs/maml_rl/*.yaml`` (``default.yaml``: all)."""

    STUDY: ClassVar[str] = NAME
    # budgets may grow, and a run folder may gain seeds, environments and baselines (one checkpoint per loop)
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"iterations", "pretrain_iterations", "seeds", "envs", "baselines"})
    NEUTRAL: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})

    envs: list[Literal["nav2d", "cheetah_vel", "cheetah_dir"]] = Field(min_length=1)  # task families, in turn
    seeds: list[Annotated[int, Field(ge=0, lt=2**31)]] = Field(min_length=1, max_length=100)  # one policy per seed (CIs over seeds)
    hidden: list[Annotated[int, Field(gt=0, le=4096)]] = Field(min_length=1, max_length=8)  # policy MLP widths
    horizon: int = Field(gt=0, le=100_000)                     # steps per trajectory
    meta_batch_size: int = Field(gt=0, le=10_000)             # tasks per meta-iteration
    trajectories: int = Field(gt=0, le=100_000)                # trajectories per task, before and after each inner step
    iterations: int = Field(ge=0, le=10_000_000)                  # MAML meta-iterations per (env, seed)
    inner_lr: float = Field(gt=0)                  # REINFORCE step size alpha (evaluation: alpha, then alpha/2)
    inner_steps: int = Field(ge=1, le=5)           # inner steps while meta-training
    estimator: Literal["maml", "lvc", "dice"]      # meta-gradient estimator (the inner loss's curvature)
    hvp: Literal["exact", "double_backward", "cheap"]  # TRPO curvature: exact (Fisher pull-back), the same by
    #                                                 double backprop (slower), or without the adaptation
    first_order: bool                              # FOMAML: no derivative through the inner update
    gamma: float = Field(gt=0, le=1)               # discount
    gae_lambda: float = Field(ge=0, le=1)          # GAE lambda (1: returns minus baseline)
    baseline_reg: float = Field(gt=0)              # ridge coefficient of the linear feature baseline
    max_kl: float = Field(gt=0)                    # TRPO trust region (mean KL)
    cg_iters: int = Field(ge=1, le=1000)                    # conjugate-gradient iterations
    cg_damping: float = Field(ge=0)                # damping added to the Hessian-vector product
    backtrack_ratio: float = Field(gt=0, lt=1)     # line search: step shrink factor ...
    max_backtracks: int = Field(ge=1, le=1000)              # ... and number of trials
    baselines: list[Literal["pretrained", "random"]]  # comparisons evaluated beside MAML
    pretrain_iterations: int = Field(ge=0, le=10_000_000)         # multi-task TRPO iterations of the pretrained policy
    eval_goals: int = Field(gt=0, le=100_000)                  # held-out tasks of the evaluation
    eval_trajectories: int = Field(gt=0, le=100_000)           # trajectories per held-out task and step
    eval_steps: int = Field(ge=0, le=10)           # adaptation steps evaluated (0..eval_steps)
    eval_seed: int = Field(ge=0, lt=2**31)                   # fixes the held-out tasks (the same for every seed)
    validation_goals: int = Field(gt=0, le=100_000)  # tasks choosing each method's fine-tuning step (eval_seed+1)
    finetune_lrs: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, max_length=20)  # grid of steps alpha
    show_goals: int = Field(ge=0, le=16)           # 2D navigation: goals whose trajectories are stored
    sampler: Literal["auto", "rollout", "vector"]  # HalfCheetah: mujoco.rollout or gymnasium SyncVectorEnv
    log_every: int = Field(gt=0, le=10_000_000)                   # training-curve row period (iterations, averaged)
    checkpoint_every: int = Field(gt=0, le=10_000_000)            # checkpoint period (iterations)

    @field_validator("envs", "seeds", "baselines", "finetune_lrs")
    @classmethod
    def _distinct(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"must not repeat an entry, got {v}")
        return v

    def settings(self) -> MetaRLSettings:
        return MetaRLSettings(
            meta_batch_size=self.meta_batch_size, trajectories=self.trajectories, inner_lr=self.inner_lr,
            inner_steps=self.inner_steps, estimator=self.estimator, hvp=self.hvp, first_order=self.first_order,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda, baseline_reg=self.baseline_reg, max_kl=self.max_kl, cg_iters=self.cg_iters,
            cg_damping=self.cg_damping, backtrack_ratio=self.backtrack_ratio, max_backtracks=self.max_backtracks)

    def methods(self) -> list[str]:
        return ["maml", *[m for m in METHODS[1:] if m in self.baselines]]

    def training_iterations(self, method: str) -> int:
        return {"maml": self.iterations, "pretrained": self.pretrain_iterations}.get(method, 0)

    def trajectories_per_task(self, method: str) -> int:
        """Trajectories per task and training iteration: MAML samples before and after each inner step, so
        the pretrained policy gets as many (the same environment steps per iteration)."""
        return self.trajectories if method == "maml" else self.trajectories * (self.inner_steps + 1)


Config = MamlRLConfig


def _initial_policy(env: MetaEnv, cfg: MamlRLConfig, seed: int, device: torch.device) -> GaussianMLPPolicy:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, tuple(cfg.hidden))
    return policy.to(device)


# A (env, method, seed) checkpoint does not depend on which other seeds, environments or baselines a run holds,
# nor (a training loop) on the evaluation's settings: evaluations store and check those themselves.
_EVAL_FIELDS = ("eval_goals", "eval_trajectories", "eval_steps", "eval_seed", "validation_goals", "finetune_lrs",
                "show_goals")
_PAIR_NEUTRAL = frozenset({"seeds", "envs", "baselines", *_EVAL_FIELDS})


def _pair_checkpointer(run: RunDir, name: str, cfg: MamlRLConfig) -> Any:
    return run.checkpointer(name, config=cfg, neutral=cfg.NEUTRAL | _PAIR_NEUTRAL)


def _params(policy: GaussianMLPPolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.named_parameters()}


def write_train_curve(run: RunDir, rows: list[dict[str, Any]]) -> None:
    """``curves/train.csv`` from the training rows so far (MAML rows have more returns than pretraining's)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    run.write_curve("train", [{k: row.get(k, math.nan) for k in columns} for row in rows])


def train_policy(cfg: MamlRLConfig, env: MetaEnv, policy: GaussianMLPPolicy, method: str, seed: int, run: RunDir,
                 *, device: torch.device, bar: Any = None, earlier_rows: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """Train ``method`` ("maml" or "pretrained") for one seed from ``policy``'s initial weights, resuming from
    ``checkpoints/{env}_{method}_s{seed}.pt``. Returns ``{"params", "rows", "seconds", "iterations", "best",
    "best_since"}``: ``best`` is ``{"params", "iteration", "score"}``, the policy of the iteration with the highest
    training return (after the inner steps; the first of equals), the paper's model selection (Finn et al. 2017,
    App. A.2: "the model with the best average return during training was used for evaluation"), looked for
    from iteration ``best_since`` on (1, unless the loop resumed from a checkpoint that did not track it).

    With ``earlier_rows`` (the rows of the loops this run finished before), every checkpoint also rewrites
    ``curves/train.csv`` with them and this loop's rows so far: a run stopped mid-way shows its learning curve."""
    total = cfg.training_iterations(method)
    inner_steps = cfg.inner_steps if method == "maml" else 0
    settings = replace(cfg.settings(), trajectories=cfg.trajectories_per_task(method))
    theta = _params(policy)
    gen = torch.Generator().manual_seed(1_000_003 * seed + 7919 * _METHOD_SALT[method] + 101 * ENV_NAMES.index(env.name))
    ck = _pair_checkpointer(run, f"{env.name}_{method}_s{seed}", cfg)
    state = ck.load()
    rows: list[dict[str, Any]] = []
    acc: dict[str, float] = {}
    best: dict[str, Any] | None = None
    best_since = 1
    timer = Timer(device)
    if state is not None:
        stored = state.get("trajectories_per_task", cfg.trajectories if method == "maml" else None)
        if stored != settings.trajectories:
            raise ResumeError(f"checkpoint {ck.path} was trained with {stored or cfg.trajectories} trajectories per "
                              f"task and iteration; this protocol gives {method} {settings.trajectories} (as many "
                              "environment steps as MAML). Delete it (or use a new run folder) to retrain it")
        theta = {k: v.to(device) for k, v in state["params"].items()}
        gen.set_state(state["generator"])
        rows, acc, timer.seconds = list(state["rows"]), dict(state["acc"]), dict(state["seconds"])
        best = state.get("best")
        best_since = int(state["best_since"]) if "best_since" in state else ck.step + 1  # an older checkpoint
    if bar is not None:
        bar.update(min(ck.step, total))

    def snapshot() -> dict[str, Any]:
        if earlier_rows is not None:
            write_train_curve(run, earlier_rows + rows)
        return {"params": {k: v.detach().cpu() for k, v in theta.items()}, "generator": gen.get_state(),
                "rows": rows, "acc": dict(acc), "seconds": dict(timer.seconds),
                "trajectories_per_task": settings.trajectories, "best": best, "best_since": best_since}

    run_name = f"{env.name}_{method}"
    for it in ck.steps(total, every=cfg.checkpoint_every, state=snapshot):
        previous = {k: v.detach().clone() for k, v in theta.items()}  # the policy this iteration samples with
        theta, stats, info = meta_iteration(env, policy, theta, settings, gen, timer, inner_steps=inner_steps)
        check_finite(info.loss_after, step=it, what=f"the TRPO surrogate ({run_name}, seed {seed})", run_dir=run)
        score = float(stats[f"return_{inner_steps}step"])  # the training return of the policy sampled this iteration
        if best is None or score > best["score"]:  # theta before this iteration's TRPO step sampled it
            best = {"params": {k: v.cpu() for k, v in previous.items()}, "iteration": it - 1,
                    "score": score}
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
    return {"params": theta, "rows": rows, "seconds": dict(timer.seconds), "iterations": total, "best": best,
            "best_since": best_since}


def _protocol(cfg: MamlRLConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in _EVAL_FIELDS} | {"inner_lr": cfg.inner_lr}


def evaluate_policy(cfg: MamlRLConfig, env: MetaEnv, policy: GaussianMLPPolicy, theta: dict[str, torch.Tensor],
                    method: str, seed: int, trained: int, goals: torch.Tensor, run: RunDir, lr: float
                    ) -> dict[str, Any]:
    """The test protocol for one (method, seed) with fine-tuning steps ``lr`` then ``lr / 2``, cached in
    ``checkpoints/{env}_eval_{method}_s{seed}.pt`` and recomputed when the policy was trained further since or
    the step or the protocol changed. Returns ``{"returns": (S + 1, G), "observations"?, "seconds"}``."""
    ck = _pair_checkpointer(run, f"{env.name}_eval_{method}_s{seed}", cfg)
    state = ck.load()
    if (state is not None and int(state["trained"]) == trained and state.get("lr") == lr
            and state.get("protocol") == _protocol(cfg)):
        return state
    gen = torch.Generator().manual_seed(7919 * cfg.eval_seed + seed)  # the same noise for every method
    keep = cfg.show_goals if (env.name == "nav2d" and seed == cfg.seeds[0]) else 0
    t0 = time.perf_counter()
    result = evaluate_adaptation(env, policy, theta, goals, replace(cfg.settings(), inner_lr=lr),
                                 trajectories=cfg.eval_trajectories, steps=cfg.eval_steps, generator=gen,
                                 keep=min(keep, cfg.eval_goals))
    state = {"trained": trained, "lr": lr, "protocol": _protocol(cfg), "returns": result["returns"],
             "seconds": time.perf_counter() - t0}
    if keep:
        state["observations"] = result["observations"]
    ck.save(state, step=trained, done=True)
    return state


def validation_returns(cfg: MamlRLConfig, env: MetaEnv, policy: GaussianMLPPolicy, theta: dict[str, torch.Tensor],
                       method: str, seed: int, trained: int, goals: torch.Tensor, run: RunDir) -> dict[str, Any]:
    """Returns on the validation tasks after 0..S steps for every ``alpha`` of ``finetune_lrs`` (the same noise
    for every alpha and method), cached in ``checkpoints/{env}_val_{method}_s{seed}.pt``. Returns
    ``{"returns": {alpha: (S + 1, G)}, "seconds"}``."""
    ck = _pair_checkpointer(run, f"{env.name}_val_{method}_s{seed}", cfg)
    state = ck.load()
    if state is not None and int(state["trained"]) == trained and state.get("protocol") == _protocol(cfg):
        return state
    t0 = time.perf_counter()
    returns = {}
    for lr in cfg.finetune_lrs:
        gen = torch.Generator().manual_seed(7919 * (cfg.eval_seed + 1) + seed)
        returns[repr(float(lr))] = evaluate_adaptation(
            env, policy, theta, goals, replace(cfg.settings(), inner_lr=lr), trajectories=cfg.eval_trajectories,
            steps=cfg.eval_steps, generator=gen)["returns"]
    state = {"trained": trained, "protocol": _protocol(cfg), "returns": returns, "seconds": time.perf_counter() - t0}
    ck.save(state, step=trained, done=True)
    return state


def choose_finetune_lr(cfg: MamlRLConfig, per_seed: list[dict[str, torch.Tensor]]) -> tuple[float, dict[str, float]]:
    """The grid's ``alpha`` with the highest validation return after 1..S steps (mean over seeds, goals and
    steps; the first of equals); ``inner_lr`` when ``eval_steps`` is 0 (nothing is fine-tuned). Returns
    ``(alpha, {alpha: that mean})``."""
    if cfg.eval_steps == 0:
        return cfg.inner_lr, {}
    scores = {key: float(torch.stack([r[key][1:].mean() for r in per_seed]).mean()) for key in per_seed[0]}
    best = max(scores, key=lambda key: scores[key])  # dicts keep the grid's order: ties go to the first
    return float(best), scores


_PROTOCOL = ("returns after 0..steps policy-gradient steps on the held-out goals, fresh trajectories at each step; "
             "method 'maml': the paper's fixed steps 'lrs' (inner_lr, then inner_lr / 2); 'maml_tuned', "
             "'pretrained', 'random': steps finetune[method]['lrs'], alpha chosen from the grid finetune_lrs by the "
             "highest mean validation return after 1..steps steps (validation_goals, seed eval_seed + 1), the same "
             "rule for every method; the pretrained policy trained on as many environment steps per iteration as "
             "MAML")


def _per_iter(seconds: float, iterations: int) -> float | None:
    return seconds / iterations if iterations else None


def _evaluated(cfg: MamlRLConfig) -> list[str]:
    return [m for m in EVALUATED if m.removesuffix("_tuned") in cfg.methods()]


def _variants(cfg: MamlRLConfig, evaluations: dict[tuple[str, str, int], Any], env: str) -> list[str]:
    """The evaluated methods of ``env``: :func:`_evaluated`, then ``maml_best`` where it was evaluated."""
    return _evaluated(cfg) + (["maml_best"] if (env, "maml_best", cfg.seeds[0]) in evaluations else [])


def _evaluate_best(cfg: MamlRLConfig, env: MetaEnv, policies: dict[tuple[str, int], Any],
                   trainings: dict[tuple[str, str, int], dict[str, Any]], goals: torch.Tensor, run: RunDir,
                   evaluations: dict[tuple[str, str, int], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """The paper's model selection (App. A.2): each seed's MAML policy of the best training return, evaluated
    under the paper's fixed steps as method ``maml_best`` (into ``evaluations``). Returns the
    ``evaluation.json`` block saying which iteration each seed's policy comes from, or why none was evaluated
    (a loop resumed from a checkpoint of a version that did not track it); empty without MAML training."""
    if cfg.training_iterations("maml") == 0:
        return {}
    runs = {seed: trainings[(env.name, "maml", seed)] for seed in cfg.seeds}
    late = {seed: r["best_since"] for seed, r in runs.items() if r["best_since"] != 1 or r["best"] is None}
    # a loop resumed from a checkpoint of an earlier version tracked the best only from then on: its selection
    # is still exact when the training curve (one row per iteration) shows no earlier iteration above it
    proven = {}
    for seed, since in late.items():
        earlier = [float(row[f"return_{cfg.inner_steps}step"]) for row in runs[seed]["rows"]
                   if int(row["iteration"]) < since]
        if cfg.log_every == 1 and runs[seed]["best"] is not None and len(earlier) == since - 1 \
                and max(earlier, default=-math.inf) < runs[seed]["best"]["score"]:
            proven[seed] = max(earlier, default=-math.inf)
    late = {seed: since for seed, since in late.items() if seed not in proven}
    if late:
        return {"evaluated": False,
                "why": "the best training return was tracked only from iteration " + ", ".join(
                    f"{since} for seed {seed}" for seed, since in late.items()) + " (a checkpoint of an earlier "
                    "version of this study) and the training curve does not rule out an earlier, better iteration; "
                    "retrain those loops in a new run folder to evaluate it"}
    for seed, r in runs.items():
        params = {k: v.to(device) for k, v in r["best"]["params"].items()}
        evaluations[(env.name, "maml_best", seed)] = evaluate_policy(
            cfg, env, policies[("maml", seed)][0], params, "maml_best", seed, int(r["best"]["iteration"]), goals,
            run, cfg.inner_lr)
    return {"evaluated": True, "selection": "Finn et al. 2017, App. A.2: the policy of the highest training "
            "return (after the inner step, the meta-batch's tasks) over the whole training; evaluated under the "
            "paper's fixed steps 'lrs'",
            "iterations": {str(seed): int(r["best"]["iteration"]) for seed, r in runs.items()},
            "training_returns": {str(seed): float(r["best"]["score"]) for seed, r in runs.items()},
            **({"tracked_from": {str(seed): runs[seed]["best_since"] for seed in proven},
                "best_before_tracking": {str(seed): value for seed, value in proven.items()}} if proven else {})}


def summarise(cfg: MamlRLConfig, evaluations: dict[tuple[str, str, int], dict[str, Any]],
              trainings: dict[tuple[str, str, int], dict[str, Any]],
              validations: dict[tuple[str, str, int], dict[str, Any]] | None = None,
              finetune_lrs: dict[tuple[str, str], float] | None = None) -> dict[str, float | None]:
    """metrics.json: returns per (env, evaluated method, step), mean and 95% CI over seeds, the chosen
    fine-tuning steps and the timings."""
    metrics: dict[str, float | None] = {}
    for env in cfg.envs:
        for method in _variants(cfg, evaluations, env):
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
    metrics["maml_rl_validation_s"] = sum(float(v["seconds"]) for v in (validations or {}).values())
    for (env, method), lr in (finetune_lrs or {}).items():
        metrics[f"{env}_{method}_finetune_lr"] = lr
    return metrics


def estimate_memory(cfg: MamlRLConfig, envs: dict[str, MetaEnv]) -> float:
    """Bytes of one meta-iteration's rollouts and graph, estimated before training: per time step of every
    trajectory of every task and adaptation step, the observation, action, reward/advantage/return/log-prob
    values and the policy's activations kept for the meta-gradient (3 per hidden unit), in float32."""
    dims = max(e.obs_dim + e.act_dim for e in envs.values())
    per_step = 4 * (dims + 6 + 3 * sum(cfg.hidden))
    steps = cfg.horizon * (cfg.inner_steps + 1) * max(cfg.meta_batch_size * cfg.trajectories,
                                                      cfg.eval_goals * cfg.eval_trajectories)
    return float(per_step * steps)


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
    check_memory(estimate_memory(cfg, envs), device=device, hint="lower meta_batch_size, trajectories or horizon",
                 what=f"meta_batch_size={cfg.meta_batch_size} x {cfg.trajectories} trajectories x horizon {cfg.horizon}")
    validations: dict[tuple[str, str, int], dict[str, Any]] = {}
    chosen: dict[tuple[str, str], float] = {}
    try:
        with progress_bar(total=total, desc="meta-training", enabled=ctx.progress) as bar:
            for env_name, env in envs.items():
                goals = env.sample_tasks(cfg.eval_goals, torch.Generator().manual_seed(cfg.eval_seed))
                val_goals = env.sample_tasks(cfg.validation_goals, torch.Generator().manual_seed(cfg.eval_seed + 1))
                policies: dict[tuple[str, int], tuple[GaussianMLPPolicy, dict[str, torch.Tensor], int]] = {}
                for seed in cfg.seeds:
                    for method in methods:
                        policy = _initial_policy(env, cfg, seed, device)
                        if method == "random":
                            theta, trained = _params(policy), 0
                        else:
                            result = train_policy(cfg, env, policy, method, seed, run_dir, device=device, bar=bar,
                                                  earlier_rows=rows)
                            trainings[(env_name, method, seed)] = result
                            rows.extend(result["rows"])
                            theta, trained = result["params"], result["iterations"]
                        policies[(method, seed)] = (policy, theta, trained)
                        validations[(env_name, method, seed)] = validation_returns(
                            cfg, env, policy, theta, method, seed, trained, val_goals, run_dir)
                finetune: dict[str, Any] = {}
                for method in methods:  # one step per method, chosen on the validation tasks over all seeds
                    lr, scores = choose_finetune_lr(cfg, [validations[(env_name, method, s)]["returns"]
                                                          for s in cfg.seeds])
                    chosen[(env_name, method)] = lr
                    finetune[method] = {"lr": lr, "lrs": evaluation_lrs(lr, cfg.eval_steps), "validation": scores}
                for variant in _evaluated(cfg):
                    method = variant.removesuffix("_tuned")
                    lr = cfg.inner_lr if variant == "maml" else chosen[(env_name, method)]
                    for seed in cfg.seeds:
                        if variant == "maml_tuned" and lr == cfg.inner_lr:  # the chosen step is the paper's
                            evaluations[(env_name, variant, seed)] = {**evaluations[(env_name, "maml", seed)],
                                                                      "seconds": 0.0}
                            continue
                        policy, theta, trained = policies[(method, seed)]
                        evaluations[(env_name, variant, seed)] = evaluate_policy(
                            cfg, env, policy, theta, variant, seed, trained, goals, run_dir, lr)
                best = _evaluate_best(cfg, env, policies, trainings, goals, run_dir, evaluations, device)
                evaluation_json[env_name] = {
                    "protocol": _PROTOCOL, "goals": goals.cpu().tolist(), "steps": cfg.eval_steps,
                    "lrs": evaluation_lrs(cfg.inner_lr, cfg.eval_steps), "finetune": finetune,
                    "validation_goals": val_goals.cpu().tolist(),
                    "methods": {m: {str(s): evaluations[(env_name, m, s)]["returns"].tolist() for s in cfg.seeds}
                                for m in _variants(cfg, evaluations, env_name)}}
                if best:
                    evaluation_json[env_name]["best"] = best
                if env_name == "nav2d" and cfg.show_goals:
                    first = cfg.seeds[0]
                    trajectories = {"goals": goals[:cfg.show_goals].cpu().tolist(), "seed": first,
                                    "methods": {m: evaluations[("nav2d", m, first)]["observations"]
                                                for m in _evaluated(cfg)}}
    finally:
        for env in envs.values():
            close = getattr(env, "close", None)
            if close is not None:
                close()
    write_train_curve(run_dir, rows)
    run_dir.write_json("evaluation.json", evaluation_json)
    if trajectories:
        run_dir.write_json("trajectories.json", trajectories)
    return summarise(cfg, evaluations, trainings, validations, chosen)
