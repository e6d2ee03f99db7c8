"""Great Expectations guard: good bars pass with Data Docs, planted defects name their culprit."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import great_expectations  # noqa: F401  (import GX before anything that may pull in airflow)
import pandas as pd
import pytest

from pipelines import calendar
from pipelines.quality import (
    SESSION_EXPECTATION,
    DataQualityError,
    ValidationSummary,
    bar_checks,
    offending_rows,
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
