"""2D navigation against hand-computed steps, and the batched sampler's masks and returns."""
from __future__ import annotations

import math

import pytest
import torch

from nbmodule.rl import GaussianMLPPolicy, Nav2D, expand_params, make_env, sample_trajectories

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-task ops: one thread is fastest


def test_nav2d_step_clips_moves_and_rewards_by_hand():
    env = Nav2D()
    obs = env.reset(torch.tensor([[0.3, 0.0]]), 1, torch.Generator())
    assert obs.tolist() == [[[0.0, 0.0]]]
    obs, reward, done = env.step(torch.tensor([[[5.0, -0.5]]]))  # x clipped to 1 -> moves 0.1; y moves -0.05
    assert obs[0, 0].tolist() == pytest.approx([0.1, -0.05])
    assert reward.item() == pytest.approx(-math.hypot(0.3 - 0.1, 0.05))
    assert not done.item()
    obs, reward, done = env.step(torch.tensor([[[-3.0, 1.0]]]))  # back to x = 0, y = 0.05
    assert obs[0, 0].tolist() == pytest.approx([0.0, 0.05])
    assert reward.item() == pytest.approx(-math.hypot(0.3, 0.05))


def test_nav2d_done_needs_both_coordinates_within_tolerance():
    env = Nav2D()
    env.reset(torch.tensor([[0.1, 0.0], [0.1, 0.0]]), 1, torch.Generator())
    _, reward, done = env.step(torch.tensor([[[1.0, 0.05]], [[1.0, 0.2]]]))  # dy = 0.005 vs 0.02
    assert done[:, 0].tolist() == [True, False]
    assert reward[0, 0].item() == pytest.approx(-0.005)


def test_nav2d_goals_are_uniform_in_the_square():
    g = Nav2D().sample_tasks(4000, torch.Generator().manual_seed(0))
    assert g.shape == (4000, 2) and g.min() >= -0.5 and g.max() <= 0.5
    assert g.mean(0).abs().max() < 0.02 and (g.var(0) - 1 / 12).abs().max() < 0.005


def _straight_policy() -> GaussianMLPPolicy:
    """Always moves +0.1 in x (zero weights, mean bias (1, 0), negligible noise)."""
    pol = GaussianMLPPolicy(2, 2, hidden=(4,), init_log_std=-30.0)
    with torch.no_grad():
        for p in pol.parameters():
            if p is not pol.log_std:
                p.zero_()
        pol.mean.bias.copy_(torch.tensor([1.0, 0.0]))
    return pol


def test_sampler_masks_steps_after_the_goal_is_reached():
    pol = _straight_policy()
    env = Nav2D(horizon=6)
    goals = torch.tensor([[0.3, 0.0], [5.0, 0.0]])  # reached at step 3; never reached
    params = expand_params(dict(pol.named_parameters()), 2)
    batch = sample_trajectories(env, pol, params, goals, 2, torch.Generator().manual_seed(0))
    assert batch.obs.shape == (2, 2, 6, 2) and batch.actions.shape == (2, 2, 6, 2)
    assert batch.mask[0, 0].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch.mask[1].sum().item() == 12
    assert batch.rewards[0, 0].tolist() == pytest.approx([-0.2, -0.1, 0.0, 0, 0, 0], abs=1e-6)
    assert batch.returns()[0].tolist() == pytest.approx([-0.3, -0.3], abs=1e-6)
    assert batch.obs[0, 0, :3, 0].tolist() == pytest.approx([0.0, 0.1, 0.2])  # the state an action was taken in
    expected_far = -sum(5.0 - 0.1 * k for k in range(1, 7))
    assert batch.returns()[1, 0].item() == pytest.approx(expected_far, rel=1e-5)
    assert batch.steps() == 6 + 12


def test_sampler_stops_early_and_pads_when_every_trajectory_is_done():
    pol = _straight_policy()
    batch = sample_trajectories(Nav2D(horizon=50), pol, expand_params(dict(pol.named_parameters()), 1),
                                torch.tensor([[0.2, 0.0]]), 3, torch.Generator())
    assert batch.mask.shape == (1, 3, 50) and batch.mask.sum().item() == 6


def test_make_env_rejects_unknown_names():
    with pytest.raises(ValueError, match="nav2d"):
        make_env("pendulum", horizon=10)


def test_cheetah_without_mujoco_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mujoco", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"gymnasium\[mujoco\]"):
        make_env("cheetah_vel", horizon=10)
