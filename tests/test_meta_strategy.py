"""choose_strategy: a robust, recorded measurement that never picks something slower than the loop or too big."""
from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nbmodule.meta.strategy as strategy_module
from nbmodule.meta import MAML, StrategyChoice, choose_strategy, meta_loss
from nbmodule.meta.strategy import decide, estimate_peak_bytes, graph_bytes
from nbmodule.profiling import interleaved_seconds

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv_tasks(T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.rand(T, 3, 1, 12, 12, generator=g), torch.rand(T, 3, 1, 12, 12, generator=g)
    y = torch.arange(3).expand(T, 3).contiguous()
    return xs, y, xq, y.clone()


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))


def test_choice_records_interleaved_timings_and_never_loses_to_the_loop():
    net, tasks = _conv_net(), _conv_tasks()
    params = dict(net.named_parameters())
    rng = torch.get_rng_state()
    choice = choose_strategy(net, params, tasks, F.cross_entropy, steps=2, inner_lr=0.3, repeats=3, warmup=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the probe leaves the global RNG where it was
    assert all(p.grad is None for p in net.parameters())  # and touches no .grad
    # second order through batch norm: vmap is not a candidate, and the record says why
    assert "vmap" in choice.excluded and "functorch" in choice.excluded["vmap"]
    assert set(choice.seconds) == {"loop", "batched"}  # batched: tasks per call sized by memory
    assert choice.protocol["batched_tasks_per_call"] == 4 and "allocator" in choice.protocol
    assert all(len(v) == 3 for v in choice.seconds.values())  # repeats, warm-up rounds dropped
    for k, v in choice.seconds.items():
        assert choice.medians_s[k] == sorted(v)[1]
    assert choice.name == decide(choice.medians_s)
    record = json.loads(json.dumps(choice.to_dict()))  # JSON-ready for the run folder
    assert record["name"] == choice.name and record["protocol"]["repeats"] == 3
    assert record["protocol"]["threads"] == torch.get_num_threads()
    loss, _ = meta_loss(net, params, tasks, F.cross_entropy, steps=2, inner_lr=0.3, strategy=choice)
    ref, _ = meta_loss(net, params, tasks, F.cross_entropy, steps=2, inner_lr=0.3, strategy="loop")
    assert torch.allclose(loss, ref, atol=1e-5)


@pytest.mark.parametrize("slow", ["loop", "batched"])
def test_the_pick_follows_the_measurement(monkeypatch, slow):
    """Whichever candidate is made 40 ms slower per meta-iteration loses, and its medians show it."""
    real = strategy_module.meta_loss

    def delayed(*args, strategy, **kwargs):
        if (strategy if isinstance(strategy, str) else strategy.strategy) == slow:
            time.sleep(0.04)
        return real(*args, strategy=strategy, **kwargs)

    monkeypatch.setattr(strategy_module, "meta_loss", delayed)
    net, tasks = _conv_net(), _conv_tasks()
    choice = choose_strategy(net, dict(net.named_parameters()), tasks, F.cross_entropy, steps=1, inner_lr=0.3,
                             repeats=3, warmup=1)
    fast = "batched" if slow == "loop" else "loop"
    assert choice.name == fast and choice.strategy == fast
    assert choice.medians_s[slow] > 0.04 and choice.medians_s[slow] > choice.medians_s[fast]


def _falls_back_while_running():
    """Compiles for the batched path, but its BatchNorm1d meets a 3-d input only at run time (not covered)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(2, track_running_stats=False), nn.Flatten(), nn.Linear(10, 3))


def test_a_candidate_that_falls_back_while_running_is_excluded_not_timed_under_its_name():
    """Issue 19, item 8: the loop timed under the label "batched" could be picked as "batched"."""
    net = _falls_back_while_running()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).expand(4, 3).contiguous()
    tasks = (torch.rand(4, 3, 2, 5, generator=g), y, torch.rand(4, 3, 2, 5, generator=g), y.clone())
    report: dict = {}
    with pytest.warns(UserWarning, match="falls back to the loop"):
        meta_loss(net, dict(net.named_parameters()), tasks, F.cross_entropy, strategy="batched", report=report)
    assert report["strategy"] == "loop" and "BatchNorm1d on a 3-d input" in report["fallback"]
    with pytest.warns(UserWarning, match="falls back to the loop"):
        choice = choose_strategy(net, dict(net.named_parameters()), tasks, F.cross_entropy, repeats=2)
    assert choice.name == "loop" and "batched" not in choice.seconds and "batched" not in choice.medians_s
    assert "while running" in choice.excluded["batched"] and "BatchNorm1d" in choice.excluded["batched"]
    meta_loss(net, dict(net.named_parameters()), tasks, F.cross_entropy, strategy="loop", report=report)
    assert report == {"strategy": "loop", "fallback": None}


def test_the_meta_modules_import_one_way():
    """functional <- strategy <- maml: no module of nbmodule.meta imports one that imports it (issue 19)."""
    import ast
    from pathlib import Path

    import nbmodule.meta

    folder = Path(nbmodule.meta.__file__).parent
    graph = {}
    for f in folder.glob("*.py"):
        if f.stem != "__init__":
            graph[f.stem] = {n.module.split(".")[0] for n in ast.walk(ast.parse(f.read_text()))
                             if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}

    def reaches(a, b, seen=()):
        return any(m == b or (m not in seen and reaches(m, b, (*seen, m))) for m in graph.get(a, ()))

    cycles = [m for m in graph if reaches(m, m)]
    assert not cycles, f"import cycle through {cycles}"
    assert "strategy" in graph["maml"] and "maml" not in graph["strategy"]


def test_decide_prefers_the_loop_unless_strictly_faster():
    assert decide({"loop": 1.0, "batched8": 0.5, "vmap": 0.7}) == "batched8"
    assert decide({"loop": 1.0, "batched8": 1.0}) == "loop"
    assert decide({"loop": 1.0, "batched8": 1.3, "vmap": 1.1}) == "loop"


def test_a_slow_first_call_cannot_decide():
    calls = {"a": 0, "b": 0}

    def a():  # slow only the first time (allocations, lazy init...)
        calls["a"] += 1
        time.sleep(0.05 if calls["a"] == 1 else 0.001)

    def b():
        calls["b"] += 1
        time.sleep(0.004)

    seconds = interleaved_seconds({"a": a, "b": b}, repeats=5, warmup=1)
    assert calls == {"a": 6, "b": 6} and len(seconds["a"]) == 5
    assert max(seconds["a"]) < 0.04  # the slow first call was the warm-up
    assert decide({"loop": sorted(seconds["b"])[2], "a": sorted(seconds["a"])[2]}) == "a"


def test_memory_check_excludes_what_would_not_fit():
    net, tasks = _conv_net(), _conv_tasks()
    params = dict(net.named_parameters())
    loop_bytes = estimate_peak_bytes(net, params, tasks, F.cross_entropy, "loop", steps=2, inner_lr=0.3)
    batched_bytes = estimate_peak_bytes(net, params, tasks, F.cross_entropy, "batched", None, steps=2, inner_lr=0.3)
    assert loop_bytes > 0 and batched_bytes > 0
    # the estimate scales a sub-batch's saved graph to all tasks: check it against the whole batch's graph
    _, whole = graph_bytes(lambda: meta_loss(net, params, tasks, F.cross_entropy, steps=2, inner_lr=0.3,
                                             strategy="loop")[0])
    assert 0.8 * 2 * whole <= loop_bytes <= 1.25 * 2 * whole
    budget = int(min(loop_bytes, batched_bytes) / 2)  # nothing fits: the smallest is tried, with a warning
    with pytest.warns(UserWarning, match="no strategy fits"):
        choice = choose_strategy(net, params, tasks, F.cross_entropy, steps=2, inner_lr=0.3, repeats=1,
                                 memory_budget=budget)
    smallest = "loop" if loop_bytes <= batched_bytes else "batched"
    assert choice.name == smallest
    assert all("would not fit" in why for k, why in choice.excluded.items() if k != "vmap")
    bigger = "batched" if smallest == "loop" else "loop"
    budget = int((loop_bytes + batched_bytes) / 2)  # only the smaller fits: the bigger never runs
    choice = choose_strategy(net, params, tasks, F.cross_entropy, steps=2, inner_lr=0.3, repeats=1,
                             memory_budget=budget)
    assert choice.name == smallest and bigger in choice.excluded and bigger not in choice.seconds


def test_requested_strategies_and_the_fallback_reason():
    net, tasks = _conv_net(), _conv_tasks()
    params = dict(net.named_parameters())
    assert choose_strategy(net, params, tasks, F.cross_entropy, requested="loop").name == "loop"
    assert choose_strategy(net, params, tasks, F.cross_entropy, requested="batched").name == "batched"
    with pytest.raises(ValueError, match="functorch"):
        choose_strategy(net, params, tasks, F.cross_entropy, requested="vmap")
    uncovered = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 10 * 10, 3))
    with pytest.warns(UserWarning, match="GroupNorm"):
        choice = choose_strategy(uncovered, dict(uncovered.named_parameters()), tasks, F.cross_entropy,
                                 requested="batched")
    assert choice.name == "loop" and "GroupNorm" in choice.excluded["batched"]
    choice = choose_strategy(uncovered, dict(uncovered.named_parameters()), tasks, F.cross_entropy, repeats=1)
    assert "batched" in choice.excluded and choice.name in ("loop", "vmap")


def test_maml_wrapper_pins_the_measured_choice():
    net = _conv_net()
    maml = MAML(net, inner_lr=0.3, loss_fn=F.cross_entropy)
    choice = maml.choose_strategy(_conv_tasks(), repeats=1)
    assert isinstance(choice, StrategyChoice) and maml.strategy is choice
    loss, per_task = maml.meta_loss(_conv_tasks(seed=1))
    assert per_task.shape == (4,) and loss.requires_grad
