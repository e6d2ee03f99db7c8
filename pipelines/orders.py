"""Pre-market risk controls and the paper broker: limits, circuit breakers, orders, audit log.

Conventions
-----------
* A weight is a signed fraction of equity in a :class:`pandas.Series` indexed by symbol
  (``targets``: wanted after the trade, ``current``: held now). A symbol in one of them and not
  the other has weight 0 in the other.
* ``daily_vol`` is the *daily* decimal volatility per symbol (an annualised forecast divided by
  ``sqrt(252)``); ``prices`` are per-share prices in the equity's currency.
* ``sectors`` maps every symbol that has (or is to get) a non-zero weight to its sector name.
* :func:`apply_limits`, :func:`check_breakers`, :func:`decide_targets`, :func:`orders_to_reach`
  and :func:`weights_after` are pure. Files are touched only by the kill-switch helpers and the
  paper broker (:class:`PaperBroker`, :func:`audit_records`, :func:`positions`). No clock is
  consulted: sessions and timestamps come in as arguments.

The limits (:class:`Limits`, table ``[limits]`` of ``afterbell.toml``), for weights ``w``::

    max_position    |w_i| per symbol
    max_sector      sum of |w_i| over the symbols of a sector (gross, so a long/short pair in one
                    sector counts twice: the limit bounds concentration, not net exposure)
    max_gross       sum of |w_i|
    max_net         |sum of w_i|
    max_trade_risk  per trade, relative to current: the one-session 99% loss of the trade,
                    |w_i - current_i| * daily_vol_i * trade_risk_z (2.33), as a fraction of equity

The circuit breakers (:func:`check_breakers`) halt trading after a session's loss beyond
``daily_loss_halt``, a drawdown from the peak beyond ``drawdown_halt``, ``max_consecutive_losses``
losing sessions in a row, or while the kill switch (the file ``$AFTERBELL_HOME/KILL_SWITCH``) is
present. Halted, :func:`decide_targets` keeps the book as it is (``halt_action = "freeze"``, no
orders at all, the default) or moves it towards cash within the trade-risk limit
(``"flatten"``).

Pre-market flow for session ``D``::

    book    = positions(root, D)                           # filled targets of the last session
    state   = check_breakers(equity, limits, kill_switch_on(home))
    result  = decide_targets(targets, book, sectors, daily_vol, limits, state)
    orders  = orders_to_reach(book, result.weights, prices, equity_now,
                              sectors=sectors, limits=limits)
    PaperBroker(root).write(D, orders, weights_after(book, orders), decision_record(...))

Layout written by :class:`PaperBroker` under its ``root``::

    session=D/orders.csv    the session's orders (overwritten by a re-run, atomically)
    session=D/targets.csv   the book after the orders fill (overwritten by a re-run, atomically)
    audit.jsonl             one JSON record per distinct decision; append-only
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from models.config import from_table
from models.sizing import symbol_names, symbol_series
from pipelines import calendar, lake

__all__ = [
    "AUDIT_NAME",
    "KILL_SWITCH_NAME",
    "ORDER_COLUMNS",
    "BreakerState",
    "LimitResult",
    "Limits",
    "PaperBroker",
    "apply_limits",
    "audit_records",
    "check_breakers",
    "decide_targets",
    "decision_record",
    "kill_switch_on",
    "kill_switch_path",
    "kill_switch_reason",
    "orders_to_reach",
    "positions",
    "set_kill_switch",
    "weights_after",
]

log = logging.getLogger("afterbell.orders")

HaltAction = Literal["freeze", "flatten"]
_HALT_ACTIONS: tuple[str, ...] = get_args(HaltAction)

#: File names.
KILL_SWITCH_NAME = "KILL_SWITCH"
AUDIT_NAME = "audit.jsonl"
ORDERS_NAME = "orders.csv"
TARGETS_NAME = "targets.csv"
#: Columns of :func:`orders_to_reach`.
ORDER_COLUMNS: tuple[str, ...] = (
    "symbol", "side", "quantity", "notional", "weight_before", "weight_after",
)

#: Slack of the limit checks, for float rounding only (weights are O(1)).
_TOL = 1e-12
_BISECTIONS = 60
#: A share count within this of a whole number is that number (float noise of weight / price).
_SHARE_SLACK = 1e-9
_WEIGHT = "weight"


# --------------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """Position limits and circuit-breaker thresholds (fractions of equity).

    Attributes
    ----------
    max_position : float
        Cap on ``|weight|`` per symbol.
    max_sector : float
        Cap on the gross weight (sum of ``|weight|``) of each sector.
    max_gross : float
        Cap on the sum of ``|weight|``.
    max_net : float
        Cap on ``|sum of weights|`` (0: market neutral; whole-share orders can rarely land on a
        net of exactly 0, so :func:`orders_to_reach` would then cut every trade that moves the
        net: give a neutral book a small positive ``max_net`` such as 0.01).
    max_trade_risk : float
        Cap on a trade's one-session 99% loss, ``|trade weight| * daily_vol * trade_risk_z``.
    trade_risk_z : float
        The normal quantile of that loss (2.33: one-sided 99%).
    daily_loss_halt : float
        Halt after a session whose equity return is below ``-daily_loss_halt``.
    drawdown_halt : float
        Halt while equity is more than ``drawdown_halt`` below its running peak.
    max_consecutive_losses : int
        Halt after this many losing sessions in a row.
    halt_action : {"freeze", "flatten"}
        Halted, keep the current book and send no order (``freeze``), or trade towards an empty
        book within the trade-risk limit (``flatten``).
    """

    max_position: float = 0.15
    max_sector: float = 0.30
    max_gross: float = 1.0
    max_net: float = 1.0
    max_trade_risk: float = 0.02
    trade_risk_z: float = 2.33
    daily_loss_halt: float = 0.05
    drawdown_halt: float = 0.10
    max_consecutive_losses: int = 5
    halt_action: HaltAction = "freeze"

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_position", "max_sector", "max_gross", "max_trade_risk",
                     "trade_risk_z"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                problems.append(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.max_net) and self.max_net >= 0.0):
            problems.append(f"max_net must be a finite number >= 0, got {self.max_net}")
        for name in ("daily_loss_halt", "drawdown_halt"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                problems.append(f"{name} must be in (0, 1), got {value}")
        if self.max_consecutive_losses < 1:
            problems.append(
                f"max_consecutive_losses must be >= 1, got {self.max_consecutive_losses}"
            )
        if self.halt_action not in _HALT_ACTIONS:
            problems.append(
                f"halt_action must be one of {', '.join(_HALT_ACTIONS)}, got {self.halt_action!r}"
            )
        if problems:
            raise ValueError("invalid limits: " + "; ".join(problems))

    @property
    def max_trade(self) -> float:
        """``max_trade_risk / trade_risk_z``: the largest ``|trade weight| * daily_vol``."""
        return self.max_trade_risk / self.trade_risk_z

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> Limits:
        """Limits from a mapping such as the ``[limits]`` table of a TOML file.

        Parameters
        ----------
        m : Mapping[str, Any]
            Field name to value; missing fields keep their defaults.

        Returns
        -------
        Limits

        Raises
        ------
        ValueError
            On keys that are not limits (all of them named), on values of the wrong type (an
            integer for ``max_consecutive_losses``, a string for ``halt_action``, numbers for the
            others; booleans never) and on values out of range.
        """
        return from_table(cls, m, label="limit", plural="limit(s)")

    def as_dict(self) -> dict[str, Any]:
        """The limits as a plain dict (for records)."""
        return asdict(self)


@dataclass(frozen=True)
class LimitResult:
    """Target weights that respect the limits, and why they differ from the wanted ones.

    Attributes
    ----------
    weights : pandas.Series
        Weights per symbol (the union of the targets' and the current book's symbols, sorted).
    breaches : list of str
        One human-readable line per adjustment (and per limit the current book already breaks).
    """

    weights: pd.Series
    breaches: list[str]


@dataclass(frozen=True)
class BreakerState:
    """The circuit breakers at the last close.

    Attributes
    ----------
    halted : bool
        Whether trading is halted.
    reasons : list of str
        One line per breaker that tripped.
    last_return : float or None
        Equity return of the last session (None with fewer than two sessions).
    drawdown : float
        Fall of the last equity from its running peak, as a fraction of the peak.
    losing_streak : int
        Losing sessions in a row up to the last one.
    kill_switch : bool
        Whether the kill switch was on.
    """

    halted: bool
    reasons: list[str]
    last_return: float | None = None
    drawdown: float = 0.0
    losing_streak: int = 0
    kill_switch: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The state as a plain dict (for records)."""
        return asdict(self)


# --------------------------------------------------------------------------------- helpers
def _aligned(targets: pd.Series, current: pd.Series) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """The union of symbols (sorted) and both weight vectors on it (0 where absent)."""
    t = symbol_series(targets, "targets")
    c = symbol_series(current, "current")
    for what, s in (("targets", t), ("current", c)):
        bad = s.index[~np.isfinite(s.to_numpy(float))]
        if len(bad):
            raise ValueError(f"{what} weight is not finite for: {symbol_names(bad)}")
    index = t.index.union(c.index, sort=False)
    with contextlib.suppress(TypeError):
        index = index.sort_values()
    return (
        index,
        t.reindex(index, fill_value=0.0).to_numpy(float),
        c.reindex(index, fill_value=0.0).to_numpy(float),
    )


def _sector_codes(
    index: pd.Index, sectors: Mapping[str, str], needed: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Sector number of each symbol; symbols never weighted go to a bucket that is not checked.

    Raises naming the symbols of ``needed`` without a sector.
    """
    if not isinstance(sectors, Mapping):
        raise TypeError(f"sectors must be a mapping symbol -> sector, got {type(sectors).__name__}")
    missing = [sym for sym, need in zip(index, needed, strict=True) if need and sym not in sectors]
    if missing:
        raise ValueError(f"sectors has no sector for: {symbol_names(missing)}")
    names = sorted({str(sectors[sym]) for sym in index if sym in sectors})
    number = {name: k for k, name in enumerate(names)}
    codes = np.array(
        [number[str(sectors[sym])] if sym in sectors else len(names) for sym in index],
        dtype=np.int64,
    )
    return codes, names


@dataclass(frozen=True)
class _Bounds:
    """Per-limit bounds ``max(limit, value at current)`` (the no-worse-than-current rule)."""

    position: np.ndarray
    sector: np.ndarray
    gross: float
    net: float


def _sector_gross(w: np.ndarray, codes: np.ndarray, n_sectors: int) -> np.ndarray:
    return np.bincount(codes, weights=np.abs(w), minlength=n_sectors + 1)[:n_sectors]


def _bounds(c: np.ndarray, codes: np.ndarray, n_sectors: int, limits: Limits) -> _Bounds:
    return _Bounds(
        position=np.maximum(limits.max_position, np.abs(c)),
        sector=np.maximum(limits.max_sector, _sector_gross(c, codes, n_sectors)),
        gross=max(limits.max_gross, float(np.abs(c).sum())),
        net=max(limits.max_net, abs(float(c.sum()))),
    )


@dataclass(frozen=True)
class _Breach:
    """A broken bound: ``key`` names it (``("sector", k)``...), ``kind`` is ``position``,
    ``sector``, ``gross``, ``net_long`` (sum too high) or ``net_short`` (sum too low)."""

    key: tuple[Any, ...]
    kind: str
    scope: np.ndarray
    excess: float


def _violations(w: np.ndarray, codes: np.ndarray, n_sectors: int, b: _Bounds) -> list[_Breach]:
    """Every broken bound, in a fixed order (positions, sectors, gross, net)."""
    out: list[_Breach] = []
    excess = np.abs(w) - b.position
    for i in np.flatnonzero(excess > _TOL):
        scope = np.zeros(w.shape[0], dtype=bool)
        scope[i] = True
        out.append(_Breach(("position", int(i)), "position", scope, float(excess[i])))
    sec = _sector_gross(w, codes, n_sectors) - b.sector
    for k in np.flatnonzero(sec > _TOL):
        out.append(_Breach(("sector", int(k)), "sector", codes == k, float(sec[k])))
    everyone = np.ones(w.shape[0], dtype=bool)
    gross = float(np.abs(w).sum()) - b.gross
    if gross > _TOL:
        out.append(_Breach(("gross",), "gross", everyone, gross))
    net = float(w.sum())
    if net - b.net > _TOL:
        out.append(_Breach(("net",), "net_long", everyone, net - b.net))
    elif -net - b.net > _TOL:
        out.append(_Breach(("net",), "net_short", everyone, -net - b.net))
    return out


def _label(x: Any) -> str:
    """A session label for messages (dates without a time)."""
    if isinstance(x, pd.Timestamp):
        return x.date().isoformat() if x == x.normalize() else x.isoformat()
    if isinstance(x, date):
        return x.isoformat()
    return str(x)


def _fmt(x: float) -> str:
    return f"{x:+.4f}" if x < 0 else f"{x:.4f}"


# --------------------------------------------------------------------------------- limits
def _static_limits(
    t: np.ndarray,
    index: pd.Index,
    codes: np.ndarray,
    names: list[str],
    limits: Limits,
    notes: list[str],
) -> np.ndarray:
    """Position clip, sector scale-down, gross scale-down, net trim (each keeps the earlier)."""
    p = limits.max_position
    w = np.clip(t, -p, p)
    for i in np.flatnonzero(w != t):
        notes.append(f"{index[int(i)]} target {_fmt(t[i])} clipped to {_fmt(w[i])} "
                     f"(max_position {p:g})")
    sec = _sector_gross(w, codes, len(names))
    for k in np.flatnonzero(sec > limits.max_sector):
        members = codes == k
        w[members] *= limits.max_sector / sec[k]
        notes.append(
            f"sector {names[k]} gross {sec[k]:.4f} scaled to {limits.max_sector:.4f} "
            f"(max_sector): {symbol_names(index[members])}"
        )
    gross = float(np.abs(w).sum())
    if gross > limits.max_gross:
        w *= limits.max_gross / gross
        notes.append(f"gross {gross:.4f} scaled to {limits.max_gross:.4f} (max_gross)")
    longs, shorts = float(w[w > 0].sum()), float(-w[w < 0].sum())
    if longs - shorts > limits.max_net:
        w[w > 0] *= (limits.max_net + shorts) / longs
        notes.append(f"net {longs - shorts:.4f} brought to {limits.max_net:.4f} by scaling the "
                     f"long side (max_net)")
    elif shorts - longs > limits.max_net:
        w[w < 0] *= (limits.max_net + longs) / shorts
        notes.append(f"net {longs - shorts:+.4f} brought to {-limits.max_net:+.4f} by scaling the "
                     f"short side (max_net)")
    return w


def _current_notes(
    c: np.ndarray, index: pd.Index, codes: np.ndarray, names: list[str], limits: Limits
) -> list[str]:
    notes = []
    tail = "the new weights do not make it worse"
    for i in np.flatnonzero(np.abs(c) > limits.max_position + _TOL):
        notes.append(f"current {index[int(i)]} weight {_fmt(c[i])} already breaks max_position "
                     f"{limits.max_position:g}; {tail}")
    sec = _sector_gross(c, codes, len(names))
    for k in np.flatnonzero(sec > limits.max_sector + _TOL):
        notes.append(f"current sector {names[k]} gross {sec[k]:.4f} already breaks max_sector "
                     f"{limits.max_sector:g}; {tail}")
    gross, net = float(np.abs(c).sum()), float(c.sum())
    if gross > limits.max_gross + _TOL:
        notes.append(f"current gross {gross:.4f} already breaks max_gross {limits.max_gross:g}; "
                     f"{tail}")
    if abs(net) > limits.max_net + _TOL:
        notes.append(f"current net {net:+.4f} already breaks max_net {limits.max_net:g}; {tail}")
    return notes


def _trade_caps(
    d: np.ndarray, index: pd.Index, daily_vol: pd.Series, limits: Limits
) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``|trade weight|`` per symbol (inf where no trade is wanted or vol is 0), and the
    daily vols (0 where no trade is wanted)."""
    v = symbol_series(daily_vol, "daily_vol")
    trading = index[d != 0.0]
    missing = trading.difference(v.index, sort=False)
    if len(missing):
        raise ValueError(f"daily_vol has no value for: {symbol_names(missing)}")
    vols = v.reindex(index).to_numpy(float)
    bad = index[(d != 0.0) & ~(np.isfinite(vols) & (vols >= 0.0))]
    if len(bad):
        raise ValueError(f"daily_vol must be finite and >= 0; bad for: {symbol_names(bad)}")
    caps = np.full(d.shape[0], np.inf)
    risky = (d != 0.0) & (vols > 0.0)
    with np.errstate(over="ignore"):  # a subnormal vol: no cap
        caps[risky] = limits.max_trade / vols[risky]
    return caps, np.where(d != 0.0, vols, 0.0)


def apply_limits(
    targets: pd.Series,
    current: pd.Series,
    sectors: Mapping[str, str],
    daily_vol: pd.Series,
    limits: Limits,
) -> LimitResult:
    """Bring ``targets`` within every limit, trading from ``current``.

    Parameters
    ----------
    targets : pandas.Series
        Wanted weights per symbol (any size: a sizing rule's proposal).
    current : pandas.Series
        Weights held now.
    sectors : Mapping[str, str]
        Sector of every symbol with a non-zero target or current weight.
    daily_vol : pandas.Series
        Daily volatility of every symbol whose weight is to change.
    limits : Limits
        The limits.

    Returns
    -------
    LimitResult
        The weights (union of the symbols of ``targets`` and ``current``, sorted) and one line
        per adjustment, e.g. ``"AAPL target 0.2200 clipped to 0.1500 (max_position 0.15)"``.

    Raises
    ------
    ValueError
        Naming the symbols with a non-finite weight, without a sector, or without a usable
        ``daily_vol``.

    Notes
    -----
    The steps, in order:

    1. position: clip each target to ``[-max_position, max_position]``;
    2. sector: scale every sector whose gross weight exceeds ``max_sector`` down to it;
    3. gross: scale all weights down to ``max_gross``;
    4. net: scale the long (or short) side down until ``|net| = max_net``;
    5. trade risk: shrink each symbol's trade ``t_i - c_i`` to at most
       ``max_trade_risk / (trade_risk_z * daily_vol_i)`` in size, towards ``current``;
    6. back-off: if the per-symbol shrink of step 5 broke a sector, gross or net bound (trading
       only part of a switch between two symbols can raise a sector's gross), scale every trade
       by the largest ``lambda`` in ``[0, 1]`` that keeps all of them (bisection).

    Each of steps 2 to 4 only shrinks magnitudes, so it keeps what the earlier steps achieved:
    after step 4 the targets satisfy the position, sector, gross and net limits (the *static*
    limits, each a convex set of weights).

    Guarantee: with ``w`` the result and ``c`` the current weights,

    * ``|w_i - c_i| * daily_vol_i * trade_risk_z <= max_trade_risk`` for every symbol, always;
    * every static limit ``g(w) <= max(limit, g(c))`` (per symbol, per sector, gross and net):
      if ``current`` satisfies the limits, so does ``w``; if it breaks one, the trade does not
      make that breach worse and does not break a limit ``current`` keeps;
    * each ``w_i`` lies between ``c_i`` and the limited target of step 4: no trade goes further
      than, or against, what was asked.

    The back-off keeps the bounds because it moves along the segment from ``c`` (which meets
    them by definition) to the shrunk weights, and each bound is convex: the feasible part of
    the segment is an interval that contains ``c``. It is found on the same float values that
    are returned, so the guarantee holds up to float rounding of the scalings (about 1e-16).
    """
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be Limits, got {type(limits).__name__}")
    index, t_raw, c = _aligned(targets, current)
    codes, names = _sector_codes(index, sectors, (t_raw != 0.0) | (c != 0.0))
    notes = _current_notes(c, index, codes, names, limits)
    t = _static_limits(t_raw, index, codes, names, limits, notes)

    d = t - c
    caps, vols = _trade_caps(d, index, daily_vol, limits)
    too_big = np.abs(d) > caps
    w_cap = np.where(too_big, c + np.clip(d, -caps, caps), t)
    for i in np.flatnonzero(too_big):
        notes.append(
            f"{index[int(i)]} trade {d[i]:+.4f} shrunk to {w_cap[i] - c[i]:+.4f} towards current "
            f"{_fmt(c[i])} (max_trade_risk {limits.max_trade_risk:g}: 99% one-session loss "
            f"{abs(d[i]) * vols[i] * limits.trade_risk_z:.4f} of equity at daily vol "
            f"{vols[i]:.4f})"
        )

    bounds = _bounds(c, codes, len(names), limits)
    broken = _violations(w_cap, codes, len(names), bounds)
    if not broken:
        return LimitResult(pd.Series(w_cap, index=index, name=_WEIGHT), notes)
    step = w_cap - c
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if _violations(c + mid * step, codes, len(names), bounds):
            hi = mid
        else:
            lo = mid
    w = c + lo * step
    kinds = sorted({str(br.key[0]) for br in broken})
    notes.append(
        f"all trades scaled by {lo:.4f} towards current: the trade-risk shrink would otherwise "
        f"break max_{', max_'.join(kinds)}"
    )
    return LimitResult(pd.Series(w, index=index, name=_WEIGHT), notes)


def decide_targets(
    targets: pd.Series,
    current: pd.Series,
    sectors: Mapping[str, str],
    daily_vol: pd.Series,
    limits: Limits,
    breakers: BreakerState,
) -> LimitResult:
    """:func:`apply_limits`, or the halted book when a circuit breaker tripped.

    Parameters
    ----------
    targets, current, sectors, daily_vol, limits
        As in :func:`apply_limits`.
    breakers : BreakerState
        From :func:`check_breakers`.

    Returns
    -------
    LimitResult
        Not halted: :func:`apply_limits`. Halted with ``halt_action = "freeze"``: the current
        weights (so :func:`orders_to_reach` sends no order), with the breaker reasons. Halted with
        ``"flatten"``: :func:`apply_limits` of all-zero targets (every trade reduces a position;
        the trade-risk limit still applies, so a large position may take several sessions).
    """
    if not breakers.halted:
        return apply_limits(targets, current, sectors, daily_vol, limits)
    index, _, c = _aligned(targets, current)
    notes = [f"halted: {reason}" for reason in breakers.reasons]
    if limits.halt_action == "freeze":
        notes.append("halt_action freeze: targets = current weights, no orders")
        return LimitResult(pd.Series(c, index=index, name=_WEIGHT), notes)
    notes.append("halt_action flatten: targets = 0, within the trade-risk limit")
    flat = apply_limits(pd.Series(0.0, index=index), current, sectors, daily_vol, limits)
    return LimitResult(flat.weights, notes + flat.breaches)


# --------------------------------------------------------------------------------- breakers
def check_breakers(
    equity: pd.Series, limits: Limits, kill_switch: bool = False
) -> BreakerState:
    """Whether trading halts, judged on the equity curve up to the last close.

    Parameters
    ----------
    equity : pandas.Series
        Equity (> 0) at each session's close, indexed by session in increasing order, ending at
        the last close before the decision.
    limits : Limits
        ``daily_loss_halt``, ``drawdown_halt`` and ``max_consecutive_losses``.
    kill_switch : bool
        Whether the kill switch is on (:func:`kill_switch_on`).

    Returns
    -------
    BreakerState
        Halted when any of these holds (each one listed in ``reasons``):

        * the last session's return ``equity[-1] / equity[-2] - 1`` is below
          ``-daily_loss_halt``;
        * the drawdown ``1 - equity[-1] / max(equity)`` exceeds ``drawdown_halt``;
        * the last ``max_consecutive_losses`` (or more) session returns are all below 0 (a flat
          session ends a losing streak);
        * the kill switch is on.

        The comparisons are strict, with a 1e-12 slack so that a loss of exactly the threshold
        (5.000% against 0.05) does not halt on float rounding.

    Raises
    ------
    ValueError
        When ``equity`` is not in increasing session order, or holds a value that is not a
        finite number > 0 (the session named).
    """
    e = symbol_series(equity, "equity")
    if not e.index.is_monotonic_increasing:
        raise ValueError("equity must be indexed by session in increasing order")
    values = e.to_numpy(float)
    bad = e.index[~(np.isfinite(values) & (values > 0.0))]
    if len(bad):
        raise ValueError(
            f"equity must be finite and > 0; bad at session(s): {', '.join(map(_label, bad))}"
        )
    reasons: list[str] = []
    last_return: float | None = None
    drawdown = 0.0
    streak = 0
    if len(values) >= 2:
        rets = values[1:] / values[:-1] - 1.0
        last_return = float(rets[-1])
        losing = rets < 0.0
        streak = len(losing) if losing.all() else int(np.argmin(losing[::-1]))
        if last_return < -limits.daily_loss_halt - _TOL:
            reasons.append(f"session {_label(e.index[-1])} lost {-last_return:.2%} of equity "
                           f"(daily_loss_halt {limits.daily_loss_halt:.2%})")
        if streak >= limits.max_consecutive_losses:
            reasons.append(f"{streak} losing sessions in a row up to {_label(e.index[-1])} "
                           f"(max_consecutive_losses {limits.max_consecutive_losses})")
    if len(values):
        peak = float(values.max())
        drawdown = 1.0 - float(values[-1]) / peak
        if drawdown > limits.drawdown_halt + _TOL:
            reasons.append(f"drawdown {drawdown:.2%} from the peak {peak:,.2f} "
                           f"(drawdown_halt {limits.drawdown_halt:.2%})")
    if kill_switch:
        reasons.append("kill switch is on")
    return BreakerState(
        halted=bool(reasons),
        reasons=reasons,
        last_return=last_return,
        drawdown=drawdown,
        losing_streak=streak,
        kill_switch=bool(kill_switch),
    )


def kill_switch_path(home: Path) -> Path:
    """``$AFTERBELL_HOME/KILL_SWITCH``: while this file exists, trading is halted."""
    return Path(home) / KILL_SWITCH_NAME


def kill_switch_on(home: Path) -> bool:
    """Whether the kill switch file exists."""
    return kill_switch_path(home).exists()


def kill_switch_reason(home: Path) -> str | None:
    """The reason written in the kill switch file, or None when the switch is off."""
    try:
        return kill_switch_path(home).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def set_kill_switch(home: Path, on: bool, reason: str) -> Path:
    """Turn the kill switch on (write the file, atomically, with ``reason``) or off (remove it).

    Parameters
    ----------
    home : Path
        ``$AFTERBELL_HOME``.
    on : bool
        The new state; setting the state it already has is harmless (on again rewrites the
        reason).
    reason : str
        Why (required, non-blank): kept in the file when turning on, logged either way.

    Returns
    -------
    Path
        The kill switch path.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("set_kill_switch needs a non-blank reason")
    path = kill_switch_path(home)
    if on:
        lake.write_text_atomic(path, reason.strip() + "\n")
        log.warning("kill switch ON (%s): %s", path, reason.strip())
    else:
        path.unlink(missing_ok=True)
        log.warning("kill switch OFF (%s): %s", path, reason.strip())
    return path


# --------------------------------------------------------------------------------- orders
def _repair(
    q: np.ndarray,
    c: np.ndarray,
    per_share: np.ndarray,
    codes: np.ndarray,
    n_sectors: int,
    bounds: _Bounds,
) -> np.ndarray:
    """Take whole shares off trades until every static bound holds.

    Each pass looks at the first broken bound and the trades that worsen it (those that raise a
    ``|weight|`` in its scope; the buys, or the sells, for the net). It takes off one of them,
    the fewest shares (by weight) that mend that bound without breaking one that held; when no
    such partial cut exists it cancels the largest of those trades. A partial cut lowers the
    number of broken bounds and a cancellation removes a trade, so there are at most
    ``(trades + 1) * bounds`` passes; at worst no trade is left, where the bounds hold by
    definition (they are ``max(limit, value at current)``).
    """
    q = q.copy()
    while True:
        broken = _violations(c + q * per_share, codes, n_sectors, bounds)
        if not broken:
            return q
        first = broken[0]
        w = c + q * per_share
        if first.kind == "net_long":
            cand = first.scope & (q > 0)
        elif first.kind == "net_short":
            cand = first.scope & (q < 0)
        else:
            cand = first.scope & (q != 0) & (np.abs(w) > np.abs(c))
        idx = np.flatnonzero(cand)
        if len(idx) == 0:  # cannot happen (see the proof in orders_to_reach)
            q[:] = 0
            continue
        held = np.abs(q[idx])
        cut = np.minimum(np.maximum(np.ceil(first.excess / per_share[idx]), 1.0), held)
        allowed = {br.key for br in broken} - {first.key}
        for j in np.argsort(cut * per_share[idx], kind="stable"):
            trial = q.copy()
            trial[idx[j]] -= int(np.sign(q[idx[j]])) * int(cut[j])
            after = _violations(c + trial * per_share, codes, n_sectors, bounds)
            if {br.key for br in after} <= allowed:
                q = trial
                break
        else:
            q[idx[int(np.argmax(held * per_share[idx]))]] = 0


def orders_to_reach(
    current: pd.Series,
    targets: pd.Series,
    prices: pd.Series,
    equity: float,
    *,
    sectors: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> pd.DataFrame:
    """Whole-share orders that move the book from ``current`` towards ``targets``.

    Parameters
    ----------
    current : pandas.Series
        Weights held now.
    targets : pandas.Series
        Weights wanted (normally :attr:`LimitResult.weights`).
    prices : pandas.Series
        Price per share of every symbol whose weight is to change.
    equity : float
        Equity the weights are fractions of (> 0).
    sectors : Mapping[str, str], optional
        Sectors, needed with ``limits``.
    limits : Limits, optional
        When given, the rounded book is also kept within the position, sector, gross and net
        bounds (see Notes).

    Returns
    -------
    pandas.DataFrame
        One row per order (symbols whose share count does not change are left out), sorted by
        symbol, with the columns ``symbol``, ``side`` (``buy`` / ``sell``), ``quantity`` (shares,
        > 0), ``notional`` (``quantity * price``), ``weight_before`` (current) and
        ``weight_after`` (``weight_before +/- quantity * price / equity``).

    Raises
    ------
    ValueError
        On an equity that is not a finite number > 0, and naming the symbols to trade without a
        finite price > 0.

    Notes
    -----
    The share count of each trade is ``(target - current) * equity / price`` rounded towards
    zero (a count within 1e-9 of a whole number, float noise, is that number if the weight then
    passes the target by no more than 1e-12), so every weight after lies between its current and
    its target weight: the position and per-trade risk limits hold whenever they hold for
    ``current`` and ``targets``. The sums (sector, gross, net) can still be broken by rounding
    trades in opposite directions (selling a fraction of a share less of one symbol than the buys
    of another assume). With ``limits``, shares are then taken off the trades that worsen a
    broken bound until every bound ``max(limit, value at current)`` holds again (which
    :func:`apply_limits` guarantees for the targets), so the executed book meets the same
    guarantee as the targets, up to 1e-12. A broken bound always has a trade to cut: a sector or
    the gross above its value at current needs some ``|weight|`` above its current one, which
    only a trade gives; a net above (below) its current value needs a buy (a sell). Cutting
    only moves weights back towards current, so the position and trade-risk limits keep
    holding. The book held between sessions is in weights, so ``current`` may stand for a
    fractional number of shares; only the trades are whole.
    """
    index, t, c = _aligned(targets, current)
    eq = float(equity)
    if not (math.isfinite(eq) and eq > 0.0):
        raise ValueError(f"equity must be a finite number > 0, got {equity!r}")
    d = t - c
    px = symbol_series(prices, "prices")
    trading = index[d != 0.0]
    missing = trading.difference(px.index, sort=False)
    if len(missing):
        raise ValueError(f"prices has no price for: {symbol_names(missing)}")
    price = px.reindex(index).to_numpy(float)
    bad = index[(d != 0.0) & ~(np.isfinite(price) & (price > 0.0))]
    if len(bad):
        raise ValueError(f"prices must be finite and > 0; bad for: {symbol_names(bad)}")
    price = np.where(d != 0.0, price, 1.0)
    per_share = price / eq
    x = d / per_share
    q = np.trunc(x + np.sign(x) * _SHARE_SLACK)  # 499.99999999999994 shares are 500
    if not np.isfinite(q).all() or np.abs(q).max(initial=0.0) > 2.0**62:
        raise ValueError("orders_to_reach: share counts out of range (equity / price too large)")
    qi = q.astype(np.int64)
    over = np.abs(qi * per_share) > np.abs(d) + _TOL  # never past the target beyond rounding
    qi[over] -= np.sign(qi[over])
    if limits is not None:
        if sectors is None:
            raise ValueError("orders_to_reach needs sectors together with limits")
        codes, names = _sector_codes(index, sectors, (t != 0.0) | (c != 0.0))
        qi = _repair(qi, c, per_share, codes, len(names), _bounds(c, codes, len(names), limits))
    keep = qi != 0
    qty = np.abs(qi[keep])
    return pd.DataFrame({
        "symbol": [str(s) for s in index[keep]],
        "side": np.where(qi[keep] > 0, "buy", "sell"),
        "quantity": qty.astype(np.int64),
        "notional": qty * price[keep],
        "weight_before": c[keep],
        "weight_after": c[keep] + qi[keep] * per_share[keep],
    }, columns=list(ORDER_COLUMNS))


def weights_after(current: pd.Series, orders: pd.DataFrame) -> pd.Series:
    """The book once ``orders`` (from :func:`orders_to_reach`) fill at their prices.

    Parameters
    ----------
    current : pandas.Series
        Weights held before the orders.
    orders : pandas.DataFrame
        Orders, with ``symbol`` and ``weight_after``.

    Returns
    -------
    pandas.Series
        ``current`` with each ordered symbol's weight replaced by its ``weight_after``; symbols
        of the union, sorted.
    """
    w = symbol_series(current, "current").copy()
    for sym, after in zip(orders["symbol"], orders["weight_after"], strict=True):
        w.loc[sym] = float(after)
    with contextlib.suppress(TypeError):
        w = w.sort_index()
    return w.rename(_WEIGHT)


# --------------------------------------------------------------------------------- audit
def _jsonable(x: Any, where: str = "decision") -> Any:
    """``x`` as plain JSON values (non-finite floats become null)."""
    if x is None or isinstance(x, bool | str):
        return x
    if isinstance(x, np.generic):
        return _jsonable(x.item(), where)
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, datetime | date):
        return x.isoformat()
    if isinstance(x, pd.Timestamp):
        return x.isoformat()
    if isinstance(x, Path):
        return str(x)
    if is_dataclass(x) and not isinstance(x, type):
        return _jsonable(asdict(x), where)
    if isinstance(x, pd.DataFrame):
        return [_jsonable(row, f"{where}[{i}]")
                for i, row in enumerate(x.to_dict(orient="records"))]
    if isinstance(x, pd.Series):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in x.items()}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(x)]
    raise ValueError(f"{where} of type {type(x).__name__} cannot be stored in the audit log")


def _canonical(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def decision_record(
    model_version: str,
    signals: pd.Series,
    forecasts: pd.Series,
    limits: Limits,
    breakers: BreakerState,
    result: LimitResult,
    **extra: Any,
) -> dict[str, Any]:
    """The ``decision`` mapping :meth:`PaperBroker.write` records: every input of the decision.

    Parameters
    ----------
    model_version : str
        The champion that made the forecasts.
    signals, forecasts : pandas.Series
        The signals and the volatility forecasts per symbol.
    limits : Limits
        The limits applied.
    breakers : BreakerState
        The circuit breakers.
    result : LimitResult
        Its ``breaches`` become the record's ``reasons``.
    **extra
        Anything else worth keeping (sizing spec, prices, equity...); JSON-able values only.

    Returns
    -------
    dict
    """
    return {
        "model_version": str(model_version),
        "signals": signals,
        "forecasts": forecasts,
        "limits": limits.as_dict(),
        "breakers": breakers.as_dict(),
        "reasons": list(result.breaches),
        **extra,
    }


_RESERVED = ("id", "session", "orders", "targets", "recorded_at", "decision")


class PaperBroker:
    """Order files and the audit log of a paper account under ``root``.

    The paper broker fills every order of session ``D`` at the open of ``D`` (the next open
    after the pre-market decision) at the weights of ``targets.csv``: no slippage, no partial
    fill. The book is kept in weights: :func:`positions` before session ``D`` is the
    ``targets.csv`` of the latest earlier session that has one.

    Parameters
    ----------
    root : Path
        Folder of the account (created on the first write).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def audit_path(self) -> Path:
        """``root/audit.jsonl``."""
        return self.root / AUDIT_NAME

    def session_dir(self, session: date | str) -> Path:
        """``root/session=YYYY-MM-DD``."""
        return self.root / f"session={calendar.to_date(session).isoformat()}"

    def write(
        self,
        session: date | str,
        orders: pd.DataFrame,
        targets: pd.Series,
        decision: Mapping[str, Any],
        *,
        recorded_at: datetime | str | None = None,
    ) -> Path:
        """Write the session's orders and book, and record the decision in the audit log.

        Parameters
        ----------
        session : date or str
            The session the orders are for.
        orders : pandas.DataFrame
            From :func:`orders_to_reach` (the columns :data:`ORDER_COLUMNS`).
        targets : pandas.Series
            The book once the orders fill (:func:`weights_after`).
        decision : Mapping[str, Any]
            The decision's inputs and reasons (:func:`decision_record`); must hold
            ``model_version``; JSON-able values, pandas objects, dates and dataclasses.
        recorded_at : datetime or str, optional
            A wall-clock stamp kept in the record but left out of its ``id``.

        Returns
        -------
        Path
            The session folder.

        Notes
        -----
        ``targets.csv`` then ``orders.csv`` are written atomically (temp file, fsync, rename),
        replacing those of an earlier run of the session. The audit record ``{id, session,
        model_version, decision, orders, targets[, recorded_at]}`` is appended to
        ``audit.jsonl`` (one line, under an exclusive lock, fsynced) unless the session's latest
        record already has the same ``id``, the sha256 of the canonical JSON (sorted keys, no
        spaces) of everything but ``id`` and ``recorded_at``: a re-run with the same inputs
        appends nothing, a re-run with different inputs appends a record. Lines are never
        rewritten. When a session's decision changes back (A, B, then A again), A is appended
        again, so the session's last record always describes its files.
        """
        d = calendar.to_date(session)
        if not isinstance(orders, pd.DataFrame):
            raise TypeError(f"orders must be a pandas DataFrame, got {type(orders).__name__}")
        missing = [col for col in ORDER_COLUMNS if col not in orders.columns]
        if missing:
            raise ValueError(f"orders lacks the column(s): {', '.join(missing)}")
        t = symbol_series(targets, "targets")
        bad = t.index[~np.isfinite(t.to_numpy(float))]
        if len(bad):
            raise ValueError(f"targets weight is not finite for: {symbol_names(bad)}")
        if "model_version" not in decision:
            raise ValueError("decision must hold model_version")
        clash = [k for k in decision if k in _RESERVED]
        if clash:
            raise ValueError(f"decision uses reserved key(s): {', '.join(map(str, clash))}")

        book = pd.DataFrame({"symbol": [str(s) for s in t.index], _WEIGHT: t.to_numpy(float)})
        book = book.sort_values("symbol", kind="stable").reset_index(drop=True)
        table = orders.loc[:, list(ORDER_COLUMNS)].reset_index(drop=True)
        folder = self.session_dir(d)
        lake.write_text_atomic(folder / TARGETS_NAME, book.to_csv(index=False, lineterminator="\n"))
        lake.write_text_atomic(folder / ORDERS_NAME, table.to_csv(index=False, lineterminator="\n"))

        rest = {str(k): v for k, v in decision.items() if k != "model_version"}
        content = {
            "session": d.isoformat(),
            "model_version": str(decision["model_version"]),
            "decision": _jsonable(rest),
            "orders": _jsonable(table, "orders"),
            "targets": {sym: float(w) for sym, w in zip(book["symbol"], book[_WEIGHT],
                                                       strict=True)},
        }
        record_id = hashlib.sha256(_canonical(content).encode("utf-8")).hexdigest()
        record: dict[str, Any] = {"id": record_id, **content}
        if recorded_at is not None:
            record["recorded_at"] = _jsonable(recorded_at, "recorded_at")
        self._append(d.isoformat(), record)
        return folder

    def _append(self, session: str, record: Mapping[str, Any]) -> bool:
        """Append ``record`` unless it is the session's latest; True when appended."""
        path = self.audit_path
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (_canonical(record) + "\n").encode("utf-8")
        with open(path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                fh.seek(0)
                data = fh.read()
                latest = None
                for old in _parse_lines(data, path):
                    if old.get("session") == session:
                        latest = old.get("id")
                if latest == record["id"]:
                    log.info("audit: session %s decision %s already recorded", session,
                             str(record["id"])[:12])
                    return False
                if data and not data.endswith(b"\n"):  # a torn line from a killed writer
                    line = b"\n" + line
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        log.info("audit: session %s decision %s recorded", session, str(record["id"])[:12])
        return True


def _parse_lines(data: bytes, path: Path) -> list[dict[str, Any]]:
    out = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON (a torn write?); skipped", path, n)
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def audit_records(root: Path) -> list[dict[str, Any]]:
    """Every record of ``root/audit.jsonl``, oldest first (unreadable lines skipped, logged)."""
    path = Path(root) / AUDIT_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return _parse_lines(data, path)


def positions(root: Path, session: date | str) -> pd.Series:
    """The paper book going into ``session``'s decision.

    Parameters
    ----------
    root : Path
        The :class:`PaperBroker` root.
    session : date or str
        The session being decided.

    Returns
    -------
    pandas.Series
        The ``targets.csv`` of the latest session strictly before ``session`` (filled at that
        session's open), indexed by symbol; empty when there is none. A re-run of ``session``
        therefore starts from the same book as its first run.
    """
    d = calendar.to_date(session)
    best: tuple[date, Path] | None = None
    base = Path(root)
    if base.is_dir():
        for entry in base.glob("session=*"):
            try:
                day = date.fromisoformat(entry.name[len("session="):])
            except ValueError:
                continue
            path = entry / TARGETS_NAME
            if day < d and path.is_file() and (best is None or day > best[0]):
                best = (day, path)
    if best is None:
        return pd.Series(dtype=float, name=_WEIGHT)
    frame = pd.read_csv(best[1], dtype={"symbol": str, _WEIGHT: float}, keep_default_na=False)
    index: list[Hashable] = list(frame["symbol"])
    return pd.Series(frame[_WEIGHT].to_numpy(float), index=index, name=_WEIGHT)
