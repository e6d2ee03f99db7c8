"""Baseline forecasts, the forward realised-vol target and the error metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.baselines import (
    RETURN_FEATURE_COLUMNS,
    GBTReturnSpec,
    HARSpec,
    LinearReturnSpec,
    ewma_vol,
    fit_gbt_return,
    fit_har,
    fit_linear_return,
    forward_log_return,
    forward_realised_vol,
    har_features,
    har_vol,
    historical_vol,
    mae,
    qlike,
    return_features,
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


# --- HAR-RV -------------------------------------------------------------------------------------


def _dated(r: pd.Series) -> pd.Series:
    return r.set_axis(pd.bdate_range("2010-01-04", periods=len(r)))


def test_har_features_and_target_by_hand() -> None:
    r = pd.Series(np.arange(1.0, 9.0) / 100)
    feats = har_features(r, HARSpec(horizon=2, lags=(1, 3)))
    assert list(feats.columns) == ["rv_1", "rv_3"]
    np.testing.assert_allclose(feats["rv_1"], r**2)
    assert feats["rv_3"].iloc[:2].isna().all()
    assert feats["rv_3"].iloc[4] == pytest.approx((0.03**2 + 0.04**2 + 0.05**2) / 3)


@pytest.mark.parametrize("log", [True, False])
def test_fit_har_equals_lstsq_on_a_hand_built_design(sp500: pd.Series, log: bool) -> None:
    """OLS on regressors and target built independently with pandas rolling windows."""
    r = _dated(sp500)
    h, cut = 5, 1000
    fit = fit_har(r, HARSpec(horizon=h, log=log), train_end=r.index[cut])
    sq = r**2
    x = pd.DataFrame({f"rv_{k}": sq.rolling(k).mean() for k in (1, 5, 22)})
    y = sq.rolling(h).mean().shift(-h)
    if log:
        x, y = np.log(np.maximum(x, 1e-12)), np.log(np.maximum(y, 1e-12))
    rows = pd.concat([x, y.rename("y")], axis=1).iloc[: cut - h + 1].dropna()
    design = np.column_stack([np.ones(len(rows)), rows[x.columns].to_numpy()])
    expected, *_ = np.linalg.lstsq(design, rows["y"].to_numpy(), rcond=None)
    np.testing.assert_allclose(fit.params.to_numpy(), expected, rtol=1e-8, atol=1e-12)
    assert list(fit.params.index) == ["const", "rv_1", "rv_5", "rv_22"]
    assert fit.nobs == len(rows) == cut - h + 1 - 21
    assert (fit.bse > 0).all()


def test_fit_har_purges_targets_after_train_end(sp500: pd.Series) -> None:
    """Returns after train_end never enter the fit; the return at train_end does (last target)."""
    r = _dated(sp500)
    cut = 900
    spec = HARSpec(horizon=5)
    base = fit_har(r, spec, train_end=r.index[cut])
    future = r.copy()
    future.iloc[cut + 1 :] = np.random.default_rng(1).normal(0, 0.05, len(r) - cut - 1)
    pd.testing.assert_series_equal(fit_har(future, spec, r.index[cut]).params, base.params)
    edge = r.copy()
    edge.iloc[cut] += 0.05
    assert not np.allclose(fit_har(edge, spec, r.index[cut]).params, base.params)
    # A date label, a Timestamp and a label between sessions all cut at the same row.
    as_date = fit_har(r, spec, train_end=r.index[cut].date())
    pd.testing.assert_series_equal(as_date.params, base.params)


def test_har_predict_is_causal_and_beats_historical_vol_out_of_sample(sp500: pd.Series) -> None:
    r = _dated(sp500)
    h, cut = 5, 800
    fit = fit_har(r, HARSpec(horizon=h), r.index[cut])
    pred = fit.predict(r)
    assert pred.index.equals(r.index) and pred.iloc[:21].isna().all()
    assert pred.iloc[21:].notna().all() and (pred.iloc[21:] > 0).all()
    pd.testing.assert_series_equal(har_vol(r, h, r.index[cut]), pred)
    t = 1200
    changed = r.copy()
    changed.iloc[t + 1 :] = 0.07
    pd.testing.assert_series_equal(fit.predict(changed).iloc[: t + 1], pred.iloc[: t + 1])
    assert fit.predict(changed).iloc[t + 1] != pred.iloc[t + 1]
    target = forward_realised_vol(r, h).to_numpy()
    out = np.arange(len(r)) > cut
    hv = historical_vol(r, h).to_numpy()
    assert mae(target[out], pred.to_numpy()[out]) < mae(target[out], hv[out])


def test_har_spec_rejects_bad_values_and_too_little_data() -> None:
    with pytest.raises(ValueError, match="horizon"):
        HARSpec(horizon=0)
    with pytest.raises(ValueError, match="increasing"):
        HARSpec(lags=(5, 1, 22))
    with pytest.raises(ValueError, match="increasing"):
        HARSpec(lags=(0, 5))
    r = pd.Series(np.random.default_rng(0).normal(0, 0.01, 40))
    with pytest.raises(ValueError, match="too few rows"):
        fit_har(r, HARSpec(horizon=5), train_end=25)


# --- return baselines ---------------------------------------------------------------------------


def test_return_features_and_target_by_hand() -> None:
    r = pd.Series(np.linspace(-0.02, 0.03, 30))
    feats = return_features(r)
    assert tuple(feats.columns) == RETURN_FEATURE_COLUMNS
    t = 25
    assert feats["r_1"].iloc[t] == r.iloc[t]
    assert feats["r_5"].iloc[t] == pytest.approx(r.iloc[t - 4 : t + 1].sum())
    assert feats["r_22"].iloc[t] == pytest.approx(r.iloc[t - 21 : t + 1].sum())
    assert feats["rv_5"].iloc[t] == pytest.approx(
        math.sqrt(252 * (r.iloc[t - 4 : t + 1] ** 2).mean())
    )
    assert feats.iloc[:21].isna().any(axis=1).all() and feats.iloc[21:].notna().all().all()
    fwd = forward_log_return(r, 3)
    assert fwd.iloc[t] == pytest.approx(r.iloc[t + 1 : t + 4].sum())
    assert fwd.iloc[-3:].isna().all() and fwd.iloc[:-3].notna().all()


def _ar1(n: int, phi: float, seed: int) -> pd.Series:
    """Returns with a planted, learnable next-day dependence."""
    eps = np.random.default_rng(seed).normal(0, 0.01, n)
    r = np.zeros(n)
    for t in range(1, n):
        r[t] = phi * r[t - 1] + eps[t]
    return _dated(pd.Series(r))


def test_ols_return_baseline_equals_lstsq() -> None:
    r = _ar1(600, 0.0, seed=3)
    cut = 400
    fit = fit_linear_return(r, LinearReturnSpec(horizon=5, alpha=0.0), r.index[cut])
    x = return_features(r).iloc[: cut - 5 + 1]
    y = forward_log_return(r, 5).iloc[: cut - 5 + 1]
    ok = x.notna().all(axis=1)
    design = np.column_stack([np.ones(ok.sum()), x[ok].to_numpy()])
    beta, *_ = np.linalg.lstsq(design, y[ok].to_numpy(), rcond=None)
    np.testing.assert_allclose(
        fit.predict(r).to_numpy()[21:],
        (np.column_stack([np.ones(len(r) - 21), return_features(r).iloc[21:].to_numpy()]) @ beta),
        rtol=1e-7,
    )
    assert fit.nobs == int(ok.sum())


@pytest.mark.parametrize(
    "fit_fn",
    [
        lambda r, end: fit_linear_return(r, LinearReturnSpec(horizon=1), end),
        lambda r, end: fit_gbt_return(r, GBTReturnSpec(horizon=1), end),
    ],
    ids=["ridge", "gbt"],
)
def test_return_baselines_learn_a_planted_signal_deterministically(fit_fn) -> None:
    r = _ar1(1500, -0.5, seed=7)
    cut = 1000
    fit = fit_fn(r, r.index[cut])
    pred = fit.predict(r)
    target = forward_log_return(r, 1)
    out = (np.arange(len(r)) > cut) & target.notna().to_numpy()
    mse_model = np.mean((target[out] - pred[out]) ** 2)
    mse_zero = np.mean(target[out] ** 2)
    assert mse_model < 0.9 * mse_zero
    assert np.mean(np.sign(pred[out]) == np.sign(target[out])) > 0.55
    # Deterministic, and purged: returns after train_end change nothing up to it.
    again = fit_fn(r, r.index[cut]).predict(r)
    pd.testing.assert_series_equal(again, pred, rtol=0, atol=0)
    changed = r.copy()
    changed.iloc[cut + 1 :] = 0.02
    moved = fit_fn(changed, r.index[cut]).predict(changed)
    pd.testing.assert_series_equal(moved.iloc[: cut + 1], pred.iloc[: cut + 1], rtol=0, atol=0)


def test_return_specs_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="horizon"):
        LinearReturnSpec(horizon=0)
    with pytest.raises(ValueError, match="alpha"):
        LinearReturnSpec(alpha=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        GBTReturnSpec(learning_rate=0.0)
