"""Backtest of a one-day GARCH(1,1)-t Value-at-Risk on the S&P 500 (1999-2018).

``afterbell risk var-backtest`` runs :func:`run_var_backtest` and writes ``docs/var_backtest.md``.
The pure functions below take a return series and return frames; :func:`run_var_backtest` is the
thin adapter that loads the data, times the run and writes the markdown.

The protocol:

- Data: the S&P 500 index shipped with arch (``arch.data.sp500.load()``, "Adj Close",
  1999-01-04 .. 2018-12-31; no network), daily log returns ``log(P_t / P_{t-1})``.
- Model: GARCH(1,1) with a constant mean and Student-t innovations (:mod:`models.garch`),
  estimated on a **rolling** window of the ``window`` (default 1,000) returns strictly before the
  first session it forecasts, re-estimated every ``refit_every`` sessions (warm-started from the
  previous estimate). Between refits the parameters stay fixed and the variance is filtered
  forward with the new returns (:func:`models.garch.filter_garch`, causal: no full-sample
  backcast or bounds, unlike arch's ``model.fix``).
- Forecast for session ``t + 1`` at the close of ``t`` (returns up to ``t`` only):
  ``sigma_{t+1}`` from the filter, then the log-return VaR ``-(mu + sigma_{t+1} q)`` with ``q``
  the ``a``-quantile of the unit-variance Student-t with the fitted ``nu`` (GARCH-t) or of the
  last ``window`` standardised residuals (filtered historical simulation, FHS), at 99% and 95%.
- Reported as simple-return losses ``1 - exp(-VaR_log)`` (fractions of the index's value); the
  exception ``simple_t < -VaR_t`` is the same event as ``log_t < -VaR_log,t``.
- Backtest (:func:`models.risk.var_backtest`): consecutive non-overlapping 250-session windows
  anchored at the last session, each with its 99% exceptions, Kupiec and Christoffersen p-values
  and Basel traffic-light zone, plus the whole sample.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FORECAST_COLUMNS",
    "LEVELS",
    "backtest_table",
    "garch_var_forecasts",
    "load_sp500_returns",
    "render_markdown",
    "run_var_backtest",
    "summary_table",
]

log = logging.getLogger("afterbell.var_backtest")

#: VaR confidence levels forecast; the first is the one backtested per window.
LEVELS: tuple[float, float] = (0.99, 0.95)

#: Columns of :func:`garch_var_forecasts`.
FORECAST_COLUMNS: tuple[str, ...] = (
    "ret", "ret_simple", "mu", "sigma", "nu", "persistence", "fit_end",
    "var_99", "var_95", "fhs_99", "fhs_95",
)

_PERIODS_PER_YEAR = 252
_COMMAND = "afterbell risk var-backtest"


def _level_tag(level: float) -> str:
    return f"{round(level * 100):d}"


def load_sp500_returns(start: str | None = None, end: str | None = None) -> pd.Series:
    """Daily log returns of the S&P 500 shipped with arch (1999-2018), optionally sliced.

    Parameters
    ----------
    start, end : str, optional
        First and last session of the returns (inclusive); default the whole file.

    Returns
    -------
    pandas.Series
        ``log(P_t / P_{t-1})`` of "Adj Close", indexed by session, named ``"SPX"``.
    """
    from arch.data import sp500

    prices = sp500.load()["Adj Close"].astype(float).dropna().sort_index()
    returns = pd.Series(np.log(prices.to_numpy()), index=prices.index).diff().dropna()
    returns = returns.rename("SPX")
    returns.index.name = "session"
    return returns.loc[start:end]


def garch_var_forecasts(
    returns: pd.Series,
    *,
    window: int = 1000,
    refit_every: int = 21,
    expanding: bool = False,
) -> pd.DataFrame:
    """One-session-ahead GARCH(1,1)-t and FHS VaR (99%, 95%) after the first ``window`` returns.

    Parameters
    ----------
    returns : pandas.Series
        Daily log returns indexed by session (finite).
    window : int
        Returns in each estimation window (at least 100); also the number of standardised
        residuals behind the FHS quantile.
    refit_every : int
        Sessions between re-estimations; parameters are fixed in between.
    expanding : bool
        Estimate on all returns before the block instead of the last ``window``.

    Returns
    -------
    pandas.DataFrame
        Indexed by the forecast (target) session, columns :data:`FORECAST_COLUMNS`: the realised
        log and simple returns, the fitted ``mu`` and the filtered ``sigma`` (decimal, daily),
        ``nu``, ``persistence`` (``alpha + beta``), ``fit_end`` (last session the parameters were
        estimated on), and the VaRs as simple-return losses. Row ``t`` uses returns before ``t``
        only.
    """
    from models.garch import GarchFit, GarchSpec, filter_garch, fit_garch
    from models.risk import filtered_historical_var, student_t_var_es

    if not isinstance(returns, pd.Series):
        raise TypeError(f"returns must be a pandas Series, got {type(returns).__name__}")
    if window < 100:
        raise ValueError(f"window must be >= 100, got {window}")
    if refit_every < 1:
        raise ValueError(f"refit_every must be >= 1, got {refit_every}")
    r = returns.astype(float)
    values = r.to_numpy()
    if not np.isfinite(values).all():
        raise ValueError("returns contain non-finite values")
    n = len(r)
    if n <= window:
        raise ValueError(f"need more than window={window} returns, got {n}")
    spec = GarchSpec(vol="GARCH", dist="t", p=1, o=0, q=1, mean="Constant", horizon=1)
    out = np.full((n - window, len(FORECAST_COLUMNS)), np.nan)
    fit_end: list[Any] = []
    previous: GarchFit | None = None
    for s in range(window, n, refit_every):
        e = min(s + refit_every, n)  # targets s .. e-1, origins s-1 .. e-2
        lo = 0 if expanding else s - window
        sample = r.iloc[lo:s]
        fit = fit_garch(sample, spec, None if previous is None else previous.starting_values)
        if previous is not None and not fit.converged:
            cold = fit_garch(sample, spec)
            fit = cold if cold.converged or cold.loglik > fit.loglik else fit
        previous = fit
        feats = filter_garch(r.iloc[lo : e - 1], fit)
        sigma = feats["garch_forecast"].to_numpy()[s - 1 - lo :] / math.sqrt(_PERIODS_PER_YEAR)
        z = feats["garch_std_resid"].to_numpy()
        mu = fit.params["mu"] / 100.0
        nu = fit.params["nu"]
        unit = {lv: student_t_var_es(lv, nu, standardised=True)[0] for lv in LEVELS}
        rows = slice(s - window, e - window)
        block = out[rows]
        block[:, 0] = values[s:e]
        block[:, 1] = np.expm1(values[s:e])
        block[:, 2] = mu
        block[:, 3] = sigma
        block[:, 4] = nu
        block[:, 5] = fit.params["alpha[1]"] + fit.params["beta[1]"]
        for lv, col in zip(LEVELS, (7, 8), strict=True):
            block[:, col] = -np.expm1(-(-mu + sigma * unit[lv]))
        for i, j in enumerate(range(s, e)):  # FHS on the last `window` residuals up to j-1
            first = max(j - window, lo) - lo
            zw = z[first : j - lo]
            rw = values[first + lo : j]
            for lv, col in zip(LEVELS, (9, 10), strict=True):
                est = filtered_historical_var(rw, float(sigma[i]), zw, lv, mu=mu)
                block[i, col] = -math.expm1(-est.var)
        fit_end += [r.index[s - 1]] * (e - s)
    frame = pd.DataFrame(out, index=r.index[window:], columns=list(FORECAST_COLUMNS))
    frame["fit_end"] = pd.Index(fit_end)
    return frame


def backtest_table(forecasts: pd.DataFrame, window: int = 250) -> pd.DataFrame:
    """Per-window backtest of the 99% GARCH-t VaR with the 95% exceptions alongside.

    Parameters
    ----------
    forecasts : pandas.DataFrame
        Output of :func:`garch_var_forecasts`.
    window : int
        Sessions per window.

    Returns
    -------
    pandas.DataFrame
        :func:`models.risk.var_backtest` of ``var_99`` (columns
        :data:`models.risk.BACKTEST_COLUMNS`, rows ``"1"``, ``"2"``, ... and ``"all"``) with
        ``exceptions_95``, ``expected_95`` and ``rate_95`` of ``var_95`` on the same windows.
    """
    from models.risk import var_backtest

    r = forecasts["ret_simple"]
    table = var_backtest(r, forecasts["var_99"], 0.99, window)
    at95 = var_backtest(r, forecasts["var_95"], 0.95, window)
    table["exceptions_95"] = at95["exceptions"].to_numpy()
    table["expected_95"] = at95["expected"].to_numpy()
    table["rate_95"] = at95["rate"].to_numpy()
    return table


def summary_table(forecasts: pd.DataFrame) -> pd.DataFrame:
    """Whole-sample backtest of each model and level (GARCH-t and FHS at 99% and 95%).

    Returns
    -------
    pandas.DataFrame
        Columns ``model, level, n, exceptions, expected, rate, kupiec_p, ind_p, cc_p, zone``.
    """
    from models.risk import var_backtest

    rows = []
    r = forecasts["ret_simple"]
    for model, prefix in (("GARCH(1,1)-t", "var"), ("GARCH(1,1) FHS", "fhs")):
        for lv in LEVELS:
            col = f"{prefix}_{_level_tag(lv)}"
            whole = var_backtest(r, forecasts[col], lv, window=len(r)).iloc[-1]
            rows.append({
                "model": model, "level": lv, "n": int(whole["n"]),
                "exceptions": int(whole["exceptions"]), "expected": float(whole["expected"]),
                "rate": float(whole["rate"]), "kupiec_p": float(whole["kupiec_p"]),
                "ind_p": float(whole["ind_p"]), "cc_p": float(whole["cc_p"]),
                "zone": whole["zone"],
            })
    return pd.DataFrame(rows)


def _meta(
    returns: pd.Series,
    forecasts: pd.DataFrame,
    *,
    window: int,
    refit_every: int,
    expanding: bool,
    backtest_window: int,
) -> dict[str, Any]:
    fits = forecasts.drop_duplicates("fit_end")
    return {
        **_exception_figures(forecasts),
        "command": _COMMAND,
        "data": "S&P 500 index, arch.data.sp500 (Adj Close), daily log returns",
        "sample_start": returns.index[0],
        "sample_end": returns.index[-1],
        "n_returns": len(returns),
        "first_forecast": forecasts.index[0],
        "last_forecast": forecasts.index[-1],
        "n_forecasts": len(forecasts),
        "window": window,
        "estimation": "expanding" if expanding else "rolling",
        "refit_every": refit_every,
        "n_fits": len(fits),
        "backtest_window": backtest_window,
        "nu_median": float(fits["nu"].median()),
        "nu_min": float(fits["nu"].min()),
        "nu_max": float(fits["nu"].max()),
        "persistence_median": float(fits["persistence"].median()),
        "var_99_median": float(forecasts["var_99"].median()),
        "var_99_min": float(forecasts["var_99"].min()),
        "var_99_max": float(forecasts["var_99"].max()),
        "var_99_max_session": forecasts["var_99"].idxmax(),
        "summary": summary_table(forecasts),
    }


def _exception_figures(forecasts: pd.DataFrame, gap: int = 5) -> dict[str, Any]:
    """Clusters of 99% exceptions (two or more, each within ``gap`` sessions of the previous) and
    the mean ratio of the FHS to the GARCH-t 99% VaR."""
    hits = np.flatnonzero((forecasts["ret_simple"] < -forecasts["var_99"]).to_numpy())
    clusters: list[tuple[pd.Timestamp, pd.Timestamp, int]] = []
    run = hits[:1].tolist()
    for pos in [*hits[1:].tolist(), None]:
        if pos is not None and pos - run[-1] <= gap:
            run.append(pos)
            continue
        if len(run) >= 2:
            clusters.append((forecasts.index[run[0]], forecasts.index[run[-1]], len(run)))
        run = [] if pos is None else [pos]
    ratio = float((forecasts["fhs_99"] / forecasts["var_99"]).mean())
    return {"clusters": clusters, "cluster_gap": gap, "fhs_over_t_99": ratio}


def run_var_backtest(
    out: Path | None,
    *,
    refit_every: int = 21,
    start: str | None = None,
    end: str | None = None,
    window: int = 1000,
    expanding: bool = False,
    backtest_window: int = 250,
) -> pd.DataFrame:
    """Forecast, backtest and (with ``out``) write the markdown report.

    Parameters
    ----------
    out : pathlib.Path or None
        Markdown file to write (folders created); None writes nothing.
    refit_every : int
        Sessions between GARCH re-estimations.
    start, end : str, optional
        First and last session of the returns used (estimation windows included); default the
        whole 1999-2018 file.
    window : int
        Estimation window (returns); the first forecast is for the session after it.
    expanding : bool
        Expanding instead of rolling estimation windows.
    backtest_window : int
        Sessions per backtest window (250: the Basel year).

    Returns
    -------
    pandas.DataFrame
        :func:`backtest_table`: one row per window and the whole-sample row ``"all"``. Its
        ``attrs["meta"]`` holds what :func:`render_markdown` needs (settings, sample, parameter
        ranges, the :func:`summary_table` and the run time in ``seconds``).
    """
    t0 = time.perf_counter()
    returns = load_sp500_returns(start, end)
    forecasts = garch_var_forecasts(
        returns, window=window, refit_every=refit_every, expanding=expanding
    )
    table = backtest_table(forecasts, backtest_window)
    meta = _meta(returns, forecasts, window=window, refit_every=refit_every,
                 expanding=expanding, backtest_window=backtest_window)
    meta["seconds"] = time.perf_counter() - t0
    table.attrs["meta"] = meta
    log.info("VaR backtest: %d forecasts, %d windows in %.1f s", len(forecasts),
             len(table) - 1, meta["seconds"])
    if out is not None:
        text = render_markdown(table, meta)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return table


# ---------------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, pd.Timestamp):
        return str(value.date())
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "-" if math.isnan(v) else f"{v:.{digits}f}"
    return str(value)


def _md_table(
    frame: pd.DataFrame, columns: Sequence[str], headers: Sequence[str],
    digits: Mapping[str, int] | None = None,
) -> str:
    digits = digits or {}
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in frame[list(columns)].itertuples(index=False):
        cells = [_fmt(v, digits.get(c, 3)) for c, v in zip(columns, row, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _last_green(n: int, level: float = 0.99) -> int:
    """Most exceptions in ``n`` sessions that are still in the green zone."""
    from models.risk import basel_zone

    return max(k for k in range(n + 1) if basel_zone(k, n, level) == "green")


def _pvalue(p: float) -> str:
    if math.isnan(p):
        return "-"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _pct(x: float, digits: int = 2) -> str:
    return f"{100.0 * x:.{digits}f}%"


def render_markdown(table: pd.DataFrame, meta: Mapping[str, Any]) -> str:
    """The report: method, per-window table, whole-sample figures and caveats.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`run_var_backtest` (:func:`backtest_table`).
    meta : mapping
        ``table.attrs["meta"]`` of :func:`run_var_backtest`.
    """
    windows = table[table["window"] != "all"]
    whole = table[table["window"] == "all"].iloc[0]
    zones = windows["zone"].value_counts()
    counts = ", ".join(f"{zones.get(z, 0)} {z}" for z in ("green", "yellow", "red"))
    bw = int(meta["backtest_window"])
    pcols = ["kupiec_p", "ind_p", "cc_p"]
    shown = table.assign(
        window=table["window"].where(table["window"] != "all", "**all**"),
        zone=[f"**{z}**" if z != "green" else z for z in table["zone"]],
        rate_95=[_pct(x, 1) for x in table["rate_95"]],
        **{c: [_pvalue(x) for x in table[c]] for c in pcols},
    )
    summary: pd.DataFrame = meta["summary"]
    fhs99 = summary[(summary["model"] == "GARCH(1,1) FHS") & (summary["level"] == 0.99)]
    fhs95 = summary[(summary["model"] == "GARCH(1,1) FHS") & (summary["level"] == 0.95)]
    summary = summary.assign(level=[f"{lv:.0%}" for lv in summary["level"]],
                             rate=[_pct(x) for x in summary["rate"]],
                             **{c: [_pvalue(x) for x in summary[c]] for c in pcols})
    nonzero = windows.loc[windows["zone"] != "green", ["start", "end", "exceptions", "zone"]]
    flagged = "; ".join(
        f"{_fmt(row.start)} .. {_fmt(row.end)}: {row.exceptions} ({row.zone})"
        for row in nonzero.itertuples()
    ) or "none"
    from models.risk import basel_probability

    p_yellow = 1.0 - basel_probability(_last_green(bw), bw, 0.99)
    clusters = "; ".join(
        f"{_fmt(a)} .. {_fmt(b)} ({k})" for a, b, k in meta["clusters"]
    ) or "none"
    ratio = float(meta["fhs_over_t_99"])
    fhs_gap = f"{_pct(abs(ratio - 1.0), 1)} {'above' if ratio >= 1 else 'below'}"
    parts = [
        "# VaR backtest: GARCH(1,1)-t one-day VaR on the S&P 500",
        "",
        "Generated by one command from the data shipped with arch (no network):",
        "",
        "```",
        str(meta["command"]),
        "```",
        "",
        f"Run time: **{float(meta['seconds']):.0f} s** (wall clock, loading arch and the data "
        f"included) with `refit_every={meta['refit_every']}`: {meta['n_fits']} GARCH "
        "estimations (warm-started) and the fixed-parameter filter between them.",
        "",
        "## Headline",
        "",
        f"- {len(windows)} consecutive {bw}-session windows of 99% VaR forecasts "
        f"({_fmt(windows['start'].iloc[0])} .. {_fmt(windows['end'].iloc[-1])}): "
        f"**{counts}** (Basel traffic light).",
        f"- Non-green windows: {flagged}.",
        f"- Whole sample ({int(whole['n'])} sessions, {_fmt(whole['start'])} .. "
        f"{_fmt(whole['end'])}): **{int(whole['exceptions'])}** exceptions at 99% against "
        f"{float(whole['expected']):.1f} expected, a rate of **{_pct(float(whole['rate']))}** "
        f"(Kupiec p = {_pvalue(float(whole['kupiec_p']))}, Christoffersen cc p = "
        f"{_pvalue(float(whole['cc_p']))}); at 95%: {int(whole['exceptions_95'])} exceptions "
        f"against {float(whole['expected_95']):.1f} expected, a rate of "
        f"**{_pct(float(whole['rate_95']))}**.",
        f"- Filtered historical simulation on the same GARCH fits: "
        f"{int(fhs99['exceptions'].iloc[0])} exceptions at 99% "
        f"({_pct(float(fhs99['rate'].iloc[0]))}, Kupiec p = "
        f"{_pvalue(float(fhs99['kupiec_p'].iloc[0]))}), {_pct(float(fhs95['rate'].iloc[0]))} "
        "at 95%.",
        "",
        "## Method",
        "",
        f"- Data: {meta['data']}, {_fmt(meta['sample_start'])} .. {_fmt(meta['sample_end'])} "
        f"({meta['n_returns']} returns).",
        f"- Model: GARCH(1,1), constant mean, Student-t innovations (`models.garch`), estimated "
        f"by maximum likelihood on a {meta['estimation']} window of the {meta['window']} returns "
        f"before the first session it forecasts, re-estimated every {meta['refit_every']} "
        "sessions; in between the parameters are fixed and the conditional variance is filtered "
        "forward with each new return (`models.garch.filter_garch`: causal, no full-sample "
        "backcast).",
        "- Forecast made at the close of session t for session t+1 from returns up to t only: "
        "`VaR = -(mu + sigma_{t+1} q_a)` on log returns, `q_a` the a-quantile (a = 1%, 5%) of "
        "the unit-variance Student-t with the fitted degrees of freedom, reported as a loss "
        "fraction of the index value `1 - exp(-VaR)`. An exception on t+1 is a simple return "
        "below `-VaR` (the same event as a log return below the log VaR).",
        f"- Backtest (`models.risk.var_backtest`): consecutive non-overlapping {bw}-session "
        f"windows counted back from the last forecast (the first {int(whole['n']) % bw} "
        "forecasts fall in no window, only in the whole-sample row). Kupiec's "
        "proportion-of-failures LR (chi2(1)); Christoffersen's conditional coverage LR (chi2(2)) "
        "= Kupiec + independence (first-order Markov); Basel traffic light (Basel Committee, "
        "1996): cumulative binomial probability of the exception count below 95% green, below "
        "99.99% yellow, else red; for 250 sessions at 99%: 0-4 green, 5-9 yellow, 10+ red.",
        f"- Fitted parameters over the {meta['n_fits']} estimations: nu median "
        f"{float(meta['nu_median']):.1f} (range {float(meta['nu_min']):.1f} .. "
        f"{float(meta['nu_max']):.1f}"
        f"{' = arch upper bound, i.e. normal tails' if meta['nu_max'] >= 499 else ''}), "
        "alpha + beta median "
        f"{float(meta['persistence_median']):.3f}. 99% VaR median "
        f"{_pct(float(meta['var_99_median']))}, range {_pct(float(meta['var_99_min']))} .. "
        f"{_pct(float(meta['var_99_max']))} (the maximum on "
        f"{_fmt(meta['var_99_max_session'])}).",
        "",
        f"## 99% VaR per {bw}-session window",
        "",
        "Expected exceptions per full window: "
        f"{bw * 0.01:.1f} at 99%, {bw * 0.05:.1f} at 95%. p-values are asymptotic (chi-squared); "
        "`-` where a test is undefined.",
        "",
        _md_table(
            shown,
            ["window", "start", "end", "n", "exceptions", "expected", "kupiec_p", "ind_p", "cc_p",
             "zone", "exceptions_95", "rate_95"],
            ["window", "start", "end", "sessions", "exceptions 99%", "expected", "Kupiec p",
             "Christoffersen ind p", "Christoffersen cc p", "Basel zone", "exceptions 95%",
             "rate 95%"],
            {"expected": 1},
        ),
        "",
        "## Whole sample by model",
        "",
        "The filtered historical simulation (FHS) uses the same GARCH(1,1)-t fits and sigma "
        f"forecasts but the empirical quantile of the last {meta['window']} standardised "
        "residuals instead of the Student-t quantile. The zone of a whole-sample row is the "
        "traffic light generalised to its length (same 95% / 99.99% cumulative probabilities).",
        "",
        _md_table(
            summary,
            ["model", "level", "n", "exceptions", "expected", "rate", "kupiec_p", "ind_p", "cc_p",
             "zone"],
            ["model", "level", "sessions", "exceptions", "expected", "rate", "Kupiec p",
             "Christoffersen ind p", "Christoffersen cc p", "Basel zone"],
            {"expected": 1},
        ),
        "",
        f"On average the FHS 99% VaR is {fhs_gap} the GARCH-t one: the standardised "
        "residuals' empirical 1% quantile is "
        f"{'further out than' if meta['fhs_over_t_99'] > 1 else 'closer in than'} the fitted "
        "symmetric Student-t's.",
        "",
        "## Caveats",
        "",
        f"- One index, one model family. A {bw}-session window is short: a correct 99% model "
        f"still lands in the yellow zone or worse with probability {_pct(p_yellow, 1)}, and "
        "the per-window p-values have little power.",
        f"- Clustered 99% exceptions (two or more, each within {meta['cluster_gap']} sessions "
        f"of the previous): {clusters}. A GARCH variance reacts to a shock only from the next "
        "session on, so sudden volatility jumps produce runs of exceptions.",
        "- The index level carries no dividends; the loss is that of the index level.",
        "",
    ]
    return "\n".join(parts)
