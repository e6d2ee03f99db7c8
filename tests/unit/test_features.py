"""Features (TA-Lib, returns, realised vol) and LSTM windows: values, causality, layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib

from pipelines import calendar
from pipelines.features import build_windows, compute_features
from pipelines.schema import FEATURE_COLUMNS, GARCH_COLUMNS
from pipelines.settings import WINDOW_COLUMNS
from pipelines.sources import ReplaySource

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
    for col in ("open", "high", "low", "close", "adj_close"):
        out.loc[later, col] = out.loc[later, col] * factor
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
    base = compute_features(bars)
    moved = compute_features(_perturb_after(bars, CUT))
    upto = base["session"] <= CUT
    pd.testing.assert_frame_equal(base[upto], moved[upto])
    assert not np.allclose(base.loc[~upto, "ret_1"], moved.loc[~upto, "ret_1"])


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
    assert base_w.loc[~upto_b, "seq"].iloc[-1] != moved_w.loc[~upto_m, "seq"].iloc[-1]


def test_window_shape_and_ordering(bars: pd.DataFrame) -> None:
    lookback = 5
    feats = compute_features(bars)
    garch = _garch(feats)
    win = build_windows(feats, garch, lookback, WINDOW_COLUMNS)
    assert list(win.columns) == ["symbol", "session", "event_timestamp", "seq", "asof"]
    width = lookback * len(WINDOW_COLUMNS)
    assert win["seq"].map(len).eq(width).all()
    assert isinstance(win["seq"].iloc[0], list) and isinstance(win["seq"].iloc[0][0], float)
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
