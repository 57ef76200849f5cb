"""The machine a training runs on: the torch device, CPU threads, memory.

Library calls that train or predict choose their device and threads inside ``torch_session``,
which restores torch's process-wide settings (thread count, cuDNN autotuning) on the way out, so
a search or an export called from a notebook leaves the caller's torch as it found it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import sys
import time
from collections.abc import Iterator

import torch

from maskopt.errors import MaskoptError


def free_cores(window: float = 0.25) -> int:
    """Cores not already busy, at least 1: the core count minus the cores in use.

    On Linux the use is measured now, over ``window`` seconds of ``/proc/stat``; elsewhere it is
    the 1-minute load average, which lags: right after a 2-worker search it still counts both
    workers, and an ``export-best`` started then trained on one of two idle cores, 1.7x slower.
    """
    cores = os.cpu_count() or 1
    busy = _busy_cores(window)
    return max(1, int(cores - (os.getloadavg()[0] if busy is None else busy) + 0.5))


def _busy_cores(window: float) -> float | None:
    """Cores in use over the next ``window`` seconds (from ``/proc/stat``), or None off Linux."""

    def sample() -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        ticks = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(ticks), ticks[3] + ticks[4], sum(line.startswith("cpu") for line in lines) - 1

    try:
        total_0, idle_0, cpus = sample()
        time.sleep(window)
        total_1, idle_1, _ = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_1 - total_0
    return cpus * (1 - (idle_1 - idle_0) / elapsed) if elapsed > 0 else None


def threads_per_worker(n_workers: int) -> int:
    """Each of ``n_workers`` worker processes' share of the free cores, at least one thread."""
    return max(1, free_cores() // n_workers)


def resolve_device(device: str) -> torch.device:
    """The torch device for ``auto``, ``cpu`` or ``cuda``."""
    if device == "cuda" and not torch.cuda.is_available():
        raise MaskoptError("device cuda was asked for, but no CUDA GPU is visible; use device cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


@contextlib.contextmanager
def torch_session(device: str, threads: int | None = None) -> Iterator[torch.device]:
    """The torch device for ``auto``, ``cpu`` or ``cuda``, with threads and cuDNN set up inside.

    ``threads`` defaults to the cores that are free now (``free_cores``, at least one).
    Oversubscribed torch threads spin-wait: two 2-thread processes on 2 cores were measured at
    7 img/s against 370 img/s for one thread each, so a busy machine gets fewer threads.
    """
    torch_device = resolve_device(device)
    previous_threads, previous_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.set_num_threads(threads or free_cores())
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image sizes: let cuDNN pick the fastest kernels
    try:
        yield torch_device
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.cudnn.benchmark = previous_benchmark


def release_memory(device: torch.device) -> None:
    """Drop what the last trial left: Python garbage and the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocations on a GPU, resident set on the CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
