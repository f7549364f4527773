"""HalfCheetah goal velocity / direction: rewards by hand, the two samplers agree, and a CI smoke run.

Needs gymnasium and mujoco (``pip install "gymnasium[mujoco]"``); skipped, with that reason, without them.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium", reason="HalfCheetah needs gymnasium: pip install 'gymnasium[mujoco]'")
pytest.importorskip("mujoco", reason="HalfCheetah needs mujoco: pip install 'gymnasium[mujoco]'")

from nbmodule.rl import GaussianMLPPolicy, MetaRLSettings, expand_params, meta_iteration, sample_trajectories  # noqa: E402
from nbmodule.rl.cheetah import CTRL_COST, HalfCheetahTasks, available_samplers, make_cheetah_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind,goal", [("vel", 1.5), ("dir", -1.0)])
def test_gymnasium_subclass_rewards_by_hand(kind, goal):
    env = make_cheetah_env(kind, goal=goal)
    env.reset(seed=0)
    action = np.array([2.0, -0.5, 0.3, -3.0, 0.0, 0.9])  # two entries outside [-1, 1]: clipped
    _, reward, terminated, truncated, info = env.step(action)
    clipped = np.clip(action, -1, 1)
    v = info["x_velocity"]
    forward = -abs(v - goal) if kind == "vel" else goal * v
    assert reward == pytest.approx(forward - CTRL_COST * float(np.sum(clipped ** 2)))
    assert not terminated and not truncated
    env.close()


def test_task_distributions():
    g = torch.Generator().manual_seed(0)
    vel = HalfCheetahTasks("vel", sampler="vector").sample_tasks(2000, g)
    assert vel.shape == (2000, 1) and vel.min() >= 0 and vel.max() <= 2 and abs(vel.mean().item() - 1) < 0.05
    dirs = HalfCheetahTasks("dir", sampler="vector").sample_tasks(2000, g)
    assert set(dirs.flatten().tolist()) == {-1.0, 1.0} and abs(dirs.mean().item()) < 0.1


@pytest.mark.skipif("rollout" not in available_samplers(), reason="mujoco.rollout needs mujoco >= 3.1")
@pytest.mark.parametrize("kind", ["vel", "dir"])
def test_rollout_sampler_matches_the_vector_env(kind):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, hidden=(16, 16))
    params = expand_params(dict(policy.named_parameters()), 2)
    batches = {}
    for sampler in ("rollout", "vector"):
        env = HalfCheetahTasks(kind, horizon=15, sampler=sampler, threads=2)
        g = torch.Generator().manual_seed(1)
        batches[sampler] = sample_trajectories(env, policy, params, env.sample_tasks(2, g), 3, g)
        env.close()
    a, b = batches["rollout"], batches["vector"]
    assert torch.allclose(a.obs, b.obs, atol=1e-5) and torch.allclose(a.rewards, b.rewards, atol=1e-5)
    assert a.mask.sum() == 2 * 3 * 15  # HalfCheetah never ends before the horizon


@pytest.mark.parametrize("kind", ["vel", "dir"])
def test_smoke_two_meta_iterations_finite_and_within_the_trust_region(kind):
    env = HalfCheetahTasks(kind, horizon=20)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    settings = MetaRLSettings(meta_batch_size=2, trajectories=2, max_kl=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        theta, stats, info = meta_iteration(env, policy, theta, settings, g)
        assert all(math.isfinite(v) for v in stats.values())
        assert math.isfinite(info.loss_before) and math.isfinite(info.loss_after)
        assert info.kl <= settings.max_kl
        if info.accepted:
            assert info.loss_after < info.loss_before
    assert all(torch.isfinite(v).all() for v in theta.values())
    env.close()


def test_study_smoke_on_both_cheetah_tasks(tmp_path):
    from nbmodule.engines.maml_rl import MamlRLConfig, run
    from nbmodule.runs import RunContext, RunDir
    from nbmodule.viz.maml_rl import FIGURES

    cfg = MamlRLConfig.from_values(dict(envs=["cheetah_vel", "cheetah_dir"], seeds=[0], horizon=20, meta_batch_size=2,
                                        trajectories=2, iterations=2, pretrain_iterations=1, eval_goals=2,
                                        eval_trajectories=2, eval_steps=1))
    metrics = run(cfg, RunDir(tmp_path), RunContext(device=torch.device("cpu"), progress=False, threads=1))
    for env in ("cheetah_vel", "cheetah_dir"):
        for prefix in (env, f"{env}_pretrained", f"{env}_random"):
            assert math.isfinite(metrics[f"{prefix}_return_0step"]) and math.isfinite(metrics[f"{prefix}_return_1step"])
    rows = RunDir(tmp_path).curve("train")
    assert {r["run"] for r in rows} == {"cheetah_vel_maml", "cheetah_vel_pretrained", "cheetah_dir_maml",
                                        "cheetah_dir_pretrained"}
    assert all(math.isfinite(r["loss_after"]) and r["kl"] <= cfg.max_kl for r in rows)
    drawn = {spec.name: spec.draw(tmp_path) for spec in FIGURES}
    assert drawn["returns_vs_steps"] is not None and drawn["trajectories"] is None  # no 2D paths for HalfCheetah
