"""Cache builds in several processes, with output that does not depend on how many.

:func:`map_chunks` applies a function to consecutive chunks of the items in forked worker processes (Linux; the
function and items are inherited, not pickled) and returns the results in input order, so a cache built with any
number of processes is byte for byte the one built in one. The parent's objects are frozen out of the garbage
collector while the workers run (``gc.freeze``), so workers do not copy the pages they inherited. Workers run
numpy, scipy and pymatgen code only (never torch), so forking after torch (or CUDA) was initialised is safe.
"""

from __future__ import annotations

import concurrent.futures
import gc
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from framer.data.sources import DataError

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_WORKERS = 8  # the default build_workers: min(8, available CPUs)
MIN_CHUNK = 64  # items per task at least (a record takes well under a millisecond: ship enough work per task)

_inherited: tuple[Callable, Sequence] | None = None  # (function, items) in a worker, set before the fork


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm allocation), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(build_workers: int | None) -> int:
    """Processes a build uses: ``None`` means min(8, available CPUs); 0 and 1 mean this process only."""
    if build_workers is None:
        return min(DEFAULT_MAX_WORKERS, available_cpus())
    if isinstance(build_workers, bool) or not isinstance(build_workers, int) or build_workers < 0:
        raise ValueError(f"build_workers must be null or an integer >= 0, got {build_workers!r}")
    return build_workers


def map_chunks(
    function: Callable[[Sequence[T]], R], items: Sequence[T], workers: int, min_chunk: int = MIN_CHUNK
) -> list[R]:
    """``function`` applied to consecutive chunks of ``items``, in ``workers`` forked processes when that can help.

    Chunks hold at least ``min_chunk`` items (about four per worker, for balance); the results come back in input
    order. Without workers (0 or 1), or when everything fits in one chunk, ``function`` gets all the items at once,
    in this process: callers must combine chunk results so that the chunking does not show. Exceptions raised by
    ``function`` propagate as in a loop; a worker that dies (e.g. killed for lack of memory) is a
    :class:`~framer.data.sources.DataError`.
    """
    n = len(items)
    chunk = max(min_chunk, math.ceil(n / (4 * max(workers, 1))))
    if workers <= 1 or n <= chunk or not sys.platform.startswith("linux"):
        return [function(items)]
    bounds = [(start, min(n, start + chunk)) for start in range(0, n, chunk)]
    global _inherited
    _inherited = (function, items)
    gc.freeze()
    pool = concurrent.futures.ProcessPoolExecutor(
        min(workers, len(bounds)), mp_context=multiprocessing.get_context("fork")
    )
    try:
        return list(pool.map(_run_chunk, bounds))
    except BrokenProcessPool as err:
        raise DataError(
            f"a cache-build worker process died ({err}); out of memory? Use fewer processes "
            "(build_workers; 0 builds in this process)"
        ) from None
    finally:
        pool.shutdown(cancel_futures=True)  # after an error: no new chunks, only the running ones finish
        _inherited = None
        gc.unfreeze()


def _run_chunk(bounds: tuple[int, int]):
    function, items = _inherited
    return function(items[bounds[0] : bounds[1]])
