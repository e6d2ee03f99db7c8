"""Great Expectations 1.x guards for canonical bars and for features, with two severities.

:func:`validate_bars` runs the suite ``bars`` and :func:`validate_features` the suite ``features``,
each through its own GX checkpoint of one FILE data context rooted at ``reports_dir`` (Data Docs
of every run end up in ``reports_dir/gx/uncommitted/data_docs/local_site/``, the run's own page
in :attr:`ValidationSummary.docs_page`).

Every check has a severity, stored in the expectation's ``meta`` (``{"severity": ...}``), in its
GX ``severity`` (``critical`` / ``warning``) and in its notes, so the Data Docs show it:

- ``error``: the run fails; :class:`DataQualityError` names the first failing expectation (suite
  order), the symbol, the session and the offending values, after the docs were built;
- ``warning``: never raises; every offending row (up to :attr:`BarRules.max_warnings` per check)
  becomes a :class:`QualityIssue` in :attr:`ValidationSummary.warnings` and is logged at WARNING.

The ``bars`` suite (see :func:`bar_checks`), on the bars plus derived columns
(:func:`derive_bar_columns`, computed per symbol with the ``reference`` bars prepended so that
the batch's first session has a previous bar and a trailing window):

- columns are exactly ``schema.BAR_COLUMNS`` (in order) followed by :data:`DERIVED_BAR_COLUMNS`;
  ``symbol`` holds ``str``, ``session`` is ``datetime64[ns]``, prices and volume ``float64``;
- ``symbol``, ``session`` and ``close`` are non-null;
- ``open``/``high``/``low``/``close``/``adj_close`` > 0 and finite (nulls ignored); ``volume``
  >= 0 and finite;
- ``high >= low``, ``high >= open``, ``high >= close``, ``open >= low``, ``close >= low`` (rows
  where either value is null are ignored);
- (``symbol``, ``session``) is unique;
- with ``expected`` (the universe's listing ranges): no bar of a symbol outside the universe
  (``known_symbol``); every symbol listed on a session of the batch has a bar on it
  (``missing_listed``); a bar outside its symbol's listing range is a warning (``listed``);
- stale repeated bars: a full OHLC bar identical to the symbol's previous bar (``repeat_bar``), or
  for close-only symbols the close unchanged on :attr:`BarRules.stale_run` sessions in a row
  (``repeat_close``);
- split-like jumps without an adjustment (``split_factor``): the close-to-close ratio within
  :attr:`BarRules.split_tolerance` (log units) of a split factor while ``adj_close`` shows the same
  jump or is missing;
- warning: robust z-score of the log return above :attr:`BarRules.robust_z` (``ret_robust_z``).

One more check runs in pandas after the checkpoint: every ``session`` is an NYSE session
(``expect_session_is_nyse_session``, error).

The ``features`` suite (see :func:`feature_checks`), errors only: the key and feature columns
exist with their types; no +-inf; after its warm-up a feature is non-null unless it is null on
every row of the symbol; values within the declared ranges; (``symbol``, ``session``) unique.

``great_expectations`` is imported inside the functions that need it (importing it costs ~6 s).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from pipelines import calendar
from pipelines.schema import BAR_COLUMNS, BAR_PRICE_COLUMNS

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]

SUITE_NAME = "bars"
DATASOURCE_NAME = "afterbell_frames"
ASSET_NAME = "bars"
BATCH_DEFINITION_NAME = "whole_frame"
VALIDATION_NAME = "bars"
CHECKPOINT_NAME = "bars"
FEATURES_SUITE_NAME = "features"
DOCS_SITE = "local_site"
#: Validation runs listed on the Data Docs index. GX re-reads every listed result each time the
#: index is rebuilt, so without a cap each run gets ~10 ms slower per earlier run.
DOCS_INDEX_LIMIT = 50
SESSION_EXPECTATION = "expect_session_is_nyse_session"
INDEX_COLUMNS: tuple[str, ...] = ("symbol", "session")
FEATURE_KEY_COLUMNS: tuple[str, ...] = ("symbol", "session", "event_timestamp")

#: Columns :func:`derive_bar_columns` appends to the bars (the ``bars`` suite's table).
DERIVED_BAR_COLUMNS: tuple[str, ...] = (
    "prev_session",  # the symbol's previous bar's session (NaT for its first bar)
    "prev_close",
    "prev_adj_close",
    "ret",  # log return of adj_close (close where adj_close is null) over the previous bar
    "ret_robust_z",  # |ret - median| / (1.4826 MAD) over the trailing window of returns
    "repeat_bar",  # full OHLC bars: bars in a row identical to this one (1: fresh)
    "repeat_close",  # close-only bars: closes in a row equal to this one (1: fresh)
    "split_factor",  # split factor matched by an unadjusted close-to-close jump, else null
    "known_symbol",  # 1.0 symbol in the universe, 0.0 not; null without `expected`
    "listed",  # 1.0 session within the symbol's listing range, 0.0 outside; null if unknown
    "missing_listed",  # listed symbols without a bar on this row's session
)
#: Row-position column :func:`derive_feature_columns` appends (0 on each symbol's first row).
ROW_IN_SYMBOL = "row_in_symbol"
#: Prefix of the per-feature flag "a value is required here" (past warm-up, symbol has values).
WARM_PREFIX = "warm__"
_FLOAT_MAX = sys.float_info.max
_MAD_SCALE = 1.4826

_GX_SEVERITY = {"error": "critical", "warning": "warning"}


def _format(
    severity: str,
    expectation: str,
    check: str,
    symbol: str | None,
    session: str | None,
    detail: str,
) -> str:
    where = ""
    if symbol is not None:
        where += f" for symbol {symbol}"
    if session is not None:
        where += f" on session {session}"
    rule = f"({check})" if check else ""
    head = "data quality failed" if severity == "error" else "data quality warning"
    return f"{head}: {expectation}{rule}{where}: {detail}"


@dataclass(frozen=True)
class QualityIssue:
    """One failing check on one row (or on the table).

    Attributes
    ----------
    expectation : str
        GX expectation type (or ``expect_session_is_nyse_session``).
    symbol : str or None
        Symbol of the offending row.
    session : str or None
        ``YYYY-MM-DD`` of the offending row.
    detail : str
        The offending values, e.g. ``ret_robust_z=12.3 ret=-0.25``.
    check : str
        Short statement of the rule.
    severity : {"error", "warning"}
        ``error`` stops the cycle, ``warning`` is only reported.
    """

    expectation: str
    symbol: str | None
    session: str | None
    detail: str
    check: str = ""
    severity: Severity = "error"

    @property
    def message(self) -> str:
        """The one-line message, in the format of :class:`DataQualityError`'s.

        ``data quality failed: {expectation}({check}) for symbol X on session D: {detail}`` for
        an error, ``data quality warning: ...`` for a warning.
        """
        return _format(
            self.severity, self.expectation, self.check, self.symbol, self.session, self.detail
        )


class DataQualityError(Exception):
    """Data failed the data-quality guard (an ``error`` check).

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
    severity : str
        ``"error"``.
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
        severity: Severity = "error",
        summary: ValidationSummary | None = None,
    ) -> None:
        self.expectation = expectation
        self.symbol = symbol
        self.session = session
        self.detail = detail
        self.check = check
        self.severity: Severity = severity
        self.summary = summary
        super().__init__(self._message())

    @classmethod
    def from_issue(cls, issue: QualityIssue) -> DataQualityError:
        """The error raised for ``issue``."""
        return cls(
            issue.expectation,
            issue.symbol,
            issue.session,
            issue.detail,
            check=issue.check,
            severity=issue.severity,
        )

    @property
    def issue(self) -> QualityIssue:
        """The error as a :class:`QualityIssue`."""
        return QualityIssue(
            self.expectation, self.symbol, self.session, self.detail, self.check, self.severity
        )

    def _message(self) -> str:
        return _format(
            "error", self.expectation, self.check, self.symbol, self.session, self.detail
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the exception picklable (Airflow/multiprocessing) despite keyword-only fields
        return (
            _rebuild_error,
            (self.expectation, self.symbol, self.session, self.detail, self.check, self.severity),
        )


def _rebuild_error(
    expectation: str,
    symbol: str | None,
    session: str | None,
    detail: str,
    check: str,
    severity: Severity = "error",
) -> DataQualityError:
    return DataQualityError(expectation, symbol, session, detail, check=check, severity=severity)


@dataclass
class ValidationSummary:
    """Outcome of one :func:`validate_bars` / :func:`validate_features` run.

    Attributes
    ----------
    success : bool
        Whether no ``error`` check failed (warnings do not count).
    evaluated : int
        Number of expectations evaluated (the GX suite, plus the session check for bars).
    failed : list[str]
        Names of the failing ``error`` expectations, in suite order (may repeat a name).
    docs_index : Path or None
        Data Docs ``index.html`` (None when docs were not built).
    n_rows : int
        Rows validated.
    warnings : list[QualityIssue]
        Offending rows of ``warning`` checks (up to ``max_warnings`` per check).
    docs_page : Path or None
        The Data Docs page of this run's validation result (None when docs were not built).
    errors : list[QualityIssue]
        The first offending row of each failing ``error`` check, in the order of ``failed``.
    """

    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)
    docs_index: Path | None = None
    n_rows: int = 0
    warnings: list[QualityIssue] = field(default_factory=list)
    docs_page: Path | None = None
    errors: list[QualityIssue] = field(default_factory=list)


@dataclass(frozen=True)
class BarRules:
    """Thresholds of the derived bar checks.

    Attributes
    ----------
    robust_z : float
        Warning above this robust z-score of a log return (2005-2018 replay panel: 37 of
        ~77k returns exceed 10).
    z_window : int
        Trailing returns (before the bar's own) the median and MAD are taken over.
    z_min_periods : int
        Fewest trailing returns a z-score is computed from (null before).
    stale_run : int
        Error when a close-only symbol's close is the same on this many sessions in a row (the
        replay panel's longest run over 2005-2018 is 3).
    split_factors : tuple[float, ...]
        Split factors; their inverses are added (a 2:1 split halves the price: factor 0.5).
    split_tolerance : float
        Largest ``|log(close / prev_close) - log(factor)|`` of a split-like jump. The replay
        panel's closest real move is AMD on 2016-04-22 (+52%, 0.015 from 3/2), hence 0.01.
    max_warnings : int
        Offending rows reported per warning check.
    """

    robust_z: float = 10.0
    z_window: int = 250
    z_min_periods: int = 60
    stale_run: int = 5
    split_factors: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 10.0, 1.5)
    split_tolerance: float = 0.01
    max_warnings: int = 100

    def __post_init__(self) -> None:
        problems = []
        if not self.robust_z > 0:
            problems.append(f"robust_z={self.robust_z} must be > 0")
        if self.z_window < 2:
            problems.append(f"z_window={self.z_window} must be >= 2")
        if not 2 <= self.z_min_periods <= self.z_window:
            problems.append(f"z_min_periods={self.z_min_periods} must be in [2, z_window]")
        if self.stale_run < 2:
            problems.append(f"stale_run={self.stale_run} must be >= 2")
        if not self.split_factors or any(not f > 1 for f in self.split_factors):
            problems.append(f"split_factors={self.split_factors} must be non-empty and > 1")
        if not 0 < self.split_tolerance < 0.2:
            problems.append(f"split_tolerance={self.split_tolerance} must be in (0, 0.2)")
        if self.max_warnings < 1:
            problems.append(f"max_warnings={self.max_warnings} must be >= 1")
        if problems:
            raise ValueError("invalid BarRules: " + "; ".join(problems))

    @property
    def all_split_factors(self) -> tuple[float, ...]:
        """The split factors and their inverses."""
        return tuple(self.split_factors) + tuple(1.0 / f for f in self.split_factors)


@dataclass(frozen=True)
class BarCheck:
    """One expectation of a suite, independent of GX.

    Attributes
    ----------
    expectation : str
        GX expectation type (snake case).
    kwargs : dict
        Its arguments.
    check : str
        Short human statement of the rule.
    severity : {"error", "warning"}
        What a failure does.
    show : tuple[str, ...]
        Columns whose values the message shows (default: the checked column(s)).
    explain : str
        Appended to the message's values, e.g. ``"identical to the previous bar"``.
    when : str or None
        Boolean column restricting the rows checked (a GX ``row_condition`` ``when == True``).
    """

    expectation: str
    kwargs: dict[str, Any]
    check: str
    severity: Severity = "error"
    show: tuple[str, ...] = ()
    explain: str = ""
    when: str | None = None


def _key_type_checks() -> list[BarCheck]:
    """The type checks of the key columns shared by both suites.

    Returns
    -------
    list[BarCheck]
        ``symbol`` holds ``str``, then ``session`` is ``datetime64[ns]``.
    """
    return [
        BarCheck(
            "expect_column_values_to_be_in_type_list",
            {"column": "symbol", "type_list": ["str"]},
            "symbol is str",
        ),
        BarCheck(
            "expect_column_type_to_be",
            {"column": "session", "type_": "datetime64[ns]"},
            "session is datetime64[ns]",
        ),
    ]


def bar_checks(rules: BarRules | None = None) -> list[BarCheck]:
    """The ``bars`` suite, in the order failures are reported.

    Parameters
    ----------
    rules : BarRules, optional
        Thresholds of the derived checks (defaults: ``BarRules()``).

    Returns
    -------
    list[BarCheck]
        Schema and types first, then nulls, positivity, OHLC consistency, uniqueness, the
        universe, stale bars, split-like jumps and the robust z-score warning.
    """
    rules = rules or BarRules()
    table_columns = [*BAR_COLUMNS, *DERIVED_BAR_COLUMNS]
    checks = [
        BarCheck(
            "expect_table_columns_to_match_ordered_list",
            {"column_list": table_columns},
            "columns == " + ", ".join(BAR_COLUMNS) + " (+ derived)",
        ),
        *_key_type_checks(),
    ]
    checks += [
        BarCheck("expect_column_type_to_be", {"column": c, "type_": "float64"}, f"{c} is float64")
        for c in BAR_COLUMNS[2:]
    ]
    checks += [
        BarCheck("expect_column_values_to_not_be_null", {"column": c}, f"{c} not null")
        for c in ("symbol", "session", "close")
    ]
    checks += [
        BarCheck(
            "expect_column_values_to_be_between",
            {"column": c, "min_value": 0, "strict_min": True, "max_value": _FLOAT_MAX},
            f"{c} > 0 and finite",
        )
        for c in BAR_PRICE_COLUMNS
    ]
    checks.append(
        BarCheck(
            "expect_column_values_to_be_between",
            {"column": "volume", "min_value": 0, "max_value": _FLOAT_MAX},
            "volume >= 0 and finite",
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
    checks += [
        BarCheck(
            "expect_column_values_to_be_in_set",
            {"column": "known_symbol", "value_set": [1.0]},
            "symbol in the universe",
            show=("symbol",),
            explain="unknown symbol (not in the universe)",
        ),
        BarCheck(
            "expect_column_values_to_be_between",
            {"column": "missing_listed", "max_value": 0},
            "every listed symbol has a bar",
        ),
        BarCheck(
            "expect_column_values_to_be_in_set",
            {"column": "listed", "value_set": [1.0]},
            "session within the symbol's listing range",
            severity="warning",
            show=("symbol", "session"),
            explain="bar outside the symbol's listing range",
        ),
        BarCheck(
            "expect_column_values_to_be_between",
            {"column": "repeat_bar", "max_value": 1},
            "OHLC bar differs from the previous bar",
            show=("repeat_bar", "open", "high", "low", "close", "volume", "prev_session"),
            explain="stale bar: identical to the previous bar",
        ),
        BarCheck(
            "expect_column_values_to_be_between",
            {"column": "repeat_close", "max_value": rules.stale_run - 1},
            f"close unchanged on fewer than {rules.stale_run} sessions in a row",
            show=("repeat_close", "close", "prev_session"),
            explain="stale close",
        ),
        BarCheck(
            "expect_column_values_to_be_null",
            {"column": "split_factor"},
            f"no unadjusted split-like jump (tolerance {rules.split_tolerance:g})",
            show=(
                "split_factor",
                "prev_close",
                "close",
                "prev_adj_close",
                "adj_close",
                "prev_session",
            ),
            explain="close-to-close jump of a split factor not adjusted in adj_close",
        ),
        BarCheck(
            "expect_column_values_to_be_between",
            {"column": "ret_robust_z", "max_value": rules.robust_z},
            f"robust z of the log return <= {rules.robust_z:g}",
            severity="warning",
            show=("ret_robust_z", "ret", "prev_close", "close", "adj_close"),
        ),
    ]
    return checks


def feature_checks(
    columns: Sequence[str],
    warmup: Mapping[str, int],
    ranges: Mapping[str, tuple[float | None, float | None]],
) -> list[BarCheck]:
    """The ``features`` suite for ``columns``, in the order failures are reported.

    Parameters
    ----------
    columns : Sequence[str]
        Feature columns.
    warmup : Mapping[str, int]
        Rows of each symbol (from its first row) a feature may be null for.
    ranges : Mapping[str, tuple[float | None, float | None]]
        Inclusive ``(low, high)`` of each feature; ``None`` bound: unbounded; absent: no check.

    Returns
    -------
    list[BarCheck]
        Columns and types, then finiteness, warm-up nulls, ranges and key uniqueness (errors).
    """
    cols = list(columns)
    warm_cols = [WARM_PREFIX + c for c in cols]
    checks = [
        BarCheck(
            "expect_table_columns_to_match_set",
            {
                "column_set": [*FEATURE_KEY_COLUMNS, *cols, ROW_IN_SYMBOL, *warm_cols],
                "exact_match": False,
            },
            "columns include " + ", ".join([*FEATURE_KEY_COLUMNS, *cols]),
        ),
        *_key_type_checks(),
        BarCheck(
            "expect_column_type_to_be",
            {"column": "event_timestamp", "type_": "datetime64[ns, UTC]"},
            "event_timestamp is datetime64[ns, UTC]",
        ),
    ]
    checks += [
        BarCheck("expect_column_type_to_be", {"column": c, "type_": "float64"}, f"{c} is float64")
        for c in cols
    ]
    checks += [
        BarCheck("expect_column_values_to_not_be_null", {"column": c}, f"{c} not null")
        for c in ("symbol", "session")
    ]
    checks += [
        BarCheck(
            "expect_column_values_to_be_between",
            {"column": c, "min_value": -_FLOAT_MAX, "max_value": _FLOAT_MAX},
            f"{c} finite",
        )
        for c in cols
    ]
    checks += [
        BarCheck(
            "expect_column_values_to_not_be_null",
            {"column": c},
            f"{c} not null after its warm-up of {int(warmup[c])} rows",
            show=(c, ROW_IN_SYMBOL),
            when=WARM_PREFIX + c,
        )
        for c in cols
    ]
    for c in cols:
        lo, hi = ranges.get(c, (None, None))
        if lo is None and hi is None:
            continue
        kwargs: dict[str, Any] = {"column": c}
        if lo is not None:
            kwargs["min_value"] = float(lo)
        if hi is not None:
            kwargs["max_value"] = float(hi)
        span = f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
        checks.append(BarCheck("expect_column_values_to_be_between", kwargs, f"{c} within {span}"))
    checks.append(
        BarCheck(
            "expect_compound_columns_to_be_unique",
            {"column_list": list(INDEX_COLUMNS)},
            "symbol, session unique",
        )
    )
    return checks


# --------------------------------------------------------------------------------- derived columns
def _as_sessions(values: Any) -> pd.Series:
    """Coerce to tz-naive ``datetime64[ns]`` (NaT where unparseable)."""
    s = pd.Series(values)
    try:
        out = pd.to_datetime(s, errors="coerce")
    except (TypeError, ValueError):
        out = pd.Series(pd.NaT, index=s.index)
    if isinstance(out.dtype, pd.DatetimeTZDtype):
        out = out.dt.tz_localize(None)
    return out.astype("datetime64[ns]")


def _numbers(df: pd.DataFrame, column: str) -> np.ndarray:
    if column not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _symbol_keys(df: pd.DataFrame) -> np.ndarray:
    if "symbol" not in df.columns:
        return np.full(len(df), "", dtype=object)
    sym = df["symbol"]
    return sym.where(sym.notna(), "\x00null").astype(str).to_numpy(dtype=object)


def _work_frame(df: pd.DataFrame, pos: np.ndarray) -> pd.DataFrame:
    data: dict[str, Any] = {
        "_key": _symbol_keys(df),
        "_session": (
            _as_sessions(df["session"]).to_numpy()
            if "session" in df.columns
            else np.full(len(df), np.datetime64("NaT"), dtype="datetime64[ns]")
        ),
        "_pos": pos,
    }
    for col in BAR_COLUMNS[2:]:
        data[col] = _numbers(df, col)
    return pd.DataFrame(data)


def _runs(eq: np.ndarray) -> np.ndarray:
    """Length of the run of consecutive True in ``eq`` ending at each position, plus 1."""
    idx = np.arange(len(eq))
    last_reset = np.maximum.accumulate(np.where(~eq, idx, 0)) if len(eq) else idx
    return (idx - last_reset + 1).astype("float64")


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equality where NaN equals NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _row_median(a: np.ndarray) -> np.ndarray:
    """Median of each row of a 2-D array without NaN (``np.partition``, faster than np.median)."""
    k = a.shape[1] // 2
    if a.shape[1] % 2:
        return np.partition(a, k, axis=1)[:, k]
    part = np.partition(a, [k - 1, k], axis=1)
    return 0.5 * (part[:, k - 1] + part[:, k])


def robust_z(
    ret: np.ndarray, window: int, min_periods: int, need: np.ndarray | None = None
) -> np.ndarray:
    """Robust z-score of each return against the returns before it.

    Parameters
    ----------
    ret : np.ndarray
        One symbol's returns in session order (NaN where unknown; NaNs are skipped).
    window : int
        Trailing returns (the last ``window`` finite ones before each) the median and the MAD
        are taken over.
    min_periods : int
        Fewest trailing returns; fewer give NaN.
    need : np.ndarray, optional
        Boolean mask of the positions to score (default: all); the others get NaN.

    Returns
    -------
    np.ndarray
        ``|r - median| / (1.4826 * MAD)``; NaN where the return is NaN, the window is too short
        or the MAD is 0.
    """
    out = np.full(len(ret), np.nan)
    finite = np.isfinite(ret)
    idx = np.flatnonzero(finite)
    x = ret[idx]
    wanted = np.ones(len(x), dtype=bool) if need is None else np.asarray(need, dtype=bool)[idx]
    z = np.full(len(x), np.nan)
    full = np.flatnonzero(wanted & (np.arange(len(x)) >= window))
    if len(full):
        win = sliding_window_view(x[:-1], window)[full - window]  # x[k - window : k] per k
        med = _row_median(win)
        mad = _row_median(np.abs(win - med[:, None]))
        with np.errstate(divide="ignore", invalid="ignore"):
            z[full] = np.where(mad > 0, np.abs(x[full] - med) / (_MAD_SCALE * mad), np.nan)
    for i in np.flatnonzero(wanted[: min(window, len(x))]):
        if i < min_periods:
            continue
        w = x[:i]
        med_i = np.median(w)
        mad_i = np.median(np.abs(w - med_i))
        if mad_i > 0:
            z[i] = abs(x[i] - med_i) / (_MAD_SCALE * mad_i)
    out[idx] = z
    return out


def missing_bars(df: pd.DataFrame, expected: Mapping[str, tuple[date, date]]) -> pd.DataFrame:
    """Listed symbols without a bar, on the sessions present in ``df``.

    Parameters
    ----------
    df : pd.DataFrame
        Bars (``symbol``, ``session``).
    expected : Mapping[str, tuple[date, date]]
        Symbol -> (first, last) session of its listing range (inclusive).

    Returns
    -------
    pd.DataFrame
        Columns ``symbol``, ``session``, ``first``, ``last``; sorted by session, symbol.
    """
    cols = ["symbol", "session", "first", "last"]
    if "symbol" not in df.columns or "session" not in df.columns or df.empty:
        return pd.DataFrame(columns=cols)
    sessions = _as_sessions(df["session"])
    days = np.unique(sessions.dropna().to_numpy())
    symbols = df["symbol"].to_numpy(dtype=object)
    parts = []
    for symbol, (first, last) in expected.items():
        lo, hi = np.datetime64(pd.Timestamp(first)), np.datetime64(pd.Timestamp(last))
        listed = days[(days >= lo) & (days <= hi)]
        if not len(listed):
            continue
        have = sessions.to_numpy()[symbols == symbol]
        gone = listed[~np.isin(listed, have)]
        if len(gone):
            parts.append(
                pd.DataFrame({"symbol": symbol, "session": gone, "first": first, "last": last})
            )
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["session", "symbol"], kind="stable").reset_index(drop=True)


def derive_bar_columns(
    df: pd.DataFrame,
    *,
    reference: pd.DataFrame | None = None,
    expected: Mapping[str, tuple[date, date]] | None = None,
    rules: BarRules | None = None,
) -> pd.DataFrame:
    """The ``bars`` suite's table: ``df`` with :data:`DERIVED_BAR_COLUMNS` appended.

    Parameters
    ----------
    df : pd.DataFrame
        Bars to validate (canonical schema expected; anything else is left to the suite).
    reference : pd.DataFrame, optional
        Earlier canonical bars of the same symbols (context only: previous bars and trailing
        windows). Rows whose (symbol, session) is in ``df`` are ignored.
    expected : Mapping[str, tuple[date, date]], optional
        The universe's listing ranges; without it the universe columns are null.
    rules : BarRules, optional
        Thresholds (defaults: ``BarRules()``).

    Returns
    -------
    pd.DataFrame
        ``df`` (same rows, order and index) plus the derived columns. An input column named
        like a derived one is kept as ``"<name> (input)"`` so that the column check reports it.
    """
    rules = rules or BarRules()
    out = df.copy()
    clash = {c: f"{c} (input)" for c in DERIVED_BAR_COLUMNS if c in out.columns}
    if clash:
        out = out.rename(columns=clash)
    n = len(out)
    work = _work_frame(out, np.arange(n))
    if reference is not None and len(reference):
        ref = _work_frame(reference, np.full(len(reference), -1))
        ref = ref[ref["_session"].notna()]
        batch_keys = pd.MultiIndex.from_arrays([work["_key"], work["_session"]])
        ref_keys = pd.MultiIndex.from_arrays([ref["_key"], ref["_session"]])
        ref = ref[~ref_keys.isin(batch_keys)]
        work = pd.concat([ref, work], ignore_index=True)
    work = work.sort_values(["_key", "_session", "_pos"], kind="stable").reset_index(drop=True)

    key = work["_key"].to_numpy(dtype=object)
    ses = work["_session"].to_numpy()
    m = len(work)
    has_prev = np.zeros(m, dtype=bool)
    if m > 1:
        has_prev[1:] = (key[1:] == key[:-1]) & (ses[1:] != ses[:-1])
        has_prev[1:] &= ~np.isnat(ses[1:]) & ~np.isnat(ses[:-1])

    def prev(a: np.ndarray) -> np.ndarray:
        p = (
            np.full(m, np.nan)
            if a.dtype.kind == "f"
            else np.full(m, np.datetime64("NaT"), "M8[ns]")
        )
        p[1:] = a[:-1]
        p[~has_prev] = np.nan if a.dtype.kind == "f" else np.datetime64("NaT")
        return p

    o, h, lo, c, a, v = (work[col].to_numpy(dtype="float64") for col in BAR_COLUMNS[2:])
    price = np.where(np.isnan(a), c, a)
    p_price, p_close, p_adj = prev(price), prev(c), prev(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (price > 0) & (p_price > 0)
        ret = np.where(ok, np.log(np.where(ok, price, 1.0) / np.where(ok, p_price, 1.0)), np.nan)
        okc = (c > 0) & (p_close > 0)
        rc = np.where(okc, np.log(np.where(okc, c, 1.0) / np.where(okc, p_close, 1.0)), np.nan)
        oka = (a > 0) & (p_adj > 0)
        ra = np.where(oka, np.log(np.where(oka, a, 1.0) / np.where(oka, p_adj, 1.0)), np.nan)

    z = np.full(m, np.nan)
    in_batch = work["_pos"].to_numpy() >= 0
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if m else np.zeros(0, int)
    for s, e in zip(starts, [*starts[1:], m][: len(starts)], strict=True):
        z[s:e] = robust_z(ret[s:e], rules.z_window, rules.z_min_periods, in_batch[s:e])

    full = ~np.isnan(o) & ~np.isnan(h) & ~np.isnan(lo) & ~np.isnan(c)
    full_prev = np.zeros(m, dtype=bool)
    full_prev[1:] = full[:-1]
    eq_bar = has_prev & full & full_prev
    for col in (o, h, lo, c, a, v):
        eq_bar &= _same(col, prev(col))
    repeat_bar = np.where(full, _runs(eq_bar), np.nan)
    close_only = ~full & ~np.isnan(c)
    eq_close = has_prev & close_only & (c == p_close)
    repeat_close = np.where(close_only, _runs(eq_close), np.nan)

    factors = np.asarray(rules.all_split_factors, dtype="float64")
    logf = np.log(factors)
    if m:
        dist = np.abs(rc[:, None] - logf[None, :])
        best = np.argmin(np.where(np.isnan(dist), np.inf, dist), axis=1)
        near = dist[np.arange(m), best] <= rules.split_tolerance
        adj_same = np.isnan(ra) | (np.abs(ra - logf[best]) <= rules.split_tolerance)
        split = np.where(near & adj_same, factors[best], np.nan)
    else:
        split = np.full(0, np.nan)

    derived = {
        "prev_session": prev(ses),
        "prev_close": p_close,
        "prev_adj_close": p_adj,
        "ret": ret,
        "ret_robust_z": z,
        "repeat_bar": repeat_bar,
        "repeat_close": repeat_close,
        "split_factor": split,
    }
    pos = work["_pos"].to_numpy()
    batch = pos >= 0
    order = np.argsort(pos[batch], kind="stable")
    for name, values in derived.items():
        out[name] = values[batch][order]

    known = listed = missing = np.full(n, np.nan)
    if expected is not None:
        symbols = (
            out["symbol"] if "symbol" in out.columns else pd.Series([None] * n, index=out.index)
        )
        known = symbols.isin(list(expected)).to_numpy(dtype="float64")
        bounds = pd.DataFrame(
            [(s, pd.Timestamp(f), pd.Timestamp(la)) for s, (f, la) in expected.items()],
            columns=["symbol", "first", "last"],
        ).set_index("symbol")
        first = symbols.map(bounds["first"]).to_numpy(dtype="datetime64[ns]")
        last = symbols.map(bounds["last"]).to_numpy(dtype="datetime64[ns]")
        day = work["_session"].to_numpy()[batch][order]
        inside = (day >= first) & (day <= last)
        listed = np.where(known == 1.0, inside.astype("float64"), np.nan)
        gone = missing_bars(out, expected)
        counts = gone.groupby("session").size() if len(gone) else pd.Series(dtype="float64")
        missing = (
            pd.Series(day).map(counts).fillna(0.0).to_numpy(dtype="float64")
            if len(day)
            else np.full(0, np.nan)
        )
        missing = np.where(np.isnat(day), np.nan, missing)
    out["known_symbol"] = known
    out["listed"] = listed
    out["missing_listed"] = missing
    return out


def derive_feature_columns(
    df: pd.DataFrame, columns: Sequence[str], warmup: Mapping[str, int]
) -> pd.DataFrame:
    """The ``features`` suite's table: ``df`` plus ``row_in_symbol`` and ``warm__<column>``.

    Parameters
    ----------
    df : pd.DataFrame
        Features (``symbol``, ``session``, ``event_timestamp``, ``columns``).
    columns : Sequence[str]
        Feature columns.
    warmup : Mapping[str, int]
        Rows of each symbol (counting from its first row in ``df`` by session) a feature may be
        null for.

    Returns
    -------
    pd.DataFrame
        ``df`` (same rows, order, index) plus ``row_in_symbol`` (0-based position of the row
        within its symbol, by session) and, per feature, ``warm__<column>``: True where a value
        is required (``row_in_symbol >= warmup`` and the symbol has a value of the feature on
        some row of ``df``).
    """
    out = df.copy()
    names = [ROW_IN_SYMBOL, *(WARM_PREFIX + c for c in columns)]
    clash = {c: f"{c} (input)" for c in names if c in out.columns}
    if clash:
        out = out.rename(columns=clash)
    key = pd.Series(_symbol_keys(out), index=out.index)
    sessions = (
        _as_sessions(out["session"])
        if "session" in out.columns
        else pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns]")
    )
    order = pd.DataFrame({"k": key, "s": sessions}).sort_values(["k", "s"], kind="stable")
    row = order.groupby("k", sort=False).cumcount().reindex(out.index)
    out[ROW_IN_SYMBOL] = row.to_numpy(dtype="int64")
    for c in columns:
        if c in out.columns:
            values = pd.Series(_numbers(out, c), index=out.index)
            has_any = values.notna().groupby(key).transform("any").to_numpy(dtype=bool)
            out[WARM_PREFIX + c] = (row.to_numpy() >= int(warmup[c])) & has_any
        else:
            out[WARM_PREFIX + c] = False
    return out


# --------------------------------------------------------------------------------- pandas side
def offending_rows(df: pd.DataFrame, check: BarCheck) -> pd.Series:
    """Boolean mask of the rows of ``df`` that break ``check`` (pandas re-computation).

    Used to locate the offending rows of a failing expectation (and by the tests as a
    cross-check). Table-level checks (column list, column types) return an all-False mask.
    """
    kw = check.kwargs
    false = pd.Series(False, index=df.index)
    col = kw.get("column")
    if col is not None and col not in df.columns:
        return false
    if check.when is not None:
        if check.when not in df.columns:
            return false
        scope = df[check.when].fillna(False).astype(bool)
    else:
        scope = pd.Series(True, index=df.index)
    if check.expectation == "expect_column_values_to_not_be_null":
        return df[col].isna() & scope
    if check.expectation == "expect_column_values_to_be_null":
        return df[col].notna() & scope
    if check.expectation == "expect_column_values_to_be_between":
        values = pd.to_numeric(df[col], errors="coerce")
        bad = pd.Series(False, index=df.index)
        if kw.get("min_value") is not None:
            lo = kw["min_value"]
            bad |= values <= lo if kw.get("strict_min") else values < lo
        if kw.get("max_value") is not None:
            hi = kw["max_value"]
            bad |= values >= hi if kw.get("strict_max") else values > hi
        return bad & values.notna() & scope
    if check.expectation == "expect_column_values_to_be_in_set":
        values = df[col]
        return values.notna() & ~values.isin(kw["value_set"]) & scope
    if check.expectation == "expect_column_values_to_be_in_type_list":
        values = df[col]
        if values.dtype != object:
            return false
        wanted = tuple(str if t == "str" else object for t in kw["type_list"])
        return values.notna() & ~values.map(lambda x: isinstance(x, wanted)).astype(bool)
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
    days = _as_sessions(df["session"])
    present = days.dropna()
    if present.empty:
        return pd.Series(False, index=df.index)
    lo, hi = present.min().date(), present.max().date()
    nyse = pd.DatetimeIndex(calendar.sessions_between(lo, hi))
    return days.notna() & ~days.dt.normalize().isin(nyse)


def _fmt(value: Any) -> str:
    if value is None or value is pd.NaT:
        return "null"
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    if isinstance(value, pd.Timestamp | datetime):
        ts = pd.Timestamp(value)
        if pd.isna(ts):
            return "null"
        return ts.date().isoformat() if ts == ts.normalize() else ts.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if np.isnan(value):
            return "null"
        text = repr(value)
        return text if len(text) <= 12 else f"{value:.8g}"
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


def _symbol_of(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def _row_issue(check: BarCheck, row: Mapping[str, Any], count: int) -> QualityIssue:
    shown = list(check.show) or _value_columns(check)
    values = " ".join(f"{c}={_fmt(row.get(c))}" for c in shown)
    if check.expectation == "expect_compound_columns_to_be_unique":
        values = "duplicate bar"
    if check.explain:
        values = f"{values}: {check.explain}" if values else check.explain
    more = f" ({count} offending rows)" if count > 1 else ""
    return QualityIssue(
        check.expectation,
        _symbol_of(row.get("symbol")),
        _day(row.get("session")),
        f"{values}{more}",
        check.check,
        check.severity,
    )


def _table_issue(df: pd.DataFrame, check: BarCheck, detail: str) -> QualityIssue:
    return QualityIssue(
        check.expectation,
        _single(df, "symbol"),
        _single(df, "session"),
        detail,
        check.check,
        check.severity,
    )


def _columns_issue(df: pd.DataFrame, check: BarCheck, observed: Any) -> QualityIssue:
    got = list(observed) if isinstance(observed, list | tuple) else list(df.columns)
    want = list(check.kwargs.get("column_list") or check.kwargs.get("column_set") or [])
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    parts = []
    if missing:
        parts.append(f"missing columns {missing}")
    if extra and check.kwargs.get("exact_match", True):
        parts.append(f"unexpected columns {extra}")
    if not parts:
        parts.append(f"columns out of order: {got}")
    return _table_issue(df, check, "; ".join(parts))


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
    return DataQualityError(
        SESSION_EXPECTATION,
        _symbol_of(row.get("symbol")),
        day,
        detail,
        check="session in the NYSE calendar",
    )


def _missing_issue(
    df: pd.DataFrame, check: BarCheck, expected: Mapping[str, tuple[date, date]] | None
) -> QualityIssue | None:
    gone = missing_bars(df, expected or {})
    if gone.empty:
        return None
    first = gone.iloc[0]
    more = f"; {len(gone)} missing bars on {gone['session'].nunique()} session(s)"
    return QualityIssue(
        check.expectation,
        str(first["symbol"]),
        _day(first["session"]),
        f"no bar for a listed symbol (listed {_day(first['first'])}..{_day(first['last'])})"
        + (more if len(gone) > 1 else ""),
        check.check,
        check.severity,
    )


# --------------------------------------------------------------------------------- GX side
@dataclass(frozen=True)
class _SuiteNames:
    suite: str
    asset: str
    validation: str
    checkpoint: str


_BARS = _SuiteNames(SUITE_NAME, ASSET_NAME, VALIDATION_NAME, CHECKPOINT_NAME)
_FEATURES = _SuiteNames(
    FEATURES_SUITE_NAME, FEATURES_SUITE_NAME, FEATURES_SUITE_NAME, FEATURES_SUITE_NAME
)


def _quiet_gx() -> None:
    for name in ("great_expectations", "great_expectations.core", "py.warnings"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _gx_expectation(check: BarCheck) -> Any:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    classes = {
        "expect_table_columns_to_match_ordered_list": gxe.ExpectTableColumnsToMatchOrderedList,
        "expect_table_columns_to_match_set": gxe.ExpectTableColumnsToMatchSet,
        "expect_column_type_to_be": gxe.ExpectColumnTypeToBe,
        "expect_column_values_to_be_in_type_list": gxe.ExpectColumnValuesToBeInTypeList,
        "expect_column_values_to_not_be_null": gxe.ExpectColumnValuesToNotBeNull,
        "expect_column_values_to_be_null": gxe.ExpectColumnValuesToBeNull,
        "expect_column_values_to_be_between": gxe.ExpectColumnValuesToBeBetween,
        "expect_column_values_to_be_in_set": gxe.ExpectColumnValuesToBeInSet,
        "expect_column_pair_values_a_to_be_greater_than_b": (
            gxe.ExpectColumnPairValuesAToBeGreaterThanB
        ),
        "expect_compound_columns_to_be_unique": gxe.ExpectCompoundColumnsToBeUnique,
    }
    extra: dict[str, Any] = {}
    if check.when is not None:
        extra["row_condition"] = Column(check.when) == True  # noqa: E712 (a GX condition)
    return classes[check.expectation](
        **check.kwargs,
        **extra,
        meta={"severity": check.severity, "check": check.check},
        notes=f"severity: {check.severity} ({check.check})",
        description=f"[{check.severity}] {check.check}".replace("$", "USD"),
        severity=_GX_SEVERITY[check.severity],
    )


def _fingerprint(expectations: list[Any]) -> list[tuple[str, str, str]]:
    out = []
    for exp in expectations:
        conf = exp.configuration.to_json_dict()
        kwargs = {k: v for k, v in conf.get("kwargs", {}).items() if k != "batch_id"}
        meta = conf.get("meta") or {}
        out.append((conf["type"], repr(sorted(kwargs.items())), repr(sorted(meta.items()))))
    return out


def _result_format() -> dict[str, Any]:
    return {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": list(INDEX_COLUMNS),
        "partial_unexpected_count": 20,
        "return_unexpected_index_query": False,
    }


def _ensure_definitions(context: Any, names: _SuiteNames, checks: list[BarCheck]) -> Any:
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
        asset = source.get_asset(names.asset)
    except (LookupError, DataContextError):
        asset = source.add_dataframe_asset(name=names.asset)
    try:
        batch = asset.get_batch_definition(BATCH_DEFINITION_NAME)
    except (LookupError, DataContextError):
        batch = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION_NAME)

    wanted = [_gx_expectation(c) for c in checks]
    try:
        suite = context.suites.get(names.suite)
    except (LookupError, DataContextError):
        suite = context.suites.add(gx.ExpectationSuite(name=names.suite, expectations=wanted))
    else:
        if _fingerprint(suite.expectations) != _fingerprint(wanted):
            for exp in list(suite.expectations):
                suite.delete_expectation(exp)
            for exp in wanted:
                suite.add_expectation(exp)
            suite.save()

    try:
        validation = context.validation_definitions.get(names.validation)
    except (LookupError, DataContextError):
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=names.validation, data=batch, suite=suite)
        )

    result_format = _result_format()
    try:
        checkpoint = context.checkpoints.get(names.checkpoint)
    except (LookupError, DataContextError):
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=names.checkpoint,
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


def _docs_url_path(context: Any, resource: Any = None) -> Path | None:
    try:
        urls = context.get_docs_sites_urls(resource_identifier=resource, site_name=DOCS_SITE)
    except Exception:  # a broken docs config must not hide the validation outcome
        urls = []
    for entry in urls:
        url = entry.get("site_url") or ""
        if url.startswith("file://"):
            path = Path(unquote(urlparse(url).path))
            if path.is_file():
                return path
    return None


def _docs_index(context: Any, reports_dir: Path) -> Path | None:
    found = _docs_url_path(context)
    if found is not None:
        return found
    fallback = reports_dir / "gx" / "uncommitted" / "data_docs" / DOCS_SITE / "index.html"
    return fallback if fallback.is_file() else None


@dataclass(frozen=True)
class _SuiteRun:
    results: list[Any]
    docs_index: Path | None
    docs_page: Path | None


def _run_suite(
    reports_dir: Path,
    names: _SuiteNames,
    checks: list[BarCheck],
    frame: pd.DataFrame,
    label: str,
    build_docs: bool,
) -> _SuiteRun:
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    _quiet_gx()
    reports_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(reports_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    _ensure_docs_site(context)
    checkpoint = _ensure_definitions(context, names, checks)
    run_id = RunIdentifier(run_name=label, run_time=datetime.now(UTC))
    if build_docs:
        outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        results = [r for vr in outcome.run_results.values() for r in vr.results]
        page = None
        for identifier in outcome.run_results:
            page = _docs_url_path(context, identifier)
        return _SuiteRun(results, _docs_index(context, reports_dir), page)
    validation = checkpoint.validation_definitions[0]
    outcome = validation.run(
        batch_parameters={"dataframe": frame}, result_format=_result_format(), run_id=run_id
    )
    return _SuiteRun(list(outcome.results), None, None)


def _match(checks: list[BarCheck], result: Any) -> int | None:
    conf = result.expectation_config
    kwargs = conf.kwargs
    for i, check in enumerate(checks):
        if check.expectation == conf.type and all(
            kwargs.get(k) == v for k, v in check.kwargs.items()
        ):
            return i
    return None


def _result_issues(
    df: pd.DataFrame, check: BarCheck, result: Any, limit: int
) -> tuple[list[QualityIssue], int]:
    """Issues (up to ``limit`` rows) of a failing GX result, and the offending row count."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        missing = [c for c in _value_columns(check) if c not in df.columns]
        if check.expectation != "expect_table_columns_to_match_ordered_list":
            missing += [c for c in check.kwargs.get("column_list", []) if c not in df.columns]
        if check.when is not None and check.when not in df.columns:
            missing.append(check.when)
        message = (
            f"missing column(s) {missing}"
            if missing
            else str(info.get("exception_message") or "expectation raised").splitlines()[0]
        )
        return [_table_issue(df, check, message)], 1
    body = dict(result.result or {})
    if check.expectation in (
        "expect_table_columns_to_match_ordered_list",
        "expect_table_columns_to_match_set",
    ):
        return [_columns_issue(df, check, body.get("observed_value"))], 1
    if check.expectation == "expect_column_type_to_be" or (
        check.expectation == "expect_column_values_to_be_in_type_list" and "observed_value" in body
    ):
        column = check.kwargs["column"]
        want = check.kwargs.get("type_") or check.kwargs.get("type_list")
        observed = str(df[column].dtype) if column in df.columns else body.get("observed_value")
        return [_table_issue(df, check, f"{column} has dtype {observed}, expected {want}")], 1
    mask = offending_rows(df, check).to_numpy()
    count = int(mask.sum())
    if count:
        positions = np.flatnonzero(mask)[: max(1, limit)]
        rows = df.iloc[positions].to_dict("records")
        per_row = 1 if limit > 1 else count
        return [_row_issue(check, {str(k): v for k, v in r.items()}, per_row) for r in rows], count
    partial = body.get("partial_unexpected_index_list") or []
    if partial and isinstance(partial[0], dict):
        n = int(body.get("unexpected_count") or len(partial))
        return [_row_issue(check, dict(partial[0]), n)], n
    detail = f"{body.get('unexpected_count', '?')} unexpected value(s)"
    return [_table_issue(df, check, detail)], 1


def _collect(
    df: pd.DataFrame,
    checks: list[BarCheck],
    results: list[Any],
    max_warnings: int,
    expected: Mapping[str, tuple[date, date]] | None = None,
) -> tuple[list[QualityIssue], list[QualityIssue]]:
    """Errors (first row of each failing error check) and warnings, both in suite order."""
    found: list[tuple[int, list[QualityIssue], int]] = []
    for result in results:
        if result.success:
            continue
        pos = _match(checks, result)
        if pos is None:
            conf = result.expectation_config
            meta = conf.meta or {}
            severity: Severity = "warning" if meta.get("severity") == "warning" else "error"
            check = BarCheck(conf.type, dict(conf.kwargs), "", severity)
            pos = len(checks)
        else:
            check = checks[pos]
        limit = max_warnings if check.severity == "warning" else 1
        if check.kwargs.get("column") == "missing_listed":
            issue = _missing_issue(df, check, expected)
            issues, count = (
                ([issue], 1) if issue is not None else _result_issues(df, check, result, 1)
            )
        else:
            issues, count = _result_issues(df, check, result, limit)
        if check.severity == "warning" and count > len(issues):
            log.warning(
                "%s(%s): %d offending rows, first %d reported",
                check.expectation, check.check, count, len(issues),
            )  # fmt: skip
        found.append((pos, issues, count))
    found.sort(key=lambda item: item[0])
    errors = [i for _, issues, _ in found for i in issues if i.severity == "error"]
    warnings = [i for _, issues, _ in found for i in issues if i.severity == "warning"]
    return errors, warnings


def _finish(
    errors: list[QualityIssue],
    warnings: list[QualityIssue],
    evaluated: int,
    run: _SuiteRun,
    n_rows: int,
    raise_on_failure: bool,
) -> ValidationSummary:
    for w in warnings:
        log.warning("%s", w.message)
    summary = ValidationSummary(
        success=not errors,
        evaluated=evaluated,
        failed=[e.expectation for e in errors],
        docs_index=run.docs_index,
        n_rows=n_rows,
        warnings=warnings,
        docs_page=run.docs_page,
        errors=errors,
    )
    if errors and raise_on_failure:
        first = DataQualityError.from_issue(errors[0])
        first.summary = summary
        raise first
    return summary


def validate_bars(
    df: pd.DataFrame,
    reports_dir: Path,
    *,
    label: str,
    build_docs: bool = True,
    raise_on_failure: bool = True,
    expected: Mapping[str, tuple[date, date]] | None = None,
    reference: pd.DataFrame | None = None,
    rules: BarRules | None = None,
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
        definition (no docs, ``docs_index`` and ``docs_page`` None).
    raise_on_failure : bool, optional
        Raise :class:`DataQualityError` on an error (default); when False return the summary.
    expected : Mapping[str, tuple[date, date]], optional
        The universe's listing ranges (symbol -> first, last session). Every symbol listed on a
        session of the batch must have a bar on it; a bar of another symbol is an error.
    reference : pd.DataFrame, optional
        Earlier canonical bars of the same symbols (e.g. from the lake), context only: they give
        the batch's first sessions a previous bar and a trailing window. Not validated.
    rules : BarRules, optional
        Thresholds of the derived checks (default ``BarRules()``).

    Returns
    -------
    ValidationSummary
        Outcome, warnings, expectation counts and the Data Docs index and page.

    Raises
    ------
    DataQualityError
        For the first failing error check (suite order, then the NYSE-session check), after the
        docs were built. Its ``summary`` attribute holds the full summary.
    """
    rules = rules or BarRules()
    checks = bar_checks(rules)
    frame = derive_bar_columns(
        df.reset_index(drop=True), reference=reference, expected=expected, rules=rules
    )
    run = _run_suite(Path(reports_dir), _BARS, checks, frame, label, build_docs)
    errors, warnings = _collect(frame, checks, run.results, rules.max_warnings, expected)
    non_session = session_error(frame)
    if non_session is not None:
        errors.append(non_session.issue)
    return _finish(errors, warnings, len(run.results) + 1, run, len(frame), raise_on_failure)


def validate_features(
    df: pd.DataFrame,
    reports_dir: Path,
    *,
    label: str,
    columns: Sequence[str],
    warmup: Mapping[str, int],
    ranges: Mapping[str, tuple[float | None, float | None]],
    sessions: Collection[date | pd.Timestamp | str] | None = None,
    build_docs: bool = True,
    raise_on_failure: bool = True,
) -> ValidationSummary:
    """Validate a features frame with the GX suite ``features`` and build Data Docs.

    Parameters
    ----------
    df : pd.DataFrame
        Features: ``symbol``, ``session``, ``event_timestamp`` and ``columns`` (``float64``).
        Give each symbol's whole history in the frame: warm-up rows are counted from its first
        row (by session).
    reports_dir : Path
        Root of the GX file context (the one :func:`validate_bars` uses).
    label : str
        Run name shown in Data Docs, e.g. ``"features 2018-12-31"``.
    columns : Sequence[str]
        Feature columns to check.
    warmup : Mapping[str, int]
        Per feature, the rows of a symbol (from its first row) that may be null; later rows
        must be non-null unless the feature is null on every row of the symbol (a source that
        lacks the input). Required for every column.
    ranges : Mapping[str, tuple[float | None, float | None]]
        Per feature, the inclusive ``(low, high)`` its values must lie in (nulls ignored;
        ``None``: unbounded; a column absent from the mapping has no range check).
    sessions : Collection, optional
        Only rows of these sessions are validated (e.g. the newly written ones); the warm-up is
        still counted on the whole frame. Default: every row.
    build_docs : bool, optional
        Run the checkpoint with its ``UpdateDataDocsAction`` (default) or only the validation.
    raise_on_failure : bool, optional
        Raise :class:`DataQualityError` on an error (default); when False return the summary.

    Returns
    -------
    ValidationSummary
        Outcome, expectation counts and the Data Docs index and page.

    Raises
    ------
    ValueError
        If a column has no warm-up.
    DataQualityError
        For the first failing expectation (suite order), after the docs were built.
    """
    cols = list(columns)
    lacking = [c for c in cols if c not in warmup]
    if lacking:
        raise ValueError(f"validate_features: no warm-up declared for column(s) {lacking}")
    checks = feature_checks(cols, warmup, ranges)
    frame = derive_feature_columns(df, cols, warmup)
    if sessions is not None:
        wanted = pd.DatetimeIndex([pd.Timestamp(calendar.to_date(s)) for s in sessions])
        keep = (
            _as_sessions(frame["session"]).isin(wanted)
            if "session" in frame.columns
            else pd.Series(True, index=frame.index)
        )
        frame = frame.loc[keep.to_numpy()]
    frame = frame.reset_index(drop=True)
    run = _run_suite(Path(reports_dir), _FEATURES, checks, frame, label, build_docs)
    errors, warnings = _collect(frame, checks, run.results, 1)
    return _finish(errors, warnings, len(run.results), run, len(frame), raise_on_failure)
