"""Per-symbol work spread over the machine's cores, in order, with the same results.

A stage whose cost is a pure function per symbol (the GARCH backfill: expanding-window refits
and EGARCH simulations over ten years of each symbol) runs it in a process pool when there is
enough of it; the results come back in the order of the inputs, so what the stage writes is the
same byte for byte as with one process.

The pool forks the stage's process (as Airflow's LocalExecutor and Celery's prefork pool fork
theirs): its children inherit the imports and the inputs for free and run only the pure
numerical function (numpy, scipy, arch), never a lock-holding library of the parent (the
database clients, Arrow's thread pool); they leave with ``os._exit``, so no exit handler of the
parent runs twice. ``spawn``/``forkserver`` children would re-import the parent's ``__main__``,
which not every caller guards (a script, ``python -c``). ``Settings.workers``
(``AFTERBELL_WORKERS``) bounds the pool; set it to 1 where the executor already runs one task per
core (e.g. Celery workers with ``worker_concurrency`` = cores).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

__all__ = ["available_cores", "map_symbols", "pool_size"]

log = logging.getLogger("afterbell.parallel")

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def pool_size(workers: int, items: int) -> int:
    """Processes for ``items`` jobs: ``workers`` (0: every available core), at most ``items``."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: every core), got {workers}")
    return max(1, min(workers or available_cores(), items))


def map_symbols(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int,
    parallel: bool = True,
) -> list[R]:
    """``[fn(item) for item in items]``, in a pool of :func:`pool_size` processes when
    ``parallel`` and more than one process would run.

    Parameters
    ----------
    fn : callable
        A module-level (picklable) pure function of one item.
    items : sequence
        Its inputs (picklable), e.g. one symbol's returns each.
    workers : int
        Most processes (0: every available core).
    parallel : bool
        False runs in this process (the caller judged the work too small for a pool's start-up,
        about a second).

    Returns
    -------
    list
        The results in the order of ``items``.
    """
    size = pool_size(workers, len(items))
    if not parallel or size == 1:
        return [fn(item) for item in items]
    ctx = multiprocessing.get_context("fork")
    log.info("%d jobs over %d processes", len(items), size)
    with ProcessPoolExecutor(max_workers=size, mp_context=ctx) as pool:
        return list(pool.map(fn, items, chunksize=1))
