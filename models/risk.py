"""Market risk: VaR and Expected Shortfall, VaR backtests, shrunk covariance, stress tests.

Conventions
-----------
- Returns are decimal daily returns of one position or portfolio, oldest first. The VaR and ES
  estimators treat them as given: feed *simple* returns ``P_t / P_{t-1} - 1`` to read the outputs
  as fractions of the position's value (the usual meaning), or log returns to get log-return
  quantiles. For backtests the two agree exactly: ``log(1 + r) < -v`` if and only if
  ``r < -(1 - exp(-v))``, so a log-return VaR ``v`` and its simple-return form ``1 - exp(-v)``
  flag the same exceptions (``pipelines.var_backtest`` models log returns and reports the simple
  form). The stress functions take simple returns (``kind="log"`` converts).
- ``level`` is the confidence level (0.99 for a 99% VaR); ``a = 1 - level`` is the tail
  probability.
- VaR and ES (CVaR) are **positive loss fractions**: ``var = 0.03`` means a one-session loss
  exceeded with probability ``a`` is 3%, i.e. ``var = -Q_a(r)`` where ``Q_a`` is the
  ``a``-quantile of the return. ``cvar = -E[r | r <= Q_a(r)]`` (for the empirical distribution, the
  Acerbi-Tasche estimator below). A VaR can be negative when the ``a``-quantile is a gain.
- An **exception** (breach) on session ``t`` is ``return_t < -VaR_t``, with ``VaR_t`` forecast at
  the close of ``t - 1`` from returns up to ``t - 1`` only.

Estimators (:class:`RiskEstimate`)
----------------------------------
- :func:`historical_var`: ``VaR = -r_(k)``, the ``k``-th smallest return with ``k = ceil(n a)``
  (the lower empirical quantile ``inf{x : F_n(x) >= a}``, numpy's ``"inverted_cdf"``: no
  interpolation). ES is the Acerbi-Tasche (2002) estimator
  ``(sum of the floor(n a) worst losses + (n a - floor(n a)) * next worst loss) / (n a)``: the mean
  of the ``n a`` worst losses when ``n a`` is an integer (losses 1..100, ``a = 5%``: VaR 96,
  ES 98).
- :func:`parametric_var`: normal (``mu``, ``sigma``: sample mean and standard deviation,
  ``ddof=1``) with ``VaR = -(mu + z_a sigma)`` and ``ES = -mu + sigma phi(z_a) / a``; or Student-t
  fitted by maximum likelihood (:func:`scipy.stats.t.fit`: ``nu``, ``loc``, ``scale``) with
  ``VaR = -(loc + scale t_a)`` and the closed form
  ``ES = -loc + scale (nu + t_a^2) / (nu - 1) f_nu(t_a) / a`` (infinite for ``nu <= 1``).
- :func:`filtered_historical_var`: filtered historical simulation (Barone-Adesi, Giannopoulos and
  Vosper, 1999; Hull and White, 1998): ``VaR = -(mu + sigma_next Q_a(z))`` and
  ``ES = -(mu + sigma_next M_a(z))``, ``Q_a`` the lower empirical quantile and ``M_a`` the
  Acerbi-Tasche mean of the worst ``a`` tail of the standardised residuals ``z`` (the estimators
  of :func:`historical_var`).
- :func:`garch_fhs_var`: a GARCH(1,1)-t (:mod:`models.garch`) fitted on the window gives
  ``sigma_next`` and ``z`` for the filtered historical simulation, and the parametric GARCH-t
  estimate with arch's standardised (unit-variance) Student-t.

Backtests (:class:`TestResult`)
-------------------------------
Kupiec's (1995) proportion-of-failures LR (chi2(1)), Christoffersen's (1998) independence LR
(first-order Markov alternative, chi2(1)) and their sum, the conditional coverage LR (chi2(2)), as
MathWorks' ``varbacktest`` computes them (``pof``, ``cci``, ``cc``): ``0 log 0 = 0`` for empty
cells, the unconditional probability of the independence test estimated on the ``n - 1``
transitions. :func:`basel_zone` is the Basel Committee's (1996) traffic light.

Stress tests (:class:`StressResult`)
------------------------------------
A historical replay holds the positions bought at the close before ``start`` (buy and hold; the
weight not invested, ``1 - sum(weights)``, is cash at zero rate) through ``end``; a hypothetical
shock moves every position once. Symbols without data are reported, not guessed (see
:func:`historical_stress`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from models.garch import GarchFit

__all__ = [
    "BACKTEST_COLUMNS",
    "BASEL_RED",
    "BASEL_YELLOW",
    "STRESS_SCENARIOS",
    "GarchRiskEstimate",
    "RiskEstimate",
    "StressResult",
    "StressScenario",
    "TestResult",
    "basel_probability",
    "basel_zone",
    "christoffersen_cc",
    "christoffersen_independence",
    "filtered_historical_var",
    "fit_student_t",
    "garch_fhs_var",
    "historical_stress",
    "historical_var",
    "hypothetical_shock",
    "kupiec_pof",
    "ledoit_wolf",
    "normal_var_es",
    "parametric_var",
    "run_scenario",
    "shrunk_covariance",
    "student_t_var_es",
    "var_backtest",
    "var_table",
]

#: Cumulative binomial probability at which the Basel yellow zone starts (Basel Committee, 1996).
BASEL_YELLOW = 0.95
#: Cumulative binomial probability at which the Basel red zone starts.
BASEL_RED = 0.9999

Zone = Literal["green", "yellow", "red"]

_EPS = 1e-9  # slack on n * a before rounding to an order statistic (5 * 0.01 * 100 etc.)


# ------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class RiskEstimate:
    """A one-session VaR and ES estimate.

    Parameters
    ----------
    var : float
        Value-at-Risk as a positive loss fraction (``0.03``: a 3% loss).
    cvar : float
        Expected Shortfall (CVaR) as a positive loss fraction, at least ``var``.
    level : float
        Confidence level, e.g. 0.99.
    method : str
        Estimator: ``"historical"``, ``"normal"``, ``"t"``, ``"fhs"``, ``"garch_fhs"``,
        ``"garch_t"``.
    """

    var: float
    cvar: float
    level: float
    method: str


@dataclass(frozen=True)
class GarchRiskEstimate:
    """The two GARCH-based estimates of :func:`garch_fhs_var` and what they were built from.

    Parameters
    ----------
    fhs : RiskEstimate
        Filtered historical simulation (``method="garch_fhs"``).
    parametric : RiskEstimate
        Parametric GARCH with the fitted innovation distribution (``method="garch_t"`` for
        Student-t, ``"garch_normal"`` for normal innovations).
    sigma_next : float
        Conditional standard deviation of the next session's return (decimal).
    mu : float
        Fitted constant mean (decimal).
    nu : float
        Fitted Student-t degrees of freedom (NaN for normal innovations).
    fit : GarchFit
        The underlying fit (percent scale, see :mod:`models.garch`).
    """

    fhs: RiskEstimate
    parametric: RiskEstimate
    sigma_next: float
    mu: float
    nu: float
    fit: GarchFit = field(repr=False)


@dataclass(frozen=True)
class TestResult:
    """A likelihood-ratio backtest of a VaR exception sequence.

    Parameters
    ----------
    test : str
        ``"kupiec_pof"``, ``"christoffersen_ind"`` or ``"christoffersen_cc"``.
    statistic : float
        Likelihood-ratio statistic.
    pvalue : float
        Asymptotic p-value, ``chi2(df).sf(statistic)``.
    df : int
        Degrees of freedom of the chi-squared reference.
    n : int
        Sessions in the sequence.
    exceptions : int
        Exceptions in the sequence.
    counts : tuple of int, optional
        Transition counts ``(n00, n01, n10, n11)`` (``nij``: sessions with state ``j`` after a
        session with state ``i``; 1 = exception) for the Christoffersen tests, else None.
    """

    __test__ = False  # not a pytest test class despite the name

    test: str
    statistic: float
    pvalue: float
    df: int
    n: int
    exceptions: int
    counts: tuple[int, int, int, int] | None = None


# ------------------------------------------------------------------------------ helpers
def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.99, got {level}")
    return level


def _as_returns(returns: Any, name: str = "returns", min_obs: int = 2) -> np.ndarray:
    """A 1-d float array of finite returns (NaNs raise: drop them explicitly first)."""
    x = np.asarray(returns, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain {int((~np.isfinite(x)).sum())} non-finite value(s)")
    if x.shape[0] < min_obs:
        raise ValueError(f"{name} need at least {min_obs} observations, got {x.shape[0]}")
    return x


def _empirical_var_es(x: np.ndarray, a: float) -> tuple[float, float]:
    """Lower empirical ``a``-quantile as a loss, and the Acerbi-Tasche ES (see module notes)."""
    n = x.shape[0]
    na = n * a
    if abs(na - round(na)) < _EPS:  # 100 * (1 - 0.95) is 5.000000000000004
        na = float(round(na))
    k = max(math.ceil(na), 1)  # order statistic of the quantile (1-based)
    srt = np.sort(x)
    var = -float(srt[k - 1])
    whole = min(math.floor(na), n)
    frac = max(na - whole, 0.0)
    tail = float(srt[:whole].sum()) + (frac * float(srt[whole]) if whole < n else 0.0)
    return var, max(-tail / na, var)


def normal_var_es(level: float, mu: float = 0.0, sigma: float = 1.0) -> tuple[float, float]:
    """VaR and ES of a normal return ``N(mu, sigma^2)`` as positive losses.

    Parameters
    ----------
    level : float
        Confidence level.
    mu, sigma : float
        Mean and standard deviation of the return.

    Returns
    -------
    tuple of float
        ``(-(mu + z_a sigma), -mu + sigma phi(z_a) / a)`` with ``z_a = Phi^-1(a)``.
    """
    from scipy import stats

    a = 1.0 - _check_level(level)
    if not sigma >= 0.0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    z = float(stats.norm.ppf(a))
    return -(mu + z * sigma), -mu + sigma * float(stats.norm.pdf(z)) / a


def student_t_var_es(
    level: float,
    nu: float,
    loc: float = 0.0,
    scale: float = 1.0,
    *,
    standardised: bool = False,
) -> tuple[float, float]:
    """VaR and ES of a Student-t return ``loc + scale T`` as positive losses (closed form).

    Parameters
    ----------
    level : float
        Confidence level.
    nu : float
        Degrees of freedom (> 0; > 2 when ``standardised``).
    loc, scale : float
        Location and scale of the return.
    standardised : bool
        ``T`` is the unit-variance t, ``t_nu * sqrt((nu - 2) / nu)`` (arch's ``StudentsT``), so
        ``scale`` is the standard deviation; otherwise ``T`` is the textbook ``t_nu``.

    Returns
    -------
    tuple of float
        ``(-(loc + scale c q), -loc + scale c (nu + q^2) / (nu - 1) f_nu(q) / a)`` with
        ``q = t_nu^-1(a)``, ``f_nu`` the t density and ``c = sqrt((nu - 2) / nu)`` if
        ``standardised`` else 1. ES is ``inf`` for ``nu <= 1``.
    """
    from scipy import stats

    a = 1.0 - _check_level(level)
    if not nu > (2.0 if standardised else 0.0):
        raise ValueError(f"nu must be > {2 if standardised else 0}, got {nu}")
    if not scale >= 0.0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    c = math.sqrt((nu - 2.0) / nu) if standardised else 1.0
    q = float(stats.t.ppf(a, nu))
    var = -(loc + scale * c * q)
    if nu <= 1.0:
        return var, math.inf
    es = -loc + scale * c * (nu + q * q) / (nu - 1.0) * float(stats.t.pdf(q, nu)) / a
    return var, es


# ---------------------------------------------------------------------------- estimators
def historical_var(returns: Any, level: float) -> RiskEstimate:
    """Historical-simulation VaR and ES: the empirical distribution of ``returns``.

    Parameters
    ----------
    returns : array-like
        Decimal returns of the window (finite).
    level : float
        Confidence level.

    Returns
    -------
    RiskEstimate
        ``var = -r_(k)``, ``k = ceil(n a)``; ``cvar``: Acerbi-Tasche ES (module notes).
    """
    a = 1.0 - _check_level(level)
    x = _as_returns(returns)
    var, es = _empirical_var_es(x, a)
    return RiskEstimate(var=var, cvar=es, level=level, method="historical")


def parametric_var(
    returns: Any,
    level: float,
    dist: Literal["normal", "t"] = "normal",
    *,
    t_params: tuple[float, float, float] | None = None,
) -> RiskEstimate:
    """Parametric VaR and ES of a normal or Student-t fitted to ``returns``.

    Parameters
    ----------
    returns : array-like
        Decimal returns of the window (finite).
    level : float
        Confidence level.
    dist : {"normal", "t"}
        ``"normal"``: sample mean and standard deviation (``ddof=1``); ``"t"``: maximum likelihood
        ``nu``, ``loc``, ``scale`` (:func:`scipy.stats.t.fit`).
    t_params : tuple of float, optional
        ``(nu, loc, scale)`` already fitted to ``returns`` (:func:`fit_student_t`), e.g. for
        another level of the same window; ``dist="t"`` only.

    Returns
    -------
    RiskEstimate
        ``method`` is ``dist``. See :func:`normal_var_es` and :func:`student_t_var_es`.
    """

    level = _check_level(level)
    x = _as_returns(returns, min_obs=3)
    if dist == "normal":
        var, es = normal_var_es(level, float(x.mean()), float(x.std(ddof=1)))
    elif dist == "t":
        nu, loc, scale = t_params if t_params is not None else fit_student_t(x)
        var, es = student_t_var_es(level, nu, loc, scale)
    else:
        raise ValueError(f"dist must be 'normal' or 't', got {dist!r}")
    return RiskEstimate(var=var, cvar=es, level=level, method=dist)


def fit_student_t(returns: Any) -> tuple[float, float, float]:
    """Maximum-likelihood ``(nu, loc, scale)`` of a Student-t on ``returns``
    (:func:`scipy.stats.t.fit`)."""
    from scipy import stats

    nu, loc, scale = stats.t.fit(_as_returns(returns, min_obs=3))
    return float(nu), float(loc), float(scale)


def filtered_historical_var(
    returns: Any,
    sigma_next: float,
    std_resid: Any,
    level: float,
    *,
    mu: float | None = None,
) -> RiskEstimate:
    """Filtered historical simulation (Barone-Adesi et al., 1999).

    The next return is ``mu + sigma_next z`` with ``z`` drawn from the empirical distribution of
    the standardised residuals of a volatility model (e.g. GARCH) on the window.

    Parameters
    ----------
    returns : array-like
        Decimal returns of the window the residuals come from (finite, same length as
        ``std_resid``); only their mean is used, as ``mu`` when ``mu`` is not given.
    sigma_next : float
        Forecast conditional standard deviation of the next session's return (decimal, > 0),
        known at the close of the window's last session.
    std_resid : array-like
        Standardised residuals ``(r_t - mu_t) / sigma_t`` of the window (finite).
    level : float
        Confidence level.
    mu : float, optional
        Conditional mean of the next return; default the mean of ``returns``. Pass the volatility
        model's fitted mean when there is one (:func:`garch_fhs_var` does).

    Returns
    -------
    RiskEstimate
        ``var = -(mu + sigma_next Q_a(z))`` and ``cvar = -(mu + sigma_next M_a(z))``, ``Q_a`` the
        lower empirical quantile and ``M_a`` the Acerbi-Tasche tail mean of ``z`` (as in
        :func:`historical_var`); ``method="fhs"``.
    """
    a = 1.0 - _check_level(level)
    z = _as_returns(std_resid, "std_resid")
    r = _as_returns(returns)
    if r.shape != z.shape:
        raise ValueError(
            f"returns and std_resid must have the same length, got {r.shape[0]} and {z.shape[0]}"
        )
    if not (math.isfinite(sigma_next) and sigma_next > 0.0):
        raise ValueError(f"sigma_next must be a positive finite number, got {sigma_next}")
    m = float(r.mean()) if mu is None else float(mu)
    qz, esz = _empirical_var_es(z, a)  # losses of z: -Q_a(z), -ES_a(z)
    return RiskEstimate(
        var=-(m - sigma_next * qz), cvar=-(m - sigma_next * esz), level=level, method="fhs"
    )


def garch_fhs_var(
    returns: pd.Series | np.ndarray,
    level: float,
    *,
    dist: Literal["t", "normal"] = "t",
    starting_values: np.ndarray | None = None,
    fit: GarchFit | None = None,
) -> GarchRiskEstimate:
    """GARCH(1,1) filtered historical simulation and parametric GARCH VaR for the next session.

    Fits a GARCH(1,1) with constant mean and Student-t (default) innovations on the whole window
    (:func:`models.garch.fit_garch`, percent scale inside), filters it
    (:func:`models.garch.filter_garch`: causal, the first 75 residuals seed the variance) and
    forecasts ``sigma_{T+1}`` from returns up to the window's last session ``T``.

    Parameters
    ----------
    returns : pandas.Series or numpy.ndarray
        Decimal daily returns of the window, oldest first (finite; at least 100).
    level : float
        Confidence level.
    dist : {"t", "normal"}
        Innovation distribution of the GARCH model.
    starting_values : numpy.ndarray, optional
        Warm start for the fit (e.g. the previous window's ``fit.starting_values``).
    fit : GarchFit, optional
        Parameters to filter with instead of estimating them (e.g. the ``fit`` of another level
        on the same window); its spec must be a GARCH(1,1) with constant mean and ``dist``.

    Returns
    -------
    GarchRiskEstimate
        ``fhs``: :func:`filtered_historical_var` with the fitted mean, ``sigma_{T+1}`` and the
        window's standardised residuals; ``parametric``: ``-(mu + sigma_{T+1} q_a)`` with ``q_a``
        the quantile of the unit-variance innovation (:func:`student_t_var_es` with
        ``standardised=True``, or :func:`normal_var_es`).
    """
    from models.garch import GarchSpec, filter_garch, fit_garch

    level = _check_level(level)
    values = _as_returns(returns, min_obs=100)
    series = (
        returns.astype(float)
        if isinstance(returns, pd.Series)
        else pd.Series(values, name="returns")
    )
    spec = GarchSpec(vol="GARCH", dist=dist, p=1, o=0, q=1, mean="Constant", horizon=1)
    if fit is None:
        fit = fit_garch(series, spec, starting_values)
    elif fit.spec != spec:
        raise ValueError(f"fit is of {fit.spec}, expected {spec}")
    feats = filter_garch(series, fit, last_only=True)
    sigma_next = float(feats["garch_forecast"].iloc[-1]) / math.sqrt(252.0)
    z = feats["garch_std_resid"].to_numpy(dtype=float)
    mu = fit.params["mu"] / 100.0
    fhs = filtered_historical_var(values, sigma_next, z, level, mu=mu)
    if dist == "t":
        nu = fit.params["nu"]
        var, es = student_t_var_es(level, nu, mu, sigma_next, standardised=True)
        method = "garch_t"
    else:
        nu = math.nan
        var, es = normal_var_es(level, mu, sigma_next)
        method = "garch_normal"
    return GarchRiskEstimate(
        fhs=RiskEstimate(var=fhs.var, cvar=fhs.cvar, level=level, method="garch_fhs"),
        parametric=RiskEstimate(var=var, cvar=es, level=level, method=method),
        sigma_next=sigma_next,
        mu=mu,
        nu=nu,
        fit=fit,
    )


def var_table(returns: Any, levels: tuple[float, ...] = (0.95, 0.99)) -> pd.DataFrame:
    """VaR and ES of ``returns`` by every estimator at every level.

    Parameters
    ----------
    returns : array-like
        Decimal daily returns of the window (finite; at least 100 for the GARCH rows).
    levels : tuple of float
        Confidence levels.

    Returns
    -------
    pandas.DataFrame
        Columns ``method, level, var, cvar``; rows ``historical``, ``normal``, ``t``,
        ``garch_fhs``, ``garch_t`` (in that order) for each level. The GARCH(1,1)-t model is
        fitted once, and so is the Student-t.
    """
    if not levels:
        raise ValueError("levels must not be empty")
    rows: list[RiskEstimate] = []
    first = garch_fhs_var(returns, levels[0])
    by_level = {lv: garch_fhs_var(returns, lv, fit=first.fit) for lv in levels}
    t_params = fit_student_t(returns)
    for lv in levels:
        rows += [
            historical_var(returns, lv),
            parametric_var(returns, lv, "normal"),
            parametric_var(returns, lv, "t", t_params=t_params),
            by_level[lv].fhs,
            by_level[lv].parametric,
        ]
    return pd.DataFrame(
        [{"method": r.method, "level": r.level, "var": r.var, "cvar": r.cvar} for r in rows]
    )


# ----------------------------------------------------------------------------- backtests
def _exceptions(exceptions: Any) -> np.ndarray:
    x = np.asarray(exceptions)
    if x.ndim != 1:
        raise ValueError(f"exceptions must be one-dimensional, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("exceptions is empty")
    if x.dtype != bool:
        if not np.isin(x, (0, 1)).all():
            raise ValueError("exceptions must be booleans or 0/1")
        x = x.astype(bool)
    return x


def _loglik(n0: float, n1: float, p: float) -> float:
    """``n0 log(1 - p) + n1 log(p)`` with ``0 log 0 = 0``."""
    from scipy.special import xlogy

    return float(xlogy(n0, 1.0 - p) + xlogy(n1, p))


def kupiec_pof(exceptions: Any, level: float) -> TestResult:
    """Kupiec's (1995) proportion-of-failures (unconditional coverage) test.

    Parameters
    ----------
    exceptions : array-like of bool
        ``True`` (or 1) on sessions with ``return_t < -VaR_t``.
    level : float
        Confidence level of the VaR; the exception probability under the null is ``1 - level``.

    Returns
    -------
    TestResult
        ``LR = -2 [log L(1 - level) - log L(x / n)]`` with ``L(p) = (1 - p)^(n - x) p^x``; chi2(1).
    """
    from scipy import stats

    p = 1.0 - _check_level(level)
    x = _exceptions(exceptions)
    n, k = int(x.shape[0]), int(x.sum())
    lr = max(-2.0 * (_loglik(n - k, k, p) - _loglik(n - k, k, k / n)), 0.0)
    return TestResult("kupiec_pof", lr, float(stats.chi2.sf(lr, 1)), 1, n, k)


def _transitions(x: np.ndarray) -> tuple[int, int, int, int]:
    prev, cur = x[:-1], x[1:]
    n00 = int((~prev & ~cur).sum())
    n01 = int((~prev & cur).sum())
    n10 = int((prev & ~cur).sum())
    n11 = int((prev & cur).sum())
    return n00, n01, n10, n11


def christoffersen_independence(exceptions: Any) -> TestResult:
    """Christoffersen's (1998) independence test against a first-order Markov chain.

    Parameters
    ----------
    exceptions : array-like of bool
        Exception indicator, at least two sessions.

    Returns
    -------
    TestResult
        ``LR_ind = -2 [log L(pi) - log L(pi01, pi11)]`` on the ``n - 1`` transitions, with
        ``pi = (n01 + n11) / (n - 1)``, ``pi01 = n01 / (n00 + n01)``, ``pi11 = n11 / (n10 + n11)``;
        chi2(1). Empty cells follow ``0 log 0 = 0`` (MathWorks ``cci``; Christoffersen's
        ``L = (1 - pi01)^n00 pi01^n01`` when ``n11 = 0``), and an empty row (no exception before
        the last session, or none outside it) contributes nothing, so a sequence without
        exceptions gives ``LR_ind = 0``.
    """
    from scipy import stats

    x = _exceptions(exceptions)
    if x.shape[0] < 2:
        raise ValueError("the independence test needs at least two sessions")
    n00, n01, n10, n11 = _transitions(x)
    t = n00 + n01 + n10 + n11
    pi = (n01 + n11) / t
    pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    restricted = _loglik(n00 + n10, n01 + n11, pi)
    unrestricted = _loglik(n00, n01, pi01) + _loglik(n10, n11, pi11)
    lr = max(-2.0 * (restricted - unrestricted), 0.0)
    return TestResult(
        "christoffersen_ind", lr, float(stats.chi2.sf(lr, 1)), 1, int(x.shape[0]),
        int(x.sum()), (n00, n01, n10, n11),
    )


def christoffersen_cc(exceptions: Any, level: float) -> TestResult:
    """Christoffersen's (1998) conditional coverage test, ``LR_cc = LR_pof + LR_ind`` (chi2(2)).

    ``LR_pof`` is :func:`kupiec_pof` on all ``n`` sessions and ``LR_ind``
    :func:`christoffersen_independence` on the ``n - 1`` transitions, as in MathWorks ``cc``.
    """
    from scipy import stats

    pof = kupiec_pof(exceptions, level)
    ind = christoffersen_independence(exceptions)
    lr = pof.statistic + ind.statistic
    return TestResult(
        "christoffersen_cc", lr, float(stats.chi2.sf(lr, 2)), 2, pof.n, pof.exceptions,
        ind.counts,
    )


def basel_probability(n_exceptions: int, n: int = 250, level: float = 0.99) -> float:
    """``P(X <= n_exceptions)`` for ``X ~ Binomial(n, 1 - level)``: the traffic light's scale."""
    from scipy import stats

    p = 1.0 - _check_level(level)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= n_exceptions <= n:
        raise ValueError(f"n_exceptions must be in [0, {n}], got {n_exceptions}")
    return float(stats.binom.cdf(int(n_exceptions), int(n), p))


def basel_zone(n_exceptions: int, n: int = 250, level: float = 0.99) -> Zone:
    """Basel traffic-light zone of ``n_exceptions`` exceptions in ``n`` sessions.

    The Basel Committee's (1996) supervisory framework for backtesting: with
    ``P = P(X <= n_exceptions)``, ``X ~ Binomial(n, 1 - level)`` (:func:`basel_probability`),
    the zone is green while ``P < 95%``, yellow while ``P < 99.99%``, red from there. For 250
    sessions at 99%: green 0-4, yellow 5-9, red 10 or more (the Committee's Table 2).

    Parameters
    ----------
    n_exceptions : int
        Exceptions observed.
    n : int
        Sessions observed.
    level : float
        Confidence level of the VaR.
    """
    prob = basel_probability(n_exceptions, n, level)
    if prob < BASEL_YELLOW:
        return "green"
    return "yellow" if prob < BASEL_RED else "red"


#: Columns of :func:`var_backtest`.
BACKTEST_COLUMNS: tuple[str, ...] = (
    "window", "start", "end", "n", "exceptions", "expected", "rate", "kupiec_lr", "kupiec_p",
    "ind_lr", "ind_p", "cc_lr", "cc_p", "basel_prob", "zone",
)


def _backtest_row(
    label: str, index: pd.Index, hits: np.ndarray, level: float
) -> dict[str, Any]:
    n, k = int(hits.shape[0]), int(hits.sum())
    pof = kupiec_pof(hits, level)
    ind = christoffersen_independence(hits) if n >= 2 else None
    cc = christoffersen_cc(hits, level) if n >= 2 else None
    return {
        "window": label,
        "start": index[0],
        "end": index[-1],
        "n": n,
        "exceptions": k,
        "expected": n * (1.0 - level),
        "rate": k / n,
        "kupiec_lr": pof.statistic,
        "kupiec_p": pof.pvalue,
        "ind_lr": math.nan if ind is None else ind.statistic,
        "ind_p": math.nan if ind is None else ind.pvalue,
        "cc_lr": math.nan if cc is None else cc.statistic,
        "cc_p": math.nan if cc is None else cc.pvalue,
        "basel_prob": basel_probability(k, n, level),
        "zone": basel_zone(k, n, level),
    }


def var_backtest(
    returns: pd.Series | np.ndarray,
    var: pd.Series | np.ndarray,
    level: float,
    window: int = 250,
) -> pd.DataFrame:
    """Backtest a VaR forecast series per non-overlapping window and over the whole sample.

    Parameters
    ----------
    returns : pandas.Series or numpy.ndarray
        Realised decimal returns, oldest first.
    var : pandas.Series or numpy.ndarray
        VaR forecast for each session (positive loss fraction, made the session before), aligned
        with ``returns`` (same index for Series, same length for arrays). Leading NaNs (sessions
        before the first forecast) are dropped; any other non-finite value raises.
    level : float
        Confidence level of the VaR.
    window : int
        Sessions per window (250: the Basel year).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`BACKTEST_COLUMNS`. One row per window of ``window`` consecutive sessions,
        ``window`` labelled ``"1"``, ``"2"``, ... oldest first, anchored at the **last** session
        (the last row is the most recent ``window`` sessions, as the Basel count; a leading
        remainder shorter than ``window`` appears only in the whole-sample row), then the
        whole-sample row ``"all"``. ``zone`` is :func:`basel_zone` at the row's ``n``; ``ind_p``
        and ``cc_p`` are the Christoffersen tests within the row.
    """
    level = _check_level(level)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if isinstance(returns, pd.Series) and isinstance(var, pd.Series):
        if not returns.index.equals(var.index):
            raise ValueError("returns and var must have the same index")
        index: pd.Index = returns.index
    else:
        if len(returns) != len(var):
            raise ValueError(
                f"returns and var must have the same length, got {len(returns)} and {len(var)}"
            )
        index = returns.index if isinstance(returns, pd.Series) else pd.RangeIndex(len(returns))
    r = np.asarray(returns, dtype=float)
    v = np.asarray(var, dtype=float)
    ok = np.isfinite(v)
    first = int(np.argmax(ok)) if ok.any() else len(v)
    r, v, index = r[first:], v[first:], index[first:]
    if len(v) == 0:
        raise ValueError("var has no finite forecast")
    bad = ~(np.isfinite(v) & np.isfinite(r))
    if bad.any():
        raise ValueError(
            f"non-finite returns or VaR after the first forecast at {index[bad][:5].tolist()}"
        )
    hits = r < -v
    rows = []
    n = len(hits)
    starts = list(range(n - window, -1, -window))[::-1]
    for i, s in enumerate(starts, start=1):
        rows.append(_backtest_row(str(i), index[s : s + window], hits[s : s + window], level))
    rows.append(_backtest_row("all", index, hits, level))
    return pd.DataFrame(rows, columns=list(BACKTEST_COLUMNS))


# ---------------------------------------------------------------------------- covariance
def shrunk_covariance(
    returns: pd.DataFrame, annualise: int | float = 252
) -> tuple[pd.DataFrame, float]:
    """Ledoit-Wolf (2004) shrunk covariance of the columns of ``returns``.

    Parameters
    ----------
    returns : pandas.DataFrame
        Decimal daily returns, one column per symbol. Rows with any NaN are dropped (the
        estimator needs a common sample); at least two rows must remain.
    annualise : int or float
        Periods per year the daily covariance is multiplied by (1 keeps it daily).

    Returns
    -------
    tuple of (pandas.DataFrame, float)
        The covariance (symbols x symbols) and the shrinkage intensity in ``[0, 1]``, both from
        :class:`sklearn.covariance.LedoitWolf` (mean removed, target ``mu I``; see
        :func:`ledoit_wolf`).
    """
    if not isinstance(returns, pd.DataFrame):
        raise TypeError(f"returns must be a pandas DataFrame, got {type(returns).__name__}")
    if returns.shape[1] == 0:
        raise ValueError("returns has no columns")
    if not annualise > 0:
        raise ValueError(f"annualise must be > 0, got {annualise}")
    data = returns.astype(float).dropna(how="any")
    if len(data) < 2:
        raise ValueError(f"need at least 2 rows without NaN, got {len(data)}")
    if not np.isfinite(data.to_numpy()).all():
        raise ValueError("returns contain infinite values")
    cov_, shrinkage = ledoit_wolf(data.to_numpy())
    cov = pd.DataFrame(cov_ * annualise, index=data.columns, columns=data.columns)
    return cov, shrinkage


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of the rows of ``x`` (samples x variables) and its
    shrinkage: the numbers of :class:`sklearn.covariance.LedoitWolf` (mean removed, target
    ``mu I``), with one ``x' x`` product instead of sklearn's three and none of its per-call
    validation (the gate estimates one per holdout session, on hundreds of symbols).

    Parameters
    ----------
    x : numpy.ndarray
        Finite samples, shape ``(n_samples, n_features)``, ``n_samples >= 2``.

    Returns
    -------
    tuple of (numpy.ndarray, float)
        The ``n_features x n_features`` covariance and the shrinkage intensity in ``[0, 1]``.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"need a 2-d array with at least 2 rows and 1 column, got {x.shape}")
    t, n = x.shape
    xc = x - x.mean(axis=0)
    emp = xc.T @ xc / t
    if n == 1:  # one variable: the result is the same whatever the shrinkage (sklearn: 0)
        return emp, 0.0
    x2 = xc**2
    trace = x2.sum(axis=0) / t
    mu = float(trace.sum()) / n
    beta_ = float((x2.sum(axis=1) ** 2).sum())  # the sum of the coefficients of x2' x2
    delta_ = float((emp**2).sum())  # the sum of the squared coefficients of x' x / t^2
    beta = (beta_ / t - delta_) / (n * t)
    delta = (delta_ - 2.0 * mu * float(trace.sum()) + n * mu**2) / n
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    shrunk = (1.0 - shrinkage) * emp
    shrunk.flat[:: n + 1] += shrinkage * mu
    return shrunk, float(shrinkage)


# -------------------------------------------------------------------------------- stress
@dataclass(frozen=True)
class StressResult:
    """Outcome of a stress scenario for a portfolio.

    Parameters
    ----------
    name : str
        Scenario name.
    pnl : float
        Portfolio return over the scenario (decimal, compounded; ``-0.2``: lost 20% of the value).
        Covers the symbols with data only (see ``missing``).
    worst_day : float
        Worst one-session portfolio return in the scenario (the shock itself for a hypothetical
        shock).
    worst_date : pandas.Timestamp or None
        Session of ``worst_day`` (None for a hypothetical shock).
    contributions : pandas.Series
        Per-symbol contribution to ``pnl`` (they sum to ``pnl``); NaN for missing symbols.
    missing : tuple of str
        Symbols with a weight but no (complete) data for the scenario, reported in ``notes``.
    sessions : int
        Sessions replayed (0 for a hypothetical shock).
    notes : tuple of str
        One line per missing symbol saying why.
    """

    name: str
    pnl: float
    worst_day: float
    worst_date: pd.Timestamp | None
    contributions: pd.Series = field(hash=False)
    missing: tuple[str, ...] = ()
    sessions: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StressScenario:
    """A named stress scenario: a historical period to replay or a hypothetical market shock.

    Parameters
    ----------
    name : str
        Scenario name.
    kind : {"historical", "hypothetical"}
        Replay of ``start .. end`` (:func:`historical_stress`) or one shock
        (:func:`hypothetical_shock`).
    start, end : str, optional
        First and last calendar day of a historical scenario (inclusive).
    shock : float, optional
        Market move of a hypothetical scenario (decimal; times each symbol's beta when betas are
        given).
    description : str
        One line for reports.
    """

    name: str
    kind: Literal["historical", "hypothetical"]
    start: str | None = None
    end: str | None = None
    shock: float | None = None
    description: str = ""


#: The standard scenarios by name: the October 2008 and March 2020 sell-offs replayed from daily
#: returns, and instantaneous market shocks of -10% and -20%.
STRESS_SCENARIOS: Mapping[str, StressScenario] = MappingProxyType({
    s.name: s
    for s in (
        StressScenario("2008-10", "historical", "2008-10-01", "2008-10-31",
                       description="October 2008: Lehman aftermath, global equity crash"),
        StressScenario("2020-03", "historical", "2020-03-01", "2020-03-31",
                       description="March 2020: COVID-19 crash"),
        StressScenario("market -10%", "hypothetical", shock=-0.10,
                       description="instantaneous -10% market move (times beta)"),
        StressScenario("market -20%", "hypothetical", shock=-0.20,
                       description="instantaneous -20% market move (times beta)"),
    )
})


def _weights(weights: pd.Series) -> pd.Series:
    if not isinstance(weights, pd.Series):
        raise TypeError(f"weights must be a pandas Series, got {type(weights).__name__}")
    if weights.empty:
        raise ValueError("weights is empty")
    if not weights.index.is_unique:
        dup = weights.index[weights.index.duplicated()].tolist()
        raise ValueError(f"duplicate symbols in weights: {dup}")
    w = weights.astype(float)
    if not np.isfinite(w.to_numpy()).all():
        raise ValueError("weights contain non-finite values")
    return w.set_axis(w.index.map(str))


def historical_stress(
    weights: pd.Series,
    returns: pd.DataFrame,
    start: Any,
    end: Any,
    *,
    name: str | None = None,
    kind: Literal["simple", "log"] = "simple",
    strict: bool = False,
) -> StressResult:
    """Replay the daily returns of ``start .. end`` on a buy-and-hold portfolio.

    The positions are bought at the close before ``start`` with ``weights`` (fractions of the
    portfolio's value; ``1 - sum(weights)`` is cash at zero rate, so leverage and shorts work) and
    held. Symbol ``i`` contributes ``w_i (prod(1 + r_i) - 1)`` and ``pnl`` is their sum: the
    portfolio's compounded return over the period.

    Parameters
    ----------
    weights : pandas.Series
        Portfolio weights by symbol.
    returns : pandas.DataFrame
        Daily returns indexed by session (DatetimeIndex), one column per symbol. Rows where every
        symbol is NaN are not sessions and are dropped.
    start, end : date-like
        First and last day of the period (inclusive).
    name : str, optional
        Scenario name; default ``"start..end"``.
    kind : {"simple", "log"}
        Whether ``returns`` are simple or log returns (converted with ``expm1``).
    strict : bool
        Raise instead of reporting missing symbols.

    Returns
    -------
    StressResult
        ``worst_day`` is the worst daily return of the portfolio's value along the replay.

    Raises
    ------
    ValueError
        If the period holds no session, or (``strict``) a weighted symbol has no column in
        ``returns`` or a NaN in the period.

    Notes
    -----
    A symbol with a weight but no column, or with a NaN on any session of the period (e.g. listed
    later or delisted), is **missing**: its contribution is NaN, it is listed in ``missing`` with a
    note, and ``pnl`` and ``worst_day`` cover the other symbols (the missing position is treated
    as flat). Check ``missing`` before quoting ``pnl``.
    """
    w = _weights(weights)
    if kind not in ("simple", "log"):
        raise ValueError(f"kind must be 'simple' or 'log', got {kind!r}")
    if not isinstance(returns, pd.DataFrame) or not isinstance(returns.index, pd.DatetimeIndex):
        raise TypeError("returns must be a pandas DataFrame indexed by session (DatetimeIndex)")
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    if hi < lo:
        raise ValueError(f"end {hi.date()} is before start {lo.date()}")
    frame = returns.rename(columns=str).sort_index().loc[lo:hi].astype(float)
    frame = frame.dropna(how="all")
    label = name if name is not None else f"{lo.date()}..{hi.date()}"
    if frame.empty:
        have = (
            f"{returns.index.min().date()}..{returns.index.max().date()}"
            if len(returns) else "nothing"
        )
        raise ValueError(f"{label}: no session between {lo.date()} and {hi.date()} (returns "
                         f"cover {have})")
    if kind == "log":
        frame = pd.DataFrame(np.expm1(frame.to_numpy()), index=frame.index,
                             columns=frame.columns)
    missing: list[str] = []
    notes: list[str] = []
    for sym in w.index:
        if sym not in frame.columns:
            missing.append(sym)
            notes.append(f"{sym}: no returns column")
        elif frame[sym].isna().any():
            gaps = int(frame[sym].isna().sum())
            missing.append(sym)
            notes.append(f"{sym}: {gaps} of {len(frame)} sessions without a return")
    if missing and strict:
        raise ValueError(f"{label}: missing symbols: {'; '.join(notes)}")
    held = [s for s in w.index if s not in missing]
    growth = (1.0 + frame[held]).cumprod()  # value of 1 invested in each symbol
    contrib = pd.Series(np.nan, index=w.index, name="contribution")
    contrib[held] = w[held] * (growth.iloc[-1] - 1.0)
    nav = (1.0 - w[held].sum()) + growth.mul(w[held], axis=1).sum(axis=1)
    daily = nav / nav.shift(1, fill_value=1.0) - 1.0
    worst = daily.idxmin()
    return StressResult(
        name=label,
        pnl=float(contrib[held].sum()),
        worst_day=float(daily.loc[worst]),
        worst_date=pd.Timestamp(worst),
        contributions=contrib,
        missing=tuple(missing),
        sessions=len(frame),
        notes=tuple(notes),
    )


def hypothetical_shock(
    weights: pd.Series,
    shocks: Mapping[str, float] | float,
    betas: pd.Series | None = None,
    *,
    name: str | None = None,
    strict: bool = False,
) -> StressResult:
    """Instantaneous shock to the positions.

    Parameters
    ----------
    weights : pandas.Series
        Portfolio weights by symbol.
    shocks : mapping of str to float, or float
        Per-symbol returns (a weighted symbol without a shock is missing), or one market return
        applied to every symbol, times its beta when ``betas`` is given (e.g. ``-0.2`` for a 20%
        market fall).
    betas : pandas.Series, optional
        Market betas by symbol, only with a scalar ``shocks`` (a weighted symbol without a beta
        is missing).
    name : str, optional
        Scenario name; default from the shock.
    strict : bool
        Raise instead of reporting missing symbols.

    Returns
    -------
    StressResult
        ``pnl = worst_day = sum_i w_i shock_i`` over the symbols with a shock; contributions
        ``w_i shock_i`` (NaN for missing symbols); ``sessions=0``, ``worst_date=None``.
    """
    w = _weights(weights)
    if isinstance(shocks, Mapping):
        if betas is not None:
            raise ValueError("betas apply to a scalar market shock, not to per-symbol shocks")
        moves = pd.Series({str(k): float(v) for k, v in shocks.items()}, dtype=float)
        label = name if name is not None else "per-symbol shock"
        why = "no shock given"
    else:
        market = float(shocks)
        if betas is None:
            moves = pd.Series(market, index=w.index)
        else:
            moves = market * betas.astype(float).set_axis(betas.index.map(str))
        label = name if name is not None else f"market {market:+.0%}"
        why = "no beta given"
    if not np.isfinite(moves.to_numpy()).all():
        raise ValueError("shocks and betas must be finite")
    missing = [s for s in w.index if s not in moves.index]
    notes = [f"{s}: {why}" for s in missing]
    if missing and strict:
        raise ValueError(f"{label}: missing symbols: {'; '.join(notes)}")
    contrib = pd.Series(np.nan, index=w.index, name="contribution")
    held = [s for s in w.index if s not in missing]
    contrib[held] = w[held] * moves[held]
    pnl = float(contrib[held].sum())
    return StressResult(
        name=label, pnl=pnl, worst_day=pnl, worst_date=None, contributions=contrib,
        missing=tuple(missing), sessions=0, notes=tuple(notes),
    )


def run_scenario(
    weights: pd.Series,
    scenario: StressScenario | str,
    returns: pd.DataFrame | None = None,
    betas: pd.Series | None = None,
    *,
    kind: Literal["simple", "log"] = "simple",
    strict: bool = False,
) -> StressResult:
    """Run a :class:`StressScenario` (or the name of one in :data:`STRESS_SCENARIOS`).

    Historical scenarios need ``returns`` (:func:`historical_stress`); hypothetical ones use
    ``betas`` when given (:func:`hypothetical_shock`).
    """
    if isinstance(scenario, str):
        if scenario not in STRESS_SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {list(STRESS_SCENARIOS)}")
        scenario = STRESS_SCENARIOS[scenario]
    if scenario.kind == "historical":
        if returns is None or scenario.start is None or scenario.end is None:
            raise ValueError(f"{scenario.name}: a historical scenario needs returns, start, end")
        return historical_stress(weights, returns, scenario.start, scenario.end,
                                 name=scenario.name, kind=kind, strict=strict)
    if scenario.shock is None:
        raise ValueError(f"{scenario.name}: a hypothetical scenario needs a shock")
    return hypothetical_shock(weights, scenario.shock, betas, name=scenario.name, strict=strict)

