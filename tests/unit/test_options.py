"""Option pricing, implied volatility, chains and Heston calibration against independent references.

References never come from :mod:`models.options` itself: published values (Hull, *Options,
Futures and Other Derivatives*), closed forms computed here (Black-Scholes-Merton and its Greeks),
Fourier integrals of the Heston and Merton characteristic functions (Lewis, 2001), and a
Cox-Ross-Rubinstein tree for American options.
"""

from __future__ import annotations

import argparse
import cmath
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import quad

from models.options import (
    BSMParams,
    Contract,
    HestonParams,
    Market,
    MertonParams,
    OptionType,
    VolSurface,
    calibrate_heston,
    garch_straddle,
    heston_chain,
    implied_vol,
    implied_vol_surface,
    price,
    read_chain,
    vol_surface,
)
from pipelines.options_cli import add_options_parser, cmd_options

HULL = Market(spot=42.0, rate=0.10)  # Hull's example: S=42, K=40, r=10%, sigma=20%, T=0.5
HULL_CALL = Contract("call", 40.0, 0.5)
HULL_PUT = Contract("put", 40.0, 0.5)
TRUE_HESTON = HestonParams(v0=0.04, kappa=1.5, theta=0.06, sigma=0.5, rho=-0.6)
CHAIN_MARKET = Market(spot=100.0, rate=0.03, dividend=0.01)
STRIKES = (80.0, 90.0, 100.0, 110.0, 120.0)
EXPIRIES = (0.25, 0.5, 1.0, 1.5, 2.0)

Phi = Callable[[complex], complex]


def n_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def n_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------------------------- references


def bsm(kind: str, s: float, k: float, r: float, q: float, vol: float, t: float
        ) -> dict[str, float]:
    """Black-Scholes-Merton price and Greeks (theta per year, vega and rho per 1.00)."""
    sq = vol * math.sqrt(t)
    d1 = (math.log(s / k) + (r - q + 0.5 * vol * vol) * t) / sq
    d2 = d1 - sq
    fs, dk = s * math.exp(-q * t), k * math.exp(-r * t)
    pdf = n_pdf(d1)
    common = -fs * pdf * vol / (2.0 * math.sqrt(t))
    if kind == "call":
        value = fs * n_cdf(d1) - dk * n_cdf(d2)
        delta = math.exp(-q * t) * n_cdf(d1)
        theta = common - r * dk * n_cdf(d2) + q * fs * n_cdf(d1)
        rho = t * dk * n_cdf(d2)
    else:
        value = dk * n_cdf(-d2) - fs * n_cdf(-d1)
        delta = -math.exp(-q * t) * n_cdf(-d1)
        theta = common + r * dk * n_cdf(-d2) - q * fs * n_cdf(-d1)
        rho = -t * dk * n_cdf(-d2)
    return {"price": value, "delta": delta, "gamma": math.exp(-q * t) * pdf / (s * sq),
            "vega": fs * pdf * math.sqrt(t), "theta": theta, "rho": rho}


def lewis_call(phi: Phi, s: float, k: float, r: float, q: float, t: float) -> float:
    """European call from the characteristic function of ``ln(S_T / S_0) - (r - q) t``."""
    x = math.log(s / k) + (r - q) * t

    def integrand(u: float) -> float:
        return (cmath.exp(1j * u * x) * phi(u - 0.5j)).real / (u * u + 0.25)

    integral = quad(integrand, 0.0, math.inf, limit=500, epsabs=1e-12, epsrel=1e-10)[0]
    scale = math.sqrt(s * k) * math.exp(-0.5 * (r + q) * t) / math.pi
    return s * math.exp(-q * t) - scale * integral


def heston_phi(p: HestonParams, t: float) -> Phi:
    """Heston characteristic function (Albrecher et al.'s "little trap" form)."""

    def phi(u: complex) -> complex:
        b = p.kappa - p.rho * p.sigma * 1j * u
        d = cmath.sqrt(b * b + p.sigma**2 * (1j * u + u * u))
        g = (b - d) / (b + d)
        e = cmath.exp(-d * t)
        c = p.kappa * p.theta / p.sigma**2 * ((b - d) * t - 2.0 * cmath.log((1 - g * e) / (1 - g)))
        dd = (b - d) / p.sigma**2 * (1 - e) / (1 - g * e)
        return cmath.exp(c + dd * p.v0)

    return phi


def merton_phi(p: MertonParams, t: float) -> Phi:
    """Merton (1976) characteristic function, drift compensated for the jumps."""
    k = math.exp(p.jump_mean + 0.5 * p.jump_vol**2) - 1.0

    def phi(u: complex) -> complex:
        jump = cmath.exp(1j * u * p.jump_mean - 0.5 * p.jump_vol**2 * u * u) - 1.0
        return cmath.exp(t * (-0.5 * p.vol**2 * (u * u + 1j * u) - 1j * u * p.jump_intensity * k
                              + p.jump_intensity * jump))

    return phi


def crr_american(kind: str, s: float, k: float, r: float, q: float, vol: float, t: float,
                 steps: int = 2000) -> float:
    """Cox-Ross-Rubinstein binomial tree for an American option."""
    dt = t / steps
    up = math.exp(vol * math.sqrt(dt))
    p = (math.exp((r - q) * dt) - 1.0 / up) / (up - 1.0 / up)
    disc = math.exp(-r * dt)
    sign = 1.0 if kind == "call" else -1.0
    values = np.maximum(sign * (s * up ** (steps - 2.0 * np.arange(steps + 1)) - k), 0.0)
    for i in range(steps - 1, -1, -1):
        spots = s * up ** (i - 2.0 * np.arange(i + 1))
        values = np.maximum(disc * (p * values[:-1] + (1 - p) * values[1:]),
                            sign * (spots - k))
    return float(values[0])


# ---------------------------------------------------------------------------------- pricing


def test_hull_european_example() -> None:
    call = price(HULL_CALL, HULL, BSMParams(0.20))
    put = price(HULL_PUT, HULL, BSMParams(0.20))
    assert round(call.price, 2) == 4.76  # Hull, Example 15.6
    assert round(put.price, 2) == 0.81
    assert call.price == pytest.approx(bsm("call", 42, 40, 0.1, 0.0, 0.2, 0.5)["price"], abs=1e-10)
    assert (call.model, call.style, call.engine) == ("bsm", "european", "AnalyticEuropeanEngine")


@pytest.mark.parametrize("expiry", [0.5, 0.1234, 1.0 / 365.0, 2.7183])
@pytest.mark.parametrize("kind", ["call", "put"])
def test_bsm_exact_at_expiries_between_whole_days(kind: OptionType, expiry: float) -> None:
    market = Market(spot=100.0, rate=0.04, dividend=0.015)
    quote = price(Contract(kind, 105.0, expiry), market, BSMParams(0.3))
    ref = bsm(kind, 100.0, 105.0, 0.04, 0.015, 0.3, expiry)
    for name in ("price", "delta", "gamma", "vega", "theta", "rho"):
        assert getattr(quote, name) == pytest.approx(ref[name], rel=1e-9, abs=1e-12), name


def test_put_call_parity() -> None:
    market = Market(spot=95.0, rate=0.05, dividend=0.02)
    for strike in (70.0, 95.0, 130.0):
        c = price(Contract("call", strike, 0.75), market, BSMParams(0.25)).price
        p = price(Contract("put", strike, 0.75), market, BSMParams(0.25)).price
        parity = 95.0 * math.exp(-0.02 * 0.75) - strike * math.exp(-0.05 * 0.75)
        assert c - p == pytest.approx(parity, abs=1e-10)


def test_american_bsm() -> None:
    european_call = price(HULL_CALL, HULL, BSMParams(0.2))
    american_call = price(Contract("call", 40.0, 0.5, "american"), HULL, BSMParams(0.2))
    assert american_call.price == pytest.approx(european_call.price, abs=1e-6)
    assert american_call.delta == pytest.approx(european_call.delta, rel=1e-3)
    american_put = price(Contract("put", 40.0, 0.5, "american"), HULL, BSMParams(0.2))
    assert american_put.price > price(HULL_PUT, HULL, BSMParams(0.2)).price + 0.05
    # Hull's American put (S=50, K=50, r=10%, sigma=40%, T=5 months): 4.28 with many tree steps
    put = price(Contract("put", 50.0, 5.0 / 12.0, "american"), Market(50.0, 0.1), BSMParams(0.4))
    assert round(put.price, 2) == 4.28
    assert put.price == pytest.approx(crr_american("put", 50, 50, 0.1, 0.0, 0.4, 5 / 12), abs=1e-3)
    assert american_put.bumped == ("delta", "gamma", "vega", "theta", "rho")


def test_american_call_with_dividends_against_tree() -> None:
    market = Market(spot=100.0, rate=0.02, dividend=0.06)
    quote = price(Contract("call", 90.0, 1.3, "american"), market, BSMParams(0.3))
    tree = crr_american("call", 100.0, 90.0, 0.02, 0.06, 0.3, 1.3)
    assert quote.price == pytest.approx(tree, abs=2e-3)
    assert quote.price > bsm("call", 100.0, 90.0, 0.02, 0.06, 0.3, 1.3)["price"] + 0.1


@pytest.mark.parametrize("expiry", [2.0 / 365.0, 0.5, 1.3])
def test_heston_matches_fourier_reference(expiry: float) -> None:
    cases: tuple[tuple[OptionType, float], ...] = (("call", 110.0), ("put", 85.0))
    for kind, strike in cases:
        quote = price(Contract(kind, strike, expiry), CHAIN_MARKET, TRUE_HESTON)
        call = lewis_call(heston_phi(TRUE_HESTON, expiry), 100.0, strike, 0.03, 0.01, expiry)
        ref = call if kind == "call" else (
            call - 100.0 * math.exp(-0.01 * expiry) + strike * math.exp(-0.03 * expiry)
        )
        assert quote.price == pytest.approx(ref, rel=1e-8)


def test_heston_tends_to_bsm_as_vol_of_vol_vanishes() -> None:
    params = HestonParams(v0=0.04, kappa=1.0, theta=0.04, sigma=1e-4, rho=-0.5)
    quote = price(HULL_CALL, HULL, params)
    ref = bsm("call", 42, 40, 0.1, 0.0, 0.2, 0.5)
    assert quote.price == pytest.approx(ref["price"], abs=1e-4)
    # every Heston European Greek is a finite difference; vega is a parallel shift of the vol
    assert quote.bumped == ("delta", "gamma", "vega", "theta", "rho")
    for name in ("delta", "gamma", "vega", "theta", "rho"):
        assert getattr(quote, name) == pytest.approx(ref[name], rel=2e-3), name


def test_heston_american_tends_to_bsm_american() -> None:
    params = HestonParams(v0=0.04, kappa=1.0, theta=0.04, sigma=1e-3, rho=0.0)
    contract = Contract("put", 40.0, 0.5, "american")
    quote = price(contract, HULL, params)
    assert quote.engine == "FdHestonVanillaEngine"
    assert quote.price == pytest.approx(crr_american("put", 42, 40, 0.1, 0.0, 0.2, 0.5), abs=3e-3)
    assert quote.price > bsm("put", 42, 40, 0.1, 0.0, 0.2, 0.5)["price"]
    assert quote.bumped == ("vega", "rho")
    assert quote.delta == pytest.approx(price(contract, HULL, BSMParams(0.2)).delta, abs=2e-3)


def test_merton_without_jumps_is_bsm() -> None:
    for contract in (HULL_CALL, HULL_PUT):
        quote = price(contract, HULL, MertonParams(0.2, 0.0, -0.2, 0.3))
        ref = bsm(contract.option_type, 42, 40, 0.1, 0.0, 0.2, 0.5)
        assert quote.model == "merton"
        for name in ("price", "delta", "gamma", "vega", "theta", "rho"):
            assert getattr(quote, name) == pytest.approx(ref[name], rel=1e-9), name


@pytest.mark.parametrize("expiry", [0.5, 1.3])
def test_merton_matches_fourier_reference(expiry: float) -> None:
    params = MertonParams(vol=0.2, jump_intensity=0.8, jump_mean=-0.1, jump_vol=0.15)
    quote = price(Contract("call", 110.0, expiry), CHAIN_MARKET, params)
    ref = lewis_call(merton_phi(params, expiry), 100.0, 110.0, 0.03, 0.01, expiry)
    assert quote.price == pytest.approx(ref, rel=1e-9)
    assert quote.price > bsm("call", 100, 110, 0.03, 0.01, 0.2, expiry)["price"]


def test_merton_greeks_match_finite_differences() -> None:
    params = MertonParams(vol=0.2, jump_intensity=0.8, jump_mean=-0.1, jump_vol=0.15)
    contract = Contract("put", 95.0, 0.8)
    quote = price(contract, CHAIN_MARKET, params)
    assert quote.bumped == ("theta",)

    def value(market: Market = CHAIN_MARKET, p: MertonParams = params, t: float = 0.8) -> float:
        return price(Contract("put", 95.0, t), market, p).price

    h = 1e-3
    s = CHAIN_MARKET.spot
    up = value(Market(s + h, 0.03, 0.01))
    down = value(Market(s - h, 0.03, 0.01))
    assert quote.delta == pytest.approx((up - down) / (2 * h), rel=1e-6)
    assert quote.gamma == pytest.approx((up - 2 * quote.price + down) / h**2, rel=1e-3)
    e = 1e-5
    vega = (value(p=MertonParams(0.2 + e, 0.8, -0.1, 0.15))
            - value(p=MertonParams(0.2 - e, 0.8, -0.1, 0.15))) / (2 * e)
    assert quote.vega == pytest.approx(vega, rel=1e-7)
    rho = (value(Market(s, 0.03 + e, 0.01)) - value(Market(s, 0.03 - e, 0.01))) / (2 * e)
    assert quote.rho == pytest.approx(rho, rel=1e-7)
    theta = -(value(t=0.8 + h) - value(t=0.8 - h)) / (2 * h)
    assert quote.theta == pytest.approx(theta, rel=1e-3)


def test_merton_american() -> None:
    params = MertonParams(vol=0.2, jump_intensity=1.0, jump_mean=-0.1, jump_vol=0.15)
    european_call = price(HULL_CALL, HULL, params).price
    american_call = price(Contract("call", 40.0, 0.5, "american"), HULL, params)
    assert american_call.engine == "FdBatesVanillaEngine"
    assert american_call.price == pytest.approx(european_call, rel=2e-4)
    european_put = price(HULL_PUT, HULL, params).price
    american_put = price(Contract("put", 40.0, 0.5, "american"), HULL, params).price
    assert american_put > european_put + 0.05


@pytest.mark.parametrize("params", [TRUE_HESTON, MertonParams(0.2, 0.8, -0.1, 0.15)])
def test_price_is_continuous_across_whole_days(params: HestonParams | MertonParams) -> None:
    # 182.49 and 182.51 days round to different whole days: the model clock must absorb it
    t0, t1 = 182.49 / 365, 182.51 / 365
    q0 = price(Contract("call", 105.0, t0), CHAIN_MARKET, params)
    q1 = price(Contract("call", 105.0, t1), CHAIN_MARKET, params)
    assert q1.price - q0.price == pytest.approx(-q0.theta * (t1 - t0), rel=0.05)


def test_bsm_greeks() -> None:
    quote = price(HULL_CALL, HULL, BSMParams(0.2))
    assert quote.delta == pytest.approx(0.7791, abs=1e-4)  # N(d1), d1 = 0.7693 (Hull)
    h = 1e-4
    up = price(HULL_CALL, Market(42.0 + h, 0.1), BSMParams(0.2)).price
    down = price(HULL_CALL, Market(42.0 - h, 0.1), BSMParams(0.2)).price
    assert quote.delta == pytest.approx((up - down) / (2 * h), rel=1e-7)
    assert quote.bumped == ()


def test_bumped_greeks_stay_local_for_short_expiries() -> None:
    # one day: a 1% spot bump would be 1.4 standard deviations; the bump shrinks with vol sqrt(T)
    t = 1.0 / 365.0
    quote = price(Contract("call", 42.0, t, "american"), HULL, BSMParams(0.2))
    assert "gamma" in quote.bumped
    ref = bsm("call", 42, 42, 0.1, 0.0, 0.2, t)
    for name in ("price", "delta", "gamma", "vega", "theta", "rho"):
        assert getattr(quote, name) == pytest.approx(ref[name], rel=2e-3), name


def test_evaluation_date_is_restored_and_irrelevant() -> None:
    import QuantLib as ql

    settings = ql.Settings.instance()
    before = settings.evaluationDate
    try:
        settings.evaluationDate = ql.Date(15, 6, 2031)
        first = price(HULL_CALL, HULL, TRUE_HESTON).price
        assert settings.evaluationDate == ql.Date(15, 6, 2031)
        settings.evaluationDate = ql.Date(1, 3, 2012)
        assert price(HULL_CALL, HULL, TRUE_HESTON).price == first
        assert settings.evaluationDate == ql.Date(1, 3, 2012)
    finally:
        settings.evaluationDate = before


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Contract("call", -1.0, 0.5), "strike must be positive"),
        (lambda: Contract("straddle", 40.0, 0.5), "option_type"),  # type: ignore[arg-type]
        (lambda: Contract("call", 40.0, 0.0), "expiry must be positive"),
        (lambda: Contract("call", 40.0, 0.5, "bermudan"), "style"),  # type: ignore[arg-type]
        (lambda: Market(0.0, 0.1), "spot must be positive"),
        (lambda: Market(42.0, math.nan), "rate must be finite"),
        (lambda: BSMParams(-0.2), "vol must be positive"),
        (lambda: HestonParams(0.04, 1.0, 0.04, 0.5, -1.5), r"rho must be in \[-1, 1\]"),
        (lambda: MertonParams(0.2, -1.0, 0.0, 0.1), "jump_intensity must be >= 0"),
    ],
)
def test_invalid_specifications(build: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


# ---------------------------------------------------------------------------------- implied vol


@pytest.mark.parametrize("style", ["european", "american"])
def test_implied_vol_round_trip(style: str) -> None:
    for kind in ("call", "put"):
        contract = Contract(kind, 45.0, 0.7, style)  # type: ignore[arg-type]
        quoted = price(contract, HULL, BSMParams(0.27)).price
        assert implied_vol(contract, HULL, quoted) == pytest.approx(0.27, abs=1e-8)


def test_implied_vol_european_matches_closed_form_price() -> None:
    quoted = bsm("put", 42, 40, 0.1, 0.0, 0.35, 0.5)["price"]
    assert implied_vol(HULL_PUT, HULL, quoted) == pytest.approx(0.35, abs=1e-9)


def test_implied_vol_rejects_prices_outside_no_arbitrage_bounds() -> None:
    # the call is worth at least S - K e^{-rT} = 42 - 40 e^{-0.05} = 3.951
    with pytest.raises(ValueError, match=r"below the no-arbitrage lower bound 3\.95"):
        implied_vol(HULL_CALL, HULL, 3.0)
    with pytest.raises(ValueError, match="lower bound"):  # American put below intrinsic 10
        implied_vol(Contract("put", 50.0, 0.5, "american"), Market(40.0, 0.0), 9.5)
    with pytest.raises(ValueError, match="above the no-arbitrage upper bound 42 "):
        implied_vol(HULL_CALL, HULL, 43.0)
    with pytest.raises(ValueError, match="price must be positive"):
        implied_vol(HULL_CALL, HULL, -1.0)


# ---------------------------------------------------------------------------------- chains


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_chain(tmp_path: Path) -> None:
    csv = _write(tmp_path / "chain.csv",
                 "Expiry, Strike ,type,price,volume\n0.5,40,CALL,4.76,10\n0.5,40,put,0.81,3\n")
    chain = read_chain(csv)
    assert list(chain.columns) == ["expiry", "strike", "type", "price", "volume"]
    assert list(chain.index) == [1, 2]
    assert list(chain["type"]) == ["call", "put"]
    assert chain["price"].dtype == float


def test_read_chain_names_bad_rows_and_missing_columns(tmp_path: Path) -> None:
    bad_price = _write(tmp_path / "bad.csv", "expiry,strike,type,price\n"
                       "0.5,40,call,4.76\n0.5,45,call,2.0\n0.5,50,call,-1.5\n")
    with pytest.raises(ValueError, match=r"bad\.csv: row 3, column 'price': must be positive"):
        read_chain(bad_price)
    missing = _write(tmp_path / "missing.csv", "expiry,type,price\n0.5,call,4.76\n")
    with pytest.raises(ValueError, match=r"missing\.csv: missing column\(s\) 'strike'"):
        read_chain(missing)
    several = _write(tmp_path / "several.csv", "expiry,strike,type,price\n"
                     "0,40,call,1\n0.5,abc,straddle,1\n")
    with pytest.raises(ValueError) as info:
        read_chain(several)
    message = str(info.value)
    assert "row 1, column 'expiry'" in message
    assert "row 2, column 'strike'" in message
    assert "row 2, column 'type'" in message
    with pytest.raises(ValueError, match="empty"):
        read_chain(_write(tmp_path / "empty.csv", ""))


def test_heston_chain_and_implied_vol_surface() -> None:
    chain = heston_chain(CHAIN_MARKET, TRUE_HESTON, STRIKES, EXPIRIES)
    assert len(chain) == 25
    forward = 100.0 * math.exp(0.02 * 0.25)
    assert list(chain.loc[chain["expiry"] == 0.25, "type"]) == [
        "put" if k < forward else "call" for k in STRIKES
    ]
    with_iv = implied_vol_surface(chain, CHAIN_MARKET)
    assert with_iv["iv_error"].isna().all()
    for kind, strike, expiry, quoted, iv in zip(with_iv["type"], with_iv["strike"],
                                                with_iv["expiry"], with_iv["price"], with_iv["iv"],
                                                strict=True):
        ref = bsm(str(kind), 100.0, float(strike), 0.03, 0.01, float(iv), float(expiry))
        assert ref["price"] == pytest.approx(float(quoted), rel=1e-9)
    both = heston_chain(CHAIN_MARKET, TRUE_HESTON, (90.0,), (0.5,), kind="both")
    assert list(both["type"]) == ["call", "put"]
    parity = 100.0 * math.exp(-0.01 * 0.5) - 90.0 * math.exp(-0.03 * 0.5)
    assert both["price"].iloc[0] - both["price"].iloc[1] == pytest.approx(parity, abs=1e-9)
    # the Heston skew (rho < 0): implied volatility falls with the strike
    one_year = with_iv.loc[with_iv["expiry"] == 1.0, "iv"].to_numpy()
    assert np.all(np.diff(one_year) < 0)


def test_implied_vol_surface_keeps_or_raises_on_bad_rows() -> None:
    chain = pd.DataFrame({"expiry": [0.5, 0.5], "strike": [40.0, 40.0], "type": ["call", "call"],
                          "price": [4.76, 3.0]}, index=pd.RangeIndex(1, 3, name="row"))
    kept = implied_vol_surface(chain, HULL)
    assert kept.loc[1, "iv"] == pytest.approx(0.2, abs=1e-3)
    assert kept.loc[1, "iv_error"] is None
    assert math.isnan(kept.loc[2, "iv"])
    assert "lower bound" in kept.loc[2, "iv_error"]
    message = "no implied volatility for 1 of 2 rows: row 2: price 3 is at or below"
    with pytest.raises(ValueError, match=message):
        implied_vol_surface(chain, HULL, errors="raise")
    with pytest.raises(ValueError, match="for 1 of 1 rows"):  # nothing left: raises anyway
        implied_vol_surface(chain.loc[[2]], HULL)


def test_vol_surface_interpolation() -> None:
    chain = pd.DataFrame({
        "expiry": [0.5, 0.5, 0.5, 1.0, 1.0],
        "strike": [90.0, 100.0, 100.0, 90.0, 110.0],
        "type": ["put", "put", "call", "put", "call"],
        "price": [1.0] * 5,
        "iv": [0.30, 0.24, 0.26, 0.28, 0.20],
    })
    surface = vol_surface(chain)
    assert isinstance(surface, VolSurface)
    assert surface.expiries == (0.5, 1.0)
    assert surface.vol(0.5, 100.0) == pytest.approx(0.25)  # call and put averaged
    assert surface.vol(0.5, 95.0) == pytest.approx(0.275)  # linear in strike
    assert surface.vol(0.5, 50.0) == pytest.approx(0.30)  # flat beyond the strikes
    assert surface.vol(0.1, 90.0) == pytest.approx(0.30)  # flat before the first expiry
    assert surface.vol(3.0, 110.0) == pytest.approx(0.20)  # flat after the last
    # linear total variance at 0.75y, strike 90: (0.3^2 * 0.5 + 0.28^2 * 1.0) / 2 = w * 0.75
    assert surface.vol(0.75, 90.0) == pytest.approx(math.sqrt((0.045 + 0.0784) / 2 / 0.75))
    with pytest.raises(ValueError, match="'iv' column"):
        vol_surface(chain.drop(columns="iv"))


# ---------------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def heston_surface() -> pd.DataFrame:
    chain = heston_chain(CHAIN_MARKET, TRUE_HESTON, STRIKES, EXPIRIES)
    return implied_vol_surface(chain, CHAIN_MARKET)


def _relative_errors(fitted: HestonParams, true: HestonParams) -> dict[str, float]:
    return {name: abs(getattr(fitted, name) / getattr(true, name) - 1.0)
            for name in ("v0", "kappa", "theta", "sigma", "rho")}


def test_calibration_recovers_heston_parameters(heston_surface: pd.DataFrame) -> None:
    initial = HestonParams(v0=0.1, kappa=0.5, theta=0.1, sigma=0.3, rho=-0.2)
    fit = calibrate_heston(heston_surface, CHAIN_MARKET, initial)
    assert fit.converged
    assert fit.n_options == 25
    assert fit.initial == initial
    assert max(_relative_errors(fit.params, TRUE_HESTON).values()) < 1e-5
    assert fit.rmse_iv < 1e-7


def test_calibration_with_noisy_quotes(heston_surface: pd.DataFrame) -> None:
    # 0.25 vol point of deterministic noise: the parameters move by a few percent at most
    noise = 0.0025 * np.sin(2.1 * np.arange(len(heston_surface)))
    noisy = heston_surface.assign(iv=heston_surface["iv"] + noise)
    fit = calibrate_heston(noisy, CHAIN_MARKET)  # default initial guess
    assert fit.converged
    assert max(_relative_errors(fit.params, TRUE_HESTON).values()) < 0.10
    assert fit.rmse_iv < float(np.sqrt(np.mean(noise**2)))


def test_calibration_needs_five_options() -> None:
    chain = heston_chain(CHAIN_MARKET, TRUE_HESTON, (90.0, 100.0), (0.5, 1.0))
    with pytest.raises(ValueError, match="at least 5 options"):
        calibrate_heston(chain, CHAIN_MARKET)


# ---------------------------------------------------------------------------------- straddle


def test_garch_straddle() -> None:
    quote = garch_straddle(spot=100.0, annual_vol=0.2, rate=0.02, dividend=0.01)
    t = 30 / 365
    assert quote.expiry == pytest.approx(t)
    ref = (bsm("call", 100, 100, 0.02, 0.01, 0.2, t)["price"]
           + bsm("put", 100, 100, 0.02, 0.01, 0.2, t)["price"])
    assert quote.price == pytest.approx(ref, rel=1e-10)
    assert quote.price_over_spot == pytest.approx(quote.price / 100.0)
    assert quote.price_over_spot == pytest.approx(0.8 * 0.2 * math.sqrt(t), rel=0.02)
    for vol in (0.1, 0.5):
        small = garch_straddle(50.0, vol, 0.0, days=10)
        assert small.price_over_spot == pytest.approx(0.8 * vol * math.sqrt(10 / 365), rel=0.02)
    with pytest.raises(ValueError, match="annual_vol must be"):
        garch_straddle(100.0, math.nan, 0.02)
    with pytest.raises(ValueError, match="days must be a positive integer"):
        garch_straddle(100.0, 0.2, 0.02, days=0)


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afterbell")
    sub = p.add_subparsers(dest="command")
    add_options_parser(sub)
    return p


HULL_ARGS = ["options", "price", "--type", "call", "--spot", "42", "--strike", "40", "--rate",
             "0.1", "--dividend", "0", "--vol", "0.2", "--expiry", "0.5"]


def test_cli_price_json(parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
                        ) -> None:
    assert cmd_options(parser.parse_args([*HULL_ARGS, "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["price"], 2) == 4.76
    assert out["delta"] == pytest.approx(0.7791, abs=1e-4)
    assert {"gamma", "vega", "theta", "rho"} <= set(out)
    assert out["inputs"] == {"type": "call", "spot": 42.0, "strike": 40.0, "rate": 0.1,
                             "dividend": 0.0, "expiry": 0.5, "model": "bsm",
                             "style": "european", "vol": 0.2}


def test_cli_price_models_and_table(parser: argparse.ArgumentParser,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = [*HULL_ARGS, "--model", "merton", "--jump-intensity", "0", "--json"]
    assert cmd_options(parser.parse_args(args)) == 0
    assert round(json.loads(capsys.readouterr().out)["price"], 2) == 4.76
    args = [*HULL_ARGS, "--model", "heston", "--sigma-v", "0.0001", "--json"]
    assert cmd_options(parser.parse_args(args)) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["price"], 2) == 4.76
    assert out["inputs"]["v0"] == out["inputs"]["theta"] == pytest.approx(0.04)
    assert cmd_options(parser.parse_args(HULL_ARGS)) == 0
    table = capsys.readouterr().out
    assert "4.759422" in table
    assert "delta" in table and "rho" in table


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--type", "straddle"], "argument --type: invalid choice"),
        (["--strike", "-40"], "argument --strike: must be positive"),
        (["--rho-v", "2"], "argument --rho-v: must be in"),
    ],
)
def test_cli_rejects_bad_arguments_at_parse_time(
    parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str], change: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as info:
        parser.parse_args([*HULL_ARGS, *change])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--kappa", "2"], "argument --kappa: only used with --model heston"),
        (["--expiry", "150"], "argument --expiry: must be at most 100 years"),
        (["--model", "heston", "--vol", "0.2", "--theta", "0.04", "--v0", "0.04",
          "--jump-vol", "0.1"], "argument --jump-vol: only used with --model merton"),
    ],
)
def test_cli_rejects_bad_arguments(
    parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str], change: list[str],
    message: str,
) -> None:
    assert cmd_options(parser.parse_args([*HULL_ARGS, *change])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"afterbell options price: error: {message}")
    assert len(err.splitlines()) == 1


def test_cli_vol_required_for_bsm(parser: argparse.ArgumentParser,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in HULL_ARGS if a not in ("--vol", "0.2")]
    assert cmd_options(parser.parse_args(args)) == 2
    assert "argument --vol: required with --model bsm" in capsys.readouterr().err


def test_cli_calibrate(parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str],
                       heston_surface: pd.DataFrame, tmp_path: Path) -> None:
    csv = tmp_path / "chain.csv"
    heston_surface[["expiry", "strike", "type", "price"]].to_csv(csv, index=False)
    base = ["options", "calibrate", "--chain", str(csv), "--spot", "100", "--rate", "0.03",
            "--dividend", "0.01"]
    assert cmd_options(parser.parse_args([*base, "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    heston = out["heston"]
    for cli_name, name in (("v0", "v0"), ("kappa", "kappa"), ("theta", "theta"),
                           ("sigma_v", "sigma"), ("rho_v", "rho")):
        assert heston[cli_name] == pytest.approx(getattr(TRUE_HESTON, name), rel=1e-4)
    assert out["surface"]["rows"] == 25 and out["surface"]["without_iv"] == []
    assert [s["expiry"] for s in out["surface"]["expiries"]] == list(EXPIRIES)
    assert cmd_options(parser.parse_args(base)) == 0
    assert "heston: v0=0.04" in capsys.readouterr().out
    missing = ["options", "calibrate", "--chain", str(tmp_path / "nope.csv"), "--spot", "100",
               "--rate", "0.03"]
    assert cmd_options(parser.parse_args(missing)) == 2
    err = capsys.readouterr().err
    assert err.startswith("afterbell options calibrate: error: argument --chain:")


def test_cli_module_imports_lazily() -> None:
    import subprocess
    import sys

    code = ("import sys, pipelines.options_cli; "
            "print('QuantLib' in sys.modules, 'models.options' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.split() == ["False", "False"]
