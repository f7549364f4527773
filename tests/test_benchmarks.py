"""The benchmark harness and what it reports: ratios made of the timings beside them, thread counts recorded
and restored, channels_last kept apart from the engines' speed, peers computing our meta-gradient."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nbmodule.profiling import BenchResults, global_state, restore_global_state, torch_threads

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench_run = _load("run")
peers = _load("peers")
MODULES = bench_run.discover()


@pytest.fixture(scope="module")
def quick_results():
    """Every benchmark's quick run, once, through its own ``run`` (not the harness), with 1 thread set by us
    and the global state compared before and after."""
    out = {}
    for path in MODULES:
        with torch_threads(1):
            before = global_state()
            try:
                res = bench_run.load(path).run(quick=True)
                error = None
            except ModuleNotFoundError as e:  # an optional third-party dependency (e.g. gymnasium for maml_rl)
                if (e.name or "").split(".")[0] in ("nbmodule", "data_prep"):
                    raise
                res, error = None, e
            after = global_state()
        out[path.stem] = (res, before, after, error)
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_benchmark_reports_ratios_made_of_its_timings(path, quick_results):
    res, before, after, error = quick_results[path.stem]
    if error is not None:
        pytest.skip(f"{path.stem} needs an optional dependency: {error}")
    assert isinstance(res, BenchResults) and res
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in res.values())
    ratio_keys = [k for k in res if "speedup" in k or "ratio" in k]
    assert ratio_keys, f"{path.stem} reports no ratio"
    assert set(ratio_keys) == set(res.ratios), "every ratio key must be made by BenchResults.ratio"
    for key, (num, den) in res.ratios.items():
        assert num in res and den in res, f"{key} is made of keys not reported"
        assert res[key] == pytest.approx(res[num] / res[den], rel=1e-12)
    # the thread count it ran with is recorded, and it is the one it ran with
    name = bench_run.bench_name(path)
    assert f"{name}_threads" in res
    assert res[f"{name}_threads"] >= 1
    # channels_last is a PyTorch measurement, never presented as an engine's speed
    for k in res:
        assert "channels_last" not in k or k.startswith("torch_channels_last_"), k


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_benchmark_leaves_global_state_as_it_found_it(path, quick_results):
    res, before, after, error = quick_results[path.stem]
    if error is not None:
        pytest.skip(f"{path.stem} needs an optional dependency: {error}")
    assert after == before, f"{path.stem} leaked {[k for k in before if before[k] != after[k]]}"


def test_harness_restores_a_leaked_thread_count(tmp_path, monkeypatch):
    leaky = tmp_path / "bench_leaky.py"
    leaky.write_text("import torch\nfrom nbmodule.profiling import BenchResults\n"
                     "def run(quick=False):\n"
                     "    torch.set_num_threads(3)\n    torch.set_grad_enabled(False)\n"
                     "    r = BenchResults(leaky_threads=3, a_s=2.0, b_s=1.0)\n"
                     "    r.ratio('leaky_speedup', 'a_s', 'b_s')\n    return r\n")
    with torch_threads(1):
        res = bench_run.run_module(leaky, quick=True)
        assert torch.get_num_threads() == 1 and torch.is_grad_enabled()
    assert sorted(res.leaked) == ["grad_enabled", "threads"]
    assert res["leaky_speedup"] == 2.0
    with torch_threads(1):  # make bench's way: a fresh process per benchmark, results back with their ratios
        iso = bench_run.run_isolated(leaky, quick=True)
        assert torch.get_num_threads() == 1 and torch.is_grad_enabled()
    assert iso == res and iso.ratios == {"leaky_speedup": ("a_s", "b_s")} and sorted(iso.leaked) == sorted(res.leaked)


def test_restore_global_state_names_what_changed():
    state = global_state()
    torch.set_default_dtype(torch.float64)
    try:
        assert restore_global_state(state) == ["default_dtype"]
    finally:
        torch.set_default_dtype(state["default_dtype"])
    assert torch.get_default_dtype() == state["default_dtype"]


def test_results_json_holds_peer_keys_and_thread_counts():
    import json

    results = json.loads((BENCH / "results.json").read_text())
    for bench in ("fewshot", "maml_sinusoid"):
        assert f"{bench}_threads" in results, f"results.json lacks {bench}_threads: rerun make bench"
    for setting in ("sinusoid", "conv4_omniglot", "conv4_mini"):
        for peer in peers.PEERS:
            if f"maml_{setting}_{peer}_s_per_iter" in results:
                ratio = results[f"maml_{setting}_speedup_vs_{peer}"]
                engine = (results["maml_sinusoid_engine_s_per_iter"] if setting == "sinusoid" else
                          results[f"fewshot_{setting.split('_')[1]}_auto_s_per_iter"])
                assert ratio == pytest.approx(results[f"maml_{setting}_{peer}_s_per_iter"] / engine)
    assert not any("channels_last" in k and not k.startswith("torch_channels_last_") for k in results)


# --- the peers compute the same meta-gradient as the engine ---------------------------------------------------
def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3, track_running_stats=False), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 3)).double()


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("peer", peers.PEERS)
def test_peer_meta_gradient_equals_ours(peer, first_order):
    why = peers.available()[peer]
    if why:
        pytest.skip(why)
    net = _net()
    g = torch.Generator().manual_seed(0)
    tasks = (torch.randn(3, 6, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(3, (3, 6), generator=g),
             torch.randn(3, 4, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(3, (3, 4), generator=g))
    if peers.valid(peer, net, first_order):  # the vmap recipes, second order through batch norm: excluded
        assert peer in peers.VMAP_PEERS and not first_order and "functorch issue #534" in peers.valid(peer, net, False)
        return
    for strategy in ("loop", "batched"):
        ours = peers.meta_gradient(peers.engine_meta_step, net, tasks, F.cross_entropy, 2, 0.3, first_order,
                                   strategy=strategy)
        theirs = peers.meta_gradient(peers.META_STEPS[peer], net, tasks, F.cross_entropy, 2, 0.3, first_order)
        assert max(a.abs().max().item() for a in ours) > 1e-3
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("peer", peers.VMAP_PEERS)
def test_vmap_peers_second_order_on_a_network_without_batch_norm(peer):
    """PyTorch's torch.func recipe and torchopt under vmap: valid, and our meta-gradient, where vmap is right."""
    why = peers.available()[peer]
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    g = torch.Generator().manual_seed(0)
    tasks = tuple(torch.randn(3, 5, 1, generator=g, dtype=torch.float64) for _ in range(4))
    assert peers.valid(peer, mlp, first_order=False) == ""
    ours = peers.meta_gradient(peers.engine_meta_step, mlp, tasks, F.mse_loss, 2, 0.3, strategy="loop")
    theirs = peers.meta_gradient(peers.META_STEPS[peer], mlp, tasks, F.mse_loss, 2, 0.3)
    assert max(a.abs().max().item() for a in ours) > 1e-3
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_learn2learn_clone_is_shallow_and_differentiable():
    net = _net()
    clone = peers.clone_module(net)
    assert clone is not net and clone[0] is not net[0]
    assert clone[0].weight is not net[0].weight and clone[0].weight.grad_fn is not None  # param.clone()
    assert clone[1].__dict__["eps"] == net[1].eps  # attributes shared, not deep-copied
    clone[0].weight.sum().backward()
    assert torch.all(net[0].weight.grad == 1)
