"""Risk-free rates: Treasury CSV checks, packaged fallback, point-in-time lookup, lake upsert."""

from __future__ import annotations

import json
import logging
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import rates
from pipelines.rates import RateQuote, rate_at, rates_for

T30 = 30 / 365

CURVE = """Date,1 Mo,2 Mo,3 Mo,6 Mo,1 Yr,2 Yr,3 Yr,10 Yr
01/06/2020,1.54,1.56,1.56,1.56,1.54,1.54,1.56,1.81
01/03/2020,1.52,1.55,1.54,1.55,1.55,1.53,1.54,1.80
2020-01-02,1.53,1.55,1.54,1.57,1.56,1.58,1.59,1.88
12/31/2019,1.48,1.51,1.55,1.60,1.59,1.58,1.62,1.92
"""


def _csv(tmp_path: Path, text: str, name: str = "curve.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _simple(y: float, t: float) -> float:
    return math.log(1 + y * t) / t


# ------------------------------------------------------------------------------ reading
def test_reads_both_date_formats_into_sorted_decimal_yields(tmp_path: Path) -> None:
    text = "Date,1 Mo,3 Mo,10 Yr\n01/03/2020,1.52,,1.80\n2020-01-02,1.53,1.54,1.88\n"
    frame = rates.read_treasury_curve(_csv(tmp_path, text))
    assert list(frame.columns) == list(rates.CURVE_COLUMNS)
    assert frame["session"].dtype == "datetime64[ns]"
    assert list(frame["session"]) == [pd.Timestamp("2020-01-02"), pd.Timestamp("2020-01-03")]
    assert frame["m1"].tolist() == pytest.approx([0.0153, 0.0152])
    assert frame["y10"].tolist() == pytest.approx([0.0188, 0.0180])
    assert frame["m3"].iloc[0] == pytest.approx(0.0154) and np.isnan(frame["m3"].iloc[1])
    assert frame[["m2", "y30"]].isna().all().all()  # tenors absent from the file
    assert (frame["source"] == "treasury").all()


def test_six_week_tenor_is_read_and_unknown_columns_are_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = "Date,1 Mo,1.5 Month,2 Mo,15 Yr,Note,\n02/18/2025,4.30,4.31,4.32,4.50,x,\n"
    with caplog.at_level(logging.WARNING, logger="pipelines.rates"):
        frame = rates.read_treasury_curve(_csv(tmp_path, text))
    assert frame["m1_5"].iloc[0] == pytest.approx(0.0431)
    assert "15 Yr" in caplog.text and "Note" in caplog.text
    assert "''" not in caplog.text  # the empty trailing column is dropped silently


@pytest.mark.parametrize(
    ("text", "where", "column"),
    [
        ("Day,1 Mo\n01/02/2020,1.5\n", "header row", "'Date'"),
        ("Date,Rate\n01/02/2020,1.5\n", "header row", "'Rate'"),
        ("Date,1 Mo\n01/02/2020,1.5\n2020-13-01,1.6\n", "row 2 (line 3)", "column 'Date'"),
        ("Date,1 Mo\n01/02/2020,1.5\n2020-01-02,1.6\n", "row 2 (line 3)", "column 'Date'"),
        ("Date,1 Mo,3 Mo\n01/02/2020,1.5,1.6\n01/03/2020,1.5,abc\n", "row 2", "column '3 Mo'"),
        ("Date,1 Mo,3 Mo\n01/02/2020,1.5,nan\n", "row 1", "column '3 Mo'"),
        ("Date,1 Mo,3 Mo\n01/02/2020,1.5,31\n", "row 1", "column '3 Mo'"),
        ("Date,1 Mo,3 Mo\n01/02/2020,-5.5,1\n", "row 1", "column '1 Mo'"),
        ("Date,1 Mo,3 Mo\n01/02/2020,1.5,1.6\n01/03/2020,,\n", "row 2", "column 'Date'"),
        ("Date,1 Mo,3 Mo\n01/02/2020,1.5\n", "row 1", ""),
    ],
    ids=["no-date-column", "no-tenor", "bad-date", "duplicate-date", "bad-number", "nan",
         "too-high", "too-low", "empty-row", "ragged"],
)
def test_bad_files_name_the_file_row_and_column(
    tmp_path: Path, text: str, where: str, column: str
) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(ValueError) as err:
        rates.read_treasury_curve(path)
    msg = str(err.value)
    assert str(path) in msg and where in msg and column in msg


def test_duplicate_date_points_at_the_first_occurrence(tmp_path: Path) -> None:
    path = _csv(tmp_path, "Date,1 Mo\n01/02/2020,1.5\n01/03/2020,1.5\n2020-01-02,1.6\n")
    with pytest.raises(ValueError, match=r"row 3 .*duplicate date 2020-01-02 \(also in row 1\)"):
        rates.read_treasury_curve(path)


# ------------------------------------------------------------------------------ packaged
def test_packaged_rates_are_monthly_dated_at_the_previous_month_end() -> None:
    frame = rates.packaged_rates()
    assert list(frame.columns) == ["session", "m1", "source"]
    sessions = pd.DatetimeIndex(frame["session"])
    assert sessions[0] == pd.Timestamp("1926-06-30") and sessions[-1] == pd.Timestamp("2018-10-31")
    assert sessions.is_month_end.all()
    assert (sessions.to_period("M").asi8[1:] - sessions.to_period("M").asi8[:-1] == 1).all()
    m1 = frame.set_index("session")["m1"]
    assert m1["2008-11-30"] == pytest.approx(0, abs=0.002)  # RF of 2008-12
    assert m1["2008-12-31"] == pytest.approx(0, abs=0.002)  # RF of 2009-01
    assert m1["2018-10-31"] == pytest.approx(0.0018 * 365 / 30)  # RF of 2018-11 (0.18 %)
    assert 0.018 < m1["2018-10-31"] < 0.025
    assert (frame["source"] == "fama-french").all()


def test_packaged_rate_of_a_month_is_used_only_after_the_previous_month_end(
    tmp_path: Path,
) -> None:
    oct_rf, nov_rf = 0.0019 * 365 / 31, 0.0018 * 365 / 30
    on_month_end = rate_at(tmp_path, date(2018, 10, 31))
    assert on_month_end.curve_date == date(2018, 9, 30)
    assert on_month_end.rate == pytest.approx(_simple(oct_rf, T30))
    next_day = rate_at(tmp_path, date(2018, 11, 1))
    assert next_day == RateQuote(rate=pytest.approx(_simple(nov_rf, T30)), days=30,  # type: ignore[arg-type]
                                 curve_date=date(2018, 10, 31), age_days=1, source="fama-french")


def test_default_replay_session_resolves_to_the_packaged_rate(tmp_path: Path) -> None:
    quote = rate_at(tmp_path, date(2018, 12, 31))
    assert (quote.source, quote.curve_date, quote.age_days) == ("fama-french",
                                                                 date(2018, 10, 31), 61)
    assert 0.018 < quote.rate < 0.025
    assert rate_at(tmp_path, date(2019, 1, 1)).age_days == 62
    with pytest.raises(ValueError, match="2018-10-31 \\(fama-french\\), 63 days old"):
        rate_at(tmp_path, date(2019, 1, 2))


# ------------------------------------------------------------------------------ lookup
@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    rates.ingest_rates(root, _csv(tmp_path, CURVE))
    return root


def test_a_curve_dated_on_the_session_is_not_used(lake_root: Path) -> None:
    quote = rate_at(lake_root, date(2020, 1, 3))
    assert (quote.curve_date, quote.age_days, quote.source) == (date(2020, 1, 2), 1, "treasury")
    assert quote.rate == pytest.approx(_simple(0.0153, T30))
    weekend = rate_at(lake_root, date(2020, 1, 5))
    assert (weekend.curve_date, weekend.age_days) == (date(2020, 1, 3), 2)


def test_interpolation_is_linear_in_maturity_and_flat_outside(lake_root: Path) -> None:
    session = date(2020, 1, 3)  # uses the curve of 2020-01-02
    # 30 days (0.0822 y) is just short of the 1-month tenor (1/12 y): flat at the 1-month yield
    assert rate_at(lake_root, session, 30).rate == pytest.approx(_simple(0.0153, T30))
    # 45 days lies between 1 Mo (1.53 %) and 2 Mo (1.55 %)
    t = 45 / 365
    y = 0.0153 + (t - 1 / 12) / (2 / 12 - 1 / 12) * (0.0155 - 0.0153)
    assert rate_at(lake_root, session, 45).rate == pytest.approx(_simple(y, t))
    # 120 days lies between 3 Mo (1.54 %) and 6 Mo (1.57 %)
    t = 120 / 365
    y = 0.0154 + (t - 0.25) / 0.25 * (0.0157 - 0.0154)
    assert rate_at(lake_root, session, 120).rate == pytest.approx(_simple(y, t))
    # two years: semiannual, between 1 Yr (1.56 %) and 2 Yr (1.58 %)
    t = 730 / 365
    assert rate_at(lake_root, session, 730).rate == pytest.approx(2 * math.log(1 + 0.0158 / 2))
    # beyond the longest tenor (10 Yr, 1.88 %): flat, semiannual
    assert rate_at(lake_root, session, 365 * 30).rate == pytest.approx(
        2 * math.log(1 + 0.0188 / 2))


def test_flat_extrapolation_below_the_shortest_quoted_tenor(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    rates.ingest_rates(root, _csv(tmp_path, "Date,3 Mo,6 Mo\n06/01/1995,5.80,5.90\n"))
    quote = rate_at(root, date(1995, 6, 2))
    assert quote.rate == pytest.approx(_simple(0.058, T30))
    assert quote.rate < 0.058  # continuous compounding is below the simple yield


def test_continuous_conversion_matches_the_closed_forms() -> None:
    y = np.array([0.0, 0.05, -0.01])
    assert rates.continuous_rate(y, 0.5) == pytest.approx(np.log(1 + y * 0.5) / 0.5)
    assert rates.continuous_rate(y, 1.0) == pytest.approx(np.log(1 + y))
    assert rates.continuous_rate(y, 5.0) == pytest.approx(2 * np.log(1 + y / 2))


def test_stale_curves_fall_back_and_then_fail_with_a_fix(lake_root: Path) -> None:
    # ingested curves end 2020-01-06 and the packaged data 2018-10-31
    assert rate_at(lake_root, date(2020, 3, 8)).age_days == 62
    with pytest.raises(ValueError) as err:
        rate_at(lake_root, date(2020, 3, 9))
    msg = str(err.value)
    assert "session 2020-03-09" in msg and "2020-01-06 (treasury), 63 days old" in msg
    assert "afterbell rates ingest --source FILE" in msg
    with pytest.raises(ValueError, match="session 1926-06-30: no curve is dated before it"):
        rate_at(lake_root, date(1926, 6, 30))


def test_ingested_curves_come_before_the_packaged_rate(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    rates.ingest_rates(root, _csv(tmp_path, "Date,1 Mo\n05/01/2018,1.65\n01/02/2018,1.29\n"))
    # the ingested curve is older (45 days) than the packaged one (2018-05-31) but fresh enough
    quote = rate_at(root, date(2018, 6, 15))
    assert (quote.source, quote.curve_date) == ("treasury", date(2018, 5, 1))
    assert quote.rate == pytest.approx(_simple(0.0165, T30))
    # with a tighter limit only the packaged rate qualifies
    tight = rate_at(root, date(2018, 6, 15), max_age_days=30)
    assert (tight.source, tight.curve_date) == ("fama-french", date(2018, 5, 31))
    with pytest.raises(ValueError, match="2018-05-31 \\(fama-french\\), 15 days old"):
        rate_at(root, date(2018, 6, 15), max_age_days=10)


def test_rates_for_equals_rate_at_row_by_row(lake_root: Path) -> None:
    days = [date(2019, 12, 1) + timedelta(days=i) for i in range(0, 120, 3)]
    sessions = [*reversed(days), date(2018, 12, 31), date(2020, 1, 3), date(2020, 1, 3),
                date(1900, 1, 1)]
    for horizon in (30, 400):
        table = rates_for(lake_root, sessions, horizon)
        assert list(table.columns) == ["rate", "curve_date", "age_days", "source"]
        assert list(table.index) == [pd.Timestamp(s) for s in sessions]
        assert set(table["source"]) == {"treasury", "fama-french", ""}
        for session, row in zip(sessions, table.itertuples(), strict=True):
            if row.source == "":
                assert np.isnan(row.rate) and pd.isna(row.curve_date) and pd.isna(row.age_days)
                with pytest.raises(ValueError):
                    rate_at(lake_root, session, horizon)
                continue
            quote = rate_at(lake_root, session, horizon)
            assert quote == RateQuote(rate=row.rate, days=horizon,
                                      curve_date=row.curve_date.date(),
                                      age_days=int(row.age_days), source=row.source)
    assert rates_for(lake_root, []).empty


# ------------------------------------------------------------------------------ ingest
def test_ingest_is_idempotent_and_replaces_only_overlapping_dates(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    first = rates.ingest_rates(root, _csv(tmp_path, CURVE))
    assert first == rates.RatesIngest(path=root / "rates" / "curves.parquet",
                                      first=date(2019, 12, 31), last=date(2020, 1, 6), rows=4,
                                      replaced=0, stored=4)
    stored = first.path.read_bytes()
    again = rates.ingest_rates(root, _csv(tmp_path, CURVE))
    assert (again.replaced, again.stored) == (4, 4)
    assert first.path.read_bytes() == stored

    later = "Date,1 Mo,3 Mo\n01/07/2020,1.51,1.53\n01/06/2020,1.60,1.61\n01/03/2020,1.61,1.62\n"
    done = rates.ingest_rates(root, _csv(tmp_path, later, "later.csv"))
    assert (done.rows, done.replaced, done.stored) == (3, 2, 5)
    table = rates.read_rates(root).set_index("session")
    assert list(table.index) == list(pd.to_datetime(
        ["2019-12-31", "2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07"]))
    assert table.loc["2020-01-03", "m1"] == pytest.approx(0.0161)
    assert np.isnan(table.loc["2020-01-03", "y10"])  # the replacing curve has no 10 Yr
    assert table.loc["2020-01-02", "y10"] == pytest.approx(0.0188)  # untouched
    assert rate_at(root, date(2020, 1, 4)).rate == pytest.approx(_simple(0.0161, T30))

    before = first.path.read_bytes()
    with pytest.raises(ValueError, match="unparsable number"):
        rates.ingest_rates(root, _csv(tmp_path, "Date,1 Mo\n01/08/2020,x\n", "bad.csv"))
    assert first.path.read_bytes() == before


# ------------------------------------------------------------------------------ CLI
def test_cli_ingest_and_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import cli

    home = tmp_path / "home"
    monkeypatch.setenv("AFTERBELL_HOME", str(home))
    source = _csv(tmp_path, CURVE)
    assert cli.main(["rates", "ingest", "--source", str(source)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "4 curve dates 2019-12-31..2020-01-06" in out
    assert str(home / "lake" / "rates" / "curves.parquet") in out

    assert cli.main(["rates", "show", "--session", "2020-01-03", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"session": "2020-01-03", "rate": pytest.approx(_simple(0.0153, T30)),
                     "days": 30, "curve_date": "2020-01-02", "age_days": 1,
                     "source": "treasury"}

    assert cli.main(["rates", "show", "--session", "2018-12-31", "--days", "45"]) == 0
    assert "45-day rate" in capsys.readouterr().out

    assert cli.main(["rates", "show", "--session", "2021-01-04"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("afterbell: error: no risk-free rate for session 2021-01-04")
    assert "afterbell rates ingest --source FILE" in err
