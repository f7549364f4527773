"""MAML-RL: seconds per meta-iteration at the paper's settings, the new TRPO step against the old one in the same
process, split into sampling, inner update and TRPO; HalfCheetah at the paper's batch.

- 2D navigation, the paper's policy (100 x 100 ReLU) and batch (20 tasks x 20 trajectories x 100 steps), one
  inner step: whole meta-iterations with ``hvp: exact`` (the KL's Hessian as the Fisher pull-back through the
  inner update, :mod:`nbmodule.rl.fisher`) against ``hvp: double_backward`` (the same matrix by double
  backpropagation: the step this project had, which costs what tristandeleu/pytorch-maml-rl's does),
  interleaved round by round from the same parameters and generator state (the same tasks and samples, so
  the two TRPO steps solve the same problem; their updates are compared), at 1 and 2 torch threads;
- the reference, recorded, not rerun: tristandeleu/pytorch-maml-rl took 11.4-11.8 s per meta-iteration in
  the same setting (100 x 100 ReLU, 20 x 20 x 100, one sampler worker, one torch thread, exact
  Hessian-vector product), measured side by side with this project on this 2-core machine in 2026-12
  (issue 20). It is an external measurement: our figure is compared with it in the notes only;
- sampling: the engine's stacked per-task weights (``baddbmm``) against ``vmap(functional_call)`` over the
  tasks (measured: about 2x slower for this rollout); inner update: one backward pass through the parameters
  expanded over tasks against a per-task ``autograd.grad`` loop (the same numbers, checked before timing);
- HalfCheetah Vel at the paper's batch (40 tasks x 20 trajectories x 200 steps: 320 000 environment steps per
  meta-iteration, pre- and post-update), ``mujoco.rollout`` over every state on a pool of 2 threads, torch on
  2 threads, ``hvp: exact`` on 160 000 samples: one meta-iteration after a small warm-up, its phases, and
  environment steps per second per core; and ``mujoco.rollout`` against gymnasium's ``SyncVectorEnv``.

The 1-minute load average is recorded before and after: the machine is shared, and absolute times measured
under load are slower (ratios, interleaved, less so).

    python benchmarks/bench_maml_rl.py [--quick]
"""
from __future__ import annotations

import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch.func import functional_call, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbmodule.profiling import BenchResults, median_seconds, torch_threads  # noqa: E402
from nbmodule.rl import (GaussianMLPPolicy, MetaRLSettings, Nav2D, Timer, adapt, compute_advantages,  # noqa: E402
                         expand_params, meta_iteration, sample_trajectories)
from nbmodule.rl.maml import inner_loss, policy_log_prob  # noqa: E402
from nbmodule.rl.trpo import flatten  # noqa: E402

REFERENCE = "tristandeleu/pytorch-maml-rl: 11.4-11.8 s per meta-iteration (issue 20, 2026-12, this machine, 1 thread)"
PHASES = ("sampling", "inner", "trpo")


def _sample_vmap(env, policy, params, tasks, n_traj, generator):
    """The baseline sampler: the same loop, with ``vmap(functional_call)`` over per-task weights."""
    def one_task(p, obs):
        return functional_call(policy, p, (obs,))[0]

    batched = vmap(one_task)
    t = tasks.shape[0]
    obs = env.reset(tasks, n_traj, generator)
    log_std = params["log_std"].unsqueeze(1)
    with torch.no_grad():
        for _ in range(env.horizon):
            mean = batched(params, obs)
            action = mean + torch.exp(log_std) * torch.randn(mean.shape, generator=generator)
            obs, _, _ = env.step(action)
    return t


def _adapt_loop(policy, theta, batch, adv, lr):
    """The baseline inner update: one ``autograd.grad`` per task."""
    out = []
    for i in range(batch.shape[0]):
        one = type(batch)(batch.obs[i:i + 1], batch.actions[i:i + 1], batch.rewards[i:i + 1], batch.mask[i:i + 1],
                          batch.tasks[i:i + 1])
        p = {k: v.unsqueeze(0).detach().requires_grad_() for k, v in theta.items()}
        logp, _, _ = policy_log_prob(policy, p, one)
        grads = torch.autograd.grad(inner_loss(logp, adv[i:i + 1], one.mask).sum(), list(p.values()))
        out.append({k: (v - lr * g).detach() for (k, v), g in zip(p.items(), grads)})
    return {k: torch.cat([o[k] for o in out]) for k in theta}


def _interleaved_iterations(env, policy, theta, settings, modes, repeats, seed=123):
    """Per mode, the median seconds of each phase over ``repeats`` meta-iterations from ``theta``, the modes
    alternating (order rotating each round); every iteration draws the same tasks and samples. Also the
    largest relative difference between the modes' updates."""
    seconds = {m: {p: [] for p in PHASES} for m in modes}
    updates = {}
    for r in range(repeats):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for mode in order:
            timer = Timer()
            new, _, _ = meta_iteration(env, policy, theta, replace(settings, hvp=mode),
                                       torch.Generator().manual_seed(seed), timer)
            for p in PHASES:
                seconds[mode][p].append(timer.seconds.get(p, 0.0))
            updates[mode] = flatten(new) - flatten(theta)
    medians = {m: {p: statistics.median(v) for p, v in seconds[m].items()} for m in modes}
    ref = updates[modes[-1]]
    diff = max(float((updates[m] - ref).norm() / ref.norm().clamp(min=1e-30)) for m in modes)
    return medians, diff


def _cheetah_steps_per_s(sampler: str, tasks: int, traj: int, horizon: int, repeats: int, threads: int) -> float:
    from nbmodule.rl.cheetah import HalfCheetahTasks

    env = HalfCheetahTasks("vel", horizon=horizon, sampler=sampler, threads=threads)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6)
    params = expand_params({k: v.detach() for k, v in policy.named_parameters()}, tasks)
    g = torch.Generator().manual_seed(0)
    goals = env.sample_tasks(tasks, g)
    seconds = median_seconds(lambda: sample_trajectories(env, policy, params, goals, traj, g), repeats=repeats,
                             warmup=1)
    env.close()
    return tasks * traj * horizon / seconds


def _cheetah_iteration(tasks: int, traj: int, horizon: int, threads: int) -> dict[str, float]:
    """One HalfCheetah Vel meta-iteration (after a small warm-up): seconds per phase and environment steps."""
    from nbmodule.rl.cheetah import HalfCheetahTasks

    env = HalfCheetahTasks("vel", horizon=horizon, sampler="rollout", threads=threads)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    g = torch.Generator().manual_seed(0)
    small = MetaRLSettings(meta_batch_size=2, trajectories=2, hvp="exact")
    meta_iteration(env, policy, theta, small, g)  # warm-up: thread pool, allocator
    timer = Timer()
    _, stats, _ = meta_iteration(env, policy, theta, MetaRLSettings(meta_batch_size=tasks, trajectories=traj,
                                                                    hvp="exact"), g, timer)
    env.close()
    return {**{p: timer.seconds.get(p, 0.0) for p in PHASES}, "env_steps": stats["env_steps"]}


def run(quick: bool = False) -> BenchResults:
    with torch_threads(1):  # each measurement sets its own thread count; this is the default between them
        return _run(quick)


def _run(quick: bool) -> BenchResults:
    load_before = os.getloadavg()[0]
    tasks, traj, horizon = (4, 4, 20) if quick else (20, 20, 100)
    repeats = 1 if quick else 3
    torch.manual_seed(0)
    env = Nav2D(horizon=horizon)
    policy = GaussianMLPPolicy(2, 2)  # the paper's 100 x 100 ReLU policy
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    g = torch.Generator().manual_seed(0)
    goals = env.sample_tasks(tasks, g)
    settings = MetaRLSettings(meta_batch_size=tasks, trajectories=traj, hvp="exact")

    # a realistic state: a few meta-iterations in, so per-task weights differ and trajectories vary
    for _ in range(1 if quick else 3):
        theta, _, _ = meta_iteration(env, policy, theta, settings, g)
    res = BenchResults({"maml_rl_threads": 1})

    modes = ["double_backward", "exact"]
    for threads in (1,) if quick else (1, 2):  # quick (the test suite's run): one thread only
        suffix = "" if threads == 1 else "_2threads"
        with torch_threads(threads):
            medians, diff = _interleaved_iterations(env, policy, theta, settings, modes, repeats)
        for mode in modes:
            name = "" if mode == "exact" else "_double_backward"
            for p in PHASES:
                res[f"maml_rl_nav2d{name}_{p}_s_per_iter{suffix}"] = medians[mode][p]
            res[f"maml_rl_nav2d{name}_s_per_iter{suffix}"] = sum(medians[mode].values())
        res[f"maml_rl_nav2d_update_rel_diff{suffix}"] = diff
        res.ratio(f"maml_rl_nav2d_trpo_speedup{suffix}", f"maml_rl_nav2d_double_backward_trpo_s_per_iter{suffix}",
                  f"maml_rl_nav2d_trpo_s_per_iter{suffix}")
        res.ratio(f"maml_rl_nav2d_iteration_speedup{suffix}", f"maml_rl_nav2d_double_backward_s_per_iter{suffix}",
                  f"maml_rl_nav2d_s_per_iter{suffix}")
        m = medians["exact"]
        print(f"[maml_rl] 2D navigation {tasks}x{traj}x{horizon}, 100x100 policy, {threads} thread(s): "
              f"{sum(m.values()):.2f} s per meta-iteration (sampling {m['sampling']:.3f} + inner {m['inner']:.3f} + "
              f"TRPO {m['trpo']:.2f}) vs double backward {res[f'maml_rl_nav2d_double_backward_s_per_iter{suffix}']:.2f} "
              f"s (TRPO {res[f'maml_rl_nav2d_double_backward_trpo_s_per_iter{suffix}']:.2f}): TRPO "
              f"{res[f'maml_rl_nav2d_trpo_speedup{suffix}']:.2f}x, iteration "
              f"{res[f'maml_rl_nav2d_iteration_speedup{suffix}']:.2f}x; updates differ by {diff:.1e} (float32)")
    print(f"[maml_rl] recorded reference: {REFERENCE}; ours at 1 thread: {res['maml_rl_nav2d_s_per_iter']:.2f} s")

    # sampling and inner update against their per-task baselines (1 thread)
    with torch_threads(1):
        pre = sample_trajectories(env, policy, expand_params(theta, tasks), goals, traj, g)
        adv = compute_advantages(pre)
        adapted = adapt(policy, theta, pre, adv, 0.1)
        looped = _adapt_loop(policy, theta, pre, adv, 0.1)
        for k in theta:
            if not torch.allclose(adapted[k], looped[k], atol=1e-5):
                raise AssertionError(f"batched and looped inner updates disagree on {k}")
        reps = 2 if quick else 5
        res["maml_rl_nav2d_rollout_s"] = median_seconds(
            lambda: sample_trajectories(env, policy, adapted, goals, traj, g), repeats=reps)
        res["maml_rl_nav2d_rollout_vmap_s"] = median_seconds(
            lambda: _sample_vmap(env, policy, adapted, goals, traj, g), repeats=reps)
        res["maml_rl_nav2d_inner_update_s"] = median_seconds(
            lambda: adapt(policy, theta, pre, compute_advantages(pre), 0.1), repeats=reps)
        res["maml_rl_nav2d_inner_update_loop_s"] = median_seconds(
            lambda: _adapt_loop(policy, theta, pre, compute_advantages(pre), 0.1), repeats=reps)
    res.ratio("maml_rl_nav2d_rollout_speedup", "maml_rl_nav2d_rollout_vmap_s", "maml_rl_nav2d_rollout_s")
    res.ratio("maml_rl_nav2d_inner_update_speedup", "maml_rl_nav2d_inner_update_loop_s", "maml_rl_nav2d_inner_update_s")
    print(f"[maml_rl] rollout with stacked weights {res['maml_rl_nav2d_rollout_s'] * 1e3:.1f} ms vs vmap(functional_call) "
          f"{res['maml_rl_nav2d_rollout_vmap_s'] * 1e3:.1f} ms -> {res['maml_rl_nav2d_rollout_speedup']:.1f}x; inner "
          f"update {res['maml_rl_nav2d_inner_update_speedup']:.1f}x the per-task loop")

    try:
        from nbmodule.rl.cheetah import available_samplers
        samplers = available_samplers()
    except ImportError:
        samplers = ()
    cheetah_note = "not measured (needs gymnasium and mujoco >= 3.1)"
    if "rollout" in samplers:
        c_tasks, c_traj, c_h = (2, 2, 10) if quick else (8, 10, 100)
        # mujoco.rollout's pool gets the machine's 2 cores; torch stays on 1 thread here (its OpenMP workers
        # spinning beside the pool make both many times slower)
        rollout = _cheetah_steps_per_s("rollout", c_tasks, c_traj, c_h, 2 if quick else 5, threads=2)
        vector = _cheetah_steps_per_s("vector", c_tasks, c_traj, c_h, 2 if quick else 5, threads=1)
        res.update({"maml_rl_cheetah_rollout_steps_per_s": rollout, "maml_rl_cheetah_vector_steps_per_s": vector})
        res.ratio("maml_rl_cheetah_rollout_speedup", "maml_rl_cheetah_rollout_steps_per_s",
                  "maml_rl_cheetah_vector_steps_per_s")
        b_tasks, b_traj, b_h = (2, 2, 20) if quick else (40, 20, 200)
        with torch_threads(2):
            it = _cheetah_iteration(b_tasks, b_traj, b_h, threads=2)
        res.update({f"maml_rl_cheetah_vel_{p}_s_per_iter": it[p] for p in PHASES})
        res["maml_rl_cheetah_vel_s_per_iter"] = sum(it[p] for p in PHASES)
        res["maml_rl_cheetah_vel_env_steps_per_s_per_core"] = it["env_steps"] / it["sampling"] / 2
        cheetah_note = (f"HalfCheetah Vel, {b_tasks} tasks x {b_traj} trajectories x {b_h} steps "
                        f"({int(it['env_steps'])} environment steps), torch 2 threads + mujoco.rollout pool of 2, "
                        "hvp exact, one meta-iteration after a 2 x 2 warm-up; steps/s/core = environment steps / "
                        "sampling seconds (policy included) / 2 cores")
        print(f"[maml_rl] {cheetah_note}: {res['maml_rl_cheetah_vel_s_per_iter']:.1f} s per meta-iteration = sampling "
              f"{it['sampling']:.1f} + inner {it['inner']:.1f} + TRPO {it['trpo']:.1f}; "
              f"{res['maml_rl_cheetah_vel_env_steps_per_s_per_core']:.0f} environment steps/s/core; rollout sampler "
              f"{rollout / vector:.1f}x SyncVectorEnv")
    load_after = os.getloadavg()[0]
    res["maml_rl_load_before"], res["maml_rl_load_after"] = load_before, load_after
    res.notes["maml_rl"] = (
        f"2D navigation {tasks} tasks x {traj} trajectories x {horizon} steps, 100x100 ReLU policy, CPU, synthetic "
        f"environment; whole meta-iterations, hvp exact (Fisher pull-back) vs double_backward (the old step) "
        f"interleaved {repeats} rounds on the same samples, medians per phase, at 1 and 2 torch threads "
        f"(keys *_2threads). External reference, not rerun: {REFERENCE}. {cheetah_note}. 1-minute load average "
        f"{load_before:.2f} before, {load_after:.2f} after (2 cores, shared machine).")
    return res


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for k, v in out.items():
        print(f"{k}: {v:.6g}")
    for k, v in out.notes.items():
        print(f"note {k}: {v}")
