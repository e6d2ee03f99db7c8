"""Walk-forward splits, Diebold-Mariano, direction accuracy, leakage alarm and metric tables."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from models.baselines import (
    HARSpec,
    fit_har,
    forward_realised_vol,
    historical_vol,
    mae,
    qlike,
    rmse,
)
from models.evaluation import (
    DirectionResult,
    LeakageError,
    check_leakage,
    diebold_mariano,
    direction_accuracy,
    dm_table,
    pointwise_loss,
    volatility_metrics,
    walk_forward_splits,
)

# --- walk-forward splits ------------------------------------------------------------------------


def test_walk_forward_splits_by_hand() -> None:
    sessions = pd.bdate_range("2020-01-01", periods=30)
    splits = walk_forward_splits(sessions, initial=10, step=5, horizon=2, embargo=3)
    # Last row with a known label: 27. Test blocks start at 10 + 3 = 13, then 18, 23.
    assert [(s.test_rows.start, s.test_rows.stop) for s in splits] == [(13, 18), (18, 23), (23, 28)]
    assert [s.train_rows for s in splits] == [range(0, 10), range(0, 15), range(0, 20)]
    first = splits[0]
    assert first.train == (sessions[0], sessions[9])
    assert first.test == (sessions[13], sessions[17])
    assert first.label_end == sessions[11]


@pytest.mark.parametrize(
    ("n", "initial", "step", "horizon", "embargo"),
    [(300, 50, 20, 5, 5), (301, 40, 33, 1, 1), (250, 60, 7, 10, 12)],
)
def test_walk_forward_splits_purge_and_embargo(
    n: int, initial: int, step: int, horizon: int, embargo: int
) -> None:
    sessions = pd.RangeIndex(n)
    splits = walk_forward_splits(
        sessions, initial=initial, step=step, horizon=horizon, embargo=embargo
    )
    assert splits[0].train_rows == range(initial)
    for prev, split in pairwise(splits):
        assert split.test_rows.start == prev.test_rows.stop  # contiguous, no overlap
        assert split.train_rows.stop == prev.train_rows.stop + step  # expanding
    for split in splits:
        last_train, first_test = split.train_rows[-1], split.test_rows[0]
        assert split.train_rows.start == 0
        assert last_train + horizon < first_test  # purge: no training label reaches the test
        assert first_test - last_train - 1 == embargo  # embargo
        assert split.label_end == last_train + horizon
        assert split.test_rows[-1] + horizon <= n - 1  # every test label is known
    # Every labelled row after the first training window and embargo is tested exactly once.
    tested = np.concatenate([np.asarray(s.test_rows) for s in splits])
    np.testing.assert_array_equal(tested, np.arange(initial + embargo, n - horizon))


def test_walk_forward_splits_train_fits_on_exactly_the_training_rows() -> None:
    r = pd.Series(
        np.random.default_rng(0).normal(0, 0.01, 400),
        index=pd.bdate_range("2015-01-01", periods=400),
    )
    spec = HARSpec(horizon=5)
    for split in walk_forward_splits(r.index, initial=100, step=100, horizon=5, embargo=5):
        fit = fit_har(r, spec, train_end=split.label_end)
        assert fit.nobs == len(split.train_rows) - 21  # first 21 rows lack the 22-session lag


def test_walk_forward_splits_rejects_short_embargo_and_short_history() -> None:
    with pytest.raises(ValueError, match="embargo"):
        walk_forward_splits(range(100), initial=10, step=5, horizon=5, embargo=4)
    with pytest.raises(ValueError, match="too few"):
        walk_forward_splits(range(20), initial=10, step=5, horizon=5, embargo=5)
    with pytest.raises(ValueError, match="increasing"):
        walk_forward_splits([3, 2, 1] * 20, initial=10, step=5, horizon=1, embargo=1)


# --- Diebold-Mariano ----------------------------------------------------------------------------


def _newey_west_dm(d: np.ndarray, h: int) -> float:
    """Reference: Bartlett-weighted autocovariances by hand, then the HLN correction."""
    n = d.shape[0]
    e = d - d.mean()
    gamma = [np.dot(e[k:], e[: n - k]) / n for k in range(h)]
    lrv = gamma[0] + 2 * sum((1 - k / h) * gamma[k] for k in range(1, h))
    dm = d.mean() / np.sqrt(lrv / n)
    return float(dm * np.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n))


def test_dm_with_horizon_one_is_the_one_sample_t_test() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.gamma(2.0, 1.0, 80), rng.gamma(2.0, 1.1, 80)
    ref = stats.ttest_1samp(a - b, 0.0)
    res = diebold_mariano(a, b, 1)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    less = diebold_mariano(a, b, 1, alternative="less")
    assert less.pvalue == pytest.approx(stats.ttest_1samp(a - b, 0.0, alternative="less").pvalue)
    assert res.n == 80 and res.mean_diff == pytest.approx(np.mean(a - b))


@pytest.mark.parametrize("h", [2, 5, 22])
def test_dm_matches_a_hand_newey_west_reference(h: int) -> None:
    rng = np.random.default_rng(h)
    # MA(h-1) loss differential, as overlapping h-step errors give.
    d = np.convolve(rng.normal(0.1, 1.0, 400 + h - 1), np.ones(h) / h, mode="valid")
    res = diebold_mariano(d, np.zeros_like(d), h)
    expected = _newey_west_dm(d, h)
    assert res.statistic == pytest.approx(expected, rel=1e-10)
    assert res.pvalue == pytest.approx(2 * stats.t.sf(abs(expected), df=len(d) - 1), rel=1e-10)


def test_dm_directions_and_a_clear_winner() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(0, 1, 300)
    good = np.abs(y - (y + rng.normal(0, 0.2, 300)))
    bad = np.abs(y - (y + rng.normal(0, 1.0, 300)))
    res = diebold_mariano(good, bad, 1, alternative="less")
    assert res.statistic < -5 and res.pvalue < 1e-6
    greater = diebold_mariano(good, bad, 1, alternative="greater")
    assert greater.pvalue == pytest.approx(1 - res.pvalue)
    swapped = diebold_mariano(bad, good, 1)
    assert swapped.statistic == pytest.approx(-res.statistic)


def test_dm_identical_and_degenerate_losses() -> None:
    loss = np.random.default_rng(0).gamma(2.0, 1.0, 50)
    same = diebold_mariano(loss, loss.copy(), 5, alternative="less")
    assert (same.statistic, same.pvalue, same.mean_diff) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="constant"):
        diebold_mariano(loss + 1.0, loss, 1)
    with pytest.raises(ValueError, match="finite"):
        diebold_mariano(np.r_[loss[:-1], np.nan], loss, 1)
    with pytest.raises(ValueError, match="length"):
        diebold_mariano(loss, loss[:-1], 1)
    with pytest.raises(ValueError, match="at least"):
        diebold_mariano(loss[:8], loss[:8] + np.arange(8.0), 5)
    with pytest.raises(ValueError, match="alternative"):
        diebold_mariano(loss, loss, 1, alternative="smaller")  # type: ignore[arg-type]


# --- direction accuracy and the leakage alarm ---------------------------------------------------


def test_direction_accuracy_by_hand() -> None:
    y = np.array([1.0, -1.0, 2.0, 0.0, np.nan, -3.0])
    p = np.array([0.5, 0.2, 1.0, 1.0, 1.0, -1.0])
    res = direction_accuracy(y, p)
    # Rows 3 (no direction) and 4 (NaN) are left out; hits on rows 0, 2 and 5.
    assert (res.n, res.hits, res.accuracy) == (4, 3, 0.75)
    assert res.pvalue == pytest.approx(5 / 16)  # P(X >= 3), X ~ Binomial(4, 1/2)
    with pytest.raises(ValueError, match="length"):
        direction_accuracy(y, p[:-1])
    with pytest.raises(ValueError, match="no pair"):
        direction_accuracy(np.zeros(3), np.ones(3))


def test_check_leakage_threshold_and_message() -> None:
    at = DirectionResult(accuracy=0.60, n=100, hits=60, pvalue=0.03)
    assert check_leakage(at) is at
    above = DirectionResult(accuracy=0.61, n=100, hits=61, pvalue=0.02)
    with pytest.raises(LeakageError, match=r"61\.0%.*61/100.*60%"):
        check_leakage(above)
    assert check_leakage(above, threshold=0.65) is above


def test_leakage_alarm_catches_a_look_ahead_forecast() -> None:
    rng = np.random.default_rng(8)
    r = rng.normal(0, 0.01, 1000)
    honest = np.r_[np.nan, r[:-1]]  # yesterday's return: no skill on a random walk
    check_leakage(direction_accuracy(r, honest))
    leaky = r + rng.normal(0, 0.01, 1000)  # sees today's return through noise
    with pytest.raises(LeakageError, match="leakage"):
        check_leakage(direction_accuracy(r, leaky))


# --- metric tables ------------------------------------------------------------------------------


def test_volatility_metrics_score_every_model_on_the_same_rows() -> None:
    y = np.array([0.1, 0.2, 0.3, np.nan, 0.4])
    forecasts = {
        "a": np.array([0.2, 0.2, np.nan, 0.3, 0.2]),
        "b": np.array([0.1, 0.3, 0.3, 0.3, 0.5]),
    }
    table = volatility_metrics(y, forecasts)
    assert list(table.index) == ["a", "b"] and list(table.columns) == ["mae", "rmse", "qlike", "n"]
    rows = [0, 1, 4]
    for name, f in forecasts.items():
        assert table.loc[name, "mae"] == pytest.approx(mae(y[rows], f[rows]))
        assert table.loc[name, "rmse"] == pytest.approx(rmse(y[rows], f[rows]))
        assert table.loc[name, "qlike"] == pytest.approx(qlike(y[rows], f[rows]))
    assert (table["n"] == 3).all()
    with pytest.raises(ValueError, match="rows"):
        volatility_metrics(y, {"a": np.ones(4)})


def test_pointwise_loss_means_are_the_metrics() -> None:
    rng = np.random.default_rng(2)
    y, f = rng.uniform(0.05, 0.5, 50), rng.uniform(0.05, 0.5, 50)
    assert pointwise_loss(y, f, "mae").mean() == pytest.approx(mae(y, f))
    assert np.sqrt(pointwise_loss(y, f, "mse").mean()) == pytest.approx(rmse(y, f))
    assert pointwise_loss(y, f, "qlike").mean() == pytest.approx(qlike(y, f))
    with pytest.raises(ValueError, match="loss"):
        pointwise_loss(y, f, "mape")  # type: ignore[arg-type]


def test_dm_table_tests_the_reference_against_each_model() -> None:
    rng = np.random.default_rng(4)
    y = rng.uniform(0.1, 0.4, 400)
    y[3] = np.nan
    forecasts = {
        "good": y + rng.normal(0, 0.01, 400),
        "bad": y + rng.normal(0, 0.1, 400),
        "same": y + rng.normal(0, 0.01, 400),
    }
    table = dm_table(y, forecasts, reference="good", horizon=5, loss="mse", alternative="less")
    assert list(table.index) == ["bad", "same"]
    assert table.loc["bad", "pvalue"] < 1e-6 and table.loc["bad", "mean_diff"] < 0
    assert table.loc["same", "pvalue"] > 0.01
    assert (table["n"] == 399).all()
    ok = np.isfinite(y)
    direct = diebold_mariano(
        pointwise_loss(y[ok], forecasts["good"][ok], "mse"),
        pointwise_loss(y[ok], forecasts["bad"][ok], "mse"),
        5,
        alternative="less",
    )
    assert table.loc["bad", "statistic"] == pytest.approx(direct.statistic)
    with pytest.raises(ValueError, match="reference"):
        dm_table(y, forecasts, reference="nope", horizon=5)


# --- real data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spx_returns() -> pd.Series:
    from pipelines import calendar
    from pipelines.sources import ReplaySource

    bars = ReplaySource(("SPX",)).bars(calendar.sessions_between("2009-01-02", "2016-12-30"))
    close = bars.set_index("session")["adj_close"]
    return np.log(close).diff().dropna().rename("SPX")


def test_har_beats_historical_vol_out_of_sample_on_spx(spx_returns: pd.Series) -> None:
    """Walk-forward HAR-RV (refit each year) against 22-session historical vol on real SPX."""
    r, h = spx_returns, 5
    target = forward_realised_vol(r, h).to_numpy()
    har = np.full(len(r), np.nan)
    splits = walk_forward_splits(r.index, initial=500, step=250, horizon=h, embargo=h)
    for split in splits:
        fit = fit_har(r, HARSpec(horizon=h), train_end=split.label_end)
        rows = np.asarray(split.test_rows)
        har[rows] = fit.predict(r).to_numpy()[rows]
    tested = np.concatenate([np.asarray(s.test_rows) for s in splits])
    y = target[tested]
    forecasts = {"har": har[tested], "hist22": historical_vol(r, h).to_numpy()[tested]}
    table = volatility_metrics(y, forecasts)
    assert table.loc["har", "n"] > 1000
    assert table.loc["har", "mae"] < table.loc["hist22", "mae"]
    dm = dm_table(y, forecasts, reference="har", horizon=h, loss="mae", alternative="less")
    assert dm.loc["hist22", "mean_diff"] < 0
