"""GX guard for features: warm-up, finiteness, ranges; planted defects name their culprit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import great_expectations  # noqa: F401  (import GX before anything that may pull in airflow)
import numpy as np
import pandas as pd
import pytest

from pipelines import calendar
from pipelines.quality import (
    ROW_IN_SYMBOL,
    DataQualityError,
    ValidationSummary,
    derive_feature_columns,
    feature_checks,
    validate_features,
)

SESSIONS = calendar.sessions_between("2018-10-01", "2018-12-31")
LAST = pd.Timestamp(SESSIONS[-1])
COLUMNS = ("a", "b", "c")
WARMUP = {"a": 5, "b": 0, "c": 3}
RANGES: dict[str, tuple[float | None, float | None]] = {"a": (0.0, 10.0), "b": (None, 0.0)}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reports")


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    """Two symbols; ``a`` null in its warm-up, ``c`` null on every row of Y (source lacks it)."""
    parts = []
    days = pd.Series(pd.DatetimeIndex([pd.Timestamp(d) for d in SESSIONS]))
    n = len(days)
    for k, symbol in enumerate(("X", "Y")):
        a = np.linspace(1.0, 9.0, n) + k
        a[: WARMUP["a"]] = np.nan
        c = np.full(n, np.nan) if symbol == "Y" else np.r_[np.full(3, np.nan), np.ones(n - 3)]
        parts.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "session": days,
                    "event_timestamp": calendar.closes_for(days),
                    "a": a,
                    "b": -np.arange(n, dtype="float64"),
                    "c": c,
                }
            )
        )
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["session", "symbol"], kind="stable").reset_index(drop=True)


def _validate(df: pd.DataFrame, reports: Path, label: str, **kwargs: Any) -> ValidationSummary:
    return validate_features(
        df, reports, label=label, columns=COLUMNS, warmup=WARMUP, ranges=RANGES, **kwargs
    )


def _at(df: pd.DataFrame, symbol: str, position: int) -> int:
    """Index of the symbol's row number ``position`` (by session)."""
    return int(df.index[df["symbol"] == symbol][position])


def test_good_features_pass_and_build_docs(reports: Path, good: pd.DataFrame) -> None:
    summary = validate_features(
        good, reports, label="features good", columns=COLUMNS, warmup=WARMUP, ranges=RANGES
    )
    assert summary.success and summary.failed == [] and summary.warnings == []
    assert summary.evaluated == len(feature_checks(COLUMNS, WARMUP, RANGES))
    assert summary.n_rows == len(good)
    assert summary.docs_index is not None and summary.docs_index.is_file()
    assert summary.docs_page is not None and summary.docs_page.is_file()
    assert "/validations/features/" in summary.docs_page.as_posix()
    assert "[error] a not null after its warm-up of 5 rows" in summary.docs_page.read_text()
    # the suite file is not rewritten when nothing changed
    suite_file = reports / "gx" / "expectations" / "features.json"
    before = suite_file.stat().st_mtime_ns
    again = _validate(good, reports, "features again", build_docs=False)
    assert again.success and suite_file.stat().st_mtime_ns == before


def _inf(df: pd.DataFrame) -> None:
    df.loc[_at(df, "Y", 40), "b"] = -np.inf


def _null_after_warmup(df: pd.DataFrame) -> None:
    df.loc[_at(df, "X", 5), "a"] = np.nan


def _out_of_range(df: pd.DataFrame) -> None:
    df.loc[_at(df, "Y", 30), "a"] = 11.5


def _partly_null(df: pd.DataFrame) -> None:
    df.loc[_at(df, "Y", 10), "c"] = 2.0  # Y now has c: its other rows after warm-up must too


def _duplicate(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.loc[[_at(df, "X", 20)]]], ignore_index=True)


def _missing_column(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="b")


def _naive_timestamp(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(event_timestamp=df["event_timestamp"].dt.tz_localize(None))


Plant = Callable[[pd.DataFrame], pd.DataFrame | None]
DEFECTS: list[tuple[str, Plant, str, str, str | None, str | None, str]] = [
    ("inf", _inf, "expect_column_values_to_be_between", "b finite", "Y", "2018-11-27",
     "b=-inf"),
    ("null after warm-up", _null_after_warmup, "expect_column_values_to_not_be_null",
     "a not null after its warm-up of 5 rows", "X", "2018-10-08", "a=null row_in_symbol=5"),
    ("out of range", _out_of_range, "expect_column_values_to_be_between", "a within [0, 10]",
     "Y", "2018-11-12", "a=11.5"),
    ("partly null", _partly_null, "expect_column_values_to_not_be_null",
     "c not null after its warm-up of 3 rows", "Y", "2018-10-04", "c=null row_in_symbol=3"),
    ("duplicate", _duplicate, "expect_compound_columns_to_be_unique", "symbol, session unique",
     "X", "2018-10-29", "duplicate bar"),
    ("missing column", _missing_column, "expect_table_columns_to_match_set",
     "columns include symbol, session, event_timestamp, a, b, c", None, None,
     "missing columns ['b']"),
    ("naive timestamp", _naive_timestamp, "expect_column_type_to_be",
     "event_timestamp is datetime64[ns, UTC]", None, None,
     "event_timestamp has dtype datetime64[ns], expected datetime64[ns, UTC]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("plant", "expectation", "check", "symbol", "session", "detail"),
    [d[1:] for d in DEFECTS],
    ids=[d[0] for d in DEFECTS],
)
def test_planted_feature_defect_names_expectation_symbol_session(
    reports: Path,
    good: pd.DataFrame,
    plant: Plant,
    expectation: str,
    check: str,
    symbol: str | None,
    session: str | None,
    detail: str,
) -> None:
    bad = good.copy()
    planted = plant(bad)
    bad = planted if planted is not None else bad
    with pytest.raises(DataQualityError) as err:
        _validate(bad, reports, f"features defect {expectation}")
    exc = err.value
    assert (exc.expectation, exc.check, exc.symbol, exc.session) == (
        expectation, check, symbol, session
    )  # fmt: skip
    assert exc.detail.startswith(detail)
    assert str(exc).startswith(f"data quality failed: {expectation}({check})")
    assert exc.summary is not None and exc.summary.failed[0] == expectation
    assert exc.summary.docs_page is not None and exc.summary.docs_page.is_file()


def test_warmup_boundary(reports: Path, good: pd.DataFrame) -> None:
    inside = good.copy()
    inside.loc[_at(inside, "X", 4), "a"] = np.nan  # already null: row 4 < warm-up 5
    inside.loc[_at(inside, "X", 2), "c"] = np.nan  # row 2 < warm-up 3
    assert _validate(inside, reports, "features warm-up", build_docs=False).success


def test_sessions_limit_rows_but_warmup_counts_on_whole_frame(
    reports: Path, good: pd.DataFrame
) -> None:
    bad = good.copy()
    bad.loc[_at(bad, "X", 30), "a"] = 99.0  # old session: not validated below
    summary = _validate(bad, reports, "features last", sessions=[LAST.date()])
    assert summary.success and summary.n_rows == 2
    bad.loc[_at(bad, "Y", -1), "a"] = np.nan  # last row of Y: row 62, far past the warm-up
    with pytest.raises(DataQualityError) as err:
        _validate(bad, reports, "features last null", sessions=[LAST])
    assert (err.value.symbol, err.value.session) == ("Y", "2018-12-31")
    assert err.value.detail == f"a=null {ROW_IN_SYMBOL}={len(SESSIONS) - 1}"
    # the same last rows validated alone would be inside the warm-up (row 0): no error
    alone = bad[bad["session"] == LAST].reset_index(drop=True)
    assert _validate(alone, reports, "features alone", build_docs=False).success


def test_missing_warmup_is_a_clear_error(good: pd.DataFrame, reports: Path) -> None:
    with pytest.raises(ValueError, match=r"no warm-up declared for column\(s\) \['c'\]"):
        validate_features(
            good, reports, label="x", columns=COLUMNS, warmup={"a": 1, "b": 0}, ranges={}
        )


def test_derived_feature_columns(good: pd.DataFrame) -> None:
    shuffled = good.sample(frac=1.0, random_state=2)
    derived = derive_feature_columns(shuffled, COLUMNS, WARMUP)
    assert derived.index.equals(shuffled.index)
    x = derived[derived["symbol"] == "X"].sort_values("session")
    assert x[ROW_IN_SYMBOL].tolist() == list(range(len(SESSIONS)))
    assert x["warm__a"].tolist() == [False] * 5 + [True] * (len(SESSIONS) - 5)
    y = derived[derived["symbol"] == "Y"]
    assert not y["warm__c"].any() and y["warm__b"].all()
