"""Task-weighted sampling: a priority queue over a task family's parameter space and six sampling regimes.

The parameter space (a box, e.g. amplitude x phase) is binned into a grid of cells. Each cell holds the
latest post-adaptation loss seen for a task drawn from it and the absolute change of that loss at its last
update. A regime turns the grid into task draws:

=====================  ==============================================================  =================
regime                 cell drawn with probability                                       meta-loss weight
=====================  ==============================================================  =================
uniform                (parameters uniform over the whole space, no cells)               1
epsilon_greedy         a uniform random cell w.p. epsilon, else the max-loss cell         1
                       (ties broken at random); epsilon annealed linearly 1.0 -> 0.1
weighted               loss(cell) / sum(loss)                                             1
importance_weighted    loss(cell) / sum(loss)                                             q(cell) / p(cell)
delta                  |change|(cell) / sum(|change|)                                     1
importance_delta       |change|(cell) / sum(|change|)                                     q(cell) / p(cell)
=====================  ==============================================================  =================

``q(cell)`` is the cell's share of the box's volume: the probability the uniform regime gives it. It is
``1/N`` when all cells are equal; a clipped last cell (3D: frequency 1.9-2.0 in blocks of 0.2) is smaller,
and ``(1/N)/p`` would over-weight it, biasing the weighted meta-loss away from the uniform one.

A drawn cell yields parameters uniformly within the cell. Cells start from strictly positive random values,
so every cell can be drawn before it was ever visited (the seed's zero initialisation divides 0 by 0).
Randomness comes only from the ``torch.Generator`` passed in, so a checkpointed generator state resumes the
same draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["REGIMES", "PriorityQueue", "TaskDraw", "epsilon_at", "sample_tasks"]

REGIMES = ("uniform", "epsilon_greedy", "weighted", "importance_weighted", "delta", "importance_delta")


class PriorityQueue:
    """A grid over the box ``[low, high]`` with cells of size ``block`` per dimension (the last cell of a
    dimension is clipped at ``high`` when the range is not a multiple of the block, so the grid covers it).

    ``losses``, ``deltas``: float64 tensors of the grid's shape; ``counts``: how often each cell was updated.
    """

    def __init__(self, low: Sequence[float], high: Sequence[float], block: Sequence[float], *,
                 generator: torch.Generator, init_scale: float = 1.0):
        if not (len(low) == len(high) == len(block)):
            raise ValueError("low, high and block need one value per parameter dimension")
        if init_scale <= 0:
            raise ValueError(f"init_scale must be > 0 (cells must start positive), got {init_scale}")
        self.low = torch.tensor(low, dtype=torch.float64)
        self.high = torch.tensor(high, dtype=torch.float64)
        self.block = torch.tensor(block, dtype=torch.float64)
        if (self.high <= self.low).any() or (self.block <= 0).any():
            raise ValueError(f"need low < high and block > 0, got low={low}, high={high}, block={block}")
        # 1e-9 tolerance: 4.9 / 0.1 is 48.99999... in floating point, and must give 49 cells, not 50
        self.shape = tuple(int(math.ceil(float(n) - 1e-9)) for n in (self.high - self.low) / self.block)
        # uniform in [0.5, 1.5) * init_scale: strictly positive, so every cell starts drawable
        self.losses = init_scale * (0.5 + torch.rand(self.shape, generator=generator, dtype=torch.float64))
        self.deltas = init_scale * (0.5 + torch.rand(self.shape, generator=generator, dtype=torch.float64))
        self.counts = torch.zeros(self.shape, dtype=torch.int64)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def num_cells(self) -> int:
        return math.prod(self.shape)

    def cell_bounds(self, cells: Tensor) -> tuple[Tensor, Tensor]:
        """Lower and upper corners ``(n, D)`` of the cells ``(n, D)`` (integer indices)."""
        lo = self.low + cells.to(torch.float64) * self.block
        hi = torch.minimum(lo + self.block, self.high)
        return lo, hi

    def cell_fraction(self, cells: Tensor) -> Tensor:
        """Each cell's share ``(n,)`` of the box's volume (``1/N`` for full cells; less for clipped ones)."""
        lo, hi = self.cell_bounds(cells)
        return ((hi - lo) / (self.high - self.low)).prod(dim=-1)

    def cell_of(self, params: Tensor) -> Tensor:
        """Integer cell indices ``(n, D)`` holding the parameter vectors ``(n, D)``."""
        idx = torch.floor((params.to(torch.float64) - self.low) / self.block).to(torch.int64)
        return torch.minimum(idx.clamp(min=0), torch.tensor(self.shape) - 1)

    def params_in(self, cells: Tensor, generator: torch.Generator) -> Tensor:
        """Parameters drawn uniformly within each cell: ``(n, D)`` float64."""
        lo, hi = self.cell_bounds(cells)
        return lo + torch.rand(lo.shape, generator=generator, dtype=torch.float64) * (hi - lo)

    def probabilities(self, kind: str = "loss") -> Tensor:
        """Draw probability of each cell (grid shape), proportional to its loss or its delta."""
        if kind not in ("loss", "delta"):
            raise ValueError(f"kind must be 'loss' or 'delta', got {kind!r}")
        v = (self.losses if kind == "loss" else self.deltas).clamp(min=0)
        total = v.sum()
        if not torch.isfinite(total) or total <= 0:  # cannot happen from a positive start; guard anyway
            return torch.full(self.shape, 1.0 / self.num_cells, dtype=torch.float64)
        return v / total

    def unravel(self, flat: Tensor) -> Tensor:
        """Flat cell numbers ``(n,)`` -> grid indices ``(n, D)`` (row-major, as ``flatten``)."""
        idx, rest = [], flat.to(torch.int64)
        for size in reversed(self.shape):
            idx.append(rest % size)
            rest = rest // size
        return torch.stack(idx[::-1], dim=-1)

    def ravel(self, cells: Tensor) -> Tensor:
        """Grid indices ``(n, D)`` -> flat cell numbers ``(n,)``."""
        flat = torch.zeros(cells.shape[0], dtype=torch.int64)
        for d, size in enumerate(self.shape):
            flat = flat * size + cells[:, d].to(torch.int64)
        return flat

    def max_cells(self) -> Tensor:
        """Flat numbers of all cells holding the maximum loss (several when tied)."""
        flat = self.losses.flatten()
        return torch.nonzero(flat == flat.max()).flatten()

    def argmax_cell(self, generator: torch.Generator) -> Tensor:
        """The max-loss cell ``(D,)``; ties broken uniformly at random (not always the first)."""
        ties = self.max_cells()
        return self.unravel(ties[torch.randint(len(ties), (1,), generator=generator)])[0]

    def update(self, cells: Tensor, losses: Tensor | Sequence[float]) -> None:
        """Write post-adaptation ``losses`` (n,) to ``cells`` (n, D) in order; delta = |new - previous|."""
        values = torch.as_tensor(losses, dtype=torch.float64).detach().cpu().flatten()
        flat = self.ravel(cells.cpu())
        if len(values) != len(flat):
            raise ValueError(f"{len(flat)} cells but {len(values)} losses")
        # numpy views of the grids: a Python loop over a batch is cheap there, and sequential writes keep
        # the delta of a cell drawn twice in one batch relative to its previous write
        lv, dv, cv = self.losses.view(-1).numpy(), self.deltas.view(-1).numpy(), self.counts.view(-1).numpy()
        for c, v in zip(flat.tolist(), values.tolist()):
            dv[c] = abs(v - lv[c])
            lv[c] = v
            cv[c] += 1

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.clone(), "deltas": self.deltas.clone(), "counts": self.counts.clone(),
                "low": self.low.clone(), "high": self.high.clone(), "block": self.block.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["losses"].shape) != self.shape:
            raise ValueError(f"queue state has shape {tuple(state['losses'].shape)}, this queue {self.shape}")
        self.losses = state["losses"].clone().to(torch.float64)
        self.deltas = state["deltas"].clone().to(torch.float64)
        self.counts = state["counts"].clone().to(torch.int64)


def epsilon_at(step: int, *, start: float = 1.0, final: float = 0.1, anneal_start: int = 0,
               anneal_steps: int = 1) -> float:
    """Epsilon of epsilon-greedy at meta-iteration ``step``: ``start`` until ``anneal_start``, then linear down
    to ``final`` over ``anneal_steps`` iterations, then ``final``."""
    if step <= anneal_start:
        return start
    frac = min(1.0, (step - anneal_start) / max(1, anneal_steps))
    return start + (final - start) * frac


@dataclass
class TaskDraw:
    """A meta-batch of task parameters. ``cells: (n, D)`` int64 queue cells, ``params: (n, D)`` float64,
    ``weights: (n,)`` meta-loss weights, ``probs: (n,)`` the probability each cell had of being drawn."""

    cells: Tensor
    params: Tensor
    weights: Tensor
    probs: Tensor
    epsilon: float | None = None


def sample_tasks(regime: str, queue: PriorityQueue, n: int, *, generator: torch.Generator, step: int = 0,
                 epsilon: dict[str, float] | None = None) -> TaskDraw:
    """Draw ``n`` tasks' parameters under ``regime`` (one of :data:`REGIMES`).

    ``epsilon``: keyword arguments of :func:`epsilon_at` (epsilon-greedy only). Cells are drawn with
    replacement; the importance weight of a task is ``(1 / N_cells) / p(cell)`` so that the weighted
    meta-loss is an unbiased estimate of the uniform one.
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown sampling regime {regime!r}; choose one of {', '.join(REGIMES)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ones = torch.ones(n, dtype=torch.float64)
    if regime == "uniform":
        params = queue.low + torch.rand((n, queue.ndim), generator=generator, dtype=torch.float64) * (
            queue.high - queue.low)
        cells = queue.cell_of(params)
        return TaskDraw(cells, params, ones, queue.cell_fraction(cells))
    if regime == "epsilon_greedy":
        eps = epsilon_at(step, **(epsilon or {}))
        explore = torch.rand(n, generator=generator, dtype=torch.float64) < eps
        random_cells = torch.randint(queue.num_cells, (n,), generator=generator)
        ties = queue.max_cells()  # the queue does not change within a batch
        greedy_cells = ties[torch.randint(len(ties), (n,), generator=generator)]
        cells_t = queue.unravel(torch.where(explore, random_cells, greedy_cells))
        return TaskDraw(cells_t, queue.params_in(cells_t, generator), ones, queue.cell_fraction(cells_t), epsilon=eps)
    kind = "delta" if regime in ("delta", "importance_delta") else "loss"
    probs = queue.probabilities(kind).flatten()
    flat = torch.multinomial(probs, n, replacement=True, generator=generator)
    cells_t = queue.unravel(flat)
    p = probs[flat]
    weights = queue.cell_fraction(cells_t) / p if regime.startswith("importance") else ones
    return TaskDraw(cells_t, queue.params_in(cells_t, generator), weights, p)
