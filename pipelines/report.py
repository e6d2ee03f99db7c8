"""Render the validation report (``validation/report.json``) as a self-contained HTML page."""

from __future__ import annotations

import html
from typing import Any


def render_report_html(report: dict[str, Any]) -> str:
    """A small standalone HTML page: decision, reasons and the holdout metrics side by side."""
    metrics: dict[str, dict[str, float]] = report["metrics"]
    names = ["mae", "rmse", "qlike"]
    best = {k: min(m[k] for m in metrics.values()) for k in names}
    rows = "".join(
        "<tr><th>{}</th>{}</tr>".format(
            html.escape(model),
            "".join(
                f"<td{' class=best' if vals[k] == best[k] else ''}>{vals[k]:.5f}</td>"
                for k in names
            ),
        )
        for model, vals in metrics.items()
    )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in report["reasons"])
    h = report["holdout"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>afterbell validation {report['session']}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}.best{{font-weight:bold;
background:#e6ffe6}}.promote{{color:#070}}.keep{{color:#a60}}</style></head><body>
<h1>Validation of {html.escape(report['model'])} for session {report['session']}</h1>
<p>Challenger v{report['challenger']}, champion
{('v' + str(report['champion'])) if report['champion'] else 'none'}.
Holdout {h['start']} to {h['end']}: {h['rows']} forecasts of realised volatility over the
next {h['horizon']} sessions (annualised).</p>
<h2 class="{report['decision']}">Decision: {report['decision']}</h2><ul>{reasons}</ul>
<table><tr><th>model</th><th>MAE</th><th>RMSE</th><th>QLIKE</th></tr>{rows}</table>
</body></html>
"""
