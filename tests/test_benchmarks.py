"""The benchmark harness: every bench module runs in quick mode and returns flat numeric results."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
bench_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_run)


@pytest.mark.parametrize("path", bench_run.discover(), ids=lambda p: p.stem)
def test_benchmark_runs_quick_and_reports_ratios(path):
    results = bench_run.run_module(path, quick=True)
    assert results and all(isinstance(v, (int, float)) for v in results.values())
    assert any("speedup" in k or "ratio" in k for k in results), f"{path.stem} reports no ratio"
