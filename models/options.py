"""Option pricing, implied volatility, volatility surfaces and Heston calibration on QuantLib.

The module keeps the split used by :mod:`models.garch` between what is *specified* (frozen
:class:`Contract`, :class:`Market` and model parameters :class:`BSMParams`, :class:`HestonParams`,
:class:`MertonParams`) and what is *computed* (frozen :class:`OptionQuote`,
:class:`HestonCalibration`, :class:`StraddleQuote`, :class:`VolSurface`), and exposes pure
functions between them:

- :func:`price` prices a European or American vanilla option under Black-Scholes-Merton (BSM),
  Heston or Merton jump-diffusion and returns the price with all five Greeks,
- :func:`implied_vol` inverts the BSM price (European or American),
- :func:`read_chain`, :func:`implied_vol_surface` and :func:`vol_surface` turn a chain of quoted
  prices into implied volatilities and an interpolated surface,
- :func:`calibrate_heston` fits Heston parameters to a chain, :func:`heston_chain` generates a
  synthetic chain from known parameters,
- :func:`garch_straddle` prices the at-the-money straddle of a GARCH volatility forecast (a
  feature of the light stage).

Conventions
-----------
Expiries are in years (Actual/365 Fixed). ``rate`` and ``dividend`` are continuously compounded
and flat; volatilities are annualised decimals (0.20 is 20%). Greeks are in QuantLib's units:

========  ===================================================================================
delta     ``dV/dS``
gamma     ``d2V/dS2``
vega      ``dV/dvol`` per 1.00 of volatility (a move of one vol point, 0.01, changes the price by
          ``vega / 100``). BSM: the volatility; Merton: the diffusion volatility; Heston: a
          parallel shift of ``sqrt(v0)`` and ``sqrt(theta)``, so it equals BSM vega in the
          limit ``sigma -> 0, v0 = theta = vol**2``.
theta     ``dV/dt`` per calendar year of time passing (usually negative; ``/ 365`` per day)
rho       ``dV/dr`` per 1.00 of the (continuously compounded) rate
========  ===================================================================================

Engines and where the Greeks come from. Anything an engine does not provide is a central finite
difference of prices (:attr:`OptionQuote.bumped` names them): spot bumped by :data:`SPOT_BUMP`
of the spot (or ``0.1 vol sqrt(T)`` of it when smaller, so short-dated gammas stay local), vol by
:data:`VOL_BUMP` (at most half the vol), rate by :data:`RATE_BUMP`, expiry by :data:`THETA_BUMP`
years (at most a tenth of the expiry). With smooth engines these are accurate to about 1e-3
relative (the truncation error of the bumps); on finite-difference grids expect 1e-2 for vega
and rho of deep in- or out-of-the-money options.

=======  =========  ==================================================  =========================
model    style      QuantLib engine                                     Greeks from the engine
=======  =========  ==================================================  =========================
bsm      european   ``AnalyticEuropeanEngine``                          all five
bsm      american   ``QdFpAmericanEngine`` (accurate scheme)            none
heston   european   ``AnalyticHestonEngine`` (adaptive integration)     none
heston   american   ``FdHestonVanillaEngine`` (:data:`HESTON_FD_GRID`)  delta, gamma, theta
merton   european   Merton (1976) series of ``BlackCalculator`` terms   delta, gamma, vega, rho
merton   american   ``FdBatesVanillaEngine`` (:data:`BATES_FD_GRID`)    delta, gamma, theta
=======  =========  ==================================================  =========================

QuantLib's ``JumpDiffusionEngine``, which sums the same Merton series, is not exported to Python,
so the European Merton price sums it here, each term priced by QuantLib's ``BlackCalculator``.
For American Merton options the process is written as a Bates model (Heston with Merton jumps)
with constant variance ``v0 = theta = vol**2`` and a negligible vol of variance
(:data:`MERTON_VOL_OF_VAR`; QuantLib requires it, and the jump volatility, to be positive: a zero
``jump_vol`` is priced as 1e-8); with ``jump_intensity = 0`` the model is BSM and is priced as
such. The American BSM engine is Andersen, Lake and Offengenden's fixed-point method for the
exercise boundary: it agrees with a binomial tree extrapolated to infinitely many steps to about
1e-5 and costs a few milliseconds. The finite-difference engines are accurate to about 1e-4 to
3e-4 of the price (measured against the analytic European prices) and cost 0.1-0.2 s per price,
so an American Heston or Merton quote with its bumped Greeks takes about a second.

The log jump size of the Merton model is normal with mean ``jump_mean`` and standard deviation
``jump_vol``; the drift is compensated by ``jump_intensity * k`` with
``k = exp(jump_mean + jump_vol**2 / 2) - 1`` (QuantLib's ``Merton76Process`` convention).

Notes
-----
QuantLib's evaluation date is global state. Every QuantLib computation here runs at a fixed
reference date (:data:`REFERENCE_DATE`), never today's date, so results are reproducible; the
previous evaluation date is restored afterwards (an unset, floating date is restored as floating).
Because of that global, the functions must not run concurrently in several threads of one process.

QuantLib measures time in whole days between dates, which would round an expiry of 0.5 years to
182 days (and Hull's 4.76 call to 4.75). Options are therefore priced on a *model clock* that runs
``a = round(365 T) / (365 T)`` times faster than calendar time, so the expiry falls exactly on a
whole model day, with every parameter that has a time dimension rescaled (rates, dividend yield,
variances, mean reversion, vol of variance and jump intensity divided by ``a``, volatilities by
``sqrt(a)``). The dynamics, hence prices, are unchanged; Greeks are converted back to calendar
units. Calibration needs one clock for all expiries and uses ``a =`` :data:`CALIBRATION_CLOCK`
(one model day is three hours), rounding each expiry to the nearest 1/2920 year.

Chains (:func:`read_chain`) hold European options; the implied volatilities of a chain are BSM
European volatilities.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import QuantLib as ql

__all__ = [
    "BATES_FD_GRID",
    "CALIBRATION_CLOCK",
    "CHAIN_COLUMNS",
    "HESTON_FD_GRID",
    "HESTON_INTEGRATION",
    "IV_BOUNDS",
    "MAX_EXPIRY",
    "MERTON_VOL_OF_VAR",
    "RATE_BUMP",
    "REFERENCE_DATE",
    "SPOT_BUMP",
    "THETA_BUMP",
    "VOL_BUMP",
    "BSMParams",
    "Contract",
    "HestonCalibration",
    "HestonParams",
    "Market",
    "MertonParams",
    "ModelName",
    "ModelParams",
    "OptionQuote",
    "OptionType",
    "StraddleQuote",
    "Style",
    "VolSurface",
    "calibrate_heston",
    "garch_straddle",
    "heston_chain",
    "implied_vol",
    "implied_vol_surface",
    "price",
    "read_chain",
    "vol_surface",
]

OptionType = Literal["call", "put"]
Style = Literal["european", "american"]
ModelName = Literal["bsm", "heston", "merton"]

#: Evaluation date (day, month, year) of every QuantLib computation.
REFERENCE_DATE: tuple[int, int, int] = (3, 1, 2000)
#: Longest accepted expiry in years (the model clock must stay within QuantLib's calendar).
MAX_EXPIRY = 100.0
#: Relative spot bump of finite-difference delta and gamma (at most ``0.1 vol sqrt(expiry)``).
SPOT_BUMP = 0.01
#: Absolute volatility bump (one vol point) of finite-difference vega (at most half the vol).
VOL_BUMP = 0.01
#: Absolute rate bump (one basis point) of finite-difference rho.
RATE_BUMP = 1e-4
#: Expiry bump in years (one day) of finite-difference theta (at most a tenth of the expiry).
THETA_BUMP = 1.0 / 365.0
#: (relative tolerance, maximum evaluations) of the adaptive Gauss-Lobatto integration of the
#: analytic Heston engine (QuantLib's default Gauss-Laguerre rule is off by ~1e-5 for expiries of
#: an hour).
HESTON_INTEGRATION: tuple[float, int] = (1e-10, 100_000)
#: (time steps, spot nodes, variance nodes) of the American Heston engine.
HESTON_FD_GRID: tuple[int, int, int] = (100, 200, 50)
#: (time steps, spot nodes, variance nodes) of the American Merton (Bates) engine; the variance
#: is constant, so few variance nodes suffice.
BATES_FD_GRID: tuple[int, int, int] = (100, 400, 5)
#: Vol of variance of the Bates process standing in for Merton in the American engine.
MERTON_VOL_OF_VAR = 1e-4
#: Volatility bracket of :func:`implied_vol`.
IV_BOUNDS: tuple[float, float] = (1e-4, 5.0)
#: Model years per calendar year in :func:`calibrate_heston` (see the module notes).
CALIBRATION_CLOCK = 8.0
#: Required columns of a chain, in order.
CHAIN_COLUMNS: tuple[str, ...] = ("expiry", "strike", "type", "price")

_DAYS_PER_YEAR = 365.0
_MIN_JUMP_VOL = 1e-8  # QuantLib's Bates model needs a positive jump volatility
_GREEKS: tuple[str, ...] = ("delta", "gamma", "vega", "theta", "rho")


# --------------------------------------------------------------------------------------------
# Specifications


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return x


def _positive(name: str, value: Any) -> float:
    x = _number(name, value)
    if x <= 0.0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return x


def _non_negative(name: str, value: Any) -> float:
    x = _number(name, value)
    if x < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return x


@dataclass(frozen=True)
class Contract:
    """A vanilla option.

    Parameters
    ----------
    option_type : {"call", "put"}
        Payoff ``max(S - K, 0)`` or ``max(K - S, 0)``.
    strike : float
        Strike ``K`` (positive).
    expiry : float
        Time to expiry in years (positive, at most :data:`MAX_EXPIRY`).
    style : {"european", "american"}
        Exercise at expiry only, or at any time up to expiry.
    """

    option_type: OptionType
    strike: float
    expiry: float
    style: Style = "european"

    def __post_init__(self) -> None:
        if self.option_type not in ("call", "put"):
            raise ValueError(f"option_type must be 'call' or 'put', got {self.option_type!r}")
        if self.style not in ("european", "american"):
            raise ValueError(f"style must be 'european' or 'american', got {self.style!r}")
        _positive("strike", self.strike)
        if _positive("expiry", self.expiry) > MAX_EXPIRY:
            raise ValueError(f"expiry must be at most {MAX_EXPIRY:g} years, got {self.expiry!r}")


@dataclass(frozen=True)
class Market:
    """Spot and flat, continuously compounded curves.

    Parameters
    ----------
    spot : float
        Price of the underlying (positive).
    rate : float
        Risk-free rate (may be negative).
    dividend : float
        Dividend yield (may be negative, e.g. a borrow cost).
    """

    spot: float
    rate: float
    dividend: float = 0.0

    def __post_init__(self) -> None:
        _positive("spot", self.spot)
        _number("rate", self.rate)
        _number("dividend", self.dividend)


@dataclass(frozen=True)
class BSMParams:
    """Black-Scholes-Merton: constant volatility ``vol`` (annualised, positive)."""

    vol: float

    def __post_init__(self) -> None:
        _positive("vol", self.vol)


@dataclass(frozen=True)
class HestonParams:
    """Heston (1993): ``dv = kappa (theta - v) dt + sigma sqrt(v) dW_v``, ``d<W_S, W_v> = rho dt``.

    Parameters
    ----------
    v0 : float
        Initial variance (``0.04`` is a 20% volatility).
    kappa : float
        Mean-reversion speed per year.
    theta : float
        Long-run variance.
    sigma : float
        Volatility of variance ("vol of vol").
    rho : float
        Correlation of the spot and variance shocks, in [-1, 1].
    """

    v0: float
    kappa: float
    theta: float
    sigma: float
    rho: float

    def __post_init__(self) -> None:
        for name in ("v0", "kappa", "theta", "sigma"):
            _positive(name, getattr(self, name))
        if not -1.0 <= _number("rho", self.rho) <= 1.0:
            raise ValueError(f"rho must be in [-1, 1], got {self.rho!r}")

    @property
    def feller(self) -> bool:
        """Whether ``2 kappa theta > sigma**2`` (the variance never reaches zero)."""
        return 2.0 * self.kappa * self.theta > self.sigma**2


@dataclass(frozen=True)
class MertonParams:
    """Merton (1976) jump-diffusion: BSM plus log-normal jumps at Poisson times.

    Parameters
    ----------
    vol : float
        Diffusion volatility (positive).
    jump_intensity : float
        Expected jumps per year (>= 0; 0 is BSM).
    jump_mean : float
        Mean of the log jump size.
    jump_vol : float
        Standard deviation of the log jump size (>= 0).
    """

    vol: float
    jump_intensity: float
    jump_mean: float
    jump_vol: float

    def __post_init__(self) -> None:
        _positive("vol", self.vol)
        _non_negative("jump_intensity", self.jump_intensity)
        _number("jump_mean", self.jump_mean)
        _non_negative("jump_vol", self.jump_vol)


ModelParams = BSMParams | HestonParams | MertonParams


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class OptionQuote:
    """Price and Greeks of one option (units in the module docstring).

    Attributes
    ----------
    price, delta, gamma, vega, theta, rho : float
        Present value and sensitivities.
    model : {"bsm", "heston", "merton"}
        Model priced under.
    style : {"european", "american"}
        Exercise style.
    engine : str
        The pricing method (QuantLib engine name).
    bumped : tuple of str
        Greeks computed by finite differences rather than by the engine.
    """

    price: float
    delta: float
    gamma: float
    vega: float
    theta: float
    rho: float
    model: ModelName
    style: Style
    engine: str
    bumped: tuple[str, ...] = ()


@dataclass(frozen=True)
class StraddleQuote:
    """At-the-money European straddle (:func:`garch_straddle`).

    Attributes
    ----------
    price : float
        Call plus put struck at the spot.
    price_over_spot : float
        ``price / spot``, about ``0.8 vol sqrt(expiry)``.
    vol : float
        Volatility priced with.
    expiry : float
        Time to expiry in years.
    """

    price: float
    price_over_spot: float
    vol: float
    expiry: float


@dataclass(frozen=True)
class HestonCalibration:
    """Result of :func:`calibrate_heston`.

    Attributes
    ----------
    params : HestonParams
        Calibrated parameters (calendar units).
    initial : HestonParams
        Starting point of the optimiser.
    rmse_iv : float
        Root mean square of model minus market implied volatility over the fitted options,
        repriced at their exact expiries.
    max_abs_iv_error : float
        Largest absolute implied-volatility error.
    n_options : int
        Options fitted.
    evaluations : int
        Cost-function evaluations of the optimiser (QuantLib does not expose iterations).
    end_criteria : str
        Why the optimiser stopped (QuantLib ``EndCriteria`` name).
    converged : bool
        Whether that reason counts as success for QuantLib.
    """

    params: HestonParams
    initial: HestonParams
    rmse_iv: float
    max_abs_iv_error: float
    n_options: int
    evaluations: int
    end_criteria: str
    converged: bool


@dataclass(frozen=True)
class VolSurface:
    """Implied volatility interpolated from a chain (:func:`vol_surface`).

    Within an expiry slice the volatility is linear in strike, flat beyond the outermost strikes;
    between slices the total variance ``vol**2 * expiry`` at the strike is linear in expiry;
    before the first and after the last slice the volatility is flat (as QuantLib's
    ``BlackVarianceSurface``).

    Attributes
    ----------
    expiries : tuple of float
        Slice expiries, increasing.
    strikes : tuple of tuple of float
        Increasing strikes of each slice.
    vols : tuple of tuple of float
        Implied volatilities at those strikes.
    """

    expiries: tuple[float, ...]
    strikes: tuple[tuple[float, ...], ...]
    vols: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        if not self.expiries:
            raise ValueError("a volatility surface needs at least one expiry")
        if len(self.strikes) != len(self.expiries) or len(self.vols) != len(self.expiries):
            raise ValueError("expiries, strikes and vols must have one entry per expiry")
        if any(b <= a for a, b in pairwise(self.expiries)):
            raise ValueError("expiries must be strictly increasing")
        for t, ks, vs in zip(self.expiries, self.strikes, self.vols, strict=True):
            if not ks or len(ks) != len(vs):
                raise ValueError(f"slice {t:g}: strikes and vols must be non-empty, same length")
            if any(b <= a for a, b in pairwise(ks)):
                raise ValueError(f"slice {t:g}: strikes must be strictly increasing")

    def _slice(self, i: int, strike: float) -> float:
        return float(np.interp(strike, self.strikes[i], self.vols[i]))

    def vol(self, expiry: float, strike: float) -> float:
        """Implied volatility at ``expiry`` (years) and ``strike``.

        Parameters
        ----------
        expiry : float
            Time to expiry in years (positive).
        strike : float
            Strike (positive).

        Returns
        -------
        float
            Interpolated volatility.
        """
        t = _positive("expiry", expiry)
        k = _positive("strike", strike)
        ts = self.expiries
        if t <= ts[0]:
            return self._slice(0, k)
        if t >= ts[-1]:
            return self._slice(len(ts) - 1, k)
        j = int(np.searchsorted(ts, t))
        t0, t1 = ts[j - 1], ts[j]
        w0 = self._slice(j - 1, k) ** 2 * t0
        w1 = self._slice(j, k) ** 2 * t1
        w = w0 + (w1 - w0) * (t - t0) / (t1 - t0)
        return math.sqrt(max(w, 0.0) / t)


# --------------------------------------------------------------------------------------------
# QuantLib plumbing


@contextmanager
def _at_reference_date() -> Iterator[Any]:
    """Set QuantLib's evaluation date to :data:`REFERENCE_DATE`; restore it on exit."""
    settings = ql.Settings.instance()
    previous = settings.evaluationDate
    floating = previous == ql.Date.todaysDate()
    reference = ql.Date(*REFERENCE_DATE)
    settings.evaluationDate = reference
    try:
        yield reference
    finally:
        if floating:
            settings.resetEvaluationDate()
        else:
            settings.evaluationDate = previous


def _clock(expiry: float) -> tuple[int, float]:
    """Whole model days to expiry and model years per calendar year (module notes)."""
    days = max(1, round(expiry * _DAYS_PER_YEAR))
    return days, days / (_DAYS_PER_YEAR * expiry)


def _scaled(params: ModelParams, a: float) -> ModelParams:
    """Parameters on a clock running ``a`` times faster than calendar time."""
    if isinstance(params, BSMParams):
        return BSMParams(params.vol / math.sqrt(a))
    if isinstance(params, HestonParams):
        return _scaled_heston(params, a)
    return replace(params, vol=params.vol / math.sqrt(a), jump_intensity=params.jump_intensity / a)


def _scaled_heston(params: HestonParams, a: float) -> HestonParams:
    return HestonParams(params.v0 / a, params.kappa / a, params.theta / a, params.sigma / a,
                        params.rho)


def _curves(reference: Any, market: Market, a: float) -> tuple[Any, Any]:
    dc = ql.Actual365Fixed()
    rate = ql.YieldTermStructureHandle(ql.FlatForward(reference, market.rate / a, dc))
    dividend = ql.YieldTermStructureHandle(ql.FlatForward(reference, market.dividend / a, dc))
    return rate, dividend


def _vanilla(contract: Contract, reference: Any, days: int) -> Any:
    kind = ql.Option.Call if contract.option_type == "call" else ql.Option.Put
    maturity = reference + days
    exercise = (ql.AmericanExercise(reference, maturity) if contract.style == "american"
                else ql.EuropeanExercise(maturity))
    return ql.VanillaOption(ql.PlainVanillaPayoff(kind, contract.strike), exercise)


def _bsm_process(reference: Any, market: Market, a: float, vol: Any) -> Any:
    """BSM process on the model clock; ``vol`` is a QuantLib quote of the model-clock vol."""
    rate, dividend = _curves(reference, market, a)
    surface = ql.BlackConstantVol(reference, ql.NullCalendar(), ql.QuoteHandle(vol),
                                  ql.Actual365Fixed())
    return ql.BlackScholesMertonProcess(ql.QuoteHandle(ql.SimpleQuote(market.spot)), dividend,
                                        rate, ql.BlackVolTermStructureHandle(surface))


def _bsm_engine(contract: Contract, process: Any) -> tuple[Any, str]:
    if contract.style == "european":
        return ql.AnalyticEuropeanEngine(process), "AnalyticEuropeanEngine"
    return (ql.QdFpAmericanEngine(process, ql.QdFpAmericanEngine.accurateScheme()),
            "QdFpAmericanEngine")


def _engine_greeks(option: Any, names: Sequence[str], a: float) -> dict[str, float]:
    """Greeks ``names`` from a priced QuantLib option, converted to calendar units."""
    out: dict[str, float] = {}
    for name in names:
        value = float(getattr(option, name)())
        if name == "vega":
            value /= math.sqrt(a)
        elif name == "theta":
            value *= a
        elif name == "rho":
            value /= a
        out[name] = value
    return out


def _merton_series(contract: Contract, market: Market, params: MertonParams
                   ) -> tuple[float, dict[str, float]]:
    """European Merton price as the Poisson mixture of BSM prices, with delta/gamma/vega/rho."""
    kind = ql.Option.Call if contract.option_type == "call" else ql.Option.Put
    payoff = ql.PlainVanillaPayoff(kind, contract.strike)
    t = contract.expiry
    k = math.exp(params.jump_mean + 0.5 * params.jump_vol**2) - 1.0
    mean = params.jump_intensity * (1.0 + k) * t
    n_max = 0 if mean == 0.0 else int(mean + 12.0 * math.sqrt(mean) + 30.0)
    total = dict.fromkeys(("price", "delta", "gamma", "vega", "rho"), 0.0)
    for n in range(n_max + 1):
        weight = 1.0 if mean == 0.0 else math.exp(n * math.log(mean) - mean - math.lgamma(n + 1))
        vol_n = math.sqrt(params.vol**2 + n * params.jump_vol**2 / t)
        rate_n = market.rate - params.jump_intensity * k + n * math.log1p(k) / t
        forward = market.spot * math.exp((rate_n - market.dividend) * t)
        calc = ql.BlackCalculator(payoff, forward, vol_n * math.sqrt(t), math.exp(-rate_n * t))
        total["price"] += weight * calc.value()
        total["delta"] += weight * calc.delta(market.spot)
        total["gamma"] += weight * calc.gamma(market.spot)
        total["vega"] += weight * calc.vega(t) * params.vol / vol_n
        total["rho"] += weight * calc.rho(t)
    value = total.pop("price")
    return value, total


def _evaluate(contract: Contract, market: Market, params: ModelParams
              ) -> tuple[float, dict[str, float], str]:
    """Price, the Greeks the engine provides (calendar units) and the engine's name."""
    if isinstance(params, MertonParams):
        if params.jump_intensity == 0.0:
            return _evaluate(contract, market, BSMParams(params.vol))
        if contract.style == "european":
            value, greeks = _merton_series(contract, market, params)
            return value, greeks, "Merton series of BlackCalculator"
    days, a = _clock(contract.expiry)
    p = _scaled(params, a)
    with _at_reference_date() as reference:
        option = _vanilla(contract, reference, days)
        if isinstance(p, BSMParams):
            process = _bsm_process(reference, market, a, ql.SimpleQuote(p.vol))
            engine, name = _bsm_engine(contract, process)
            provided: tuple[str, ...] = _GREEKS if contract.style == "european" else ()
        elif isinstance(p, HestonParams):
            rate, dividend = _curves(reference, market, a)
            process = ql.HestonProcess(rate, dividend, ql.QuoteHandle(ql.SimpleQuote(market.spot)),
                                       p.v0, p.kappa, p.theta, p.sigma, p.rho)
            model = ql.HestonModel(process)
            if contract.style == "european":
                engine = ql.AnalyticHestonEngine(model, *HESTON_INTEGRATION)
                name, provided = "AnalyticHestonEngine", ()
            else:
                engine = ql.FdHestonVanillaEngine(model, *HESTON_FD_GRID)
                name, provided = "FdHestonVanillaEngine", ("delta", "gamma", "theta")
        else:
            rate, dividend = _curves(reference, market, a)
            variance = p.vol**2
            process = ql.BatesProcess(rate, dividend, ql.QuoteHandle(ql.SimpleQuote(market.spot)),
                                      variance, 1.0, variance, MERTON_VOL_OF_VAR / a, 0.0,
                                      p.jump_intensity, p.jump_mean,
                                      max(p.jump_vol, _MIN_JUMP_VOL))
            engine = ql.FdBatesVanillaEngine(ql.BatesModel(process), *BATES_FD_GRID)
            name, provided = "FdBatesVanillaEngine", ("delta", "gamma", "theta")
        option.setPricingEngine(engine)
        value = float(option.NPV())
        greeks = _engine_greeks(option, provided, a)
    return value, greeks, name


def _value(contract: Contract, market: Market, params: ModelParams) -> float:
    return _evaluate(contract, market, params)[0]


def _vol_bumped(params: ModelParams, h: float) -> ModelParams:
    """Parameters with the volatility (Heston: sqrt(v0) and sqrt(theta)) moved by ``h``."""
    if isinstance(params, BSMParams | MertonParams):
        return replace(params, vol=params.vol + h)
    return replace(params, v0=(math.sqrt(params.v0) + h) ** 2,
                   theta=(math.sqrt(params.theta) + h) ** 2)


def _vol_level(params: ModelParams) -> float:
    """The volatility that sets bump sizes (Heston: the smaller of sqrt(v0), sqrt(theta))."""
    if isinstance(params, HestonParams):
        return min(math.sqrt(params.v0), math.sqrt(params.theta))
    return params.vol


def _bumped_greeks(contract: Contract, market: Market, params: ModelParams, value: float,
                   names: Sequence[str]) -> dict[str, float]:
    """Central finite differences of prices for the Greeks ``names``."""
    out: dict[str, float] = {}
    if "delta" in names or "gamma" in names:
        h = market.spot * min(SPOT_BUMP, 0.1 * _vol_level(params) * math.sqrt(contract.expiry))
        up = _value(contract, replace(market, spot=market.spot + h), params)
        down = _value(contract, replace(market, spot=market.spot - h), params)
        out["delta"] = (up - down) / (2.0 * h)
        out["gamma"] = (up - 2.0 * value + down) / h**2
    if "vega" in names:
        h = min(VOL_BUMP, 0.5 * _vol_level(params))
        up = _value(contract, market, _vol_bumped(params, h))
        down = _value(contract, market, _vol_bumped(params, -h))
        out["vega"] = (up - down) / (2.0 * h)
    if "rho" in names:
        up = _value(contract, replace(market, rate=market.rate + RATE_BUMP), params)
        down = _value(contract, replace(market, rate=market.rate - RATE_BUMP), params)
        out["rho"] = (up - down) / (2.0 * RATE_BUMP)
    if "theta" in names:
        h = min(THETA_BUMP, 0.1 * contract.expiry)
        longer = min(contract.expiry + h, MAX_EXPIRY)
        shorter = contract.expiry - h
        up = _value(replace(contract, expiry=longer), market, params)
        down = _value(replace(contract, expiry=shorter), market, params)
        out["theta"] = -(up - down) / (longer - shorter)
    return {name: out[name] for name in names}


def _check_inputs(contract: Contract, market: Market) -> None:
    if not isinstance(contract, Contract):
        raise ValueError(f"contract must be a Contract, got {type(contract).__name__}")
    if not isinstance(market, Market):
        raise ValueError(f"market must be a Market, got {type(market).__name__}")


def _model_name(params: ModelParams) -> ModelName:
    if isinstance(params, BSMParams):
        return "bsm"
    if isinstance(params, HestonParams):
        return "heston"
    if isinstance(params, MertonParams):
        return "merton"
    raise ValueError(
        f"params must be BSMParams, HestonParams or MertonParams, got {type(params).__name__}"
    )


# --------------------------------------------------------------------------------------------
# Pricing


def price(contract: Contract, market: Market, params: ModelParams) -> OptionQuote:
    """Price a vanilla option with all five Greeks.

    Parameters
    ----------
    contract : Contract
        The option.
    market : Market
        Spot, rate and dividend yield.
    params : BSMParams, HestonParams or MertonParams
        The model and its parameters.

    Returns
    -------
    OptionQuote
        Price and Greeks in the units of the module docstring; ``bumped`` names the Greeks
        computed by finite differences (engines and bump sizes in the module docstring).

    Raises
    ------
    ValueError
        If an argument is not of the documented class.
    """
    _check_inputs(contract, market)
    model = _model_name(params)
    value, greeks, engine = _evaluate(contract, market, params)
    missing = tuple(name for name in _GREEKS if name not in greeks)
    greeks.update(_bumped_greeks(contract, market, params, value, missing))
    return OptionQuote(price=value, delta=greeks["delta"], gamma=greeks["gamma"],
                       vega=greeks["vega"], theta=greeks["theta"], rho=greeks["rho"], model=model,
                       style=contract.style, engine=engine, bumped=missing)


def _arbitrage_bounds(contract: Contract, market: Market) -> tuple[float, float]:
    """Model-free (lower, upper) bounds of the option's price."""
    t = contract.expiry
    forward_spot = market.spot * math.exp(-market.dividend * t)
    discounted_strike = contract.strike * math.exp(-market.rate * t)
    if contract.option_type == "call":
        lower, upper = max(0.0, forward_spot - discounted_strike), forward_spot
        if contract.style == "american":
            lower, upper = max(lower, market.spot - contract.strike), max(upper, market.spot)
    else:
        lower, upper = max(0.0, discounted_strike - forward_spot), discounted_strike
        if contract.style == "american":
            lower = max(lower, contract.strike - market.spot)
            upper = max(upper, contract.strike)
    return lower, upper


def implied_vol(contract: Contract, market: Market, price: float) -> float:
    """BSM implied volatility of a European or American option price.

    Parameters
    ----------
    contract : Contract
        The option (American prices are inverted with the American BSM engine).
    market : Market
        Spot, rate and dividend yield.
    price : float
        Observed option price.

    Returns
    -------
    float
        The volatility in :data:`IV_BOUNDS` at which the BSM price equals ``price`` (QuantLib's
        Brent solver, volatility accuracy 1e-12).

    Raises
    ------
    ValueError
        If ``price`` is not positive and finite, lies outside the no-arbitrage bounds (a European
        call is worth between ``max(S e^{-qT} - K e^{-rT}, 0)`` and ``S e^{-qT}``, an American
        option at least its intrinsic value) or needs a volatility outside :data:`IV_BOUNDS`.
    """
    _check_inputs(contract, market)
    target = _positive("price", price)
    lower, upper = _arbitrage_bounds(contract, market)
    what = f"{contract.style} {contract.option_type} (K={contract.strike:g}, T={contract.expiry:g})"
    if target <= lower:
        raise ValueError(
            f"price {target:.6g} is at or below the no-arbitrage lower bound {lower:.6g} of the "
            f"{what} (intrinsic value); no volatility reproduces it"
        )
    if target >= upper:
        raise ValueError(
            f"price {target:.6g} is at or above the no-arbitrage upper bound {upper:.6g} of the "
            f"{what}; no volatility reproduces it"
        )
    days, a = _clock(contract.expiry)
    lo, hi = IV_BOUNDS
    with _at_reference_date() as reference:
        option = _vanilla(contract, reference, days)
        vol = ql.SimpleQuote(lo / math.sqrt(a))
        engine, _ = _bsm_engine(contract, _bsm_process(reference, market, a, vol))
        option.setPricingEngine(engine)

        def error(v: float) -> float:
            vol.setValue(v / math.sqrt(a))
            return float(option.NPV()) - target

        e_lo, e_hi = error(lo), error(hi)
        if e_lo > 0.0:
            raise ValueError(
                f"price {target:.6g} of the {what} is below its value {target + e_lo:.6g} at the "
                f"lowest volatility {lo:g}"
            )
        if e_hi < 0.0:
            raise ValueError(
                f"price {target:.6g} of the {what} is above its value {target + e_hi:.6g} at the "
                f"highest volatility {hi:g}"
            )
        if e_lo == 0.0:
            return lo
        solver = ql.Brent()
        solver.setMaxEvaluations(200)
        try:
            return float(solver.solve(error, 1e-12, 0.2, lo, hi))
        except RuntimeError as exc:  # QuantLib's errors are RuntimeErrors
            raise ValueError(f"no implied volatility for the {what}: {exc}") from None


def garch_straddle(spot: float, annual_vol: float, rate: float, dividend: float = 0.0,
                   days: int = 30) -> StraddleQuote:
    """At-the-money European straddle priced with a (GARCH) volatility forecast.

    The "GARCH-implied straddle" feature: a call plus a put struck at the spot, expiring in
    ``days`` calendar days, under BSM at ``annual_vol``. Priced with QuantLib's
    ``BlackCalculator`` directly (no dates, no global state), so it is cheap enough to call per
    symbol per session.

    Parameters
    ----------
    spot : float
        Price of the underlying (positive).
    annual_vol : float
        Annualised decimal volatility forecast (positive).
    rate : float
        Continuously compounded risk-free rate.
    dividend : float
        Continuously compounded dividend yield.
    days : int
        Calendar days to expiry (positive); the expiry is ``days / 365`` years.

    Returns
    -------
    StraddleQuote
        ``price_over_spot`` is about ``0.8 annual_vol sqrt(days / 365)`` for small rates.
    """
    s = _positive("spot", spot)
    vol = _positive("annual_vol", annual_vol)
    r = _number("rate", rate)
    q = _number("dividend", dividend)
    if isinstance(days, bool) or not isinstance(days, int | np.integer) or days < 1:
        raise ValueError(f"days must be a positive integer, got {days!r}")
    t = int(days) / _DAYS_PER_YEAR
    forward, discount, std = s * math.exp((r - q) * t), math.exp(-r * t), vol * math.sqrt(t)
    value = sum(
        ql.BlackCalculator(ql.PlainVanillaPayoff(kind, s), forward, std, discount).value()
        for kind in (ql.Option.Call, ql.Option.Put)
    )
    return StraddleQuote(price=value, price_over_spot=value / s, vol=vol, expiry=t)


# --------------------------------------------------------------------------------------------
# Chains and surfaces


def _validate_chain(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Checked copy of a chain: the four columns typed, rows numbered from 1 in the index."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(
            f"{source}: a chain must be a pandas DataFrame, got {type(frame).__name__}"
        )
    missing = [c for c in CHAIN_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(found: {', '.join(repr(str(c)) for c in frame.columns) or 'none'}; required: "
            f"{', '.join(CHAIN_COLUMNS)})"
        )
    if frame.empty:
        raise ValueError(f"{source}: the chain has no rows")
    errors: list[str] = []
    out = frame.copy()
    for column in ("expiry", "strike", "price"):
        values = pd.to_numeric(out[column], errors="coerce").astype(float)
        for row, raw, x in zip(out.index, out[column], values, strict=True):
            if pd.isna(raw) or str(raw).strip() == "":
                errors.append(f"row {row}, column {column!r}: missing value")
            elif not math.isfinite(x):
                errors.append(f"row {row}, column {column!r}: not a finite number ({raw!r})")
            elif x <= 0.0:
                errors.append(f"row {row}, column {column!r}: must be positive, got {raw!r}")
            elif column == "expiry" and x > MAX_EXPIRY:
                errors.append(f"row {row}, column 'expiry': more than {MAX_EXPIRY:g} years")
        out[column] = values
    kinds = out["type"].astype(str).str.strip().str.lower()
    for row, raw, kind in zip(out.index, out["type"], kinds, strict=True):
        if kind not in ("call", "put"):
            errors.append(f"row {row}, column 'type': must be 'call' or 'put', got {raw!r}")
    out["type"] = kinds
    if errors:
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise ValueError(f"{source}: " + "; ".join(errors[:10]) + more)
    return out


def _rows(frame: pd.DataFrame) -> Iterator[tuple[Contract, float, float]]:
    """(European contract, price, iv or NaN) of each row of a validated chain."""
    ivs = frame["iv"] if "iv" in frame.columns else pd.Series(math.nan, index=frame.index)
    for kind, strike, expiry, quoted, iv in zip(frame["type"], frame["strike"], frame["expiry"],
                                                 frame["price"], ivs, strict=True):
        option_type: OptionType = "call" if kind == "call" else "put"
        yield Contract(option_type, float(strike), float(expiry)), float(quoted), float(iv)


def read_chain(path: str | Path) -> pd.DataFrame:
    """Read and validate an option chain from a CSV file.

    Parameters
    ----------
    path : str or Path
        CSV with a header naming at least the columns ``expiry`` (years), ``strike``, ``type``
        (``call`` or ``put``, any case) and ``price``; column names are matched after stripping
        blanks and lower-casing, other columns are kept.

    Returns
    -------
    pandas.DataFrame
        The chain, indexed by row number (``row``: 1 for the first data row, i.e. line 2 of the
        file).

    Raises
    ------
    ValueError
        If a column is missing, the file has no rows, or a value is not a positive finite number
        (or not call/put); the message names the file, row number and column of each problem.
    FileNotFoundError
        If ``path`` does not exist.
    """
    p = Path(path)
    try:
        frame = pd.read_csv(p, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{p}: the file is empty") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="row")
    return _validate_chain(frame, str(p))


def implied_vol_surface(chain: pd.DataFrame, market: Market,
                        errors: Literal["keep", "raise"] = "keep") -> pd.DataFrame:
    """BSM implied volatility of every row of a chain.

    Parameters
    ----------
    chain : pandas.DataFrame
        European options with the columns of :func:`read_chain`.
    market : Market
        Spot, rate and dividend yield of the chain.
    errors : {"keep", "raise"}
        ``"keep"``: rows without an implied volatility (a price outside the no-arbitrage bounds
        or needing a volatility outside :data:`IV_BOUNDS`) get ``iv = NaN`` and the reason in
        ``iv_error``; ``"raise"``: a ValueError lists them by row.

    Returns
    -------
    pandas.DataFrame
        A copy of the chain with the columns ``iv`` (float) and ``iv_error`` (None where the
        implied volatility was found).

    Raises
    ------
    ValueError
        If the chain is invalid, no row has an implied volatility, or (``errors="raise"``) any
        row has none.
    """
    if errors not in ("keep", "raise"):
        raise ValueError(f"errors must be 'keep' or 'raise', got {errors!r}")
    out = _validate_chain(chain, "chain")
    ivs: list[float] = []
    reasons: list[str | None] = []
    for contract, quoted, _ in _rows(out):
        try:
            ivs.append(implied_vol(contract, market, quoted))
            reasons.append(None)
        except ValueError as exc:
            ivs.append(math.nan)
            reasons.append(str(exc))
    out["iv"] = ivs
    out["iv_error"] = reasons
    failed = [f"row {row}: {reason}" for row, reason in zip(out.index, reasons, strict=True)
              if reason is not None]
    if failed and (errors == "raise" or len(failed) == len(out)):
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise ValueError(
            f"no implied volatility for {len(failed)} of {len(out)} rows: "
            + "; ".join(failed[:5]) + more
        )
    return out


def _with_iv(chain: pd.DataFrame, market: Market) -> pd.DataFrame:
    """Rows of ``chain`` with a finite ``iv`` (computed when the column is absent)."""
    if "iv" not in chain.columns:
        chain = implied_vol_surface(chain, market)
    else:
        chain = _validate_chain(chain, "chain")
    iv = pd.to_numeric(chain["iv"], errors="coerce")
    return chain.loc[np.isfinite(iv) & (iv > 0.0)].assign(iv=iv)


def vol_surface(chain: pd.DataFrame) -> VolSurface:
    """Interpolated implied-volatility surface of a chain.

    Parameters
    ----------
    chain : pandas.DataFrame
        Output of :func:`implied_vol_surface` (rows with ``iv`` NaN are ignored; a call and a put
        at the same expiry and strike are averaged).

    Returns
    -------
    VolSurface
        Interpolation rules in :class:`VolSurface`.

    Raises
    ------
    ValueError
        If the chain has no ``iv`` column or no finite implied volatility.
    """
    if not isinstance(chain, pd.DataFrame) or "iv" not in chain.columns:
        raise ValueError("chain: an 'iv' column is required (run implied_vol_surface first)")
    frame = _validate_chain(chain, "chain")
    iv = pd.to_numeric(frame["iv"], errors="coerce")
    frame = frame.loc[np.isfinite(iv) & (iv > 0.0)].assign(iv=iv)
    if frame.empty:
        raise ValueError("chain: no row has a finite implied volatility")
    grid = frame.groupby(["expiry", "strike"], sort=True)["iv"].mean()
    expiries = tuple(float(t) for t in grid.index.get_level_values(0).unique())
    strikes = tuple(tuple(float(k) for k in grid.loc[t].index) for t in expiries)
    vols = tuple(tuple(float(v) for v in grid.loc[t].to_numpy()) for t in expiries)
    return VolSurface(expiries=expiries, strikes=strikes, vols=vols)


def heston_chain(market: Market, params: HestonParams, strikes: Sequence[float],
                 expiries: Sequence[float],
                 kind: Literal["otm", "call", "put", "both"] = "otm") -> pd.DataFrame:
    """Synthetic European chain priced under Heston (analytic engine, exact expiries).

    Parameters
    ----------
    market : Market
        Spot, rate and dividend yield.
    params : HestonParams
        The true parameters.
    strikes, expiries : sequence of float
        Grid of strikes and expiries (years); every combination is priced.
    kind : {"otm", "call", "put", "both"}
        Option types: out of the money (puts below the forward, calls at and above it), all
        calls, all puts, or both at every point.

    Returns
    -------
    pandas.DataFrame
        Columns ``expiry``, ``strike``, ``type``, ``price`` (the input of
        :func:`implied_vol_surface` and :func:`calibrate_heston`), indexed by row from 1.
    """
    if kind not in ("otm", "call", "put", "both"):
        raise ValueError(f"kind must be 'otm', 'call', 'put' or 'both', got {kind!r}")
    if not isinstance(params, HestonParams):
        raise ValueError(f"params must be HestonParams, got {type(params).__name__}")
    if len(strikes) == 0 or len(expiries) == 0:
        raise ValueError("strikes and expiries must not be empty")
    rows: list[dict[str, Any]] = []
    for t in expiries:
        forward = market.spot * math.exp((market.rate - market.dividend) * _positive("expiry", t))
        for k in strikes:
            if kind == "otm":
                types: tuple[OptionType, ...] = ("put",) if k < forward else ("call",)
            elif kind == "both":
                types = ("call", "put")
            else:
                types = (kind,)
            for option_type in types:
                contract = Contract(option_type, k, t)
                rows.append({"expiry": float(t), "strike": float(k), "type": option_type,
                             "price": _value(contract, market, params)})
    frame = pd.DataFrame(rows, columns=list(CHAIN_COLUMNS))
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="row")
    return frame


def _end_criteria_name(code: int) -> str:
    for name in ("None", "MaxIterations", "StationaryPoint", "StationaryFunctionValue",
                 "StationaryFunctionAccuracy", "ZeroGradientNorm", "FunctionEpsilonTooSmall",
                 "Unknown"):
        if getattr(ql.EndCriteria, name, None) == code:
            return name
    return str(code)


def calibrate_heston(chain: pd.DataFrame, market: Market,
                     initial: HestonParams | None = None,
                     max_iterations: int = 1000) -> HestonCalibration:
    """Fit Heston parameters to the implied volatilities of a chain.

    One ``HestonModelHelper`` per option (implied-volatility error; QuantLib prices the out of
    the money option of each strike), priced with ``AnalyticHestonEngine``, minimised by
    QuantLib's Levenberg-Marquardt. Expiries are rounded to 1/2920 year (module notes); the
    reported errors reprice every option at its exact expiry.

    Parameters
    ----------
    chain : pandas.DataFrame
        European options (columns of :func:`read_chain`), with or without an ``iv`` column;
        rows without a finite implied volatility are left out.
    market : Market
        Spot, rate and dividend yield.
    initial : HestonParams, optional
        Starting point. Default: ``v0 = theta =`` the mean squared implied volatility of the
        expiry nearest to 0.5 years, ``kappa = 1``, ``sigma = 0.5``, ``rho = -0.5``.
    max_iterations : int
        Iteration cap of the optimiser.

    Returns
    -------
    HestonCalibration
        Parameters and fit diagnostics.

    Raises
    ------
    ValueError
        If the chain is invalid, has fewer than five options with an implied volatility, or an
        expiry beyond 25 years (the calibration clock's range).
    """
    if not isinstance(market, Market):
        raise ValueError(f"market must be a Market, got {type(market).__name__}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or (
        max_iterations < 1
    ):
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    fitted = _with_iv(chain, market)
    if len(fitted) < 5:
        raise ValueError(
            f"chain: calibrating five Heston parameters needs at least 5 options with an implied "
            f"volatility, got {len(fitted)}"
        )
    c = CALIBRATION_CLOCK
    if float(fitted["expiry"].max()) > 25.0:
        raise ValueError("chain: calibration accepts expiries up to 25 years")
    if initial is None:
        nearest = fitted["expiry"].iloc[int(np.argmin(np.abs(fitted["expiry"] - 0.5)))]
        level = float(np.mean(fitted.loc[fitted["expiry"] == nearest, "iv"] ** 2))
        initial = HestonParams(v0=level, kappa=1.0, theta=level, sigma=0.5, rho=-0.5)
    elif not isinstance(initial, HestonParams):
        raise ValueError(f"initial must be HestonParams, got {type(initial).__name__}")
    start = _scaled_heston(initial, c)
    with _at_reference_date() as reference:
        rate, dividend = _curves(reference, market, c)
        spot = ql.QuoteHandle(ql.SimpleQuote(market.spot))
        process = ql.HestonProcess(rate, dividend, spot, start.v0, start.kappa, start.theta,
                                   start.sigma, start.rho)
        model = ql.HestonModel(process)
        engine = ql.AnalyticHestonEngine(model, *HESTON_INTEGRATION)
        helpers = []
        for contract, _, iv in _rows(fitted):
            days = max(1, round(contract.expiry * _DAYS_PER_YEAR * c))
            helper = ql.HestonModelHelper(
                ql.Period(days, ql.Days), ql.NullCalendar(), market.spot, contract.strike,
                ql.QuoteHandle(ql.SimpleQuote(iv / math.sqrt(c))), rate, dividend,
                ql.BlackCalibrationHelper.ImpliedVolError,
            )
            helper.setPricingEngine(engine)
            helpers.append(helper)
        end = ql.EndCriteria(max_iterations, 100, 1e-10, 1e-10, 1e-10)
        model.calibrate(helpers, ql.LevenbergMarquardt(1e-10, 1e-10, 1e-10), end)
        v0, kappa, theta = float(model.v0()), float(model.kappa()), float(model.theta())
        sigma, rho = float(model.sigma()), float(model.rho())
        outcome = int(model.endCriteria())
        evaluations = int(model.functionEvaluation())
    try:
        params = HestonParams(v0=v0 * c, kappa=kappa * c, theta=theta * c, sigma=sigma * c,
                              rho=max(-1.0, min(1.0, rho)))
    except ValueError as exc:
        raise ValueError(f"chain: the calibration ended at invalid Heston parameters ({exc}); "
                         f"try another initial guess") from None
    errors = []
    for contract, _, iv in _rows(fitted):
        try:
            model_iv = implied_vol(contract, market, _value(contract, market, params))
        except ValueError:
            model_iv = math.nan
        errors.append(model_iv - iv)
    err = np.asarray(errors, dtype=float)
    return HestonCalibration(
        params=params,
        initial=initial,
        rmse_iv=float(np.sqrt(np.mean(err**2))),
        max_abs_iv_error=float(np.max(np.abs(err))),
        n_options=len(fitted),
        evaluations=evaluations,
        end_criteria=_end_criteria_name(outcome),
        converged=bool(ql.EndCriteria.succeeded(outcome)),
    )

