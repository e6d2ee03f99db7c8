"""Baseline volatility forecasts, the forecasting target, and forecast-error metrics.

Every forecast ``f(returns, horizon, ...) -> pandas.Series`` is causal: row ``t`` is the annualised
(decimal) volatility forecast over sessions ``t+1 .. t+horizon`` made at the close of ``t``, using
returns up to and including ``t``. The target :func:`forward_realised_vol` is aligned the same way,
so ``forecast[t]`` and ``target[t]`` are directly comparable row by row.

The metrics take plain arrays of annualised volatilities and ignore pairs where either value is
not finite (the head of a rolling forecast, the tail of the target).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "ewma_vol",
    "forward_realised_vol",
    "historical_vol",
    "mae",
    "qlike",
    "rmse",
]

_PERIODS_PER_YEAR = 252
_VAR_FLOOR = 1e-12  # guards QLIKE against zero variances


def _check(returns: pd.Series, horizon: int) -> pd.Series:
    if not isinstance(returns, pd.Series):
        raise TypeError(f"returns must be a pandas Series, got {type(returns).__name__}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    return returns.astype(float)


def _trailing_mean_sq(r: pd.Series, window: int) -> np.ndarray:
    """``mean(r_{t-window+1}^2, ..., r_t^2)`` at each ``t`` (NaN until a full window).

    Each value is computed from its own window (no running sum), so it is bit-for-bit independent
    of returns outside the window.
    """
    sq = r.to_numpy(dtype=float) ** 2
    out = np.full(sq.shape[0], np.nan)
    if sq.shape[0] >= window:
        out[window - 1 :] = np.lib.stride_tricks.sliding_window_view(sq, window).mean(axis=1)
    return out


def forward_realised_vol(returns: pd.Series, horizon: int) -> pd.Series:
    """Realised volatility over the next ``horizon`` sessions: the forecasting target.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns.
    horizon : int
        Sessions ahead, ``H``.

    Returns
    -------
    pandas.Series
        ``sqrt(252 * mean(r_{t+1}^2, ..., r_{t+H}^2))`` at row ``t``; NaN for the last ``H`` rows
        (and wherever the window holds a NaN return).
    """
    r = _check(returns, horizon)
    trailing = _trailing_mean_sq(r, horizon)
    fwd = np.full(trailing.shape[0], np.nan)
    fwd[:-horizon] = trailing[horizon:]
    return pd.Series(np.sqrt(_PERIODS_PER_YEAR * fwd), index=r.index, name="forward_rv")


def historical_vol(returns: pd.Series, horizon: int, window: int = 22) -> pd.Series:
    """Historical (rolling) volatility as a flat forecast over the next ``horizon`` sessions.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns.
    horizon : int
        Forecast horizon; the forecast is flat, so it only enters the validation.
    window : int
        Sessions in the trailing window.

    Returns
    -------
    pandas.Series
        ``sqrt(252 * mean(r_{t-window+1}^2, ..., r_t^2))`` at row ``t``; NaN until a full window.
    """
    r = _check(returns, horizon)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    var = _trailing_mean_sq(r, window)
    return pd.Series(np.sqrt(_PERIODS_PER_YEAR * var), index=r.index, name="historical_vol")


def ewma_vol(
    returns: pd.Series, horizon: int, lam: float = 0.94, min_periods: int = 22
) -> pd.Series:
    """RiskMetrics exponentially weighted volatility as a flat forecast.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns (zero mean assumed, as in RiskMetrics).
    horizon : int
        Forecast horizon; the RiskMetrics term structure is flat, so it only enters the validation.
    lam : float
        Decay factor, ``0 < lam < 1``.
    min_periods : int
        Returns needed before the first forecast.

    Returns
    -------
    pandas.Series
        ``sqrt(252 * s2_t)`` with ``s2_t = lam * s2_{t-1} + (1 - lam) * r_t^2`` (weights normalised
        over the available history, so the start needs no seed variance).
    """
    r = _check(returns, horizon)
    if not 0.0 < lam < 1.0:
        raise ValueError(f"lam must be in (0, 1), got {lam}")
    var = (r**2).ewm(alpha=1.0 - lam, adjust=True, min_periods=min_periods).mean()
    return np.sqrt(_PERIODS_PER_YEAR * var).rename("ewma_vol")


def _pairs(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    ok = np.isfinite(t) & np.isfinite(p)
    if not ok.any():
        raise ValueError("no pair of finite values to score")
    return t[ok], p[ok]


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error over finite pairs."""
    t, p = _pairs(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error over finite pairs."""
    t, p = _pairs(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def qlike(y_true_vol: np.ndarray, y_pred_vol: np.ndarray) -> float:
    """QLIKE loss of volatility forecasts, evaluated on variances.

    Parameters
    ----------
    y_true_vol, y_pred_vol : numpy.ndarray
        Realised and forecast volatilities (same units).

    Returns
    -------
    float
        ``mean(y / p - log(y / p) - 1)`` with ``y, p`` the squared volatilities floored at
        ``1e-12``; zero for a perfect forecast, robust to noise in the proxy (Patton, 2011).
    """
    t, p = _pairs(y_true_vol, y_pred_vol)
    y = np.maximum(t**2, _VAR_FLOOR)
    h = np.maximum(p**2, _VAR_FLOOR)
    ratio = y / h
    return float(np.mean(ratio - np.log(ratio) - 1.0))
