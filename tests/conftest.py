"""Shared test set-up: few threads (two processes fighting over 2 cores run 25-40x slower), seeded RNG."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("NBM_TEST_THREADS", "2")))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """Real data samples (``$NBM_SHARED_DATA``); tests using it skip only when it is absent."""
    env = os.environ.get("NBM_SHARED_DATA")
    if not env or not Path(env).is_dir():
        pytest.skip("NBM_SHARED_DATA is not set to the shared real-data folder")
    return Path(env)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny per-task ops: one thread is fastest (2 threads on a busy 2-core machine: ~5x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
