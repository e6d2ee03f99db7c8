"""GARCH refit benchmark: warm-started against cold fits on the same data (issue 5).

Run from the checkout::

    .venv/bin/python bench/bench_garch.py                        # 22 symbols, 20 sessions, 3 specs
    .venv/bin/python bench/bench_garch.py --symbols SPX AAPL --spec GARCH:t --sessions 5
    .venv/bin/python bench/bench_garch.py --json garch.json

For each of the last ``--sessions`` sessions up to 2018-12-31 and each symbol, the returns from the
start of the ``--years`` history up to and including the session are fitted three ways, one right
after the other so that they share the machine's load: cold (arch's ``fit``: grid-searched
starting values), warm (:func:`models.garch.fit_garch` from the previous session's warm
parameters: SLSQP in BHHH-whitened coordinates) and, for the diagnosis, arch's own ``fit`` from the
same previous parameters (``refine=False``). The previous parameters for the first session come
from a cold fit of the session before it. Then the whole universe is refitted for the last
session serially in this process and on ``--workers`` worker processes. Nothing asserts on speed;
see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from models.garch import GarchFit, GarchSpec, fit_garch  # noqa: E402
from pipelines.sources import load_replay_panel  # noqa: E402

END = pd.Timestamp("2018-12-31")
DEFAULT_SPECS = ("GARCH:t", "EGARCH:t", "GJR:skewt")
TOL = 1e-4


def parse_spec(text: str) -> GarchSpec:
    """``VOL:DIST`` (e.g. ``GJR:skewt``) as a :class:`GarchSpec`."""
    vol, _, dist = text.partition(":")
    return GarchSpec(vol=vol.upper(), dist=dist or "t")  # type: ignore[arg-type]


def returns_panel(symbols: list[str] | None, years: int) -> dict[str, pd.Series]:
    """Decimal log returns of the adjusted close per symbol, the last ``years`` up to END."""
    panel = load_replay_panel()
    panel = panel.loc[panel["session"] <= END]
    wide = panel.pivot(index="session", columns="symbol", values="adj_close")
    wide = wide.iloc[-(years * 252 + 1) :]
    out: dict[str, pd.Series] = {}
    for symbol in symbols or sorted(wide.columns):
        if symbol not in wide.columns:
            raise SystemExit(f"unknown symbol {symbol!r}; known: {', '.join(sorted(wide.columns))}")
        r = np.log(wide[symbol].dropna()).diff().dropna()
        if not r.empty and r.index[-1] == END:
            out[symbol] = r.rename("ret_1")
    return out


@dataclass
class SpecFigures:
    """Accumulated figures of one spec."""

    spec: str
    cold_s: float = 0.0
    warm_s: float = 0.0
    arch_warm_s: float = 0.0
    fits: int = 0
    nit: dict[str, list[int]] = field(default_factory=lambda: {"cold": [], "warm": [], "arch": []})
    nfev: dict[str, list[int]] = field(default_factory=lambda: {"cold": [], "warm": [], "arch": []})
    diffs: list[float] = field(default_factory=list)  # loglik_warm - loglik_cold
    arch_diffs: list[float] = field(default_factory=list)
    warm_started: int = 0
    not_converged: int = 0

    def add(self, kind: str, fit: GarchFit, seconds: float) -> None:
        self.nit[kind].append(fit.nit)
        self.nfev[kind].append(fit.nfev)
        if kind == "cold":
            self.cold_s += seconds
        elif kind == "warm":
            self.warm_s += seconds
        else:
            self.arch_warm_s += seconds

    def summary(self) -> dict[str, Any]:
        d = np.abs(np.asarray(self.diffs))
        a = np.abs(np.asarray(self.arch_diffs))
        return {
            "spec": self.spec,
            "fits": self.fits,
            "cold_s": self.cold_s,
            "warm_s": self.warm_s,
            "ratio_cold_warm": self.cold_s / self.warm_s if self.warm_s else float("nan"),
            "max_abs_dloglik": float(d.max()) if d.size else float("nan"),
            "share_within_1e-4": float((d <= TOL).mean()) if d.size else float("nan"),
            "warm_higher_loglik": int((np.asarray(self.diffs) > 0).sum()),
            "warm_started": self.warm_started,
            "not_converged": self.not_converged,
            "arch_warm_s": self.arch_warm_s,
            "ratio_cold_arch_warm": (
                self.cold_s / self.arch_warm_s if self.arch_warm_s else float("nan")
            ),
            "arch_warm_max_abs_dloglik": float(a.max()) if a.size else float("nan"),
            "mean_nit": {k: float(np.mean(v)) if v else float("nan") for k, v in self.nit.items()},
            "mean_nfev": {
                k: float(np.mean(v)) if v else float("nan") for k, v in self.nfev.items()
            },
        }


def timed_fit(r: pd.Series, spec: GarchSpec, start: np.ndarray | None, refine: bool = True
              ) -> tuple[GarchFit, float]:
    t0 = time.perf_counter()
    fit = fit_garch(r, spec, start, refine=refine)
    return fit, time.perf_counter() - t0


def bench_spec(data: dict[str, pd.Series], spec: GarchSpec, sessions: int, arch_warm: bool
               ) -> SpecFigures:
    """Cold vs warm (vs arch's warm) fits of every symbol over the last ``sessions`` sessions."""
    fig = SpecFigures(f"{spec.vol}-{spec.dist}")
    for r in data.values():
        prev = fit_garch(r.iloc[: len(r) - sessions], spec).starting_values
        for k in range(sessions - 1, -1, -1):
            y = r.iloc[: len(r) - k]
            cold, tc = timed_fit(y, spec, None)
            warm, tw = timed_fit(y, spec, prev)
            fig.add("cold", cold, tc)
            fig.add("warm", warm, tw)
            fig.diffs.append(warm.loglik - cold.loglik)
            fig.warm_started += warm.warm_start
            fig.not_converged += (not warm.converged) + (not cold.converged)
            if arch_warm:
                plain, ta = timed_fit(y, spec, prev, refine=False)
                fig.add("arch", plain, ta)
                fig.arch_diffs.append(plain.loglik - cold.loglik)
            fig.fits += 1
            prev = warm.starting_values
    return fig


def _refit_one(job: tuple[pd.Series, GarchSpec, np.ndarray | None]) -> float:
    r, spec, start = job
    return fit_garch(r, spec, start).loglik


def _ready(_: int) -> int:
    return os.getpid()


def universe_refit(data: dict[str, pd.Series], spec: GarchSpec, workers: int
                   ) -> dict[str, float]:
    """Wall seconds to refit every symbol for the last session, cold and warm, 1 vs N processes.

    Warm fits start from a cold fit of the previous session (the stage's stored parameters).
    The pool is started and warmed up (one trivial task per worker) before the clock starts;
    its start-up is reported separately.
    """
    prev = {s: fit_garch(r.iloc[:-1], spec).starting_values for s, r in data.items()}
    jobs: dict[str, list[tuple[pd.Series, GarchSpec, np.ndarray | None]]] = {
        "cold": [(r, spec, None) for r in data.values()],
        "warm": [(r, spec, prev[s]) for s, r in data.items()],
    }
    out: dict[str, float] = {}
    for kind, js in jobs.items():
        t0 = time.perf_counter()
        for j in js:
            _refit_one(j)
        out[f"{kind}_serial_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_ready, range(workers)))
        out["pool_startup_s"] = time.perf_counter() - t0
        for kind, js in jobs.items():
            t0 = time.perf_counter()
            list(pool.map(_refit_one, js, chunksize=1))
            out[f"{kind}_{workers}proc_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", nargs="+", help="symbols (default: every replay symbol)")
    ap.add_argument(
        "--spec", nargs="+", default=list(DEFAULT_SPECS), help="VOL:DIST, e.g. GJR:skewt"
    )
    ap.add_argument("--sessions", type=int, default=20, help="last N sessions up to 2018-12-31")
    ap.add_argument("--years", type=int, default=10, help="years of returns (default 10)")
    ap.add_argument("--workers", type=int, default=2, help="processes of the universe refit")
    ap.add_argument("--no-arch-warm", action="store_true", help="skip arch's own warm start")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    specs = [parse_spec(s) for s in args.spec]
    data = returns_panel(args.symbols, args.years)
    nobs = [len(r) for r in data.values()]
    print(f"GARCH refit bench: {len(data)} symbols, {min(nobs)}-{max(nobs)} returns each, last "
          f"{args.sessions} sessions to {END.date()}; {os.cpu_count()} CPUs "
          f"(load {os.getloadavg()[0]:.2f}); python {platform.python_version()}")
    results: dict[str, Any] = {"symbols": list(data), "sessions": args.sessions, "specs": [],
                               "universe": {}}
    header = (f"{'spec':<13}{'fits':>5}{'cold s':>9}{'warm s':>9}{'ratio':>7}{'max|dLL|':>10}"
              f"{'<=1e-4':>8}{'nit c/w':>10}{'nfev c/w':>11}{'arch warm s':>12}{'ratio':>7}"
              f"{'nit':>6}{'max|dLL|':>10}")
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        summary = bench_spec(data, spec, args.sessions, not args.no_arch_warm).summary()
        summary["bench_s"] = time.perf_counter() - t0
        results["specs"].append(summary)
        ni, nf = summary["mean_nit"], summary["mean_nfev"]
        rows.append(
            f"{summary['spec']:<13}{summary['fits']:>5}{summary['cold_s']:>9.2f}"
            f"{summary['warm_s']:>9.2f}{summary['ratio_cold_warm']:>7.2f}"
            f"{summary['max_abs_dloglik']:>10.1e}{summary['share_within_1e-4']:>8.1%}"
            f"{ni['cold']:>5.1f}/{ni['warm']:<4.1f}{nf['cold']:>6.0f}/{nf['warm']:<4.0f}"
            f"{summary['arch_warm_s']:>12.2f}{summary['ratio_cold_arch_warm']:>7.2f}"
            f"{ni['arch']:>6.1f}{summary['arch_warm_max_abs_dloglik']:>10.1e}"
        )
        print(f"  {summary['spec']} done in {summary['bench_s']:.0f} s", flush=True)
    print()
    print(header)
    print("\n".join(rows))
    for s in results["specs"]:
        print(f"RATIO warm/cold GARCH refit {s['spec']}: cold/warm = {s['ratio_cold_warm']:.2f}x "
              f"(max |loglik_warm - loglik_cold| {s['max_abs_dloglik']:.1e}, "
              f"{s['share_within_1e-4']:.1%} within 1e-4, warm higher in "
              f"{s['warm_higher_loglik']}/{s['fits']})")
    print()
    print(f"whole-universe refit of {END.date()} ({len(data)} symbols), wall seconds:")
    print(f"{'spec':<13}{'cold 1':>9}{f'cold {args.workers}p':>9}{'warm 1':>9}"
          f"{f'warm {args.workers}p':>9}{'pool start':>11}")
    for spec in specs:
        u = universe_refit(data, spec, args.workers)
        name = f"{spec.vol}-{spec.dist}"
        results["universe"][name] = u
        print(f"{name:<13}{u['cold_serial_s']:>9.2f}{u[f'cold_{args.workers}proc_s']:>9.2f}"
              f"{u['warm_serial_s']:>9.2f}{u[f'warm_{args.workers}proc_s']:>9.2f}"
              f"{u['pool_startup_s']:>11.2f}")
    print("\nThe machine is shared (CI runs beside it): timings are noisy, compare several runs.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
