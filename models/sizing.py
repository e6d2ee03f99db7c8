"""Position sizing: from signals and risk forecasts to target weights.

Conventions
-----------
* A weight is a signed fraction of equity (``0.05``: long 5% of equity, ``-0.05``: short 5%),
  in a :class:`pandas.Series` indexed by symbol and named ``weight``.
* A signal is a number in ``[-1, 1]`` per symbol: its sign is the direction, its size the
  conviction; ``0`` means no position (and then the symbol needs no risk forecast).
* Volatilities (``vol_forecast``, ``target_vol``) are annualised decimals (``0.20``: 20% a year),
  as the forecasters of :mod:`models.baselines` produce them. ``returns`` are decimal daily returns
  in a :class:`pandas.DataFrame` with one column per symbol and one row per session.
* Every function is pure: nothing is read or written, no clock is consulted. Bad inputs raise
  :class:`ValueError` naming the symbols at fault.

Methods (:func:`size` dispatches on :attr:`SizingSpec.method`)::

    vol_target    each active symbol gets an equal share of the volatility budget
                  (:func:`vol_target_weights`)
    kelly         fractional Kelly on expected returns implied by the signal
                  (:func:`fractional_kelly`)
    risk_parity   long-only equal risk contributions over the symbols with a positive signal
                  (:func:`risk_parity_weights`, skfolio ``RiskBudgeting``)
    hrp           long-only hierarchical risk parity over the symbols with a positive signal
                  (:func:`hrp_weights`, skfolio ``HierarchicalRiskParity``)

The weights are *proposals*: the position, sector, gross, net and trade-risk limits are applied
afterwards by :func:`pipelines.orders.apply_limits`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from scipy import linalg

from models.config import from_table

__all__ = [
    "SizingMethod",
    "SizingSpec",
    "fractional_kelly",
    "hrp_weights",
    "risk_parity_weights",
    "size",
    "symbol_names",
    "symbol_series",
    "vol_target_weights",
]

SizingMethod = Literal["vol_target", "kelly", "risk_parity", "hrp"]
_METHODS: tuple[str, ...] = get_args(SizingMethod)
_WEIGHT = "weight"


# --------------------------------------------------------------------------------- helpers
def symbol_names(labels: Any) -> str:
    """The labels as one comma-separated string (for error messages)."""
    return ", ".join(str(s) for s in labels)


def symbol_series(x: Any, what: str) -> pd.Series:
    """``x`` as a float Series indexed by unique symbols; TypeError / ValueError naming ``what``."""
    if not isinstance(x, pd.Series):
        raise TypeError(f"{what} must be a pandas Series indexed by symbol, got {type(x).__name__}")
    dup = x.index[x.index.duplicated()].unique()
    if len(dup):
        raise ValueError(f"{what} has duplicate symbols: {symbol_names(dup)}")
    try:
        return x.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must hold numbers") from None


def _check_positive(value: float, what: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return v


def _check_signal(signal: pd.Series) -> pd.Series:
    s = symbol_series(signal, "signal")
    values = s.to_numpy(float)
    bad = s.index[~np.isfinite(values)]
    if len(bad):
        raise ValueError(f"signal is not finite for: {symbol_names(bad)}")
    out = s.index[np.abs(values) > 1.0]
    if len(out):
        raise ValueError(f"signal must be in [-1, 1]; out of range for: {symbol_names(out)}")
    return s


def _vols_for(vol_forecast: pd.Series, symbols: pd.Index) -> pd.Series:
    """The forecasts of ``symbols``; raise naming those missing, non-finite or not > 0."""
    v = symbol_series(vol_forecast, "vol_forecast")
    missing = symbols.difference(v.index, sort=False)
    if len(missing):
        raise ValueError(f"vol_forecast has no forecast for: {symbol_names(missing)}")
    vols = v.reindex(symbols)
    values = vols.to_numpy(float)
    bad = symbols[~(np.isfinite(values) & (values > 0.0))]
    if len(bad):
        raise ValueError(
            "vol_forecast must be finite and > 0 for every symbol with a non-zero signal; "
            f"bad for: {symbol_names(bad)}"
        )
    return vols


def _clip(weights: pd.Series, max_weight: float | None) -> pd.Series:
    if max_weight is None:
        return weights
    cap = _check_positive(max_weight, "max_weight")
    return weights.clip(-cap, cap)


def _check_returns(returns: Any, symbols: pd.Index | None = None) -> pd.DataFrame:
    """``returns`` (restricted to ``symbols``) as floats, rows with a missing value dropped."""
    if not isinstance(returns, pd.DataFrame):
        raise TypeError(
            f"returns must be a pandas DataFrame (one column per symbol), "
            f"got {type(returns).__name__}"
        )
    dup = returns.columns[returns.columns.duplicated()].unique()
    if len(dup):
        raise ValueError(f"returns has duplicate columns: {symbol_names(dup)}")
    if symbols is not None:
        missing = symbols.difference(returns.columns, sort=False)
        if len(missing):
            raise ValueError(f"returns has no column for: {symbol_names(missing)}")
        returns = returns.loc[:, symbols]
    if returns.shape[1] == 0:
        raise ValueError("returns has no columns")
    r = returns.astype(float)
    inf = r.columns[np.isinf(r.to_numpy(float)).any(axis=0)]
    if len(inf):
        raise ValueError(f"returns holds infinite values for: {symbol_names(inf)}")
    r = r.dropna(how="any")
    if len(r) < 2:
        raise ValueError(
            f"returns needs at least 2 rows with a value for every symbol, got {len(r)} "
            f"(symbols: {symbol_names(r.columns)})"
        )
    flat = r.columns[r.std(ddof=1).to_numpy(float) <= 0.0]
    if len(flat):
        raise ValueError(f"returns has zero variance for: {symbol_names(flat)}")
    return r


def _normalised(weights: np.ndarray, symbols: pd.Index) -> pd.Series:
    """Long-only weights summing to 1 (solver noise below zero is removed)."""
    w = np.clip(np.asarray(weights, dtype=float), 0.0, None)
    total = float(w.sum())
    if not (math.isfinite(total) and total > 0.0):
        raise ValueError(f"the optimiser returned no usable weights for: {symbol_names(symbols)}")
    return pd.Series(w / total, index=symbols, name=_WEIGHT)


# --------------------------------------------------------------------------------- methods
def vol_target_weights(
    signal: pd.Series,
    vol_forecast: pd.Series,
    target_vol: float,
    max_weight: float | None = None,
) -> pd.Series:
    """Volatility targeting: an equal share of the volatility budget per active symbol.

    Parameters
    ----------
    signal : pandas.Series
        Signal in ``[-1, 1]`` per symbol.
    vol_forecast : pandas.Series
        Annualised volatility forecast per symbol; may hold more symbols than ``signal``.
    target_vol : float
        Annualised volatility budget of the whole book, ``> 0``.
    max_weight : float, optional
        Cap on ``|weight|`` per symbol (applied last, so a capped symbol uses less than its share
        of the budget).

    Returns
    -------
    pandas.Series
        ``weight_i = signal_i * (target_vol / n_active) / vol_i``, indexed like ``signal``, with
        ``n_active`` the number of symbols whose signal is not 0. All zeros when no signal is.

    Raises
    ------
    ValueError
        Naming the symbols whose signal is not finite or outside ``[-1, 1]``, and those with a
        non-zero signal whose forecast is missing, not finite or not ``> 0`` (no weight is
        guessed for them: the caller decides whether to drop them, by setting their signal to 0).

    Notes
    -----
    Each active symbol's stand-alone volatility ``|weight_i| * vol_i`` is
    ``|signal_i| * target_vol / n_active``. The book's volatility is at most ``target_vol``
    (equal to it only when every ``|signal|`` is 1 and the symbols are perfectly correlated):
    the rule ignores diversification, which keeps it conservative and needs no covariance.
    """
    s = _check_signal(signal)
    tv = _check_positive(target_vol, "target_vol")
    active = s.index[s.to_numpy(float) != 0.0]
    weights = pd.Series(0.0, index=s.index, name=_WEIGHT)
    if len(active) == 0:
        return weights
    vols = _vols_for(vol_forecast, active)
    weights.loc[active] = s.loc[active] * (tv / len(active)) / vols
    return _clip(weights, max_weight)


def fractional_kelly(mu: pd.Series, cov: pd.DataFrame, fraction: float = 0.25) -> pd.Series:
    """Fractional Kelly weights ``fraction * cov^{-1} mu``.

    Parameters
    ----------
    mu : pandas.Series
        Expected excess return per symbol, over the same period as ``cov`` (both annualised, or
        both daily: the weights do not depend on the period as long as they agree).
    cov : pandas.DataFrame
        Covariance of the symbols' returns; its rows and columns must hold every symbol of
        ``mu`` (they are reordered like ``mu``; extra symbols are ignored).
    fraction : float
        Share of the full Kelly bet, in ``(0, 1]`` (0.25: quarter Kelly).

    Returns
    -------
    pandas.Series
        Signed weights indexed like ``mu``, from a Cholesky solve (the inverse is never formed).

    Raises
    ------
    ValueError
        Naming the symbols missing from ``cov`` or with a non-finite ``mu`` / covariance entry;
        when ``cov`` is not symmetric or not positive definite (its smallest eigenvalue is
        reported).
    """
    m = symbol_series(mu, "mu")
    f = float(fraction)
    if not (math.isfinite(f) and 0.0 < f <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if not isinstance(cov, pd.DataFrame):
        raise TypeError(f"cov must be a pandas DataFrame, got {type(cov).__name__}")
    if len(m) == 0:
        return pd.Series(dtype=float, name=_WEIGHT)
    bad_mu = m.index[~np.isfinite(m.to_numpy(float))]
    if len(bad_mu):
        raise ValueError(f"mu is not finite for: {symbol_names(bad_mu)}")
    missing = m.index.difference(cov.index, sort=False).union(
        m.index.difference(cov.columns, sort=False), sort=False
    )
    if len(missing):
        raise ValueError(f"cov has no row/column for: {symbol_names(missing)}")
    c = cov.loc[m.index, m.index].astype(float).to_numpy()
    bad_cov = m.index[~np.isfinite(c).all(axis=0)]
    if len(bad_cov):
        raise ValueError(f"cov is not finite for: {symbol_names(bad_cov)}")
    if not np.allclose(c, c.T, rtol=1e-10, atol=1e-14):
        raise ValueError("cov is not symmetric")
    try:
        factor = linalg.cho_factor(c, lower=True, check_finite=False)
    except linalg.LinAlgError:
        smallest = float(np.linalg.eigvalsh(c).min())
        raise ValueError(
            f"cov is not positive definite (smallest eigenvalue {smallest:.3g}) for symbols "
            f"{symbol_names(m.index)}: drop redundant symbols or shrink the estimate"
        ) from None
    w = linalg.cho_solve(factor, m.to_numpy(float), check_finite=False)
    return pd.Series(f * w, index=m.index, name=_WEIGHT)


def _skfolio_weights(returns: pd.DataFrame, optimizer: Any) -> pd.Series:
    """Weights of a default-constructed skfolio ``optimizer`` fitted on the checked returns."""
    r = _check_returns(returns)
    if r.shape[1] == 1:
        return pd.Series(1.0, index=r.columns, name=_WEIGHT)
    return _normalised(optimizer().fit(r).weights_, r.columns)


def risk_parity_weights(returns: pd.DataFrame) -> pd.Series:
    """Long-only equal-risk-contribution weights (skfolio ``RiskBudgeting``, variance).

    Parameters
    ----------
    returns : pandas.DataFrame
        Decimal daily returns, one column per symbol; rows with any missing value are dropped.

    Returns
    -------
    pandas.Series
        Weights ``>= 0`` summing to 1, indexed by the columns of ``returns``, such that every
        symbol's contribution ``w_i * (S w)_i`` to the variance is the same (``S`` the sample
        covariance of ``returns``), up to the solver's tolerance.

    Raises
    ------
    ValueError
        On fewer than 2 complete rows, infinite values or a zero-variance column (named).
    """
    from skfolio.optimization import RiskBudgeting

    return _skfolio_weights(returns, RiskBudgeting)


def hrp_weights(returns: pd.DataFrame) -> pd.Series:
    """Long-only hierarchical risk parity weights (skfolio ``HierarchicalRiskParity``).

    Parameters
    ----------
    returns : pandas.DataFrame
        Decimal daily returns, one column per symbol; rows with any missing value are dropped.

    Returns
    -------
    pandas.Series
        Weights ``>= 0`` summing to 1, indexed by the columns of ``returns`` (variance as the risk
        measure, skfolio's default Pearson-correlation distance and Ward linkage).

    Raises
    ------
    ValueError
        On fewer than 2 complete rows, infinite values or a zero-variance column (named).
    """
    from skfolio.optimization import HierarchicalRiskParity

    return _skfolio_weights(returns, HierarchicalRiskParity)


# --------------------------------------------------------------------------------- dispatch
@dataclass(frozen=True)
class SizingSpec:
    """How :func:`size` turns signals into target weights.

    Attributes
    ----------
    method : {"vol_target", "kelly", "risk_parity", "hrp"}
        The sizing rule (see the module docstring).
    target_vol : float
        Annualised volatility budget of ``vol_target``.
    kelly_fraction : float
        Share of the full Kelly bet, in ``(0, 1]``.
    kelly_sharpe : float
        ``kelly`` reads a signal as an expected annualised Sharpe ratio of
        ``signal * kelly_sharpe`` (so a full-conviction signal expects this Sharpe ratio).
    max_weight : float or None
        Cap on ``|weight|`` per symbol for every method (None: no cap; with ``risk_parity`` and
        ``hrp`` a cap makes the weights sum to less than 1).
    """

    method: SizingMethod = "vol_target"
    target_vol: float = 0.10
    kelly_fraction: float = 0.25
    kelly_sharpe: float = 0.5
    max_weight: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.method not in _METHODS:
            problems.append(f"method must be one of {', '.join(_METHODS)}, got {self.method!r}")
        if not (math.isfinite(self.target_vol) and self.target_vol > 0.0):
            problems.append(f"target_vol must be > 0, got {self.target_vol}")
        if not (math.isfinite(self.kelly_fraction) and 0.0 < self.kelly_fraction <= 1.0):
            problems.append(f"kelly_fraction must be in (0, 1], got {self.kelly_fraction}")
        if not (math.isfinite(self.kelly_sharpe) and self.kelly_sharpe > 0.0):
            problems.append(f"kelly_sharpe must be > 0, got {self.kelly_sharpe}")
        if self.max_weight is not None and not (
            math.isfinite(self.max_weight) and self.max_weight > 0.0
        ):
            problems.append(f"max_weight must be > 0 or absent, got {self.max_weight}")
        if problems:
            raise ValueError("invalid sizing spec: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> SizingSpec:
        """A spec from a mapping such as a ``[sizing]`` table of a TOML file.

        Parameters
        ----------
        m : Mapping[str, Any]
            Field name to value; missing fields keep their defaults (TOML has no null: leave
            ``max_weight`` out for no cap).

        Returns
        -------
        SizingSpec

        Raises
        ------
        ValueError
            On unknown keys (all named), a ``method`` that is not a string, numbers of the wrong
            type (booleans never) and values out of range.
        """
        return from_table(cls, m, label="sizing setting", plural="sizing setting(s)")


def _kelly_from_signal(
    spec: SizingSpec, s: pd.Series, vol_forecast: pd.Series, returns: pd.DataFrame | None
) -> pd.Series:
    weights = pd.Series(0.0, index=s.index, name=_WEIGHT)
    active = s.index[s.to_numpy(float) != 0.0]
    if len(active) == 0:
        return weights
    vols = _vols_for(vol_forecast, active).to_numpy(float)
    mu = pd.Series(s.loc[active].to_numpy(float) * spec.kelly_sharpe * vols, index=active)
    if len(active) == 1:
        corr = np.ones((1, 1))
    else:
        if returns is None:
            raise ValueError("sizing method kelly needs returns (for the correlations)")
        from sklearn.covariance import LedoitWolf

        r = _check_returns(returns, active).to_numpy(float)
        shrunk = LedoitWolf().fit(r).covariance_
        sd = np.sqrt(np.diag(shrunk))
        corr = shrunk / np.outer(sd, sd)
    cov = pd.DataFrame(corr * np.outer(vols, vols), index=active, columns=active)
    weights.loc[active] = fractional_kelly(mu, cov, spec.kelly_fraction)
    return weights


def _long_only(
    spec: SizingSpec, s: pd.Series, returns: pd.DataFrame | None
) -> pd.Series:
    weights = pd.Series(0.0, index=s.index, name=_WEIGHT)
    active = s.index[s.to_numpy(float) > 0.0]
    if len(active) == 0:
        return weights
    if returns is None:
        raise ValueError(f"sizing method {spec.method} needs returns")
    r = _check_returns(returns, active)
    fn = risk_parity_weights if spec.method == "risk_parity" else hrp_weights
    weights.loc[active] = fn(r)
    return weights


def size(
    spec: SizingSpec,
    signal: pd.Series,
    vol_forecast: pd.Series,
    returns: pd.DataFrame | None = None,
) -> pd.Series:
    """Target weights for ``signal`` by ``spec.method``.

    Parameters
    ----------
    spec : SizingSpec
        The sizing rule and its parameters.
    signal : pandas.Series
        Signal in ``[-1, 1]`` per symbol.
    vol_forecast : pandas.Series
        Annualised volatility forecast per symbol (``vol_target`` and ``kelly``; needed only for
        symbols with a non-zero signal).
    returns : pandas.DataFrame, optional
        Decimal daily returns, one column per symbol (the trailing estimation window): the
        correlations of ``kelly`` and the covariances of ``risk_parity`` / ``hrp``. Not used by
        ``vol_target``.

    Returns
    -------
    pandas.Series
        Signed weights indexed like ``signal`` (0 for symbols the method leaves out), capped at
        ``spec.max_weight``.

    Notes
    -----
    ``kelly``: ``mu_i = signal_i * kelly_sharpe * vol_i`` (annualised expected excess return) and
    ``cov = D C D`` with ``D`` the diagonal of the volatility forecasts and ``C`` the correlation
    of the Ledoit-Wolf shrunk covariance of ``returns`` (always positive definite, unlike the
    sample one on a short window); then :func:`fractional_kelly`. Uncorrelated symbols get
    ``kelly_fraction * signal_i * kelly_sharpe / vol_i``.

    ``risk_parity`` / ``hrp``: long-only by construction, so they allocate 100% of equity over
    the symbols with a positive signal (whatever its size: the signal selects, the risk model
    sizes); symbols with a signal ``<= 0`` get 0. No positive signal: all zeros.
    """
    if not isinstance(spec, SizingSpec):
        raise TypeError(f"spec must be a SizingSpec, got {type(spec).__name__}")
    s = _check_signal(signal)
    if spec.method == "vol_target":
        weights = vol_target_weights(s, vol_forecast, spec.target_vol)
    elif spec.method == "kelly":
        weights = _kelly_from_signal(spec, s, vol_forecast, returns)
    else:
        weights = _long_only(spec, s, returns)
    return _clip(weights, spec.max_weight).rename(_WEIGHT)
