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

EGARCH is estimated under two linear constraints beyond arch's (:class:`_StableEGARCH`): the news
impact of every lag is non-decreasing in ``|z|`` (``alpha[i] >= |gamma[i]|``, i.e. ``alpha[i] >= 0``
without an asymmetric term) and ``sum(beta) <= 0.9999``. Without the first, the filter is not
invertible: with ``alpha < 0`` a large shock *lowers* the next variance, which inflates the next
standardised residual, which lowers the variance further, and ``sigma_t`` collapses onto the
variance floor and stays there (``d ln sigma2_{t+1} / d ln sigma2_t = beta - alpha |z_t| / 2``
exceeds 1 once ``|z_t| > 2 (1 - beta) / |alpha|``).
Such a fit maximises the likelihood of its own sample and still breaks on the next block: on WMT
(replay data, 2000) it made ``garch_vol`` 1.6e-7, the standardised residuals ~1e6 and, through
arch's simulation seeded with those residuals, ``garch_forecast`` 0 or inf; warm starts from it
then led every later refit astray (``alpha = 180``, ``nu = 2.06``), so the whole out-of-sample
history of the symbol was inf.

Every estimate is also checked (:func:`_degeneracy`): finite parameters and log-likelihood, arch's
bounds and the constraints above, and a log-likelihood no worse than that of the nested
constant-variance normal model (which every spec contains up to the shape parameters) by more than
``1 + 0.01 n``: an optimiser that ends below it has failed. A rejected warm start is refitted cold,
a rejected cold fit from the nested model's parameters, and if that fails too the nested model's
parameters themselves are returned (``converged=False``). :func:`rolling_garch_features` then
prefers the previous block's parameters when they fit the new sample better.

EGARCH has no analytic multi-step variance forecast; for ``horizon > 1`` it is simulated (1,000
paths) from a fixed seed, so the features stay deterministic. The simulation is arch's recursion
(same draws, same arithmetic: identical results) except that each simulated log-variance is
clipped to the filter's variance bounds, as the filter clips ``sigma2_t``; arch's own lets one
path overflow to inf. With Student-t errors ``E[exp(alpha |z|)]`` is infinite, so the simulated
mean is heavy-tailed in any case: as a last guard ``garch_forecast`` is capped at
:data:`MAX_ANNUAL_VOL` (a warning names the series and the first capped session).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
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
    "MAX_ANNUAL_VOL",
    "TERM_SESSIONS",
    "GarchFamily",
    "GarchFit",
    "GarchSpec",
    "filter_garch",
    "fit_garch",
    "rolling_garch_features",
]

#: Output columns of :func:`filter_garch` and :func:`rolling_garch_features`.
GARCH_FEATURE_COLUMNS: tuple[str, ...] = (
    "garch_vol", "garch_forecast", "garch_std_resid", "garch_vol_30d",
)  # fmt: skip

#: Sessions in the life of a 30-calendar-day option: the horizon of ``garch_vol_30d`` (the
#: GARCH-implied volatility of the light stage's 30-day straddle).
TERM_SESSIONS = 21

_SCALE = 100.0  # decimal -> percent returns
_PERIODS_PER_YEAR = 252
_BACKCAST_OBS = 75  # arch's backcast window (``VolatilityProcess.backcast``)
_VAR_BOUNDS = (1e-12, 1e12)  # constant (hence causal) clip of percent^2 variances
_EGARCH_SIMULATIONS = 1000  # EGARCH has no analytic multi-step forecast
_EGARCH_SEED = 20180101
_EGARCH_MAX_BETA = 0.9999  # sum(beta) bound of the EGARCH fits (arch's is 1)
_CONSTRAINT_TOL = 1e-6  # slack allowed on bounds and linear constraints of a returned fit

#: Upper bound of the ``garch_forecast`` feature (annualised decimal volatility: 500%). Higher
#: values are no credible forecast for a listed stock or index; they are capped with a warning.
MAX_ANNUAL_VOL = 5.0

log = logging.getLogger("afterbell.garch")

_DISTRIBUTIONS: dict[str, type[Distribution]] = {
    "normal": Normal,
    "t": StudentsT,
    "skewt": SkewStudent,
}


class _StableEGARCH(EGARCH):
    """arch's EGARCH with constraints that keep its filter invertible and stationary.

    Adds, for every lag ``i < p``, ``alpha[i] - gamma[i] >= 0`` and ``alpha[i] + gamma[i] >= 0``
    (``alpha[i] >= 0`` where there is no ``gamma[i]``): the news impact ``alpha |z| + gamma z``
    never decreases in ``|z|``. arch's ``sum(beta) <= 1`` becomes ``sum(beta) <= 0.9999``.
    Asymmetric lags beyond ``p`` are left unconstrained.
    """

    def constraints(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = super().constraints()
        p, o, q = self.p, self.o, self.q
        b = b * _EGARCH_MAX_BETA  # the row -sum(beta) >= -1
        rows = []
        for i in range(p):
            for sign in (1.0, -1.0) if i < o else (0.0,):
                row = np.zeros(1 + p + o + q)
                row[1 + i] = 1.0
                if i < o:
                    row[1 + p + i] = sign
                rows.append(row)
        return np.vstack([a, *rows]), np.concatenate([b, np.zeros(len(rows))])

    def starting_values(self, resids: Any) -> np.ndarray:
        sv = np.asarray(super().starting_values(resids), dtype=float).copy()
        p, o, q = self.p, self.o, self.q
        for i in range(min(p, o)):  # arch's grid includes alpha < |gamma|: project onto alpha
            sv[1 + i] = max(sv[1 + i], abs(sv[1 + p + i]))
        betas = slice(1 + p + o, 1 + p + o + q)
        total = float(sv[betas].sum())
        if total > _EGARCH_MAX_BETA:
            sv[betas] *= _EGARCH_MAX_BETA / total
        return sv


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
        EGARCH is arch's with the stability constraints of :class:`_StableEGARCH`.
        """
        p, o, q = self.p, self.asym_order, self.q
        vol = _StableEGARCH(p=p, o=o, q=q) if self.vol == "EGARCH" else GARCH(p=p, o=o, q=q)
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


def _num_params(model: HARX) -> int:
    """Parameters of ``model`` (mean, volatility and distribution)."""
    return int(model.num_params + model.volatility.num_params + model.distribution.num_params)


def _loglik_fn(model: HARX, y_pct: np.ndarray) -> Any:
    """arch's log-likelihood of ``model`` as a function of all parameters.

    Uses the backcast and variance bounds arch's ``fit`` would use (both from the residuals
    around the sample mean). The returned ``loglik(x, individual=False)`` gives the total, or the
    per-observation contributions with ``individual=True``.
    """
    v, d = model.volatility, model.distribution
    km, kv = int(model.num_params), int(v.num_params)
    resids0, _, _ = _bounds(model, y_pct)
    backcast = v.backcast(resids0)
    var_bounds = v.variance_bounds(resids0)
    sigma2 = np.empty(resids0.shape[0])

    def loglik(x: np.ndarray, individual: bool = False) -> Any:
        resids = model.resids(x[:km])
        v.compute_variance(x[km : km + kv], resids, sigma2, backcast, var_bounds)
        return d.loglikelihood(x[km + kv :], resids, sigma2, individual)

    return loglik


def _nested_params(model: HARX, y_pct: np.ndarray) -> np.ndarray:
    """Parameters of the constant-variance model nested in ``model``.

    Sample mean (constant mean), sample variance of the residuals (``log`` of it for EGARCH), no
    ARCH, asymmetric or lagged-variance terms, and arch's starting values of the distribution's
    shape parameters. Feasible for arch's bounds and every constraint of :func:`fit_garch`.
    """
    v, d = model.volatility, model.distribution
    resids0, _, _ = _bounds(model, y_pct)
    var = float(np.mean(resids0**2))
    omega = np.log(var) if isinstance(v, EGARCH) else var
    vol = np.zeros(int(v.num_params))
    vol[0] = omega
    mean = np.array([y_pct.mean()]) if model.num_params else np.empty(0)
    shape = np.asarray(d.starting_values(resids0 / np.sqrt(var)), dtype=float)
    return np.concatenate([mean, vol, shape])


def _degeneracy(model: HARX, y_pct: np.ndarray, params: np.ndarray, loglik: float) -> str | None:
    """Why ``params`` (with log-likelihood ``loglik`` on ``y_pct``) is no usable estimate, or None.

    Rejected: non-finite parameters or log-likelihood; parameters outside arch's bounds or
    violating the linear constraints (for EGARCH the stability constraints of
    :class:`_StableEGARCH`) by more than 1e-6; a log-likelihood below that of the nested
    constant-variance normal model by more than ``1 + 0.01 n`` (every spec nests that model up
    to the shape parameters, so a maximum cannot lie far below it).
    """
    if params.shape != (_num_params(model),) or not np.isfinite(params).all():
        return "non-finite or missing parameters"
    if not np.isfinite(loglik):
        return "non-finite log-likelihood"
    resids0, lb, ub = _bounds(model, y_pct)
    scale = np.maximum(1.0, np.abs(params))
    if ((lb - params) > _CONSTRAINT_TOL * scale).any() or (
        (params - ub) > _CONSTRAINT_TOL * scale
    ).any():
        return "parameters outside arch's bounds"
    a, b = _linear_constraints(model)
    if (a @ params - b < -_CONSTRAINT_TOL).any():
        if isinstance(model.volatility, EGARCH):
            return "non-invertible or non-stationary EGARCH parameters"
        return "parameters violating arch's constraints"
    n = resids0.shape[0]
    homoskedastic = -0.5 * n * (np.log(2.0 * np.pi * float(np.mean(resids0**2))) + 1.0)
    if loglik < homoskedastic - (1.0 + 0.01 * n):
        return (
            f"log-likelihood {loglik:.2f} below the constant-variance model's "
            f"{homoskedastic:.2f}"
        )
    return None


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

    k = _num_params(model)
    if start.shape != (k,) or not np.isfinite(start).all():
        return None
    _, lb, ub = _bounds(model, y_pct)
    a, b = _linear_constraints(model)
    if (start < lb).any() or (start > ub).any() or (a @ start - b < 0).any():
        return None
    loglik = _loglik_fn(model, y_pct)

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

    Notes
    -----
    Every estimate is checked (finite, within arch's bounds and constraints, EGARCH invertible
    and stationary, log-likelihood not far below the nested constant-variance model's; see the
    module notes). A rejected warm estimate is refitted cold; a rejected cold one from the nested
    model's parameters; if that is rejected too, the nested model's parameters are returned with
    ``converged=False``. Each rejection is logged as a warning on ``afterbell.garch``.
    """
    y = _clean(returns) * _SCALE
    if len(y) < 10:
        raise ValueError(f"need at least 10 returns to fit a GARCH model, got {len(y)}")
    y_pct = y.to_numpy()
    model = spec.build(y)
    names = [
        *model.parameter_names(),
        *model.volatility.parameter_names(),
        *model.distribution.parameter_names(),
    ]
    label = _label(returns)

    def accept(fit: GarchFit, how: str) -> bool:
        reason = _degeneracy(model, y_pct, fit.starting_values, fit.loglik)
        if reason is not None:
            log.warning("%s: %s %s-%s fit on %d returns rejected (%s)", label, how, spec.vol,
                        spec.dist, len(y_pct), reason)
        return reason is None

    start = _feasible(
        model, y_pct, None if starting_values is None else np.asarray(starting_values, float)
    )
    if start is not None and refine:
        refined = _refine(model, y_pct, start, ftol)
        if refined is not None:
            x, value, nit, nfev = refined
            fit = GarchFit(
                spec=spec,
                params={n: float(p) for n, p in zip(names, x, strict=True)},
                loglik=value,
                nobs=len(y),
                converged=True,
                warm_start=True,
                nit=nit,
                nfev=nfev,
            )
            if accept(fit, "refined warm"):
                return fit
    fit = _arch_fit(model, spec, start, ftol)
    if accept(fit, "warm" if fit.warm_start else "cold"):
        return fit
    if start is not None:
        fit = _arch_fit(model, spec, None, ftol)
        if accept(fit, "cold"):
            return fit
    # Last resorts: arch's fit from the nested constant-variance model, then that model itself.
    nested = _nested_params(model, y_pct)
    fit = replace(_arch_fit(model, spec, nested, ftol), warm_start=False)
    if accept(fit, "nested-start"):
        return fit
    log.warning("%s: no usable %s-%s estimate on %d returns; using the constant-variance model",
                label, spec.vol, spec.dist, len(y_pct))
    return GarchFit(
        spec=spec,
        params={n: float(p) for n, p in zip(names, nested, strict=True)},
        loglik=float(_loglik_fn(model, y_pct)(nested)),
        nobs=len(y),
        converged=False,
    )


def _label(returns: pd.Series, name: str | None = None) -> str:
    """How warnings name a series: ``name``, else the series' name, else ``"returns"``."""
    for candidate in (name, returns.name):
        if candidate is not None:
            return str(candidate)
    return "returns"


def _arch_fit(model: HARX, spec: GarchSpec, start: np.ndarray | None, ftol: float) -> GarchFit:
    """arch's ``fit`` of ``model`` from ``start`` (None: arch's grid), as a :class:`GarchFit`."""
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


def _egarch_simulated_variance(
    vol: EGARCH,
    params: np.ndarray,
    resids: np.ndarray,
    sigma2: np.ndarray,
    backcast: float,
    start: int,
    horizon: int,
    rng: Any,
) -> np.ndarray:
    """Simulated ``E[sigma^2_{t+h} | F_t]``, ``h = 1..horizon``, for origins ``t >= start``.

    arch's ``EGARCH._simulation_forecast`` (same draws in the same order, same arithmetic, so
    the same numbers wherever arch's are finite), except that every simulated log-variance is
    clipped to the logs of the filter's variance bounds: arch's lets a path overflow to inf
    (e.g. from a standardised residual of 1e6 when the filtered variance sits on its floor).
    ``sigma2`` is the filtered variance of ``resids`` (bounded), ``rng`` draws standardised
    innovations of shape ``(simulations, horizon)``.
    """
    p, o, q = vol.p, vol.o, vol.q
    t = resids.shape[0]
    m = max(p, o, q)
    lo, hi = np.log(_VAR_BOUNDS[0]), np.log(_VAR_BOUNDS[1])
    lnsigma2 = np.log(sigma2)
    e = resids / np.sqrt(sigma2)
    lnsigma2_mat = np.full((t, m), backcast)
    e_mat = np.zeros((t, m))
    abs_e_mat = np.full((t, m), np.sqrt(2 / np.pi))
    for i in range(m):
        lnsigma2_mat[m - i - 1 :, i] = lnsigma2[: (t - (m - 1) + i)]
        e_mat[m - i - 1 :, i] = e[: (t - (m - 1) + i)]
        abs_e_mat[m - i - 1 :, i] = np.absolute(e[: (t - (m - 1) + i)])
    sims = _EGARCH_SIMULATIONS
    sqrt2pi = np.sqrt(2 / np.pi)
    out = np.empty((t - start, horizon))
    ln = np.empty((sims, m + horizon))
    ee = np.empty((sims, m + horizon))
    abs_e = np.empty((sims, m + horizon))
    for i in range(start, t):
        shocks = rng((sims, horizon))
        ln[:, :m] = lnsigma2_mat[i, :]
        ee[:, :m] = e_mat[i, :]
        ee[:, m:] = shocks
        abs_e[:, :m] = abs_e_mat[i, :]
        abs_e[:, m:] = np.absolute(shocks)
        for j in range(horizon):
            col = m + j
            loc = 0
            ln[:, col] = params[loc]
            loc += 1
            for k in range(p):
                ln[:, col] += params[loc] * (abs_e[:, col - 1 - k] - sqrt2pi)
                loc += 1
            for k in range(o):
                ln[:, col] += params[loc] * ee[:, col - 1 - k]
                loc += 1
            for k in range(q):
                ln[:, col] += params[loc] * ln[:, col - 1 - k]
                loc += 1
            ln[:, col] = np.clip(ln[:, col], lo, hi)
        out[i - start] = np.exp(ln[:, m:]).mean(axis=0)
    return out


def _filter(
    returns_pct: pd.Series,
    fit: GarchFit,
    start: int,
    name: str | None = None,
    *,
    forecast_start: int | None = None,
) -> np.ndarray:
    """Features of rows ``start:`` of ``returns_pct`` under the fixed parameters of ``fit``.

    This drives arch's volatility process directly instead of going through ``model.fix``: the
    latter starts the recursion from a backcast of residuals around the *full-sample* mean and
    clips variances with bounds built from full-sample moments, both (slightly) forward-looking.
    Here the residuals use the fitted mean, the backcast uses the first 75 of them (arch's rule),
    and the variance bounds are constant, so row ``t >= 75`` depends on returns up to ``t`` only.
    EGARCH's multi-step forecast is :func:`_egarch_simulated_variance`; ``garch_forecast`` is
    capped at :data:`MAX_ANNUAL_VOL` (a warning names ``name`` and the first capped session).
    The forecasts (``garch_forecast``, ``garch_vol_30d``) are made for origins
    ``forecast_start:`` only (default ``start``; NaN before): the variance recursion is cheap, the
    forecasts are not (EGARCH's are simulated per origin).
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
    vol = model.volatility
    backcast = vol.backcast(resids)
    var_bounds = np.tile(np.array([_VAR_BOUNDS]), (nobs, 1))
    sigma2 = np.zeros(nobs)
    vol.compute_variance(vol_p, resids, sigma2, backcast, var_bounds)
    first = start if forecast_start is None else min(max(start, forecast_start), nobs - 1)
    term = np.full(nobs - first, np.nan)
    if isinstance(vol, EGARCH) and spec.horizon > 1:  # no analytic multi-step EGARCH
        var_path = _egarch_simulated_variance(
            vol, vol_p, resids, sigma2, float(backcast), first, spec.horizon,
            model.distribution.simulate(dist_p),
        )
    else:
        analytic_term = not isinstance(vol, EGARCH)  # EGARCH: analytic for one step only
        fc = vol.forecast(
            vol_p, resids, backcast, var_bounds, start=first,
            horizon=max(spec.horizon, TERM_SESSIONS) if analytic_term else spec.horizon,
            method="analytic",
        )
        # Row i of the forecasts is origin first + i: E[sigma^2_{t+h} | F_t], h = 1..H.
        full_path = np.asarray(fc.forecasts, dtype=float)[-(nobs - first) :]
        var_path = full_path[:, : spec.horizon]
        if analytic_term:
            with np.errstate(over="ignore", invalid="ignore"):
                term = np.sqrt(_PERIODS_PER_YEAR * full_path[:, :TERM_SESSIONS].mean(axis=1))
            term = np.where(term / _SCALE <= MAX_ANNUAL_VOL, term / _SCALE, MAX_ANNUAL_VOL)
    sigma = np.sqrt(sigma2[start:])
    annual = np.sqrt(_PERIODS_PER_YEAR)
    with np.errstate(over="ignore", invalid="ignore"):
        forecast = np.sqrt(_PERIODS_PER_YEAR * var_path.mean(axis=1)) / _SCALE
    capped = ~(forecast <= MAX_ANNUAL_VOL)  # NaN included
    if capped.any():
        first_capped = returns_pct.index[first + int(np.flatnonzero(capped)[0])]
        log.warning(
            "%s: %d garch_forecast value(s) of %s-%s above %.1f or non-finite, capped (first "
            "session %s, params %s)", _label(returns_pct, name), int(capped.sum()), spec.vol,
            spec.dist, MAX_ANNUAL_VOL, first_capped, fit.params,
        )
        forecast = np.where(capped, MAX_ANNUAL_VOL, forecast)
    if first > start:  # no forecast made before forecast_start
        gap = np.full(first - start, np.nan)
        forecast, term = np.concatenate([gap, forecast]), np.concatenate([gap, term])
    return np.column_stack([sigma * annual / _SCALE, forecast, resids[start:] / sigma, term])


def filter_garch(
    returns: pd.Series, fit: GarchFit, *, name: str | None = None, last_only: bool = False
) -> pd.DataFrame:
    """Run fixed parameters over ``returns`` and derive the GARCH features.

    Parameters
    ----------
    returns : pandas.Series
        Decimal daily log returns. Leading NaNs are allowed (their rows are NaN in the output).
    fit : GarchFit
        Parameters to apply; nothing is re-estimated.
    name : str, optional
        How warnings name the series (e.g. its symbol); default ``returns.name``.
    last_only : bool
        Forecast from the last session only (``garch_forecast`` and ``garch_vol_30d`` NaN on
        the earlier rows; ``garch_vol`` and ``garch_std_resid`` everywhere): what a nightly
        refit needs, at a cost that no longer grows with the history. The last row's
        ``garch_forecast`` is the same as with ``last_only=False`` for the analytic (GARCH)
        forecasts; EGARCH's multi-step forecast is simulated and draws other (equally
        seeded) paths.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``returns`` with columns

        - ``garch_vol``: annualised conditional vol of the session's return,
          ``sigma_t * sqrt(252) / 100`` (``sigma_t`` is known at the close of ``t - 1``),
        - ``garch_forecast``: annualised vol forecast over sessions ``t+1 .. t+H`` made at the close
          of ``t``, ``sqrt(252 * mean_h E[sigma^2_{t+h} | F_t]) / 100``, at most
          :data:`MAX_ANNUAL_VOL` (higher or non-finite values are capped with a warning),
        - ``garch_std_resid``: ``resid_t / sigma_t``,
        - ``garch_vol_30d``: the same forecast over the next :data:`TERM_SESSIONS` sessions
          (the life of a 30-day option), ``sqrt(252 * mean_h E[sigma^2_{t+h} | F_t]) / 100``
          for ``h = 1..21``, at most :data:`MAX_ANNUAL_VOL`; NaN for EGARCH, whose multi-step
          forecast is simulated, and only to the spec's horizon.

        Row ``t`` uses returns up to and including ``t`` only (see the module notes on the
        backcast for the first 75 rows).
    """
    body = _clean(returns)
    out = pd.DataFrame(index=returns.index, columns=list(GARCH_FEATURE_COLUMNS), dtype=float)
    if body.empty:
        return out
    out.iloc[len(returns) - len(body) :, :] = _filter(
        body * _SCALE, fit, start=0, name=_label(returns, name),
        forecast_start=len(body) - 1 if last_only else None,
    )
    return out


def rolling_garch_features(
    returns: pd.Series,
    spec: GarchSpec,
    refit_every: int = 63,
    min_obs: int = 250,
    *,
    name: str | None = None,
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
    name : str, optional
        How warnings name the series (e.g. its symbol); default ``returns.name``.

    Returns
    -------
    pandas.DataFrame
        Same index and columns as :func:`filter_garch`.

    Notes
    -----
    A refit that did not converge is retried cold; if neither converged and the previous block's
    parameters have the higher log-likelihood on the new sample (and pass the checks of
    :func:`fit_garch`), the block keeps the previous parameters (logged as a warning).
    """
    if refit_every < 1:
        raise ValueError(f"refit_every must be >= 1, got {refit_every}")
    if min_obs < _BACKCAST_OBS:
        raise ValueError(f"min_obs must be >= {_BACKCAST_OBS} (arch's backcast), got {min_obs}")
    body = _clean(returns)
    label = _label(returns, name)
    body = body.rename(label)  # names the series in fit_garch's warnings
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
            if not fit.converged:
                fit = _keep_previous(y.iloc[:k], fit, previous, label)
        values[k:end] = _filter(y.iloc[:end], fit, start=k, name=label)
        previous = fit
    out = pd.DataFrame(index=returns.index, columns=list(GARCH_FEATURE_COLUMNS), dtype=float)
    out.iloc[len(returns) - len(body) :, :] = values
    return out


def _keep_previous(y: pd.Series, fit: GarchFit, previous: GarchFit, label: str) -> GarchFit:
    """``previous``'s parameters re-evaluated on ``y`` (percent) if they beat ``fit``, else ``fit``.

    Used when neither a warm nor a cold refit converged: the previous block's parameters are kept
    when they pass :func:`_degeneracy` on the new sample and have the higher log-likelihood.
    """
    model = fit.spec.build(y)
    y_pct = y.to_numpy()
    x = previous.starting_values
    with np.errstate(all="ignore"):
        loglik = float(_loglik_fn(model, y_pct)(x)) if x.shape == (_num_params(model),) else np.nan
    if _degeneracy(model, y_pct, x, loglik) is not None or not loglik > fit.loglik:
        return fit
    log.warning("%s: refit on %d returns did not converge; keeping the previous block's "
                "parameters (log-likelihood %.2f against %.2f)", label, len(y_pct), loglik,
                fit.loglik)
    return replace(previous, loglik=loglik, nobs=len(y_pct), converged=False, nit=0, nfev=0)


# --------------------------------------------------------------------------- deployable family
_FAMILY_FILE = "garch_family.json"


@dataclass(frozen=True)
class GarchFamily:
    """Per-symbol fits of several GARCH-family models: the light stage's fitted result.

    Applies each symbol's stored parameters (nothing is re-estimated) to the returns it is given
    and reports the latest conditional vol and forecast of every model, with the parameter-free
    RiskMetrics EWMA beside them; saves to and loads from one JSON file.

    Parameters
    ----------
    fits : mapping of str to mapping of str to GarchFit
        ``model name -> symbol -> fit`` (e.g. ``"garch"``, ``"egarch"``).
    """

    fits: dict[str, dict[str, GarchFit]]

    @property
    def symbols(self) -> list[str]:
        """Symbols every model has a fit for."""
        sets = [set(per) for per in self.fits.values()]
        return sorted(set.intersection(*sets)) if sets else []

    def output_columns(self) -> list[str]:
        """``symbol, session`` then ``{model}_vol, {model}_forecast`` per model, then
        ``ewma_forecast``."""
        cols = ["symbol", "session"]
        for model in self.fits:
            cols += [f"{model}_vol", f"{model}_forecast"]
        return [*cols, "ewma_forecast"]

    def predict(self, returns: pd.DataFrame) -> pd.DataFrame:
        """Latest vol and forecasts of each symbol of ``returns``.

        Parameters
        ----------
        returns : pandas.DataFrame
            ``symbol``, ``session``, ``ret_1`` (decimal daily log returns), each symbol's history
            up to the session to forecast from (at least 75 rows: arch's backcast).

        Returns
        -------
        pandas.DataFrame
            One row per symbol (sorted), :meth:`output_columns`, for the symbol's last session.

        Raises
        ------
        ValueError
            If a column is missing or a symbol has no fit.
        """
        from models.baselines import ewma_vol

        missing = [c for c in ("symbol", "session", "ret_1") if c not in returns.columns]
        if missing:
            raise ValueError(f"returns lack columns: {missing}")
        unknown = sorted(set(returns["symbol"].astype(str)) - set(self.symbols))
        if unknown:
            raise ValueError(f"no fit for symbols {unknown}; fitted: {', '.join(self.symbols)}")
        rows = []
        frame = returns.assign(session=pd.to_datetime(returns["session"]))
        for symbol, g in frame.groupby("symbol", sort=True):
            r = g.sort_values("session").set_index("session")["ret_1"].astype(float)
            row: dict[str, Any] = {"symbol": str(symbol), "session": r.index[-1]}
            horizon = 1
            for model, per in self.fits.items():
                fit = per[str(symbol)]
                horizon = fit.spec.horizon
                last = filter_garch(r, fit, name=str(symbol), last_only=True).iloc[-1]
                row[f"{model}_vol"] = float(last["garch_vol"])
                row[f"{model}_forecast"] = float(last["garch_forecast"])
            row["ewma_forecast"] = float(ewma_vol(r.fillna(0.0), horizon).iloc[-1])
            rows.append(row)
        return pd.DataFrame(rows, columns=self.output_columns())

    def save(self, path: str | Path) -> Path:
        """Write ``garch_family.json`` into the folder ``path`` (created); returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {model: {sym: fit.to_dict() for sym, fit in per.items()}
                   for model, per in self.fits.items()}
        (folder / _FAMILY_FILE).write_text(json.dumps(payload, indent=1))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> GarchFamily:
        """Read a folder written by :meth:`save`."""
        payload = json.loads((Path(path) / _FAMILY_FILE).read_text())
        fits: dict[str, dict[str, GarchFit]] = {}
        for model, per in payload.items():
            fits[model] = {}
            for sym, item in per.items():
                spec = GarchSpec(**item["spec"])
                names = spec.parameter_names()
                fits[model][sym] = GarchFit(
                    spec=spec, params={n: float(item["params"][n]) for n in names},
                    loglik=float(item["loglik"]), nobs=int(item["nobs"]),
                    converged=bool(item["converged"]), warm_start=bool(item["warm_start"]),
                    nit=int(item["nit"]), nfev=int(item["nfev"]),
                )
        return cls(fits)
