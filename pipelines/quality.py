"""Great Expectations 1.x guard for canonical bars.

:func:`validate_bars` runs the suite ``bars`` through a GX checkpoint of a FILE data context rooted
at ``reports_dir`` (Data Docs end up in
``reports_dir/gx/uncommitted/data_docs/local_site/index.html``) and raises
:class:`DataQualityError` naming the first failing expectation, the symbol, the session and the
offending values.

The suite (see :func:`bar_checks`):

- columns are exactly ``schema.BAR_COLUMNS`` (in order);
- ``symbol``, ``session`` and ``close`` are non-null;
- ``open``/``high``/``low``/``close``/``adj_close`` > 0 (nulls ignored); ``volume`` >= 0;
- ``high >= low``, ``high >= open``, ``high >= close``, ``open >= low``, ``close >= low`` (rows
  where either value is null are ignored);
- (``symbol``, ``session``) is unique.

One more check runs in pandas after the checkpoint: every ``session`` is an NYSE session
(``expect_session_is_nyse_session``).

``great_expectations`` is imported inside the functions that need it (importing it costs ~6 s).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from pipelines import calendar
from pipelines.schema import BAR_COLUMNS, BAR_PRICE_COLUMNS

SUITE_NAME = "bars"
DATASOURCE_NAME = "afterbell_frames"
ASSET_NAME = "bars"
BATCH_DEFINITION_NAME = "whole_frame"
VALIDATION_NAME = "bars"
CHECKPOINT_NAME = "bars"
DOCS_SITE = "local_site"
#: Validation runs listed on the Data Docs index. GX re-reads every listed result each time the
#: index is rebuilt, so without a cap each run gets ~10 ms slower per earlier run.
DOCS_INDEX_LIMIT = 50
SESSION_EXPECTATION = "expect_session_is_nyse_session"
INDEX_COLUMNS: tuple[str, ...] = ("symbol", "session")


class DataQualityError(Exception):
    """Bars failed the data-quality guard.

    Attributes
    ----------
    expectation : str
        Name of the first failing expectation (e.g. ``expect_column_values_to_not_be_null``).
    symbol : str or None
        Symbol of the first offending row, when the failure is about rows.
    session : str or None
        ``YYYY-MM-DD`` of the first offending row (or of the frame, when it holds one session).
    detail : str
        The offending values, e.g. ``high=10.0 low=12.0``.
    check : str
        Short statement of the rule, e.g. ``high >= low``.
    summary : ValidationSummary or None
        Summary of the whole validation run.
    """

    def __init__(
        self,
        expectation: str,
        symbol: str | None,
        session: str | None,
        detail: str,
        *,
        check: str = "",
        summary: ValidationSummary | None = None,
    ) -> None:
        self.expectation = expectation
        self.symbol = symbol
        self.session = session
        self.detail = detail
        self.check = check
        self.summary = summary
        super().__init__(self._message())

    def _message(self) -> str:
        where = ""
        if self.symbol is not None:
            where += f" for symbol {self.symbol}"
        if self.session is not None:
            where += f" on session {self.session}"
        rule = f"({self.check})" if self.check else ""
        return f"data quality failed: {self.expectation}{rule}{where}: {self.detail}"

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the exception picklable (Airflow/multiprocessing) despite keyword-only fields
        return (
            _rebuild_error,
            (self.expectation, self.symbol, self.session, self.detail, self.check),
        )


def _rebuild_error(
    expectation: str, symbol: str | None, session: str | None, detail: str, check: str
) -> DataQualityError:
    return DataQualityError(expectation, symbol, session, detail, check=check)


@dataclass
class ValidationSummary:
    """Outcome of one :func:`validate_bars` run.

    Attributes
    ----------
    success : bool
        Whether every expectation passed.
    evaluated : int
        Number of expectations evaluated (the GX suite plus the session check).
    failed : list[str]
        Names of the failing expectations, in suite order (may repeat a name for other columns).
    docs_index : Path or None
        Data Docs ``index.html`` (None when docs were not built).
    n_rows : int
        Rows validated.
    """

    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)
    docs_index: Path | None = None
    n_rows: int = 0


@dataclass(frozen=True)
class BarCheck:
    """One expectation of the bars suite, independent of GX.

    Attributes
    ----------
    expectation : str
        GX expectation type (snake case).
    kwargs : dict
        Its arguments.
    check : str
        Short human statement of the rule.
    """

    expectation: str
    kwargs: dict[str, Any]
    check: str


def bar_checks() -> list[BarCheck]:
    """The ``bars`` suite, in the order failures are reported.

    Returns
    -------
    list[BarCheck]
        Schema first, then nulls, positivity, OHLC consistency and uniqueness.
    """
    checks = [
        BarCheck(
            "expect_table_columns_to_match_ordered_list",
            {"column_list": list(BAR_COLUMNS)},
            "columns == " + ", ".join(BAR_COLUMNS),
        )
    ]
    checks += [
        BarCheck("expect_column_values_to_not_be_null", {"column": c}, f"{c} not null")
        for c in ("symbol", "session", "close")
    ]
    checks += [
        BarCheck(
            "expect_column_values_to_be_between",
            {"column": c, "min_value": 0, "strict_min": True},
            f"{c} > 0",
        )
        for c in BAR_PRICE_COLUMNS
    ]
    checks.append(
        BarCheck(
            "expect_column_values_to_be_between",
            {"column": "volume", "min_value": 0},
            "volume >= 0",
        )
    )
    for a, b in (("high", "low"), ("high", "open"), ("high", "close"), ("open", "low"),
                 ("close", "low")):  # fmt: skip
        checks.append(
            BarCheck(
                "expect_column_pair_values_a_to_be_greater_than_b",
                {
                    "column_A": a,
                    "column_B": b,
                    "or_equal": True,
                    "ignore_row_if": "either_value_is_missing",
                },
                f"{a} >= {b}",
            )
        )
    checks.append(
        BarCheck(
            "expect_compound_columns_to_be_unique",
            {"column_list": list(INDEX_COLUMNS)},
            "symbol, session unique",
        )
    )
    return checks


# --------------------------------------------------------------------------------- pandas side
def offending_rows(df: pd.DataFrame, check: BarCheck) -> pd.Series:
    """Boolean mask of the rows of ``df`` that break ``check`` (pandas re-computation).

    Used when GX does not report the offending rows (and by the tests as a cross-check).
    Table-level checks (the column list) return an all-False mask.
    """
    kw = check.kwargs
    false = pd.Series(False, index=df.index)
    if check.expectation == "expect_column_values_to_not_be_null":
        return df[kw["column"]].isna() if kw["column"] in df else false
    if check.expectation == "expect_column_values_to_be_between":
        col = kw["column"]
        if col not in df:
            return false
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values <= kw["min_value"] if kw.get("strict_min") else values < kw["min_value"]
        return bad & values.notna()
    if check.expectation == "expect_column_pair_values_a_to_be_greater_than_b":
        a, b = kw["column_A"], kw["column_B"]
        if a not in df or b not in df:
            return false
        return (df[a] < df[b]) & df[a].notna() & df[b].notna()
    if check.expectation == "expect_compound_columns_to_be_unique":
        cols = [c for c in kw["column_list"] if c in df]
        return df.duplicated(cols, keep=False) if cols else false
    return false


def _non_sessions(df: pd.DataFrame) -> pd.Series:
    """Mask of rows whose (non-null) ``session`` is not an NYSE session."""
    if "session" not in df.columns or df.empty:
        return pd.Series(False, index=df.index)
    days = pd.to_datetime(df["session"], errors="coerce")
    present = days.dropna()
    if present.empty:
        return pd.Series(False, index=df.index)
    lo, hi = present.min().date(), present.max().date()
    nyse = pd.DatetimeIndex(calendar.sessions_between(lo, hi))
    return days.notna() & ~days.dt.normalize().isin(nyse)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "null"
    if isinstance(value, pd.Timestamp | datetime):
        ts = pd.Timestamp(value)
        return ts.date().isoformat() if ts == ts.normalize() else ts.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _day(value: Any) -> str | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        return str(value)
    return None if pd.isna(ts) else ts.date().isoformat()


def _single(df: pd.DataFrame, column: str) -> str | None:
    """The one value of ``column`` when the frame holds exactly one, else None."""
    if column not in df.columns:
        return None
    values = df[column].dropna().unique()
    if len(values) != 1:
        return None
    return _day(values[0]) if column == "session" else str(values[0])


def _value_columns(check: BarCheck) -> list[str]:
    kw = check.kwargs
    if "column" in kw:
        return [kw["column"]]
    if "column_A" in kw:
        return [kw["column_A"], kw["column_B"]]
    return []


def _row_error(
    df: pd.DataFrame, check: BarCheck, row: dict[str, Any], count: int
) -> DataQualityError:
    symbol = row.get("symbol")
    values = " ".join(f"{c}={_fmt(row.get(c))}" for c in _value_columns(check))
    if check.expectation == "expect_compound_columns_to_be_unique":
        values = "duplicate bar"
    more = f" ({count} offending rows)" if count > 1 else ""
    return DataQualityError(
        check.expectation,
        None if symbol is None or (isinstance(symbol, float) and np.isnan(symbol)) else str(symbol),
        _day(row.get("session")),
        f"{values}{more}",
        check=check.check,
    )


def _pandas_error(df: pd.DataFrame, check: BarCheck) -> DataQualityError | None:
    mask = offending_rows(df, check).to_numpy()
    if not mask.any():
        return None
    first = df.iloc[int(np.flatnonzero(mask)[0])]
    return _row_error(df, check, {str(k): v for k, v in first.items()}, int(mask.sum()))


def _columns_error(df: pd.DataFrame, check: BarCheck, observed: Any) -> DataQualityError:
    got = list(observed) if isinstance(observed, list | tuple) else list(df.columns)
    want = list(check.kwargs["column_list"])
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    parts = []
    if missing:
        parts.append(f"missing columns {missing}")
    if extra:
        parts.append(f"unexpected columns {extra}")
    if not parts:
        parts.append(f"columns out of order: {got}")
    return DataQualityError(
        check.expectation,
        _single(df, "symbol"),
        _single(df, "session"),
        "; ".join(parts),
        check=check.check,
    )


def session_error(df: pd.DataFrame) -> DataQualityError | None:
    """The ``expect_session_is_nyse_session`` failure of ``df``, if any."""
    mask = _non_sessions(df).to_numpy()
    if not mask.any():
        return None
    row = df.iloc[int(np.flatnonzero(mask)[0])]
    day = _day(row["session"])
    try:
        calendar.require_session(day or "")
        detail = f"session={day} is not an NYSE session"
    except ValueError as exc:
        detail = str(exc)
    count = int(mask.sum())
    if count > 1:
        detail += f" ({count} offending rows)"
    symbol = row.get("symbol")
    return DataQualityError(
        SESSION_EXPECTATION,
        None if pd.isna(symbol) else str(symbol),
        day,
        detail,
        check="session in the NYSE calendar",
    )


# --------------------------------------------------------------------------------- GX side
def _quiet_gx() -> None:
    for name in ("great_expectations", "great_expectations.core", "py.warnings"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _gx_expectation(check: BarCheck) -> Any:
    import great_expectations.expectations as gxe

    classes = {
        "expect_table_columns_to_match_ordered_list": gxe.ExpectTableColumnsToMatchOrderedList,
        "expect_column_values_to_not_be_null": gxe.ExpectColumnValuesToNotBeNull,
        "expect_column_values_to_be_between": gxe.ExpectColumnValuesToBeBetween,
        "expect_column_pair_values_a_to_be_greater_than_b": (
            gxe.ExpectColumnPairValuesAToBeGreaterThanB
        ),
        "expect_compound_columns_to_be_unique": gxe.ExpectCompoundColumnsToBeUnique,
    }
    return classes[check.expectation](**check.kwargs)


def _fingerprint(expectations: list[Any]) -> list[tuple[str, str]]:
    out = []
    for exp in expectations:
        conf = exp.configuration.to_json_dict()
        kwargs = {k: v for k, v in conf.get("kwargs", {}).items() if k != "batch_id"}
        out.append((conf["type"], repr(sorted(kwargs.items()))))
    return out


def _result_format() -> dict[str, Any]:
    return {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": list(INDEX_COLUMNS),
        "partial_unexpected_count": 5,
        "return_unexpected_index_query": False,
    }


def _ensure_definitions(context: Any, checks: list[BarCheck]) -> Any:
    """Create or reuse the datasource, asset, batch definition, suite, validation, checkpoint.

    Returns the checkpoint. Existing definitions are reused; the suite and the checkpoint are
    updated in place when their definition changed.
    """
    import great_expectations as gx
    from great_expectations.exceptions import DataContextError

    try:
        source = context.data_sources.get(DATASOURCE_NAME)
    except (LookupError, DataContextError):
        source = context.data_sources.add_pandas(name=DATASOURCE_NAME)
    try:
        asset = source.get_asset(ASSET_NAME)
    except (LookupError, DataContextError):
        asset = source.add_dataframe_asset(name=ASSET_NAME)
    try:
        batch = asset.get_batch_definition(BATCH_DEFINITION_NAME)
    except (LookupError, DataContextError):
        batch = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION_NAME)

    wanted = [_gx_expectation(c) for c in checks]
    try:
        suite = context.suites.get(SUITE_NAME)
    except (LookupError, DataContextError):
        suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME, expectations=wanted))
    else:
        if _fingerprint(suite.expectations) != _fingerprint(wanted):
            for exp in list(suite.expectations):
                suite.delete_expectation(exp)
            for exp in wanted:
                suite.add_expectation(exp)
            suite.save()

    try:
        validation = context.validation_definitions.get(VALIDATION_NAME)
    except (LookupError, DataContextError):
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=VALIDATION_NAME, data=batch, suite=suite)
        )

    result_format = _result_format()
    try:
        checkpoint = context.checkpoints.get(CHECKPOINT_NAME)
    except (LookupError, DataContextError):
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=CHECKPOINT_NAME,
                validation_definitions=[validation],
                actions=[
                    gx.checkpoint.UpdateDataDocsAction(
                        name="update_data_docs", site_names=[DOCS_SITE]
                    )
                ],
                result_format=result_format,
            )
        )
    else:
        if checkpoint.result_format != result_format:
            checkpoint.result_format = result_format
            checkpoint.save()
    return checkpoint


def _ensure_docs_site(context: Any) -> None:
    """Cap the runs listed on the Data Docs index (saved in ``great_expectations.yml``)."""
    sites = dict(context.variables.data_docs_sites or {})
    site = dict(sites.get(DOCS_SITE) or {})
    if not site:
        return
    index = dict(site.get("site_index_builder") or {"class_name": "DefaultSiteIndexBuilder"})
    if index.get("validation_results_limit") == DOCS_INDEX_LIMIT:
        return
    index["validation_results_limit"] = DOCS_INDEX_LIMIT
    site["site_index_builder"] = index
    context.update_data_docs_site(DOCS_SITE, site)


def _docs_index(context: Any, reports_dir: Path) -> Path | None:
    try:
        urls = context.get_docs_sites_urls(site_name=DOCS_SITE)
    except Exception:  # a broken docs config must not hide the validation outcome
        urls = []
    for entry in urls:
        url = entry.get("site_url") or ""
        if url.startswith("file://"):
            path = Path(unquote(urlparse(url).path))
            if path.is_file():
                return path
    fallback = reports_dir / "gx" / "uncommitted" / "data_docs" / DOCS_SITE / "index.html"
    return fallback if fallback.is_file() else None


def _result_error(df: pd.DataFrame, check: BarCheck, result: Any) -> DataQualityError:
    """DataQualityError of a failing GX expectation result (pandas fallback for the rows)."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        if check.expectation != "expect_table_columns_to_match_ordered_list":
            missing = [c for c in _value_columns(check) if c not in df.columns]
            missing += [c for c in check.kwargs.get("column_list", []) if c not in df.columns]
        else:
            missing = []
        message = (
            f"missing column(s) {missing}"
            if missing
            else str(info.get("exception_message") or "expectation raised").splitlines()[0]
        )
        return DataQualityError(
            check.expectation,
            _single(df, "symbol"),
            _single(df, "session"),
            message,
            check=check.check,
        )
    body = dict(result.result or {})
    if check.expectation == "expect_table_columns_to_match_ordered_list":
        return _columns_error(df, check, body.get("observed_value"))
    rows = body.get("unexpected_index_list") or []
    if rows and isinstance(rows[0], dict) and "symbol" in rows[0]:
        row = dict(rows[0])
        if check.expectation == "expect_compound_columns_to_be_unique":
            row.setdefault("session", None)
        return _row_error(df, check, row, int(body.get("unexpected_count") or len(rows)))
    fallback = _pandas_error(df, check)
    if fallback is not None:
        return fallback
    return DataQualityError(
        check.expectation,
        _single(df, "symbol"),
        _single(df, "session"),
        f"{body.get('unexpected_count', '?')} unexpected value(s)",
        check=check.check,
    )


def _match(checks: list[BarCheck], result: Any) -> int | None:
    conf = result.expectation_config
    kwargs = conf.kwargs
    for i, check in enumerate(checks):
        if check.expectation == conf.type and all(
            kwargs.get(k) == v for k, v in check.kwargs.items()
        ):
            return i
    return None


def validate_bars(
    df: pd.DataFrame,
    reports_dir: Path,
    *,
    label: str,
    build_docs: bool = True,
    raise_on_failure: bool = True,
) -> ValidationSummary:
    """Validate canonical bars with Great Expectations and build Data Docs.

    Parameters
    ----------
    df : pd.DataFrame
        Bars to validate (canonical schema expected).
    reports_dir : Path
        Root of the GX file context (created on first use; reused afterwards).
    label : str
        Run name shown in Data Docs, e.g. ``"bars 2018-12-31"``.
    build_docs : bool, optional
        Run the checkpoint with its ``UpdateDataDocsAction`` (default) or only the validation
        definition (no docs, ``docs_index`` None).
    raise_on_failure : bool, optional
        Raise :class:`DataQualityError` on failure (default); when False return the summary.

    Returns
    -------
    ValidationSummary
        Outcome, expectation counts and the Data Docs index.

    Raises
    ------
    DataQualityError
        For the first failing expectation (suite order, then the NYSE-session check), after the
        docs were built. Its ``summary`` attribute holds the full summary.
    """
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    _quiet_gx()
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(reports_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    checks = bar_checks()
    _ensure_docs_site(context)
    checkpoint = _ensure_definitions(context, checks)

    run_id = RunIdentifier(run_name=label, run_time=datetime.now(UTC))
    frame = df.reset_index(drop=True)
    if build_docs:
        outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        suite_results = [r for vr in outcome.run_results.values() for r in vr.results]
        docs_index = _docs_index(context, reports_dir)
    else:
        validation = checkpoint.validation_definitions[0]
        outcome = validation.run(
            batch_parameters={"dataframe": frame}, result_format=_result_format(), run_id=run_id
        )
        suite_results = list(outcome.results)
        docs_index = None

    failures: list[tuple[int, DataQualityError]] = []
    for result in suite_results:
        if result.success:
            continue
        pos = _match(checks, result)
        check = checks[pos] if pos is not None else None
        if check is None:
            conf = result.expectation_config
            check = BarCheck(conf.type, dict(conf.kwargs), "")
            pos = len(checks)
        assert pos is not None
        failures.append((pos, _result_error(frame, check, result)))
    failures.sort(key=lambda item: item[0])
    errors = [err for _, err in failures]
    non_session = session_error(frame)
    if non_session is not None:
        errors.append(non_session)

    summary = ValidationSummary(
        success=not errors,
        evaluated=len(suite_results) + 1,
        failed=[e.expectation for e in errors],
        docs_index=docs_index,
        n_rows=len(frame),
    )
    if errors and raise_on_failure:
        first = errors[0]
        first.summary = summary
        raise first
    return summary
