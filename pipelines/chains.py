"""Option chains in the lake: ingest a chain file, then its implied-vol surface and Heston fit.

Three lake tables, one partition per NYSE session (:mod:`pipelines.lake`)::

    option_chains  symbol, session, expiry, strike, type, price, spot, rate, dividend
    iv_surface     symbol, session, expiry, strike, type, price, iv, iv_error
    heston         symbol, session, spot, rate, dividend, v0, kappa, theta, sigma, rho, feller,
                   rmse_iv, max_abs_iv_error, n_options, evaluations, end_criteria, converged,
                   error

Units are those of :mod:`models.options`: expiries in years (Actual/365), ``rate`` and
``dividend`` continuously compounded decimals, ``iv`` an annualised decimal, ``type`` ``call`` or
``put``. Chains hold European options.

- :func:`ingest_chain` reads one symbol's chain file (:func:`models.options.read_chain`), with the
  market it was quoted in, into the session's ``option_chains`` partition. It is an upsert by
  symbol: the symbol's previous rows of that session are replaced, other symbols are kept, so
  repeating an ingest leaves a byte-identical partition. Everything is validated before anything
  is written: a bad file, market or session leaves the partition as it was.
- :func:`calibrate_chains` is the pure step: per symbol, the BSM implied volatility of every
  option (:func:`models.options.implied_vol_surface`) and a Heston calibration
  (:func:`models.options.calibrate_heston`, default initial guess). A symbol that cannot be
  calibrated gets a ``heston`` row with NaN parameters and the reason in ``error``; the other
  symbols are unaffected.
- :func:`calibrate_session` runs it on a session's ``option_chains`` partition and (over)writes
  the ``iv_surface`` and ``heston`` partitions of that session.

Notes
-----
Text columns of ``iv_surface`` and ``heston`` are pandas ``string`` columns, so their Parquet type
is ``string`` even when every value is missing (``error`` of a session where every fit worked)
or the partition is empty: every partition of a table has the same schema.

:func:`ingest_chain` reads, changes and rewrites the partition; two ingests of the same session
must not run at the same time (the nightly cycle runs them one after the other). Each write is
atomic, so a reader never sees a partial partition.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.options import (
    CHAIN_COLUMNS,
    Market,
    calibrate_heston,
    implied_vol_surface,
    read_chain,
)
from pipelines.calendar import require_session, to_date
from pipelines.lake import has_partition, read_table, write_partition

__all__ = [
    "CHAINS_TABLE",
    "CHAIN_STORE_COLUMNS",
    "HESTON_COLUMNS",
    "HESTON_TABLE",
    "SURFACE_COLUMNS",
    "SURFACE_TABLE",
    "ChainFileError",
    "ChainIngest",
    "calibrate_chains",
    "calibrate_session",
    "ingest_chain",
]

log = logging.getLogger(__name__)

#: Lake table of ingested chains.
CHAINS_TABLE = "option_chains"
#: Lake table of implied volatilities.
SURFACE_TABLE = "iv_surface"
#: Lake table of Heston calibrations (one row per symbol and session).
HESTON_TABLE = "heston"
#: Columns stored in :data:`CHAINS_TABLE` (plus ``session``, added by the lake).
CHAIN_STORE_COLUMNS: tuple[str, ...] = ("symbol", *CHAIN_COLUMNS, "spot", "rate", "dividend")
#: Columns of the surface returned by :func:`calibrate_chains`.
SURFACE_COLUMNS: tuple[str, ...] = ("symbol", *CHAIN_COLUMNS, "iv", "iv_error")
#: Columns of the Heston rows returned by :func:`calibrate_chains`.
HESTON_COLUMNS: tuple[str, ...] = (
    "symbol", "spot", "rate", "dividend", "v0", "kappa", "theta", "sigma", "rho", "feller",
    "rmse_iv", "max_abs_iv_error", "n_options", "evaluations", "end_criteria", "converged",
    "error",
)

_SORT_KEYS = ["symbol", "expiry", "strike", "type"]
_PARAMS = ("v0", "kappa", "theta", "sigma", "rho")
_SURFACE_TEXT = ("symbol", "type", "iv_error")
_HESTON_TEXT = ("symbol", "end_criteria", "error")


class ChainFileError(ValueError):
    """A chain file that cannot be ingested; the message starts with the file's path."""


@dataclass(frozen=True)
class ChainIngest:
    """What :func:`ingest_chain` stored.

    Attributes
    ----------
    session : date
        Partition session.
    symbol : str
        Underlying, as stored (stripped, upper case).
    rows : int
        Options stored for the symbol.
    path : Path
        The ``option_chains`` partition file.
    replaced : int
        Rows of the symbol that the ingest replaced (0 on a first ingest).
    """

    session: date
    symbol: str
    rows: int
    path: Path
    replaced: int = 0


# --------------------------------------------------------------------------------- ingest


def _symbol(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"symbol must be a string, got {value!r}")
    symbol = value.strip().upper()
    if not symbol or any(c.isspace() for c in symbol):
        raise ValueError(f"symbol must be a non-empty name without blanks, got {value!r}")
    return symbol


def _read_source(source: Path) -> pd.DataFrame:
    """The validated chain of ``source``, sorted; every problem named by the file's path."""
    try:
        chain = read_chain(source)
    except ValueError as exc:  # read_chain's messages start with the path; parsers' may not
        text = str(exc)
        raise ChainFileError(text if text.startswith(str(source)) else f"{source}: {text}"
                             ) from None
    frame = chain.loc[:, list(CHAIN_COLUMNS)]
    dupes = frame.duplicated(["expiry", "strike", "type"], keep=False)
    if dupes.any():
        rows = ", ".join(str(r) for r in frame.index[dupes][:10])
        raise ChainFileError(f"{source}: several quotes for one (expiry, strike, type), "
                             f"rows {rows}")
    return frame


def ingest_chain(lake_root: Path, session: date, symbol: str, source: Path, *, spot: float,
                 rate: float, dividend: float = 0.0) -> ChainIngest:
    """Store one symbol's option chain in the session's ``option_chains`` partition.

    Parameters
    ----------
    lake_root : Path
        Lake root (:attr:`pipelines.settings.Settings.lake_dir`).
    session : date
        NYSE session the chain was quoted on (the partition).
    symbol : str
        Underlying; blanks around it are stripped and it is upper-cased.
    source : Path
        CSV chain file, as read by :func:`models.options.read_chain` (columns ``expiry`` in
        years, ``strike``, ``type`` call/put, ``price``; other columns are not stored).
    spot : float
        Price of the underlying when the chain was quoted (positive).
    rate : float
        Risk-free rate, continuously compounded (finite).
    dividend : float, optional
        Dividend yield, continuously compounded (finite; default 0).

    Returns
    -------
    ChainIngest
        What was stored, and where.

    Raises
    ------
    ValueError
        If ``session`` is not an NYSE session (the message names the date), or the symbol or
        market is invalid.
    ChainFileError
        If the file is not a valid chain (a missing column, a bad value, the same option twice);
        the message names the file, and the rows where it can.
    FileNotFoundError
        If ``source`` does not exist.

    Notes
    -----
    Upsert by symbol: the symbol's earlier rows of that session are replaced and the other
    symbols' rows kept, so repeating an ingest gives a byte-identical partition. Nothing is
    written unless every check passes.
    """
    day = require_session(session)
    name = _symbol(symbol)
    market = Market(spot=spot, rate=rate, dividend=dividend)
    src = Path(source)
    chain = _read_source(src)
    new = chain.assign(symbol=name, spot=float(market.spot), rate=float(market.rate),
                       dividend=float(market.dividend))
    new = new.loc[:, list(CHAIN_STORE_COLUMNS)].sort_values(_SORT_KEYS, kind="stable")
    new.insert(1, "session", pd.Timestamp(day))
    new["session"] = new["session"].astype("datetime64[ns]")
    new = new.astype({"symbol": object, "type": object}).reset_index(drop=True)

    replaced = 0
    frame = new
    if has_partition(lake_root, CHAINS_TABLE, day):
        stored = read_table(lake_root, CHAINS_TABLE, day, day)
        mine = stored["symbol"] == name
        replaced = int(mine.sum())
        kept = stored.loc[~mine]
        if not kept.empty:
            frame = pd.concat([kept.loc[:, list(new.columns)], new], ignore_index=True)
    path = write_partition(lake_root, CHAINS_TABLE, day, frame)
    log.info("option chain %s %s: %d options from %s (%d replaced)", name, day, len(new), src,
             replaced)
    return ChainIngest(session=day, symbol=name, rows=len(new), path=path, replaced=replaced)


# --------------------------------------------------------------------------------- calibrate


def _market_of(symbol: str, rows: pd.DataFrame) -> Market:
    values: dict[str, float] = {}
    for column in ("spot", "rate", "dividend"):
        distinct = pd.unique(rows[column])
        if len(distinct) != 1:
            raise ValueError(f"{symbol}: the chain must have one {column}, got "
                             f"{', '.join(f'{v:g}' for v in sorted(distinct))}")
        values[column] = float(distinct[0])
    return Market(**values)


def _surface_frame(rows: list[pd.DataFrame]) -> pd.DataFrame:
    frame = (pd.concat(rows, ignore_index=True) if rows
             else pd.DataFrame({c: pd.Series(dtype=float) for c in SURFACE_COLUMNS}))
    frame = frame.loc[:, list(SURFACE_COLUMNS)].astype(
        {"expiry": float, "strike": float, "price": float, "iv": float}
    )
    frame = frame.astype({c: "string" for c in _SURFACE_TEXT})
    return frame.sort_values(_SORT_KEYS, kind="stable").reset_index(drop=True)


def _heston_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(HESTON_COLUMNS))
    floats = ["spot", "rate", "dividend", *_PARAMS, "rmse_iv", "max_abs_iv_error"]
    frame = frame.astype({**dict.fromkeys(floats, float), "n_options": "int64",
                          "evaluations": "int64", "feller": bool, "converged": bool})
    frame = frame.astype({c: "string" for c in _HESTON_TEXT})
    return frame.sort_values("symbol", kind="stable").reset_index(drop=True)


def _fit_symbol(symbol: str, rows: pd.DataFrame) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """(surface rows or None, Heston row) of one symbol; failures go to the row's ``error``."""
    row: dict[str, Any] = {
        "symbol": symbol, "spot": math.nan, "rate": math.nan, "dividend": math.nan,
        **dict.fromkeys(_PARAMS, math.nan), "feller": False, "rmse_iv": math.nan,
        "max_abs_iv_error": math.nan, "n_options": 0, "evaluations": 0, "end_criteria": None,
        "converged": False, "error": None,
    }
    surface: pd.DataFrame | None = None
    try:
        market = _market_of(symbol, rows)
        row.update(spot=market.spot, rate=market.rate, dividend=market.dividend)
        chain = rows.loc[:, list(CHAIN_COLUMNS)].reset_index(drop=True)
        chain.index = pd.RangeIndex(1, len(chain) + 1, name="row")
        with_iv = implied_vol_surface(chain, market)
        surface = with_iv.loc[:, [*CHAIN_COLUMNS, "iv", "iv_error"]].assign(symbol=symbol)
        row["n_options"] = int(np.isfinite(with_iv["iv"].to_numpy(dtype=float)).sum())
        fit = calibrate_heston(with_iv, market)
    except (ValueError, RuntimeError, ArithmeticError) as exc:  # QuantLib raises RuntimeError
        message = " ".join(str(exc).split()) or type(exc).__name__
        log.warning("calibrate_chains: no Heston calibration for %s: %s", symbol, message)
        row["error"] = message
        return surface, row
    p = fit.params
    row.update(v0=p.v0, kappa=p.kappa, theta=p.theta, sigma=p.sigma, rho=p.rho, feller=p.feller,
               rmse_iv=fit.rmse_iv, max_abs_iv_error=fit.max_abs_iv_error,
               n_options=fit.n_options, evaluations=fit.evaluations,
               end_criteria=fit.end_criteria, converged=fit.converged)
    if not fit.converged:
        log.warning("calibrate_chains: Heston calibration of %s did not converge (%s)", symbol,
                    fit.end_criteria)
    return surface, row


def calibrate_chains(chains: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Implied-volatility surface and Heston calibration of every symbol's chain.

    Parameters
    ----------
    chains : pandas.DataFrame
        Rows of one session's ``option_chains`` partition: the columns ``symbol``, ``expiry``,
        ``strike``, ``type``, ``price``, ``spot``, ``rate`` and ``dividend`` (one spot, rate and
        dividend per symbol). Other columns are ignored; a ``session`` column, if present, must
        hold a single session.

    Returns
    -------
    surface : pandas.DataFrame
        :data:`SURFACE_COLUMNS`: every option of each symbol whose implied volatilities could be
        computed, with ``iv`` (NaN where the price has none) and ``iv_error`` (the reason, else
        missing); sorted by symbol, expiry, strike, type.
    heston : pandas.DataFrame
        :data:`HESTON_COLUMNS`, one row per symbol sorted by symbol: the market, the calibrated
        parameters (``sigma`` is the vol of variance), ``feller``, the fit errors in implied
        volatility (``rmse_iv``, ``max_abs_iv_error``), ``n_options`` (options with an implied
        volatility, those fitted), the optimiser's ``evaluations``, ``end_criteria`` and
        ``converged``. A symbol that could not be calibrated (fewer than five options with an
        implied volatility, inconsistent market, a failed fit) has NaN parameters, ``feller``
        and ``converged`` False and the reason in ``error`` (missing otherwise).

    Raises
    ------
    ValueError
        If ``chains`` is not a DataFrame, lacks a column, has a missing symbol or spans several
        sessions. Problems of one symbol's chain never raise.
    """
    if not isinstance(chains, pd.DataFrame):
        raise ValueError(f"chains must be a pandas DataFrame, got {type(chains).__name__}")
    missing = [c for c in CHAIN_STORE_COLUMNS if c not in chains.columns]
    if missing:
        raise ValueError(f"chains: missing column(s) {', '.join(missing)} (required: "
                         f"{', '.join(CHAIN_STORE_COLUMNS)})")
    if chains["symbol"].isna().any():
        raise ValueError("chains: a row has no symbol")
    if "session" in chains.columns and chains["session"].nunique(dropna=False) > 1:
        raise ValueError("chains: rows of several sessions; calibrate one session at a time")
    surfaces: list[pd.DataFrame] = []
    hestons: list[dict[str, Any]] = []
    for symbol, rows in chains.groupby(chains["symbol"].astype(str), sort=True):
        surface, row = _fit_symbol(str(symbol), rows)
        if surface is not None:
            surfaces.append(surface)
        hestons.append(row)
    return _surface_frame(surfaces), _heston_frame(hestons)


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return str(value)


def calibrate_session(lake_root: Path, session: date) -> dict[str, Any]:
    """Calibrate every chain of a session and store the ``iv_surface`` and ``heston`` partitions.

    Parameters
    ----------
    lake_root : Path
        Lake root.
    session : date
        Session whose ``option_chains`` partition is read.

    Returns
    -------
    dict
        JSON-able summary. Without a chains partition ``{"session": "YYYY-MM-DD", "chains": 0}``
        and nothing is written. Otherwise also ``symbols`` (sorted), ``surface_rows``,
        ``without_iv`` (surface rows without an implied volatility), ``failed`` (symbols
        without a Heston calibration), ``heston`` (per symbol: ``v0``, ``kappa``, ``theta``,
        ``sigma``, ``rho``, ``feller``, ``rmse_iv``, ``max_abs_iv_error``, ``n_options``,
        ``evaluations``, ``end_criteria``, ``converged``, ``error``; NaN as null) and ``paths``
        (the two partition files).

    Notes
    -----
    Both partitions are overwritten, so the call is safe to repeat (and gives the same files).
    """
    day = to_date(session)
    if not has_partition(lake_root, CHAINS_TABLE, day):
        return {"session": day.isoformat(), "chains": 0}
    chains = read_table(lake_root, CHAINS_TABLE, day, day)
    surface, heston = calibrate_chains(chains)
    surface_path = write_partition(lake_root, SURFACE_TABLE, day, surface)
    heston_path = write_partition(lake_root, HESTON_TABLE, day, heston)
    fields = [c for c in HESTON_COLUMNS if c not in ("symbol", "spot", "rate", "dividend")]
    per_symbol = {
        str(r["symbol"]): {f: _json_value(r[f]) for f in fields}
        for r in heston.to_dict("records")
    }
    failed = [s for s, fit in per_symbol.items() if fit["error"] is not None]
    summary: dict[str, Any] = {
        "session": day.isoformat(),
        "chains": len(per_symbol),
        "symbols": sorted(per_symbol),
        "surface_rows": len(surface),
        "without_iv": int(surface["iv"].isna().sum()),
        "failed": failed,
        "heston": per_symbol,
        "paths": {SURFACE_TABLE: str(surface_path), HESTON_TABLE: str(heston_path)},
    }
    log.info("option chains %s: %d symbols calibrated, %d failed, %d surface rows", day,
             len(per_symbol) - len(failed), len(failed), len(surface))
    return summary
