"""Synthetic universes (pipelines.synthetic): shape, OHLCV consistency, listings, the GARCH-t
and correlation structure they claim (checked with arch), and the bar quality suite."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from arch import arch_model

from pipelines import calendar
from pipelines.quality import validate_bars
from pipelines.schema import BAR_COLUMNS
from pipelines.synthetic import UniverseSpec, listings, make_universe


@pytest.fixture(scope="module")
def universe() -> tuple[UniverseSpec, pd.DataFrame, pd.DataFrame]:
    spec = UniverseSpec(symbols=40, years=4, late_listing=0.25, early_delisting=0.15, seed=3)
    bars, params = make_universe(spec)
    return spec, bars, params


def test_canonical_bars_sorted_unique_on_nyse_sessions(
    universe: tuple[UniverseSpec, pd.DataFrame, pd.DataFrame],
) -> None:
    spec, bars, _ = universe
    assert tuple(bars.columns) == BAR_COLUMNS
    assert str(bars["session"].dtype) == "datetime64[ns]"
    assert all(str(bars[c].dtype) == "float64" for c in BAR_COLUMNS[2:])
    assert not bars.duplicated(["symbol", "session"]).any()
    assert bars.equals(bars.sort_values(["session", "symbol"], kind="stable")
                       .reset_index(drop=True))
    sessions = set(pd.to_datetime(spec.sessions()))
    assert set(bars["session"]) == sessions
    assert min(sessions).date() > date(2014, 12, 31) and max(sessions).date() == date(2018, 12, 31)
    assert all(calendar.is_session(d.date()) for d in sorted(sessions)[:5])
    assert sorted(bars["symbol"].unique()) == sorted(spec.universe)
    assert spec.universe == (*spec.names, "SPX")


def test_ohlc_consistent_positive_and_volume_positive(
    universe: tuple[UniverseSpec, pd.DataFrame, pd.DataFrame],
) -> None:
    _, bars, _ = universe
    assert (bars[["open", "high", "low", "close", "volume"]] > 0).all().all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars["adj_close"] == bars["close"]).all()
    # prices on the tick: cents from a dollar
    dollar = bars["close"] >= 1
    assert np.allclose(bars.loc[dollar, "close"] * 100, np.round(bars.loc[dollar, "close"] * 100))
    # bars have a range: high > low on almost every day
    assert (bars["high"] > bars["low"]).mean() > 0.99


def test_listing_gaps_match_the_listings(
    universe: tuple[UniverseSpec, pd.DataFrame, pd.DataFrame],
) -> None:
    spec, bars, params = universe
    ranges = listings(params)
    sessions = spec.sessions()
    late = [s for s, (first, _) in ranges.items() if first > sessions[0]]
    early = [s for s, (_, last) in ranges.items() if last < sessions[-1]]
    assert late and early, "the spec asks for IPOs and delistings"
    by_symbol = bars.groupby("symbol")["session"]
    for sym, (first, last) in ranges.items():
        got = by_symbol.get_group(sym)
        assert got.min().date() == first and got.max().date() == last
        # no hole inside a listing: every session between first and last has a bar
        assert len(got) == len(calendar.sessions_between(first, last))
        assert len(got) >= 252


def test_same_seed_same_universe_other_seed_other_universe() -> None:
    spec = UniverseSpec(symbols=5, years=1, seed=11)
    a, pa = make_universe(spec)
    b, pb = make_universe(spec)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pa, pb)
    c, _ = make_universe(UniverseSpec(symbols=5, years=1, seed=12))
    assert not np.allclose(a["close"], c["close"])


def test_idiosyncratic_garch_t_parameters_are_recovered_by_arch() -> None:
    """With no market factor and no listing gaps, each symbol is a pure GARCH(1,1)-t: arch's
    maximum likelihood on 28 years recovers the drawn persistence, alpha and nu."""
    spec = UniverseSpec(symbols=3, years=28, market_loading=(1e-9, 1e-9), late_listing=0.0,
                        early_delisting=0.0, annual_vol=(0.3, 0.3), nu=(6.0, 6.0), seed=5)
    bars, params = make_universe(spec)
    wide = bars.pivot(index="session", columns="symbol", values="close")
    rets = np.log(wide).diff().dropna()
    ratios = []
    for row in params.itertuples(index=False):
        res = arch_model(100 * rets[row.symbol], mean="Constant", vol="GARCH", p=1, q=1,
                         dist="t").fit(disp="off")
        est = res.params
        assert abs(est["alpha[1]"] + est["beta[1]"] - (row.alpha + row.beta)) < 0.02, est
        assert abs(est["alpha[1]"] - row.alpha) < 0.03, est
        assert abs(est["nu"] - row.nu) < 2.0, est
        ratios.append(rets[row.symbol].var() / (row.omega / (1 - row.alpha - row.beta)))
    # the long-run variance: a GARCH-t this persistent has no fourth moment, so one symbol's
    # sample variance over 28 years is off by up to ~40%; the mean over the three is tighter
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.25), ratios


def test_cross_sectional_correlation_follows_the_market_betas() -> None:
    spec = UniverseSpec(symbols=30, years=10, late_listing=0.0, early_delisting=0.0, seed=9)
    bars, params = make_universe(spec)
    rets = np.log(bars.pivot(index="session", columns="symbol", values="close")).diff().dropna()
    index = rets.pop("SPX")
    params = params[params["symbol"] != "SPX"]
    corr = rets.corr().to_numpy()
    upper = np.triu_indices(len(corr), 1)
    b = params["loading"].to_numpy()
    # one factor: cov(r_i, r_j) = b_i b_j var(f), cov(r_i, f) = b_i var(f) (in the sample, up
    # to the noise of the idiosyncratic parts)
    f_sd, sd = index.std(), rets.std().to_numpy()
    implied = np.outer(b, b) * f_sd**2 / np.outer(sd, sd)
    assert 0.1 < corr[upper].mean() < 0.7
    assert abs(corr[upper].mean() - implied[upper].mean()) < 0.05
    assert np.corrcoef(corr[upper], implied[upper])[0, 1] > 0.8
    with_index = rets.corrwith(index).to_numpy()
    assert np.abs(with_index - b * f_sd / sd).mean() < 0.05
    assert index.std() * np.sqrt(252) == pytest.approx(spec.market[3], rel=0.3)
    # volatility clusters across the market: squared returns are autocorrelated
    sq = (rets**2).mean(axis=1)
    assert sq.autocorr(1) > 0.1


def test_the_bar_quality_suite_accepts_a_synthetic_universe(tmp_path: Path) -> None:
    bars, params = make_universe(UniverseSpec(symbols=8, years=1, late_listing=0.5, seed=2))
    summary = validate_bars(bars, tmp_path / "reports", label="synthetic", build_docs=False,
                            expected=listings(params))
    assert summary.success, summary


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"symbols": 0}, "symbols and years must be positive"),
        ({"annual_vol": (0.5, 0.2)}, "annual_vol must be a range"),
        ({"alpha": (0.03, 0.95)}, "need alpha < persistence < 1"),
        ({"nu": (2.0, 5.0)}, "degrees of freedom must exceed 2"),
        ({"market": (0.5, 0.6, 6.0, 0.16)}, "market (alpha, beta, nu, annual_vol)"),
        ({"late_listing": 1.5}, "late_listing must be a share"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(kwargs: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        UniverseSpec(**kwargs)  # type: ignore[arg-type]


def test_synthetic_source_serves_sessions_and_listings_of_its_universe() -> None:
    from pipelines.sources import SyntheticSource

    spec = UniverseSpec(symbols=6, years=2, late_listing=0.5, seed=4)
    source = SyntheticSource(spec)
    bars, params = make_universe(spec)
    sessions = spec.sessions()
    wanted = [sessions[0], sessions[100], sessions[-1], date(1999, 1, 4)]
    got = source.bars(wanted)
    expected = bars[bars["session"].isin(pd.to_datetime(wanted))].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert set(got["session"].dt.date) == set(wanted[:3])  # nothing outside its years
    assert source.listings() == listings(params)
    assert set(source.listings()) == set(spec.universe)
    sectors = source.sectors()
    assert sectors["SPX"] == "Index: synthetic market"
    assert set(sectors) == set(spec.universe) and len(set(sectors.values())) > 2


def test_settings_read_a_synthetic_universe_from_the_environment() -> None:
    from pipelines.settings import SECTORS, Settings

    s = Settings.from_env({"AFTERBELL_SYNTHETIC": "symbols=12,seed=3",
                           "AFTERBELL_HISTORY_YEARS": "4", "AFTERBELL_SESSION": "2017-06-30"})
    assert s.synthetic is not None
    assert (s.synthetic.symbols, s.synthetic.seed, s.synthetic.years) == (12, 3, 4)
    assert s.synthetic.end == date(2017, 6, 30)
    assert s.universe == (*(f"SYN{i:04d}" for i in range(12)), "SPX")
    assert set(s.sectors) == set(s.universe)
    assert Settings.from_env({"AFTERBELL_SYNTHETIC": "40"}).universe[-2:] == ("SYN0039", "SPX")
    plain = Settings.from_env({})
    assert plain.synthetic is None and plain.sectors is SECTORS


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AFTERBELL_SYNTHETIC": "symbols=many"}, "symbols must be an integer, got 'many'"),
        ({"AFTERBELL_SYNTHETIC": "seed=3"}, "names no number of symbols"),
        ({"AFTERBELL_SYNTHETIC": "symbols=5,colour=2"}, "unknown field 'colour'"),
        ({"AFTERBELL_SYNTHETIC": "0"}, "symbols and years must be positive"),
        ({"AFTERBELL_SYNTHETIC": "5", "AFTERBELL_SYMBOLS": "AAPL"}, "not both"),
    ],
)
def test_bad_synthetic_settings_are_named(env: dict[str, str], message: str) -> None:
    from pipelines.settings import Settings

    with pytest.raises(ValueError) as err:
        Settings.from_env(env)
    assert message in str(err.value)
