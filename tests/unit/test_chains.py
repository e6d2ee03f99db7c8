"""Option chains in the lake: ingest (upsert by symbol), implied-vol surface and Heston calibration.

The chains are priced by :func:`models.options.heston_chain` from known parameters, so the
calibration must give them back; the surface is checked by repricing every option with the
closed-form Black-Scholes-Merton price at its implied volatility.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.options import HestonParams, Market, heston_chain
from pipelines.chains import (
    CHAINS_TABLE,
    HESTON_COLUMNS,
    HESTON_TABLE,
    SURFACE_COLUMNS,
    SURFACE_TABLE,
    ChainFileError,
    ChainIngest,
    calibrate_chains,
    calibrate_session,
    ingest_chain,
)
from pipelines.cli import main
from pipelines.lake import has_partition, partition_path, read_table

SESSION = date(2024, 1, 5)  # a Friday, an NYSE session
HOLIDAY = date(2024, 1, 1)  # New Year's Day
TRUE = HestonParams(v0=0.04, kappa=1.5, theta=0.06, sigma=0.5, rho=-0.6)
MARKET = Market(spot=100.0, rate=0.03, dividend=0.01)
STRIKES = (85.0, 100.0, 115.0)
EXPIRIES = (0.25, 1.0, 2.0)  # 9 out-of-the-money options: enough to recover the 5 parameters
OTHER = HestonParams(v0=0.09, kappa=2.0, theta=0.05, sigma=0.4, rho=-0.3)


def n_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def bsm_price(kind: str, s: float, k: float, r: float, q: float, vol: float, t: float) -> float:
    sq = vol * math.sqrt(t)
    d1 = (math.log(s / k) + (r - q + 0.5 * vol * vol) * t) / sq
    d2 = d1 - sq
    fs, dk = s * math.exp(-q * t), k * math.exp(-r * t)
    if kind == "call":
        return fs * n_cdf(d1) - dk * n_cdf(d2)
    return dk * n_cdf(-d2) - fs * n_cdf(-d1)


@pytest.fixture(scope="module")
def chain() -> pd.DataFrame:
    return heston_chain(MARKET, TRUE, STRIKES, EXPIRIES)


@pytest.fixture(scope="module")
def other_chain() -> pd.DataFrame:
    return heston_chain(Market(50.0, 0.03), OTHER, (45.0, 50.0, 55.0), (0.5, 1.0))


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


def ingest(lake: Path, path: Path, symbol: str = "SPY", session: date = SESSION,
           market: Market = MARKET) -> ChainIngest:
    return ingest_chain(lake, session, symbol, path, spot=market.spot, rate=market.rate,
                        dividend=market.dividend)


# ---------------------------------------------------------------------------------- ingest


def test_ingest_stores_the_chain_with_its_market(lake: Path, chain: pd.DataFrame,
                                                 tmp_path: Path) -> None:
    src = write_csv(chain.iloc[::-1], tmp_path / "spy.csv")  # file order does not matter
    done = ingest(lake, src, symbol=" spy ")
    assert (done.session, done.symbol, done.rows, done.replaced) == (SESSION, "SPY", 9, 0)
    assert done.path == partition_path(lake, CHAINS_TABLE, SESSION)
    stored = read_table(lake, CHAINS_TABLE, SESSION, SESSION)
    assert list(stored.columns) == ["symbol", "session", "expiry", "strike", "type", "price",
                                    "spot", "rate", "dividend"]
    assert (stored["symbol"] == "SPY").all()
    assert (stored["session"] == pd.Timestamp(SESSION)).all()
    assert (stored[["spot", "rate", "dividend"]] == [100.0, 0.03, 0.01]).all().all()
    expected = chain.sort_values(["expiry", "strike", "type"]).reset_index(drop=True)
    # read_chain parses with pandas.to_numeric, which may differ from the CSV text by one ulp
    pd.testing.assert_frame_equal(stored[["expiry", "strike", "type", "price"]], expected,
                                  check_exact=False, rtol=1e-15, atol=0.0)


def test_ingest_is_an_idempotent_upsert_by_symbol(lake: Path, chain: pd.DataFrame,
                                                  other_chain: pd.DataFrame,
                                                  tmp_path: Path) -> None:
    spy = write_csv(chain, tmp_path / "spy.csv")
    qqq = write_csv(other_chain, tmp_path / "qqq.csv")
    path = ingest(lake, spy).path
    once = path.read_bytes()
    again = ingest(lake, spy)
    assert again.replaced == 9
    assert path.read_bytes() == once  # same partition, nothing appended

    ingest(lake, qqq, symbol="QQQ", market=Market(50.0, 0.03))
    both = path.read_bytes()
    assert read_table(lake, CHAINS_TABLE)["symbol"].value_counts().to_dict() == {"SPY": 9,
                                                                                  "QQQ": 6}
    # re-ingesting SPY keeps QQQ and gives the same file
    assert ingest(lake, spy).replaced == 9
    assert path.read_bytes() == both
    # a smaller SPY chain replaces SPY's rows only
    smaller = write_csv(chain.iloc[:5], tmp_path / "spy-small.csv")
    assert ingest(lake, smaller).rows == 5
    stored = read_table(lake, CHAINS_TABLE, SESSION, SESSION)
    assert stored["symbol"].value_counts().to_dict() == {"QQQ": 6, "SPY": 5}
    assert (stored.loc[stored["symbol"] == "QQQ", "spot"] == 50.0).all()


def _bad_files(chain: pd.DataFrame, tmp_path: Path) -> list[tuple[Path, str]]:
    no_price = write_csv(chain.drop(columns="price"), tmp_path / "no-price.csv")
    negative = chain.copy()
    negative.loc[4, "price"] = -1.0  # the chain is indexed by row from 1, as read_chain
    dupes = pd.concat([chain, chain.iloc[[0]]])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    return [
        (no_price, "missing column(s) 'price'"),
        (write_csv(negative, tmp_path / "negative.csv"), "row 4, column 'price': must be positive"),
        (write_csv(dupes, tmp_path / "dupes.csv"), "several quotes for one"),
        (empty, "the file is empty"),
    ]


def test_bad_file_is_refused_and_leaves_the_partition(lake: Path, chain: pd.DataFrame,
                                                      tmp_path: Path) -> None:
    path = ingest(lake, write_csv(chain, tmp_path / "spy.csv")).path
    before = path.read_bytes()
    for bad, message in _bad_files(chain, tmp_path):
        with pytest.raises(ChainFileError, match="^" + re.escape(str(bad))) as info:
            ingest(lake, bad)
        assert message in str(info.value)
        assert path.read_bytes() == before
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        ingest(lake, tmp_path / "nope.csv")
    assert path.read_bytes() == before
    # a bad file for a session without chains writes nothing
    with pytest.raises(ChainFileError):
        ingest(lake, _bad_files(chain, tmp_path)[0][0], session=date(2024, 1, 4))
    assert not has_partition(lake, CHAINS_TABLE, date(2024, 1, 4))


def test_ingest_refuses_non_sessions_and_bad_markets(lake: Path, chain: pd.DataFrame,
                                                     tmp_path: Path) -> None:
    src = write_csv(chain, tmp_path / "spy.csv")
    for day in (HOLIDAY, date(2024, 1, 6)):
        with pytest.raises(ValueError, match=f"{day.isoformat()} is not an NYSE session"):
            ingest(lake, src, session=day)
    for kwargs, message in (({"spot": 0.0, "rate": 0.03}, "spot must be positive"),
                            ({"spot": 100.0, "rate": math.nan}, "rate must be finite"),
                            ({"spot": 100.0, "rate": 0.0, "dividend": math.inf},
                             "dividend must be finite")):
        with pytest.raises(ValueError, match=message):
            ingest_chain(lake, SESSION, "SPY", src, **kwargs)
    with pytest.raises(ValueError, match="symbol must be"):
        ingest_chain(lake, SESSION, "  ", src, spot=100.0, rate=0.03)
    assert not (lake / CHAINS_TABLE).exists()


# ---------------------------------------------------------------------------------- calibrate


def test_calibrate_session_recovers_heston_and_stores_the_surface(
    lake: Path, chain: pd.DataFrame, other_chain: pd.DataFrame, tmp_path: Path
) -> None:
    ingest(lake, write_csv(chain, tmp_path / "spy.csv"))
    ingest(lake, write_csv(other_chain, tmp_path / "qqq.csv"), symbol="QQQ",
           market=Market(50.0, 0.03))
    summary = calibrate_session(lake, SESSION)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["session"] == "2024-01-05"
    assert summary["chains"] == 2 and summary["symbols"] == ["QQQ", "SPY"]
    assert summary["surface_rows"] == 15 and summary["without_iv"] == 0
    assert summary["failed"] == []
    for symbol, true in (("SPY", TRUE), ("QQQ", OTHER)):
        fit = summary["heston"][symbol]
        assert fit["converged"] and fit["error"] is None
        for name in ("v0", "kappa", "theta", "sigma", "rho"):
            assert fit[name] == pytest.approx(getattr(true, name), rel=1e-5), (symbol, name)
        assert fit["rmse_iv"] < 1e-7
        assert fit["n_options"] == (9 if symbol == "SPY" else 6)
        assert isinstance(fit["evaluations"], int) and fit["end_criteria"]

    heston = read_table(lake, HESTON_TABLE, SESSION, SESSION)
    assert list(heston.columns) == ["symbol", "session", *HESTON_COLUMNS[1:]]
    assert heston["symbol"].tolist() == ["QQQ", "SPY"]
    assert heston["n_options"].tolist() == [6, 9]
    assert heston["error"].isna().all()
    surface = read_table(lake, SURFACE_TABLE, SESSION, SESSION)
    assert list(surface.columns) == ["symbol", "session", *SURFACE_COLUMNS[1:]]
    spots = {"SPY": (100.0, 0.03, 0.01), "QQQ": (50.0, 0.03, 0.0)}
    for row in surface.to_dict("records"):
        s, r, q = spots[str(row["symbol"])]
        repriced = bsm_price(str(row["type"]), s, float(row["strike"]), r, q, float(row["iv"]),
                             float(row["expiry"]))
        assert repriced == pytest.approx(float(row["price"]), rel=1e-8, abs=1e-10)
    spy = surface.loc[surface["symbol"] == "SPY"]
    # a Heston smile with rho < 0: the low strike has the higher implied volatility
    one_year = spy.loc[spy["expiry"] == 1.0].set_index("strike")["iv"]
    assert one_year[85.0] > one_year[100.0] > one_year[115.0]

    files = [partition_path(lake, t, SESSION).read_bytes() for t in (SURFACE_TABLE, HESTON_TABLE)]
    assert calibrate_session(lake, SESSION) == summary  # safe to repeat: same files
    assert [partition_path(lake, t, SESSION).read_bytes()
            for t in (SURFACE_TABLE, HESTON_TABLE)] == files


def test_calibrate_session_without_chains_writes_nothing(lake: Path) -> None:
    assert calibrate_session(lake, SESSION) == {"session": "2024-01-05", "chains": 0}
    assert not lake.exists()


def test_one_bad_symbol_does_not_stop_the_others(chain: pd.DataFrame,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    good = chain.assign(symbol="SPY", spot=100.0, rate=0.03, dividend=0.01)
    few = chain.iloc[:3].assign(symbol="FEW", spot=100.0, rate=0.03, dividend=0.01)
    # every price above the spot: no implied volatility at all
    arb = chain.assign(symbol="ARB", price=500.0, spot=100.0, rate=0.03, dividend=0.01)
    with caplog.at_level(logging.WARNING, logger="pipelines.chains"):
        surface, heston = calibrate_chains(pd.concat([few, arb, good], ignore_index=True))
    assert heston["symbol"].tolist() == ["ARB", "FEW", "SPY"]
    byname = heston.set_index("symbol")
    assert byname.loc["SPY", "converged"] and pd.isna(byname.loc["SPY", "error"])
    assert byname.loc["SPY", "theta"] == pytest.approx(TRUE.theta, rel=1e-5)
    assert "at least 5 options" in str(byname.loc["FEW", "error"])
    assert "no implied volatility" in str(byname.loc["ARB", "error"])
    for bad in ("FEW", "ARB"):
        assert np.isnan(byname.loc[bad, ["v0", "kappa", "theta", "sigma", "rho"]].astype(float)
                        ).all()
        assert not byname.loc[bad, "converged"]
        assert bad in caplog.text
    assert byname.loc["FEW", "n_options"] == 3 and byname.loc["ARB", "n_options"] == 0
    # FEW has implied volatilities (only its calibration failed); ARB has none
    assert surface["symbol"].value_counts().to_dict() == {"SPY": 9, "FEW": 3}
    assert list(surface.columns) == list(SURFACE_COLUMNS)


def test_calibrate_chains_validates_its_input(chain: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="missing column"):
        calibrate_chains(chain)
    two = chain.assign(symbol="SPY", spot=[100.0] * 8 + [101.0], rate=0.03, dividend=0.0)
    _, heston = calibrate_chains(two)
    assert "one spot" in str(heston.loc[0, "error"])
    surface, heston = calibrate_chains(two.iloc[:0])
    assert surface.empty and heston.empty
    assert list(heston.columns) == list(HESTON_COLUMNS)


# ---------------------------------------------------------------------------------- CLI


def test_cli_ingest_chain(chain: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("AFTERBELL_HOME", str(home))
    src = write_csv(chain, tmp_path / "spy.csv")
    base = ["options", "ingest-chain", "--session", "2024-01-05", "--symbol", "SPY", "--chain",
            str(src), "--spot", "100", "--rate", "0.03", "--dividend", "0.01"]
    assert main([*base, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lake = home / "lake"
    assert out["table"] == CHAINS_TABLE and out["symbol"] == "SPY" and out["rows"] == 9
    assert out["path"] == str(partition_path(lake, CHAINS_TABLE, SESSION))
    assert main(base) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("option_chains 2024-01-05 SPY: 9 options from") and "replaced 9" in line
    assert len(read_table(lake, CHAINS_TABLE, SESSION, SESSION)) == 9

    bad = write_csv(chain.drop(columns="type"), tmp_path / "bad.csv")
    for change, message in (
        (["--chain", str(bad)], f"argument --chain: {bad}: missing column(s) 'type'"),
        (["--chain", str(tmp_path / "nope.csv")], "argument --chain:"),
        (["--session", "2024-01-01"], "argument --session: 2024-01-01 is not an NYSE session"),
        (["--symbol", " "], "argument --symbol: must be a non-empty name"),
    ):
        args = list(base)
        i = args.index(change[0])
        args[i + 1] = change[1]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"afterbell options ingest-chain: error: {message}"), err
        assert len(err.splitlines()) == 1
    for change in (["--session", "2024-13-01"], ["--spot", "-1"]):
        args = list(base)
        args[args.index(change[0]) + 1] = change[1]
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2
        assert f"argument {change[0]}:" in capsys.readouterr().err
    assert len(read_table(lake, CHAINS_TABLE, SESSION, SESSION)) == 9
