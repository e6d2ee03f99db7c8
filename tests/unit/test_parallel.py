"""Per-symbol work in a process pool: the same results, in order, from other processes."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from pipelines import stages
from pipelines.parallel import available_cores, map_symbols, pool_size


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def test_results_in_order_from_pool_processes() -> None:
    items = list(range(7))
    out = map_symbols(_pid_and_square, items, workers=2)
    assert [sq for _, sq in out] == [x * x for x in items]
    assert os.getpid() not in {pid for pid, _ in out}
    here = map_symbols(_pid_and_square, items, workers=2, parallel=False)
    assert {pid for pid, _ in here} == {os.getpid()}
    assert map_symbols(_pid_and_square, [3], workers=4) == [(os.getpid(), 9)]  # one job: here


def test_pool_size() -> None:
    assert pool_size(0, 1000) == available_cores()
    assert pool_size(8, 3) == 3 and pool_size(1, 50) == 1
    with pytest.raises(ValueError, match="workers must be >= 0"):
        pool_size(-1, 5)


def _returns(seed: int, n: int = 650) -> pd.Series:
    rng = np.random.default_rng(seed)
    sessions = pd.bdate_range("2015-01-02", periods=n)
    vol = 0.01 * np.exp(np.cumsum(rng.normal(0, 0.05, n)) * 0.3)
    return pd.Series(vol * rng.standard_t(5, n), index=sessions, name="ret_1")


def test_garch_backfill_in_a_pool_is_byte_identical() -> None:
    """The light stage's per-symbol job (refits, EGARCH simulations, the session's fits)."""
    specs = stages.light_specs(5)
    jobs: list[stages._GarchJob] = []
    for i, symbol in enumerate(("AAA", "BBB", "CCC")):
        r = _returns(i)
        jobs.append(stages._GarchJob(symbol, r, list(r.index[300:-1]),
                                     {name: None for name in specs}, specs, 126, 250))
    alone = map_symbols(stages._garch_job, jobs, workers=1)
    pooled = map_symbols(stages._garch_job, jobs, workers=2)
    for (rows_a, fits_a), (rows_p, fits_p) in zip(alone, pooled, strict=True):
        pd.testing.assert_frame_equal(rows_a, rows_p, check_exact=True)
        assert {k: f.params for k, f in fits_a.items()} == {k: f.params for k, f in fits_p.items()}
    assert len(alone[0][0]) == 650 - 300  # the history rows, then the session's
