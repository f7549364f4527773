"""MAML-RL: seconds per meta-iteration on 2D navigation, split into sampling, inner update and TRPO, each
against a baseline timed in the same process; HalfCheetah environment steps per second with each sampler.

- sampling (20 tasks x 20 trajectories x 100 steps, per-task weights after adaptation): the engine's stacked
  weights with ``baddbmm`` against ``vmap(functional_call)`` over the tasks (a measured prototype found the
  latter about 16x slower);
- inner update (linear baseline, advantages, one REINFORCE step for every task): one backward pass through
  the parameters expanded over tasks against a loop of per-task ``autograd.grad`` calls (the same numbers,
  checked before timing);
- TRPO step (10 CG iterations, line search): the exact Hessian-vector product through the adaptation against
  the cheap one (adaptation Jacobian taken as the identity);
- HalfCheetah (gymnasium HalfCheetah-v5 + mujoco): ``mujoco.rollout`` (a pool of 2 threads) over every (task,
  trajectory) state in one call per step against gymnasium's ``SyncVectorEnv``, environment steps per second
  including the policy (torch on 1 thread).

    python benchmarks/bench_maml_rl.py [--quick]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.func import functional_call, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbmodule.profiling import BenchResults, median_seconds, torch_threads  # noqa: E402
from nbmodule.rl import (GaussianMLPPolicy, MetaRLSettings, Nav2D, Timer, adapt, compute_advantages,  # noqa: E402
                         expand_params, meta_iteration, sample_trajectories)
from nbmodule.rl.maml import (MetaBatch, StepData, cheap_curvature, inner_loss, meta_objective,  # noqa: E402
                              policy_log_prob, record_old_policy)
from nbmodule.rl.trpo import trpo_step  # noqa: E402


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


def run(quick: bool = False) -> BenchResults:
    with torch_threads(1):  # fixed: the comparison must not depend on the machine's load balancing
        return _run(quick)


def _run(quick: bool) -> BenchResults:
    tasks, traj, horizon = (4, 4, 20) if quick else (20, 20, 100)
    repeats = 2 if quick else 5
    torch.manual_seed(0)
    env = Nav2D(horizon=horizon)
    policy = GaussianMLPPolicy(2, 2)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    g = torch.Generator().manual_seed(0)
    goals = env.sample_tasks(tasks, g)
    settings = MetaRLSettings(meta_batch_size=tasks, trajectories=traj)

    # a realistic state: a few meta-iterations in, so per-task weights differ and trajectories vary
    for _ in range(1 if quick else 3):
        theta, _, _ = meta_iteration(env, policy, theta, settings, g)
    pre = sample_trajectories(env, policy, expand_params(theta, tasks), goals, traj, g)
    adv = compute_advantages(pre)
    adapted = adapt(policy, theta, pre, adv, 0.1)
    looped = _adapt_loop(policy, theta, pre, adv, 0.1)
    for k in theta:
        if not torch.allclose(adapted[k], looped[k], atol=1e-5):
            raise AssertionError(f"batched and looped inner updates disagree on {k}")

    t_sample = median_seconds(lambda: sample_trajectories(env, policy, adapted, goals, traj, g), repeats=repeats)
    t_sample_vmap = median_seconds(lambda: _sample_vmap(env, policy, adapted, goals, traj, g), repeats=repeats)
    t_inner = median_seconds(lambda: adapt(policy, theta, pre, compute_advantages(pre), 0.1), repeats=repeats)
    t_inner_loop = median_seconds(lambda: _adapt_loop(policy, theta, pre, compute_advantages(pre), 0.1),
                                  repeats=repeats)

    post = sample_trajectories(env, policy, adapted, goals, traj, g)
    mb = record_old_policy(policy, adapted, MetaBatch([StepData(pre, adv)], StepData(post, compute_advantages(post)),
                                                      [0.1]))
    objective = meta_objective(policy, mb, "maml")
    trpo_reps = 1 if quick else 3
    t_trpo = median_seconds(lambda: trpo_step(theta, objective), repeats=trpo_reps, warmup=0)
    t_trpo_cheap = median_seconds(lambda: trpo_step(theta, objective, curvature=cheap_curvature(policy, mb)),
                                  repeats=trpo_reps, warmup=0)

    timer = Timer()
    iters = 1 if quick else 3
    for _ in range(iters):
        theta, _, _ = meta_iteration(env, policy, theta, settings, g, timer)
    split = {phase: timer.seconds.get(phase, 0.0) / iters for phase in ("sampling", "inner", "trpo")}

    res = BenchResults({
        "maml_rl_threads": torch.get_num_threads(),
        "maml_rl_nav2d_s_per_iter": sum(split.values()),
        "maml_rl_nav2d_sampling_s_per_iter": split["sampling"],
        "maml_rl_nav2d_inner_s_per_iter": split["inner"],
        "maml_rl_nav2d_trpo_s_per_iter": split["trpo"],
        "maml_rl_nav2d_rollout_s": t_sample,
        "maml_rl_nav2d_rollout_vmap_s": t_sample_vmap,
        "maml_rl_nav2d_inner_update_s": t_inner,
        "maml_rl_nav2d_inner_update_loop_s": t_inner_loop,
        "maml_rl_nav2d_trpo_exact_s": t_trpo,
        "maml_rl_nav2d_trpo_cheap_s": t_trpo_cheap,
    })
    res.ratio("maml_rl_nav2d_rollout_speedup", "maml_rl_nav2d_rollout_vmap_s", "maml_rl_nav2d_rollout_s")
    res.ratio("maml_rl_nav2d_inner_update_speedup", "maml_rl_nav2d_inner_update_loop_s", "maml_rl_nav2d_inner_update_s")
    res.ratio("maml_rl_nav2d_trpo_exact_over_cheap_ratio", "maml_rl_nav2d_trpo_exact_s", "maml_rl_nav2d_trpo_cheap_s")
    print(f"[maml_rl] 2D navigation, {tasks} tasks x {traj} trajectories x {horizon} steps, 1 thread: "
          f"{res['maml_rl_nav2d_s_per_iter']:.2f} s per meta-iteration = sampling {split['sampling']:.3f} + inner "
          f"{split['inner']:.3f} + TRPO {split['trpo']:.2f}")
    print(f"[maml_rl] rollout with stacked weights {t_sample * 1e3:.1f} ms vs vmap(functional_call) "
          f"{t_sample_vmap * 1e3:.1f} ms -> {res['maml_rl_nav2d_rollout_speedup']:.1f}x; inner update in one "
          f"backward {t_inner * 1e3:.1f} ms vs per-task loop {t_inner_loop * 1e3:.1f} ms -> "
          f"{res['maml_rl_nav2d_inner_update_speedup']:.1f}x; TRPO exact HVP {t_trpo:.2f} s vs cheap "
          f"{t_trpo_cheap:.2f} s")

    try:
        from nbmodule.rl.cheetah import available_samplers
        samplers = available_samplers()
    except ImportError:
        samplers = ()
    if "rollout" in samplers:
        c_tasks, c_traj, c_h = (2, 2, 10) if quick else (8, 10, 100)
        # mujoco.rollout's pool gets the reference machine's 2 cores; torch stays on 1 thread (its OpenMP
        # workers spinning beside the pool make both many times slower)
        rollout = _cheetah_steps_per_s("rollout", c_tasks, c_traj, c_h, repeats, threads=2)
        vector = _cheetah_steps_per_s("vector", c_tasks, c_traj, c_h, repeats, threads=1)
        res.update({"maml_rl_cheetah_rollout_steps_per_s": rollout, "maml_rl_cheetah_vector_steps_per_s": vector})
        res.ratio("maml_rl_cheetah_rollout_speedup", "maml_rl_cheetah_rollout_steps_per_s",
                  "maml_rl_cheetah_vector_steps_per_s")
        print(f"[maml_rl] HalfCheetah {c_tasks} tasks x {c_traj} trajectories: mujoco.rollout {rollout:.0f} steps/s, "
              f"SyncVectorEnv {vector:.0f} steps/s -> {rollout / vector:.1f}x")
    return res


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for k, v in out.items():
        print(f"{k}: {v:.6g}")
