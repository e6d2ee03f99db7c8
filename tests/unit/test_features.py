"""Features (TA-Lib, returns, realised and range vol, market columns) and LSTM windows: values
against independent formulas, warm-ups, causality, ranges on real data, Feast definitions."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import talib
from numpy.lib.stride_tricks import sliding_window_view
from talib import abstract

from pipelines import calendar
from pipelines.features import MARKET_SYMBOL, build_windows, compute_features, load_vix
from pipelines.schema import (
    BAR_COLUMNS,
    FEATURE_COLUMNS,
    FEATURE_INPUTS,
    FEATURE_RANGES,
    FEATURE_WARMUP,
    GARCH_COLUMNS,
)
from pipelines.settings import REPO_ROOT, WINDOW_COLUMNS
from pipelines.sources import ReplaySource, load_replay_panel

#: Columns (and order) of the features before the TA-Lib rewrite; they must not move.
ORIGINAL_COLUMNS = ("ret_1", "ret_5", "ret_22", "rv_5", "rv_22", "rsi_14", "macd_hist", "bb_pctb")
RANGE_COLUMNS = ("atr_14", "park_vol_22", "gk_vol_22")
SESSIONS = calendar.sessions_between("2017-10-02", "2018-12-31")
CUT = pd.Timestamp("2018-06-29")


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return ReplaySource(["AAPL", "MSFT", "SPX"]).bars(SESSIONS)


def _garch(features: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Deterministic stand-in GARCH table keyed like the real one (values by symbol/session)."""
    g = features[["symbol", "session", "event_timestamp"]].copy()
    codes = g["symbol"].map({"AAPL": 1.0, "MSFT": 2.0, "SPX": 3.0}).to_numpy()
    days = (g["session"] - pd.Timestamp("2017-01-01")).dt.days.to_numpy(dtype=float)
    for k, col in enumerate(GARCH_COLUMNS):
        g[col] = 0.1 * codes + days / 1000.0 + k + seed
    return g


def _perturb_after(bars: pd.DataFrame, cut: pd.Timestamp) -> pd.DataFrame:
    rng = np.random.default_rng(42)
    out = bars.copy()
    later = out["session"] > cut
    factor = rng.uniform(0.5, 1.5, later.sum())
    for col in ("open", "high", "low", "close", "adj_close", "volume"):
        out.loc[later, col] = out.loc[later, col] * factor
    # widen the high-low range too (a common factor leaves the range ratios unchanged)
    out.loc[later, "high"] = out.loc[later, "high"] * rng.uniform(1.0, 1.05, later.sum())
    return out


def test_feature_columns_dtypes_and_timestamps(bars: pd.DataFrame) -> None:
    feats = compute_features(bars.sample(frac=1.0, random_state=0))
    assert list(feats.columns) == ["symbol", "session", "event_timestamp", *FEATURE_COLUMNS]
    assert len(feats) == len(bars)
    assert (feats[["session", "symbol"]].to_numpy() == bars[["session", "symbol"]].to_numpy()).all()
    for col in FEATURE_COLUMNS:
        assert feats[col].dtype == "float64"
    assert str(feats["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    ts = feats.set_index(["symbol", "session"])["event_timestamp"]
    assert ts[("SPX", pd.Timestamp("2018-12-31"))] == pd.Timestamp("2018-12-31 21:00", tz="UTC")
    # day after Thanksgiving: early close 13:00 New York
    assert ts[("SPX", pd.Timestamp("2018-11-23"))] == pd.Timestamp("2018-11-23 18:00", tz="UTC")
    # warm-up rows keep NaN: first row has no return, RSI needs 14 returns, MACD 33 bars
    spx = feats[feats["symbol"] == "SPX"].reset_index(drop=True)
    assert np.isnan(spx.loc[0, "ret_1"]) and not np.isnan(spx.loc[1, "ret_1"])
    assert spx["rsi_14"].isna().sum() == 14
    assert spx["macd_hist"].isna().sum() == 33
    assert spx["rv_22"].isna().sum() == 22


def test_features_match_talib_by_hand(bars: pd.DataFrame) -> None:
    feats = compute_features(bars)
    spx_bars = bars[bars["symbol"] == "SPX"]
    p = spx_bars["adj_close"].to_numpy()
    spx = feats[feats["symbol"] == "SPX"]
    np.testing.assert_allclose(spx["rsi_14"], talib.RSI(p, 14), equal_nan=True)
    _, _, hist = talib.MACD(p, 12, 26, 9)
    np.testing.assert_allclose(spx["macd_hist"], hist / p, equal_nan=True)
    up, _, lo = talib.BBANDS(p, 20, 2.0, 2.0, 0)
    np.testing.assert_allclose(spx["bb_pctb"], (p - lo) / (up - lo), equal_nan=True)

    r = np.diff(np.log(p))
    last = spx.iloc[-1]
    assert last["ret_1"] == pytest.approx(np.log(p[-1] / p[-2]))
    assert last["ret_5"] == pytest.approx(r[-5:].sum())
    assert last["ret_22"] == pytest.approx(np.log(p[-1] / p[-23]))
    assert last["rv_5"] == pytest.approx(np.sqrt(252 * np.mean(r[-5:] ** 2)))
    assert last["rv_22"] == pytest.approx(np.sqrt(252 * np.mean(r[-22:] ** 2)))
    assert spx["rsi_14"].dropna().between(0, 100).all()


def test_features_fall_back_to_close(bars: pd.DataFrame) -> None:
    spx = bars[bars["symbol"] == "SPX"].copy()
    ref = compute_features(spx)
    spx["adj_close"] = np.nan
    pd.testing.assert_frame_equal(compute_features(spx), ref)  # SPX close == adj close


def test_features_are_causal(bars: pd.DataFrame) -> None:
    vix = pd.Series(np.linspace(10.0, 30.0, len(SESSIONS)), index=pd.DatetimeIndex(SESSIONS))
    moved_vix = vix.where(vix.index <= CUT, vix * 2.0)
    base = compute_features(bars, vix)
    moved = compute_features(_perturb_after(bars, CUT), moved_vix)
    upto = base["session"] <= CUT
    pd.testing.assert_frame_equal(base[upto], moved[upto], check_exact=True)
    # every column, including the range, volume and market ones, does move after the cut
    for col in FEATURE_COLUMNS:
        assert not np.allclose(base.loc[~upto, col], moved.loc[~upto, col], equal_nan=True), col


def test_windows_are_causal(bars: pd.DataFrame) -> None:
    lookback = 10
    base_f = compute_features(bars)
    moved_f = compute_features(_perturb_after(bars, CUT))
    base_w = build_windows(base_f, _garch(base_f), lookback)
    moved_g = _garch(moved_f)
    moved_g.loc[moved_g["session"] > CUT, list(GARCH_COLUMNS)] += 1.0
    moved_w = build_windows(moved_f, moved_g, lookback)
    upto_b, upto_m = base_w["session"] <= CUT, moved_w["session"] <= CUT
    pd.testing.assert_frame_equal(base_w[upto_b], moved_w[upto_m])
    last_b, last_m = base_w.loc[~upto_b, "seq"].iloc[-1], moved_w.loc[~upto_m, "seq"].iloc[-1]
    assert not np.array_equal(last_b, last_m)


def test_window_shape_and_ordering(bars: pd.DataFrame) -> None:
    lookback = 5
    feats = compute_features(bars)
    garch = _garch(feats)
    win = build_windows(feats, garch, lookback, WINDOW_COLUMNS)
    assert list(win.columns) == ["symbol", "session", "event_timestamp", "seq", "asof"]
    width = lookback * len(WINDOW_COLUMNS)
    assert win["seq"].map(len).eq(width).all()
    assert isinstance(win["seq"].iloc[0], np.ndarray) and win["seq"].iloc[0].dtype == np.float64
    assert win["asof"].dtype == "int64"
    assert (win["asof"] == win["event_timestamp"].astype("int64") // 10**9).all()
    key = list(zip(win["session"], win["symbol"], strict=True))
    assert key == sorted(key)

    # first window of a symbol: needs rv_22 (22 returns) -> bar 23 is the first complete row,
    # so the first window ends at bar 23 + lookback - 1
    aapl_sessions = feats.loc[feats["symbol"] == "AAPL", "session"].reset_index(drop=True)
    first = win[win["symbol"] == "AAPL"].iloc[0]
    assert first["session"] == aapl_sessions[22 + lookback - 1]

    # row-major, oldest first: seq[j * k + c] is column c at session t - lookback + 1 + j
    row = win[(win["symbol"] == "MSFT") & (win["session"] == pd.Timestamp("2018-12-31"))].iloc[0]
    joined = feats.merge(garch.drop(columns="event_timestamp"), on=["symbol", "session"])
    msft = joined[joined["symbol"] == "MSFT"].set_index("session").sort_index()
    expected = msft.loc[:"2018-12-31", list(WINDOW_COLUMNS)].tail(lookback).to_numpy()
    np.testing.assert_array_equal(np.asarray(row["seq"]).reshape(lookback, -1), expected)
    assert row["seq"][0] == msft.loc["2018-12-24", "ret_1"]
    assert row["seq"][-1] == msft.loc["2018-12-31", WINDOW_COLUMNS[-1]]


def test_windows_drop_nan_and_missing_garch(bars: pd.DataFrame) -> None:
    lookback = 3
    feats = compute_features(bars)
    garch = _garch(feats)
    full = build_windows(feats, garch, lookback)
    hole = pd.Timestamp("2018-12-20")
    gap = garch[~((garch["symbol"] == "SPX") & (garch["session"] == hole))]
    win = build_windows(feats, gap, lookback)
    spx_full = set(full.loc[full["symbol"] == "SPX", "session"])
    spx_gap = set(win.loc[win["symbol"] == "SPX", "session"])
    dropped = sorted(spx_full - spx_gap)
    assert [d.date().isoformat() for d in dropped] == ["2018-12-20", "2018-12-21", "2018-12-24"]
    assert len(win[win["symbol"] != "SPX"]) == len(full[full["symbol"] != "SPX"])
    assert not np.isnan(np.vstack(win["seq"].to_list())).any()
    with pytest.raises(ValueError, match="nope"):
        build_windows(feats, garch, lookback, ("ret_1", "nope"))


# ------------------------------------------------------------------ reference implementation
def _ref_rolling_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing sum by explicit windows (the pre-TA-Lib implementation)."""
    out = np.full(x.shape, np.nan)
    if len(x) >= window:
        out[window - 1 :] = sliding_window_view(x, window).sum(axis=1)
    return out


def _ref_close_features(price: np.ndarray) -> dict[str, np.ndarray]:
    """The original close-based features of one symbol, written with numpy windows."""
    ret = np.full(len(price), np.nan)
    ret[1:] = np.diff(np.log(price))
    upper, _, lower = talib.BBANDS(price, 20, 2.0, 2.0, 0)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero-width bands: NaN
        pctb = np.where(upper > lower, (price - lower) / (upper - lower), np.nan)
    return {
        "ret_1": ret,
        "ret_5": _ref_rolling_sum(ret, 5),
        "ret_22": _ref_rolling_sum(ret, 22),
        "rv_5": np.sqrt(252.0 * _ref_rolling_sum(ret * ret, 5) / 5.0),
        "rv_22": np.sqrt(252.0 * _ref_rolling_sum(ret * ret, 22) / 22.0),
        "rsi_14": talib.RSI(price, 14),
        "macd_hist": talib.MACD(price, 12, 26, 9)[2] / price,
        "bb_pctb": pctb,
    }


def _trailing(x: np.ndarray, t: int, window: int) -> np.ndarray:
    return x[t - window + 1 : t + 1]


def _synthetic_bars(n: int, symbol: str = "SPX", seed: int = 0) -> pd.DataFrame:
    """Consistent OHLCV bars (open and close inside [low, high]) on real NYSE sessions."""
    rng = np.random.default_rng(seed)
    sessions = pd.DatetimeIndex(calendar.sessions_between("2015-01-02", "2018-12-31"))[:n]
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0.0, 0.005, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.008, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.008, n)))
    volume = rng.lognormal(20.0, 0.3, n)
    return pd.DataFrame(
        {
            "symbol": symbol,
            "session": sessions.to_numpy(dtype="datetime64[ns]"),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "adj_close": close,
            "volume": volume,
        }
    ).loc[:, list(BAR_COLUMNS)]


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    """The real replay panel, 2008-2018 (22 symbols, about 2,770 sessions each)."""
    full = load_replay_panel()
    keep = (full["session"] >= "2008-01-01") & (full["session"] <= "2018-12-31")
    return full.loc[keep].reset_index(drop=True)


# --------------------------------------------------------------------------------- contracts
def test_schema_mappings_cover_every_feature() -> None:
    assert FEATURE_COLUMNS[: len(ORIGINAL_COLUMNS)] == ORIGINAL_COLUMNS
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    for mapping in (FEATURE_WARMUP, FEATURE_RANGES, FEATURE_INPUTS):
        assert list(mapping) == list(FEATURE_COLUMNS)
    assert set(FEATURE_INPUTS.values()) <= {"close", "ohlc", "volume", "market"}
    for low, high in FEATURE_RANGES.values():
        assert low is None or high is None or low < high
    # the LSTM input window (Kim & Won's inputs); its feature part is still produced here
    assert WINDOW_COLUMNS == ("ret_1", "rv_5", "rv_22", "garch_vol", "garch_forecast",
                              "egarch_forecast", "ewma_forecast")
    assert [c for c in WINDOW_COLUMNS if c not in GARCH_COLUMNS] == ["ret_1", "rv_5", "rv_22"]


def test_declared_warmups_follow_talib_lookbacks() -> None:
    def lookback(name: str, **params: float) -> int:
        func = abstract.Function(name)
        func.set_parameters(params)
        return int(func.lookback)

    expected = {
        "ret_1": lookback("ROCR", timeperiod=1),
        "ret_5": lookback("ROCR", timeperiod=5),
        "ret_22": lookback("ROCR", timeperiod=22),
        # SUM over returns, which start one bar in
        "rv_5": 1 + lookback("SUM", timeperiod=5),
        "rv_22": 1 + lookback("SUM", timeperiod=22),
        "rsi_14": lookback("RSI", timeperiod=14),
        "macd_hist": lookback("MACD", fastperiod=12, slowperiod=26, signalperiod=9),
        "bb_pctb": lookback("BBANDS", timeperiod=20),
        "atr_14": lookback("ATR", timeperiod=14),
        # SUM over same-session range terms
        "park_vol_22": lookback("SUM", timeperiod=22),
        "gk_vol_22": lookback("SUM", timeperiod=22),
        # SMA/STDDEV of the previous session
        "vol_z_22": 1 + max(lookback("SMA", timeperiod=22), lookback("STDDEV", timeperiod=22)),
        "mkt_ret_1": lookback("ROCR", timeperiod=1),
        "mkt_rv_22": 1 + lookback("SUM", timeperiod=22),
        "vix": 0,
    }
    assert dict(FEATURE_WARMUP) == expected


def test_warmup_is_first_defined_index_on_a_long_series() -> None:
    bars = _synthetic_bars(300)
    vix = pd.Series(20.0, index=pd.DatetimeIndex(bars["session"]))
    feats = compute_features(bars, vix)
    for col in FEATURE_COLUMNS:
        defined = feats[col].notna().to_numpy()
        first = int(np.argmax(defined))
        assert defined.any() and first == FEATURE_WARMUP[col], col
        assert defined[first:].all(), f"{col} has holes after its warm-up"


# ----------------------------------------------------------------------- original columns
def test_original_columns_equal_reference_on_replay_data() -> None:
    """The TA-Lib rewrite keeps the original columns to 1e-10 on the whole replay panel
    (1990-2022, including the early years whose many zero returns stress running sums)."""
    bars = load_replay_panel()
    feats = compute_features(bars).sort_values(["symbol", "session"], kind="stable")
    by_symbol = bars.sort_values(["symbol", "session"], kind="stable").groupby("symbol", sort=True)
    for symbol, group in by_symbol:
        ref = _ref_close_features(group["adj_close"].to_numpy())
        got = feats[feats["symbol"] == symbol]
        assert len(got) == len(group)
        for col in ORIGINAL_COLUMNS:
            np.testing.assert_allclose(
                got[col].to_numpy(), ref[col], rtol=0, atol=1e-10, equal_nan=True,
                err_msg=f"{symbol} {col}",
            )  # fmt: skip


def test_missing_close_only_blanks_the_windows_that_touch_it() -> None:
    bars = _synthetic_bars(120)
    gap = 60
    bars.loc[gap, ["close", "adj_close"]] = np.nan
    feats = compute_features(bars)
    ref = _ref_close_features(bars["adj_close"].to_numpy())
    for col in ("ret_1", "ret_5", "ret_22", "rv_5", "rv_22"):
        np.testing.assert_allclose(feats[col], ref[col], rtol=0, atol=1e-12, equal_nan=True)
    # rv_5 needs five returns: the ones at gap and gap + 1 are missing
    assert feats["rv_5"].iloc[gap : gap + 6].isna().all()
    assert feats["rv_5"].iloc[gap + 6 :].notna().all()
    # TA-Lib's smoothers restart after the gap instead of staying NaN for ever
    assert feats["rsi_14"].iloc[gap + 1 + FEATURE_WARMUP["rsi_14"] :].notna().all()


# -------------------------------------------------------------------------- range features
def test_range_and_volume_features_match_independent_formulas() -> None:
    bars = _synthetic_bars(90)
    feats = compute_features(bars)
    o, h, lo, c, v = (bars[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    n = len(bars)

    # true range and Wilder's ATR, by hand
    tr = np.full(n, np.nan)
    tr[1:] = np.maximum.reduce([h[1:] - lo[1:], np.abs(h[1:] - c[:-1]), np.abs(lo[1:] - c[:-1])])
    atr = np.full(n, np.nan)
    atr[14] = tr[1:15].mean()
    for t in range(15, n):
        atr[t] = (13.0 * atr[t - 1] + tr[t]) / 14.0

    park, gk, vz = (np.full(n, np.nan) for _ in range(3))
    hl2 = np.log(h / lo) ** 2
    co2 = np.log(c / o) ** 2
    for t in range(21, n):
        park[t] = math.sqrt(252.0 * _trailing(hl2, t, 22).mean() / (4.0 * math.log(2.0)))
        term = 0.5 * _trailing(hl2, t, 22) - (2.0 * math.log(2.0) - 1.0) * _trailing(co2, t, 22)
        gk[t] = math.sqrt(252.0 * term.mean())
    for t in range(22, n):
        base = v[t - 22 : t]  # the 22 sessions before t; today is excluded
        vz[t] = (v[t] - base.mean()) / base.std(ddof=0)

    np.testing.assert_allclose(feats["atr_14"], atr / c, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(feats["park_vol_22"], park, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(feats["gk_vol_22"], gk, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(feats["vol_z_22"], vz, rtol=1e-7, equal_nan=True)


def test_range_features_use_the_adjusted_scale() -> None:
    """A 2:1 split in unadjusted OHLC with a continuous adj_close changes no range feature."""
    adjusted = _synthetic_bars(80)
    split = adjusted.copy()
    early = split.index < 40
    for col in ("open", "high", "low", "close"):
        split.loc[early, col] = split.loc[early, col] * 2.0  # pre-split prices are doubled
    pd.testing.assert_frame_equal(compute_features(split), compute_features(adjusted))


def test_range_features_are_nan_where_inputs_lack(bars: pd.DataFrame) -> None:
    feats = compute_features(bars)
    stocks = feats[feats["symbol"] != "SPX"]  # replay stocks: close only
    assert stocks[[*RANGE_COLUMNS, "vol_z_22"]].isna().all().all()
    assert stocks[list(ORIGINAL_COLUMNS)].iloc[-1].notna().all()
    spx = feats[feats["symbol"] == "SPX"].reset_index(drop=True)
    for col in (*RANGE_COLUMNS, "vol_z_22"):
        assert spx[col].iloc[FEATURE_WARMUP[col] :].notna().all(), col

    # one session without a high: range windows that hold it are NaN, ATR restarts after it
    synth = _synthetic_bars(100)
    gap = 50
    synth.loc[gap, "high"] = np.nan
    synth.loc[gap + 10, "volume"] = np.nan
    out = compute_features(synth)
    for col in ("park_vol_22", "gk_vol_22"):
        assert (
            out[col].iloc[gap : gap + 22].isna().all() and out[col].iloc[gap + 22 :].notna().all()
        )
        assert out[col].iloc[FEATURE_WARMUP[col] : gap].notna().all()
    assert out["atr_14"].iloc[gap : gap + 15].isna().all()
    assert out["atr_14"].iloc[gap + 15 :].notna().all()
    # the volume z-score needs today's volume and 22 clean sessions before it
    vz = out["vol_z_22"]
    assert vz.iloc[gap + 10 : gap + 10 + 23].isna().all() and vz.iloc[gap + 33 :].notna().all()
    # close-based features do not care about the missing high and volume
    assert out[list(ORIGINAL_COLUMNS)].iloc[40:].notna().all().all()


# ------------------------------------------------------------------------- market features
def test_market_features_are_broadcast_by_session(bars: pd.DataFrame) -> None:
    assert MARKET_SYMBOL == "SPX"
    feats = compute_features(bars)
    spx = feats[feats["symbol"] == "SPX"].set_index("session")
    for symbol in ("AAPL", "MSFT", "SPX"):
        rows = feats[feats["symbol"] == symbol].set_index("session")
        np.testing.assert_array_equal(rows["mkt_ret_1"], spx.loc[rows.index, "ret_1"])
        np.testing.assert_array_equal(rows["mkt_rv_22"], spx.loc[rows.index, "rv_22"])
    assert feats["mkt_rv_22"].notna().sum() == 3 * spx["rv_22"].notna().sum()

    # without the index the market columns are NaN; a session it misses is NaN for everyone
    no_index = compute_features(bars[bars["symbol"] != "SPX"])
    assert no_index[["mkt_ret_1", "mkt_rv_22"]].isna().all().all()
    hole = pd.Timestamp("2018-10-10")
    holed = compute_features(bars[~((bars["symbol"] == "SPX") & (bars["session"] == hole))])
    at_hole = holed["session"] == hole
    assert at_hole.sum() == 2 and holed.loc[at_hole, ["mkt_ret_1", "mkt_rv_22"]].isna().all().all()
    assert holed.loc[holed["session"] == pd.Timestamp("2018-10-09"), "mkt_ret_1"].notna().all()


def test_vix_is_the_session_close_of_the_packaged_series(bars: pd.DataFrame) -> None:
    vix = load_vix()
    assert vix.name == "vix" and vix.dtype == "float64"
    assert vix.index.is_monotonic_increasing and vix.index.is_unique
    assert vix.index.min() == pd.Timestamp("2014-01-03")
    assert vix[pd.Timestamp("2014-01-03")] == 13.76 and vix[pd.Timestamp("2014-01-06")] == 13.55

    feats = compute_features(bars, vix)
    np.testing.assert_array_equal(feats["vix"], vix.reindex(feats["session"]).to_numpy())
    assert feats["vix"].notna().all()  # 2017-2018 is inside the VIX data
    assert compute_features(bars)["vix"].isna().all()  # no series given
    early = compute_features(ReplaySource(["SPX"]).bars(calendar.sessions_between(
        "2013-12-20", "2014-01-07")), vix)  # fmt: skip
    assert early["vix"].isna().sum() == 8 and early["vix"].iloc[-1] == vix["2014-01-07"]
    # a tz-aware, intraday-stamped index is reduced to its session dates
    stamped = vix.copy()
    stamped.index = stamped.index.tz_localize("America/New_York") + pd.Timedelta(hours=16)
    pd.testing.assert_frame_equal(compute_features(bars, stamped), feats)


# --------------------------------------------------------------------------- real-data checks
def test_declared_ranges_hold_on_the_replay_panel(panel: pd.DataFrame) -> None:
    feats = compute_features(panel, load_vix())
    assert len(feats) == len(panel)
    for col in FEATURE_COLUMNS:
        values = feats[col].dropna()
        assert len(values) > 0, col
        low, high = FEATURE_RANGES[col]
        if low is not None:
            assert values.min() >= low, (col, values.min())
        if high is not None:
            assert values.max() <= high, (col, values.max())
    # range features exist exactly for the OHLC symbols, after their warm-up
    ohlc = feats["symbol"].isin(["SPX", "NDX"])
    for col in (*RANGE_COLUMNS, "vol_z_22"):
        assert feats.loc[~ohlc, col].isna().all()
        assert feats.loc[ohlc, col].isna().sum() == 2 * FEATURE_WARMUP[col], col
    # Parkinson and Garman-Klass track the close-to-close vol of the index
    spx = feats[feats["symbol"] == "SPX"].dropna(subset=["rv_22", "park_vol_22", "gk_vol_22"])
    assert np.corrcoef(spx["rv_22"], spx["park_vol_22"])[0, 1] > 0.8
    assert np.corrcoef(spx["rv_22"], spx["gk_vol_22"])[0, 1] > 0.8


# --------------------------------------------------------------------------------- feast repo
@pytest.fixture
def repo_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The feature repo on ``sys.path`` (as under the feast CLI); ``sys.modules`` restored after."""
    repo = REPO_ROOT / "feature_repo"
    names = ("entities", "data_sources", "feature_views", "feature_services")
    for name in names:  # fresh imports from the repo, whatever was imported before
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setenv("AFTERBELL_HOME", str(REPO_ROOT / ".afterbell"))
    monkeypatch.syspath_prepend(str(repo))
    yield repo
    for name in names:
        sys.modules.pop(name, None)


def test_feast_market_view_declares_every_feature(repo_modules: Path) -> None:
    import feature_services
    import feature_views
    from feast.repo_operations import get_repo_files
    from feast.types import Float64

    view = feature_views.market_features
    fields = {f.name: f for f in view.schema}
    assert set(fields) == set(FEATURE_COLUMNS)
    for col, field in fields.items():
        assert field.dtype == Float64 and field.description, col
    assert view.ttl is not None and view.ttl.days == 14
    for service in (feature_services.garch_lstm_v1, feature_services.garch_lstm_v2):
        assert service.tags["model"] == "garch_lstm_vol"
    v2 = {(p.name, f.name) for p in feature_services.garch_lstm_v2.feature_view_projections
          for f in p.features}
    assert {("garch_features", "egarch_forecast"), ("garch_features", "ewma_forecast")} <= v2
    garch_fields = {f.name for f in feature_views.garch_features.schema}
    assert garch_fields == set(GARCH_COLUMNS)

    # .feastignore: only the definition modules are executed by `feast apply`
    files = {p.name for p in get_repo_files(repo_modules)}
    assert files == {"entities.py", "data_sources.py", "feature_views.py", "feature_services.py"}
