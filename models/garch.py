"""GARCH-family conditional volatility features on :mod:`arch`.

The module keeps arch's split between a model *specification* (:class:`GarchSpec`, what to fit) and
a *fitted result* (:class:`GarchFit`, estimated parameters and diagnostics), and composes three
small operations from them:

- :func:`fit_garch` estimates a spec on a return series,
- :func:`filter_garch` runs fixed parameters over a series (no estimation) and derives the features,
- :func:`rolling_garch_features` builds an expanding-window history without look-ahead: it refits
  every ``refit_every`` sessions on the data strictly before each block and filters the block with
  those parameters.

Returns are decimal daily log returns; they are multiplied by 100 before reaching arch (its
optimiser is tuned for percent returns) and the outputs are converted back to annualised decimal
volatility.

Notes
-----
Filtering drives arch's volatility process directly rather than through ``model.fix``, which
starts the variance recursion from a backcast of residuals around the *full-sample* mean and clips
variances with bounds built from full-sample moments (both slightly forward-looking). Here the
residuals use the fitted mean, the backcast is arch's: an exponentially weighted average of the
first 75 squared residuals, and the variance bounds are constants. Output rows before position 75
therefore depend (weakly) on returns up to position 74; every row from position 75 on depends only
on returns up to and including its own position. :func:`rolling_garch_features` emits nothing
before ``min_obs`` (at least 75), so its outputs are strictly causal. With a zero mean the
results equal arch's ``fix(params).forecast(...)`` exactly.

Warm starts (:func:`fit_garch` with ``starting_values``, e.g. yesterday's parameters) do not go
through arch's ``fit``: its SLSQP starts from an identity Hessian, so from a point already near the
optimum its first quasi-Newton step is a full steepest-descent step in raw parameter units, which
overshoots by orders of magnitude (``alpha + beta`` is O(1), the gradient of the log-likelihood
is O(1-100)) and costs several line searches to undo; arch also always runs its starting-value
grid search and differentiates its *linear* constraints numerically at every iteration. Measured
on the replay data (``bench/bench_garch.py``), arch's own warm start needs about half the
iterations of a cold fit and is only 1.5-1.9x faster. :func:`fit_garch` therefore refines
starting values with SLSQP on arch's own likelihood (same mean, volatility and distribution
objects, same backcast and variance bounds as arch's ``fit``) in coordinates whitened by the
outer product of the scores at the start (BHHH), where the identity is a good Hessian;
constraints stay linear and get their exact Jacobian. It falls back to arch's ``fit`` when the
refinement cannot run or does not converge.
EGARCH's likelihood has a kink in ``mu`` at every return (``|r_t - mu|`` drives the variance), so
gradient-based fits from different starts can stop at points whose log-likelihoods differ by
~1e-4-1e-3 in either direction; GARCH and GJR are smooth and warm and cold fits agree closely.

EGARCH has no analytic multi-step variance forecast; for ``horizon > 1`` it is simulated (1,000
paths) from a fixed seed, so the features stay deterministic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from arch.univariate import (
    EGARCH,
    GARCH,
    ConstantMean,
    Distribution,
    Normal,
    SkewStudent,
    StudentsT,
    ZeroMean,
)
from arch.univariate.mean import HARX

__all__ = [
    "GARCH_FEATURE_COLUMNS",
    "GarchFit",
    "GarchSpec",
    "filter_garch",
    "fit_garch",
    "rolling_garch_features",
]

#: Output columns of :func:`filter_garch` and :func:`rolling_garch_features`.
GARCH_FEATURE_COLUMNS: tuple[str, ...] = ("garch_vol", "garch_forecast", "garch_std_resid")

_SCALE = 100.0  # decimal -> percent returns
_PERIODS_PER_YEAR = 252
_BACKCAST_OBS = 75  # arch's backcast window (``VolatilityProcess.backcast``)
_VAR_BOUNDS = (1e-12, 1e12)  # constant (hence causal) clip of percent^2 variances
_EGARCH_SIMULATIONS = 1000  # EGARCH has no analytic multi-step forecast
_EGARCH_SEED = 20180101
_DISTRIBUTIONS: dict[str, type[Distribution]] = {
    "normal": Normal,
    "t": StudentsT,
    "skewt": SkewStudent,
}


@dataclass(frozen=True)
class GarchSpec:
    """Specification of a univariate GARCH-family model.

    Parameters
    ----------
    vol : {"GARCH", "EGARCH", "GJR"}
        Volatility process. ``"GJR"`` is arch's GARCH with an asymmetric term (``o >= 1``).
    dist : {"normal", "t", "skewt"}
        Innovation distribution.
    p : int
        Lag order of the symmetric innovation.
    o : int
        Lag order of the asymmetric innovation; ``"GJR"`` uses at least 1.
    q : int
        Lag order of the lagged conditional variance.
    mean : {"Constant", "Zero"}
        Mean model.
    horizon : int
        Forecast horizon in sessions of the ``garch_forecast`` feature.
    """

    vol: Literal["GARCH", "EGARCH", "GJR"] = "GARCH"
    dist: Literal["normal", "t", "skewt"] = "t"
    p: int = 1
    o: int = 0
    q: int = 1
    mean: Literal["Constant", "Zero"] = "Constant"
    horizon: int = 5

    def __post_init__(self) -> None:
        if self.vol not in ("GARCH", "EGARCH", "GJR"):
            raise ValueError(f"vol must be GARCH, EGARCH or GJR, got {self.vol!r}")
        if self.dist not in ("normal", "t", "skewt"):
            raise ValueError(f"dist must be normal, t or skewt, got {self.dist!r}")
        if self.mean not in ("Constant", "Zero"):
            raise ValueError(f"mean must be Constant or Zero, got {self.mean!r}")
        if self.p < 1 or self.o < 0 or self.q < 0:
            raise ValueError(f"need p >= 1, o >= 0, q >= 0, got p={self.p} o={self.o} q={self.q}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")

    @property
    def asym_order(self) -> int:
        """Asymmetric lag order passed to arch (at least 1 for ``"GJR"``)."""
        return max(self.o, 1) if self.vol == "GJR" else self.o

    def parameter_names(self) -> tuple[str, ...]:
        """Names of the parameters in arch's order (mean, volatility, distribution)."""
        model = self.build(pd.Series(np.zeros(2)))
        return (
            *model.parameter_names(),
            *model.volatility.parameter_names(),
            *model.distribution.parameter_names(),
        )

    def build(self, returns_pct: pd.Series, seed: int | None = None) -> HARX:
        """The arch model of this spec on percent returns (no automatic rescaling).

        ``seed`` seeds the innovation distribution, whose generator drives simulation forecasts.
        """
        p, o, q = self.p, self.asym_order, self.q
        vol = EGARCH(p=p, o=o, q=q) if self.vol == "EGARCH" else GARCH(p=p, o=o, q=q)
        dist = _DISTRIBUTIONS[self.dist](seed=np.random.default_rng(seed))
        mean = ConstantMean if self.mean == "Constant" else ZeroMean
        return mean(returns_pct, volatility=vol, distribution=dist, rescale=False)


@dataclass(frozen=True)
class GarchFit:
    """Estimated parameters of a :class:`GarchSpec` (percent-return scale, arch's order).

    Parameters
    ----------
    spec : GarchSpec
        The specification that was fitted.
    params : dict of str to float
        Parameter estimates, keyed and ordered as arch names them (``mu``, ``omega``,
        ``alpha[1]``, ..., distribution parameters last).
    loglik : float
        Maximised log-likelihood.
    nobs : int
        Observations used in the estimation.
    converged : bool
        Whether the optimiser reported convergence without warnings.
    warm_start : bool
        Whether the estimation started from the given ``starting_values`` (False for a cold
        fit, including one whose starting values were rejected as infeasible).
    nit : int
        Optimiser iterations (SLSQP major iterations).
    nfev : int
        Log-likelihood evaluations by the optimiser (arch's starting-value grid search, which
        only cold fits run, is not counted).
    """

    spec: GarchSpec
    params: dict[str, float] = field(hash=False)
    loglik: float
    nobs: int
    converged: bool
    warm_start: bool = False
    nit: int = 0
    nfev: int = 0

    @property
    def starting_values(self) -> np.ndarray:
        """Parameters as an array in arch's order, to warm-start :func:`fit_garch`."""
        return np.asarray(list(self.params.values()), dtype=float)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (spec fields, params and diagnostics)."""
        return {
            "spec": {
                "vol": self.spec.vol,
                "dist": self.spec.dist,
                "p": self.spec.p,
                "o": self.spec.o,
                "q": self.spec.q,
                "mean": self.spec.mean,
                "horizon": self.spec.horizon,
            },
            "params": dict(self.params),
            "loglik": self.loglik,
            "nobs": self.nobs,
            "converged": self.converged,
            "warm_start": self.warm_start,
            "nit": self.nit,
            "nfev": self.nfev,
        }


def _clean(returns: pd.Series) -> pd.Series:
    """Returns without leading NaNs, as float; interior non-finite values are an error."""
    if not isinstance(returns, pd.Series):
        raise TypeError(f"returns must be a pandas Series, got {type(returns).__name__}")
    returns = returns.astype(float)
    finite = np.isfinite(returns.to_numpy())
    first = int(np.argmax(finite)) if finite.any() else len(returns)
    body = returns.iloc[first:]
    if not np.isfinite(body.to_numpy()).all():
        bad = body.index[~np.isfinite(body.to_numpy())][:5].tolist()
        raise ValueError(f"returns contain non-finite values after the first valid one: {bad}")
    return body


def _linear_constraints(model: HARX) -> tuple[np.ndarray, np.ndarray]:
    """arch's linear inequality constraints ``a @ x - b >= 0`` over all parameters."""
    v, d = model.volatility, model.distribution
    blocks = (model.constraints(), v.constraints(), d.constraints())
    widths = (model.num_params, v.num_params, d.num_params)
    rows = sum(int(blk[0].shape[0]) for blk in blocks)
    a = np.zeros((rows, sum(widths)))
    b = np.zeros(rows)
    r = c = 0
    for (ca, cb), w in zip(blocks, widths, strict=True):
        m = int(ca.shape[0])
        a[r : r + m, c : c + w] = ca
        b[r : r + m] = cb
        r, c = r + m, c + w
    return a, b


def _bounds(model: HARX, y_pct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residuals around the sample mean (arch's ``fit`` starts from them) and arch's bounds."""
    v, d = model.volatility, model.distribution
    resids0 = np.asarray(
        model.resids(np.array([y_pct.mean()]) if model.num_params else np.empty(0)), dtype=float
    )
    bounds = [*model.bounds(), *v.bounds(resids0), *d.bounds(resids0)]
    lb = np.array([lo for lo, _ in bounds], dtype=float)
    ub = np.array([hi for _, hi in bounds], dtype=float)
    return resids0, lb, ub


def _feasible(model: HARX, y_pct: np.ndarray, start: np.ndarray | None) -> np.ndarray | None:
    """``start`` made feasible for arch's bounds and constraints on ``y_pct``, or None.

    A fit that ended on a constraint (e.g. ``alpha + beta = 1`` up to rounding) can violate it
    by a few ulps, and arch's ``fit`` would then silently drop it for a cold start: rows violated
    by less than 1e-8 are pushed back along their normal; anything else gives None.
    """
    v, d = model.volatility, model.distribution
    km = int(model.num_params)
    k = km + int(v.num_params) + int(d.num_params)
    if start is None or start.shape != (k,) or not np.isfinite(start).all():
        return None
    _, lb, ub = _bounds(model, y_pct)
    a, b = _linear_constraints(model)
    x = start.copy()
    slack = a @ x - b
    for i in np.flatnonzero((slack < 0) & (slack > -1e-8)):
        x += a[i] * (1e-12 - slack[i]) / float(a[i] @ a[i])
    if (x < lb).any() or (x > ub).any() or (a @ x - b < 0).any():
        return None
    return x


def _refine(
    model: HARX, y_pct: np.ndarray, start: np.ndarray, ftol: float
) -> tuple[np.ndarray, float, int, int] | None:
    """Refine feasible starting values by SLSQP in BHHH-whitened coordinates.

    Maximises arch's log-likelihood of ``model`` with the backcast and variance bounds arch's
    ``fit`` would use (both from the residuals around the sample mean), starting at ``start``.
    With ``x = start + M z`` and ``M' (J'J) M = I`` (``J``: per-observation scores at ``start``,
    by finite differences), SLSQP's initial identity Hessian matches the problem's curvature, so
    a start near the optimum converges in a few iterations. Bounds and arch's linear constraints
    become linear constraints on ``z`` with their exact Jacobian.

    Returns ``(params, loglik, nit, nfev)``, or None when the start is infeasible, the scores are
    degenerate or SLSQP does not report success (the caller then uses arch's ``fit``).
    """
    from scipy.optimize import minimize

    v, d = model.volatility, model.distribution
    km, kv = int(model.num_params), int(v.num_params)
    k = km + kv + int(d.num_params)
    if start.shape != (k,) or not np.isfinite(start).all():
        return None
    resids0, lb, ub = _bounds(model, y_pct)
    backcast = v.backcast(resids0)
    var_bounds = v.variance_bounds(resids0)
    a, b = _linear_constraints(model)
    if (start < lb).any() or (start > ub).any() or (a @ start - b < 0).any():
        return None
    sigma2 = np.empty(resids0.shape[0])

    def loglik(x: np.ndarray, individual: bool = False) -> Any:
        resids = model.resids(x[:km])
        v.compute_variance(x[km : km + kv], resids, sigma2, backcast, var_bounds)
        return d.loglikelihood(x[km + kv :], resids, sigma2, individual)

    with np.errstate(all="ignore"):
        base = np.asarray(loglik(start, True), dtype=float)
        scores = np.empty((base.shape[0], k))
        for i in range(k):
            h = 1e-6 * max(1.0, abs(start[i]))
            h = -h if start[i] + h > ub[i] else h
            x = start.copy()
            x[i] += h
            scores[:, i] = (np.asarray(loglik(x, True), dtype=float) - base) / h
    if not np.isfinite(scores).all():
        return None
    try:
        chol = np.linalg.cholesky(scores.T @ scores)
    except np.linalg.LinAlgError:
        return None
    m = np.linalg.inv(chol).T  # x = start + m @ z whitens the BHHH curvature
    lo, hi = np.isfinite(lb), np.isfinite(ub)
    g = np.vstack([a @ m, m[lo], -m[hi]])
    c = np.concatenate([b - a @ start, lb[lo] - start[lo], start[hi] - ub[hi]])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt = minimize(
            lambda z: -float(loglik(start + m @ z)),
            np.zeros(k),
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda z: g @ z - c, "jac": lambda z: g}],
            options={"ftol": ftol, "maxiter": 100},
        )
    params = np.clip(start + m @ opt.x, lb, ub)
    value = float(loglik(params))
    if opt.status != 0 or not np.isfinite(value):
        return None
    return params, value, int(opt.nit), int(opt.nfev) + k + 1


def fit_garch(
    returns: pd.Series,
    spec: GarchSpec,
    starting_values: np.ndarray | None = None,
    *,
    refine: bool = True,
    ftol: float = 1e-6,
) -> GarchFit:
    """Estimate ``spec`` by maximum likelihood.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns. Leading NaNs are dropped; interior NaNs raise.
    spec : GarchSpec
        Model to fit.
    starting_values : numpy.ndarray, optional
        Initial parameters in arch's order (e.g. ``previous_fit.starting_values``). Infeasible
        ones (outside arch's bounds or constraints, wrong length) give a cold fit.
    refine : bool
        With ``starting_values``, refine them by SLSQP in whitened coordinates (see the module
        notes; several times faster from a nearby start), falling back to arch's ``fit`` when that
        fails. False hands them to arch's ``fit`` directly. Ignored for cold fits.
    ftol : float
        SLSQP's ``ftol`` (arch's default is scipy's 1e-6) on the negative log-likelihood.

    Returns
    -------
    GarchFit
        Parameters on the percent scale and fit diagnostics. Convergence problems are recorded in
        ``converged`` instead of being emitted as warnings.
    """
    y = _clean(returns) * _SCALE
    if len(y) < 10:
        raise ValueError(f"need at least 10 returns to fit a GARCH model, got {len(y)}")
    model = spec.build(y)
    names = [
        *model.parameter_names(),
        *model.volatility.parameter_names(),
        *model.distribution.parameter_names(),
    ]
    start = _feasible(
        model, y.to_numpy(), None if starting_values is None else np.asarray(starting_values, float)
    )
    if start is not None and refine:
        refined = _refine(model, y.to_numpy(), start, ftol)
        if refined is not None:
            x, value, nit, nfev = refined
            return GarchFit(
                spec=spec,
                params={n: float(p) for n, p in zip(names, x, strict=True)},
                loglik=value,
                nobs=len(y),
                converged=True,
                warm_start=True,
                nit=nit,
                nfev=nfev,
            )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit(
            disp="off", show_warning=True, starting_values=start, options={"ftol": ftol}
        )
    rejected = any(type(w.message).__name__ == "StartingValueWarning" for w in caught)
    warned = any(
        type(w.message).__name__ == "ConvergenceWarning" or issubclass(w.category, RuntimeWarning)
        for w in caught
    )
    params = {str(k): float(v) for k, v in res.params.items()}
    opt = res.optimization_result
    return GarchFit(
        spec=spec,
        params=params,
        loglik=float(res.loglikelihood),
        nobs=int(res.nobs),
        converged=bool(res.convergence_flag == 0 and not warned),
        warm_start=start is not None and not rejected,
        nit=int(getattr(opt, "nit", 0)),
        nfev=int(getattr(opt, "nfev", 0)),
    )


def _filter(returns_pct: pd.Series, fit: GarchFit, start: int) -> np.ndarray:
    """Features of rows ``start:`` of ``returns_pct`` under the fixed parameters of ``fit``.

    This drives arch's volatility process directly instead of going through ``model.fix``: the
    latter starts the recursion from a backcast of residuals around the *full-sample* mean and
    clips variances with bounds built from full-sample moments, both (slightly) forward-looking.
    Here the residuals use the fitted mean, the backcast uses the first 75 of them (arch's rule),
    and the variance bounds are constant, so row ``t >= 75`` depends on returns up to ``t`` only.
    """
    spec = fit.spec
    model = spec.build(returns_pct, seed=_EGARCH_SEED)
    params = fit.starting_values
    n_mean, n_vol = model.num_params, model.volatility.num_params
    if len(params) != n_mean + n_vol + model.distribution.num_params:
        raise ValueError(
            f"fit has {len(params)} parameters, the spec {spec} needs a different count"
        )
    mean_p, vol_p, dist_p = (
        params[:n_mean],
        params[n_mean : n_mean + n_vol],
        params[n_mean + n_vol :],
    )
    resids = np.asarray(model.resids(mean_p), dtype=float)
    nobs = resids.shape[0]
    backcast = model.volatility.backcast(resids)
    var_bounds = np.tile(np.array([_VAR_BOUNDS]), (nobs, 1))
    sigma2 = np.zeros(nobs)
    model.volatility.compute_variance(vol_p, resids, sigma2, backcast, var_bounds)
    simulate = spec.vol == "EGARCH" and spec.horizon > 1  # no analytic multi-step EGARCH
    fc = model.volatility.forecast(
        vol_p,
        resids,
        backcast,
        var_bounds,
        start=start,
        horizon=spec.horizon,
        method="simulation" if simulate else "analytic",
        simulations=_EGARCH_SIMULATIONS,
        rng=model.distribution.simulate(dist_p),
        random_state=np.random.RandomState(_EGARCH_SEED),
    )
    # Row i of the forecasts is origin start + i: E[sigma^2_{t+h} | F_t], h = 1..H.
    var_path = np.asarray(fc.forecasts, dtype=float)[-(nobs - start) :]
    sigma = np.sqrt(sigma2[start:])
    annual = np.sqrt(_PERIODS_PER_YEAR)
    return np.column_stack(
        [
            sigma * annual / _SCALE,
            np.sqrt(_PERIODS_PER_YEAR * var_path.mean(axis=1)) / _SCALE,
            resids[start:] / sigma,
        ]
    )


def filter_garch(returns: pd.Series, fit: GarchFit) -> pd.DataFrame:
    """Run fixed parameters over ``returns`` and derive the GARCH features.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns. Leading NaNs are allowed (their rows are NaN in the output).
    fit : GarchFit
        Parameters to apply; nothing is re-estimated.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``returns`` with columns

        - ``garch_vol``: annualised conditional vol of the session's return,
          ``sigma_t * sqrt(252) / 100`` (``sigma_t`` is known at the close of ``t - 1``),
        - ``garch_forecast``: annualised vol forecast over sessions ``t+1 .. t+H`` made at the close
          of ``t``, ``sqrt(252 * mean_h E[sigma^2_{t+h} | F_t]) / 100``,
        - ``garch_std_resid``: ``resid_t / sigma_t``.

        Row ``t`` uses returns up to and including ``t`` only (see the module notes on the
        backcast for the first 75 rows).
    """
    body = _clean(returns)
    out = pd.DataFrame(index=returns.index, columns=list(GARCH_FEATURE_COLUMNS), dtype=float)
    if body.empty:
        return out
    out.iloc[len(returns) - len(body) :, :] = _filter(body * _SCALE, fit, start=0)
    return out


def rolling_garch_features(
    returns: pd.Series, spec: GarchSpec, refit_every: int = 63, min_obs: int = 250
) -> pd.DataFrame:
    """Expanding-window GARCH features with periodic refits and no look-ahead.

    Parameters are estimated at positions ``k = min_obs, min_obs + refit_every, ...`` on
    ``returns[:k]`` (strictly before ``k``), each refit warm-started from the previous one, and
    applied (fixed) to the rows of the block ``[k, k + refit_every)``. Positions count from the
    first non-NaN return.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns. Leading NaNs are allowed; interior NaNs raise.
    spec : GarchSpec
        Model to refit.
    refit_every : int
        Sessions between refits.
    min_obs : int
        Returns needed before the first fit (at least 75, arch's backcast window). Earlier rows
        are NaN.

    Returns
    -------
    pandas.DataFrame
        Same index and columns as :func:`filter_garch`.
    """
    if refit_every < 1:
        raise ValueError(f"refit_every must be >= 1, got {refit_every}")
    if min_obs < _BACKCAST_OBS:
        raise ValueError(f"min_obs must be >= {_BACKCAST_OBS} (arch's backcast), got {min_obs}")
    body = _clean(returns)
    y = body * _SCALE
    n = len(y)
    values = np.full((n, len(GARCH_FEATURE_COLUMNS)), np.nan)
    previous: GarchFit | None = None
    for k in range(min_obs, n, refit_every):
        end = min(k + refit_every, n)
        fit = fit_garch(body.iloc[:k], spec, None if previous is None else previous.starting_values)
        if previous is not None and not fit.converged:
            cold = fit_garch(body.iloc[:k], spec)
            fit = cold if cold.converged or cold.loglik > fit.loglik else fit
        values[k:end] = _filter(y.iloc[:end], fit, start=k)
        previous = fit
    out = pd.DataFrame(index=returns.index, columns=list(GARCH_FEATURE_COLUMNS), dtype=float)
    out.iloc[len(returns) - len(body) :, :] = values
    return out
