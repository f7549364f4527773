"""Where things live and what runs them: data root, run root, device, seeds, threads.

Seeds, devices and dtypes are parameters, never globals: these helpers take them as arguments and return
what they made (a ``torch.Generator``, a ``torch.device``) so callers pass them on explicitly.
"""
from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import numpy as np
import torch

from data_prep.roots import DRIVE_ROOT, REPO_ROOT, DataRootError, data_root, in_colab, mirror_roots
from data_prep.roots import default_base as _default_base

# REPO_ROOT, DRIVE_ROOT, in_colab and data_root (``$NBM_DATA``; a file there is a DataRootError naming it) are
# defined once in data_prep.roots, the lower layer, and re-exported here; ``mirror_roots()`` reads NBM_MIRROR.

__all__ = [
    "REPO_ROOT", "in_colab", "data_root", "runs_root", "pick_device", "seed_everything", "set_threads",
    "shared_data", "DataRootError", "mirror_roots", "keep_freed_memory", "cpu_bfloat16",
]


def runs_root(path: str | Path | None = None) -> Path:
    """Root of run folders: ``path`` if given, else ``$NBM_RUNS``, else ``runs/`` at the repo root."""
    if path:
        return Path(path).expanduser().resolve()
    env = os.environ.get("NBM_RUNS")
    return Path(env).expanduser().resolve() if env else _default_base() / "runs"


def shared_data() -> Path | None:
    """Real data samples for tests (``$NBM_SHARED_DATA``, set by the Makefile/CI); None when absent."""
    env = os.environ.get("NBM_SHARED_DATA")
    if env and Path(env).is_dir():
        return Path(env).resolve()
    return None


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks cuda when available, else mps, else cpu; anything else is used as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    from .config import ConfigError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device={device!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for but CUDA is not available; use device='auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                    and torch.backends.mps.is_available()):
        raise ConfigError(f"device={device!r} was asked for but MPS is not available; use device='auto' or 'cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={device!r}: this project runs on auto, cpu, cuda, cuda:N or mps")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) and return a CPU generator seeded with ``seed``.

    Prefer passing the returned generator to samplers over relying on the global state.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
_malloc_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MB in the process's heap instead of returning them to the OS.

    By default glibc serves such blocks (a ``(40000, 100)`` float tensor is 16 MB) with fresh ``mmap`` pages
    and unmaps them on free, so every new tensor of the size page-faults and zeroes its memory again: MAML-RL's
    TRPO step, which allocates a few such tensors per curvature product, took 6.4 s per meta-iteration instead
    of 4.6-4.9 s (benchmarks/bench_maml_rl.py, one thread, this 2-core machine, 2026-12-03). The process keeps
    up to 1 GiB of freed memory for reuse. Process-wide and idempotent; a no-op off glibc or when
    ``NBM_MALLOC=system``. Returns whether the setting is in effect.
    """
    global _malloc_kept
    if _malloc_kept is None:
        _malloc_kept = False
        if os.environ.get("NBM_MALLOC", "").lower() != "system":
            import ctypes
            import ctypes.util
            import platform

            if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
                try:
                    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                    _malloc_kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
                                        and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
                                        and libc.mallopt(_M_TOP_PAD, 64 << 20))
                except (OSError, AttributeError):
                    _malloc_kept = False
    return _malloc_kept


@functools.cache  # asked at every autocast entry (each training step): the CPU does not change
def _native_bfloat16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bfloat16() -> tuple[bool, str]:
    """``(use, why)``: whether a config's ``amp: true`` autocasts to bfloat16 on the CPU.

    Yes where oneDNN has native bfloat16 kernels (AVX512-BF16 or AMX); otherwise no, and training and
    evaluation run in float32: emulated bfloat16 is many times slower (ResNet-50 at 288x384, one thread, on
    this project's AVX2 machine: 11.2 s per forward pass against 0.44 s in float32, 2026-12-03), which made the
    gpu configs on a CPU (the gpu-dry runs) take 10-15 minutes each. ``NBM_CPU_AMP=1`` forces bfloat16 (the
    tests do, on tiny models, so the mixed-precision code path is tested on every machine); ``NBM_CPU_AMP=0``
    turns it off."""
    forced = os.environ.get("NBM_CPU_AMP", "").strip()
    if forced == "1":
        return True, "bfloat16 autocast on the CPU (forced by NBM_CPU_AMP=1)"
    if forced == "0":
        return False, "float32 on the CPU (NBM_CPU_AMP=0)"
    if _native_bfloat16():
        return True, "bfloat16 autocast on the CPU (native bfloat16 kernels)"
    return False, ("float32 on the CPU: amp asks for bfloat16, which this CPU lacks natively (AVX512-BF16 or AMX) "
                   "and emulates many times slower; NBM_CPU_AMP=1 forces it")


def set_threads(n: int | None) -> int:
    """Limit torch's intra-op threads (two processes fighting over 2 cores run 25-40x slower)."""
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()
