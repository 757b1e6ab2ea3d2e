"""Timing and peak-memory primitives (standard library and torch only: measuring subprocesses load this file by path).

Timing: a few warm-up calls, then repeated calls until ``repeats`` were timed or ``budget`` seconds were spent (at
least one is always timed); the figure is the median, with the wall-clock and the process CPU seconds of every call
(CPU seconds count all threads of the process, so they can exceed wall time with several threads and are less
sensitive than wall time to other load on a shared machine).

Peak memory on CPU: ``tracemalloc`` does not see torch's allocations, so the figure is the process's resident-set
high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) after a stage minus the resident set before the first stage,
read in a fresh subprocess per measured case (the runner starts one). It counts everything the stage made resident:
tensors, the allocator's cached blocks, autograd buffers and thread-local scratch. Because the high-water mark never
goes down, stages run in increasing order of expected memory and a stage's figure is exact only if it exceeds the
previous stage's. On CUDA it is ``torch.cuda.max_memory_allocated`` per stage (reset before each stage).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

MIB = 2**20


def current_rss_bytes() -> int:
    """Resident set size now (Linux ``/proc/self/statm``; falls back to the high-water mark)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Resident-set high-water mark of this process (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakMemory:
    """Peak memory of successive stages of one process, in MiB (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline_rss = current_rss_bytes()
        self.method = (
            "cuda max_memory_allocated per stage"
            if device.type == "cuda"
            else "ru_maxrss high-water mark minus RSS before the first stage (fresh process)"
        )

    def start_stage(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def stage_peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MIB
        return (peak_rss_bytes() - self.baseline_rss) / MIB

    def absolute_peak_mib(self) -> float:
        return peak_rss_bytes() / MIB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any],
    device: torch.device,
    warmup: int = 1,
    repeats: int = 3,
    budget: float = float("inf"),
) -> dict[str, Any]:
    """Median wall and CPU seconds of ``fn()`` after ``warmup`` untimed calls.

    Stops after ``repeats`` timed calls or once the timed calls took ``budget`` wall seconds (at least one call).
    Returns the medians, the minimum wall time, every call's times and the warm-up wall time (the first call, which
    includes one-off costs such as compilation).
    """
    warmup_wall = []
    for _ in range(warmup):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        warmup_wall.append(time.perf_counter() - start)
    wall, cpu = [], []
    while len(wall) < max(1, repeats) and (not wall or sum(wall) < budget):
        synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "wall_s": statistics.median(wall),
        "cpu_s": statistics.median(cpu),
        "min_wall_s": min(wall),
        "repeats": len(wall),
        "wall_all_s": wall,
        "cpu_all_s": cpu,
        "warmup_wall_s": warmup_wall,
    }
