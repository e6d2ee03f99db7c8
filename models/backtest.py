"""Cost-aware portfolio backtest, performance metrics, deflated Sharpe and model comparison.

- :func:`backtest` turns daily target weights into gross and net returns under a
  :class:`CostModel` (commission, half spread and square-root market impact), with the drift of
  the held weights, one-way turnover, equity, drawdown and per-session positions.
- :func:`performance` summarises a net return series (:class:`Performance`), with explicit edge
  cases instead of silent divisions by zero.
- :func:`probabilistic_sharpe_ratio` and :func:`deflated_sharpe_ratio` (Bailey & López de Prado,
  2012 and 2014) ask whether a Sharpe ratio survives its sample length, non-normal returns and the
  number of configurations tried before it was picked.
- :func:`spa_test`, :func:`model_confidence_set` and :func:`beats_significantly` compare models on
  out-of-sample per-period losses with Hansen's (2005) test of superior predictive ability and the
  model confidence set of Hansen, Lunde & Nason (2011), both on :mod:`arch.bootstrap`.

Conventions
-----------
Timing. Rows are sessions in increasing order. ``weights.loc[t]`` are the target weights decided
at the close of session ``t`` from information up to and including ``t``; the book is rebalanced
to them at that close and held over session ``t+1``, so they earn ``returns.loc[t+1]``, the next
row of ``returns``. A row ``s`` of a :class:`BacktestResult` is session ``s``: its gross return is
earned by the weights decided at ``s-1``, and its costs are those of the rebalance at the close of
``s``. Nothing at row ``s`` depends on data after ``s``.

Returns are *simple* (arithmetic) decimal returns per session, ``P_t / P_{t-1} - 1``: a portfolio's
return is the weighted sum of its assets' simple returns, not of their log returns (convert the
log returns of :mod:`models.baselines` with ``numpy.expm1``). Cash earns nothing.

Weights are fractions of the portfolio's net asset value (NAV) before the rebalance; negative
weights are shorts, ``sum |w|`` is the gross leverage, the rest is cash. Over a session a held
weight drifts to ``w_i (1 + r_i) / (1 + sum_j w_j r_j)``; the rebalance at the close trades the
difference between the new target and the drifted weight. The book starts in cash: the first
target is bought in full and charged.

Costs are fractions of NAV, charged at the close of the trade: see :class:`CostModel`. Dollar
amounts (for market impact) are NAV times ``CostModel.capital``, with NAV compounding from 1.

Turnover is one-way: ``sum_i |Δw_i| / 2`` per session, the share of the book replaced (selling
all of A to buy B counts 1; building a fully invested long book from cash counts 0.5). Costs are
charged on the traded notional ``sum_i |Δw_i|``, twice the turnover.

Sharpe ratios are per period (not annualised) inside the deflated-Sharpe functions, as in Bailey &
López de Prado; :class:`Performance` reports annualised ones.

Losses in the model comparisons are per-period out-of-sample losses on the same rows, lower is
better (e.g. :func:`models.evaluation.pointwise_loss` of each model's forecasts).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "BacktestResult",
    "Comparison",
    "CostModel",
    "DSRResult",
    "MCSResult",
    "Performance",
    "SPAResult",
    "average_dollar_volume",
    "backtest",
    "beats_significantly",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "model_confidence_set",
    "performance",
    "probabilistic_sharpe_ratio",
    "spa_test",
    "trailing_volatility",
]

_BPS = 1e-4
_EULER_GAMMA = float(np.euler_gamma)
_REL_TOL = 1e-12  # relative size below which a spread of values counts as none (rounding)


# --- cost model and causal inputs ---------------------------------------------------------------


@dataclass(frozen=True)
class CostModel:
    """Trading costs of a rebalance, as fractions of the traded notional.

    For a trade of ``|Δw_i|`` of NAV in symbol ``i`` (``Q_i = |Δw_i| * NAV$`` dollars), the cost in
    dollars is ``Q_i * (commission + half_spread_i + impact_i)`` with

    - ``commission = commission_bps * 1e-4``;
    - ``half_spread_i = half_spread_bps * 1e-4`` (crossing half the quoted spread);
    - ``impact_i = impact_coef * sigma_i * sqrt(Q_i / ADV_i)``, the square-root law of market
      impact (Almgren, Thum, Hauptmann & Li, 2005, "Direct estimation of equity market impact";
      Tóth et al., 2011; Almgren et al. estimate an exponent near 1/2, 3/5): ``sigma_i`` is the
      daily volatility of the symbol's simple returns
      (decimal, not annualised) and ``ADV_i`` its average daily dollar volume, both known at the
      close of the trade. The impact cost therefore grows as ``Q^1.5``.

    ``NAV$`` is ``capital`` times the NAV of the backtest (which starts at 1). ``impact_coef`` is
    dimensionless; published calibrations of the square-root law vary widely across markets and
    periods, so calibrate it on the desk's own fills where there are any.

    Parameters
    ----------
    commission_bps : float
        Commission per traded notional, basis points.
    half_spread_bps : float or pandas.Series or Mapping
        Half the bid-ask spread in basis points, the same for every symbol (a float) or per symbol
        (a Series or mapping indexed by symbol, stored read-only; every traded symbol must have
        one).
    impact_coef : float
        Coefficient of the square-root impact.
    capital : float
        Initial portfolio NAV in dollars; it sets the dollar size of the trades, hence the impact.
    """

    commission_bps: float = 1.0
    half_spread_bps: float | Mapping[Hashable, float] | pd.Series = 2.0
    impact_coef: float = 0.1
    capital: float = 1e7

    def __post_init__(self) -> None:
        for name in ("commission_bps", "impact_coef"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not (math.isfinite(self.capital) and self.capital > 0.0):
            raise ValueError(f"capital must be finite and > 0, got {self.capital}")
        spread = self.half_spread_bps
        if isinstance(spread, pd.Series | Mapping):
            table = {key: float(value) for key, value in dict(spread).items()}
            for symbol, value in table.items():
                if not (math.isfinite(value) and value >= 0.0):
                    raise ValueError(
                        f"half_spread_bps of {symbol!r} must be finite and >= 0, got {value}"
                    )
            object.__setattr__(self, "half_spread_bps", MappingProxyType(table))
        elif not (math.isfinite(spread) and spread >= 0.0):
            raise ValueError(f"half_spread_bps must be finite and >= 0, got {spread}")

    def half_spreads(self, symbols: Sequence[Hashable]) -> np.ndarray:
        """Half spreads of ``symbols`` as decimal fractions (bps * 1e-4).

        Raises
        ------
        ValueError
            If a per-symbol table lacks one of ``symbols`` (the first missing one is named).
        """
        spread = self.half_spread_bps
        if isinstance(spread, Mapping):
            missing = [s for s in symbols if s not in spread]
            if missing:
                raise ValueError(f"half_spread_bps has no value for symbol {missing[0]!r}")
            return np.array([spread[s] for s in symbols], dtype=float) * _BPS
        return np.full(len(symbols), float(spread) * _BPS)


def average_dollar_volume(
    close: pd.DataFrame, volume: pd.DataFrame, window: int = 20
) -> pd.DataFrame:
    """Trailing mean daily dollar volume, known at the close of each session.

    Parameters
    ----------
    close, volume : pandas.DataFrame
        Closing prices and share volumes, sessions by symbols, same index and columns.
    window : int
        Sessions in the trailing window.

    Returns
    -------
    pandas.DataFrame
        ``mean(close * volume)`` over sessions ``t-window+1 .. t`` at row ``t`` (NaN until a full
        window, or where the window holds a NaN): it uses session ``t``'s own volume, known at its
        close, and nothing later.

    Raises
    ------
    ValueError
        If ``window < 1`` or the two frames are not aligned.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    _check_same_frame(close, volume, "close", "volume")
    dollars = close.astype(float) * volume.astype(float)
    return dollars.rolling(window, min_periods=window).mean()


def trailing_volatility(returns: pd.DataFrame, window: int = 20) -> pd.DataFrame:
    """Trailing daily volatility, known at the close of each session.

    Parameters
    ----------
    returns : pandas.DataFrame
        Simple daily returns, sessions by symbols.
    window : int
        Sessions in the trailing window, ``>= 2``.

    Returns
    -------
    pandas.DataFrame
        Sample standard deviation (``ddof=1``) of the returns of sessions ``t-window+1 .. t`` at
        row ``t``, decimal per session (not annualised); NaN until a full window.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    return returns.astype(float).rolling(window, min_periods=window).std()


def _check_same_frame(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> None:
    for x, y, nx, ny in ((a, b, name_a, name_b), (b, a, name_b, name_a)):
        missing = x.index.difference(y.index, sort=False)
        if len(missing):
            raise ValueError(f"{ny} has no row for session {missing[0]} of {nx}")
        cols = [c for c in x.columns if c not in y.columns]
        if cols:
            raise ValueError(f"{ny} has no column for symbol {cols[0]!r} of {nx}")


# --- backtest -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestResult:
    """Per-session outcome of :func:`backtest`; every Series and frame shares the session index.

    Returns and costs are fractions of the NAV at the previous close (before that close's
    rebalance), so ``net = gross - costs`` and ``equity = cumprod(1 + net)``.

    Parameters
    ----------
    gross : pandas.Series
        Return of the weights held over the session (decided at the previous close).
    costs : pandas.Series
        Costs of the rebalance at the session's close.
    net : pandas.Series
        ``gross - costs``.
    turnover : pandas.Series
        One-way turnover of the rebalance at the close, ``sum |Δw| / 2``.
    equity : pandas.Series
        NAV after the session's close, net of costs, in units of the initial capital.
    drawdown : pandas.Series
        ``equity / max(1, running max of equity) - 1``, ``<= 0``.
    positions : pandas.DataFrame
        Weights held over the session (those that earn its return), sessions by symbols.
    trades : pandas.DataFrame
        ``Δw`` traded at the session's close, target minus drifted weight.
    cost_breakdown : pandas.DataFrame
        Columns ``commission``, ``spread``, ``impact``; they sum to ``costs``.
    """

    gross: pd.Series
    costs: pd.Series
    net: pd.Series
    turnover: pd.Series
    equity: pd.Series
    drawdown: pd.Series
    positions: pd.DataFrame
    trades: pd.DataFrame
    cost_breakdown: pd.DataFrame

    def performance(self, periods_per_year: int = 252) -> Performance:
        """:func:`performance` of the net returns with this backtest's turnover."""
        return performance(self.net, self.turnover, periods_per_year)


def _checked_index(index: pd.Index, name: str) -> None:
    if not (index.is_unique and index.is_monotonic_increasing):
        raise ValueError(f"{name} must be indexed by unique sessions in increasing order")


def _require_columns(frame: pd.DataFrame, symbols: Sequence[Hashable], name: str) -> None:
    missing = [s for s in symbols if s not in frame.columns]
    if missing:
        raise ValueError(f"{name} has no column for symbol {missing[0]!r}")


def _require_sessions(frame: pd.DataFrame, sessions: pd.Index, name: str) -> None:
    missing = sessions.difference(frame.index, sort=False)
    if len(missing):
        raise ValueError(f"{name} has no row for session {missing[0]}")


def _result_sessions(weights_index: pd.Index, returns_index: pd.Index) -> pd.Index:
    """Weight sessions, plus the next returns session (where the last weights earn) if any."""
    missing = weights_index.difference(returns_index, sort=False)
    if len(missing):
        raise ValueError(f"returns has no row for session {missing[0]}")
    pos = returns_index.get_indexer(weights_index)
    gaps = np.flatnonzero(np.diff(pos) != 1)
    if gaps.size:
        skipped = returns_index[pos[gaps[0]] + 1]
        raise ValueError(
            f"weights skip session {skipped} of returns (after {weights_index[gaps[0]]}): give a "
            "target for every session, repeating the drifted weights to hold without trading"
        )
    stop = min(pos[-1] + 2, len(returns_index))
    return returns_index[pos[0] : stop]


def backtest(
    weights: pd.DataFrame,
    returns: pd.DataFrame,
    adv: pd.DataFrame,
    sigma: pd.DataFrame | None = None,
    costs: CostModel | None = None,
) -> BacktestResult:
    """Backtest daily target weights with drift, turnover and trading costs.

    Session ``s`` of the result (see the module conventions): the weights decided at ``s-1`` earn
    ``returns.loc[s]`` (zero weights on the first row), drift with them, and are rebalanced at the
    close of ``s`` to ``weights.loc[s]``, paying :class:`CostModel` costs on ``|Δw|`` with the
    ``adv`` and ``sigma`` of row ``s``. The result covers the sessions of ``weights`` and, when
    ``returns`` has it, the session after the last one, where the last targets earn their return
    (no trade there: the final book is not liquidated). The last targets are charged even when
    ``returns`` ends with them.

    Parameters
    ----------
    weights : pandas.DataFrame
        Target weights, sessions by symbols, finite (0 for no position). Its sessions must be
        consecutive rows of ``returns``.
    returns : pandas.DataFrame
        Simple daily returns, sessions by symbols (at least the symbols of ``weights``). A NaN is
        read as 0 where the held weight is 0 (e.g. before a listing), an error elsewhere.
    adv : pandas.DataFrame
        Average daily dollar volume known at each close (:func:`average_dollar_volume`), with a
        row for every session of ``weights``; finite and positive wherever a trade happens.
    sigma : pandas.DataFrame, optional
        Daily volatility (decimal, per session) known at each close, same requirements as ``adv``
        (non-negative). Default: :func:`trailing_volatility` of ``returns`` over 20 sessions.
    costs : CostModel, optional
        Default ``CostModel()``.

    Returns
    -------
    BacktestResult

    Raises
    ------
    ValueError
        On misaligned inputs (naming the first missing session or symbol), non-finite weights, a
        missing return of a held symbol, a missing or non-positive ``adv`` or missing ``sigma`` of
        a traded symbol, or a session that wipes out the book (NAV <= 0).
    """
    costs = CostModel() if costs is None else costs
    _checked_index(weights.index, "weights")
    _checked_index(returns.index, "returns")
    if weights.empty:
        raise ValueError("weights has no session or no symbol")
    symbols = list(weights.columns)
    w = weights.to_numpy(dtype=float)
    bad = ~np.isfinite(w)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"weights are not finite at session {weights.index[i]}, symbol {symbols[j]!r} "
            "(use 0 for no position)"
        )
    _require_columns(returns, symbols, "returns")
    sessions = _result_sessions(weights.index, returns.index)
    if sigma is None:
        sigma = trailing_volatility(returns[symbols])
    for frame, name in ((adv, "adv"), (sigma, "sigma")):
        _require_columns(frame, symbols, name)
        _require_sessions(frame, weights.index, name)
    adv_arr = adv.loc[weights.index, symbols].to_numpy(dtype=float)
    sig_arr = sigma.loc[weights.index, symbols].to_numpy(dtype=float)
    ret_arr = returns.loc[sessions, symbols].to_numpy(dtype=float)
    half_spread = costs.half_spreads(symbols)
    commission = costs.commission_bps * _BPS

    n, k = len(sessions), len(symbols)
    gross = np.zeros(n)
    parts = np.zeros((n, 3))  # commission, spread, impact; fractions of the previous NAV
    turnover = np.zeros(n)
    equity = np.zeros(n)
    positions = np.zeros((n, k))
    trades = np.zeros((n, k))
    held = np.zeros(k)
    nav = 1.0
    for i, session in enumerate(sessions):
        r = ret_arr[i]
        missing = ~np.isfinite(r)
        if (missing & (held != 0.0)).any():
            j = int(np.flatnonzero(missing & (held != 0.0))[0])
            raise ValueError(
                f"returns are missing at session {session}, symbol {symbols[j]!r}, "
                f"where {held[j]:.4g} of NAV is held"
            )
        r = np.where(missing, 0.0, r)
        positions[i] = held
        gross[i] = float(held @ r)
        growth = 1.0 + gross[i]
        if growth <= 0.0:
            raise ValueError(f"the book is wiped out at session {session} (gross {gross[i]:.4g})")
        drifted = held * (1.0 + r) / growth
        target = w[i] if i < len(weights.index) else drifted
        delta = target - drifted
        traded = np.abs(delta)
        if traded.any():
            on = traded > 0.0
            nav_dollars = costs.capital * nav * growth
            a, s = adv_arr[i], sig_arr[i]
            for values, name, positive in ((a, "adv", True), (s, "sigma", False)):
                invalid = on & ~(np.isfinite(values) & ((values > 0.0) if positive else
                                                         (values >= 0.0)))
                if invalid.any():
                    j = int(np.flatnonzero(invalid)[0])
                    raise ValueError(
                        f"{name} is missing or invalid ({values[j]}) at session {session}, "
                        f"symbol {symbols[j]!r}, which trades {traded[j]:.4g} of NAV"
                    )
            impact = np.zeros(k)
            impact[on] = (
                costs.impact_coef * s[on] * np.sqrt(traded[on] * nav_dollars / a[on])
            )
            # fractions of the NAV before the rebalance, rescaled to the previous NAV
            parts[i] = growth * np.array(
                [
                    commission * traded.sum(),
                    float(half_spread @ traded),
                    float(impact @ traded),
                ]
            )
        trades[i] = delta
        turnover[i] = traded.sum() / 2.0
        net_i = gross[i] - parts[i].sum()
        nav *= 1.0 + net_i
        if nav <= 0.0:
            raise ValueError(f"costs wipe out the book at session {session}")
        equity[i] = nav
        held = target

    cost = parts.sum(axis=1)
    net = gross - cost
    equity_s = pd.Series(equity, index=sessions, name="equity")
    peak = np.maximum(1.0, np.maximum.accumulate(equity))
    return BacktestResult(
        gross=pd.Series(gross, index=sessions, name="gross"),
        costs=pd.Series(cost, index=sessions, name="costs"),
        net=pd.Series(net, index=sessions, name="net"),
        turnover=pd.Series(turnover, index=sessions, name="turnover"),
        equity=equity_s,
        drawdown=pd.Series(equity / peak - 1.0, index=sessions, name="drawdown"),
        positions=pd.DataFrame(positions, index=sessions, columns=weights.columns),
        trades=pd.DataFrame(trades, index=sessions, columns=weights.columns),
        cost_breakdown=pd.DataFrame(
            parts, index=sessions, columns=["commission", "spread", "impact"]
        ),
    )


# --- performance --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Performance:
    """Summary of a net return series (:func:`performance`).

    A ratio whose denominator is zero is ``math.inf`` (or ``-inf``) when its numerator is positive
    (negative), and ``None`` when the numerator is zero too; a statistic with nothing to count is
    ``None``.

    Parameters
    ----------
    n_sessions : int
        Returns in the series.
    annual_return : float
        Compound annual growth, ``equity_end ** (periods_per_year / n) - 1`` (-1 if the equity
        reaches 0).
    annual_vol : float
        Sample standard deviation (``ddof=1``) times ``sqrt(periods_per_year)``.
    sharpe : float or None
        ``mean / std * sqrt(periods_per_year)``; no risk-free rate (the returns are already
        excess of cash). Zero volatility: ``±inf`` or ``None`` (all returns zero).
    sortino : float or None
        ``mean / downside * sqrt(periods_per_year)``, ``downside = sqrt(mean(min(r, 0)^2))`` over
        all sessions. No losing session: ``inf`` or ``None``.
    calmar : float or None
        ``annual_return / max_drawdown``. No drawdown: ``inf`` or ``None``.
    max_drawdown : float
        Largest fall of the equity (starting at 1) from a running peak, a positive fraction.
    turnover : float or None
        Mean one-way turnover per session times ``periods_per_year`` (``None`` when not given).
    hit_rate : float or None
        Share of positive returns among the non-zero ones (``None`` if all are zero).
    profit_factor : float or None
        Sum of gains over the sum of absolute losses. No loss: ``inf`` or ``None`` (no gain).
    skew : float or None
        Sample skewness (moment estimator); ``None`` with zero volatility.
    kurtosis : float or None
        Sample kurtosis, *not* excess (normal = 3; the ``γ4`` of the deflated Sharpe ratio);
        ``None`` with zero volatility.
    """

    n_sessions: int
    annual_return: float
    annual_vol: float
    sharpe: float | None
    sortino: float | None
    calmar: float | None
    max_drawdown: float
    turnover: float | None
    hit_rate: float | None
    profit_factor: float | None
    skew: float | None
    kurtosis: float | None


def _ratio(num: float, den: float) -> float | None:
    """``num / den`` for ``den >= 0``; ``±inf`` for a zero ``den``, ``None`` for ``0 / 0``."""
    if den > 0.0:
        return num / den
    if num == 0.0:
        return None
    return math.inf if num > 0.0 else -math.inf


def performance(
    net: pd.Series, turnover: pd.Series | None = None, periods_per_year: int = 252
) -> Performance:
    """Performance metrics of a per-session net return series.

    Parameters
    ----------
    net : pandas.Series
        Simple net returns per session, in time order, finite, at least two.
    turnover : pandas.Series, optional
        One-way turnover per session (e.g. :attr:`BacktestResult.turnover`), same index.
    periods_per_year : int
        Sessions per year for annualising.

    Returns
    -------
    Performance

    Raises
    ------
    ValueError
        On fewer than two returns, non-finite values, a turnover on another index, or a
        non-positive ``periods_per_year``.
    """
    if periods_per_year <= 0:
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year}")
    r = np.asarray(net, dtype=float)
    n = r.shape[0]
    if n < 2:
        raise ValueError(f"need at least two returns, got {n}")
    if not np.isfinite(r).all():
        first = net.index[np.flatnonzero(~np.isfinite(r))[0]]
        raise ValueError(f"net returns are not finite at session {first}")
    ann = math.sqrt(periods_per_year)

    equity = np.cumprod(1.0 + r)
    end = float(equity[-1])
    annual_return = end ** (periods_per_year / n) - 1.0 if end > 0.0 else -1.0
    peak = np.maximum(1.0, np.maximum.accumulate(equity))
    max_dd = float(np.max(1.0 - equity / peak))

    mean = float(r.mean())
    std = float(r.std(ddof=1))
    if np.ptp(r) <= _REL_TOL * float(np.abs(r).max(initial=0.0)):
        std = 0.0  # constant up to rounding
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    sharpe = _ratio(mean, std)
    sortino = _ratio(mean, downside)

    gains = float(r[r > 0.0].sum())
    losses = float(-r[r < 0.0].sum())
    nonzero = int(np.count_nonzero(r))

    if std > 0.0:
        skew: float | None = float(stats.skew(r))
        kurt: float | None = float(stats.kurtosis(r, fisher=False))
    else:
        skew = kurt = None

    mean_turnover: float | None = None
    if turnover is not None:
        if not turnover.index.equals(net.index):
            raise ValueError("turnover must have the index of net")
        to = np.asarray(turnover, dtype=float)
        if not np.isfinite(to).all():
            raise ValueError("turnover must be finite")
        mean_turnover = float(to.mean()) * periods_per_year

    return Performance(
        n_sessions=n,
        annual_return=annual_return,
        annual_vol=std * ann,
        sharpe=None if sharpe is None else sharpe * ann,
        sortino=None if sortino is None else sortino * ann,
        calmar=_ratio(annual_return, max_dd),
        max_drawdown=max_dd,
        turnover=mean_turnover,
        hit_rate=(int((r > 0.0).sum()) / nonzero) if nonzero else None,
        profit_factor=_ratio(gains, losses),
        skew=skew,
        kurtosis=kurt,
    )


# --- probabilistic and deflated Sharpe ratio ----------------------------------------------------


def probabilistic_sharpe_ratio(
    sr: float, sr_benchmark: float, n_obs: int, skew: float, kurtosis: float
) -> float:
    """Probability that the true Sharpe ratio exceeds a benchmark (Bailey & López de Prado, 2012).

    ``PSR = Φ((SR - SR*) sqrt(T - 1) / sqrt(1 - γ3 SR + (γ4 - 1) / 4 SR²))``, which accounts for
    the sample length and the skewness and kurtosis of the returns (Mertens' standard error of SR).

    Parameters
    ----------
    sr : float
        Observed Sharpe ratio, *per period* (not annualised: divide an annual one by
        ``sqrt(periods_per_year)``).
    sr_benchmark : float
        Benchmark Sharpe ratio ``SR*``, per period.
    n_obs : int
        Returns ``T`` the Sharpe ratio was estimated on, ``>= 2``.
    skew : float
        Skewness ``γ3`` of the returns.
    kurtosis : float
        Kurtosis ``γ4`` of the returns, *not* excess (normal = 3).

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    ValueError
        If ``n_obs < 2`` or the variance term ``1 - γ3 SR + (γ4 - 1) / 4 SR²`` is not positive
        (impossible moments).
    """
    if n_obs < 2:
        raise ValueError(f"n_obs must be >= 2, got {n_obs}")
    var_term = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr**2
    if not var_term > 0.0:
        raise ValueError(
            f"1 - skew*SR + (kurtosis-1)/4*SR^2 = {var_term:.4g} is not positive: check that "
            "the Sharpe ratio is per period and the kurtosis is not excess"
        )
    z = (sr - sr_benchmark) * math.sqrt(n_obs - 1) / math.sqrt(var_term)
    return float(stats.norm.cdf(z))


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """Expected maximum Sharpe ratio of ``n_trials`` unskilled trials (Bailey & López de Prado).

    ``E[max SR] ≈ sqrt(V) ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e)))`` with ``γ`` the
    Euler-Mascheroni constant, for ``N`` independent trials whose Sharpe ratios have mean 0 and
    variance ``V``. One trial has nothing to select from: 0.

    Parameters
    ----------
    n_trials : int
        Independent trials ``N``, ``>= 1``.
    sr_variance : float
        Variance ``V`` of the trials' Sharpe ratios, in the units of the Sharpe ratio (per period
        for per-period ones: an annualised variance divided by ``periods_per_year``).

    Returns
    -------
    float
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if not (math.isfinite(sr_variance) and sr_variance >= 0.0):
        raise ValueError(f"sr_variance must be finite and >= 0, got {sr_variance}")
    if n_trials == 1:
        return 0.0
    z = stats.norm.ppf
    return math.sqrt(sr_variance) * float(
        (1.0 - _EULER_GAMMA) * z(1.0 - 1.0 / n_trials)
        + _EULER_GAMMA * z(1.0 - 1.0 / (n_trials * math.e))
    )


@dataclass(frozen=True)
class DSRResult:
    """Deflated Sharpe ratio (:func:`deflated_sharpe_ratio`); Sharpe ratios per period.

    Parameters
    ----------
    dsr : float
        PSR against ``expected_max_sr``: the probability that the selected strategy's true Sharpe
        ratio beats the best of ``n_trials`` unskilled ones. Significant at 95% when ``>= 0.95``.
    expected_max_sr : float
        Expected maximum Sharpe ratio of ``n_trials`` unskilled trials (``SR_0``).
    psr : float
        PSR against 0 (no deflation for the selection).
    sr : float
        Observed Sharpe ratio.
    n_trials : int
        Independent trials.
    n_obs : int
        Returns the Sharpe ratio was estimated on.
    """

    dsr: float
    expected_max_sr: float
    psr: float
    sr: float
    n_trials: int
    n_obs: int


def deflated_sharpe_ratio(
    sr: float,
    n_trials: int,
    sr_variance: float,
    n_obs: int,
    skew: float,
    kurtosis: float,
) -> DSRResult:
    """Deflated Sharpe ratio (Bailey & López de Prado, 2014).

    Bailey, D. H. & López de Prado, M. (2014), "The Deflated Sharpe Ratio: Correcting for
    Selection Bias, Backtest Overfitting and Non-Normality", Journal of Portfolio Management
    40(5), 94-107: ``DSR = PSR(SR_0)`` with ``SR_0 = expected_max_sharpe(n_trials, sr_variance)``.

    Parameters
    ----------
    sr : float
        Observed Sharpe ratio of the selected strategy, per period.
    n_trials : int
        Independent configurations tried before selecting it (``1``: none, ``DSR = PSR(0)``).
        Correlated trials count fewer (the paper estimates the effective number).
    sr_variance : float
        Variance of the trials' Sharpe ratios, per period (annualised variance / periods per
        year).
    n_obs : int
        Returns the Sharpe ratio was estimated on.
    skew, kurtosis : float
        Skewness and (non-excess) kurtosis of the selected strategy's returns.

    Returns
    -------
    DSRResult
    """
    sr0 = expected_max_sharpe(n_trials, sr_variance)
    return DSRResult(
        dsr=probabilistic_sharpe_ratio(sr, sr0, n_obs, skew, kurtosis),
        expected_max_sr=sr0,
        psr=probabilistic_sharpe_ratio(sr, 0.0, n_obs, skew, kurtosis),
        sr=float(sr),
        n_trials=int(n_trials),
        n_obs=int(n_obs),
    )


# --- model comparison: SPA and MCS --------------------------------------------------------------


def _losses_frame(losses: pd.DataFrame, name: str) -> np.ndarray:
    arr = losses.to_numpy(dtype=float)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least two rows and one column, got {arr.shape}")
    if not np.isfinite(arr).all():
        i, j = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} are not finite at row {losses.index[i]}, model {losses.columns[j]!r} "
            "(drop the rows where a forecast is missing)"
        )
    return arr


def _block(block_size: int | None, t: int) -> int:
    block = int(math.sqrt(t)) if block_size is None else int(block_size)
    if block < 1:
        raise ValueError(f"block_size must be >= 1, got {block}")
    return block


def _long_run_variance(d: np.ndarray, block_size: int) -> np.ndarray:
    """Long-run variance of each column of ``d`` with the stationary-bootstrap kernel.

    ``ω² = γ_0 + 2 Σ_{i=1}^{t-1} κ_i γ_i``, ``κ_i = (1 - i/t)(1 - p)^i + (i/t)(1 - p)^(t - i)``,
    ``p = 1 / block_size`` (Politis & Romano, 1994; Hansen, 2005), as arch's SPA estimates it.
    """
    t = d.shape[0]
    x = d - d.mean(axis=0)
    n_fft = 1 << (2 * t - 1).bit_length()
    spec = np.fft.rfft(x, n=n_fft, axis=0)
    acov = np.fft.irfft(spec * np.conj(spec), n=n_fft, axis=0)[:t] / t
    i = np.arange(1, t)
    q = 1.0 - 1.0 / block_size
    kappa = (1.0 - i / t) * q**i + (i / t) * q ** (t - i)
    return np.asarray(acov[0] + 2.0 * (kappa[:, None] * acov[1:]).sum(axis=0))


@dataclass(frozen=True)
class SPAResult:
    """Hansen's test of superior predictive ability (:func:`spa_test`).

    H0: no model has a smaller expected loss than the benchmark. A small p-value says that at
    least one model beats it. The three p-values differ in how models worse than the benchmark
    enter the null distribution: ``lower`` ignores them (liberal), ``upper`` treats every model as
    equal to the benchmark (White's Reality Check, conservative), ``consistent`` (Hansen's, the one
    to use) drops only those significantly worse.

    Parameters
    ----------
    pvalue_lower, pvalue_consistent, pvalue_upper : float
        Bootstrap p-values (multiples of ``1 / reps``; 0 means below ``1 / reps``).
    better_models : tuple of str
        Models whose studentized mean loss advantage exceeds the consistent critical value at
        ``alpha``, in column order.
    mean_loss_diff : pandas.Series
        Mean of ``benchmark - model`` loss per model: positive when the model is better.
    identical : tuple of str
        Models whose losses equal the benchmark's on every row; they cannot beat it and are left
        out of the test (all p-values are 1 when every model is).
    block_size : int
        Mean block length of the stationary bootstrap.
    """

    pvalue_lower: float
    pvalue_consistent: float
    pvalue_upper: float
    better_models: tuple[str, ...]
    mean_loss_diff: pd.Series
    identical: tuple[str, ...]
    block_size: int


def spa_test(
    benchmark_losses: np.ndarray,
    model_losses: pd.DataFrame,
    reps: int = 1000,
    block_size: int | None = None,
    seed: int = 0,
    *,
    alpha: float = 0.05,
) -> SPAResult:
    """Hansen's (2005) SPA test: does any model beat the benchmark?

    Runs :class:`arch.bootstrap.SPA` (stationary bootstrap, ``reps`` replications, deterministic
    for a given ``seed``) on the loss differentials ``d_k = benchmark - model_k`` *studentized* by
    their long-run standard deviations ``ω_k`` (the stationary-bootstrap kernel estimator of
    arch's ``SPA``). Hansen's statistic is ``max_k sqrt(T) mean(d_k) / ω_k``; arch 8.0's ``SPA``
    compares the raw means whatever its ``studentize`` flag, which lets a noisy model dominate the
    maximum, so the differentials are scaled before they reach it (arch then sees
    ``benchmark = 0`` and ``models = -d_k / ω_k``; a later arch that studentizes again finds unit
    variances). With one model the scaling changes nothing.

    arch's statistic omits Hansen's ``max(·, 0)``: when every model is clearly worse than the
    benchmark, the consistent and lower p-values are near 0.5 rather than 1. Either way H0 stands.

    Parameters
    ----------
    benchmark_losses : numpy.ndarray
        Per-period losses of the benchmark, in time order (lower is better).
    model_losses : pandas.DataFrame
        Losses of the models on the same rows, one column per model.
    reps : int
        Bootstrap replications.
    block_size : int, optional
        Mean block length; default ``int(sqrt(T))`` as in arch.
    seed : int
        Seed of the bootstrap.
    alpha : float
        Size for :attr:`SPAResult.better_models`.

    Returns
    -------
    SPAResult

    Raises
    ------
    ValueError
        On different lengths, non-finite losses, or a model whose loss differential is a non-zero
        constant (no variance to test with).
    """
    bench = np.asarray(benchmark_losses, dtype=float).ravel()
    models = _losses_frame(model_losses, "model_losses")
    if bench.shape[0] != models.shape[0]:
        raise ValueError(
            f"benchmark_losses has {bench.shape[0]} rows, model_losses {models.shape[0]}"
        )
    if not np.isfinite(bench).all():
        raise ValueError(
            f"benchmark_losses are not finite at row {np.flatnonzero(~np.isfinite(bench))[0]}"
        )
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    names = [str(c) for c in model_losses.columns]
    t = bench.shape[0]
    block = _block(block_size, t)
    d = bench[:, None] - models
    scale = np.abs(d).max(axis=0)
    same = scale == 0.0
    constant = ~same & (np.ptp(d, axis=0) <= _REL_TOL * scale)
    if constant.any():
        j = int(np.flatnonzero(constant)[0])
        raise ValueError(
            f"the loss differential of model {names[j]!r} is constant ({d[0, j]:.6g}): "
            "no variance to test with"
        )
    mean_diff = pd.Series(d.mean(axis=0), index=names, name="mean_loss_diff")
    identical = tuple(n for n, s in zip(names, same, strict=True) if s)
    keep = np.flatnonzero(~same)
    if keep.size == 0:
        return SPAResult(1.0, 1.0, 1.0, (), mean_diff, identical, block)
    dk = d[:, keep]
    omega = np.sqrt(_long_run_variance(dk, block))
    if not (omega > 0.0).all():
        j = int(keep[np.flatnonzero(~(omega > 0.0))[0]])
        raise ValueError(f"the loss differential of model {names[j]!r} has no long-run variance")
    from arch.bootstrap import SPA  # heavy import (arch.univariate, matplotlib): only when used

    spa = SPA(np.zeros(t), -dk / omega, block_size=block, reps=reps, seed=seed)
    spa.compute()
    pvalues = spa.pvalues
    better = tuple(names[keep[int(j)]] for j in spa.better_models(alpha, "consistent"))
    return SPAResult(
        pvalue_lower=float(pvalues["lower"]),
        pvalue_consistent=float(pvalues["consistent"]),
        pvalue_upper=float(pvalues["upper"]),
        better_models=better,
        mean_loss_diff=mean_diff,
        identical=identical,
        block_size=block,
    )


@dataclass(frozen=True)
class MCSResult:
    """Model confidence set (:func:`model_confidence_set`).

    Parameters
    ----------
    included : tuple of str
        Models in the set: those not eliminated at the given size (the set contains the best
        model with probability at least ``1 - size``), in column order.
    excluded : tuple of str
        Models eliminated, in column order.
    pvalues : pandas.Series
        MCS p-value of every model (the largest size at which it is still in the set), in column
        order.
    """

    included: tuple[str, ...]
    excluded: tuple[str, ...]
    pvalues: pd.Series


def model_confidence_set(
    losses: pd.DataFrame,
    size: float = 0.10,
    reps: int = 1000,
    block_size: int | None = None,
    seed: int = 0,
    *,
    method: Literal["R", "max"] = "R",
) -> MCSResult:
    """Model confidence set of Hansen, Lunde & Nason (2011), with :class:`arch.bootstrap.MCS`.

    Models with identical losses on every row are one model to the test (arch divides by their
    zero variance otherwise): the first of each group is tested and the others share its p-value.

    Parameters
    ----------
    losses : pandas.DataFrame
        Per-period losses, one column per model (at least two), same rows, lower is better.
    size : float
        Size of the elimination tests; the set is a ``1 - size`` confidence set.
    reps : int
        Bootstrap replications (stationary bootstrap, deterministic for a given ``seed``).
    block_size : int, optional
        Mean block length; default ``int(sqrt(T))`` as in arch.
    seed : int
        Seed of the bootstrap.
    method : {"R", "max"}
        arch's elimination statistic.

    Returns
    -------
    MCSResult
    """
    arr = _losses_frame(losses, "losses")
    if arr.shape[1] < 2:
        raise ValueError("losses must have at least two models")
    if not 0.0 < size < 1.0:
        raise ValueError(f"size must be in (0, 1), got {size}")
    names = [str(c) for c in losses.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    block = _block(block_size, arr.shape[0])
    representative: list[int] = []  # column tested in place of each column
    unique: list[int] = []
    for j in range(arr.shape[1]):
        match = next((u for u in unique if np.array_equal(arr[:, u], arr[:, j])), None)
        if match is None:
            unique.append(j)
            match = j
        representative.append(match)
    if len(unique) == 1:
        pv = pd.Series(1.0, index=names, name="pvalue")
        return MCSResult(tuple(names), (), pv)
    from arch.bootstrap import MCS  # heavy import: only when used

    frame = pd.DataFrame(arr[:, unique], columns=[names[u] for u in unique])
    mcs = MCS(frame, size, reps=reps, block_size=block, method=method, seed=seed)
    mcs.compute()
    tested = mcs.pvalues["Pvalue"]
    pv = pd.Series(
        [float(tested[names[representative[j]]]) for j in range(len(names))],
        index=names,
        name="pvalue",
    )
    return MCSResult(
        included=tuple(n for n in names if pv[n] > size),
        excluded=tuple(n for n in names if pv[n] <= size),
        pvalues=pv,
    )


@dataclass(frozen=True)
class Comparison:
    """Verdict of :func:`beats_significantly`.

    Parameters
    ----------
    verdict : bool
        Whether the challenger beats every competitor significantly.
    pvalue : float
        The largest SPA consistent p-value over the competitors (the p-value of the
        intersection-union test): ``verdict`` is ``pvalue < alpha``.
    reasons : tuple of str
        One line per competitor (``"SPA vs garch: p=0.003 < 0.05"``) and one for the MCS.
    pvalues : Mapping[str, float]
        SPA consistent p-value per competitor (read-only).
    in_mcs : bool
        Whether the challenger is in the model confidence set of all models.
    mcs : MCSResult
        That model confidence set.
    """

    verdict: bool
    pvalue: float
    reasons: tuple[str, ...]
    pvalues: Mapping[str, float] = field(repr=False)
    in_mcs: bool
    mcs: MCSResult = field(repr=False)


def _fmt_p(p: float, reps: int) -> str:
    return f"p<{1.0 / reps:.2g}" if p == 0.0 else f"p={p:.3f}"


def beats_significantly(
    challenger_losses: np.ndarray,
    other_losses: Mapping[str, np.ndarray],
    alpha: float = 0.05,
    reps: int = 1000,
    seed: int = 0,
    *,
    block_size: int | None = None,
    mcs_size: float = 0.10,
    challenger_name: str = "challenger",
) -> Comparison:
    """Whether a challenger has significantly smaller expected loss than every other model.

    The promotion gate. For each competitor, :func:`spa_test` with the competitor as the
    benchmark and the challenger as the only model tests H0: "the challenger is not better than
    this competitor". The challenger beats them all significantly when every SPA consistent
    p-value is below ``alpha``. This is an intersection-union test: its null ("the challenger is
    no better than at least one competitor") is rejected only if each is rejected at ``alpha``,
    which keeps the size at ``alpha`` without a multiplicity correction. Failing the gate does not
    mean the challenger is worse, only that the evidence is not strong enough to switch.

    The model confidence set of all the models at ``mcs_size`` is reported beside it (not part of
    the verdict): a challenger that passes the gate is normally the only model in it.

    Parameters
    ----------
    challenger_losses : numpy.ndarray
        Per-period out-of-sample losses of the challenger (lower is better).
    other_losses : Mapping[str, numpy.ndarray]
        Losses of the competitors on the same rows, by name.
    alpha : float
        Size of each SPA test.
    reps : int
        Bootstrap replications per test.
    seed : int
        Seed of every bootstrap (the same draws for each competitor).
    block_size : int, optional
        Mean block length; default ``int(sqrt(T))``.
    mcs_size : float
        Size of the model confidence set.
    challenger_name : str
        Name of the challenger in the reasons and the MCS.

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        With no competitor, a competitor named ``challenger_name``, or the errors of
        :func:`spa_test`.
    """
    if not other_losses:
        raise ValueError("no competitor to compare the challenger with")
    if challenger_name in other_losses:
        raise ValueError(f"a competitor is named like the challenger: {challenger_name!r}")
    challenger = np.asarray(challenger_losses, dtype=float).ravel()
    model = pd.DataFrame({challenger_name: challenger})
    pvalues: dict[str, float] = {}
    reasons: list[str] = []
    for name, losses in other_losses.items():
        bench = np.asarray(losses, dtype=float).ravel()
        res = spa_test(bench, model, reps=reps, block_size=block_size, seed=seed, alpha=alpha)
        p = res.pvalue_consistent
        pvalues[name] = p
        detail = (
            " (identical losses)"
            if res.identical
            else f" (mean loss {challenger.mean():.6g} vs {bench.mean():.6g})"
        )
        verdict_sign = "<" if p < alpha else ">="
        reasons.append(f"SPA vs {name}: {_fmt_p(p, reps)} {verdict_sign} {alpha:g}{detail}")
    pvalue = max(pvalues.values())
    all_losses = pd.DataFrame(
        {challenger_name: challenger}
        | {name: np.asarray(v, dtype=float).ravel() for name, v in other_losses.items()}
    )
    mcs = model_confidence_set(all_losses, mcs_size, reps=reps, block_size=block_size, seed=seed)
    in_mcs = challenger_name in mcs.included
    reasons.append(
        f"MCS ({1.0 - mcs_size:.0%}): {challenger_name} "
        f"{'included' if in_mcs else 'excluded'} "
        f"({_fmt_p(float(mcs.pvalues[challenger_name]), reps)}); "
        f"set: {', '.join(mcs.included)}"
    )
    return Comparison(
        verdict=pvalue < alpha,
        pvalue=pvalue,
        reasons=tuple(reasons),
        pvalues=MappingProxyType(pvalues),
        in_mcs=in_mcs,
        mcs=mcs,
    )
