"""Render the validation report (``validation/report.json``) as a self-contained HTML page.

The page holds the decision and its reasons, the holdout metrics, the statistical tests, the VaR
and signal backtests, and five plots (PNG, embedded as base64 so the one file is the report):
forecast against realised volatility, equity curve, drawdown, VaR exceptions and interval
coverage. Plots are drawn with matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["render_report_html"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], best: Mapping[int, float] | None = None
           ) -> str:
    best = best or {}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [f"<th>{_fmt(row[0])}</th>"]
        for i, v in enumerate(row[1:], start=1):
            mark = " class=best" if i in best and v == best[i] else ""
            cells.append(f"<td{mark}>{_fmt(v)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _png(draw: Callable[[Any], None]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=90)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return ("<img alt='plot' src='data:image/png;base64,"
            f"{base64.b64encode(buf.getvalue()).decode('ascii')}'>")


def _plots(report: Mapping[str, Any], series: Mapping[str, Any]) -> str:
    import numpy as np
    import pandas as pd

    days = pd.to_datetime(series["sessions"])
    level = report["gate"]["var_level"]

    def forecasts(ax: Any) -> None:
        ax.plot(days, series["target"], color="black", lw=1.6, label="realised")
        for name, values in series["forecasts"].items():
            ax.plot(days, values, lw=1.0, label=name)
        ax.set_title("Forecast vs realised volatility (mean over symbols, annualised)")
        ax.legend(fontsize=7, ncol=3)

    def equity(ax: Any) -> None:
        for name, c in series["equity"].items():
            ax.plot(pd.to_datetime(c["sessions"]), c["equity"], lw=1.0, label=name)
        ax.set_title("Equity of the volatility-targeting portfolio, net of costs")
        ax.legend(fontsize=7, ncol=3)

    def drawdown(ax: Any) -> None:
        for name, c in series["equity"].items():
            ax.plot(pd.to_datetime(c["sessions"]), c["drawdown"], lw=1.0, label=name)
        ax.set_title("Drawdown")
        ax.legend(fontsize=7, ncol=3)

    def exceptions(ax: Any) -> None:
        pv = series["portfolio_var"]
        when = pd.to_datetime(pv["sessions"])
        ret, var = np.asarray(pv["ret"], float), np.asarray(pv["var"], float)
        ax.bar(when, ret, width=1.0, color="tab:gray", label="next-session return")
        ax.plot(when, -var, color="tab:blue", lw=1.0, label=f"-VaR {level:.0%}")
        hit = ret < -var
        ax.scatter(when[hit], ret[hit], color="tab:red", zorder=3, s=14,
                   label=f"exceptions ({int(hit.sum())})")
        ax.set_title(f"Challenger VaR {level:.0%} of the equal-weight portfolio")
        ax.legend(fontsize=7)

    def coverage(ax: Any) -> None:
        inside = pd.Series(series["inside_rate"], index=days)
        ax.plot(days, inside.rolling(20, min_periods=5).mean(), lw=1.2,
                label="20-session share within +/-VaR")
        nominal = 2 * level - 1
        ax.axhline(nominal, color="black", ls="--", lw=1, label=f"nominal {nominal:.0%}")
        ax.set_ylim(max(0.0, nominal - 0.2), 1.001)
        ax.set_title("Interval coverage of the challenger's +/-VaR band")
        ax.legend(fontsize=7)

    return "".join(_png(f) for f in (forecasts, equity, drawdown, exceptions, coverage))


def render_report_html(report: Mapping[str, Any], series: Mapping[str, Any] | None = None) -> str:
    """A standalone HTML page of the validation ``report`` (and plots of ``series`` if given)."""
    metrics: dict[str, dict[str, float]] = report["metrics"]
    names = ["mae", "rmse", "qlike"]
    best = {i + 1: min(m[k] for m in metrics.values()) for i, k in enumerate(names)}
    metric_table = _table(["model", "MAE", "RMSE", "QLIKE"],
                          [[m, *(v[k] for k in names)] for m, v in metrics.items()], best)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in report["reasons"])
    h = report["holdout"]
    parts = [f"""<!doctype html>
<html><head><meta charset="utf-8"><title>afterbell validation {report['session']}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;
margin:0.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
.best{{font-weight:bold;background:#e6ffe6}}.promote{{color:#070}}.keep{{color:#a60}}
img{{display:block;margin:0.5em 0}}</style></head><body>
<h1>Validation of {html.escape(report['model'])} for session {report['session']}</h1>
<p>Challenger v{report['challenger']}, champion
{('v' + str(report['champion'])) if report['champion'] else 'none'}.
Holdout {h['start']} to {h['end']}: {h['rows']} forecasts of realised volatility over the
next {h['horizon']} sessions (annualised).</p>
<h2 class="{report['decision']}">Decision: {report['decision']}</h2><ul>{reasons}</ul>
<h2>Accuracy</h2>{metric_table}"""]
    tests = report.get("tests")
    if tests:
        rows = [[f"challenger vs {name}", t["challenger_mae"], t["other_mae"], t["dm_pvalue"],
                 t["spa_pvalue"], t["significant"]] for name, t in tests["pairs"].items()]
        parts.append("<h2>Statistical comparison (per-session MAE)</h2>" + _table(
            ["pair", "challenger MAE", "other MAE", "DM p (one-sided)", "SPA p", "significant"],
            rows))
        mcs = tests["mcs"]
        parts.append(f"<p>Model confidence set ({1 - mcs['size']:.0%}): "
                     f"{html.escape(', '.join(mcs['included']))}.</p>")
    var_bt = report.get("var_backtest")
    if var_bt:
        rows = [[m, v["n"], v["exceptions"], v["expected"], v["kupiec_pvalue"],
                 v.get("christoffersen_cc_pvalue"), v["zone"]] for m, v in var_bt.items()]
        parts.append("<h2>VaR backtest (equal-weight portfolio)</h2>" + _table(
            ["model", "sessions", "exceptions", "expected", "Kupiec p", "Christoffersen cc p",
             "zone"], rows))
    perf = report.get("backtest")
    if perf:
        keys = ["sharpe", "sortino", "calmar", "max_drawdown", "turnover", "hit_rate",
                "profit_factor"]
        rows = [[m, *(p.get(k) for k in keys)] for m, p in perf.items()]
        parts.append("<h2>Signal backtest with costs</h2>" + _table(["model", *keys], rows))
    dsr = report.get("dsr")
    if dsr:
        parts.append(f"<p>Deflated Sharpe Ratio of the challenger: {_fmt(dsr['dsr'])} "
                     f"({dsr['configurations_tried']} configuration(s) tried).</p>")
    if series:
        parts.append("<h2>Plots</h2>" + _plots(report, series))
    parts.append("</body></html>\n")
    return "".join(parts)
