"""Backtest timing and costs, performance metrics, deflated Sharpe ratio, SPA and MCS."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from models.backtest import (
    CostModel,
    average_dollar_volume,
    backtest,
    beats_significantly,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    model_confidence_set,
    performance,
    probabilistic_sharpe_ratio,
    spa_test,
    trailing_volatility,
)
from models.evaluation import pointwise_loss

REPS = 200  # bootstrap replications: enough for clear-cut cases, fast

FREE = CostModel(commission_bps=0.0, half_spread_bps=0.0, impact_coef=0.0)


def _frame(values: list[list[float]], symbols: tuple[str, ...] = ("A", "B")) -> pd.DataFrame:
    index = pd.bdate_range("2024-01-01", periods=len(values))
    return pd.DataFrame(values, index=index, columns=list(symbols), dtype=float)


def _flat(like: pd.DataFrame, value: float) -> pd.DataFrame:
    return pd.DataFrame(value, index=like.index, columns=like.columns)


# --- causal inputs ------------------------------------------------------------------------------


def test_average_dollar_volume_is_a_causal_trailing_mean() -> None:
    rng = np.random.default_rng(0)
    close = _frame((100 + rng.standard_normal((30, 2))).tolist())
    volume = _frame(rng.integers(1_000, 5_000, (30, 2)).astype(float).tolist())
    adv = average_dollar_volume(close, volume, window=20)
    assert adv.iloc[:19].isna().all().all()
    expected = (close * volume).iloc[5:25].mean()
    np.testing.assert_allclose(adv.iloc[24].to_numpy(), expected.to_numpy())
    # Changing the future leaves the past untouched.
    volume2 = volume.copy()
    volume2.iloc[25:] *= 10.0
    pd.testing.assert_frame_equal(
        average_dollar_volume(close, volume2).iloc[:25], adv.iloc[:25]
    )
    with pytest.raises(ValueError, match="no row for session"):
        average_dollar_volume(close, volume.iloc[:-1])


def test_trailing_volatility_is_causal() -> None:
    rng = np.random.default_rng(1)
    returns = _frame((0.01 * rng.standard_normal((40, 2))).tolist())
    vol = trailing_volatility(returns, window=20)
    np.testing.assert_allclose(vol.iloc[30].to_numpy(), returns.iloc[11:31].std().to_numpy())
    later = returns.copy()
    later.iloc[31:] = 0.5
    pd.testing.assert_frame_equal(trailing_volatility(later).iloc[:31], vol.iloc[:31])


# --- backtest timing ----------------------------------------------------------------------------


def test_weights_earn_the_next_sessions_return() -> None:
    # On each session one asset rises 10% and the other falls 10%, alternating. Weights long the
    # asset that rose *today* (known at today's close) earn tomorrow's return, so they lose 10% a
    # session; with look-ahead (earning today's return) they would gain 10%.
    returns = _frame([[0.1, -0.1], [-0.1, 0.1], [0.1, -0.1], [-0.1, 0.1], [0.1, -0.1]])
    weights = (returns > 0).astype(float)
    res = backtest(weights.iloc[:4], returns, _flat(returns, 1e12), _flat(returns, 0.0), FREE)
    assert list(res.gross.index) == list(returns.index)  # plus the session after the last target
    np.testing.assert_allclose(res.gross.to_numpy(), [0.0, -0.1, -0.1, -0.1, -0.1])
    # The weights held over a session are those decided at the previous close.
    pd.testing.assert_frame_equal(res.positions.iloc[1:], weights.iloc[:4].set_axis(
        returns.index[1:]), check_freq=False)
    # Oracle weights (tomorrow's winner) are the only way to gain: they peek at the next row.
    oracle = (returns.shift(-1) > 0).astype(float).iloc[:4]
    res = backtest(oracle, returns, _flat(returns, 1e12), _flat(returns, 0.0), FREE)
    np.testing.assert_allclose(res.gross.to_numpy()[1:], 0.1)


def test_backtest_rows_do_not_depend_on_the_future() -> None:
    rng = np.random.default_rng(2)
    returns = _frame((0.01 * rng.standard_normal((60, 2))).tolist())
    weights = _frame(rng.uniform(-0.5, 0.5, (60, 2)).tolist())
    adv = _flat(returns, 5e8)
    # The default sigma (20-session trailing volatility) is known from the 20th session on: a
    # trade before it has no impact estimate.
    with pytest.raises(ValueError, match=r"sigma is missing .* session 2024-01-01"):
        backtest(weights, returns, adv)
    weights = weights.iloc[19:]
    res = backtest(weights, returns, adv)  # default costs, default sigma
    changed_r, changed_w = returns.copy(), weights.copy()
    changed_r.iloc[41:] = 0.3
    changed_w.iloc[22:] = 1.0  # weights row 22 is returns row 41
    res2 = backtest(changed_w, changed_r, adv)
    for a, b in ((res.net, res2.net), (res.costs, res2.costs), (res.equity, res2.equity)):
        pd.testing.assert_series_equal(a.iloc[:22], b.iloc[:22])
    assert not np.isclose(res.net.iloc[22], res2.net.iloc[22])
    # Accounting identities.
    np.testing.assert_allclose(res.net, res.gross - res.costs)
    np.testing.assert_allclose(res.costs, res.cost_breakdown.sum(axis=1))
    np.testing.assert_allclose(res.equity, np.cumprod(1.0 + res.net.to_numpy()))
    assert (res.drawdown <= 0.0).all()
    assert res.costs.gt(0.0).all()
    assert res.net.index[0] == returns.index[19] and len(res.net) == 41


def test_drift_and_rebalance_by_hand() -> None:
    returns = _frame([[0.0, 0.0], [0.10, -0.10], [0.0, 0.0]])
    weights = _frame([[0.5, 0.5], [0.5, 0.5]])
    res = backtest(weights, returns, _flat(returns, 1e12), _flat(returns, 0.0), FREE)
    # Session 1: 0.5 * 10% - 0.5 * 10% = 0; A drifts to 0.55, B to 0.45; rebalancing to 50/50
    # trades -0.05 and +0.05, one-way turnover 0.05.
    assert res.gross.iloc[1] == pytest.approx(0.0)
    np.testing.assert_allclose(res.trades.iloc[1].to_numpy(), [-0.05, 0.05])
    assert res.turnover.iloc[1] == pytest.approx(0.05)
    # Session 0 builds the book from cash: sum |Δw| = 1, one-way turnover 0.5.
    assert res.turnover.iloc[0] == pytest.approx(0.5)
    # Last session: the last targets earn, nothing is traded.
    assert res.turnover.iloc[2] == 0.0


# --- costs --------------------------------------------------------------------------------------


def test_zero_trades_cost_nothing() -> None:
    returns = _frame([[0.01, -0.02]] * 5)
    res = backtest(_flat(returns, 0.0), returns, _flat(returns, np.nan), None, CostModel())
    assert (res.costs == 0.0).all() and (res.turnover == 0.0).all()
    assert (res.net == 0.0).all()
    # Holding without drift (zero returns): only the initial build is charged.
    flat = _flat(returns, 0.0)
    res = backtest(_flat(returns, 0.3), flat, _flat(returns, 1e8), _flat(returns, 0.02))
    assert res.costs.iloc[0] > 0.0
    assert (res.costs.iloc[1:] == 0.0).all()


def test_known_trade_cost_by_hand() -> None:
    returns = _frame([[0.0, 0.0], [0.0, 0.0]])
    weights = _frame([[0.5, 0.0]])
    adv = _flat(returns, 1e8)
    sigma = _flat(returns, 0.02)
    costs = CostModel(commission_bps=1.0, half_spread_bps=2.0, impact_coef=0.1, capital=1e7)
    res = backtest(weights, returns, adv, sigma, costs)
    traded = 0.5 * 1e7  # $5m of A
    commission = traded * 1e-4  # $500
    spread = traded * 2e-4  # $1,000
    impact = traded * 0.1 * 0.02 * math.sqrt(traded / 1e8)  # $2,236.07
    assert commission + spread + impact == pytest.approx(3736.068, abs=1e-3)
    row = res.cost_breakdown.iloc[0]
    assert row["commission"] * 1e7 == pytest.approx(commission)
    assert row["spread"] * 1e7 == pytest.approx(spread)
    assert row["impact"] * 1e7 == pytest.approx(impact)
    assert res.costs.iloc[0] == pytest.approx((commission + spread + impact) / 1e7)
    assert res.equity.iloc[-1] == pytest.approx(1.0 - 3736.068 / 1e7)


def test_per_symbol_half_spread() -> None:
    returns = _frame([[0.0, 0.0], [0.0, 0.0]])
    weights = _frame([[0.2, -0.3]])
    costs = CostModel(commission_bps=0.0, impact_coef=0.0,
                      half_spread_bps=pd.Series({"A": 1.0, "B": 10.0}))
    res = backtest(weights, returns, _flat(returns, 1e8), _flat(returns, 0.02), costs)
    assert res.costs.iloc[0] == pytest.approx(0.2 * 1e-4 + 0.3 * 10e-4)
    missing = CostModel(half_spread_bps={"A": 1.0})
    with pytest.raises(ValueError, match="no value for symbol 'B'"):
        backtest(weights, returns, _flat(returns, 1e8), _flat(returns, 0.02), missing)
    with pytest.raises(ValueError, match="half_spread_bps"):
        CostModel(half_spread_bps=-1.0)


def test_misaligned_inputs_name_what_is_missing() -> None:
    returns = _frame([[0.0, 0.0]] * 4)
    weights = _frame([[0.1, 0.1]] * 3)
    adv, sigma = _flat(returns, 1e8), _flat(returns, 0.02)
    with pytest.raises(ValueError, match="returns has no row for session 2024-01-03"):
        backtest(weights, returns.drop(returns.index[2]), adv, sigma)
    with pytest.raises(ValueError, match="adv has no column for symbol 'B'"):
        backtest(weights, returns, adv[["A"]], sigma)
    with pytest.raises(ValueError, match="sigma has no row for session 2024-01-02"):
        backtest(weights, returns, adv, sigma.drop(sigma.index[1]))
    with pytest.raises(ValueError, match="weights skip session 2024-01-02"):
        backtest(weights.drop(weights.index[1]), returns, adv, sigma)
    nan_adv = adv.copy()
    nan_adv.iloc[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"adv is missing .* session 2024-01-01.*symbol 'B'"):
        backtest(weights, returns, nan_adv, sigma)
    bad_w = weights.copy()
    bad_w.iloc[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"not finite at session 2024-01-02.*symbol 'A'"):
        backtest(bad_w, returns, adv, sigma)
    bad_r = returns.copy()
    bad_r.iloc[1, 0] = np.nan
    with pytest.raises(ValueError, match="returns are missing at session 2024-01-02"):
        backtest(weights, bad_r, adv, sigma)


# --- performance --------------------------------------------------------------------------------


def test_performance_by_hand() -> None:
    # Equity 1 -> 1.1 -> 0.99 -> 1.2.
    net = pd.Series([0.1, -0.1, 1.2 / 0.99 - 1.0])
    perf = performance(net, periods_per_year=3)  # three sessions = one year
    assert perf.max_drawdown == pytest.approx(0.10)
    assert perf.annual_return == pytest.approx(0.2)
    assert perf.calmar == pytest.approx(2.0)
    assert perf.hit_rate == pytest.approx(2 / 3)
    assert perf.profit_factor == pytest.approx((0.1 + 1.2 / 0.99 - 1.0) / 0.1)
    assert perf.n_sessions == 3
    assert perf.sharpe == pytest.approx(net.mean() / net.std() * math.sqrt(3))
    downside = math.sqrt(0.01 / 3)
    assert perf.sortino == pytest.approx(net.mean() / downside * math.sqrt(3))
    assert perf.turnover is None
    # A zero return does not count in the hit rate.
    assert performance(pd.Series([0.1, 0.0, -0.05, 0.0])).hit_rate == pytest.approx(0.5)
    turnover = pd.Series([0.5, 0.1, 0.0])
    assert performance(net, turnover, 3).turnover == pytest.approx(0.6)


def test_performance_edge_cases_are_explicit() -> None:
    flat = performance(pd.Series([0.0] * 5))
    assert flat.sharpe is None and flat.sortino is None and flat.calmar is None
    assert flat.hit_rate is None and flat.profit_factor is None
    assert flat.skew is None and flat.kurtosis is None
    assert flat.max_drawdown == 0.0 and flat.annual_vol == 0.0
    steady = performance(pd.Series([0.001] * 5))  # constant gain: zero volatility
    assert steady.sharpe == math.inf and steady.sortino == math.inf
    assert steady.calmar == math.inf and steady.profit_factor == math.inf
    bleed = performance(pd.Series([-0.001] * 5))
    assert bleed.sharpe == -math.inf and bleed.profit_factor == 0.0
    no_loss = performance(pd.Series([0.01, 0.0, 0.02]))
    assert no_loss.profit_factor == math.inf and no_loss.sortino == math.inf
    assert no_loss.sharpe is not None and math.isfinite(no_loss.sharpe)
    with pytest.raises(ValueError, match="at least two"):
        performance(pd.Series([0.01]))
    with pytest.raises(ValueError, match="not finite"):
        performance(pd.Series([0.01, np.nan]))


# --- probabilistic and deflated Sharpe ratio ----------------------------------------------------


def test_dsr_reproduces_the_published_example() -> None:
    """Bailey & López de Prado (2014), "The Deflated Sharpe Ratio: Correcting for Selection Bias,
    Backtest Overfitting and Non-Normality", J. Portfolio Management 40(5), numerical example
    (pp. 9-10 of the working paper): annualised SR 2.5 over five years of daily data (T = 1250,
    250 sessions a year), N = 100 trials with V[SR_n] = 1/2 annualised, skewness -3, kurtosis 10.
    The paper reports SR_0 ≈ 0.1132 per period and DSR ≈ 0.9004 (not significant at 95%), 0.9505
    had only 46 trials been run, and survival up to N = 88 with normal returns.
    """
    sr = 2.5 / math.sqrt(250)
    res = deflated_sharpe_ratio(sr, n_trials=100, sr_variance=0.5 / 250, n_obs=1250,
                                skew=-3.0, kurtosis=10.0)
    assert res.expected_max_sr == pytest.approx(0.1132, abs=5e-5)
    assert res.dsr == pytest.approx(0.9004, abs=5e-5)
    assert res.dsr < 0.95 < res.psr
    dsr46 = deflated_sharpe_ratio(sr, 46, 0.5 / 250, 1250, -3.0, 10.0).dsr
    assert dsr46 == pytest.approx(0.9505, abs=5e-5)
    normal88 = deflated_sharpe_ratio(sr, 88, 0.5 / 250, 1250, 0.0, 3.0).dsr
    assert normal88 == pytest.approx(0.9505, abs=5e-5)


def test_dsr_decreases_with_trials_and_equals_psr_for_one() -> None:
    sr, var, n, skew, kurt = 0.08, 0.001, 750, -0.5, 6.0
    values = [deflated_sharpe_ratio(sr, k, var, n, skew, kurt).dsr for k in (1, 2, 10, 100, 1000)]
    assert all(a > b for a, b in pairwise(values))
    one = deflated_sharpe_ratio(sr, 1, var, n, skew, kurt)
    assert one.expected_max_sr == 0.0
    assert one.dsr == pytest.approx(probabilistic_sharpe_ratio(sr, 0.0, n, skew, kurt))
    assert one.dsr == pytest.approx(one.psr)
    assert expected_max_sharpe(10, 0.0) == 0.0


def test_psr_properties() -> None:
    assert probabilistic_sharpe_ratio(0.1, 0.1, 500, -1.0, 5.0) == pytest.approx(0.5)
    # Negative skew and fat tails widen the Sharpe ratio's error, lowering the PSR.
    normal = probabilistic_sharpe_ratio(0.1, 0.0, 250, 0.0, 3.0)
    assert probabilistic_sharpe_ratio(0.1, 0.0, 250, -2.0, 9.0) < normal
    with pytest.raises(ValueError, match="not positive"):
        probabilistic_sharpe_ratio(1.0, 0.0, 250, 5.0, 1.0)
    with pytest.raises(ValueError, match="n_obs"):
        probabilistic_sharpe_ratio(0.1, 0.0, 1, 0.0, 3.0)


# --- SPA and MCS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forecasts() -> dict[str, np.ndarray]:
    """A persistent AR(1) target and forecasts of it; squared-error losses."""
    rng = np.random.default_rng(42)
    n = 500
    y = np.zeros(n)
    for t in range(1, n):
        y[t] = 0.8 * y[t - 1] + rng.standard_normal()
    ar = np.r_[0.0, 0.8 * y[:-1]]  # the conditional mean: the best forecast
    noisy = ar + rng.normal(0.0, 0.7, n)
    constant = np.full(n, y.mean())  # no skill
    return {
        "y": y,
        "good": pointwise_loss(y, ar, "mse"),
        "noisy": pointwise_loss(y, noisy, "mse"),
        "constant": pointwise_loss(y, constant, "mse"),
    }


def test_spa_finds_a_clearly_better_model(forecasts: dict[str, np.ndarray]) -> None:
    res = spa_test(forecasts["noisy"], pd.DataFrame({"good": forecasts["good"]}), reps=REPS)
    assert res.pvalue_consistent < 0.05
    assert res.better_models == ("good",)
    assert res.mean_loss_diff["good"] > 0.0
    assert res.pvalue_lower <= res.pvalue_consistent <= res.pvalue_upper
    again = spa_test(forecasts["noisy"], pd.DataFrame({"good": forecasts["good"]}), reps=REPS)
    assert again.pvalue_consistent == res.pvalue_consistent  # seeded


def test_spa_identical_or_worse_models_are_not_significant(
    forecasts: dict[str, np.ndarray],
) -> None:
    good = forecasts["good"]
    same = spa_test(good, pd.DataFrame({"copy": good.copy()}), reps=REPS)
    assert same.identical == ("copy",)
    assert same.pvalue_consistent == same.pvalue_upper == 1.0
    # A constant forecast challenging the conditional mean: not significantly better.
    bad = spa_test(good, pd.DataFrame({"constant": forecasts["constant"]}), reps=REPS)
    assert bad.pvalue_consistent > 0.05
    assert bad.better_models == ()


def test_spa_is_studentized() -> None:
    # Model "steady" is slightly but consistently better; "wild" is no better on average and very
    # noisy. Hansen's studentized statistic finds "steady"; comparing raw means would let the
    # noise of "wild" dominate the maximum.
    rng = np.random.default_rng(3)
    bench = rng.chisquare(1, 500)
    models = pd.DataFrame({
        "steady": bench - 0.05 + rng.normal(0.0, 0.05, 500),
        "wild": bench + rng.normal(0.0, 5.0, 500),
    })
    res = spa_test(bench, models, reps=REPS)
    assert res.pvalue_consistent < 0.05
    assert res.better_models == ("steady",)
    with pytest.raises(ValueError, match="constant"):
        spa_test(bench, pd.DataFrame({"shifted": bench - 0.1}), reps=REPS)


def test_mcs_excludes_a_clearly_worse_model(forecasts: dict[str, np.ndarray]) -> None:
    losses = pd.DataFrame({k: forecasts[k] for k in ("good", "noisy", "constant")})
    losses["good_copy"] = forecasts["good"]
    res = model_confidence_set(losses, size=0.10, reps=REPS)
    assert "good" in res.included and "good_copy" in res.included
    assert "constant" in res.excluded
    assert res.pvalues["good"] == res.pvalues["good_copy"]
    assert list(res.pvalues.index) == list(losses.columns)
    assert set(res.included) | set(res.excluded) == set(losses.columns)


def test_beats_significantly(forecasts: dict[str, np.ndarray]) -> None:
    win = beats_significantly(
        forecasts["good"],
        {"garch": forecasts["noisy"], "ewma": forecasts["constant"]},
        alpha=0.05,
        reps=REPS,
    )
    assert win.verdict
    assert win.pvalue < 0.05 and win.pvalue == max(win.pvalues.values())
    assert win.reasons[0].startswith("SPA vs garch: p")
    assert "< 0.05" in win.reasons[0] and "< 0.05" in win.reasons[1]
    assert win.in_mcs and win.mcs.included == ("challenger",)
    assert win.reasons[-1].startswith("MCS (90%): challenger included")

    lose = beats_significantly(
        forecasts["constant"], {"garch": forecasts["good"]}, alpha=0.05, reps=REPS
    )
    assert not lose.verdict and lose.pvalue >= 0.05
    assert ">= 0.05" in lose.reasons[0]
    assert not lose.in_mcs

    # Beating one competitor is not enough.
    split = beats_significantly(
        forecasts["noisy"], {"weak": forecasts["constant"], "strong": forecasts["good"]},
        reps=REPS,
    )
    assert split.pvalues["weak"] < 0.05 <= split.pvalues["strong"]
    assert not split.verdict
    with pytest.raises(ValueError, match="no competitor"):
        beats_significantly(forecasts["good"], {}, reps=REPS)
