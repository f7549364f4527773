"""``make bench``: run every ``benchmarks/bench_*.py`` and write ``benchmarks/results.json``.

Each module defines ``run(quick: bool = False)`` returning a :class:`nbmodule.profiling.BenchResults`: flat
``key -> number`` results, every ratio made with ``BenchResults.ratio`` from two timings reported beside it
(the tests check ``ratio == numerator / denominator``), ``{bench}_threads`` (the torch thread count it was
measured with) and ``notes`` (the protocol in words). ``make bench`` runs each in a fresh process (nothing a
benchmark changes, torch's settings or the allocator's, reaches the next) with ``NBM_BENCH_THREADS`` torch
threads (default 2); :func:`run_module`, the in-process runner (tests), restores torch's global state
(threads, grad mode, default dtype, backend flags) after the module and says which entries it had changed.

results.json: the numbers by key (speed is tracked by name across commits), ``_notes`` (each benchmark's
protocol), ``_bench_keys`` (which keys each benchmark wrote: a rerun of one benchmark replaces exactly
those), ``_machine`` and ``_load`` (the 1-minute load average before and after: this machine may be shared,
and numbers measured under load are slower and noisier, ratios less so since candidates are interleaved).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from nbmodule.env import keep_freed_memory  # noqa: E402
from nbmodule.profiling import BenchResults, global_state, restore_global_state  # noqa: E402


def discover(only: list[str] | None = None) -> list[Path]:
    mods = sorted(HERE.glob("bench_*.py"))
    if only:
        mods = [m for m in mods if any(o in m.stem for o in only)]
    return mods


def bench_name(path: Path) -> str:
    """``bench_fewshot.py`` -> ``fewshot``: the prefix of its ``{bench}_threads`` key."""
    return path.stem[len("bench_"):]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def run_module(path: Path, quick: bool) -> BenchResults:
    """``run(quick)`` of one benchmark module, torch's global state restored afterwards (``.leaked`` lists what
    the module had left changed)."""
    state = global_state()
    try:
        results = load(path).run(quick=quick)
    finally:
        leaked = restore_global_state(state)
    if not isinstance(results, BenchResults):
        results = BenchResults(results)
    bad = {k: v for k, v in results.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
    if bad:
        raise TypeError(f"{path.name}: results must be flat numbers, got {bad}")
    results.leaked = leaked
    if leaked:
        print(f"   {path.stem} changed torch's global state ({', '.join(leaked)}); restored", flush=True)
    return results


def run_isolated(path: Path, quick: bool) -> BenchResults:
    """:func:`run_module` in a fresh Python process (its output streams through); results come back as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        cmd = [sys.executable, __file__, "--worker", str(path), str(out)] + (["--quick"] if quick else [])
        subprocess.run(cmd, check=True)
        data = json.loads(out.read_text())
    res = BenchResults(data["results"])
    res.ratios = {k: tuple(v) for k, v in data["ratios"].items()}
    res.notes = data["notes"]
    res.leaked = data["leaked"]
    return res


def _worker(path: str, out: str, quick: bool) -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("NBM_BENCH_THREADS", "2")))
    keep_freed_memory()  # as every study run does (nbmodule.studies): the allocator the figures describe
    res = run_module(Path(path), quick)
    Path(out).write_text(json.dumps({"results": dict(res), "ratios": res.ratios, "notes": res.notes,
                                     "leaked": res.leaked}))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1], argv[2], "--quick" in argv)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="substrings of benchmark module names")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the harness, not speed)")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args(argv)
    import torch

    threads = int(os.environ.get("NBM_BENCH_THREADS", "2"))
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    merged = dict(old) if args.only else {}  # a full run starts afresh: no stale keys
    bench_keys = dict(old.get("_bench_keys", {})) if args.only else {}
    notes = dict(old.get("_notes", {})) if args.only else {}
    load_before = os.getloadavg()[0]
    failed = []
    for path in discover(args.only):
        print(f"== {path.stem}", flush=True)
        start = time.perf_counter()
        try:
            results = run_isolated(path, args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(path.stem)
            continue
        for k in bench_keys.get(path.stem, []):  # this benchmark's previous keys
            merged.pop(k, None)
        merged.update(results)
        bench_keys[path.stem] = sorted(results)
        notes.update(results.notes)
        print(f"   {len(results)} results in {time.perf_counter() - start:.1f} s", flush=True)
    merged["_machine"] = f"{platform.machine()} {os.cpu_count()} cpus, torch threads {threads}, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU") + (
        ", glibc keeps freed blocks (nbmodule.env.keep_freed_memory)" if keep_freed_memory() else "")
    merged["_load"] = f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    merged["_updated"] = time.strftime("%Y-%m-%d")
    merged["_notes"] = notes
    merged["_bench_keys"] = bench_keys
    if not args.quick:
        out.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
