"""Market risk: VaR/ES estimators, VaR backtests against published values, covariance, stress."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from models.risk import (
    BACKTEST_COLUMNS,
    STRESS_SCENARIOS,
    basel_probability,
    basel_zone,
    christoffersen_cc,
    christoffersen_independence,
    filtered_historical_var,
    garch_fhs_var,
    historical_stress,
    historical_var,
    hypothetical_shock,
    kupiec_pof,
    ledoit_wolf,
    normal_var_es,
    parametric_var,
    run_scenario,
    shrunk_covariance,
    student_t_var_es,
    var_backtest,
    var_table,
)


# ------------------------------------------------------------------------ reference sequences
def _mathworks_sequence() -> np.ndarray:
    """An exception sequence with the counts of MathWorks' ``varbacktest`` example.

    ``load VaRBacktestData; vbt = varbacktest(EquityIndex, Normal95)`` has 1043 sessions, 57
    failures and transitions N00 = 932, N10 = 53, N01 = 53, N11 = 4. The Kupiec statistic depends
    on (n, failures) only and Christoffersen's on the transition counts only, so any sequence with
    these counts reproduces the published statistics: here 4 runs of two exceptions and 49 single
    exceptions, separated by non-exception runs, starting and ending with a non-exception.
    """
    runs = [2] * 4 + [1] * 49
    seq: list[int] = []
    gaps = 1043 - 57  # non-exceptions, spread over the 54 gaps around the 53 runs
    base, extra = divmod(gaps, len(runs) + 1)
    for i, run in enumerate(runs):
        seq += [0] * (base + (1 if i < extra else 0)) + [1] * run
    seq += [0] * base
    x = np.array(seq, dtype=bool)
    assert x.shape == (1043,) and x.sum() == 57
    return x


def test_kupiec_pof_matches_mathworks_example() -> None:
    """MathWorks Risk Management Toolbox, ``varbacktest.pof`` documentation example
    (https://www.mathworks.com/help/risk/varbacktest.pof.html): 1043 observations, 57 failures,
    VaR level 0.95 -> LRatioPOF 0.46147, PValuePOF 0.49694."""
    res = kupiec_pof(_mathworks_sequence(), 0.95)
    assert res.test == "kupiec_pof"
    assert (res.n, res.exceptions, res.df) == (1043, 57, 1)
    assert res.statistic == pytest.approx(0.46147, abs=5e-6)
    assert res.pvalue == pytest.approx(0.49694, abs=5e-6)


def test_christoffersen_matches_mathworks_examples() -> None:
    """MathWorks ``varbacktest.cci`` and ``varbacktest.cc`` documentation examples
    (https://www.mathworks.com/help/risk/varbacktest.cci.html,
    https://www.mathworks.com/help/risk/varbacktest.cc.html), same data as the ``pof`` example:
    N00 932, N10 53, N01 53, N11 4 -> LRatioCCI 0.25866, PValueCCI 0.61104;
    LRatioCC 0.72013, PValueCC 0.69763."""
    x = _mathworks_sequence()
    ind = christoffersen_independence(x)
    assert ind.counts == (932, 53, 53, 4)  # (n00, n01, n10, n11)
    assert ind.statistic == pytest.approx(0.25866, abs=5e-6)
    assert ind.pvalue == pytest.approx(0.61104, abs=5e-6)
    cc = christoffersen_cc(x, 0.95)
    assert cc.df == 2
    assert cc.statistic == pytest.approx(0.72013, abs=5e-6)
    assert cc.pvalue == pytest.approx(0.69763, abs=5e-6)
    assert cc.statistic == pytest.approx(kupiec_pof(x, 0.95).statistic + ind.statistic)


def test_basel_probability_matches_mathworks_traffic_light() -> None:
    """MathWorks ``varbacktest.tl`` documentation example
    (https://www.mathworks.com/help/risk/varbacktest.tl.html): 57 failures in 1043 observations
    at 95% -> TL green, Probability 0.77913 (cumulative binomial)."""
    assert basel_probability(57, 1043, 0.95) == pytest.approx(0.77913, abs=5e-6)
    assert basel_zone(57, 1043, 0.95) == "green"


def test_backtests_hand_checked_closed_form() -> None:
    """Hand-checked values computed here with math.log, independent of the implementation:
    10 sessions, exceptions on sessions 3, 4 and 8 (1-based), level 0.9 (p = 0.1)."""
    x = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    n, k, p = 10, 3, 0.1
    lr_pof = -2 * ((n - k) * math.log(1 - p) + k * math.log(p)
                   - (n - k) * math.log(1 - k / n) - k * math.log(k / n))
    # transitions: 00: (1,2),(5,6),(6,7),(9,10) = 4; 01: (2,3),(7,8) = 2; 10: (4,5),(8,9) = 2;
    # 11: (3,4) = 1
    n00, n01, n10, n11 = 4, 2, 2, 1
    pi, pi01, pi11 = 3 / 9, 2 / 6, 1 / 3
    lr_ind = -2 * ((n00 + n10) * math.log(1 - pi) + (n01 + n11) * math.log(pi)
                   - n00 * math.log(1 - pi01) - n01 * math.log(pi01)
                   - n10 * math.log(1 - pi11) - n11 * math.log(pi11))
    assert kupiec_pof(x, 0.9).statistic == pytest.approx(lr_pof, rel=1e-12)
    ind = christoffersen_independence(x)
    assert ind.counts == (n00, n01, n10, n11)
    assert ind.statistic == pytest.approx(lr_ind, abs=1e-12)  # pi01 == pi11: LR_ind = 0
    # a clustered sequence: n11 > 0 with unequal transition probabilities
    y = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    n00, n01, n10, n11 = 6, 2, 1, 2
    pi, pi01, pi11 = 4 / 11, 2 / 8, 2 / 3
    lr_ind = -2 * ((n00 + n10) * math.log(1 - pi) + (n01 + n11) * math.log(pi)
                   - n00 * math.log(1 - pi01) - n01 * math.log(pi01)
                   - n10 * math.log(1 - pi11) - n11 * math.log(pi11))
    res = christoffersen_independence(y)
    assert res.counts == (n00, n01, n10, n11)
    assert res.statistic == pytest.approx(lr_ind, rel=1e-12)
    assert res.pvalue == pytest.approx(stats.chi2.sf(lr_ind, 1), rel=1e-12)


def test_backtests_zero_cells() -> None:
    """Empty cells follow 0 log 0 = 0 (Christoffersen 1998; MathWorks ``cci``)."""
    none = np.zeros(250, dtype=bool)
    pof = kupiec_pof(none, 0.99)
    assert pof.statistic == pytest.approx(-2 * 250 * math.log(0.99))
    ind = christoffersen_independence(none)
    assert (ind.statistic, ind.pvalue, ind.counts) == (0.0, 1.0, (249, 0, 0, 0))
    # isolated exceptions only (n11 = 0): L1 = (1 - pi01)^n00 pi01^n01
    x = np.zeros(250, dtype=bool)
    x[[10, 100, 200]] = True
    n00, n01, n10 = 243, 3, 3
    pi, pi01 = 3 / 249, 3 / 246  # pi11 = 0 and its cells n10 log(1) + 0 log(0) vanish
    expected = -2 * ((n00 + n10) * math.log(1 - pi) + n01 * math.log(pi)
                     - n00 * math.log(1 - pi01) - n01 * math.log(pi01))
    res = christoffersen_independence(x)
    assert res.counts == (n00, n01, n10, 0)
    assert res.statistic == pytest.approx(expected, abs=1e-9)
    # every session an exception: Kupiec LR = -2 n log p
    assert kupiec_pof(np.ones(20, dtype=bool), 0.95).statistic == pytest.approx(
        -2 * 20 * math.log(0.05))
    assert kupiec_pof([0, 1, 0], 0.9).exceptions == 1  # 0/1 integers accepted


@pytest.mark.parametrize(
    ("exceptions", "zone"),
    [(0, "green"), (4, "green"), (5, "yellow"), (9, "yellow"), (10, "red"), (25, "red")],
)
def test_basel_zone_250_at_99(exceptions: int, zone: str) -> None:
    """Basel Committee (1996), supervisory framework for backtesting, Table 2: green 0-4,
    yellow 5-9, red 10 or more exceptions in 250 sessions of a 99% VaR."""
    assert basel_zone(exceptions, 250, 0.99) == zone


def test_basel_zone_boundaries_are_exact() -> None:
    zones = [basel_zone(k) for k in range(0, 15)]
    assert zones == ["green"] * 5 + ["yellow"] * 5 + ["red"] * 5
    assert basel_probability(4) == pytest.approx(0.8922, abs=5e-5)  # Basel Table 2
    assert basel_probability(9) == pytest.approx(0.9997, abs=5e-5)
    with pytest.raises(ValueError, match="n_exceptions"):
        basel_zone(251)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="level"):
        kupiec_pof([0, 1], 99.0)
    with pytest.raises(ValueError, match="0/1"):
        kupiec_pof([0, 2], 0.99)
    with pytest.raises(ValueError, match="empty"):
        kupiec_pof([], 0.99)
    with pytest.raises(ValueError, match="two sessions"):
        christoffersen_independence([True])
    with pytest.raises(ValueError, match="non-finite"):
        historical_var([0.01, np.nan, -0.02], 0.95)
    with pytest.raises(ValueError, match="dist"):
        parametric_var(np.linspace(-1, 1, 10), 0.95, "cauchy")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ estimators
def test_historical_var_of_known_sample() -> None:
    """Losses 1..100: the 95% VaR is the 5th largest loss (96), the ES the mean of the 5 largest
    (98); at 99% both are the largest loss."""
    returns = -np.arange(1, 101, dtype=float)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(returns)
    est = historical_var(shuffled, 0.95)
    assert (est.var, est.cvar, est.level, est.method) == (96.0, 98.0, 0.95, "historical")
    est99 = historical_var(shuffled, 0.99)
    assert (est99.var, est99.cvar) == (100.0, 100.0)
    assert est.var == -np.quantile(returns, 0.05, method="inverted_cdf")


def test_historical_es_fractional_tail() -> None:
    """n a = 2.5 (250 sessions, 99%): VaR = 3rd largest loss, ES = (L1 + L2 + 0.5 L3) / 2.5."""
    rng = np.random.default_rng(1)
    r = rng.normal(0, 0.01, 250)
    losses = np.sort(-r)[::-1]
    est = historical_var(r, 0.99)
    assert est.var == losses[2]
    assert est.cvar == pytest.approx((losses[0] + losses[1] + 0.5 * losses[2]) / 2.5)
    assert est.cvar >= est.var


def test_parametric_normal_var() -> None:
    rng = np.random.default_rng(2)
    r = rng.normal(0.0005, 0.012, 500)
    mu, sigma = r.mean(), r.std(ddof=1)
    for level in (0.95, 0.99):
        z = stats.norm.ppf(1 - level)
        est = parametric_var(r, level, "normal")
        assert est.var == pytest.approx(-(mu + z * sigma), rel=1e-12)
        assert est.cvar == pytest.approx(-mu + sigma * stats.norm.pdf(z) / (1 - level), rel=1e-12)
        assert est.method == "normal"
    assert normal_var_es(0.99, 0.0, 1.0)[0] == pytest.approx(2.3263479, abs=1e-6)


def test_student_t_es_closed_form_matches_monte_carlo() -> None:
    nu, loc, scale = 5.0, 0.0005, 0.01
    rng = np.random.default_rng(3)
    draws = loc + scale * rng.standard_t(nu, 2_000_000)
    for level in (0.95, 0.99):
        var, es = student_t_var_es(level, nu, loc, scale)
        mc = historical_var(draws, level)
        assert var == pytest.approx(mc.var, rel=0.01)
        assert es == pytest.approx(mc.cvar, rel=0.01)
    # the unit-variance t (arch's StudentsT) is t_nu * sqrt((nu - 2) / nu)
    from arch.univariate import StudentsT

    q = float(np.asarray(StudentsT().ppf(0.01, [nu])).ravel()[0])
    assert student_t_var_es(0.99, nu, standardised=True)[0] == pytest.approx(-q, rel=1e-10)
    assert student_t_var_es(0.99, 1.0)[1] == math.inf


def test_parametric_t_fits_t_sample() -> None:
    rng = np.random.default_rng(4)
    r = 0.01 * rng.standard_t(4.0, 20_000)
    true_var, true_es = student_t_var_es(0.99, 4.0, 0.0, 0.01)
    est = parametric_var(r, 0.99, "t")
    assert est.method == "t"
    assert est.var == pytest.approx(true_var, rel=0.05)
    assert est.cvar == pytest.approx(true_es, rel=0.08)


def test_filtered_historical_simulation_on_normal_residuals() -> None:
    rng = np.random.default_rng(5)
    z = rng.standard_normal(20_000)
    r = 0.01 * z
    est = filtered_historical_var(r, 0.02, z, 0.99, mu=0.0)
    var, es = normal_var_es(0.99, 0.0, 0.02)
    assert est.method == "fhs"
    assert est.var == pytest.approx(var, rel=0.03)
    assert est.cvar == pytest.approx(es, rel=0.03)
    # default mean: the window's mean return; scaling is linear in sigma_next
    est2 = filtered_historical_var(r, 0.04, z, 0.99)
    assert est2.var == pytest.approx(2 * est.var - r.mean(), rel=1e-12)
    with pytest.raises(ValueError, match="same length"):
        filtered_historical_var(r[:-1], 0.02, z, 0.99)
    with pytest.raises(ValueError, match="sigma_next"):
        filtered_historical_var(r, 0.0, z, 0.99)


def test_garch_fhs_on_iid_normal_returns_close_to_parametric() -> None:
    rng = np.random.default_rng(6)
    r = pd.Series(rng.normal(0.0, 0.01, 2000))
    res = garch_fhs_var(r, 0.99)
    normal = parametric_var(r, 0.99, "normal")
    assert res.sigma_next == pytest.approx(r.std(), rel=0.1)
    assert res.fhs.method == "garch_fhs" and res.parametric.method == "garch_t"
    assert res.fhs.var == pytest.approx(normal.var, rel=0.1)
    assert res.parametric.var == pytest.approx(normal.var, rel=0.1)
    assert res.fhs.cvar > res.fhs.var and res.parametric.cvar > res.parametric.var
    # the same parameters at another level: same sigma, no re-estimation
    at95 = garch_fhs_var(r, 0.95, fit=res.fit)
    assert at95.sigma_next == res.sigma_next and at95.fit is res.fit
    assert at95.parametric.var < res.parametric.var
    with pytest.raises(ValueError, match="expected"):
        garch_fhs_var(r, 0.95, dist="normal", fit=res.fit)


def test_var_table_rows() -> None:
    rng = np.random.default_rng(7)
    r = 0.01 * rng.standard_t(5.0, 1500)
    table = var_table(r)
    assert list(table.columns) == ["method", "level", "var", "cvar"]
    methods = ["historical", "normal", "t", "garch_fhs", "garch_t"]
    assert table["method"].tolist() == methods * 2
    assert table["level"].tolist() == [0.95] * 5 + [0.99] * 5
    v95 = table.loc[table["level"] == 0.95, "var"].to_numpy()
    v99 = table.loc[table["level"] == 0.99, "var"].to_numpy()
    assert (v99 > v95).all() and (table["cvar"] >= table["var"]).all()
    assert (table["var"].between(0.01, 0.05)).all()


def test_kupiec_size_on_true_var() -> None:
    """iid Student-t returns backtested against their true 99% VaR: the exception rate is about
    1% and Kupiec p-values are not systematically small (rejections at 5% near the nominal rate,
    which the test's discreteness puts at 5.6% for n = 1000)."""
    rng = np.random.default_rng(8)
    nu, scale = 5.0, 0.01
    true_var = student_t_var_es(0.99, nu, 0.0, scale)[0]
    r = scale * rng.standard_t(nu, (300, 1000))
    hits = r < -true_var
    pvalues = np.array([kupiec_pof(h, 0.99).pvalue for h in hits])
    assert hits.mean() == pytest.approx(0.01, abs=0.001)
    assert (pvalues < 0.05).mean() < 0.1
    assert np.median(pvalues) > 0.3


# ------------------------------------------------------------------------------- var_backtest
def test_var_backtest_windows() -> None:
    rng = np.random.default_rng(9)
    index = pd.bdate_range("2010-01-01", periods=830)
    r = pd.Series(rng.normal(0, 0.01, 830), index=index)
    var = pd.Series(0.0233, index=index)
    var.iloc[:10] = np.nan  # no forecast yet
    table = var_backtest(r, var, 0.99)
    assert list(table.columns) == list(BACKTEST_COLUMNS)
    assert table["window"].tolist() == ["1", "2", "3", "all"]
    windows = table.iloc[:-1]
    assert (windows["n"] == 250).all()
    assert windows["end"].iloc[-1] == index[-1]  # anchored at the last session
    assert windows["start"].iloc[0] == index[830 - 750]
    whole = table.iloc[-1]
    assert whole["n"] == 820 and whole["start"] == index[10]
    hits = (r < -var).to_numpy()
    for row in table.itertuples():
        span = (index >= row.start) & (index <= row.end)
        assert row.exceptions == hits[span].sum()
        assert row.zone == basel_zone(row.exceptions, row.n, 0.99)
        assert row.expected == pytest.approx(row.n * 0.01)
        assert row.kupiec_p == pytest.approx(kupiec_pof(hits[span], 0.99).pvalue)
    bad = var.copy()
    bad.iloc[100] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        var_backtest(r, bad, 0.99)
    with pytest.raises(ValueError, match="same index"):
        var_backtest(r, var.iloc[1:], 0.99)


# ----------------------------------------------------------------------------- covariance
def test_shrunk_covariance_matches_sklearn() -> None:
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(10)
    x = rng.multivariate_normal([0, 0, 0], [[1, 0.5, 0.2], [0.5, 1, 0.3], [0.2, 0.3, 1]], 120)
    frame = pd.DataFrame(0.01 * x, columns=["A", "B", "C"])
    frame.iloc[5, 1] = np.nan  # dropped row
    cov, shrinkage = shrunk_covariance(frame)
    lw = LedoitWolf().fit(frame.dropna().to_numpy())
    np.testing.assert_allclose(cov.to_numpy(), 252 * lw.covariance_, rtol=1e-12)
    assert shrinkage == pytest.approx(lw.shrinkage_)
    assert 0.0 <= shrinkage <= 1.0
    assert list(cov.index) == list(cov.columns) == ["A", "B", "C"]
    assert np.linalg.eigvalsh(cov.to_numpy()).min() > 0
    daily, _ = shrunk_covariance(frame, annualise=1)
    np.testing.assert_allclose(daily.to_numpy() * 252, cov.to_numpy())
    # more symbols than sessions: the sample covariance is singular, the shrunk one is not
    wide = pd.DataFrame(rng.normal(0, 0.01, (20, 40)))
    cov_w, s_w = shrunk_covariance(wide)
    assert np.linalg.eigvalsh(cov_w.to_numpy()).min() > 0 and 0.0 < s_w <= 1.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        shrunk_covariance(frame.iloc[:1])


@pytest.mark.parametrize(("t", "n"), [(250, 1), (250, 2), (120, 30), (30, 400), (250, 400)])
def test_ledoit_wolf_equals_sklearn(t: int, n: int) -> None:
    """The gate's and the risk stage's estimator: sklearn's numbers, fat tails, a common
    factor, more symbols than sessions."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(t + n)
    x = 0.01 * (rng.standard_t(4, size=(t, n)) + rng.standard_normal((t, 1)))
    cov, shrinkage = ledoit_wolf(x)
    lw = LedoitWolf().fit(x)
    np.testing.assert_allclose(cov, lw.covariance_, rtol=1e-10, atol=1e-18)
    assert shrinkage == pytest.approx(lw.shrinkage_, rel=1e-10, abs=1e-15)
    with pytest.raises(ValueError, match="at least 2 rows"):
        ledoit_wolf(x[:1])


# --------------------------------------------------------------------------------- stress
@pytest.fixture
def replay() -> pd.DataFrame:
    index = pd.to_datetime(["2008-09-30", "2008-10-01", "2008-10-02", "2008-10-03", "2008-11-03"])
    return pd.DataFrame(
        {"A": [0.05, -0.10, 0.02, -0.05, 0.5], "B": [0.01, 0.01, -0.03, 0.04, 0.5]}, index=index
    )


def test_historical_stress_two_assets(replay: pd.DataFrame) -> None:
    w = pd.Series({"A": 0.6, "B": 0.4})
    res = historical_stress(w, replay, "2008-10-01", "2008-10-31", name="2008-10")
    growth_a = 0.90 * 1.02 * 0.95
    growth_b = 1.01 * 0.97 * 1.04
    expected = 0.6 * (growth_a - 1) + 0.4 * (growth_b - 1)
    assert res.pnl == pytest.approx(expected, rel=1e-12)
    assert res.contributions["A"] == pytest.approx(0.6 * (growth_a - 1))
    assert res.contributions.sum() == pytest.approx(res.pnl)
    assert res.sessions == 3 and res.missing == () and res.name == "2008-10"
    nav = [0.6 * 0.90 + 0.4 * 1.01, 0.6 * 0.90 * 1.02 + 0.4 * 1.01 * 0.97]
    assert res.worst_day == pytest.approx(nav[0] - 1)  # the first day: -5.6%
    assert res.worst_date == pd.Timestamp("2008-10-01")
    assert nav[1] / nav[0] - 1 > res.worst_day
    # log returns give the same replay once converted
    logs = np.log1p(replay)
    assert historical_stress(w, logs, "2008-10-01", "2008-10-31", kind="log").pnl == (
        pytest.approx(expected))
    # half the capital in cash halves the result
    half = historical_stress(w / 2, replay, "2008-10-01", "2008-10-31")
    assert half.pnl == pytest.approx(expected / 2)


def test_historical_stress_missing_symbols(replay: pd.DataFrame) -> None:
    frame = replay.assign(C=[np.nan, np.nan, 0.01, 0.01, 0.01])
    w = pd.Series({"A": 0.5, "C": 0.3, "D": 0.2})
    res = historical_stress(w, frame, "2008-10-01", "2008-10-31")
    assert res.missing == ("C", "D")
    assert np.isnan(res.contributions["C"]) and np.isnan(res.contributions["D"])
    assert res.pnl == pytest.approx(0.5 * (0.90 * 1.02 * 0.95 - 1))
    assert res.notes == ("C: 1 of 3 sessions without a return", "D: no returns column")
    with pytest.raises(ValueError, match="missing symbols"):
        historical_stress(w, frame, "2008-10-01", "2008-10-31", strict=True)
    with pytest.raises(ValueError, match="no session"):
        historical_stress(w, frame, "2020-03-01", "2020-03-31")


def test_hypothetical_shocks() -> None:
    w = pd.Series({"SPY": 0.5, "TLT": 0.3, "XYZ": 0.2})
    flat = hypothetical_shock(w, -0.2)
    assert flat.pnl == pytest.approx(-0.2) and flat.name == "market -20%"
    assert flat.worst_day == flat.pnl and flat.sessions == 0 and flat.worst_date is None
    beta = hypothetical_shock(w, -0.1, pd.Series({"SPY": 1.0, "TLT": -0.2}))
    assert beta.pnl == pytest.approx(0.5 * -0.1 + 0.3 * 0.02)
    assert beta.missing == ("XYZ",) and np.isnan(beta.contributions["XYZ"])
    per = hypothetical_shock(w, {"SPY": -0.2, "TLT": 0.05, "XYZ": -0.5})
    assert per.pnl == pytest.approx(-0.1 + 0.015 - 0.1)
    with pytest.raises(ValueError, match="scalar market shock"):
        hypothetical_shock(w, {"SPY": -0.2}, pd.Series({"SPY": 1.0}))
    with pytest.raises(ValueError, match="missing symbols"):
        hypothetical_shock(w, {"SPY": -0.2}, strict=True)


def test_stress_scenarios(replay: pd.DataFrame) -> None:
    assert {"2008-10", "2020-03", "market -10%", "market -20%"} <= set(STRESS_SCENARIOS)
    oct08 = STRESS_SCENARIOS["2008-10"]
    assert (oct08.start, oct08.end) == ("2008-10-01", "2008-10-31")
    covid = STRESS_SCENARIOS["2020-03"]
    assert (covid.start, covid.end) == ("2020-03-01", "2020-03-31")
    w = pd.Series({"A": 1.0})
    assert run_scenario(w, "2008-10", replay).pnl == pytest.approx(0.90 * 1.02 * 0.95 - 1)
    assert run_scenario(w, "market -10%").pnl == pytest.approx(-0.10)
    with pytest.raises(ValueError, match="needs returns"):
        run_scenario(w, "2020-03")
    with pytest.raises(ValueError, match="unknown scenario"):
        run_scenario(w, "1987-10")
