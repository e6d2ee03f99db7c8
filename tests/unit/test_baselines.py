"""Baseline forecasts, the forward realised-vol target and the error metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.baselines import (
    ewma_vol,
    forward_realised_vol,
    historical_vol,
    mae,
    qlike,
    rmse,
)


@pytest.fixture(scope="module")
def sp500() -> pd.Series:
    from arch.data import sp500

    prices = sp500.load()["Adj Close"]
    return np.log(prices).diff().dropna().iloc[-1500:].rename("ret_1")


def test_forward_realised_vol_by_hand() -> None:
    r = pd.Series([0.01, -0.02, 0.03, 0.0, -0.01, 0.02])
    target = forward_realised_vol(r, horizon=2)
    expected = [
        math.sqrt(252 * (0.02**2 + 0.03**2) / 2),  # t=0 -> r1, r2
        math.sqrt(252 * (0.03**2 + 0.0**2) / 2),  # t=1 -> r2, r3
        math.sqrt(252 * (0.0**2 + 0.01**2) / 2),  # t=2 -> r3, r4
        math.sqrt(252 * (0.01**2 + 0.02**2) / 2),  # t=3 -> r4, r5
    ]
    np.testing.assert_allclose(target.iloc[:4].to_numpy(), expected, rtol=1e-12)
    assert target.iloc[4:].isna().all()
    assert target.index.equals(r.index)


def test_historical_vol_by_hand() -> None:
    r = pd.Series([0.01, -0.02, 0.03, 0.0])
    hv = historical_vol(r, horizon=5, window=3)
    assert hv.iloc[:2].isna().all()
    assert hv.iloc[2] == pytest.approx(math.sqrt(252 * (0.01**2 + 0.02**2 + 0.03**2) / 3))
    assert hv.iloc[3] == pytest.approx(math.sqrt(252 * (0.02**2 + 0.03**2) / 3))


def test_ewma_follows_riskmetrics_recursion(sp500: pd.Series) -> None:
    lam = 0.94
    ew = ewma_vol(sp500, horizon=5, lam=lam, min_periods=1)
    s2 = (ew**2 / 252).to_numpy()
    r2 = (sp500**2).to_numpy()
    # Far from the start the normalised weights are the plain recursion.
    t = np.arange(400, len(sp500))
    np.testing.assert_allclose(s2[t], lam * s2[t - 1] + (1 - lam) * r2[t], rtol=1e-9)


@pytest.mark.parametrize(
    "forecast",
    [
        lambda r: historical_vol(r, 5, window=22),
        lambda r: ewma_vol(r, 5, lam=0.94),
    ],
    ids=["historical", "ewma"],
)
@pytest.mark.parametrize("t", [30, 500, 1400])
def test_baselines_have_no_look_ahead(sp500: pd.Series, forecast, t: int) -> None:
    base = forecast(sp500)
    changed = sp500.copy()
    changed.iloc[t + 1 :] = np.random.default_rng(t).normal(0, 0.05, len(sp500) - t - 1)
    other = forecast(changed)
    pd.testing.assert_series_equal(other.iloc[: t + 1], base.iloc[: t + 1], rtol=0, atol=0)
    assert not np.allclose(other.iloc[t + 1 :], base.iloc[t + 1 :])


def test_target_depends_only_on_the_future(sp500: pd.Series) -> None:
    """Row t of the target moves with r_{t+1..t+H} and never with r_{<=t}."""
    h, t = 5, 700
    base = forward_realised_vol(sp500, h)
    changed = sp500.copy()
    changed.iloc[: t + 1] = 0.0
    pd.testing.assert_series_equal(
        forward_realised_vol(changed, h).iloc[t:], base.iloc[t:], rtol=0, atol=0
    )
    bumped = sp500.copy()
    bumped.iloc[t + h] += 0.1
    moved = forward_realised_vol(bumped, h)
    assert moved.iloc[t] != base.iloc[t]
    assert moved.iloc[t + h] == base.iloc[t + h]


def test_baselines_beat_nothing_but_are_sane(sp500: pd.Series) -> None:
    target = forward_realised_vol(sp500, 5).to_numpy()
    hv = historical_vol(sp500, 5).to_numpy()
    ew = ewma_vol(sp500, 5).to_numpy()
    constant = np.full_like(target, np.nanmean(target))
    assert mae(target, ew) < mae(target, constant)
    assert qlike(target, ew) < qlike(target, constant)
    assert 0.05 < np.nanmedian(hv) < 0.3


def test_metrics_by_hand() -> None:
    y = np.array([0.1, 0.2, np.nan, 0.4])
    p = np.array([0.2, 0.2, 0.3, 0.2])
    assert mae(y, p) == pytest.approx((0.1 + 0.0 + 0.2) / 3)
    assert rmse(y, p) == pytest.approx(math.sqrt((0.01 + 0.0 + 0.04) / 3))
    ratios = np.array([0.01 / 0.04, 1.0, 0.16 / 0.04])
    assert qlike(y, p) == pytest.approx(np.mean(ratios - np.log(ratios) - 1))
    assert qlike(np.array([0.2]), np.array([0.2])) == 0.0
    assert math.isfinite(qlike(np.array([0.0, 0.1]), np.array([0.1, 0.0])))
    with pytest.raises(ValueError, match="length"):
        mae(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        rmse(np.array([np.nan]), np.array([1.0]))
