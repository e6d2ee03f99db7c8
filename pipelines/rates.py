"""Risk-free rates for option pricing, point in time.

Two sources, in order of preference:

1. **Ingested Treasury curves**: CSV files in the layout of the US Treasury's "Daily Treasury Par
   Yield Curve Rates" download (:func:`read_treasury_curve`), stored by :func:`ingest_rates`
   (``afterbell rates ingest --source FILE``).
2. **Packaged fallback**: the 1-month T-bill rate of Kenneth French's data library that the
   installed ``arch`` package ships (:func:`packaged_rates`, monthly to 2018-11), so that the
   replay sessions resolve without any download.

:func:`rate_at` (one session) and :func:`rates_for` (many sessions at once) give the continuously
compounded rate for a horizon of ``days`` calendar days, from the newest observation dated
**strictly before** the session: the light stage runs at 17:00 ET, before that day's curve is
reliably published, so a curve dated on the session itself is never used.

Storage
-------
The ingested curves live in one Parquet file, ``<lake>/rates/curves.parquet`` (one row per curve
date, sorted, written atomically with :func:`pipelines.lake.write_parquet` under an exclusive
lock), not in the lake's ``session=YYYY-MM-DD`` partitions. The partition helpers would accept
curve dates that are not NYSE sessions (they never consult the calendar), but a full Treasury
history (about 9,000 dates since 1990) as one file per date measured 16 s to write and 10 s to
read (150 MB), against 25 ms and 12 ms as one file. Re-ingesting a file is idempotent (the
stored file is byte-identical) and a file overlapping stored dates replaces exactly those dates.
:func:`pipelines.lake.read_table` and :func:`pipelines.lake.partition_sessions` do not list this
file: read it with :func:`read_rates`.

Conventions
-----------
- Yields are decimals (``0.0215`` for 2.15 %). Tenor columns are named ``m1, m1_5, m2, m3, m4,
  m6, y1, y2, y3, y5, y7, y10, y20, y30`` (:data:`TENORS`); a tenor of ``n`` months matures in
  ``n / 12`` years.
- A horizon of ``days`` calendar days matures in ``t = days / 365`` years. The yield at ``t`` is
  interpolated linearly in maturity between the tenors quoted on the curve's date, flat outside
  them. Note that 30 days (0.0822 years) is slightly *shorter* than the 1-month tenor (0.0833
  years): a 30-day rate is the 1-month yield when it is quoted (before 2001-07-31 the Treasury
  did not quote it and the 3-month yield is used, flat).
- Conversion to continuous compounding: for ``t <= 1`` the yield is simple interest
  (``r = ln(1 + y t) / t``), above one year a semiannual bond-equivalent yield
  (``r = 2 ln(1 + y / 2)``).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from pipelines import lake
from pipelines.calendar import to_date

log = logging.getLogger(__name__)

#: Lake folder of the ingested curves and the file holding them.
RATES_TABLE: Final[str] = "rates"
CURVES_FILE: Final[str] = "curves.parquet"
#: Values of the ``source`` column.
SOURCE_TREASURY: Final[str] = "treasury"
SOURCE_PACKAGED: Final[str] = "fama-french"
#: Accepted range of a yield in a Treasury file, in percent (inclusive).
YIELD_RANGE_PERCENT: Final[tuple[float, float]] = (-5.0, 30.0)
#: Default horizon and freshness limit of :func:`rate_at` / :func:`rates_for`, in calendar days.
DEFAULT_DAYS: Final[int] = 30
DEFAULT_MAX_AGE_DAYS: Final[int] = 62
#: Calendar days per year of the horizon's maturity (``t = days / 365``).
DAYS_PER_YEAR: Final[float] = 365.0

_INGEST_HINT: Final[str] = (
    "ingest a Treasury 'Daily Treasury Par Yield Curve Rates' CSV covering it with "
    "`afterbell rates ingest --source FILE`"
)
#: Cells read as "no yield for this tenor on this day".
_MISSING_CELLS: Final[frozenset[str]] = frozenset({"", "N/A", "NA"})
_TENOR_LABEL = re.compile(r"^(\d+(?:\.\d+)?)\s*(mo|mos|month|months|yr|yrs|year|years)$", re.I)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_US_DATE = re.compile(r"^\d{1,2}/\d{1,2}/\d{4}$")


@dataclass(frozen=True)
class Tenor:
    """One maturity of the Treasury curve.

    Attributes
    ----------
    column : str
        Column name in the tidy frames (``m3``, ``y10``...).
    label : str
        Column label in the Treasury's CSV (``3 Mo``, ``10 Yr``...).
    months : float
        Maturity in months.
    """

    column: str
    label: str
    months: float

    @property
    def years(self) -> float:
        """Maturity in years (``months / 12``)."""
        return self.months / 12.0


#: Tenors recognised in a Treasury file, shortest first. ``1.5 Month`` is the 6-week bill the
#: Treasury added to the curve in 2025.
TENORS: Final[tuple[Tenor, ...]] = (
    Tenor("m1", "1 Mo", 1), Tenor("m1_5", "1.5 Month", 1.5), Tenor("m2", "2 Mo", 2),
    Tenor("m3", "3 Mo", 3), Tenor("m4", "4 Mo", 4), Tenor("m6", "6 Mo", 6),
    Tenor("y1", "1 Yr", 12), Tenor("y2", "2 Yr", 24), Tenor("y3", "3 Yr", 36),
    Tenor("y5", "5 Yr", 60), Tenor("y7", "7 Yr", 84), Tenor("y10", "10 Yr", 120),
    Tenor("y20", "20 Yr", 240), Tenor("y30", "30 Yr", 360),
)  # fmt: skip
TENOR_COLUMNS: Final[tuple[str, ...]] = tuple(t.column for t in TENORS)
#: Columns of :func:`read_treasury_curve`'s frame and of the stored curves.
CURVE_COLUMNS: Final[tuple[str, ...]] = ("session", *TENOR_COLUMNS, "source")
#: Columns of :func:`rates_for`'s frame (its index is ``session``).
RATE_COLUMNS: Final[tuple[str, ...]] = ("rate", "curve_date", "age_days", "source")
_TENOR_BY_MONTHS: Final[dict[float, Tenor]] = {t.months: t for t in TENORS}


@dataclass(frozen=True)
class RatesIngest:
    """What :func:`ingest_rates` stored.

    Attributes
    ----------
    path : Path
        The file holding every ingested curve.
    first, last : date
        First and last curve date of the ingested file.
    rows : int
        Curve dates read from the file.
    replaced : int
        Of those, dates that were already stored (and were overwritten).
    stored : int
        Curve dates stored after the ingest, all files together.
    """

    path: Path
    first: date
    last: date
    rows: int
    replaced: int
    stored: int


@dataclass(frozen=True)
class RateQuote:
    """The risk-free rate a session uses.

    Attributes
    ----------
    rate : float
        Continuously compounded annual rate (decimal) for the horizon.
    days : int
        Horizon in calendar days.
    curve_date : date
        Date of the observation used (strictly before the session).
    age_days : int
        Calendar days from ``curve_date`` to the session.
    source : str
        ``"treasury"`` (ingested curve) or ``"fama-french"`` (packaged fallback).
    """

    rate: float
    days: int
    curve_date: date
    age_days: int
    source: str


# --------------------------------------------------------------------------- Treasury files
def _bad(path: Path, where: str, column: str | None, what: str) -> ValueError:
    col = f", column {column!r}" if column is not None else ""
    return ValueError(f"{path}: {where}{col}: {what}")


def _tenor_of(label: str) -> Tenor | None:
    match = _TENOR_LABEL.match(" ".join(label.split()))
    if match is None:
        return None
    value = float(match.group(1))
    months = value if match.group(2).lower().startswith("mo") else 12.0 * value
    return _TENOR_BY_MONTHS.get(months)


def _parse_date(text: str) -> date | None:
    try:
        if _ISO_DATE.match(text):
            return date.fromisoformat(text)
        if _US_DATE.match(text):
            return datetime.strptime(text, "%m/%d/%Y").date()
    except ValueError:
        return None
    return None


def read_treasury_curve(path: Path) -> pd.DataFrame:
    """Read and validate a CSV in the layout of the Treasury's daily par yield curve rates.

    Parameters
    ----------
    path : Path
        CSV with a header row: a ``Date`` column (``MM/DD/YYYY`` or ``YYYY-MM-DD``) and one or more
        tenor columns in percent (``1 Mo``, ``1.5 Month``, ``2 Mo``, ``3 Mo``, ``4 Mo``, ``6 Mo``,
        ``1 Yr``, ``2 Yr``, ``3 Yr``, ``5 Yr``, ``7 Yr``, ``10 Yr``, ``20 Yr``, ``30 Yr``; ``Month``
        / ``Months`` / ``Year`` / ``Years`` spellings and any letter case are accepted). An empty
        (or ``N/A``) cell means the tenor was not quoted that day. Rows may come in any order
        (the Treasury's files are newest first); blank lines are skipped.

    Returns
    -------
    pd.DataFrame
        One row per curve date, oldest first: ``session`` (``datetime64[ns]``, midnight, the
        curve date), every column of :data:`TENOR_COLUMNS` (``float64`` decimal yields, NaN where
        the tenor is missing that day or absent from the file) and ``source`` = ``"treasury"``.

    Raises
    ------
    ValueError
        Naming the file, the row (1-based data row, with its line in the file) and the column,
        for: no ``Date`` column, no tenor column, a row with another number of fields than the
        header, an unparsable or duplicate date, an unparsable number, a yield outside
        :data:`YIELD_RANGE_PERCENT`, a row without any yield, a tenor given by two columns, a file
        without data rows.

    Notes
    -----
    Columns whose label is not a recognised tenor (e.g. a maturity the Treasury does not
    publish, or a note column) are ignored with a logged warning naming them; a column with an
    empty label and no values (a trailing comma) is ignored silently.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise _bad(path, "header row", None, "empty file (expected a 'Date' column and "
                       "tenor columns such as '1 Mo', '3 Mo', '1 Yr')")
        labels = [cell.strip() for cell in header]
        records = [(reader.line_num, row) for row in reader if row]

    date_cols = [i for i, label in enumerate(labels) if label.lower() == "date"]
    if not date_cols:
        raise _bad(path, "header row", "Date", f"missing column (columns: {labels})")
    if len(date_cols) > 1:
        raise _bad(path, "header row", "Date", "appears more than once")
    date_col = date_cols[0]

    tenor_cols: dict[str, int] = {}  # tenor column name -> position in the file
    tenor_label: dict[str, str] = {}
    ignored: list[int] = []
    for i, label in enumerate(labels):
        if i == date_col:
            continue
        tenor = _tenor_of(label)
        if tenor is None:
            ignored.append(i)
            continue
        if tenor.column in tenor_cols:
            raise _bad(path, "header row", label,
                       f"same tenor as column {tenor_label[tenor.column]!r}")
        tenor_cols[tenor.column] = i
        tenor_label[tenor.column] = label
    if not tenor_cols:
        raise _bad(path, "header row", None,
                   f"no tenor column (columns: {labels}; expected labels such as "
                   f"{', '.join(repr(t.label) for t in TENORS[:3])}, '1 Yr', '10 Yr')")
    if not records:
        raise _bad(path, "header row", None, "no data rows")

    lo, hi = YIELD_RANGE_PERCENT
    order = [c for c in TENOR_COLUMNS if c in tenor_cols]
    sessions: list[date] = []
    values = np.full((len(records), len(order)), np.nan)
    seen: dict[date, int] = {}
    for n, (line, row) in enumerate(records, start=1):
        where = f"row {n} (line {line})"
        if len(row) != len(labels):
            raise _bad(path, where, None,
                       f"{len(row)} fields where the header has {len(labels)}")
        text = row[date_col].strip()
        day = _parse_date(text)
        if day is None:
            raise _bad(path, where, labels[date_col],
                       f"unparsable date {text!r} (expected MM/DD/YYYY or YYYY-MM-DD)")
        if day in seen:
            raise _bad(path, where, labels[date_col],
                       f"duplicate date {day.isoformat()} (also in row {seen[day]})")
        seen[day] = n
        sessions.append(day)
        for j, column in enumerate(order):
            label = tenor_label[column]
            cell = row[tenor_cols[column]].strip()
            if cell.upper() in _MISSING_CELLS:
                continue
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise _bad(path, where, label, f"unparsable number {cell!r}")
            if not lo <= value <= hi:
                raise _bad(path, where, label,
                           f"yield {value:g}% outside [{lo:g}, {hi:g}] percent")
            values[n - 1, j] = value / 100.0
        if np.isnan(values[n - 1]).all():
            raise _bad(path, where, labels[date_col],
                       f"no yield in any tenor column on {day.isoformat()} "
                       f"(columns: {[tenor_label[c] for c in order]})")

    unknown = [labels[i] for i in ignored
               if labels[i] or any(row[i].strip() for _, row in records)]
    if unknown:
        log.warning("%s: ignoring columns that are not Treasury tenors: %s", path, unknown)

    frame = pd.DataFrame(values, columns=order)
    frame.insert(0, "session", pd.to_datetime(sessions).astype("datetime64[ns]"))
    frame["source"] = SOURCE_TREASURY
    return _tidy(frame)


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every curve column (missing tenors NaN), sorted by session."""
    out = frame.reindex(columns=list(CURVE_COLUMNS))
    out[list(TENOR_COLUMNS)] = out[list(TENOR_COLUMNS)].astype("float64")
    out["session"] = pd.to_datetime(out["session"]).astype("datetime64[ns]")
    out["source"] = out["source"].astype("object")
    return out.sort_values("session", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- packaged fallback
@lru_cache(maxsize=1)
def _packaged() -> pd.DataFrame:
    spec = importlib.util.find_spec("arch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'arch' is not installed: no packaged risk-free rate")
    base = Path(next(iter(spec.submodule_search_locations)))
    path = base / "data" / "frenchdata" / "frenchdata.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Fama-French data file missing from package 'arch'")
    raw = pd.read_csv(path, usecols=["Date", "RF"], dtype={"Date": str})
    month = pd.PeriodIndex(pd.to_datetime(raw["Date"], format="%Y%m"), freq="M")
    known = (month.start_time - pd.Timedelta(days=1)).astype("datetime64[ns]")
    rf = pd.to_numeric(raw["RF"], errors="raise").to_numpy(dtype="float64") / 100.0
    yearly = rf * DAYS_PER_YEAR / month.days_in_month.to_numpy(dtype="float64")
    frame = pd.DataFrame({"session": known, "m1": yearly, "source": SOURCE_PACKAGED})
    return frame.sort_values("session", kind="stable").reset_index(drop=True)


def packaged_rates() -> pd.DataFrame:
    """The 1-month T-bill rate of Kenneth French's data library, as shipped with ``arch``.

    Read from ``arch/data/frenchdata/frenchdata.csv.gz`` without importing ``arch`` (monthly,
    1926-07 to 2018-11).

    Returns
    -------
    pd.DataFrame
        Columns ``session`` (``datetime64[ns]``), ``m1`` (``float64``) and ``source`` =
        ``"fama-french"``, one row per month, oldest first.

    Notes
    -----
    ``RF`` of month ``M`` is the return (percent) of a one-month bill bought at the end of month
    ``M - 1`` and held through ``M``: it is known at the end of ``M - 1``, so the row is dated
    on the last calendar day of ``M - 1`` (RF of 2018-11 on 2018-10-31). ``m1`` is that return as
    a simple annual yield on an actual/365 basis over the month's calendar days,
    ``RF / 100 * 365 / days_in_month(M)``, the basis :func:`rate_at` assumes for maturities up to
    one year. ``RF`` is rounded to 0.01 % a month, so ``m1`` has a resolution of about 0.12 % a
    year: the months of 2008-12 and 2009-01 read exactly 0.
    """
    return _packaged().copy()


# --------------------------------------------------------------------------- lake storage
def curves_path(lake_root: Path) -> Path:
    """File holding the ingested curves: ``<lake_root>/rates/curves.parquet``."""
    return Path(lake_root) / RATES_TABLE / CURVES_FILE


def read_rates(lake_root: Path) -> pd.DataFrame:
    """The ingested curves (empty, with the columns, when nothing was ingested).

    Parameters
    ----------
    lake_root : Path
        Lake root (``Settings.lake_dir``).

    Returns
    -------
    pd.DataFrame
        Columns :data:`CURVE_COLUMNS`, one row per curve date, oldest first.
    """
    path = curves_path(lake_root)
    if not path.is_file():
        return _tidy(pd.DataFrame({c: [] for c in CURVE_COLUMNS}))
    return _tidy(pd.read_parquet(path))


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock`` (no-op where ``fcntl`` is missing)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ingest_rates(lake_root: Path, source: Path) -> RatesIngest:
    """Validate a Treasury par yield curve CSV and upsert its dates into the lake.

    Parameters
    ----------
    lake_root : Path
        Lake root (``Settings.lake_dir``).
    source : Path
        CSV in the Treasury's layout (see :func:`read_treasury_curve`).

    Returns
    -------
    RatesIngest
        Where the curves are stored and what was ingested.

    Raises
    ------
    ValueError
        If the file is invalid (nothing is stored then).

    Notes
    -----
    Dates of ``source`` that are already stored are replaced, every other stored date is kept:
    ingesting the same file twice leaves a byte-identical file. The read-merge-write runs under
    an exclusive lock (``<lake>/rates/.ingest.lock``) and the file is replaced atomically.
    """
    new = read_treasury_curve(Path(source))
    dest = curves_path(lake_root)
    with _exclusive(dest.parent / ".ingest.lock"):
        old = read_rates(lake_root)
        overlap = old["session"].isin(new["session"])
        kept = old[~overlap]
        merged = _tidy(pd.concat([kept, new], ignore_index=True) if len(kept) else new)
        lake.write_parquet(dest, merged)
    first, last = new["session"].iloc[0].date(), new["session"].iloc[-1].date()
    log.info("rates: %d curve dates %s..%s from %s into %s (%d replaced, %d stored)",
             len(new), first, last, source, dest, int(overlap.sum()), len(merged))
    return RatesIngest(path=dest, first=first, last=last, rows=len(new),
                       replaced=int(overlap.sum()), stored=len(merged))


# --------------------------------------------------------------------------- rates
def horizon_yield(curves: pd.DataFrame, years: float) -> np.ndarray:
    """Yield of each curve at maturity ``years``, linear in maturity, flat outside the tenors.

    Parameters
    ----------
    curves : pd.DataFrame
        Rows with some of :data:`TENOR_COLUMNS` (NaN: tenor not quoted on that row).
    years : float
        Maturity in years.

    Returns
    -------
    np.ndarray
        ``float64`` yields, one per row; NaN for a row without any tenor.
    """
    tenors = [t for t in TENORS if t.column in curves.columns]
    if not tenors or curves.empty:
        return np.full(len(curves), np.nan)
    mats = np.array([t.years for t in tenors])
    ys = curves[[t.column for t in tenors]].to_numpy(dtype="float64")
    quoted = ~np.isnan(ys)
    k = len(tenors)
    pos = np.arange(k)
    below = np.where(quoted & (mats <= years), pos, -1).max(axis=1)
    above = np.where(quoted & (mats >= years), pos, k).min(axis=1)
    rows = np.arange(len(ys))
    lo, hi = np.clip(below, 0, k - 1), np.clip(above, 0, k - 1)
    y_lo, y_hi = ys[rows, lo], ys[rows, hi]
    m_lo, m_hi = mats[lo], mats[hi]
    has_lo, has_hi = below >= 0, above < k
    span = np.where(m_hi > m_lo, m_hi - m_lo, 1.0)
    weight = np.where(m_hi > m_lo, (years - m_lo) / span, 0.0)
    inner = y_lo + weight * (y_hi - y_lo)
    return np.where(has_lo & has_hi, inner, np.where(has_lo, y_lo, np.where(has_hi, y_hi, np.nan)))


def continuous_rate(yields: np.ndarray, years: float) -> np.ndarray:
    """Continuously compounded rates of yields quoted for maturity ``years``.

    Parameters
    ----------
    yields : np.ndarray
        Decimal annual yields: simple interest for ``years <= 1``, semiannual above.
    years : float
        Maturity in years (``> 0``).

    Returns
    -------
    np.ndarray
        ``ln(1 + y t) / t`` for ``t <= 1``, ``2 ln(1 + y / 2)`` above.
    """
    y = np.asarray(yields, dtype="float64")
    if years <= 1.0:
        return np.log1p(y * years) / years
    return 2.0 * np.log1p(y / 2.0)


def _check(days: int, max_age_days: int) -> None:
    if int(days) != days or days < 1:
        raise ValueError(f"days must be a positive whole number of calendar days, got {days!r}")
    if int(max_age_days) != max_age_days or max_age_days < 0:
        raise ValueError(f"max_age_days must be a whole number >= 0, got {max_age_days!r}")


def _observations(lake_root: Path, days: int) -> list[tuple[str, pd.DataFrame]]:
    """Per source, most preferred first: ``curve_date`` (sorted) and the horizon's ``rate``."""
    years = days / DAYS_PER_YEAR
    found = []
    for source, curves in ((SOURCE_TREASURY, read_rates(lake_root)),
                           (SOURCE_PACKAGED, _packaged())):
        rate = continuous_rate(horizon_yield(curves, years), years)
        obs = pd.DataFrame({"curve_date": curves["session"].to_numpy(), "rate": rate})
        found.append((source, obs[np.isfinite(obs["rate"])].reset_index(drop=True)))
    return found


def rates_for(
    lake_root: Path,
    sessions: Sequence[date],
    days: int = DEFAULT_DAYS,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
) -> pd.DataFrame:
    """The risk-free rate of many sessions at once (see :func:`rate_at`).

    Parameters
    ----------
    lake_root : Path
        Lake root (``Settings.lake_dir``).
    sessions : Sequence[date]
        Sessions (any dates; ``YYYY-MM-DD`` strings and timestamps are accepted), in any order,
        repeats allowed.
    days : int, optional
        Horizon in calendar days (default 30).
    max_age_days : int, optional
        Oldest observation accepted, in calendar days before the session (default 62).

    Returns
    -------
    pd.DataFrame
        Indexed by ``session`` (``datetime64[ns]``) in the order given, columns ``rate``
        (``float64``), ``curve_date`` (``datetime64[ns]``), ``age_days`` (``Int64``) and ``source``
        (``"treasury"``, ``"fama-french"``, or ``""`` with NaN / NaT / NA where no observation is
        fresh enough: no exception).
    """
    _check(days, max_age_days)
    wanted = pd.DatetimeIndex(pd.to_datetime(list(sessions))).normalize()
    left = pd.DataFrame({"session": wanted.astype("datetime64[ns]"),
                         "pos": np.arange(len(wanted))})
    left = left.sort_values("session", kind="stable").reset_index(drop=True)
    rate = np.full(len(left), np.nan)
    curve_date = np.full(len(left), np.datetime64("NaT"), dtype="datetime64[ns]")
    source = np.full(len(left), "", dtype=object)
    open_ = np.ones(len(left), dtype=bool)  # not resolved by a preferred source yet
    for name, obs in _observations(lake_root, days):
        if obs.empty or left.empty:
            continue
        hit = pd.merge_asof(left, obs, left_on="session", right_on="curve_date",
                            allow_exact_matches=False, direction="backward")
        age = (hit["session"] - hit["curve_date"]).dt.days.to_numpy(dtype="float64")
        take = open_ & (age <= max_age_days)  # NaN age (nothing before) compares False
        rate[take] = hit["rate"].to_numpy()[take]
        curve_date[take] = hit["curve_date"].to_numpy()[take]
        source[take] = name
        open_ &= ~take
    out = pd.DataFrame({"rate": rate, "curve_date": curve_date, "source": source},
                       index=pd.DatetimeIndex(left["session"], name="session"))
    age = (out.index - pd.DatetimeIndex(out["curve_date"])).days
    out.insert(2, "age_days", pd.Series(age, index=out.index, dtype="Int64"))
    out = out.iloc[np.argsort(left["pos"].to_numpy(), kind="stable")]
    return out[list(RATE_COLUMNS)]


def rate_at(
    lake_root: Path,
    session: date,
    days: int = DEFAULT_DAYS,
    *,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
) -> RateQuote:
    """The continuously compounded risk-free rate for ``days`` from ``session``, point in time.

    Parameters
    ----------
    lake_root : Path
        Lake root (``Settings.lake_dir``).
    session : date
        The session pricing the option (a ``YYYY-MM-DD`` string is accepted).
    days : int, optional
        Horizon in calendar days (default 30).
    max_age_days : int, optional
        Oldest observation accepted, in calendar days before the session (default 62).

    Returns
    -------
    RateQuote
        From the newest observation dated strictly before ``session``: the newest ingested
        Treasury curve when it is at most ``max_age_days`` old, else the packaged Fama-French
        rate when that is, interpolated and converted as the module describes.

    Raises
    ------
    ValueError
        When no observation is fresh enough, naming the session, the newest observation before
        it (or none) and how to ingest a curve.
    """
    day = to_date(session)
    row = rates_for(lake_root, [day], days, max_age_days).iloc[0]
    if not row["source"]:
        raise ValueError(_stale_message(lake_root, day, days, max_age_days))
    curve = pd.Timestamp(row["curve_date"]).date()
    return RateQuote(rate=float(row["rate"]), days=int(days), curve_date=curve,
                     age_days=int(row["age_days"]), source=str(row["source"]))


def _stale_message(lake_root: Path, day: date, days: int, max_age_days: int) -> str:
    ts = pd.Timestamp(day)
    newest: list[tuple[pd.Timestamp, str]] = []
    for name, obs in _observations(lake_root, days):
        before = obs["curve_date"][obs["curve_date"] < ts]
        if len(before):
            newest.append((pd.Timestamp(before.iloc[-1]), name))
    if newest:
        when, name = max(newest)
        found = (f"the newest curve before it is {when.date()} ({name}), "
                 f"{(ts - when).days} days old, more than max_age_days={max_age_days} allows")
    else:
        found = "no curve is dated before it"
    return (f"no risk-free rate for session {day.isoformat()}: {found} "
            f"({len(read_rates(lake_root))} ingested Treasury curve dates in "
            f"{curves_path(lake_root)}); {_INGEST_HINT}")
