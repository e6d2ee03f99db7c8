"""Bar sources: where canonical daily bars come from.

Every source implements :class:`BarSource`: ``bars(sessions)`` returns canonical bars for the
requested sessions, i.e. a frame whose columns are exactly :data:`pipelines.schema.BAR_COLUMNS`
with dtypes

- ``symbol``: ``object`` (python ``str``)
- ``session``: ``datetime64[ns]``, tz-naive midnight
- ``open``/``high``/``low``/``close``/``adj_close``/``volume``: ``float64`` (NaN where unknown)

sorted by (``session``, ``symbol``) with a fresh ``RangeIndex``.

Two sources exist:

- :class:`ReplaySource` replays real market data shipped by installed packages (skfolio's S&P 500
  stocks and arch's S&P 500 / NASDAQ composite indices).
- :class:`FileSource` reads a CSV or Parquet file of bars (a vendor drop).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pipelines import calendar, settings
from pipelines.schema import BAR_COLUMNS

#: Columns a bar file must provide; the other canonical columns become NaN when absent.
REQUIRED_FILE_COLUMNS: tuple[str, ...] = ("symbol", "session", "close")

#: Accepted spellings of canonical columns in bar files (keys are lower-cased, stripped names).
_FILE_ALIASES: dict[str, str] = {
    "date": "session",
    "adj close": "adj_close",
    "adj_close": "adj_close",
    "adjclose": "adj_close",
    "adjusted_close": "adj_close",
    "adjusted close": "adj_close",
    "ticker": "symbol",
}


class SourceError(Exception):
    """A bar source could not produce canonical bars (missing columns, unparsable values)."""


@runtime_checkable
class BarSource(Protocol):
    """Anything that can produce canonical daily bars for a list of sessions."""

    def bars(self, sessions: Sequence[date]) -> pd.DataFrame:
        """Canonical bars for ``sessions`` (see the module docstring for the contract)."""
        ...


# --------------------------------------------------------------------------------- helpers
def _session_index(sessions: Sequence[date]) -> np.ndarray:
    """Requested sessions as a ``datetime64[ns]`` array (midnight, tz-naive)."""
    if len(sessions) == 0:
        return np.array([], dtype="datetime64[ns]")
    return pd.DatetimeIndex([pd.Timestamp(calendar.to_date(s)) for s in sessions]).to_numpy(
        dtype="datetime64[ns]"
    )


def canonicalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Order, type and sort a frame that already has every canonical bar column.

    Parameters
    ----------
    frame : pd.DataFrame
        Bars with (at least) the columns of :data:`BAR_COLUMNS`.

    Returns
    -------
    pd.DataFrame
        Columns exactly ``BAR_COLUMNS``; prices and volume ``float64``; ``session``
        ``datetime64[ns]``; sorted by ``session``, ``symbol``; index reset.
    """
    out = frame.loc[:, list(BAR_COLUMNS)].copy()
    out["symbol"] = out["symbol"].astype(object)
    out["session"] = pd.to_datetime(out["session"]).astype("datetime64[ns]")
    for col in BAR_COLUMNS[2:]:
        out[col] = out[col].astype("float64")
    return out.sort_values(["session", "symbol"], kind="stable").reset_index(drop=True)


def _select_sessions(frame: pd.DataFrame, sessions: Sequence[date]) -> pd.DataFrame:
    wanted = _session_index(sessions)
    mask = frame["session"].isin(wanted)
    return frame.loc[mask].reset_index(drop=True)


# --------------------------------------------------------------------------------- replay
def _package_file(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing it.

    ``importlib.util.find_spec`` of a top-level package locates it without executing its
    ``__init__`` (importing ``arch`` costs ~7 s, ``skfolio`` ~1.3 s; reading their CSVs ~0.1 s).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"package {package!r} is not installed; the replay source needs it")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise SourceError(f"{path}: replay data file missing from package {package!r}")
    return path


def _load_skfolio_sp500() -> pd.DataFrame:
    """Same frame as ``skfolio.datasets.load_sp500_dataset()`` (Date index, one column a stock)."""
    path = _package_file("skfolio", "datasets", "data", "sp500_dataset.csv.gz")
    frame = pd.read_csv(path, sep=",", index_col=0)
    frame.index = pd.to_datetime(frame.index, format="%Y-%m-%d")
    return frame


def _load_arch_index(name: str) -> pd.DataFrame:
    """Same frame as ``arch.data.<name>.load()`` (Date index; OHLC, Adj Close, Volume)."""
    frame = pd.read_csv(_package_file("arch", "data", name, f"{name}.csv.gz"))
    frame["Date"] = pd.to_datetime(frame["Date"])
    frame = frame.set_index("Date")
    for col in frame:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


@lru_cache(maxsize=1)
def load_replay_panel() -> pd.DataFrame:
    """Load (once per process) the packaged replay data as one canonical bar frame.

    Returns
    -------
    pd.DataFrame
        Canonical bars of every symbol in :data:`pipelines.settings.DEFAULT_UNIVERSE`, restricted
        to NYSE sessions, sorted by ``session``, ``symbol``. Treat it as read-only: it is cached.

    Notes
    -----
    The files are the ones behind ``skfolio.datasets.load_sp500_dataset()`` and
    ``arch.data.sp500.load()`` / ``arch.data.nasdaq.load()``, read the way those loaders read them
    but without importing the packages. skfolio ships adjusted closes only, so ``close`` =
    ``adj_close`` = the price and ``open``/``high``/``low``/``volume`` are NaN for the 20 stocks;
    arch ships the S&P 500 ("SPX") and NASDAQ composite ("NDX") with full OHLCV.
    """
    prices = _load_skfolio_sp500()
    prices = prices.loc[:, [s for s in settings.STOCKS if s in prices.columns]]
    long = pd.Series(prices.rename_axis(index="session", columns="symbol").stack(), name="close")
    stocks: pd.DataFrame = long.dropna().reset_index()
    stocks["adj_close"] = stocks["close"]
    for col in ("open", "high", "low", "volume"):
        stocks[col] = np.nan

    frames: list[pd.DataFrame] = [stocks]
    for symbol, name in (("SPX", "sp500"), ("NDX", "nasdaq")):
        raw = _load_arch_index(name)
        idx = raw.rename(columns=lambda c: str(c).strip().lower().replace(" ", "_"))
        idx = idx.rename_axis("session").reset_index()
        idx["symbol"] = symbol
        frames.append(idx.dropna(subset=["close"]))

    panel = canonicalise(pd.concat(frames, ignore_index=True))
    nyse = pd.DatetimeIndex(
        calendar.sessions_between(panel["session"].min(), panel["session"].max())
    )
    return panel.loc[panel["session"].isin(nyse)].reset_index(drop=True)


@dataclass(frozen=True)
class ReplaySource:
    """Real daily bars replayed from data shipped by installed packages.

    Parameters
    ----------
    universe : Sequence[str]
        Symbols to emit; each must be one of :data:`pipelines.settings.DEFAULT_UNIVERSE`.

    Raises
    ------
    ValueError
        If a symbol is not known to the replay source.
    """

    universe: Sequence[str] = settings.DEFAULT_UNIVERSE
    _symbols: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        symbols = tuple(str(s).strip().upper() for s in self.universe)
        unknown = sorted(set(symbols) - set(settings.DEFAULT_UNIVERSE))
        if unknown:
            raise ValueError(
                f"unknown replay symbol(s) {unknown}; known: {', '.join(settings.DEFAULT_UNIVERSE)}"
            )
        object.__setattr__(self, "_symbols", tuple(dict.fromkeys(symbols)))

    def bars(self, sessions: Sequence[date]) -> pd.DataFrame:
        """Canonical bars of the universe for the requested sessions.

        Parameters
        ----------
        sessions : Sequence[date]
            Session dates. Dates that are not NYSE sessions, or where a symbol has no data,
            simply produce no rows.

        Returns
        -------
        pd.DataFrame
            Canonical bars (columns ``BAR_COLUMNS``), sorted by ``session``, ``symbol``.
        """
        panel = load_replay_panel()
        wanted = _session_index(sessions)
        mask = panel["session"].isin(wanted) & panel["symbol"].isin(self._symbols)
        return panel.loc[mask].reset_index(drop=True)


# --------------------------------------------------------------------------------- files
def _normalise_name(name: object) -> str:
    key = str(name).strip().lower()
    if key in _FILE_ALIASES:
        return _FILE_ALIASES[key]
    return key.replace(" ", "_")


def _read_raw(path: Path) -> pd.DataFrame:
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if ".parquet" in suffixes or ".pq" in suffixes:
            return pd.read_parquet(path)
        if ".csv" in suffixes:
            return pd.read_csv(path, dtype=str, keep_default_na=True)
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except Exception as exc:  # any reader failure is a source failure
        raise SourceError(f"{path}: cannot read bars file: {exc}") from exc
    raise SourceError(f"{path}: unsupported bars file type (expected .csv or .parquet)")


def _bad_value(path: Path, raw: pd.Series, parsed: pd.Series, column: str) -> None:
    bad = raw.notna() & parsed.isna()
    if raw.dtype == object:
        bad &= raw.astype(str).str.strip().ne("")
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        line = f" (line {pos + 2})" if path.suffix.lower() == ".csv" else ""
        raise SourceError(
            f"{path}: row {pos + 1}{line}, column {column!r}: cannot parse {raw.iloc[pos]!r}"
        )


def coerce_bars(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Coerce a raw bars frame read from ``path`` into canonical bars.

    Parameters
    ----------
    raw : pd.DataFrame
        Frame as read from the file (any column case; ``date`` and ``adj close`` aliases allowed).
    path : Path
        The file it came from (only used in error messages).

    Returns
    -------
    pd.DataFrame
        Canonical bars.

    Raises
    ------
    SourceError
        Naming the file and columns when required columns are missing, or the file, row and
        column when a value cannot be parsed.
    """
    renamed: dict[str, pd.Series] = {}
    for col in raw.columns:
        name = _normalise_name(col)
        if name == "session" and "session" in renamed and str(col).strip().lower() == "date":
            continue  # an explicit `session` column wins over a `date` alias
        renamed[name] = raw[col]
    missing = [c for c in REQUIRED_FILE_COLUMNS if c not in renamed]
    if missing:
        raise SourceError(
            f"{path}: missing required column(s) {missing}; found {[str(c) for c in raw.columns]}"
        )

    n = len(raw)
    out = pd.DataFrame(index=pd.RangeIndex(n))
    symbol = renamed["symbol"].reset_index(drop=True)
    out["symbol"] = symbol.where(symbol.isna(), symbol.astype(str).str.strip()).astype(object)

    raw_session = renamed["session"].reset_index(drop=True)
    session = pd.to_datetime(raw_session, errors="coerce", format="mixed")
    _bad_value(path, raw_session, session, "session")
    if getattr(session.dt, "tz", None) is not None:
        session = session.dt.tz_convert("America/New_York").dt.tz_localize(None)
    out["session"] = session.dt.normalize().astype("datetime64[ns]")

    for col in BAR_COLUMNS[2:]:
        if col not in renamed:
            out[col] = np.nan
            continue
        raw_col = renamed[col].reset_index(drop=True)
        values = pd.to_numeric(raw_col, errors="coerce")
        _bad_value(path, raw_col, values, col)
        out[col] = values.astype("float64")
    return canonicalise(out)


@dataclass(frozen=True)
class FileSource:
    """Bars from one CSV or Parquet file.

    Parameters
    ----------
    path : Path
        ``.csv`` or ``.parquet`` file with at least ``symbol``, ``session`` (or ``date``) and
        ``close`` columns (any case). ``open``, ``high``, ``low``, ``adj_close`` (or
        ``adj close``) and ``volume`` are optional.
    """

    path: Path

    def read(self) -> pd.DataFrame:
        """Every bar in the file, coerced to canonical bars.

        Raises
        ------
        SourceError
            If the file is missing, unreadable, lacks required columns or holds bad values.
        """
        path = Path(self.path)
        return coerce_bars(_read_raw(path), path)

    def bars(self, sessions: Sequence[date]) -> pd.DataFrame:
        """Canonical bars of the file restricted to ``sessions``.

        Parameters
        ----------
        sessions : Sequence[date]
            Session dates to keep (no calendar filtering: the quality guard checks sessions).

        Returns
        -------
        pd.DataFrame
            Canonical bars sorted by ``session``, ``symbol``.
        """
        return _select_sessions(self.read(), sessions)
