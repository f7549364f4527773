"""A bounded replay buffer that only sees data: ``update(dataset)`` and ``sample(k, generator=...)``.

Invariant: ``len(buffer) <= capacity`` at all times, and the buffer holds references ``(dataset, index)``
to items it was shown, never anything it was not shown. With ``policy="reservoir"`` (Vitter's algorithm R)
after ``n`` items have been seen every one of them is in the buffer with probability ``min(1,
capacity / n)``, whatever the order of the ``update`` calls; with ``policy="fixed"`` the first
``capacity`` items seen (in a seeded random order per ``update``) stay forever and later ones are ignored.
The buffer's own generator (``seed``) makes its content reproducible and part of a checkpoint.
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

import torch

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """At most ``capacity`` items, chosen by ``policy`` from every dataset passed to :meth:`update`."""

    def __init__(self, capacity: int, policy: Literal["reservoir", "fixed"] = "reservoir", seed: int = 0):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if policy not in ("reservoir", "fixed"):
            raise ValueError(f"policy must be 'reservoir' or 'fixed', got {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self.seen = 0
        self.slots: list[tuple[int, int]] = []  # (dataset number, index in that dataset)
        self.datasets: list[Any] = []
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.slots)

    def update(self, dataset: Sequence) -> None:
        """Show the buffer every item of ``dataset`` once (in a random order drawn from its generator)."""
        d = len(self.datasets)
        self.datasets.append(dataset)
        for idx in torch.randperm(len(dataset), generator=self._gen).tolist():
            item = (d, idx)
            if len(self.slots) < self.capacity:
                self.slots.append(item)
            elif self.policy == "reservoir" and self.capacity > 0:
                j = int(torch.randint(0, self.seen + 1, (1,), generator=self._gen))
                if j < self.capacity:
                    self.slots[j] = item
            self.seen += 1

    def sample(self, k: int, generator: torch.Generator | None = None) -> list[Any]:
        """``min(k, len(self))`` distinct stored items (``dataset[index]``, so augmentation applies)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if not self.slots:
            return []
        pick = torch.randperm(len(self.slots), generator=generator)[:k].tolist()
        return [self.datasets[self.slots[p][0]][self.slots[p][1]] for p in pick]

    def indices(self) -> list[tuple[int, int]]:
        """The stored ``(dataset number, index)`` references (for inspection and tests)."""
        return list(self.slots)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the datasets (which are re-attached by calling ``update`` order-wise on load)."""
        return {"capacity": self.capacity, "policy": self.policy, "seen": self.seen, "slots": list(self.slots),
                "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any], datasets: Sequence[Sequence]) -> None:
        """Restore a buffer saved by :meth:`state_dict`; ``datasets`` are those given to ``update``, in order."""
        self.capacity, self.policy, self.seen = state["capacity"], state["policy"], state["seen"]
        self.slots = [tuple(s) for s in state["slots"]]
        self.datasets = list(datasets)
        self._gen.set_state(state["generator"])
