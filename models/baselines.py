"""Baselines the models must beat, the forecasting targets, and forecast-error metrics.

Volatility baselines: historical (rolling) volatility, RiskMetrics EWMA and HAR-RV (Corsi, 2009).
Return baselines: a ridge regression and gradient-boosted trees on lagged return features.

Every volatility forecast ``f(returns, horizon, ...) -> pandas.Series`` is causal: row ``t`` is the
annualised (decimal) volatility forecast over sessions ``t+1 .. t+horizon`` made at the close of
``t``, using returns up to and including ``t``. The target :func:`forward_realised_vol` is aligned
the same way, so ``forecast[t]`` and ``target[t]`` are directly comparable row by row.

The estimated baselines keep arch's split between a frozen *specification* (:class:`HARSpec`,
:class:`LinearReturnSpec`, :class:`GBTReturnSpec`) and a *fitted result* (:class:`HARFit`,
:class:`ReturnFit`). ``fit_*(returns, spec, train_end)`` estimates only on rows whose target window
ends at or before ``train_end`` (the purge: a label that is not fully known at ``train_end`` is not
trained on), and ``fit.predict(returns)`` forecasts at every row of ``returns`` from returns up to
and including that row, so one fit can be scored on any later rows without look-ahead.

The metrics take plain arrays of annualised volatilities and ignore pairs where either value is
not finite (the head of a rolling forecast, the tail of the target).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "RETURN_FEATURE_COLUMNS",
    "GBTReturnSpec",
    "HARFit",
    "HARSpec",
    "LinearReturnSpec",
    "ReturnFit",
    "ewma_vol",
    "fit_gbt_return",
    "fit_har",
    "fit_linear_return",
    "forward_log_return",
    "forward_realised_vol",
    "har_features",
    "har_vol",
    "historical_vol",
    "mae",
    "qlike",
    "return_features",
    "rmse",
]

#: Columns of :func:`return_features`, the regressors of the return baselines.
RETURN_FEATURE_COLUMNS: tuple[str, ...] = ("r_1", "r_5", "r_22", "rv_5", "rv_22")

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


def _trailing_sum(values: np.ndarray, window: int) -> np.ndarray:
    """``sum(x_{t-window+1}, ..., x_t)`` at each ``t`` (NaN until a full window)."""
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] >= window:
        out[window - 1 :] = np.lib.stride_tricks.sliding_window_view(values, window).sum(axis=1)
    return out


def _lead(values: np.ndarray, horizon: int) -> np.ndarray:
    """``values`` moved ``horizon`` rows earlier (row ``t`` holds ``values[t + horizon]``)."""
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] > horizon:
        out[:-horizon] = values[horizon:]
    return out


def _fit_rows(index: pd.Index, train_end: Hashable | None, horizon: int) -> int:
    """Number of leading rows whose target window ``t+1 .. t+horizon`` ends by ``train_end``.

    ``train_end`` is an index label (not necessarily present); ``None`` means the last row.
    """
    if not index.is_monotonic_increasing:
        raise ValueError("returns must be indexed in increasing (time) order")
    if train_end is None:
        last = len(index) - 1
    else:
        key: Any = train_end
        if isinstance(index, pd.DatetimeIndex):
            key = pd.Timestamp(key)  # type: ignore[arg-type]
        last = int(index.searchsorted(key, side="right")) - 1
    return max(last - horizon + 1, 0)


@dataclass(frozen=True)
class HARSpec:
    """Specification of a HAR-RV model (Corsi, 2009) for the forward realised volatility.

    The regressors known at the close of ``t`` are the trailing mean squared daily returns
    ``RV^(L)_t = mean(r_{t-L+1}^2, ..., r_t^2)`` for each ``L`` in ``lags`` (daily, weekly and
    monthly with the defaults; the squared daily return is the daily realised variance proxy, as
    no intraday data is available). The target is the forward realised variance
    ``mean(r_{t+1}^2, ..., r_{t+H}^2)``, the square of :func:`forward_realised_vol` over 252, so
    one regression forecasts the whole horizon directly.

    Parameters
    ----------
    horizon : int
        Sessions ahead, ``H``.
    lags : tuple of int
        Window lengths of the regressors, strictly increasing.
    log : bool
        Log-HAR: regress ``log`` target on ``log`` regressors (variances floored at ``1e-12``) and
        forecast ``exp`` of the fit. The forecast is then the conditional median rather than the
        mean of the realised variance (no log-normal bias correction), which suits MAE on
        volatility and keeps the forecast positive. With ``False`` the regression is on variance
        levels, as in Corsi (2009), and a forecast is floored at ``1e-12``.
    """

    horizon: int = 5
    lags: tuple[int, ...] = (1, 5, 22)
    log: bool = True

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        lags = tuple(int(lag) for lag in self.lags)
        if not lags or lags[0] < 1 or any(b <= a for a, b in pairwise(lags)):
            raise ValueError(f"lags must be positive and strictly increasing, got {self.lags}")
        object.__setattr__(self, "lags", lags)

    @property
    def columns(self) -> tuple[str, ...]:
        """Regressor names, ``rv_<lag>``."""
        return tuple(f"rv_{lag}" for lag in self.lags)


def har_features(returns: pd.Series, spec: HARSpec) -> pd.DataFrame:
    """HAR regressors known at each row: trailing mean squared returns (daily variance).

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns.
    spec : HARSpec
        Model specification (its ``lags``).

    Returns
    -------
    pandas.DataFrame
        One column ``rv_<lag>`` per lag, indexed like ``returns``; NaN until a full window. Not
        log-transformed, whatever ``spec.log``.
    """
    r = _check(returns, spec.horizon)
    data = {
        col: _trailing_mean_sq(r, lag) for col, lag in zip(spec.columns, spec.lags, strict=True)
    }
    return pd.DataFrame(data, index=r.index)


def _har_design(features: pd.DataFrame, log: bool) -> pd.DataFrame:
    x = np.log(np.maximum(features, _VAR_FLOOR)) if log else features
    return sm.add_constant(x, has_constant="add")


@dataclass(frozen=True)
class HARFit:
    """A HAR-RV model estimated by OLS.

    Parameters
    ----------
    spec : HARSpec
        The specification that was fitted.
    params : pandas.Series
        Coefficients: ``const`` then one per regressor ``rv_<lag>`` (on logs when ``spec.log``).
    bse : pandas.Series
        Newey-West (HAC, ``horizon - 1`` lags) standard errors of ``params``; the overlapping
        targets make the residuals autocorrelated up to that lag.
    nobs : int
        Rows used in the fit.
    rsquared : float
        In-sample R^2 of the regression (on its own scale).
    train_end : Hashable or None
        The ``train_end`` the model was fitted with.
    """

    spec: HARSpec
    params: pd.Series
    bse: pd.Series
    nobs: int
    rsquared: float
    train_end: Hashable | None

    def predict(self, returns: pd.Series) -> pd.Series:
        """Forecast at every row of ``returns`` (causal: row ``t`` uses returns up to ``t``).

        Parameters
        ----------
        returns : pandas.Series
            Decimal daily log returns; may extend past ``train_end``.

        Returns
        -------
        pandas.Series
            Annualised volatility forecast over ``t+1 .. t+H``, indexed like ``returns``; NaN
            until the longest lag has a full window.
        """
        x = _har_design(har_features(returns, self.spec), self.spec.log)
        fitted = x.to_numpy() @ self.params.to_numpy()
        var = np.exp(fitted) if self.spec.log else np.maximum(fitted, _VAR_FLOOR)
        return pd.Series(np.sqrt(_PERIODS_PER_YEAR * var), index=returns.index, name="har_vol")


def fit_har(
    returns: pd.Series, spec: HARSpec | None = None, train_end: Hashable | None = None
) -> HARFit:
    """Estimate a HAR-RV model by OLS on the rows whose target is known at ``train_end``.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns, indexed in time order (e.g. by session).
    spec : HARSpec, optional
        Model specification; ``HARSpec()`` by default.
    train_end : Hashable, optional
        Last index label whose return may be used. Row ``t`` enters the fit only if its whole
        target window ``t+1 .. t+H`` lies at or before ``train_end`` (purge); ``None`` uses every
        row whose target is complete.

    Returns
    -------
    HARFit
        Coefficients, HAC standard errors and fit statistics.

    Raises
    ------
    ValueError
        If fewer rows than regressors + 1 have complete features and target.
    """
    spec = spec if spec is not None else HARSpec()
    r = _check(returns, spec.horizon)
    rows = _fit_rows(r.index, train_end, spec.horizon)
    x = _har_design(har_features(r, spec), spec.log).iloc[:rows]
    target = _lead(_trailing_mean_sq(r, spec.horizon), spec.horizon)[:rows]
    y = np.log(np.maximum(target, _VAR_FLOOR)) if spec.log else target
    ok = np.isfinite(y) & np.isfinite(x.to_numpy()).all(axis=1)
    if ok.sum() <= x.shape[1]:
        raise ValueError(
            f"too few rows to fit HAR: {int(ok.sum())} with complete features and target at "
            f"train_end={train_end!r} (need more than {x.shape[1]})"
        )
    res = sm.OLS(y[ok], x.loc[ok]).fit(cov_type="HAC", cov_kwds={"maxlags": spec.horizon - 1})
    return HARFit(
        spec=spec,
        params=pd.Series(res.params, index=x.columns, name="params"),
        bse=pd.Series(res.bse, index=x.columns, name="bse"),
        nobs=int(res.nobs),
        rsquared=float(res.rsquared),
        train_end=train_end,
    )


def har_vol(
    returns: pd.Series, horizon: int, train_end: Hashable | None = None, log: bool = True
) -> pd.Series:
    """HAR-RV forecast with daily, weekly and monthly lags, fitted up to ``train_end``.

    ``fit_har(returns, HARSpec(horizon, log=log), train_end).predict(returns)``: the rows after
    ``train_end`` are out of sample; rows at or before it are in-sample fits.
    """
    return fit_har(returns, HARSpec(horizon=horizon, log=log), train_end).predict(returns)


def return_features(returns: pd.Series) -> pd.DataFrame:
    """Lagged return features known at the close of each row.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`RETURN_FEATURE_COLUMNS`: ``r_1`` (the row's return), ``r_5`` and ``r_22``
        (sums of the last 5 and 22 returns), ``rv_5`` and ``rv_22`` (annualised trailing
        realised volatility); NaN until a full window.
    """
    r = _check(returns, 1)
    values = r.to_numpy(dtype=float)
    data = {
        "r_1": values,
        "r_5": _trailing_sum(values, 5),
        "r_22": _trailing_sum(values, 22),
        "rv_5": np.sqrt(_PERIODS_PER_YEAR * _trailing_mean_sq(r, 5)),
        "rv_22": np.sqrt(_PERIODS_PER_YEAR * _trailing_mean_sq(r, 22)),
    }
    return pd.DataFrame(data, index=r.index, columns=list(RETURN_FEATURE_COLUMNS))


def forward_log_return(returns: pd.Series, horizon: int) -> pd.Series:
    """Log return over the next ``horizon`` sessions: the target of the return baselines.

    Returns
    -------
    pandas.Series
        ``r_{t+1} + ... + r_{t+H}`` at row ``t``; NaN for the last ``H`` rows.
    """
    r = _check(returns, horizon)
    fwd = _lead(_trailing_sum(r.to_numpy(dtype=float), horizon), horizon)
    return pd.Series(fwd, index=r.index, name="forward_return")


@dataclass(frozen=True)
class LinearReturnSpec:
    """Ridge regression of the forward log return on :func:`return_features` (standardised).

    Parameters
    ----------
    horizon : int
        Sessions ahead, ``H``.
    alpha : float
        Ridge penalty on the standardised features; ``0`` gives ordinary least squares.
    """

    horizon: int = 5
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not self.alpha >= 0.0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")


@dataclass(frozen=True)
class GBTReturnSpec:
    """Gradient-boosted trees (scikit-learn's histogram GBRT) for the forward log return.

    Parameters
    ----------
    horizon : int
        Sessions ahead, ``H``.
    max_iter : int
        Boosting iterations (no early stopping, so the fit is deterministic).
    learning_rate : float
        Shrinkage.
    max_depth : int
        Depth of each tree.
    min_samples_leaf : int
        Minimum rows per leaf.
    l2_regularization : float
        L2 penalty on leaf values.
    random_state : int
        Seed passed to the estimator.
    """

    horizon: int = 5
    max_iter: int = 100
    learning_rate: float = 0.05
    max_depth: int = 3
    min_samples_leaf: int = 50
    l2_regularization: float = 1.0
    random_state: int = 0

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.max_iter < 1 or self.max_depth < 1 or self.min_samples_leaf < 1:
            raise ValueError("max_iter, max_depth and min_samples_leaf must be >= 1")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")


@dataclass(frozen=True)
class ReturnFit:
    """A fitted return baseline.

    Parameters
    ----------
    spec : LinearReturnSpec or GBTReturnSpec
        The specification that was fitted.
    estimator : sklearn.pipeline.Pipeline or sklearn.ensemble.HistGradientBoostingRegressor
        The fitted scikit-learn estimator, on :data:`RETURN_FEATURE_COLUMNS`.
    nobs : int
        Rows used in the fit.
    train_end : Hashable or None
        The ``train_end`` the model was fitted with.
    """

    spec: LinearReturnSpec | GBTReturnSpec
    estimator: Pipeline | HistGradientBoostingRegressor
    nobs: int
    train_end: Hashable | None

    def predict(self, returns: pd.Series) -> pd.Series:
        """Forecast of the next-``H`` log return at every row (causal; NaN until 22 returns)."""
        x = return_features(returns)
        ok = np.isfinite(x.to_numpy()).all(axis=1)
        out = np.full(len(x), np.nan)
        if ok.any():
            out[ok] = self.estimator.predict(x.loc[ok])
        return pd.Series(out, index=returns.index, name="return_forecast")


def _fit_return(
    returns: pd.Series,
    spec: LinearReturnSpec | GBTReturnSpec,
    estimator: Pipeline | HistGradientBoostingRegressor,
    train_end: Hashable | None,
) -> ReturnFit:
    r = _check(returns, spec.horizon)
    rows = _fit_rows(r.index, train_end, spec.horizon)
    x = return_features(r).iloc[:rows]
    y = forward_log_return(r, spec.horizon).to_numpy()[:rows]
    ok = np.isfinite(y) & np.isfinite(x.to_numpy()).all(axis=1)
    if ok.sum() <= x.shape[1]:
        raise ValueError(
            f"too few rows to fit a return baseline: {int(ok.sum())} with complete features and "
            f"target at train_end={train_end!r}"
        )
    estimator.fit(x.loc[ok], y[ok])
    return ReturnFit(spec=spec, estimator=estimator, nobs=int(ok.sum()), train_end=train_end)


def fit_linear_return(
    returns: pd.Series, spec: LinearReturnSpec | None = None, train_end: Hashable | None = None
) -> ReturnFit:
    """Fit the linear return baseline on rows whose target is known at ``train_end``.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns, indexed in time order.
    spec : LinearReturnSpec, optional
        ``LinearReturnSpec()`` by default.
    train_end : Hashable, optional
        Last index label whose return may be used (targets are purged as in :func:`fit_har`).

    Returns
    -------
    ReturnFit
        ``StandardScaler`` then ``Ridge`` (or ``LinearRegression`` when ``alpha == 0``).
    """
    spec = spec if spec is not None else LinearReturnSpec()
    model = LinearRegression() if spec.alpha == 0.0 else Ridge(alpha=spec.alpha)
    return _fit_return(returns, spec, make_pipeline(StandardScaler(), model), train_end)


def fit_gbt_return(
    returns: pd.Series, spec: GBTReturnSpec | None = None, train_end: Hashable | None = None
) -> ReturnFit:
    """Fit the gradient-boosted trees baseline on rows whose target is known at ``train_end``.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns, indexed in time order.
    spec : GBTReturnSpec, optional
        ``GBTReturnSpec()`` by default.
    train_end : Hashable, optional
        Last index label whose return may be used (targets are purged as in :func:`fit_har`).

    Returns
    -------
    ReturnFit
        A ``HistGradientBoostingRegressor`` with squared-error loss, early stopping off and the
        spec's ``random_state``: the same data give the same model.
    """
    spec = spec if spec is not None else GBTReturnSpec()
    estimator = HistGradientBoostingRegressor(
        loss="squared_error",
        learning_rate=spec.learning_rate,
        max_iter=spec.max_iter,
        max_depth=spec.max_depth,
        min_samples_leaf=spec.min_samples_leaf,
        l2_regularization=spec.l2_regularization,
        early_stopping=False,
        random_state=spec.random_state,
    )
    return _fit_return(returns, spec, estimator, train_end)


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
