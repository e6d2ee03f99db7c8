"""Position sizing: hand examples, closed forms and the risk-parity property."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from models.sizing import (
    SizingMethod,
    SizingSpec,
    fractional_kelly,
    hrp_weights,
    risk_parity_weights,
    size,
    vol_target_weights,
)


def simulated_returns(n_rows: int = 500, seed: int = 3) -> pd.DataFrame:
    """Four symbols with different vols; A and B correlated, C and D nearly independent."""
    rng = np.random.default_rng(seed)
    vols = np.array([0.01, 0.015, 0.02, 0.03])
    corr = np.array([
        [1.0, 0.6, 0.2, 0.1],
        [0.6, 1.0, 0.2, 0.1],
        [0.2, 0.2, 1.0, 0.0],
        [0.1, 0.1, 0.0, 1.0],
    ])
    cov = corr * np.outer(vols, vols)
    x = rng.multivariate_normal(np.zeros(4), cov, size=n_rows)
    return pd.DataFrame(x, columns=["AAA", "BBB", "CCC", "DDD"])


# --------------------------------------------------------------------------------- vol target
def test_vol_target_hand_example() -> None:
    signal = pd.Series({"AAA": 1.0, "BBB": -0.5, "CCC": 0.0})
    vols = pd.Series({"AAA": 0.20, "BBB": 0.40, "CCC": np.nan})  # CCC's forecast is not needed
    w = vol_target_weights(signal, vols, target_vol=0.10)
    # two active symbols share the 10% budget: 5% each of stand-alone vol
    assert w["AAA"] == pytest.approx(1.0 * 0.05 / 0.20)  # 0.25
    assert w["BBB"] == pytest.approx(-0.5 * 0.05 / 0.40)  # -0.0625
    assert w["CCC"] == 0.0
    assert list(w.index) == ["AAA", "BBB", "CCC"]
    capped = vol_target_weights(signal, vols, target_vol=0.10, max_weight=0.2)
    assert capped["AAA"] == pytest.approx(0.2)
    assert capped["BBB"] == pytest.approx(-0.0625)


def test_vol_target_no_active_signal_is_all_zero() -> None:
    w = vol_target_weights(pd.Series({"AAA": 0.0}), pd.Series(dtype=float), 0.1)
    assert w.tolist() == [0.0]


@pytest.mark.parametrize(
    ("signal", "vols", "match"),
    [
        ({"AAA": 1.0, "BBB": 0.5}, {"AAA": 0.2, "BBB": 0.0}, "BBB"),
        ({"AAA": 1.0, "BBB": 0.5}, {"AAA": np.inf, "BBB": 0.2}, "AAA"),
        ({"AAA": 1.0, "BBB": 0.5}, {"AAA": 0.2}, "no forecast for: BBB"),
        ({"AAA": 1.5, "BBB": 0.5}, {"AAA": 0.2, "BBB": 0.2}, r"\[-1, 1\].*AAA"),
        ({"AAA": np.nan, "BBB": 0.5}, {"AAA": 0.2, "BBB": 0.2}, "not finite for: AAA"),
    ],
)
def test_vol_target_bad_inputs_name_the_symbol(
    signal: dict[str, float], vols: dict[str, float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        vol_target_weights(pd.Series(signal), pd.Series(vols, dtype=float), 0.1)


def test_vol_target_rejects_bad_target() -> None:
    with pytest.raises(ValueError, match="target_vol"):
        vol_target_weights(pd.Series({"AAA": 1.0}), pd.Series({"AAA": 0.2}), 0.0)


# --------------------------------------------------------------------------------- Kelly
def test_kelly_matches_the_two_asset_closed_form() -> None:
    mu1, mu2, s1, s2, rho, f = 0.08, 0.03, 0.20, 0.10, 0.4, 0.25
    cov = pd.DataFrame(
        [[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]],
        index=["BBB", "AAA"], columns=["BBB", "AAA"],
    )
    mu = pd.Series({"AAA": mu2, "BBB": mu1})  # cov is reordered like mu
    w = fractional_kelly(mu, cov, fraction=f)
    det = s1 * s1 * s2 * s2 * (1.0 - rho * rho)
    w1 = f * (s2 * s2 * mu1 - rho * s1 * s2 * mu2) / det
    w2 = f * (s1 * s1 * mu2 - rho * s1 * s2 * mu1) / det
    assert list(w.index) == ["AAA", "BBB"]
    assert w["BBB"] == pytest.approx(w1, rel=1e-12)
    assert w["AAA"] == pytest.approx(w2, rel=1e-12)


def test_kelly_rejects_a_singular_covariance() -> None:
    cov = pd.DataFrame([[0.04, 0.04], [0.04, 0.04]], index=["AAA", "BBB"],
                       columns=["AAA", "BBB"])
    with pytest.raises(ValueError, match="not positive definite"):
        fractional_kelly(pd.Series({"AAA": 0.1, "BBB": 0.1}), cov)


@pytest.mark.parametrize(
    ("mu", "cov", "fraction", "match"),
    [
        ({"AAA": 0.1, "ZZZ": 0.1}, [[0.04, 0.0], [0.0, 0.04]], 0.25, "no row/column for: ZZZ"),
        ({"AAA": np.nan, "BBB": 0.1}, [[0.04, 0.0], [0.0, 0.04]], 0.25, "not finite for: AAA"),
        ({"AAA": 0.1, "BBB": 0.1}, [[0.04, 0.01], [0.0, 0.04]], 0.25, "not symmetric"),
        ({"AAA": 0.1, "BBB": 0.1}, [[0.04, 0.0], [0.0, np.nan]], 0.25, "cov is not finite.*BBB"),
        ({"AAA": 0.1, "BBB": 0.1}, [[0.04, 0.0], [0.0, 0.04]], 1.5, "fraction"),
    ],
)
def test_kelly_bad_inputs(
    mu: dict[str, float], cov: list[list[float]], fraction: float, match: str
) -> None:
    frame = pd.DataFrame(cov, index=["AAA", "BBB"], columns=["AAA", "BBB"])
    with pytest.raises(ValueError, match=match):
        fractional_kelly(pd.Series(mu), frame, fraction)


# --------------------------------------------------------------------------------- risk parity
def test_risk_parity_equalises_risk_contributions() -> None:
    returns = simulated_returns()
    w = risk_parity_weights(returns)
    assert list(w.index) == list(returns.columns)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert (w >= 0.0).all()
    cov = np.cov(returns.to_numpy(), rowvar=False)
    x = w.to_numpy()
    contributions = x * (cov @ x) / (x @ cov @ x)
    np.testing.assert_allclose(contributions, 0.25, rtol=2e-3)
    # the least volatile symbol gets the most weight
    assert w.idxmax() == "AAA"


def test_hrp_is_long_only_and_fully_invested() -> None:
    returns = simulated_returns(seed=5)
    w = hrp_weights(returns)
    assert list(w.index) == list(returns.columns)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert (w > 0.0).all()
    assert w["AAA"] > w["DDD"]  # lower vol, more weight


def test_risk_models_with_one_symbol() -> None:
    returns = simulated_returns()[["CCC"]]
    assert risk_parity_weights(returns).tolist() == [1.0]
    assert hrp_weights(returns).tolist() == [1.0]


@pytest.mark.parametrize("fn", [risk_parity_weights, hrp_weights])
def test_risk_models_name_bad_columns(fn: Callable[[pd.DataFrame], pd.Series]) -> None:
    returns = simulated_returns(n_rows=50)
    flat = returns.assign(CCC=0.001)
    with pytest.raises(ValueError, match="zero variance for: CCC"):
        fn(flat)
    spiky = returns.copy()
    spiky.loc[3, "BBB"] = np.inf
    with pytest.raises(ValueError, match="infinite values for: BBB"):
        fn(spiky)
    with pytest.raises(ValueError, match="at least 2 rows"):
        fn(returns.iloc[:1])


# --------------------------------------------------------------------------------- dispatch
def test_size_dispatches_vol_target_with_cap() -> None:
    signal = pd.Series({"AAA": 1.0, "BBB": -1.0})
    vols = pd.Series({"AAA": 0.1, "BBB": 0.5})
    w = size(SizingSpec("vol_target", target_vol=0.2, max_weight=0.5), signal, vols)
    assert w.to_dict() == pytest.approx({"AAA": 0.5, "BBB": -0.2})
    assert w.name == "weight"


def test_size_kelly_reads_the_signal_as_a_sharpe_ratio() -> None:
    signal = pd.Series({"AAA": 1.0, "BBB": -0.5, "CCC": 0.0})
    vols = pd.Series({"AAA": 0.2, "BBB": 0.3})
    # uncorrelated returns: w_i = fraction * signal_i * sharpe / vol_i (up to sampling noise)
    rng = np.random.default_rng(0)
    returns = pd.DataFrame(rng.normal(0.0, 0.01, (5000, 2)), columns=["AAA", "BBB"])
    spec = SizingSpec("kelly", kelly_fraction=0.5, kelly_sharpe=0.4)
    w = size(spec, signal, vols, returns)
    assert w["AAA"] == pytest.approx(0.5 * 1.0 * 0.4 / 0.2, rel=0.05)
    assert w["BBB"] == pytest.approx(0.5 * -0.5 * 0.4 / 0.3, rel=0.05)
    assert w["CCC"] == 0.0
    with pytest.raises(ValueError, match="no column for: BBB"):
        size(spec, signal, vols, returns[["AAA"]])


@pytest.mark.parametrize("method", ["risk_parity", "hrp"])
def test_size_risk_models_allocate_over_positive_signals(method: SizingMethod) -> None:
    returns = simulated_returns()
    signal = pd.Series({"AAA": 0.3, "BBB": -1.0, "CCC": 1.0, "DDD": 0.0})
    w = size(SizingSpec(method), signal, pd.Series(dtype=float), returns)
    assert w[["BBB", "DDD"]].tolist() == [0.0, 0.0]
    assert w.sum() == pytest.approx(1.0)
    assert (w[["AAA", "CCC"]] > 0.0).all()
    none = size(SizingSpec(method), -signal.abs(), pd.Series(dtype=float), returns)
    assert (none == 0.0).all()


def test_sizing_spec_validation_and_mapping() -> None:
    spec = SizingSpec.from_mapping({"method": "kelly", "kelly_fraction": 0.5, "max_weight": 1})
    assert spec == SizingSpec("kelly", kelly_fraction=0.5, max_weight=1.0)
    with pytest.raises(ValueError, match=r"unknown sizing setting.*bogus, colour"):
        SizingSpec.from_mapping({"colour": 1, "bogus": 2})
    with pytest.raises(ValueError, match="target_vol must be a number"):
        SizingSpec.from_mapping({"target_vol": True})
    with pytest.raises(ValueError, match="method must be one of"):
        SizingSpec.from_mapping({"method": "martingale"})
    with pytest.raises(ValueError, match="kelly_fraction"):
        SizingSpec(kelly_fraction=2.0)
    with pytest.raises(ValueError, match="max_weight"):
        SizingSpec(max_weight=-0.1)
    assert math.isclose(SizingSpec().target_vol, 0.10)
