"""The priority queue and the six sampling regimes (the seed's own queue tests asserted nothing)."""
from __future__ import annotations

import math

import pytest
import torch

from nbmodule.data.sinusoid import get_family
from nbmodule.meta import REGIMES, PriorityQueue, epsilon_at, sample_tasks


pytestmark = pytest.mark.usefixtures("one_thread")



def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_grid_sizes_cover_the_parameter_space():
    q2 = get_family("2d").make_queue(_gen())
    assert q2.shape == (49, 36) and q2.num_cells == 49 * 36
    q3 = get_family("3d").make_queue(_gen())
    assert q3.shape == (49, 36, 8)  # frequency 0.5-2.0 in blocks of 0.2: 8 blocks, the last clipped
    lo, hi = q3.cell_bounds(torch.tensor([[48, 35, 7]]))
    assert torch.allclose(hi, torch.tensor([[5.0, math.pi, 2.0]], dtype=torch.float64))
    assert torch.allclose(lo, torch.tensor([[4.9, 175 * math.pi / 180, 1.9]], dtype=torch.float64))
    lo0, _ = q3.cell_bounds(torch.tensor([[0, 0, 0]]))
    assert torch.allclose(lo0, torch.tensor([[0.1, 0.0, 0.5]], dtype=torch.float64))


def test_cells_start_positive_and_never_all_zero():
    q = get_family("2d").make_queue(_gen(), init_scale=0.01)
    assert (q.losses > 0).all() and (q.deltas > 0).all()
    assert len(torch.unique(q.losses)) > 1  # random, not constant
    for kind in ("loss", "delta"):
        p = q.probabilities(kind)
        assert torch.isfinite(p).all() and (p > 0).all() and torch.isclose(p.sum(), torch.tensor(1.0, dtype=p.dtype))
    q.losses.zero_()  # even a degenerate all-zero queue draws (uniformly) instead of dividing 0 by 0
    assert torch.allclose(q.probabilities("loss"), torch.full(q.shape, 1 / q.num_cells, dtype=torch.float64))
    with pytest.raises(ValueError, match="init_scale"):
        PriorityQueue([0.0], [1.0], [0.5], generator=_gen(), init_scale=0.0)


@pytest.mark.parametrize("regime,kind", [("weighted", "loss"), ("delta", "delta")])
def test_draw_frequencies_are_proportional_to_loss_or_delta(regime, kind):
    q = PriorityQueue([0.0, 0.0], [2.0, 2.0], [1.0, 1.0], generator=_gen())
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    if kind == "loss":
        q.losses = values.clone()
    else:
        q.deltas = values.clone()
    expected = (values / values.sum()).flatten()
    assert torch.allclose(q.probabilities(kind).flatten(), expected)
    draw = sample_tasks(regime, q, 20000, generator=_gen(1))
    freq = torch.bincount(q.ravel(draw.cells), minlength=4).double() / 20000
    assert torch.allclose(freq, expected, atol=0.015)
    assert torch.allclose(draw.probs, expected[q.ravel(draw.cells)])
    assert torch.all(draw.weights == 1.0)


@pytest.mark.parametrize("regime,kind", [("importance_weighted", "loss"), ("importance_delta", "delta")])
def test_importance_weighted_mean_estimates_the_uniform_mean(regime, kind):
    """The reason for the weights: E_p[w f(params)] = E_uniform[f(params)], here with a clipped last cell.

    On [0, 1.5] in blocks of 1 the cells are [0, 1] and [1, 1.5]; with values 1 and 3 the queue draws them
    with p = 1/4, 3/4. E_uniform[x] = 0.75; weights (1/N)/p would give 0.875."""
    q = PriorityQueue([0.0], [1.5], [1.0], generator=_gen())
    (q.losses if kind == "loss" else q.deltas)[:] = torch.tensor([1.0, 3.0], dtype=torch.float64)
    draw = sample_tasks(regime, q, 400_000, generator=_gen(2))
    x = draw.params[:, 0]
    assert (draw.cells[:, 0] == 1).double().mean().item() == pytest.approx(0.75, abs=0.005)
    assert (draw.weights * x).mean().item() == pytest.approx(0.75, abs=0.006)
    assert draw.weights.mean().item() == pytest.approx(1.0, abs=0.01)  # the weights average to one
    f3 = get_family("3d").make_queue(_gen())  # the 3D grid's last frequency cell is half as wide
    full, clipped = f3.cell_fraction(torch.tensor([[0, 0, 0], [0, 0, 7]]))
    assert clipped.item() == pytest.approx(full.item() / 2) and full.item() == pytest.approx(0.2 / 1.5 / 49 / 36)


def test_drawn_parameters_lie_within_their_cell():
    fam = get_family("3d")
    q = fam.make_queue(_gen())
    for regime in REGIMES:
        draw = sample_tasks(regime, q, 500, generator=_gen(3), step=10)
        lo, hi = q.cell_bounds(draw.cells)
        assert ((draw.params >= lo) & (draw.params <= hi)).all(), regime
        assert (draw.params >= q.low).all() and (draw.params <= q.high).all()
        assert torch.equal(q.cell_of(draw.params), draw.cells), regime
        assert draw.params.shape == (500, 3) and draw.weights.shape == (500,)


def test_epsilon_annealing_schedule():
    kw = dict(start=1.0, final=0.1, anneal_start=100, anneal_steps=900)
    assert epsilon_at(0, **kw) == 1.0
    assert epsilon_at(100, **kw) == 1.0
    assert epsilon_at(550, **kw) == pytest.approx(0.55)
    assert epsilon_at(1000, **kw) == pytest.approx(0.1)
    assert epsilon_at(5000, **kw) == pytest.approx(0.1)
    q = get_family("2d").make_queue(_gen())
    assert sample_tasks("epsilon_greedy", q, 4, generator=_gen(), step=550, epsilon=kw).epsilon == pytest.approx(0.55)


def test_epsilon_greedy_explores_with_probability_epsilon_and_otherwise_takes_the_max():
    q = PriorityQueue([0.0, 0.0], [10.0, 10.0], [1.0, 1.0], generator=_gen())
    q.losses[3, 7] = 100.0
    greedy = sample_tasks("epsilon_greedy", q, 200, generator=_gen(4), epsilon=dict(start=0.0, final=0.0))
    assert (greedy.cells == torch.tensor([3, 7])).all()
    mixed = sample_tasks("epsilon_greedy", q, 20000, generator=_gen(5), epsilon=dict(start=0.3, final=0.3))
    at_max = (mixed.cells == torch.tensor([3, 7])).all(1).double().mean()
    assert at_max.item() == pytest.approx(0.7 + 0.3 / 100, abs=0.015)


def test_argmax_ties_are_broken_at_random():
    q = PriorityQueue([0.0, 0.0], [3.0, 3.0], [1.0, 1.0], generator=_gen())
    q.losses.fill_(1.0)
    q.losses[0, 2] = q.losses[2, 1] = q.losses[1, 1] = 5.0
    draw = sample_tasks("epsilon_greedy", q, 3000, generator=_gen(6), epsilon=dict(start=0.0, final=0.0))
    counts = torch.bincount(q.ravel(draw.cells), minlength=9)
    tied = [2, 7, 4]
    assert counts.sum() == counts[tied].sum()
    assert (counts[tied] > 850).all()  # each about 1000: not always the first tied cell
    picks = {tuple(q.argmax_cell(_gen(s)).tolist()) for s in range(40)}
    assert picks == {(0, 2), (2, 1), (1, 1)}


def test_update_writes_the_right_cell_and_its_delta():
    q = PriorityQueue([0.0, 0.0], [3.0, 3.0], [1.0, 1.0], generator=_gen())
    before = q.losses.clone()
    q.update(torch.tensor([[1, 2], [0, 0]]), torch.tensor([7.0, 0.25]))
    assert q.losses[1, 2] == 7.0 and q.losses[0, 0] == 0.25
    assert q.deltas[1, 2] == pytest.approx(abs(7.0 - before[1, 2].item()))
    assert q.deltas[0, 0] == pytest.approx(abs(0.25 - before[0, 0].item()))
    untouched = torch.ones(3, 3, dtype=torch.bool)
    untouched[1, 2] = untouched[0, 0] = False
    assert torch.equal(q.losses[untouched], before[untouched])
    assert q.counts.sum() == 2 and q.counts[1, 2] == 1
    q.update(torch.tensor([[1, 2], [1, 2]]), [5.0, 4.0])  # same cell twice: sequential writes
    assert q.losses[1, 2] == 4.0 and q.deltas[1, 2] == pytest.approx(1.0) and q.counts[1, 2] == 3
    # a sinusoid task's parameters land in the cell that the queue reports for them
    fam = get_family("2d")
    q2 = fam.make_queue(_gen())
    cell = q2.cell_of(torch.tensor([[2.05, math.radians(92.5)]], dtype=torch.float64))
    assert cell.tolist() == [[19, 18]]
    q2.update(cell, [3.5])
    assert q2.losses[19, 18] == 3.5


def test_uniform_regime_covers_the_space_and_state_round_trips():
    q = get_family("2d").make_queue(_gen())
    draw = sample_tasks("uniform", q, 5000, generator=_gen(7))
    assert draw.params[:, 0].min() < 0.3 and draw.params[:, 0].max() > 4.8
    assert torch.all(draw.weights == 1.0)
    q.update(draw.cells[:10], torch.rand(10, generator=_gen(8)))
    q2 = get_family("2d").make_queue(_gen(99))
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2.losses, q.losses) and torch.equal(q2.counts, q.counts)
    with pytest.raises(ValueError, match="unknown sampling regime"):
        sample_tasks("greedy", q, 2, generator=_gen())
