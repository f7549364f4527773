"""ReplayBuffer: bounded, only holds what it was shown, reservoir is uniform, fixed keeps its first picks."""
from __future__ import annotations

import pytest
import torch

from nbmodule.data.replay import ReplayBuffer


def test_capacity_is_never_exceeded_and_items_come_from_updates():
    buf = ReplayBuffer(5, "reservoir", seed=1)
    a, b = list(range(100, 103)), list(range(200, 230))
    buf.update(a)
    assert len(buf) == 3  # fewer items than capacity: keeps all
    buf.update(b)
    assert len(buf) == 5 and buf.seen == 33
    got = buf.sample(10, generator=torch.Generator().manual_seed(0))
    assert len(got) == 5 and len(set(got)) == 5  # at most len(buffer), without repetition
    assert set(got) <= set(a) | set(b)


def test_reservoir_keeps_every_item_with_equal_probability():
    capacity, n, trials = 4, 20, 1500
    counts = torch.zeros(n)
    for seed in range(trials):
        buf = ReplayBuffer(capacity, "reservoir", seed=seed)
        buf.update(list(range(8)))      # two updates: uniformity must hold over everything seen
        buf.update(list(range(8, n)))
        for d, i in buf.indices():
            counts[i + (8 if d == 1 else 0)] += 1
    freq = counts / trials
    expected = capacity / n  # 0.2
    assert torch.allclose(freq, torch.full_like(freq, expected), atol=0.045), freq


def test_fixed_policy_never_replaces_its_first_selection():
    buf = ReplayBuffer(3, "fixed", seed=0)
    buf.update(list(range(10)))
    first = buf.indices()
    buf.update(list(range(50)))
    assert buf.indices() == first and all(d == 0 for d, _ in first)


def test_sample_is_reproducible_with_a_generator_and_state_roundtrips():
    data = list(range(40))
    buf = ReplayBuffer(6, seed=3)
    buf.update(data)
    s1 = buf.sample(4, generator=torch.Generator().manual_seed(7))
    s2 = buf.sample(4, generator=torch.Generator().manual_seed(7))
    assert s1 == s2
    clone = ReplayBuffer(1)
    clone.load_state_dict(buf.state_dict(), [data])
    assert clone.indices() == buf.indices()
    more = list(range(100, 140))
    buf.update(more)
    clone.update(more)
    assert clone.indices() == buf.indices()  # the generator state travelled too


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="policy"):
        ReplayBuffer(3, "lru")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(-1)
    assert ReplayBuffer(0).sample(3) == []
