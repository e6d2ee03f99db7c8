"""Great Expectations guard: good bars pass with Data Docs, planted defects name their culprit."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import great_expectations  # noqa: F401  (import GX before anything that may pull in airflow)
import numpy as np
import pandas as pd
import pytest

from pipelines import calendar
from pipelines.quality import (
    DERIVED_BAR_COLUMNS,
    SESSION_EXPECTATION,
    BarRules,
    DataQualityError,
    QualityIssue,
    ValidationSummary,
    bar_checks,
    derive_bar_columns,
    offending_rows,
    robust_z,
    validate_bars,
)
from pipelines.schema import BAR_COLUMNS
from pipelines.sources import ReplaySource

SESSIONS = calendar.sessions_between("2018-10-01", "2018-12-31")
DAY = pd.Timestamp("2018-12-31")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reports")


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return ReplaySource(["AAPL", "MSFT", "SPX", "NDX"]).bars(SESSIONS)


def _row(df: pd.DataFrame, symbol: str, day: pd.Timestamp = DAY) -> int:
    return int(df.index[(df["symbol"] == symbol) & (df["session"] == day)][0])


def test_good_frame_passes_and_builds_docs(reports: Path, good: pd.DataFrame) -> None:
    summary = validate_bars(good, reports, label="bars good")
    assert isinstance(summary, ValidationSummary)
    assert summary.success and summary.failed == []
    assert summary.evaluated == len(bar_checks()) + 1
    assert summary.n_rows == len(good)
    assert summary.docs_index == reports / "gx/uncommitted/data_docs/local_site/index.html"
    assert summary.docs_index.is_file()
    # idempotent: a second run in the same project reuses every definition
    again = validate_bars(good.iloc[-4:], reports, label="bars 2018-12-31")
    assert again.success and again.n_rows == 4
    assert "bars 2018-12-31" in summary.docs_index.read_text()
    quiet = validate_bars(good, reports, label="no docs", build_docs=False)
    assert quiet.success and quiet.docs_index is None


def _high_below_low(df: pd.DataFrame) -> None:
    i = _row(df, "SPX")
    df.loc[i, ["high", "low"]] = [10.0, 12.0]
    df.loc[i, ["open", "close", "adj_close"]] = 11.0


def _negative_price(df: pd.DataFrame) -> None:
    i = _row(df, "AAPL")
    df.loc[i, ["close", "adj_close"]] = -1.5


def _infinite_price(df: pd.DataFrame) -> None:
    df.loc[_row(df, "MSFT"), ["close", "adj_close"]] = float("inf")


def _negative_volume(df: pd.DataFrame) -> None:
    df.loc[_row(df, "NDX"), "volume"] = -100.0


def _duplicate_bar(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.loc[[_row(df, "MSFT")]]], ignore_index=True)


def _missing_column(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["session"] == DAY].drop(columns="volume").reset_index(drop=True)


def _non_session(df: pd.DataFrame) -> None:
    df.loc[_row(df, "MSFT"), "session"] = pd.Timestamp("2018-12-25")  # Christmas


def _null_close(df: pd.DataFrame) -> None:
    df.loc[_row(df, "SPX", pd.Timestamp("2018-12-28")), "close"] = float("nan")


Plant = Callable[[pd.DataFrame], pd.DataFrame | None]
DEFECTS: list[tuple[str, Plant, str, str | None, str, str]] = [
    ("high<low", _high_below_low, "expect_column_pair_values_a_to_be_greater_than_b", "SPX",
     "2018-12-31", "high=10.0 low=12.0"),
    ("negative price", _negative_price, "expect_column_values_to_be_between", "AAPL",
     "2018-12-31", "close=-1.5"),
    ("infinite price", _infinite_price, "expect_column_values_to_be_between", "MSFT",
     "2018-12-31", "close=inf"),
    ("negative volume", _negative_volume, "expect_column_values_to_be_between", "NDX",
     "2018-12-31", "volume=-100.0"),
    ("duplicate bar", _duplicate_bar, "expect_compound_columns_to_be_unique", "MSFT",
     "2018-12-31", "duplicate bar"),
    ("missing column", _missing_column, "expect_table_columns_to_match_ordered_list", None,
     "2018-12-31", "missing columns ['volume']"),
    ("non-session date", _non_session, SESSION_EXPECTATION, "MSFT", "2018-12-25",
     "not an NYSE session"),
    ("null close", _null_close, "expect_column_values_to_not_be_null", "SPX", "2018-12-28",
     "close=null"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("plant", "expectation", "symbol", "session", "detail"),
    [d[1:] for d in DEFECTS],
    ids=[d[0] for d in DEFECTS],
)
def test_planted_defect_names_expectation_symbol_session(
    reports: Path,
    good: pd.DataFrame,
    plant: Plant,
    expectation: str,
    symbol: str | None,
    session: str,
    detail: str,
) -> None:
    bad = good.copy()
    planted = plant(bad)
    bad = planted if planted is not None else bad
    with pytest.raises(DataQualityError) as err:
        validate_bars(bad, reports, label=f"bars defect {expectation}")
    exc = err.value
    msg = str(exc)
    assert exc.expectation == expectation and msg.startswith("data quality failed: ")
    assert expectation in msg and f"on session {session}" in msg and detail in msg
    assert exc.session == session and exc.symbol == symbol
    if symbol is not None:
        assert f"for symbol {symbol}" in msg
    assert "\n" not in msg
    # docs were built before raising, and the summary rides on the exception
    assert exc.summary is not None and not exc.summary.success
    assert exc.summary.docs_index is not None and exc.summary.docs_index.is_file()
    assert exc.summary.failed[0] == expectation


def test_error_message_format_and_pickle(reports: Path, good: pd.DataFrame) -> None:
    bad = good.copy()
    i = _row(bad, "SPX")
    bad.loc[i, ["high", "low", "open", "close", "adj_close"]] = [10.0, 12.0, 11.0, 11.0, 11.0]
    summary = validate_bars(bad, reports, label="bars report only", raise_on_failure=False)
    assert not summary.success
    assert summary.failed == ["expect_column_pair_values_a_to_be_greater_than_b"] * 5
    with pytest.raises(DataQualityError) as err:
        validate_bars(bad, reports, label="bars 2018-12-31")
    assert str(err.value) == (
        "data quality failed: expect_column_pair_values_a_to_be_greater_than_b(high >= low) "
        "for symbol SPX on session 2018-12-31: high=10.0 low=12.0"
    )
    clone = pickle.loads(pickle.dumps(err.value))
    assert str(clone) == str(err.value) and clone.symbol == "SPX"
    # the 4-argument form used by callers that re-raise with more detail
    assert str(DataQualityError("e", None, "2018-12-31", "d")) == (
        "data quality failed: e on session 2018-12-31: d"
    )


def test_suite_is_repaired_when_changed(reports: Path, good: pd.DataFrame) -> None:
    import great_expectations as gx

    context = gx.get_context(mode="file", project_root_dir=str(reports))
    suite = context.suites.get("bars")
    suite.delete_expectation(suite.expectations[-1])
    suite.save()
    assert len(context.suites.get("bars").expectations) == len(bar_checks()) - 1
    dup = pd.concat([good, good.tail(1)], ignore_index=True)
    with pytest.raises(DataQualityError, match="expect_compound_columns_to_be_unique"):
        validate_bars(dup, reports, label="bars repaired")
    context = gx.get_context(mode="file", project_root_dir=str(reports))
    assert len(context.suites.get("bars").expectations) == len(bar_checks())


def test_pandas_recomputation_agrees(good: pd.DataFrame) -> None:
    bad = good.copy()
    _high_below_low(bad)
    flagged = {c.check: int(offending_rows(bad, c).sum()) for c in bar_checks()}
    broken = {"high >= low", "high >= open", "high >= close", "open >= low", "close >= low"}
    assert {k for k, v in flagged.items() if v} == broken
    assert all(flagged[k] == 1 for k in broken)
    assert tuple(good.columns) == BAR_COLUMNS


# ------------------------------------------------------------------------- severities, new checks
REFERENCE_SESSIONS = calendar.sessions_between("2017-09-01", "2018-09-28")
LISTED = {s: (SESSIONS[0], SESSIONS[-1]) for s in ("AAPL", "MSFT", "SPX", "NDX")}


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return ReplaySource(["AAPL", "MSFT", "SPX", "NDX"]).bars(REFERENCE_SESSIONS)


def _fails(df: pd.DataFrame, reports: Path, label: str, **kwargs: Any) -> DataQualityError:
    with pytest.raises(DataQualityError) as err:
        validate_bars(df, reports, label=label, **kwargs)
    exc = err.value
    assert str(exc) == exc.issue.message and "\n" not in str(exc)
    assert exc.severity == "error" and exc.summary is not None and not exc.summary.success
    return exc


def test_real_quarter_with_context_passes_with_expected_universe(
    reports: Path, good: pd.DataFrame, reference: pd.DataFrame
) -> None:
    summary = validate_bars(
        good, reports, label="bars context", expected=LISTED, reference=reference
    )
    assert summary.success and summary.errors == [] and summary.warnings == []
    assert summary.docs_page is not None and summary.docs_page.is_file()
    assert summary.docs_page.suffix == ".html" and "bars context" in str(summary.docs_page)
    page = summary.docs_page.read_text()
    assert "[warning] robust z of the log return" in page  # the severity shows in the docs
    assert "[error] OHLC bar differs from the previous bar" in page


def test_robust_z_warning_is_returned_logged_and_does_not_raise(
    reports: Path,
    good: pd.DataFrame,
    reference: pd.DataFrame,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = good.copy()
    i = _row(bad, "AAPL")
    bad.loc[i, ["close", "adj_close"]] = bad.loc[i, "close"] * 1.25  # +22% in one session
    with caplog.at_level(logging.WARNING, logger="pipelines.quality"):
        summary = validate_bars(bad, reports, label="bars jump", reference=reference)
    assert summary.success and summary.failed == [] and summary.errors == []
    [issue] = summary.warnings
    assert isinstance(issue, QualityIssue) and issue.severity == "warning"
    assert (issue.expectation, issue.symbol, issue.session) == (
        "expect_column_values_to_be_between", "AAPL", "2018-12-31"
    )  # fmt: skip
    values = dict(part.split("=") for part in issue.detail.split())
    prev = bad.loc[_row(bad, "AAPL", pd.Timestamp("2018-12-28")), "adj_close"]
    assert float(values["ret"]) == pytest.approx(np.log(bad.loc[i, "adj_close"] / prev))
    assert float(values["ret_robust_z"]) > 10 and float(values["prev_close"]) == prev
    assert issue.message.startswith(
        "data quality warning: expect_column_values_to_be_between(robust z of the log return "
        "<= 10) for symbol AAPL on session 2018-12-31: ret_robust_z="
    )
    assert issue.message in caplog.text
    # the same frame with a higher threshold has no warning
    calm = validate_bars(bad, reports, label="bars calm", reference=reference,
                         rules=BarRules(robust_z=1e6), build_docs=False)  # fmt: skip
    assert calm.success and calm.warnings == []


def test_robust_z_matches_its_definition() -> None:
    rng = np.random.default_rng(3)
    ret = rng.standard_normal(40)
    ret[[7, 21]] = np.nan
    z = robust_z(ret, window=10, min_periods=5)
    finite = ret[np.isfinite(ret)]
    expected = np.full(len(finite), np.nan)
    for k in range(5, len(finite)):
        w = finite[max(0, k - 10) : k]
        med = np.median(w)
        expected[k] = abs(finite[k] - med) / (1.4826 * np.median(np.abs(w - med)))
    assert np.isnan(z[[7, 21]]).all()
    np.testing.assert_allclose(z[np.isfinite(ret)], expected, equal_nan=True)
    need = np.zeros(40, dtype=bool)
    need[30] = True
    only = robust_z(ret, window=10, min_periods=5, need=need)
    assert np.isnan(np.delete(only, 30)).all() and only[30] == z[30]


def test_stale_full_bar_is_an_error(reports: Path, good: pd.DataFrame) -> None:
    bad = good.copy()
    cols = ["open", "high", "low", "close", "adj_close", "volume"]
    bad.loc[_row(bad, "SPX"), cols] = bad.loc[_row(bad, "SPX", pd.Timestamp("2018-12-28")), cols]
    exc = _fails(bad, reports, "bars stale bar")
    assert (exc.expectation, exc.symbol, exc.session) == (
        "expect_column_values_to_be_between", "SPX", "2018-12-31"
    )  # fmt: skip
    assert exc.check == "OHLC bar differs from the previous bar"
    assert exc.detail.startswith("repeat_bar=2.0 open=") and "prev_session=2018-12-28" in exc.detail
    assert "stale bar: identical to the previous bar" in exc.detail


def test_reference_gives_the_first_session_its_previous_bar(
    reports: Path, good: pd.DataFrame
) -> None:
    cols = ["open", "high", "low", "close", "adj_close", "volume"]
    bad = good.copy()
    bad.loc[_row(bad, "SPX"), cols] = bad.loc[_row(bad, "SPX", pd.Timestamp("2018-12-28")), cols]
    batch = bad[bad["session"] == DAY].reset_index(drop=True)
    earlier = bad[bad["session"] < DAY].reset_index(drop=True)
    assert validate_bars(batch, reports, label="bars alone", build_docs=False).success
    exc = _fails(batch, reports, "bars with reference", reference=earlier)
    assert (exc.symbol, exc.session) == ("SPX", "2018-12-31") and "repeat_bar=2.0" in exc.detail
    assert exc.summary is not None and exc.summary.n_rows == len(batch)


@pytest.mark.parametrize(("run", "fails"), [(4, False), (5, True)])
def test_stale_close_run(reports: Path, good: pd.DataFrame, run: int, fails: bool) -> None:
    bad = good.copy()
    msft = bad.index[bad["symbol"] == "MSFT"][-run:]
    bad.loc[msft, ["close", "adj_close"]] = 101.5
    if not fails:
        assert validate_bars(bad, reports, label="bars 4 equal closes").success
        return
    exc = _fails(bad, reports, "bars 5 equal closes")
    assert (exc.expectation, exc.symbol, exc.session) == (
        "expect_column_values_to_be_between", "MSFT", "2018-12-31"
    )  # fmt: skip
    assert exc.check == "close unchanged on fewer than 5 sessions in a row"
    assert exc.detail == "repeat_close=5.0 close=101.5 prev_session=2018-12-28: stale close"


def _split(df: pd.DataFrame, adjusted: bool) -> None:
    later = (df["symbol"] == "AAPL") & (df["session"] >= pd.Timestamp("2018-12-27"))
    df.loc[later, "close"] = df.loc[later, "close"] / 2.0
    if not adjusted:
        df.loc[later, "adj_close"] = df.loc[later, "adj_close"] / 2.0


def test_unadjusted_split_is_an_error(reports: Path, good: pd.DataFrame) -> None:
    bad = good.copy()
    _split(bad, adjusted=False)
    exc = _fails(bad, reports, "bars split")
    assert (exc.expectation, exc.symbol, exc.session) == (
        "expect_column_values_to_be_null", "AAPL", "2018-12-27"
    )  # fmt: skip
    assert exc.detail.startswith("split_factor=0.5 prev_close=")
    assert "close-to-close jump of a split factor not adjusted in adj_close" in exc.detail
    # the prices of an adjusted split (adj_close smooth) are fine
    ok = good.copy()
    _split(ok, adjusted=True)
    assert validate_bars(ok, reports, label="bars adjusted split").success


def test_missing_listed_bar_is_an_error(reports: Path, good: pd.DataFrame) -> None:
    bad = good.drop(index=_row(good, "MSFT", pd.Timestamp("2018-12-28"))).reset_index(drop=True)
    assert validate_bars(bad, reports, label="bars no universe", build_docs=False).success
    exc = _fails(bad, reports, "bars missing MSFT", expected=LISTED)
    assert (exc.expectation, exc.symbol, exc.session) == (
        "expect_column_values_to_be_between", "MSFT", "2018-12-28"
    )  # fmt: skip
    assert exc.check == "every listed symbol has a bar"
    assert exc.detail == "no bar for a listed symbol (listed 2018-10-01..2018-12-31)"


def test_listing_range_is_respected(reports: Path, good: pd.DataFrame) -> None:
    delisted = dict(LISTED, MSFT=(SESSIONS[0], date(2018, 12, 27)))
    gone = good[~((good["symbol"] == "MSFT") & (good["session"] > pd.Timestamp("2018-12-27")))]
    summary = validate_bars(gone, reports, label="bars delisted", expected=delisted)
    assert summary.success and summary.warnings == []
    # a bar after the listing range is reported, not fatal
    late = validate_bars(good, reports, label="bars late", expected=delisted, build_docs=False)
    assert late.success
    assert [(w.symbol, w.session) for w in late.warnings] == [
        ("MSFT", "2018-12-28"), ("MSFT", "2018-12-31")
    ]  # fmt: skip
    assert late.warnings[0].detail.endswith("bar outside the symbol's listing range")


def test_unknown_symbol_is_an_error(reports: Path, good: pd.DataFrame) -> None:
    universe = {s: r for s, r in LISTED.items() if s != "NDX"}
    exc = _fails(good, reports, "bars unknown NDX", expected=universe)
    assert (exc.expectation, exc.symbol, exc.session) == (
        "expect_column_values_to_be_in_set", "NDX", "2018-10-01"
    )  # fmt: skip
    assert exc.detail == f"symbol=NDX: unknown symbol (not in the universe) ({63} offending rows)"


@pytest.mark.parametrize(
    ("column", "cast", "detail"),
    [
        ("session", lambda s: s.dt.strftime("%Y-%m-%d"), "session has dtype object, expected "
         "datetime64[ns]"),
        ("volume", lambda s: s.fillna(0).astype("int64"), "volume has dtype int64, expected "
         "float64"),
    ],
    ids=["session-as-text", "volume-as-int"],
)  # fmt: skip
def test_column_types(
    reports: Path,
    good: pd.DataFrame,
    column: str,
    cast: Callable[[pd.Series], pd.Series],
    detail: str,
) -> None:
    bad = good.copy()
    bad[column] = cast(bad[column])
    exc = _fails(bad, reports, f"bars type {column}")
    assert exc.expectation == "expect_column_type_to_be" and exc.detail == detail
    assert exc.check == f"{column} is {detail.rsplit(' ', 1)[-1]}"


def test_symbol_type(reports: Path, good: pd.DataFrame) -> None:
    bad = good.copy()
    bad.loc[_row(bad, "NDX"), "symbol"] = 7
    exc = _fails(bad, reports, "bars symbol type")
    assert (exc.expectation, exc.symbol, exc.session) == (
        "expect_column_values_to_be_in_type_list", "7", "2018-12-31"
    )  # fmt: skip
    assert exc.detail == "symbol=7"


def test_warning_does_not_hide_errors_and_errors_are_listed(
    reports: Path, good: pd.DataFrame, reference: pd.DataFrame
) -> None:
    bad = good.copy()
    _split(bad, adjusted=False)  # error (split) + warning (robust z of the halving)
    bad.loc[_row(bad, "NDX"), "volume"] = -5.0  # error earlier in suite order
    summary = validate_bars(bad, reports, label="bars mixed", reference=reference,
                            raise_on_failure=False)  # fmt: skip
    assert not summary.success
    assert summary.failed == ["expect_column_values_to_be_between",
                              "expect_column_values_to_be_null"]  # fmt: skip
    assert [(e.symbol, e.session) for e in summary.errors] == [
        ("NDX", "2018-12-31"), ("AAPL", "2018-12-27")
    ]  # fmt: skip
    assert [(w.symbol, w.session) for w in summary.warnings] == [("AAPL", "2018-12-27")]


def test_bar_rules_are_checked() -> None:
    with pytest.raises(ValueError, match=r"stale_run=1 must be >= 2"):
        BarRules(stale_run=1)
    with pytest.raises(ValueError, match=r"split_factors=\(0.5,\) must be non-empty and > 1"):
        BarRules(split_factors=(0.5,))
    assert set(BarRules(split_factors=(2.0,)).all_split_factors) == {2.0, 0.5}


def test_derived_columns_keep_rows_and_flag_input_clashes(good: pd.DataFrame) -> None:
    shuffled = good.sample(frac=1.0, random_state=1)
    derived = derive_bar_columns(shuffled)
    assert list(derived.columns) == [*BAR_COLUMNS, *DERIVED_BAR_COLUMNS]
    assert derived.index.equals(shuffled.index)
    spx = derived[derived["symbol"] == "SPX"].sort_values("session")
    np.testing.assert_allclose(
        spx["ret"].to_numpy()[1:], np.diff(np.log(spx["adj_close"].to_numpy()))
    )
    assert (
        pd.isna(spx["prev_session"].iloc[0])
        and spx["prev_session"].iloc[1] == spx["session"].iloc[0]
    )
    clash = derive_bar_columns(good.assign(ret=1.0))
    assert "ret (input)" in clash.columns
    empty = derive_bar_columns(good.iloc[:0], reference=good, expected=LISTED)
    assert empty.empty and list(empty.columns) == [*BAR_COLUMNS, *DERIVED_BAR_COLUMNS]


@pytest.mark.slow
def test_real_panel_2005_2018_has_no_error(tmp_path: Path) -> None:
    from pipelines.sources import load_replay_panel

    panel = load_replay_panel()
    bars = panel[
        (panel["session"] >= pd.Timestamp("2005-01-01"))
        & (panel["session"] <= pd.Timestamp("2018-12-31"))
    ].reset_index(drop=True)
    spans = bars.groupby("symbol")["session"].agg(["min", "max"])
    universe = {s: (r["min"].date(), r["max"].date()) for s, r in spans.iterrows()}
    assert len(universe) == 22
    summary = validate_bars(
        bars, tmp_path / "reports", label="bars real 2005-2018", expected=universe,
        raise_on_failure=False,
    )  # fmt: skip
    assert summary.errors == [] and summary.success
    # a few real extreme returns (e.g. AMD on 2016-04-22) are warnings
    assert 0 < len(summary.warnings) < 100
    assert ("AMD", "2016-04-22") in {(w.symbol, w.session) for w in summary.warnings}
