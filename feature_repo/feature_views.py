"""Feature views of the afterbell feature store.

TTL
---
All views use ``ttl=timedelta(days=14)``. Rows are stamped with their session's close, and the file
(dask) offline store only joins a feature row to an entity row if
``entity_ts - ttl <= feature_ts <= entity_ts``; rows outside silently come back as nulls. Training
joins ask at session closes, so the TTL only has to bridge the gap between two consecutive sessions:
a weekend plus a holiday is 4 days, the longest NYSE closure since 1990 (11 September 2001) left
7 days between two closes. Fourteen days covers both with margin, while a stale symbol (no new
row for more than two weeks) still reads as missing instead of silently reusing old values. The
TTL does not limit how far back history can be joined: that depends only on the entity timestamps.
"""

from datetime import timedelta

from data_sources import (
    garch_features_source,
    lstm_window_source,
    market_features_source,
    option_features_source,
)
from entities import symbol
from feast import FeatureView, Field
from feast.types import Array, Float64, Int64

market_features = FeatureView(
    name="market_features",
    entities=[symbol],
    ttl=timedelta(days=14),
    schema=[
        Field(name="ret_1", dtype=Float64, description="Log return of the adjusted close."),
        Field(name="ret_5", dtype=Float64, description="Sum of the last 5 log returns."),
        Field(name="ret_22", dtype=Float64, description="Sum of the last 22 log returns."),
        Field(name="rv_5", dtype=Float64, description="Annualised realised vol, 5 sessions."),
        Field(name="rv_22", dtype=Float64, description="Annualised realised vol, 22 sessions."),
        Field(name="rsi_14", dtype=Float64, description="RSI(14) of the adjusted close."),
        Field(name="macd_hist", dtype=Float64, description="MACD(12,26,9) histogram / close."),
        Field(name="bb_pctb", dtype=Float64, description="Bollinger %B(20, 2)."),
        Field(name="atr_14", dtype=Float64, description="ATR(14) / close; OHLC sources only."),
        Field(
            name="park_vol_22",
            dtype=Float64,
            description="Parkinson annualised vol, 22 sessions, from ln(high/low).",
        ),
        Field(
            name="gk_vol_22",
            dtype=Float64,
            description="Garman-Klass annualised vol, 22 sessions, from OHLC.",
        ),
        Field(
            name="vol_z_22",
            dtype=Float64,
            description="Volume z-score against the 22 sessions before the session.",
        ),
        Field(
            name="mkt_ret_1",
            dtype=Float64,
            description="Market index (SPX) log return of the same session.",
        ),
        Field(
            name="mkt_rv_22",
            dtype=Float64,
            description="Market index (SPX) annualised realised vol, 22 sessions.",
        ),
        Field(name="vix", dtype=Float64, description="VIX close of the session (if known)."),
    ],
    online=True,
    source=market_features_source,
    tags={"stage": "features"},
)

garch_features = FeatureView(
    name="garch_features",
    entities=[symbol],
    ttl=timedelta(days=14),
    schema=[
        Field(name="garch_vol", dtype=Float64, description="Annualised conditional vol."),
        Field(name="garch_forecast", dtype=Float64, description="Vol forecast, next horizon."),
        Field(name="garch_std_resid", dtype=Float64, description="Standardised residual."),
        Field(name="egarch_forecast", dtype=Float64, description="EGARCH vol forecast."),
        Field(name="ewma_forecast", dtype=Float64, description="RiskMetrics EWMA vol forecast."),
        Field(
            name="garch_vol_30d",
            dtype=Float64,
            description="GARCH(1,1)-t vol forecast over the next 21 sessions (30 days).",
        ),
    ],
    online=True,
    source=garch_features_source,
    tags={"stage": "light_training"},
)

option_features = FeatureView(
    name="option_features",
    entities=[symbol],
    ttl=timedelta(days=14),
    schema=[
        Field(
            name="garch_iv_30d",
            dtype=Float64,
            description="GARCH-implied vol of a 30-day option (compare rv_22 and vix).",
        ),
        Field(
            name="straddle_30d",
            dtype=Float64,
            description="30-day ATM straddle price over spot, BSM at garch_iv_30d (QuantLib).",
        ),
        Field(name="rate_30d", dtype=Float64, description="30-day risk-free rate (continuous)."),
    ],
    online=True,
    source=option_features_source,
    tags={"stage": "light_training"},
)

lstm_window = FeatureView(
    name="lstm_window",
    entities=[symbol],
    ttl=timedelta(days=14),
    schema=[
        Field(
            name="seq",
            dtype=Array(Float64),
            description="lookback x WINDOW_COLUMNS, row-major, oldest session first.",
        ),
        Field(name="asof", dtype=Int64, description="Epoch seconds of the window's last close."),
    ],
    online=True,
    source=lstm_window_source,
    tags={"stage": "windows"},
)
