"""``make bench``: run every ``benchmarks/bench_*.py`` and write ``benchmarks/results.json``.

Each module defines ``run(quick: bool = False) -> dict[str, float]``: flat keys, each ratio computed from a
baseline and a candidate timed in the same process. Results are merged by key into results.json (one file,
so speed is tracked by name across commits) together with the machine they were measured on.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover(only: list[str] | None = None) -> list[Path]:
    mods = sorted(HERE.glob("bench_*.py"))
    if only:
        mods = [m for m in mods if any(o in m.stem for o in only)]
    return mods


def run_module(path: Path, quick: bool) -> dict[str, float]:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    results = mod.run(quick=quick)
    bad = {k: v for k, v in results.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
    if bad:
        raise TypeError(f"{path.name}: results must be flat numbers, got {bad}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="substrings of benchmark module names")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the harness, not speed)")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args(argv)
    import torch

    threads = int(os.environ.get("NBM_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    out = Path(args.out)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    failed = []
    for path in discover(args.only):
        print(f"== {path.stem}", flush=True)
        start = time.perf_counter()
        try:
            results = run_module(path, args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(path.stem)
            continue
        merged.update(results)
        print(f"   {len(results)} results in {time.perf_counter() - start:.1f} s", flush=True)
    merged["_machine"] = f"{platform.machine()} {os.cpu_count()} cpus, torch threads {threads}, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    merged["_updated"] = time.strftime("%Y-%m-%d")
    if not args.quick:
        out.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
