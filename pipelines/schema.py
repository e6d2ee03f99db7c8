"""Column contracts of the lake and offline tables.

Every table keyed by (``symbol``, ``session``) carries:

- ``symbol``: ``str``
- ``session``: ``datetime64[ns]``, tz-naive midnight of the NYSE session date
- ``event_timestamp``: ``datetime64[ns, UTC]``, the session's close (16:00 New York, 13:00 on early
  closes): the time at which the row's values became known. Feast joins on it.
"""

from __future__ import annotations

#: Canonical daily bars (lake table ``bars``); open/high/low/volume are null where a source
#: lacks them.
BAR_COLUMNS: tuple[str, ...] = (
    "symbol", "session", "open", "high", "low", "close", "adj_close", "volume",
)  # fmt: skip
BAR_PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "adj_close")

#: Close-analysis features (lake table ``features``, Feast view ``market_features``).
FEATURE_COLUMNS: tuple[str, ...] = (
    "ret_1",  # log return of adjusted close, session over previous session
    "ret_5",  # sum of the last 5 log returns
    "ret_22",  # sum of the last 22 log returns
    "rv_5",  # annualised realised vol of the last 5 log returns: sqrt(252 * mean(r^2))
    "rv_22",  # same over 22
    "rsi_14",  # TA-Lib RSI(14) of adjusted close, 0..100
    "macd_hist",  # TA-Lib MACD(12, 26, 9) histogram divided by the adjusted close
    "bb_pctb",  # Bollinger %B(20, 2) of adjusted close
)

#: Light-training GARCH outputs (lake table ``garch``, Feast view ``garch_features``).
GARCH_COLUMNS: tuple[str, ...] = (
    "garch_vol",  # annualised conditional volatility at the session (known at its close)
    "garch_forecast",  # annualised vol forecast over the next `horizon` sessions
    "garch_std_resid",  # standardised residual of the session's return
)

#: LSTM input windows (lake table ``windows``, Feast view ``lstm_window``).
#: ``seq`` is a list[float] of length lookback * len(settings.WINDOW_COLUMNS), row-major, oldest
#: session first; ``asof`` is the epoch seconds of the window's last session close.
WINDOW_TABLE_COLUMNS: tuple[str, ...] = ("seq", "asof")

KEY_COLUMNS: tuple[str, ...] = ("symbol", "session", "event_timestamp")
