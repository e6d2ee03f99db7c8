"""``afterbell options``: price options, calibrate Heston to a chain, ingest chains into the lake.

Three subcommands::

    afterbell options price --type call --spot 42 --strike 40 --rate 0.1 --vol 0.2 --expiry 0.5
        [--dividend Q] [--model bsm|heston|merton] [--style european|american] [--json]
    afterbell options calibrate --chain chain.csv --spot 100 --rate 0.03 [--dividend Q] [--json]
    afterbell options ingest-chain --session 2024-01-05 --symbol SPY --chain chain.csv
        --spot 470 --rate 0.05 [--dividend Q] [--json]

``price`` and ``calibrate`` work on their inputs alone. ``ingest-chain`` stores the chain, with
its market, in the session's partition of the lake table ``option_chains`` under
``$AFTERBELL_HOME/lake`` (:func:`pipelines.chains.ingest_chain`: an upsert by symbol, so it is
safe to repeat); the nightly step :func:`pipelines.chains.calibrate_session` turns a session's
chains into its ``iv_surface`` and ``heston`` partitions.

``--json`` prints one JSON object (the inputs are echoed under ``"inputs"``, because the Heston
parameter ``theta`` and the Greek ``theta`` share a name); without it a short table (one line for
``ingest-chain``). Bad arguments (a date that is not an NYSE session, a chain file that is
missing or invalid, named with its rows) exit with status 2 and one
``afterbell options ...: error: argument --NAME: ...`` line, as argparse does. QuantLib,
:mod:`models.options` and :mod:`pipelines.chains` are imported inside :func:`cmd_options`, so
building the parser stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import date
from typing import Any

__all__ = ["add_options_parser", "cmd_options"]

#: Heston defaults when --kappa, --sigma-v, --rho-v are omitted (v0 and theta default to vol**2).
HESTON_DEFAULTS: dict[str, float] = {"kappa": 2.0, "sigma_v": 0.3, "rho_v": -0.7}
#: Merton defaults when --jump-intensity, --jump-mean, --jump-vol are omitted.
MERTON_DEFAULTS: dict[str, float] = {"jump_intensity": 0.1, "jump_mean": -0.1, "jump_vol": 0.15}

_HESTON_ARGS = ("v0", "kappa", "theta", "sigma_v", "rho_v")
_MERTON_ARGS = ("jump_intensity", "jump_mean", "jump_vol")
#: Field names of models.options mapped to the command-line options that set them.
_OPTION_OF_FIELD = {
    "option_type": "--type", "strike": "--strike", "expiry": "--expiry", "style": "--style",
    "spot": "--spot", "rate": "--rate", "dividend": "--dividend", "vol": "--vol", "v0": "--v0",
    "kappa": "--kappa", "theta": "--theta", "sigma": "--sigma-v", "rho": "--rho-v",
    "jump_intensity": "--jump-intensity", "jump_mean": "--jump-mean", "jump_vol": "--jump-vol",
    "symbol": "--symbol",
}


class _ArgumentError(Exception):
    """A bad argument found after parsing: ``option`` names it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"argument {option}: {message}")


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _correlation(text: str) -> float:
    value = _finite(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [-1, 1], got {text!r}")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (expected YYYY-MM-DD): {text!r}") from None


def _add_market(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spot", required=True, type=_positive, metavar="S",
                   help="price of the underlying")
    p.add_argument("--rate", required=True, type=_finite, metavar="R",
                   help="risk-free rate, continuously compounded decimal (0.05 is 5%%)")
    p.add_argument("--dividend", type=_finite, default=0.0, metavar="Q",
                   help="dividend yield, continuously compounded decimal (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_options_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``options`` command (subcommands ``price``, ``calibrate``, ``ingest-chain``).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers`` of the ``afterbell`` parser.
    """
    opt = subparsers.add_parser(
        "options", help="price options (BSM, Heston, Merton), calibrate Heston to a chain or "
        "ingest a chain into the lake",
        description="Price European/American vanilla options with QuantLib, compute a chain's "
        "implied volatilities and calibrate Heston to them, or store a chain in the lake.",
    )
    osub = opt.add_subparsers(dest="options_command", required=True, metavar="SUBCOMMAND")

    pr = osub.add_parser(
        "price", help="price one option with its Greeks",
        description="Price one vanilla option. Greeks: delta dV/dS, gamma d2V/dS2, vega dV/dvol "
        "per 1.00 of volatility, theta dV/dt per calendar year, rho dV/dr per 1.00 of rate.",
    )
    pr.add_argument("--type", required=True, choices=("call", "put"), dest="option_type",
                    help="call or put")
    pr.add_argument("--strike", required=True, type=_positive, metavar="K", help="strike")
    pr.add_argument("--expiry", required=True, type=_positive, metavar="T",
                    help="time to expiry in years (Actual/365)")
    _add_market(pr)
    pr.add_argument("--vol", type=_positive, metavar="V",
                    help="volatility, annualised decimal: required for bsm and merton (the "
                    "diffusion volatility); for heston the default of --v0 and --theta is vol**2")
    pr.add_argument("--model", choices=("bsm", "heston", "merton"), default="bsm",
                    help="pricing model (default bsm)")
    pr.add_argument("--style", choices=("european", "american"), default="european",
                    help="exercise style (default european)")
    heston = pr.add_argument_group("heston (with --model heston)")
    heston.add_argument("--v0", type=_positive, help="initial variance (default vol**2)")
    heston.add_argument("--kappa", type=_positive,
                        help=f"mean reversion per year (default {HESTON_DEFAULTS['kappa']:g})")
    heston.add_argument("--theta", type=_positive, help="long-run variance (default vol**2)")
    heston.add_argument("--sigma-v", type=_positive, dest="sigma_v",
                        help=f"vol of variance (default {HESTON_DEFAULTS['sigma_v']:g})")
    heston.add_argument("--rho-v", type=_correlation, dest="rho_v",
                        help="spot/variance correlation in [-1, 1] (default "
                        f"{HESTON_DEFAULTS['rho_v']:g})")
    merton = pr.add_argument_group("merton (with --model merton)")
    merton.add_argument("--jump-intensity", type=_non_negative, dest="jump_intensity",
                        help="expected jumps per year (default "
                        f"{MERTON_DEFAULTS['jump_intensity']:g}; 0 is BSM)")
    merton.add_argument("--jump-mean", type=_finite, dest="jump_mean",
                        help=f"mean log jump size (default {MERTON_DEFAULTS['jump_mean']:g})")
    merton.add_argument("--jump-vol", type=_non_negative, dest="jump_vol",
                        help="standard deviation of the log jump size (default "
                        f"{MERTON_DEFAULTS['jump_vol']:g})")
    pr.set_defaults(options_prog=pr.prog)

    cal = osub.add_parser(
        "calibrate", help="implied-volatility surface of a chain and calibrated Heston parameters",
        description="Read a CSV chain of European options (columns expiry in years, strike, type "
        "call/put, price), compute the BSM implied volatilities and calibrate Heston to them.",
    )
    cal.add_argument("--chain", required=True, metavar="FILE", help="CSV option chain")
    _add_market(cal)
    cal.set_defaults(options_prog=cal.prog)

    ing = osub.add_parser(
        "ingest-chain", help="store a symbol's option chain in the lake for one session",
        description="Validate a CSV chain of European options (columns expiry in years, strike, "
        "type call/put, price) and store it, with its spot, rate and dividend, in the session's "
        "partition of the lake table option_chains. Re-ingesting a symbol replaces its rows for "
        "that session; other symbols are kept.",
    )
    ing.add_argument("--session", required=True, type=_iso_date, metavar="YYYY-MM-DD",
                     help="NYSE session the chain was quoted on")
    ing.add_argument("--symbol", required=True, metavar="SYMBOL", help="underlying (e.g. SPY)")
    ing.add_argument("--chain", required=True, metavar="FILE", help="CSV option chain")
    _add_market(ing)
    ing.set_defaults(options_prog=ing.prog)


def _error(args: argparse.Namespace, message: str) -> int:
    prog = getattr(args, "options_prog", "afterbell options")
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def _as_argument_error(exc: ValueError) -> str:
    """``models.options`` messages start with a field name: name the option instead."""
    text = str(exc)
    head, _, rest = text.partition(" ")
    option = _OPTION_OF_FIELD.get(head)
    return f"argument {option}: {rest}" if option is not None and rest else text


def cmd_options(args: argparse.Namespace) -> int:
    """Run ``afterbell options price``, ``calibrate`` or ``ingest-chain``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of the parser built by :func:`add_options_parser`.

    Returns
    -------
    int
        0 on success, 2 on a bad argument (one line on stderr).
    """
    try:
        if args.options_command == "price":
            return _price(args)
        if args.options_command == "calibrate":
            return _calibrate(args)
        if args.options_command == "ingest-chain":
            return _ingest_chain(args)
    except _ArgumentError as exc:
        return _error(args, str(exc))
    except ValueError as exc:
        return _error(args, _as_argument_error(exc))
    return _error(args, f"unknown options subcommand {args.options_command!r}")


def _model_params(args: argparse.Namespace) -> tuple[Any, dict[str, float]]:
    from models.options import BSMParams, HestonParams, MertonParams

    for name in _HESTON_ARGS if args.model != "heston" else ():
        if getattr(args, name) is not None:
            raise _ArgumentError("--" + name.replace("_", "-"), "only used with --model heston")
    for name in _MERTON_ARGS if args.model != "merton" else ():
        if getattr(args, name) is not None:
            raise _ArgumentError("--" + name.replace("_", "-"), "only used with --model merton")
    if args.model == "heston":
        if args.vol is None and (args.v0 is None or args.theta is None):
            raise _ArgumentError("--vol", "required with --model heston unless --v0 and --theta "
                                 "are both given")
        values: dict[str, float] = {} if args.vol is None else {"vol": args.vol}
        for name in _HESTON_ARGS:
            given = getattr(args, name)
            if given is None:
                given = args.vol**2 if name in ("v0", "theta") else HESTON_DEFAULTS[name]
            values[name] = float(given)
        params = HestonParams(v0=values["v0"], kappa=values["kappa"], theta=values["theta"],
                              sigma=values["sigma_v"], rho=values["rho_v"])
        return params, values
    if args.vol is None:
        raise _ArgumentError("--vol", f"required with --model {args.model}")
    if args.model == "merton":
        values = {"vol": float(args.vol)}
        for name in _MERTON_ARGS:
            given = getattr(args, name)
            values[name] = given if given is not None else MERTON_DEFAULTS[name]
        return MertonParams(**values), values
    return BSMParams(args.vol), {"vol": args.vol}


def _price(args: argparse.Namespace) -> int:
    from models.options import Contract, Market, price

    params, values = _model_params(args)
    contract = Contract(args.option_type, args.strike, args.expiry, args.style)
    market = Market(args.spot, args.rate, args.dividend)
    quote = price(contract, market, params)
    inputs: dict[str, Any] = {
        "type": args.option_type, "spot": args.spot, "strike": args.strike, "rate": args.rate,
        "dividend": args.dividend, "expiry": args.expiry, "model": args.model,
        "style": args.style, **values,
    }
    greeks = {g: getattr(quote, g) for g in ("delta", "gamma", "vega", "theta", "rho")}
    if args.json:
        out = {"price": quote.price, **greeks, "model": quote.model, "style": quote.style,
               "engine": quote.engine, "bumped": list(quote.bumped), "inputs": inputs}
        print(json.dumps(out))
        return 0
    described = " ".join(f"{k}={v:g}" for k, v in values.items())
    print(f"{args.model} {args.style} {args.option_type}  S={args.spot:g} K={args.strike:g} "
          f"T={args.expiry:g} r={args.rate:g} q={args.dividend:g} {described}")
    units = {"vega": "per 1.00 vol", "theta": "per year", "rho": "per 1.00 rate"}
    print(f"  {'price':<6} {quote.price:>14.6f}   {quote.engine}")
    for name, value in greeks.items():
        note = units.get(name, "")
        if name in quote.bumped:
            note = (note + ", " if note else "") + "finite difference"
        print(f"  {name:<6} {value:>14.6f}   {note}".rstrip())
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from models.options import (
        Market,
        calibrate_heston,
        implied_vol_surface,
        read_chain,
        vol_surface,
    )

    market = Market(args.spot, args.rate, args.dividend)
    try:
        chain = read_chain(args.chain)
        with_iv = implied_vol_surface(chain, market)
    except (OSError, ValueError) as exc:
        raise _ArgumentError("--chain", str(exc)) from None
    surface = vol_surface(with_iv)
    slices = []
    for t in surface.expiries:
        ivs = with_iv.loc[np.isclose(with_iv["expiry"], t), "iv"].dropna()
        forward = args.spot * math.exp((args.rate - args.dividend) * t)
        slices.append({"expiry": t, "options": len(ivs), "iv_min": float(ivs.min()),
                       "iv_max": float(ivs.max()), "iv_atm_forward": surface.vol(t, forward)})
    failed = [{"row": int(row), "error": str(err)}
              for row, err in zip(with_iv.index.tolist(), with_iv["iv_error"], strict=True)
              if err is not None]
    try:
        fit = calibrate_heston(with_iv, market)
    except ValueError as exc:
        raise _ArgumentError("--chain", str(exc)) from None
    p = fit.params
    heston = {"v0": p.v0, "kappa": p.kappa, "theta": p.theta, "sigma_v": p.sigma, "rho_v": p.rho,
              "feller": p.feller, "rmse_iv": fit.rmse_iv, "max_abs_iv_error": fit.max_abs_iv_error,
              "options": fit.n_options, "evaluations": fit.evaluations,
              "end_criteria": fit.end_criteria, "converged": fit.converged}
    if args.json:
        out = {"inputs": {"chain": str(args.chain), "spot": args.spot, "rate": args.rate,
                          "dividend": args.dividend},
               "surface": {"rows": len(with_iv), "without_iv": failed, "expiries": slices},
               "heston": heston}
        print(json.dumps(out))
        return 0
    print(f"chain {args.chain}: {len(with_iv)} rows, {len(failed)} without implied volatility")
    for item in failed:
        print(f"  row {item['row']}: {item['error']}")
    print(f"  {'expiry':>8} {'options':>7} {'iv_min':>8} {'iv_max':>8} {'iv_atmf':>8}")
    for s in slices:
        print(f"  {s['expiry']:>8.4f} {s['options']:>7d} {s['iv_min']:>8.4f} {s['iv_max']:>8.4f} "
              f"{s['iv_atm_forward']:>8.4f}")
    print(f"heston: v0={p.v0:.6g} kappa={p.kappa:.6g} theta={p.theta:.6g} sigma_v={p.sigma:.6g} "
          f"rho_v={p.rho:.6g} (Feller {'met' if p.feller else 'violated'})")
    print(f"  rmse iv {fit.rmse_iv:.3g}, max |iv error| {fit.max_abs_iv_error:.3g} over "
          f"{fit.n_options} options; {fit.end_criteria} after {fit.evaluations} evaluations"
          f"{'' if fit.converged else ' (NOT converged)'}")
    return 0


def _ingest_chain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.calendar import require_session
    from pipelines.chains import CHAINS_TABLE, ChainFileError, ingest_chain
    from pipelines.settings import Settings

    try:
        session = require_session(args.session)
    except ValueError as exc:
        raise _ArgumentError("--session", str(exc)) from None
    try:
        lake = Settings.from_env().lake_dir
    except ValueError as exc:  # the environment, not an argument: afterbell's exit status 1
        raise RuntimeError(str(exc)) from None
    try:
        done = ingest_chain(lake, session, args.symbol, args.chain, spot=args.spot,
                            rate=args.rate, dividend=args.dividend)
    except ChainFileError as exc:
        raise _ArgumentError("--chain", str(exc)) from None
    except OSError as exc:  # the chain file cannot be read; a failed lake write is not --chain's
        if exc.filename is None or Path(exc.filename) != Path(args.chain):
            raise
        raise _ArgumentError("--chain", str(exc)) from None
    if args.json:
        out = {"table": CHAINS_TABLE, "session": done.session.isoformat(), "symbol": done.symbol,
               "rows": done.rows, "replaced": done.replaced, "path": str(done.path),
               "inputs": {"chain": str(args.chain), "spot": args.spot, "rate": args.rate,
                          "dividend": args.dividend}}
        print(json.dumps(out))
        return 0
    print(f"{CHAINS_TABLE} {done.session.isoformat()} {done.symbol}: {done.rows} options from "
          f"{args.chain} (S={args.spot:g} r={args.rate:g} q={args.dividend:g}; replaced "
          f"{done.replaced} rows) -> {done.path}")
    return 0
