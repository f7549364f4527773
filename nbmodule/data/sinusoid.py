"""Sinusoid regression task families (MAML's toy benchmark), with their parameter spaces and test tasks.

* ``2d``: ``y = A sin(x - phi)``, amplitude ``A`` in [0.1, 5.0], phase ``phi`` in [0, pi], ``x`` in [-5, 5].
* ``3d``: ``y = A sin(f x - phi)``, plus a frequency ``f`` in [0.5, 2.0].

Parameters are rows ``(A, phi[, f])`` with the phase in radians. Each family says how the priority queue
bins its space (2D: amplitude blocks of 0.1 and phase blocks of 5 degrees = 49 x 36 cells; 3D adds frequency
blocks of 0.2, 8 of them, the last clipped at 2.0). The fixed test grid follows the task-weighted MAML seed:
amplitude every 0.2 from 0.1 and phase every 10 degrees from 0 (25 x 18 = 450 tasks; 3D crosses it with
f in {0.5, 1.0, 1.5, 2.0}); the held-out set is 600 tasks drawn uniformly with a fixed seed. Tasks are
generated on the fly from a ``torch.Generator``: there is nothing on disk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..meta.sampling import PriorityQueue

__all__ = ["SinusoidFamily", "FAMILIES", "get_family", "sinusoid", "make_tasks", "evaluation_tasks"]

DEG = math.pi / 180.0


@dataclass(frozen=True)
class SinusoidFamily:
    """A sinusoid task family: parameter names, box bounds, queue block sizes and the input range."""

    name: str
    param_names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    block: tuple[float, ...]
    x_range: tuple[float, float] = (-5.0, 5.0)

    @property
    def ndim(self) -> int:
        return len(self.param_names)

    def sample_params(self, n: int, generator: torch.Generator) -> Tensor:
        """``(n, D)`` parameters drawn uniformly over the box (float64, phase in radians)."""
        lo, hi = torch.tensor(self.low, dtype=torch.float64), torch.tensor(self.high, dtype=torch.float64)
        return lo + torch.rand((n, self.ndim), generator=generator, dtype=torch.float64) * (hi - lo)

    def make_queue(self, generator: torch.Generator, init_scale: float = 1.0) -> PriorityQueue:
        """The priority queue over this family's parameter space."""
        return PriorityQueue(self.low, self.high, self.block, generator=generator, init_scale=init_scale)

    def test_grid(self) -> Tensor:
        """The fixed grid of test tasks ``(M, D)``: 450 for 2D, 1800 for 3D."""
        amps = 0.1 + 0.2 * torch.arange(25, dtype=torch.float64)      # 0.1 .. 4.9
        phases = 10 * DEG * torch.arange(18, dtype=torch.float64)     # 0 .. 170 degrees
        axes = [amps, phases]
        if self.ndim == 3:
            axes.append(torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64))
        return torch.cartesian_prod(*axes)

    def heldout(self, n: int = 600, seed: int = 20170703) -> Tensor:
        """``n`` held-out tasks drawn uniformly with a fixed seed (the same for every run)."""
        return self.sample_params(n, torch.Generator().manual_seed(seed))


FAMILIES = {
    "2d": SinusoidFamily("2d", ("amplitude", "phase"), (0.1, 0.0), (5.0, math.pi), (0.1, 5 * DEG)),
    "3d": SinusoidFamily("3d", ("amplitude", "phase", "frequency"), (0.1, 0.0, 0.5), (5.0, math.pi, 2.0),
                         (0.1, 5 * DEG, 0.2)),
}


def get_family(name: str) -> SinusoidFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown sinusoid family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def sinusoid(params: Tensor, x: Tensor) -> Tensor:
    """``y = A sin(f x - phi)`` per task: ``params (T, D)``, ``x (T, N, 1)`` -> ``y (T, N, 1)`` (``f = 1`` in 2D)."""
    p = params.to(x.dtype)
    amp, phase = p[:, 0, None, None], p[:, 1, None, None]
    freq = p[:, 2, None, None] if p.shape[1] > 2 else torch.ones_like(amp)
    return amp * torch.sin(freq * x - phase)


def make_tasks(params: Tensor, k_support: int, k_query: int, generator: torch.Generator, *,
               x_range: tuple[float, float] = (-5.0, 5.0), dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Support and query sets for tasks ``params (T, D)``: ``(xs, ys, xq, yq)``, shapes ``(T, K, 1)`` and
    ``(T, Q, 1)``, with ``x`` uniform in ``x_range`` (fresh points for the query set)."""
    t = params.shape[0]
    lo, hi = x_range
    x = lo + (hi - lo) * torch.rand((t, k_support + k_query, 1), generator=generator, dtype=torch.float64)
    y = sinusoid(params.to(torch.float64), x)
    x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
    return x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:]


def evaluation_tasks(params: Tensor, k_shot: int, k_query: int = 100, seed: int = 0, **kwargs) -> tuple[Tensor, ...]:
    """Fixed evaluation tasks (the same points every time for a given ``seed``): K support points to
    fine-tune on, ``k_query`` fresh points to score."""
    return make_tasks(params, k_shot, k_query, torch.Generator().manual_seed(seed), **kwargs)
