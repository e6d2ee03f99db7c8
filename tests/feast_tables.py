"""Shared helpers of the Feast tests: synthetic offline tables and environment restoring."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd

from pipelines import feature_store as fs
from pipelines.calendar import closes_for, sessions_between
from pipelines.schema import FEATURE_COLUMNS, GARCH_COLUMNS, OPTION_COLUMNS
from pipelines.settings import WINDOW_COLUMNS


def offline_tables(
    symbols: tuple[str, ...], start: str, end: str, *, seed: int, lookback: int
) -> dict[fs.ViewName, pd.DataFrame]:
    """Random offline tables of the feature views, one row per symbol and session.

    Parameters
    ----------
    symbols : tuple[str, ...]
        Symbols of the rows.
    start, end : str
        First and last calendar day (ISO), inclusive; the rows are the sessions between them.
    seed : int
        Seed of the random values (the same seed gives the same tables).
    lookback : int
        Sessions of each ``lstm_window`` sequence (``seq`` holds ``lookback`` times the
        window columns).

    Returns
    -------
    dict[fs.ViewName, pd.DataFrame]
        ``market_features``, ``garch_features``, ``option_features`` and ``lstm_window`` tables,
        each with ``symbol``,
        ``session`` and ``event_timestamp`` (the session's close) and the view's columns.
    """
    rng = np.random.default_rng(seed)
    sessions = pd.to_datetime(sessions_between(start, end))
    keys = pd.MultiIndex.from_product([symbols, sessions], names=["symbol", "session"])
    base = keys.to_frame(index=False)
    base["event_timestamp"] = closes_for(base["session"]).to_numpy()
    n = len(base)
    market = base.assign(**{c: rng.normal(size=n) for c in FEATURE_COLUMNS})
    garch = base.assign(**{c: rng.uniform(0.1, 0.5, size=n) for c in GARCH_COLUMNS})
    options = base.assign(**{c: rng.uniform(0.01, 0.1, size=n) for c in OPTION_COLUMNS})
    window = base.copy()
    window["seq"] = list(rng.normal(size=(n, lookback * len(WINDOW_COLUMNS))))
    window["asof"] = base["event_timestamp"].astype("int64") // 10**9
    return {"market_features": market, "garch_features": garch, "lstm_window": window,
            "option_features": options}


@contextmanager
def restored_environ(keys: Iterable[str]) -> Iterator[None]:
    """Restore the environment variables ``keys`` on exit to what they were on entry.

    Parameters
    ----------
    keys : Iterable[str]
        Names of the variables; one unset on entry is removed on exit.

    Yields
    ------
    None
    """
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
