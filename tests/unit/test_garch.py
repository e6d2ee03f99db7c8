"""GARCH features: estimation, fixed-parameter filtering, and the absence of look-ahead."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from arch.univariate import GARCH, ConstantMean, StudentsT

from models.garch import (
    GARCH_FEATURE_COLUMNS,
    MAX_ANNUAL_VOL,
    GarchFit,
    GarchSpec,
    filter_garch,
    fit_garch,
    rolling_garch_features,
)


def _analytic(feats: pd.DataFrame) -> pd.DataFrame:
    """The features without ``garch_vol_30d`` where it is all NaN (EGARCH: not simulated)."""
    return feats.drop(columns="garch_vol_30d") if feats["garch_vol_30d"].isna().all() else feats


TRUE_PARAMS = {"mu": 0.05, "omega": 0.05, "alpha[1]": 0.08, "beta[1]": 0.90, "nu": 7.0}


@pytest.fixture(scope="module")
def simulated() -> pd.Series:
    """3,000 decimal returns of a GARCH(1,1)-t process with TRUE_PARAMS (percent scale)."""
    model = ConstantMean(
        None, volatility=GARCH(1, 0, 1), distribution=StudentsT(seed=np.random.default_rng(11))
    )
    sim = model.simulate(list(TRUE_PARAMS.values()), 3000, burn=500)
    index = pd.bdate_range("2000-01-03", periods=3000, name="session")
    return pd.Series(sim["data"].to_numpy() / 100.0, index=index, name="ret_1")


@pytest.fixture(scope="module")
def sp500() -> pd.Series:
    from arch.data import sp500

    prices = sp500.load()["Adj Close"]
    return np.log(prices).diff().dropna().iloc[-1500:].rename("ret_1")


def test_fit_recovers_simulated_params(simulated: pd.Series) -> None:
    fit = fit_garch(simulated, GarchSpec())
    assert fit.converged
    assert list(fit.params) == list(TRUE_PARAMS)
    assert fit.nobs == len(simulated)
    assert fit.params["alpha[1]"] == pytest.approx(TRUE_PARAMS["alpha[1]"], abs=0.03)
    assert fit.params["beta[1]"] == pytest.approx(TRUE_PARAMS["beta[1]"], abs=0.04)
    persistence = fit.params["alpha[1]"] + fit.params["beta[1]"]
    assert persistence == pytest.approx(0.98, abs=0.02)
    assert fit.params["nu"] == pytest.approx(TRUE_PARAMS["nu"], abs=2.5)
    np.testing.assert_array_equal(fit.starting_values, list(fit.params.values()))


def test_warm_start_reaches_same_optimum(sp500: pd.Series) -> None:
    cold = fit_garch(sp500, GarchSpec())
    warm = fit_garch(sp500, GarchSpec(), starting_values=cold.starting_values)
    assert warm.loglik == pytest.approx(cold.loglik, abs=1e-3)


@pytest.mark.parametrize(
    ("vol", "dist", "n_params"),
    [("GARCH", "normal", 4), ("GJR", "t", 6), ("EGARCH", "skewt", 6)],
)
def test_specs_fit_without_leaking_warnings(
    sp500: pd.Series, vol: str, dist: str, n_params: int
) -> None:
    spec = GarchSpec(vol=vol, dist=dist)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_garch(sp500, spec)
        feats = filter_garch(sp500.iloc[-300:], fit)
    assert len(fit.params) == n_params
    if vol == "GJR":
        assert "gamma[1]" in fit.params
    term = feats.pop("garch_vol_30d")
    assert np.isfinite(feats.to_numpy()).all()
    # the 21-session term vol is analytic for GARCH and GJR; EGARCH's is not simulated
    assert term.isna().all() if vol == "EGARCH" else np.isfinite(term.to_numpy()).all()


def test_term_vol_is_the_21_session_forecast(sp500: pd.Series) -> None:
    """``garch_vol_30d`` is the GARCH(1,1) forecast over 21 sessions: the closed form
    ``mean_h [s2 + (a + b)^(h-1) (sigma2_{t+1} - s2)]`` from the one-step variance, and the same
    as ``garch_forecast`` of a 21-session spec fitted to the same returns."""
    fit = fit_garch(sp500, GarchSpec(horizon=1))
    feats = filter_garch(sp500, fit)
    p = fit.params
    phi = p["alpha[1]"] + p["beta[1]"]
    s2 = p["omega"] / (1.0 - phi)
    one = (feats["garch_forecast"].to_numpy() * 100.0) ** 2 / 252  # sigma2_{t+1}, percent^2
    path = s2 + np.power(phi, np.arange(21))[None, :] * (one[:, None] - s2)
    expected = np.sqrt(252 * path.mean(axis=1)) / 100.0
    np.testing.assert_allclose(feats["garch_vol_30d"].to_numpy(), expected, rtol=1e-9)
    long = filter_garch(sp500, replace(fit, spec=GarchSpec(horizon=21)))
    np.testing.assert_allclose(long["garch_forecast"], feats["garch_vol_30d"], rtol=1e-12)
    np.testing.assert_allclose(long["garch_vol_30d"], feats["garch_vol_30d"], rtol=1e-12)
    # mean reversion: the 21-session vol lies between the next session's and the long run's
    long_run = np.sqrt(252 * s2) / 100.0
    lo = np.minimum(feats["garch_forecast"], long_run) - 1e-12
    hi = np.maximum(feats["garch_forecast"], long_run) + 1e-12
    assert ((feats["garch_vol_30d"] >= lo) & (feats["garch_vol_30d"] <= hi)).all()


def test_filter_garch_matches_arch_and_is_causal(sp500: pd.Series) -> None:
    spec = GarchSpec(horizon=5)
    fit = fit_garch(sp500, spec)
    feats = filter_garch(sp500, fit)
    assert list(feats.columns) == list(GARCH_FEATURE_COLUMNS)
    assert feats.index.equals(sp500.index)
    # garch_vol at t is the one-step variance forecast made at t-1, annualised.
    h1 = (feats["garch_vol"] ** 2 / 252).to_numpy()
    fc = feats["garch_forecast"].to_numpy()
    # Forecast made at t uses r_t: changing r_t (t >= 75) moves it, but not garch_vol at t.
    t = 1000
    bumped = sp500.copy()
    bumped.iloc[t] += 0.05
    other = filter_garch(bumped, fit)
    assert other["garch_vol"].iloc[t] == pytest.approx(feats["garch_vol"].iloc[t], rel=1e-12)
    assert other["garch_forecast"].iloc[t] > fc[t]
    pd.testing.assert_frame_equal(other.iloc[:t], feats.iloc[:t], rtol=0, atol=0)
    # A 1-step horizon forecast at t equals the conditional variance of t+1.
    one = filter_garch(sp500, GarchFit(GarchSpec(horizon=1), fit.params, 0.0, 0, True))
    np.testing.assert_allclose(
        (one["garch_forecast"].to_numpy()[:-1] ** 2) / 252, h1[1:], rtol=1e-10
    )
    # Standardised residual is (r_t - mu) / sigma_t on the percent scale.
    sigma_pct = feats["garch_vol"].to_numpy() * 100 / np.sqrt(252)
    expected = (sp500.to_numpy() * 100 - fit.params["mu"]) / sigma_pct
    np.testing.assert_allclose(feats["garch_std_resid"].to_numpy(), expected, rtol=1e-10)


def test_filter_keeps_leading_nans(sp500: pd.Series) -> None:
    fit = fit_garch(sp500, GarchSpec())
    padded = pd.concat([pd.Series([np.nan], index=[sp500.index[0] - pd.Timedelta(days=1)]), sp500])
    feats = filter_garch(padded, fit)
    assert feats.iloc[0].isna().all()
    np.testing.assert_allclose(feats.iloc[1:].to_numpy(), filter_garch(sp500, fit).to_numpy())


@pytest.mark.parametrize("vol", ["GARCH", "EGARCH"])
def test_filter_last_only_forecasts_the_last_session_only(sp500: pd.Series, vol: str) -> None:
    """The nightly refit's filter: the recursion everywhere, the forecast at the last origin."""
    r = sp500.iloc[-1500:]
    fit = fit_garch(r, GarchSpec(vol=vol, horizon=5))  # type: ignore[arg-type]
    full, last = filter_garch(r, fit), filter_garch(r, fit, last_only=True)
    assert last.index.equals(full.index)
    for col in ("garch_vol", "garch_std_resid"):
        np.testing.assert_allclose(last[col].to_numpy(), full[col].to_numpy())
    assert last["garch_forecast"].iloc[:-1].isna().all()
    assert last["garch_vol_30d"].iloc[:-1].isna().all()
    if vol == "GARCH":  # analytic: the same number
        np.testing.assert_allclose(last.iloc[-1].to_numpy(), full.iloc[-1].to_numpy())
    else:  # simulated with other (seeded) draws: close, not equal; no 30-day term
        assert last["garch_forecast"].iloc[-1] == pytest.approx(
            full["garch_forecast"].iloc[-1], rel=0.05)
        assert np.isnan(last["garch_vol_30d"].iloc[-1])
    again = filter_garch(r, fit, last_only=True)
    pd.testing.assert_frame_equal(again, last)  # deterministic


def test_rolling_features_shape_and_warm_up(sp500: pd.Series) -> None:
    feats = rolling_garch_features(sp500, GarchSpec(), refit_every=63, min_obs=250)
    assert feats.index.equals(sp500.index)
    assert feats.iloc[:250].isna().all().all()
    assert np.isfinite(feats.iloc[250:].to_numpy()).all()
    # Inside a block the params are fixed: the block equals filtering with the fit on [:k].
    k = 250 + 63 * 4
    fit_k = fit_garch(sp500.iloc[:k], GarchSpec())
    block = filter_garch(sp500.iloc[: k + 63], fit_k).iloc[k:]
    np.testing.assert_allclose(feats.iloc[k : k + 63].to_numpy(), block.to_numpy(), rtol=1e-3)


@pytest.mark.parametrize("t", [250, 312, 313, 700, 1100])
def test_rolling_features_have_no_look_ahead(sp500: pd.Series, t: int) -> None:
    """Rewriting every return after position t leaves all rows <= t unchanged."""
    spec = GarchSpec()
    base = rolling_garch_features(sp500, spec, refit_every=63, min_obs=250)
    rng = np.random.default_rng(t)
    changed = sp500.copy()
    changed.iloc[t + 1 :] = rng.standard_t(4, size=len(sp500) - t - 1) * 0.03
    other = rolling_garch_features(changed, spec, refit_every=63, min_obs=250)
    pd.testing.assert_frame_equal(other.iloc[: t + 1], base.iloc[: t + 1], rtol=0, atol=0)
    assert not np.allclose(other.iloc[t + 1 :].to_numpy(), base.iloc[t + 1 :].to_numpy())


def test_rolling_rejects_short_warm_up(sp500: pd.Series) -> None:
    with pytest.raises(ValueError, match="min_obs"):
        rolling_garch_features(sp500, GarchSpec(), min_obs=50)


def test_spec_validation() -> None:
    assert GarchSpec(vol="GJR").asym_order == 1
    with pytest.raises(ValueError, match="vol"):
        GarchSpec(vol="FIGARCH")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="horizon"):
        GarchSpec(horizon=0)


@pytest.mark.parametrize("vol", ["GARCH", "GJR"])
def test_zero_mean_filter_equals_arch_fix(sp500: pd.Series, vol: str) -> None:
    """With a zero mean arch's own fix/forecast has no look-ahead, and ours must match it."""
    from arch import arch_model

    spec = GarchSpec(vol=vol, mean="Zero", horizon=5)  # type: ignore[arg-type]
    fit = fit_garch(sp500, spec)
    ours = filter_garch(sp500, fit)
    model = arch_model(
        sp500 * 100, mean="Zero", vol="GARCH", o=spec.asym_order, dist="t", rescale=False
    )
    fixed = model.fix(fit.starting_values)
    variance = fixed.forecast(horizon=5, start=0, reindex=True).variance
    np.testing.assert_allclose(
        ours["garch_vol"], fixed.conditional_volatility * np.sqrt(252) / 100, rtol=1e-12
    )
    np.testing.assert_allclose(
        ours["garch_forecast"], np.sqrt(252 * variance.mean(axis=1)) / 100, rtol=1e-12
    )


def test_egarch_simulated_forecast_is_deterministic(sp500: pd.Series) -> None:
    fit = fit_garch(sp500.iloc[-600:], GarchSpec(vol="EGARCH", dist="normal"))
    first = filter_garch(sp500.iloc[-400:], fit)
    pd.testing.assert_frame_equal(first, filter_garch(sp500.iloc[-400:], fit))
    assert np.isfinite(_analytic(first).to_numpy()).all()


# ------------------------------------------------------------------ families and warm starts
@pytest.fixture(scope="module")
def spx_replay() -> pd.Series:
    """About 600 real SPX log returns from the replay source, ending 2018-12-31."""
    from pipelines import calendar
    from pipelines.sources import ReplaySource

    sessions = calendar.previous_sessions(pd.Timestamp("2018-12-31").date(), 601)
    bars = ReplaySource(("SPX",)).bars(sessions).set_index("session")["adj_close"]
    return np.log(bars).diff().dropna().rename("ret_1")


VOLS = ("GARCH", "EGARCH", "GJR")
DISTS = ("normal", "t", "skewt")


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("vol", VOLS)
def test_every_family_fits_and_filters(spx_replay: pd.Series, vol: str, dist: str) -> None:
    spec = GarchSpec(vol=vol, dist=dist, horizon=5)  # type: ignore[arg-type]
    assert len(spx_replay) >= 590
    fit = fit_garch(spx_replay, spec)
    assert fit.converged and not fit.warm_start and fit.nit > 0
    assert tuple(fit.params) == spec.parameter_names()
    assert len(fit.params) == 4 + (vol == "GJR") + {"normal": 0, "t": 1, "skewt": 2}[dist]
    feats = filter_garch(spx_replay, fit)
    assert list(feats.columns) == list(GARCH_FEATURE_COLUMNS)
    assert np.isfinite(_analytic(feats).to_numpy()).all()
    assert ((feats["garch_vol"] > 0.01) & (feats["garch_vol"] < 2.0)).all()
    # EGARCH's multi-step forecast is simulated; with fat-tailed errors a few paths can explode.
    assert (feats["garch_forecast"] > 0.01).all()
    assert 0.05 < feats["garch_forecast"].median() < 0.5
    # Standardised residuals of a fitted model have roughly unit variance.
    assert feats["garch_std_resid"].std() == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("vol", VOLS)
def test_warm_start_from_previous_session_matches_cold(spx_replay: pd.Series, vol: str) -> None:
    spec = GarchSpec(vol=vol, dist="t")  # type: ignore[arg-type]
    yesterday = fit_garch(spx_replay.iloc[:-1], spec)
    cold = fit_garch(spx_replay, spec)
    warm = fit_garch(spx_replay, spec, starting_values=yesterday.starting_values)
    assert warm.warm_start and warm.converged
    assert warm.loglik == pytest.approx(cold.loglik, abs=1e-4)
    np.testing.assert_allclose(warm.starting_values, cold.starting_values, rtol=0.05, atol=5e-3)
    # The warm refinement needs fewer iterations and likelihood evaluations than a cold fit.
    assert warm.nit < cold.nit
    assert warm.nfev < cold.nfev
    # arch's own SLSQP from the same start (refine=False) reaches the same optimum too.
    plain = fit_garch(spx_replay, spec, yesterday.starting_values, refine=False)
    assert plain.warm_start
    assert plain.loglik == pytest.approx(cold.loglik, abs=1e-3)


def test_warm_start_is_deterministic(spx_replay: pd.Series) -> None:
    spec = GarchSpec(vol="GJR", dist="skewt")
    start = fit_garch(spx_replay.iloc[:-1], spec).starting_values
    first = fit_garch(spx_replay, spec, start)
    assert first == fit_garch(spx_replay, spec, start)
    assert first.params == fit_garch(spx_replay, spec, start).params


def test_infeasible_starting_values_give_a_cold_fit(spx_replay: pd.Series) -> None:
    spec = GarchSpec()
    cold = fit_garch(spx_replay, spec)
    bad = cold.starting_values.copy()
    bad[2], bad[3] = 0.6, 0.6  # alpha + beta > 1 violates arch's stationarity constraint
    for refine in (True, False):
        fit = fit_garch(spx_replay, spec, bad, refine=refine)
        assert not fit.warm_start
        assert fit.loglik == pytest.approx(cold.loglik, abs=1e-6)
    short = fit_garch(spx_replay, spec, cold.starting_values[:3])
    assert not short.warm_start
    # A start on the boundary alpha + beta = 1 that rounding pushed a few ulps past it is kept.
    edge = cold.starting_values.copy()
    edge[3] = 1.0 - edge[2] + 1e-13
    on_edge = fit_garch(spx_replay, spec, edge)
    assert on_edge.warm_start and on_edge.converged
    assert on_edge.loglik == pytest.approx(cold.loglik, abs=1e-4)


def test_fit_to_dict_records_warm_start_and_iterations(spx_replay: pd.Series) -> None:
    fit = fit_garch(spx_replay, GarchSpec(dist="normal"))
    d = fit.to_dict()
    assert d["warm_start"] is False and d["nit"] == fit.nit > 0 and d["nfev"] == fit.nfev
    assert GarchSpec(vol="EGARCH", dist="skewt").parameter_names() == (
        "mu", "omega", "alpha[1]", "beta[1]", "eta", "lambda"
    )


# ------------------------------------------------------------------------ the light stage
def _stage_lake(tmp_path: Any, returns: pd.Series) -> Any:
    """A lake with the ``features`` rows refit_garch reads (two symbols, real returns)."""
    from pipelines import calendar, lake
    from pipelines.settings import Settings

    s = Settings(home=tmp_path)
    frames = []
    for symbol, r in (("SPX", returns), ("AAA", returns.iloc[::-1].set_axis(returns.index))):
        frames.append(pd.DataFrame({"symbol": symbol, "session": r.index, "ret_1": r.to_numpy()}))
    feats = pd.concat(frames, ignore_index=True)
    feats["event_timestamp"] = calendar.closes_for(feats["session"])
    lake.write_partitions(s.lake_dir, "features", feats)
    return s


def test_refit_garch_warm_starts_from_previous_params(
    tmp_path: Any, spx_replay: pd.Series
) -> None:
    from pipelines import lake
    from pipelines.stages import refit_garch

    returns = spx_replay.iloc[-320:]
    s = _stage_lake(tmp_path, returns)
    day1, day2 = (t.date() for t in returns.index[-2:])
    refit_garch(day1.isoformat(), s)
    first = lake.read_table(s.lake_dir, "garch_params", start=day1, end=day1)
    assert not first["warm_start"].any()
    record = refit_garch(day2.isoformat(), s)
    assert record["symbols_fitted"] == 2
    second = lake.read_table(s.lake_dir, "garch_params", start=day2, end=day2)
    assert second["warm_start"].all()
    # Warm fits reach the cold optimum of their own model on the same returns (EGARCH's
    # likelihood has kinks in mu: warm and cold fits may stop ~1e-4-1e-3 apart).
    for row in second.itertuples(index=False):
        r = returns if row.symbol == "SPX" else returns.iloc[::-1].set_axis(returns.index)
        egarch = getattr(row, "model", "garch") == "egarch"
        cold = fit_garch(r, GarchSpec(vol="EGARCH" if egarch else "GARCH"))
        assert row.loglik == pytest.approx(cold.loglik, abs=1e-3 if egarch else 1e-4)
    # A re-run of the session uses the same starting values: byte-identical partitions.
    paths = [lake.partition_path(s.lake_dir, t, day2) for t in ("garch", "garch_params")]
    before = [p.read_bytes() for p in paths]
    refit_garch(day2.isoformat(), s)
    assert [p.read_bytes() for p in paths] == before


def test_refit_garch_goes_cold_when_the_spec_changed(tmp_path: Any, spx_replay: pd.Series) -> None:
    import json

    from pipelines import lake
    from pipelines.stages import refit_garch

    returns = spx_replay.iloc[-320:]
    s = _stage_lake(tmp_path, returns)
    day1, day2 = (t.date() for t in returns.index[-2:])
    refit_garch(day1.isoformat(), s)
    stored = lake.read_table(s.lake_dir, "garch_params", start=day1, end=day1)
    other = json.dumps({"dist": "normal", "mean": "Constant", "o": 0, "p": 1, "q": 1,
                        "vol": "GARCH"}, sort_keys=True)
    stored = stored.assign(spec=stored["spec"].where(stored["symbol"] != "AAA", other))
    lake.write_partition(s.lake_dir, "garch_params", day1, stored)
    refit_garch(day2.isoformat(), s)
    second = lake.read_table(s.lake_dir, "garch_params", start=day2, end=day2)
    assert dict(zip(second["symbol"], second["warm_start"], strict=True)) == {
        "AAA": False, "SPX": True
    }


# --------------------------------------------------- EGARCH stability (WMT, replay data, 1999-2000)
@pytest.fixture(scope="module")
def wmt_1999() -> pd.Series:
    """WMT log returns 1999-01-05 .. 2000-06-30 (376), as ``afterbell evaluate`` computes them.

    An unconstrained EGARCH(1,1)-t fitted on the first 250 has ``alpha < 0``: filtered over the
    next block its variance collapses onto the floor (``garch_vol`` 1.6e-7, standardised
    residuals ~1e6, ``garch_forecast`` 0 or inf), and warm starts from it derailed every later
    refit of the evaluation (all out-of-sample EGARCH forecasts of WMT were inf).
    """
    from pipelines import calendar
    from pipelines.sources import ReplaySource

    sessions = calendar.sessions_between("1999-01-04", "2000-06-30")
    bars = ReplaySource(("WMT",)).bars(sessions).set_index("session")["adj_close"]
    return np.log(bars).diff().dropna().rename("ret_1")


def test_egarch_fit_is_invertible_and_rolling_features_stay_sane(wmt_1999: pd.Series) -> None:
    spec = GarchSpec(vol="EGARCH", dist="t", horizon=22)
    fit = fit_garch(wmt_1999.iloc[:250], spec)
    assert fit.converged
    assert fit.params["alpha[1]"] >= -1e-8  # news impact non-decreasing in |z|: invertible
    assert 0.0 <= fit.params["beta[1]"] < 1.0
    feats = rolling_garch_features(wmt_1999, spec, refit_every=63, min_obs=250).iloc[250:]
    assert len(feats) == len(wmt_1999) - 250
    assert np.isfinite(_analytic(feats).to_numpy()).all()
    assert ((feats["garch_vol"] > 0.05) & (feats["garch_vol"] < 1.0)).all()
    assert ((feats["garch_forecast"] > 0.05) & (feats["garch_forecast"] < 1.0)).all()
    assert (feats["garch_std_resid"].abs() < 15.0).all()


def test_degenerate_warm_starts_fall_back_to_the_cold_fit(
    wmt_1999: pd.Series, caplog: pytest.LogCaptureFixture
) -> None:
    spec = GarchSpec(vol="EGARCH", dist="t")
    cold = fit_garch(wmt_1999, spec)
    # alpha < 0 (non-invertible) is infeasible for the constrained EGARCH: a cold fit.
    non_invertible = fit_garch(wmt_1999, spec, np.array([0.1, 0.012, -0.09, 0.995, 236.0]))
    assert not non_invertible.warm_start
    assert non_invertible.params == cold.params
    # Feasible but absurd parameters (a refit of the old evaluation run: alpha = 180, nu = 2.06)
    # lead SLSQP to a log-likelihood far below the constant-variance model's: rejected, refitted.
    with caplog.at_level("WARNING", logger="afterbell.garch"):
        absurd = fit_garch(wmt_1999, spec, np.array([7.28, 6.27, 180.05, 0.82, 2.06]))
    assert "rejected" in caplog.text and "constant-variance" in caplog.text
    assert absurd.converged and not absurd.warm_start
    assert absurd.loglik == pytest.approx(cold.loglik, abs=1e-6)


def test_explosive_egarch_forecast_is_finite_and_capped(
    wmt_1999: pd.Series, caplog: pytest.LogCaptureFixture
) -> None:
    """Fixed parameters whose simulated log-variance overflows exp() in arch's simulation."""
    spec = GarchSpec(vol="EGARCH", dist="t", horizon=22)
    params = {"mu": 0.0, "omega": 0.5, "alpha[1]": 3.0, "beta[1]": 0.99, "nu": 2.1}
    with caplog.at_level("WARNING", logger="afterbell.garch"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow inside the simulation
        feats = filter_garch(wmt_1999.iloc[:120], GarchFit(spec, params, 0.0, 0, False), name="WMT")
    assert np.isfinite(_analytic(feats).to_numpy()).all()
    assert (feats["garch_forecast"] <= MAX_ANNUAL_VOL).all()
    assert (feats["garch_forecast"] == MAX_ANNUAL_VOL).any()
    assert "WMT" in caplog.text and "capped" in caplog.text


def test_egarch_simulation_equals_arch_up_to_the_cap(sp500: pd.Series) -> None:
    """The clipped simulation draws and computes exactly as arch's (zero mean: no look-ahead).

    With t errors ``E[exp(alpha |z|)]`` is infinite: on this sample one origin's mean over 1,000
    paths is ~128 (12,800% a year) in arch's simulation, from a healthy fit; it is capped.
    """
    spec = GarchSpec(vol="EGARCH", dist="t", mean="Zero", horizon=5)
    returns = sp500.iloc[-300:]
    fit = fit_garch(returns, spec)
    ours = filter_garch(returns, fit)
    model = spec.build(returns * 100, seed=20180101)
    fixed = model.fix(fit.starting_values)
    variance = fixed.forecast(
        horizon=5, start=0, reindex=True, method="simulation", simulations=1000,
        rng=model.distribution.simulate([fit.params["nu"]]),
    ).variance
    expected = np.sqrt(252 * variance.mean(axis=1)) / 100
    np.testing.assert_allclose(
        ours["garch_forecast"], np.minimum(expected, MAX_ANNUAL_VOL), rtol=1e-12
    )
