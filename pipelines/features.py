"""Close-analysis features and LSTM input windows (pure functions: frames in, frames out).

Every rolling quantity comes from TA-Lib (``SUM``, ``ROCR``, ``SMA``, ``STDDEV``, ``RSI``, ``MACD``,
``BBANDS``, ``ATR``), run on one contiguous ``float64`` array per symbol; numpy only does the
elementwise algebra around it (logs, squares, ratios, square roots). Prices are the adjusted close
(the close where no adjusted close is known). Every value at session ``t`` uses bars up to and
including ``t`` only; the market columns use the market index's bar of the same session.

Column definitions, warm-ups, valid ranges and inputs are declared in :mod:`pipelines.schema`
(``FEATURE_COLUMNS``, ``FEATURE_WARMUP``, ``FEATURE_RANGES``, ``FEATURE_INPUTS``).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
import talib
from numpy.lib.stride_tricks import sliding_window_view

from pipelines import calendar, settings
from pipelines.schema import FEATURE_COLUMNS

#: Trading sessions per year used to annualise every volatility.
ANNUALISATION: Final[float] = 252.0

#: Symbol whose return and realised vol are broadcast as ``mkt_ret_1`` / ``mkt_rv_22``.
MARKET_SYMBOL: Final[str] = "SPX"

#: Indicator parameters (they are part of the column names in ``schema.FEATURE_COLUMNS``).
RETURN_HORIZONS: Final[tuple[int, ...]] = (1, 5, 22)
RV_WINDOWS: Final[tuple[int, ...]] = (5, 22)
RSI_PERIOD: Final[int] = 14
MACD_FAST: Final[int] = 12
MACD_SLOW: Final[int] = 26
MACD_SIGNAL: Final[int] = 9
BB_PERIOD: Final[int] = 20
BB_NDEV: Final[float] = 2.0
ATR_PERIOD: Final[int] = 14
RANGE_WINDOW: Final[int] = 22
VOLUME_WINDOW: Final[int] = 22

#: Parkinson (1980): ``E[ln(H/L)^2] = 4 ln 2 * sigma^2`` for a driftless Brownian motion.
PARKINSON_SCALE: Final[float] = 1.0 / (4.0 * math.log(2.0))
#: Garman-Klass (1980): ``sigma^2 = 0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2`` per session.
GK_CLOSE_WEIGHT: Final[float] = 2.0 * math.log(2.0) - 1.0

KEYS: tuple[str, ...] = ("symbol", "session")

_Indicator = Callable[..., np.ndarray]

#: Largest rounding residue of a TA-Lib running sum of squared log ranges/returns.
_RESIDUE: Final[float] = 1e-12


# ------------------------------------------------------------------------------ array helpers
def _runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of the maximal runs of ``True`` in a boolean array."""
    edges = np.flatnonzero(np.diff(np.r_[0, valid.astype(np.int8), 0]))
    return [(int(lo), int(hi)) for lo, hi in zip(edges[::2], edges[1::2], strict=True)]


def _by_runs(func: _Indicator, valid: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
    """Apply a TA-Lib computation to each run of consecutive valid rows; NaN elsewhere.

    TA-Lib skips leading NaNs but lets an interior NaN poison its running sums and smoothers
    for the rest of the series. Running it on each gap-free run instead gives exactly the
    trailing-window semantics (a window that touches a gap is NaN) and restarts the
    exponential smoothers after a gap. A series without gaps is a single run: one call.
    """
    out = np.full(valid.shape, np.nan)
    for lo, hi in _runs(valid):
        out[lo:hi] = func(*(np.ascontiguousarray(a[lo:hi]) for a in arrays))
    return out


def _exact_sum(x: np.ndarray, window: int) -> np.ndarray:
    """``talib.SUM`` of one gap-free run, exactly 0 on windows whose terms are all 0.

    ``talib.SUM`` keeps a running total (add the new term, subtract the old one), so a window
    of zeros that follows large terms keeps a rounding residue of about ``eps * max|x|``; for
    sums of squares that residue would survive a square root as a spurious ~1e-7 volatility.
    """
    total = talib.SUM(x, timeperiod=window)
    nonzero = talib.SUM((x != 0.0).astype(np.float64), timeperiod=window)
    return np.where(nonzero == 0.0, 0.0, total)


def _window_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing ``window`` sum (``talib.SUM``); NaN until ``window`` values exist or when any of
    them is NaN."""
    return _by_runs(lambda v: _exact_sum(v, window), ~np.isnan(x), x)


def _annualised_vol(daily_var: np.ndarray, window: int) -> np.ndarray:
    """``sqrt(252 * sum(daily_var over window) / window)``.

    Rounding residues of the running sum down to ``-_RESIDUE`` are clipped to 0; a clearly
    negative sum (only possible for Garman-Klass on bars whose open or close lies outside
    [low, high]) gives NaN.
    """
    total = _window_sum(daily_var, window)
    with np.errstate(invalid="ignore"):
        total = np.where((total < 0.0) & (total >= -_RESIDUE), 0.0, total)
        return np.sqrt(ANNUALISATION * total / float(window))


def _log_return(price: np.ndarray, horizon: int) -> np.ndarray:
    """``ln(p_t / p_{t-horizon})`` (``talib.ROCR``); NaN when any price in between is missing."""
    valid = np.isfinite(price)
    return _by_runs(lambda p: np.log(talib.ROCR(p, timeperiod=horizon)), valid, price)


def _pctb(price: np.ndarray) -> np.ndarray:
    """Bollinger %B of one gap-free price run (NaN where the band has zero width)."""
    upper, _, lower = talib.BBANDS(
        price, timeperiod=BB_PERIOD, nbdevup=BB_NDEV, nbdevdn=BB_NDEV, matype=talib.MA_Type.SMA
    )
    width = upper - lower
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(width > 0, (price - lower) / width, np.nan)


def _volume_z(volume: np.ndarray) -> np.ndarray:
    """Volume z-score of one gap-free run against the previous ``VOLUME_WINDOW`` sessions."""
    mean = talib.SMA(volume, timeperiod=VOLUME_WINDOW)
    std = talib.STDDEV(volume, timeperiod=VOLUME_WINDOW, nbdev=1.0)
    z = np.full(volume.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        z[1:] = np.where(std[:-1] > 0, (volume[1:] - mean[:-1]) / std[:-1], np.nan)
    return z


def _symbol_features(
    price: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    volume: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-symbol features of one symbol's bars (sessions in order, contiguous ``float64``).

    ``price`` is the adjusted close; ``open_``/``high``/``low`` are already on the same
    adjustment as ``price`` and NaN on rows without a usable OHLC bar.
    """
    with np.errstate(invalid="ignore"):
        price = np.where(price > 0, price, np.nan)
    priced = np.isfinite(price)
    ret = _log_return(price, 1)
    feats: dict[str, np.ndarray] = {
        "ret_1": ret,
        "ret_5": _log_return(price, 5),
        "ret_22": _log_return(price, 22),
        "rv_5": _annualised_vol(ret * ret, 5),
        "rv_22": _annualised_vol(ret * ret, 22),
        "rsi_14": _by_runs(lambda p: talib.RSI(p, timeperiod=RSI_PERIOD), priced, price),
        "macd_hist": _by_runs(
            lambda p: talib.MACD(p, MACD_FAST, MACD_SLOW, MACD_SIGNAL)[2] / p, priced, price
        ),
        "bb_pctb": _by_runs(_pctb, priced, price),
    }

    with np.errstate(divide="ignore", invalid="ignore"):
        ohlc = priced & (open_ > 0) & (high > 0) & (low > 0)
        hl = np.log(high / low)
        co = np.log(price / open_)
    hl = np.where(ohlc, hl, np.nan)
    co = np.where(ohlc, co, np.nan)
    feats["atr_14"] = _by_runs(
        lambda h, lo, c: talib.ATR(h, lo, c, timeperiod=ATR_PERIOD) / c, ohlc, high, low, price
    )
    feats["park_vol_22"] = _annualised_vol(PARKINSON_SCALE * hl * hl, RANGE_WINDOW)
    feats["gk_vol_22"] = _annualised_vol(0.5 * hl * hl - GK_CLOSE_WEIGHT * co * co, RANGE_WINDOW)
    with np.errstate(invalid="ignore"):
        traded = np.isfinite(volume) & (volume >= 0)
    feats["vol_z_22"] = _by_runs(_volume_z, traded, volume)
    return feats


def _session_lookup(
    sessions: np.ndarray, keys: np.ndarray, values: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Values at each of ``sessions`` from arrays keyed by sorted, unique ``keys``; NaN where a
    session is not a key."""
    pos = np.searchsorted(keys, sessions)
    hit = pos < len(keys)
    hit[hit] = keys[pos[hit]] == sessions[hit]
    out = []
    for v in values:
        col = np.full(len(sessions), np.nan)
        col[hit] = v[pos[hit]]
        out.append(col)
    return out


def _vix_at(sessions: np.ndarray, vix: pd.Series) -> np.ndarray:
    """VIX level at each session (``datetime64[ns]`` midnights); the index of ``vix`` is reduced
    to its (tz-naive) dates, the last value of a date wins."""
    index = pd.DatetimeIndex(vix.index)
    if index.tz is not None:
        index = index.tz_localize(None)
    level = pd.Series(vix.to_numpy(dtype="float64"), index=index.normalize())
    level = level[~level.index.duplicated(keep="last")].sort_index()
    keys = level.index.to_numpy(dtype="datetime64[ns]")
    return _session_lookup(sessions, keys, (level.to_numpy(dtype="float64"),))[0]


def load_vix() -> pd.Series:
    """VIX closes shipped with the ``arch`` package (2014-2019), read without importing arch.

    Returns
    -------
    pd.Series
        ``float64`` VIX closes named ``vix``, indexed by session (``datetime64[ns]``, midnight),
        sorted; the same values as ``arch.data.vix.load()``.

    Raises
    ------
    FileNotFoundError
        If ``arch`` is not installed or does not ship ``data/vix/vix.csv.gz``.
    """
    spec = importlib.util.find_spec("arch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'arch' is not installed: no VIX data")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "vix" / "vix.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VIX data file missing from package 'arch'")
    raw = pd.read_csv(path)
    index = pd.DatetimeIndex(pd.to_datetime(raw["Date"], format="%m/%d/%Y"), name="session")
    values = pd.to_numeric(raw["vix"], errors="coerce").to_numpy(dtype="float64")
    return pd.Series(values, index=index.astype("datetime64[ns]"), name="vix").sort_index()


def compute_features(bars: pd.DataFrame, vix: pd.Series | None = None) -> pd.DataFrame:
    """Close-analysis features of canonical bars.

    Parameters
    ----------
    bars : pd.DataFrame
        Canonical bars (``schema.BAR_COLUMNS``) of one or more symbols over consecutive sessions.
        Include ``MARKET_SYMBOL`` (SPX) for the market columns.
    vix : pd.Series, optional
        VIX closes indexed by session date (e.g. :func:`load_vix`). ``None`` (default) leaves
        the ``vix`` column NaN.

    Returns
    -------
    pd.DataFrame
        Columns ``symbol``, ``session``, ``event_timestamp`` (UTC session close) and
        ``schema.FEATURE_COLUMNS`` (``float64``), one row per input bar, sorted by ``session``,
        ``symbol``. Warm-up rows (``schema.FEATURE_WARMUP``) keep NaN.

    Notes
    -----
    Price ``p`` is ``adj_close`` (``close`` where ``adj_close`` is null); a non-positive price is
    treated as missing. A missing value ends a run: trailing windows that touch it are NaN and
    TA-Lib's smoothers restart after it.

    - ``ret_n = ln(p_t / p_{t-n})`` (``talib.ROCR``), i.e. the sum of the last ``n`` log returns;
      ``rv_n = sqrt(252 * talib.SUM(r^2, n) / n)`` with ``r`` = ``ret_1``.
    - ``rsi_14`` = ``talib.RSI(p, 14)``; ``macd_hist`` = ``talib.MACD(p, 12, 26, 9)`` histogram
      divided by ``p``; ``bb_pctb`` = ``(p - lower) / (upper - lower)`` of ``talib.BBANDS(p, 20,
      2, 2)`` (NaN when the band has zero width).
    - Range features need a bar with open, high, low > 0 (NaN otherwise, e.g. for the replay
      stocks, which only have closes). High and low are put on the adjusted close's scale by
      the session's factor ``adj_close / close`` (1 where either is missing) so that ``atr_14`` =
      ``talib.ATR(H, L, p, 14) / p`` does not jump at splits; Parkinson and Garman-Klass only use
      same-session ratios, which the factor leaves unchanged. ``park_vol_22 = sqrt(252 *
      mean22(ln(H/L)^2) / (4 ln 2))``; ``gk_vol_22 = sqrt(252 * mean22(0.5 ln(H/L)^2 -
      (2 ln 2 - 1) ln(C/O)^2))`` (means by ``talib.SUM``).
    - ``vol_z_22 = (v_t - SMA22_{t-1}) / STDDEV22_{t-1}``: today's volume against the 22
      sessions *before* it (``talib.SMA``/``talib.STDDEV``, population std; today is excluded so
      a spike is not part of its own baseline). NaN where the baseline has zero spread or
      volume is missing.
    - ``mkt_ret_1``/``mkt_rv_22``: ``ret_1``/``rv_22`` of ``MARKET_SYMBOL`` at the same session,
      broadcast to every row of that session (NaN when the index has no bar that session).
    - ``vix``: the VIX close of the session (NaN where ``vix`` has no value). The VIX settles
      at 16:15 New York, a quarter of an hour after ``event_timestamp``.
    - Causal: the row of session ``t`` only depends on bars up to ``t``. TA-Lib's exponential
      smoothers (RSI, MACD, ATR) depend on where the series starts, so give the function enough
      history before the sessions whose features are kept.
    """
    frame = bars.sort_values(["symbol", "session"], kind="stable").reset_index(drop=True)
    close = frame["close"].to_numpy(dtype="float64")
    adj = frame["adj_close"].to_numpy(dtype="float64")
    prices = np.where(np.isnan(adj), close, adj)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(np.isfinite(adj) & (close > 0), adj / close, 1.0)
    opens = frame["open"].to_numpy(dtype="float64") * factor
    highs = frame["high"].to_numpy(dtype="float64") * factor
    lows = frame["low"].to_numpy(dtype="float64") * factor
    volumes = frame["volume"].to_numpy(dtype="float64")
    symbols = frame["symbol"].to_numpy()
    sessions = frame["session"].to_numpy(dtype="datetime64[ns]")

    out = {c: np.full(len(frame), np.nan) for c in FEATURE_COLUMNS}
    starts: np.ndarray = (
        np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]])
        if len(frame)
        else np.array([], int)
    )
    bounds = np.r_[starts, len(frame)]
    for i in range(len(starts)):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        feats = _symbol_features(
            *(np.ascontiguousarray(a[lo:hi]) for a in (prices, opens, highs, lows, volumes))
        )
        for col, values in feats.items():
            out[col][lo:hi] = values

    market = np.flatnonzero(symbols == MARKET_SYMBOL)
    out["mkt_ret_1"], out["mkt_rv_22"] = _session_lookup(
        sessions, sessions[market], (out["ret_1"][market], out["rv_22"][market])
    )
    if vix is not None:
        out["vix"] = _vix_at(sessions, vix)

    result = pd.DataFrame({"symbol": symbols.astype(object), "session": sessions})
    unique_sessions, where = np.unique(sessions, return_inverse=True)
    closes = _utc(calendar.closes_for(pd.Series(unique_sessions))).array
    result["event_timestamp"] = closes.take(where.ravel())
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
        Columns ``symbol``, ``session``, ``event_timestamp``, ``seq`` (a ``float64`` array of
        length ``lookback * len(columns)`` per row: row-major, oldest session first, i.e.
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
        # one float64 row per window, views into one array: no Python float per value (a
        # 500-symbol, 10-year table holds 175 million of them)
        seq: list[np.ndarray] = list(np.concatenate(blocks))
    else:
        idx, seq = np.array([], dtype="int64"), []
    out = merged.iloc[idx].loc[:, ["symbol", "session", "event_timestamp"]].reset_index(drop=True)
    out["symbol"] = out["symbol"].astype(object)
    out["session"] = out["session"].astype("datetime64[ns]")
    out["event_timestamp"] = _utc(out["event_timestamp"])
    out["seq"] = pd.Series(seq, dtype=object)
    out["asof"] = _epoch_seconds(out["event_timestamp"])
    return out.sort_values(["session", "symbol"], kind="stable").reset_index(drop=True)
