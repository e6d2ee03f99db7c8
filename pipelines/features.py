"""Close-analysis features and LSTM input windows (pure functions: frames in, frames out).

Indicators come from TA-Lib; returns and realised volatility are computed per symbol on the
adjusted close (the close where no adjusted close is known). Every value at session ``t`` uses
bars up to and including ``t`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import talib
from numpy.lib.stride_tricks import sliding_window_view

from pipelines import calendar, settings
from pipelines.schema import FEATURE_COLUMNS

#: Trading sessions per year used to annualise realised volatility.
ANNUALISATION = 252.0

KEYS: tuple[str, ...] = ("symbol", "session")


def _rolling_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing ``window`` sum; NaN until ``window`` values exist or when any of them is NaN."""
    out = np.full(x.shape, np.nan)
    if len(x) >= window:
        out[window - 1 :] = sliding_window_view(x, window).sum(axis=1)
    return out


def _symbol_features(price: np.ndarray) -> dict[str, np.ndarray]:
    """Features of one symbol's price series (sessions in order)."""
    n = len(price)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(price)
    ret = np.full(n, np.nan)
    if n > 1:
        ret[1:] = np.diff(logp)
    feats: dict[str, np.ndarray] = {
        "ret_1": ret,
        "ret_5": _rolling_sum(ret, 5),
        "ret_22": _rolling_sum(ret, 22),
        "rv_5": np.sqrt(ANNUALISATION * _rolling_sum(ret * ret, 5) / 5.0),
        "rv_22": np.sqrt(ANNUALISATION * _rolling_sum(ret * ret, 22) / 22.0),
    }
    nan = np.full(n, np.nan)
    finite = np.isfinite(price)
    if finite.sum() == 0:
        feats.update(rsi_14=nan, macd_hist=nan, bb_pctb=nan)
        return feats
    feats["rsi_14"] = talib.RSI(price, timeperiod=14)
    _, _, hist = talib.MACD(price, fastperiod=12, slowperiod=26, signalperiod=9)
    feats["macd_hist"] = hist / price
    upper, _, lower = talib.BBANDS(
        price, timeperiod=20, nbdevup=2.0, nbdevdn=2.0, matype=talib.MA_Type.SMA
    )
    width = upper - lower
    with np.errstate(divide="ignore", invalid="ignore"):
        pctb = np.where(width > 0, (price - lower) / width, np.nan)
    feats["bb_pctb"] = pctb
    return feats


def compute_features(bars: pd.DataFrame) -> pd.DataFrame:
    """Close-analysis features of canonical bars.

    Parameters
    ----------
    bars : pd.DataFrame
        Canonical bars (``schema.BAR_COLUMNS``) of one or more symbols over consecutive sessions.

    Returns
    -------
    pd.DataFrame
        Columns ``symbol``, ``session``, ``event_timestamp`` (UTC session close) and
        ``schema.FEATURE_COLUMNS`` (``float64``), one row per input bar, sorted by ``session``,
        ``symbol``. Warm-up rows keep NaN.

    Notes
    -----
    - ``ret_1`` is the log return of the adjusted close (the close where ``adj_close`` is null);
      ``ret_5``/``ret_22`` sum the last 5/22 log returns; ``rv_n = sqrt(252 * mean(r^2))``.
    - ``rsi_14`` = ``talib.RSI(p, 14)``; ``macd_hist`` = ``talib.MACD(p, 12, 26, 9)`` histogram
      divided by ``p``; ``bb_pctb`` = ``(p - lower) / (upper - lower)`` of ``talib.BBANDS(p, 20,
      2, 2)`` (NaN when the band has zero width).
    - Causal: the row of session ``t`` only depends on the symbol's bars up to ``t``. TA-Lib's
      exponential smoothers (RSI, MACD) depend on where the series starts, so give the function
      enough history before the sessions whose features are kept.
    """
    frame = bars.sort_values(["symbol", "session"], kind="stable").reset_index(drop=True)
    price_all = frame["adj_close"].astype("float64")
    price_all = price_all.where(price_all.notna(), frame["close"].astype("float64"))
    symbols = frame["symbol"].to_numpy()
    prices = price_all.to_numpy(dtype="float64")

    out = {c: np.full(len(frame), np.nan) for c in FEATURE_COLUMNS}
    starts: np.ndarray = (
        np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]])
        if len(frame)
        else np.array([], int)
    )
    bounds = np.r_[starts, len(frame)]
    for i in range(len(starts)):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        feats = _symbol_features(np.ascontiguousarray(prices[lo:hi]))
        for col in FEATURE_COLUMNS:
            out[col][lo:hi] = feats[col]

    result = pd.DataFrame(
        {
            "symbol": frame["symbol"].to_numpy(dtype=object),
            "session": frame["session"].to_numpy(dtype="datetime64[ns]"),
        }
    )
    result["event_timestamp"] = _utc(calendar.closes_for(result["session"]))
    for col in FEATURE_COLUMNS:
        result[col] = out[col].astype("float64")
    return result.sort_values(["session", "symbol"], kind="stable").reset_index(drop=True)


def _utc(ts: pd.Series) -> pd.Series:
    """``ts`` as ``datetime64[ns, UTC]``."""
    return pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]")


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    """Epoch seconds (``int64``) of timestamps."""
    return (_utc(ts).astype("int64") // 1_000_000_000).to_numpy(dtype="int64")


def build_windows(
    features: pd.DataFrame,
    garch: pd.DataFrame,
    lookback: int,
    columns: Sequence[str] = settings.WINDOW_COLUMNS,
) -> pd.DataFrame:
    """Flattened LSTM input windows, one per (symbol, session).

    Parameters
    ----------
    features : pd.DataFrame
        Output of :func:`compute_features` (keyed by ``symbol``, ``session``).
    garch : pd.DataFrame
        GARCH outputs keyed by ``symbol``, ``session`` with ``schema.GARCH_COLUMNS``.
    lookback : int
        Sessions per window.
    columns : Sequence[str], optional
        Window columns, taken from ``features`` or ``garch``.

    Returns
    -------
    pd.DataFrame
        Columns ``symbol``, ``session``, ``event_timestamp``, ``seq`` (``list[float]`` of length
        ``lookback * len(columns)``: row-major, oldest session first, i.e.
        ``seq[j * len(columns) + k]`` is column ``k`` at session ``t - lookback + 1 + j``) and
        ``asof`` (``int64`` epoch seconds of the session close). Rows whose window is incomplete
        or holds a NaN are dropped. Sorted by ``session``, ``symbol``.

    Raises
    ------
    ValueError
        If ``lookback < 1`` or a column is in neither frame.
    """
    if lookback < 1:
        raise ValueError(f"lookback must be >= 1, got {lookback}")
    cols = list(columns)
    missing = [c for c in cols if c not in features.columns and c not in garch.columns]
    if missing:
        raise ValueError(f"window columns {missing} are in neither features nor garch")
    from_garch = [c for c in cols if c not in features.columns]
    left_cols = [*KEYS, *[c for c in cols if c not in from_garch]]
    if "event_timestamp" in features.columns:
        left_cols.insert(2, "event_timestamp")
    left = features.loc[:, left_cols]
    if from_garch:
        right = garch.loc[:, [*KEYS, *from_garch]]
        merged = left.merge(right, on=list(KEYS), how="left", validate="one_to_one")
    else:
        merged = left.copy()
    merged = merged.sort_values(["symbol", "session"], kind="stable").reset_index(drop=True)
    if "event_timestamp" not in merged.columns:
        merged["event_timestamp"] = calendar.closes_for(merged["session"])

    values = merged.loc[:, cols].to_numpy(dtype="float64")
    symbols = merged["symbol"].to_numpy()
    width = lookback * len(cols)
    starts: np.ndarray = (
        np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]])
        if len(merged)
        else np.array([], int)
    )
    bounds = np.r_[starts, len(merged)]
    rows: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    for i in range(len(starts)):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if hi - lo < lookback:
            continue
        win = sliding_window_view(values[lo:hi], (lookback, len(cols)))[:, 0]
        flat = win.reshape(len(win), width)
        keep = ~np.isnan(flat).any(axis=1)
        rows.append(np.arange(lo + lookback - 1, hi)[keep])
        blocks.append(flat[keep])

    if rows:
        idx = np.concatenate(rows)
        seq = np.concatenate(blocks).tolist()
    else:
        idx, seq = np.array([], dtype="int64"), []
    out = merged.iloc[idx].loc[:, ["symbol", "session", "event_timestamp"]].reset_index(drop=True)
    out["symbol"] = out["symbol"].astype(object)
    out["session"] = out["session"].astype("datetime64[ns]")
    out["event_timestamp"] = _utc(out["event_timestamp"])
    out["seq"] = pd.Series(seq, dtype=object)
    out["asof"] = _epoch_seconds(out["event_timestamp"])
    return out.sort_values(["session", "symbol"], kind="stable").reset_index(drop=True)
