"""Bar sources: where canonical daily bars come from.

Every source implements :class:`BarSource`: ``bars(sessions)`` returns canonical bars for the
requested sessions, i.e. a frame whose columns are exactly :data:`pipelines.schema.BAR_COLUMNS`
with dtypes

- ``symbol``: ``object`` (python ``str``)
- ``session``: ``datetime64[ns]``, tz-naive midnight
- ``open``/``high``/``low``/``close``/``adj_close``/``volume``: ``float64`` (NaN where unknown)

sorted by (``session``, ``symbol``) with a fresh ``RangeIndex``.

Sources:

- :class:`ReplaySource` replays real market data shipped by installed packages (skfolio's S&P 500
  stocks and arch's S&P 500 / NASDAQ composite indices).
- :class:`SyntheticSource` generates a synthetic universe of any size (scale tests).
- :class:`FileSource` reads a CSV or Parquet file of bars (a vendor drop).
- :class:`DropFolderSource` reads a local drop folder of CSV / Parquet files.
- :class:`S3Source` reads the same layout from an S3 bucket (any S3-compatible endpoint).

Raw inputs are fetched before they are parsed: :func:`fetch_raw` copies a session's input files,
byte for byte and under their own names, from a local file, a drop folder or S3 into a local
folder (the ingest stage keeps them as the session's raw input, or quarantines them), and
:func:`read_bar_files` parses such files into canonical bars. A drop folder (local or S3) holds
either one sub-folder per session, ``session=YYYY-MM-DD/``, or the session's files directly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pipelines import calendar, settings
from pipelines.schema import BAR_COLUMNS
from pipelines.synthetic import UniverseSpec

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


#: Name endings (lower-cased) of the files a drop folder or S3 prefix may hold.
RAW_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet")

#: Environment variables read by :meth:`S3Config.from_env`.
ENV_S3_ENDPOINT_URL = "AFTERBELL_S3_ENDPOINT_URL"
ENV_S3_BUCKET = "AFTERBELL_S3_BUCKET"
ENV_S3_PREFIX = "AFTERBELL_S3_PREFIX"
ENV_S3_REGION = "AWS_DEFAULT_REGION"

_S3_SCHEME = "s3://"


class SourceError(Exception):
    """A bar source could not produce canonical bars (missing columns, unparsable values)."""


class _NoInput(SourceError):
    """The place a spec names exists but holds no bar file for the session."""


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

    def listings(self) -> dict[str, tuple[date, date]]:
        """Each symbol's listing range (see :func:`replay_listings`)."""
        return replay_listings(self._symbols)


@dataclass(frozen=True)
class SyntheticSource:
    """Bars of a synthetic universe (:mod:`pipelines.synthetic`), for scale tests and benchmarks.

    Parameters
    ----------
    spec : pipelines.synthetic.UniverseSpec
        The universe: the same spec always gives the same bars (generated once per process).
    """

    spec: UniverseSpec

    def bars(self, sessions: Sequence[date]) -> pd.DataFrame:
        """Canonical bars of the universe for the requested sessions (none outside its years)."""
        panel = _synthetic_panel(self.spec)
        return panel.loc[panel["session"].isin(_session_index(sessions))].reset_index(drop=True)

    def listings(self) -> dict[str, tuple[date, date]]:
        """Each symbol's listing range (IPOs and delistings included)."""
        from pipelines.synthetic import listings

        return listings(_synthetic_universe(self.spec)[1])

    def sectors(self) -> dict[str, str]:
        """Each symbol's (drawn) sector."""
        from pipelines.synthetic import sectors

        return sectors(_synthetic_universe(self.spec)[1])


def history_source(s: settings.Settings) -> ReplaySource | SyntheticSource:
    """Where the bars of ``s``'s universe come from when history is backfilled: the synthetic
    universe of ``s.synthetic``, else the replay data."""
    if s.synthetic is not None:
        return SyntheticSource(s.synthetic)
    return ReplaySource(s.universe)


@lru_cache(maxsize=2)
def _synthetic_universe(spec: UniverseSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pipelines.synthetic import make_universe

    return make_universe(spec)


def _synthetic_panel(spec: UniverseSpec) -> pd.DataFrame:
    return _synthetic_universe(spec)[0]


def replay_listings(universe: Sequence[str]) -> dict[str, tuple[date, date]]:
    """Each symbol's listing range in the packaged replay data.

    Parameters
    ----------
    universe : Sequence[str]
        Replay symbols (any case; each must be one of
        :data:`pipelines.settings.DEFAULT_UNIVERSE`).

    Returns
    -------
    dict[str, tuple[date, date]]
        ``{symbol: (first session, last session)}`` with a bar, in the order of ``universe``
        (upper-cased, duplicates dropped). A session inside the range is one where the symbol is
        expected to trade.

    Raises
    ------
    ValueError
        If a symbol is not known to the replay source.
    """
    symbols = ReplaySource(universe)._symbols
    panel = load_replay_panel()
    held = panel.loc[panel["symbol"].isin(symbols), ["symbol", "session"]]
    first = held.groupby("symbol")["session"].min()
    last = held.groupby("symbol")["session"].max()
    return {sym: (first[sym].date(), last[sym].date()) for sym in symbols}


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


def _is_csv(path: Path) -> bool:
    return ".csv" in [s.lower() for s in path.suffixes]


def _row(path: Path, pos: int) -> str:
    """``row N`` (1-based data row) of a file, with its line number for CSV files."""
    line = f" (line {pos + 2})" if _is_csv(path) else ""
    return f"row {pos + 1}{line}"


def _bad_value(path: Path, raw: pd.Series, parsed: pd.Series, column: str) -> None:
    bad = raw.notna() & parsed.isna()
    if raw.dtype == object:
        bad &= raw.astype(str).str.strip().ne("")
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise SourceError(
            f"{path}: {_row(path, pos)}, column {column!r}: cannot parse {raw.iloc[pos]!r}"
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
    return canonicalise(_coerce(raw, path))


def _coerce(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """:func:`coerce_bars` without the final sort: row ``i`` is row ``i`` of the file."""
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
    return out


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


# --------------------------------------------------------------------------------- raw input
def _empty_bars() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in BAR_COLUMNS})
    frame["symbol"] = frame["symbol"].astype(object)
    return canonicalise(frame)


def read_bar_files(paths: Sequence[Path], *, session: date | None = None) -> pd.DataFrame:
    """Canonical bars from bar files (CSV, gzipped CSV or Parquet), e.g. :func:`fetch_raw`'s.

    Parameters
    ----------
    paths : Sequence[Path]
        Files to read; each is coerced with :func:`coerce_bars`.
    session : date, optional
        When given, every row must belong to this session.

    Returns
    -------
    pd.DataFrame
        Canonical bars of all files, sorted by ``session``, ``symbol`` (rows of equal key keep
        the order of ``paths``); empty (with the canonical columns) when ``paths`` is empty.

    Raises
    ------
    SourceError
        Naming the file (and row, column) that is unreadable, lacks required columns, holds an
        unparsable value or, with ``session``, a row of another session.
    """
    frames: list[pd.DataFrame] = []
    for path in map(Path, paths):
        bars = _coerce(_read_raw(path), path)
        if session is not None:
            want = pd.Timestamp(calendar.to_date(session))
            other = bars["session"].ne(want).to_numpy()
            if other.any():
                pos = int(np.flatnonzero(other)[0])
                got = bars["session"].iloc[pos]
                what = "has no session" if pd.isna(got) else f"is for session {got.date()}"
                raise SourceError(
                    f"{path}: {_row(path, pos)} {what}, not the ingested session {want.date()}"
                )
        frames.append(bars)
    frames = [f for f in frames if not f.empty]
    if not frames:
        return _empty_bars()
    return canonicalise(pd.concat(frames, ignore_index=True))


@dataclass(frozen=True)
class S3Config:
    """Where S3 inputs live and how to reach them.

    Credentials are not part of it: boto3's standard chain supplies them
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles...).

    Parameters
    ----------
    endpoint_url : str, optional
        S3-compatible endpoint (MinIO, moto, ...); None for AWS itself.
    bucket : str, optional
        Default bucket, used by ``s3:///key`` URIs (empty bucket part) and :class:`S3Source`.
    prefix : str, optional
        Default key prefix (a "folder"; leading and trailing ``/`` are dropped).
    region : str, optional
        Region of the client (default ``us-east-1``).
    """

    endpoint_url: str | None = None
    bucket: str | None = None
    prefix: str = ""
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.strip("/"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Config:
        """Read ``AFTERBELL_S3_ENDPOINT_URL``, ``AFTERBELL_S3_BUCKET``, ``AFTERBELL_S3_PREFIX``
        and ``AWS_DEFAULT_REGION`` (each optional) from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        return cls(
            endpoint_url=get(ENV_S3_ENDPOINT_URL),
            bucket=get(ENV_S3_BUCKET),
            prefix=get(ENV_S3_PREFIX) or "",
            region=get(ENV_S3_REGION) or "us-east-1",
        )


@dataclass(frozen=True)
class _Item:
    """One raw input file to fetch: a local file or an S3 object, and its name once fetched."""

    name: str
    local: Path | None = None
    bucket: str = ""
    key: str = ""

    def describe(self) -> str:
        if self.local is not None:
            return str(self.local)
        return f"{_S3_SCHEME}{self.bucket}/{self.key}"


def _is_bar_file(name: str) -> bool:
    """Whether a drop-folder entry is a bar file (hidden files are uploads in progress)."""
    return not name.startswith(".") and name.lower().endswith(RAW_SUFFIXES)


def _session_folder(session: date) -> str:
    return f"session={calendar.to_date(session).isoformat()}"


def _s3_error(exc: BaseException, spec: str, where: str, endpoint: str | None) -> SourceError:
    """A :class:`SourceError` naming the spec and what went wrong, from a boto3 failure."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            reason = f"no such bucket ({where})"
        elif code in ("NoSuchKey", "404", "NotFound") or status == 404:
            reason = f"no such key {where}"
        elif code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or (
            status == 403
        ):
            reason = f"access denied to {where} ({code}; check the AWS credentials)"
        else:
            reason = f"S3 error {code or status} on {where}: {err.get('Message', exc)}"
    elif isinstance(exc, EndpointConnectionError):
        reason = f"cannot reach the S3 endpoint {endpoint or '(AWS default)'}: {exc}"
    elif isinstance(exc, NoCredentialsError | PartialCredentialsError):
        reason = (
            f"no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    else:
        reason = f"S3 request for {where} failed: {reason}"
    return SourceError(f"{spec}: {reason}")


class _Fetcher:
    """Plans and copies raw inputs; holds one S3 client, created on first use."""

    def __init__(self, s3: S3Config | None) -> None:
        self._s3 = s3
        self._client: Any = None

    @property
    def config(self) -> S3Config:
        if self._s3 is None:
            self._s3 = S3Config.from_env()
        return self._s3

    def client(self, spec: str) -> Any:
        if self._client is None:
            from pipelines.s3 import make_client

            cfg = self.config
            try:
                self._client = make_client(cfg.endpoint_url, cfg.region, max_attempts=2)
            except Exception as exc:  # bad endpoint URL, unknown region...
                raise SourceError(f"{spec}: cannot create an S3 client: {exc}") from exc
        return self._client

    # ----------------------------------------------------------------------------- plans
    def plan(self, spec: str | Path, session: date) -> list[_Item]:
        """The files ``spec`` holds for ``session``, in name order (no data is copied)."""
        if isinstance(spec, str) and spec.startswith(_S3_SCHEME):
            return self._plan_s3(spec, session)
        return self._plan_local(Path(spec), session)

    @staticmethod
    def _plan_local(path: Path, session: date) -> list[_Item]:
        if path.is_file():
            return [_Item(name=path.name, local=path)]
        if not path.exists():
            raise SourceError(f"{path}: file or folder not found")
        if not path.is_dir():
            raise SourceError(f"{path}: not a regular file or folder")
        sub = path / _session_folder(session)
        folder = sub if sub.is_dir() else path
        try:
            names = sorted(
                e.name for e in os.scandir(folder) if e.is_file() and _is_bar_file(e.name)
            )
        except OSError as exc:
            raise SourceError(f"{path}: cannot list folder {folder}: {exc}") from exc
        if not names:
            raise _NoInput(
                f"{path}: no bar file ({', '.join(RAW_SUFFIXES)}) for session "
                f"{calendar.to_date(session)} in {folder}"
            )
        return [_Item(name=n, local=folder / n) for n in names]

    def _locate(self, spec: str) -> tuple[str, str]:
        """(bucket, key) of an ``s3://bucket/key`` URI; an empty bucket uses the config's."""
        bucket, _, key = spec[len(_S3_SCHEME) :].partition("/")
        if not bucket:
            cfg = self.config
            if not cfg.bucket:
                raise SourceError(f"{spec}: the URI names no bucket and {ENV_S3_BUCKET} is not set")
            bucket = cfg.bucket
            key = "/".join(p for p in (cfg.prefix, key) if p)
        return bucket, key

    def _list(self, spec: str, bucket: str, prefix: str) -> list[str]:
        """Keys of the bar files directly under ``prefix`` (not in sub-folders), sorted."""
        keys: list[str] = []
        try:
            pages = (
                self.client(spec)
                .get_paginator("list_objects_v2")
                .paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
            )
            for page in pages:
                keys.extend(
                    o["Key"]
                    for o in page.get("Contents", [])
                    if _is_bar_file(o["Key"][len(prefix) :])
                )
        except SourceError:
            raise
        except Exception as exc:
            where = f"{_S3_SCHEME}{bucket}/{prefix}"
            raise _s3_error(exc, spec, where, self.config.endpoint_url) from exc
        return sorted(keys, key=lambda k: k[len(prefix) :])

    def _plan_s3(self, spec: str, session: date) -> list[_Item]:
        bucket, key = self._locate(spec)
        leaf = key.rsplit("/", 1)[-1]
        if leaf and leaf.lower().endswith(RAW_SUFFIXES):
            return [_Item(name=leaf, bucket=bucket, key=key)]
        base = f"{key.rstrip('/')}/" if key.strip("/") else ""
        sub = f"{base}{_session_folder(session)}/"
        keys = self._list(spec, bucket, sub) or self._list(spec, bucket, base)
        if not keys:
            raise _NoInput(
                f"{spec}: no bar file ({', '.join(RAW_SUFFIXES)}) for session "
                f"{calendar.to_date(session)} under {_S3_SCHEME}{bucket}/{sub} "
                f"or {_S3_SCHEME}{bucket}/{base}"
            )
        return [_Item(name=k.rsplit("/", 1)[-1], bucket=bucket, key=k) for k in keys]

    # ----------------------------------------------------------------------------- copies
    def copy(self, items: Sequence[_Item], dest: Path, spec: str) -> list[Path]:
        """Copy ``items`` byte for byte into ``dest`` under their names."""
        dest.mkdir(parents=True, exist_ok=True)
        out: list[Path] = []
        for item in items:
            target = dest / item.name
            if item.local is not None:
                try:
                    shutil.copyfile(item.local, target)
                except OSError as exc:
                    raise SourceError(f"{spec}: cannot copy {item.local}: {exc}") from exc
            else:
                self._download(spec, item, target)
            out.append(target)
        return out

    def _download(self, spec: str, item: _Item, target: Path) -> None:
        where = item.describe()
        try:
            response = self.client(spec).get_object(Bucket=item.bucket, Key=item.key)
            with open(target, "wb") as fh:
                shutil.copyfileobj(response["Body"], fh)
        except SourceError:
            raise
        except OSError as exc:
            raise SourceError(f"{spec}: cannot write {target}: {exc}") from exc
        except Exception as exc:
            raise _s3_error(exc, spec, where, self.config.endpoint_url) from exc
        expected = response.get("ContentLength")
        size = target.stat().st_size
        if expected is not None and int(expected) != size:
            raise SourceError(f"{spec}: {where} truncated: got {size} of {expected} bytes")


def fetch_raw(
    spec: str | Path, session: date, dest: Path, s3: S3Config | None = None
) -> list[Path]:
    """Copy a session's raw input files, exactly as received, into a local folder.

    Parameters
    ----------
    spec : str or Path
        Where the input is:

        - a local file (``.csv``, ``.csv.gz``, ``.parquet``): that file;
        - a local drop folder: the bar files of ``<folder>/session=YYYY-MM-DD/`` if that
          folder exists, else the bar files directly in the folder;
        - ``s3://bucket/key`` whose last part ends in ``.csv``, ``.csv.gz`` or ``.parquet``:
          that object;
        - ``s3://bucket/prefix/`` (any other key, or none): the bar files directly under
          ``prefix/session=YYYY-MM-DD/`` if there are any, else directly under ``prefix/``;
        - ``s3:///key`` (empty bucket part): as above in ``s3.bucket``, below ``s3.prefix``.

        Folder and prefix listings keep only names ending in ``.csv``, ``.csv.gz`` or
        ``.parquet`` (hidden names skipped), sorted by name.
    session : date
        The session whose input is fetched.
    dest : Path
        Folder receiving the files (created if needed), under their own names.
    s3 : S3Config, optional
        S3 endpoint and default bucket / prefix; :meth:`S3Config.from_env` when omitted and
        ``spec`` is an ``s3://`` URI.

    Returns
    -------
    list[Path]
        The fetched files in ``dest``, in name order; byte-identical to their origin.

    Raises
    ------
    SourceError
        Naming ``spec`` and the reason: missing file or folder, nothing for the session, no
        such bucket or key, endpoint unreachable, access denied, missing credentials.
    """
    fetcher = _Fetcher(s3)
    return fetcher.copy(fetcher.plan(spec, session), Path(dest), str(spec))


def _fetched_bars(spec: str | Path, sessions: Sequence[date], fetcher: _Fetcher) -> pd.DataFrame:
    """Canonical bars of ``sessions`` from ``spec``: sessions with no input give no rows, and
    sessions sharing the same input files (a flat folder, one file) read them once."""
    groups: dict[tuple[_Item, ...], list[date]] = {}
    for day in dict.fromkeys(calendar.to_date(s) for s in sessions):
        try:
            items = tuple(fetcher.plan(spec, day))
        except _NoInput:
            continue
        groups.setdefault(items, []).append(day)
    frames: list[pd.DataFrame] = []
    with tempfile.TemporaryDirectory(prefix="afterbell-fetch-") as tmp:
        for i, (items, days) in enumerate(groups.items()):
            files = fetcher.copy(items, Path(tmp) / str(i), str(spec))
            frames.append(_select_sessions(read_bar_files(files), days))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return _empty_bars()
    return canonicalise(pd.concat(frames, ignore_index=True))


@dataclass(frozen=True)
class DropFolderSource:
    """Bars from a local drop folder of CSV / Parquet files (see :func:`fetch_raw`).

    Parameters
    ----------
    folder : Path
        Holds ``session=YYYY-MM-DD/`` sub-folders, or bar files directly.
    """

    folder: Path

    def bars(self, sessions: Sequence[date]) -> pd.DataFrame:
        """Canonical bars of ``sessions`` (a session without input files gives no rows).

        Raises
        ------
        SourceError
            If the folder is missing or a file is unreadable or holds bad values.
        """
        return _fetched_bars(Path(self.folder), sessions, _Fetcher(None))


@dataclass(frozen=True)
class S3Source:
    """Bars from S3 (or an S3-compatible endpoint), laid out like a drop folder.

    Parameters
    ----------
    config : S3Config
        Endpoint and default bucket / prefix.
    uri : str, optional
        ``s3://bucket/prefix/`` (or one object) to read; default the config's bucket and
        prefix.

    Raises
    ------
    ValueError
        If neither ``uri`` nor ``config.bucket`` names a bucket, or ``uri`` is no ``s3://`` URI.
    """

    config: S3Config
    uri: str | None = None

    def __post_init__(self) -> None:
        if self.uri is None and not self.config.bucket:
            raise ValueError(f"S3Source needs a uri or a bucket in its config ({ENV_S3_BUCKET})")
        if self.uri is not None and not self.uri.startswith(_S3_SCHEME):
            raise ValueError(f"S3Source uri must start with {_S3_SCHEME!r}: {self.uri!r}")

    @property
    def spec(self) -> str:
        """The URI read: ``uri``, or ``s3://bucket/prefix/`` from the config."""
        if self.uri is not None:
            return self.uri
        prefix = f"{self.config.prefix}/" if self.config.prefix else ""
        return f"{_S3_SCHEME}{self.config.bucket}/{prefix}"

    def bars(self, sessions: Sequence[date]) -> pd.DataFrame:
        """Canonical bars of ``sessions`` (a session without input objects gives no rows).

        Raises
        ------
        SourceError
            If the bucket is missing or unreachable, access is denied, or an object is
            unreadable or holds bad values.
        """
        return _fetched_bars(self.spec, sessions, _Fetcher(self.config))
