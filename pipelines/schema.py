"""Column contracts of the lake and offline tables.

Every table keyed by (``symbol``, ``session``) carries:

- ``symbol``: ``str``
- ``session``: ``datetime64[ns]``, tz-naive midnight of the NYSE session date
- ``event_timestamp``: ``datetime64[ns, UTC]``, the session's close (16:00 New York, 13:00 on early
  closes): the time at which the row's values became known. Feast joins on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: Canonical daily bars (lake table ``bars``); open/high/low/volume are null where a source
#: lacks them.
BAR_COLUMNS: tuple[str, ...] = (
    "symbol", "session", "open", "high", "low", "close", "adj_close", "volume",
)  # fmt: skip
BAR_PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "adj_close")

#: Close-analysis features (lake table ``features``, Feast view ``market_features``), in order;
#: definitions in ``pipelines.features.compute_features``. New columns are appended.
FEATURE_COLUMNS: tuple[str, ...] = (
    "ret_1",  # log return of adjusted close, session over previous session
    "ret_5",  # sum of the last 5 log returns
    "ret_22",  # sum of the last 22 log returns
    "rv_5",  # annualised realised vol of the last 5 log returns: sqrt(252 * mean(r^2))
    "rv_22",  # same over 22
    "rsi_14",  # TA-Lib RSI(14) of adjusted close, 0..100
    "macd_hist",  # TA-Lib MACD(12, 26, 9) histogram divided by the adjusted close
    "bb_pctb",  # Bollinger %B(20, 2) of adjusted close
    "atr_14",  # TA-Lib ATR(14) divided by the adjusted close (OHLC sources only)
    "park_vol_22",  # Parkinson annualised vol over 22 sessions, from ln(high/low)
    "gk_vol_22",  # Garman-Klass annualised vol over 22 sessions, from OHLC
    "vol_z_22",  # volume z-score against the 22 sessions before the session
    "mkt_ret_1",  # market index (SPX) log return of the session, same for every symbol
    "mkt_rv_22",  # market index (SPX) rv_22 of the session, same for every symbol
    "vix",  # VIX close of the session (NaN outside the VIX data)
)

#: Feature warm-up: how many sessions of a symbol's history precede the first defined value,
#: i.e. the 0-based index of the first non-NaN value on a long gap-free series. Derived from
#: TA-Lib's lookbacks (``talib.abstract.Function(name, **params).lookback``) plus construction:
#: ``ret_n``: ROCR(n) lookback n; ``rv_n``: SUM(n) (lookback n - 1) of returns that start at
#: index 1; RSI(14) 14; MACD(12, 26, 9) 33; BBANDS(20) 19; ATR(14) 14; Parkinson and
#: Garman-Klass: SUM(22) of same-session terms, 21; ``vol_z_22``: SMA/STDDEV(22) lookback 21 of
#: the previous session, 22; market columns as the index's ``ret_1``/``rv_22``; VIX none.
FEATURE_WARMUP: Mapping[str, int] = MappingProxyType(
    {
        "ret_1": 1,
        "ret_5": 5,
        "ret_22": 22,
        "rv_5": 5,
        "rv_22": 22,
        "rsi_14": 14,
        "macd_hist": 33,
        "bb_pctb": 19,
        "atr_14": 14,
        "park_vol_22": 21,
        "gk_vol_22": 21,
        "vol_z_22": 22,
        "mkt_ret_1": 1,
        "mkt_rv_22": 22,
        "vix": 0,
    }
)

#: Declared valid range ``(low, high)`` of each feature (inclusive; ``None``: unbounded), for
#: data-quality checks. Log returns within [-5, 5] (a factor of ~150 in one go); annualised
#: vols within [0, 20]; ``bb_pctb`` is bounded by construction (today is in its 20-session
#: window, so ``|p - mean| <= sqrt(19) * std`` and %B lies in ``0.5 +/- sqrt(19) / 4``, about
#: [-0.59, 1.59]); ``vol_z_22`` excludes today from its baseline, so it is unbounded above.
FEATURE_RANGES: Mapping[str, tuple[float | None, float | None]] = MappingProxyType(
    {
        "ret_1": (-5.0, 5.0),
        "ret_5": (-5.0, 5.0),
        "ret_22": (-5.0, 5.0),
        "rv_5": (0.0, 20.0),
        "rv_22": (0.0, 20.0),
        "rsi_14": (0.0, 100.0),
        "macd_hist": (-1.0, 1.0),
        "bb_pctb": (-1.0, 2.0),
        "atr_14": (0.0, 5.0),
        "park_vol_22": (0.0, 20.0),
        "gk_vol_22": (0.0, 20.0),
        "vol_z_22": (-100.0, None),
        "mkt_ret_1": (-5.0, 5.0),
        "mkt_rv_22": (0.0, 20.0),
        "vix": (0.0, 150.0),
    }
)

#: Bar fields each feature needs: ``"close"`` (adjusted close, or close), ``"ohlc"`` (open,
#: high, low and close of the session), ``"volume"``, ``"market"`` (the market index's bars,
#: or the VIX series passed to ``compute_features``). A feature is NaN where its input lacks.
FEATURE_INPUTS: Mapping[str, str] = MappingProxyType(
    {
        "ret_1": "close",
        "ret_5": "close",
        "ret_22": "close",
        "rv_5": "close",
        "rv_22": "close",
        "rsi_14": "close",
        "macd_hist": "close",
        "bb_pctb": "close",
        "atr_14": "ohlc",
        "park_vol_22": "ohlc",
        "gk_vol_22": "ohlc",
        "vol_z_22": "volume",
        "mkt_ret_1": "market",
        "mkt_rv_22": "market",
        "vix": "market",
    }
)

#: Light-training outputs (lake table ``garch``, Feast view ``garch_features``): the GARCH(1,1)-t
#: filter and forecast, the EGARCH(1,1)-t and EWMA forecasts (``pipelines.stages.refit_garch``).
GARCH_COLUMNS: tuple[str, ...] = (
    "garch_vol",  # annualised conditional volatility at the session (known at its close)
    "garch_forecast",  # annualised vol forecast over the next `horizon` sessions
    "garch_std_resid",  # standardised residual of the session's return
    "egarch_forecast",  # EGARCH(1,1)-t annualised vol forecast over the next `horizon` sessions
    "ewma_forecast",  # RiskMetrics EWMA (0.94) annualised vol forecast (flat term structure)
    "garch_vol_30d",  # GARCH(1,1)-t annualised vol forecast over the next 21 sessions (30 days)
)

#: The light stage's option features (lake table ``options``, Feast view ``option_features``):
#: a 30-day at-the-money straddle priced from the GARCH variance forecast and the Treasury rate
#: (``pipelines.stages.price_options``); beside ``rv_22`` and ``vix`` of ``market_features``.
OPTION_COLUMNS: tuple[str, ...] = (
    "garch_iv_30d",  # GARCH-implied vol of a 30-calendar-day option (annualised, ACT/365)
    "straddle_30d",  # price of the 30-day ATM straddle over the spot (BSM at garch_iv_30d)
    "rate_30d",  # continuously compounded 30-day risk-free rate used to price it
)

#: LSTM input windows (lake table ``windows``, Feast view ``lstm_window``).
#: ``seq`` is a list[float] of length lookback * len(settings.WINDOW_COLUMNS), row-major, oldest
#: session first; ``asof`` is the epoch seconds of the window's last session close.
WINDOW_TABLE_COLUMNS: tuple[str, ...] = ("seq", "asof")

KEY_COLUMNS: tuple[str, ...] = ("symbol", "session", "event_timestamp")
