"""Live monitoring of the champion and retrain requests (issue 3, "retrain triggers").

After each session, :func:`monitor_session` scores the champion's live forecasts (lake table
``forecasts``) against what the market then did (``ret_1`` of the lake table ``features``), compares
the figures with :class:`MonitorThresholds` and, on a breach, leaves a retrain request in
``$AFTERBELL_HOME/state/retrain_request.json``. The heavy-training stage reads it with
:func:`pending_retrain` (a pending request makes the next night's heavy training run whatever the
calendar says) and archives it with :func:`clear_retrain` once it has retrained.

The figures (all computed by the pure function :func:`assess`, with no look-ahead)::

    live MAE           forecast vs realised vol over the next ``horizon`` sessions, on the
                       champion's forecasts of the last ``mae_window`` sessions whose outcome is
                       fully known
    MAE ratio          live MAE / the champion's holdout MAE from its validation report
    direction accuracy share of consecutive forecasts whose change has the sign of the change of
                       the realised vol
    rolling Sharpe,    of a volatility-targeting stand-in strategy over the last ``sharpe_window``
    max drawdown       sessions (see :func:`assess`)
    VaR breach rate    share of next-session returns below the forecast's parametric VaR

Layout written for session ``D``::

    runs/session=D/monitoring.json                 the report and the thresholds it was judged on
    lake/monitoring/session=D/part-0.parquet       the report as one row
    state/retrain_request.json                     only on a breach; never deleted here
    state/retrain_history/<consumer session>.json  requests consumed by the heavy stage
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import date
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from models.baselines import forward_realised_vol
from models.config import from_table
from pipelines import calendar, lake
from pipelines.settings import Settings

__all__ = [
    "MonitorFigures",
    "MonitorReport",
    "MonitorThresholds",
    "RetrainRequest",
    "assess",
    "champion_version",
    "clear_retrain",
    "monitor_session",
    "pending_retrain",
    "retrain_request_path",
    "validation_mae",
]

log = logging.getLogger("afterbell.monitoring")

_PERIODS_PER_YEAR = 252
#: Lake table and run-record names.
MONITORING_TABLE = "monitoring"
FORECASTS_TABLE = "forecasts"
REPORT_NAME = "monitoring.json"
VALIDATION_REPORT_NAME = "validation_report.json"
REQUEST_NAME = "retrain_request.json"
HISTORY_DIR = "retrain_history"

_FORECAST_COLUMNS = ("symbol", "session", "for_session", "forecast", "model_version", "asof")
_RETURN_COLUMNS = ("symbol", "session", "ret_1")


# --------------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class MonitorThresholds:
    """When the champion's live record asks for a retrain.

    Attributes
    ----------
    mae_increase : float
        Breach when the live MAE exceeds the champion's validation MAE by more than this fraction
        (0.25: 25% above).
    min_sharpe : float
        Breach when the stand-in strategy's annualised Sharpe ratio over the last
        ``sharpe_window`` sessions is below this.
    sharpe_window : int
        Sessions of strategy P&L in the Sharpe / drawdown / VaR window; Sharpe and drawdown are
        judged only once that many sessions have a P&L.
    max_drawdown : float
        Breach when the strategy's maximum drawdown over the window exceeds this (0.08: 8%).
    max_var_breach_rate : float
        Breach when the share of next-session returns below the forecast VaR exceeds this.
    var_level : float
        Confidence level of the parametric (normal) VaR, ``0 < var_level < 1``.
    min_observations : int
        Forecasts with a known outcome needed before the MAE (and the VaR breach rate) is judged.
    mae_window : int
        The live MAE uses the champion's forecasts of the last ``mae_window`` sessions whose
        outcome is known, so a recent degradation is not diluted by a long live record.
    target_vol : float
        Annualised volatility the stand-in strategy targets per symbol (scales the drawdown).
    var_min_observations : int
        Next-session outcomes needed before the VaR breach rate is judged (one breach in a handful
        of sessions is no evidence: at 95% a correct model has one in 6 sessions 26% of the time).
    var_significance : float
        The breach rate must also be significantly above ``1 - var_level``: a one-sided binomial
        test (Kupiec's proportion of failures) at this level.
    """

    mae_increase: float = 0.25
    min_sharpe: float = 1.2
    sharpe_window: int = 60
    max_drawdown: float = 0.08
    max_var_breach_rate: float = 0.05
    var_level: float = 0.95
    min_observations: int = 5
    mae_window: int = 20
    target_vol: float = 0.10
    var_min_observations: int = 20
    var_significance: float = 0.05

    def __post_init__(self) -> None:
        problems = []
        if not self.mae_increase >= 0.0:
            problems.append(f"mae_increase must be >= 0, got {self.mae_increase}")
        if self.sharpe_window < 2:
            problems.append(f"sharpe_window must be >= 2, got {self.sharpe_window}")
        if not self.max_drawdown > 0.0:
            problems.append(f"max_drawdown must be > 0, got {self.max_drawdown}")
        if not 0.0 <= self.max_var_breach_rate <= 1.0:
            problems.append(
                f"max_var_breach_rate must be in [0, 1], got {self.max_var_breach_rate}"
            )
        if not 0.0 < self.var_level < 1.0:
            problems.append(f"var_level must be in (0, 1), got {self.var_level}")
        if self.min_observations < 1:
            problems.append(f"min_observations must be >= 1, got {self.min_observations}")
        if self.mae_window < 1:
            problems.append(f"mae_window must be >= 1, got {self.mae_window}")
        if not self.target_vol > 0.0:
            problems.append(f"target_vol must be > 0, got {self.target_vol}")
        if problems:
            raise ValueError("invalid monitoring thresholds: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> MonitorThresholds:
        """Thresholds from a mapping such as the ``[monitoring]`` table of a TOML file.

        Parameters
        ----------
        m : Mapping[str, Any]
            Field name to value; missing fields keep their defaults.

        Returns
        -------
        MonitorThresholds

        Raises
        ------
        ValueError
            On keys that are not thresholds (all of them named), on values of the wrong type
            (integers for the window / count fields, numbers for the others; booleans never) and
            on values out of range.
        """
        return from_table(cls, m, label="monitoring threshold", plural="monitoring threshold(s)")


# --------------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class MonitorFigures:
    """The figures of a :class:`MonitorReport` that travel with a retrain request."""

    model_version: str | None
    n_scored: int
    live_mae: float | None
    baseline_mae: float | None
    mae_ratio: float | None
    direction_accuracy: float | None
    rolling_sharpe: float | None
    max_drawdown: float | None
    var_breach_rate: float | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MonitorFigures:
        return cls(
            model_version=None if d.get("model_version") is None else str(d["model_version"]),
            n_scored=int(d.get("n_scored", 0)),
            live_mae=_opt_float(d.get("live_mae")),
            baseline_mae=_opt_float(d.get("baseline_mae")),
            mae_ratio=_opt_float(d.get("mae_ratio")),
            direction_accuracy=_opt_float(d.get("direction_accuracy")),
            rolling_sharpe=_opt_float(d.get("rolling_sharpe")),
            max_drawdown=_opt_float(d.get("max_drawdown")),
            var_breach_rate=_opt_float(d.get("var_breach_rate")),
        )


@dataclass(frozen=True)
class MonitorReport:
    """The champion's live record as of one session, and the verdict.

    Attributes
    ----------
    session : date
        Session the record is judged at (everything used is known at its close).
    model_version : str or None
        The champion (the version of the latest forecasts); None when there is no forecast yet.
    n_scored : int
        Forecasts in the live-MAE window (outcome fully known at ``session``).
    live_mae : float or None
        MAE of those forecasts against the realised vol over their next ``horizon`` sessions.
    baseline_mae : float or None
        The champion's holdout MAE from its validation report.
    mae_ratio : float or None
        ``live_mae / baseline_mae``.
    direction_accuracy : float or None
        Share of consecutive forecast pairs (same symbol) whose forecast change has the sign of
        the realised-vol change; pairs where either change is zero are skipped.
    rolling_sharpe, max_drawdown : float or None
        Of the stand-in volatility-targeting strategy over the last ``sharpe_window`` sessions;
        None with fewer sessions of P&L.
    var_breach_rate : float or None
        Share of next-session returns below the forecast VaR; None without outcomes.
    breaches : tuple[str, ...]
        Human-readable breached thresholds, with the figures.
    retrain : bool
        Whether a retrain is requested (any breach).
    """

    session: date
    model_version: str | None
    n_scored: int
    live_mae: float | None
    baseline_mae: float | None
    mae_ratio: float | None
    direction_accuracy: float | None
    rolling_sharpe: float | None
    max_drawdown: float | None
    var_breach_rate: float | None
    breaches: tuple[str, ...]
    retrain: bool

    @property
    def figures(self) -> MonitorFigures:
        return MonitorFigures(**{f.name: getattr(self, f.name) for f in fields(MonitorFigures)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (ISO session, breaches as a list)."""
        out = asdict(self)
        out["session"] = self.session.isoformat()
        out["breaches"] = list(self.breaches)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MonitorReport:
        """Inverse of :meth:`to_dict` (extra keys, such as ``thresholds``, are ignored)."""
        fig = MonitorFigures.from_dict(d)
        return cls(
            session=calendar.to_date(str(d["session"])),
            breaches=tuple(str(b) for b in d.get("breaches", ())),
            retrain=bool(d.get("retrain", False)),
            **asdict(fig),
        )

    def to_frame(self) -> pd.DataFrame:
        """The report as one lake row (missing figures as NaN, breaches as a JSON list)."""
        row: dict[str, Any] = {
            "session": pd.Timestamp(self.session),
            "model_version": self.model_version,
            "n_scored": self.n_scored,
        }
        for name in ("live_mae", "baseline_mae", "mae_ratio", "direction_accuracy",
                     "rolling_sharpe", "max_drawdown", "var_breach_rate"):
            value = getattr(self, name)
            row[name] = math.nan if value is None else float(value)
        row["breaches"] = json.dumps(list(self.breaches))
        row["retrain"] = self.retrain
        frame = pd.DataFrame([row])
        frame["session"] = frame["session"].astype("datetime64[ns]")
        frame["model_version"] = frame["model_version"].astype(object)
        frame["n_scored"] = frame["n_scored"].astype("int64")
        return frame


@dataclass(frozen=True)
class RetrainRequest:
    """A pending request for the next heavy training to run regardless of the calendar."""

    requested_by_session: str
    reasons: tuple[str, ...]
    figures: MonitorFigures

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested_by_session": self.requested_by_session,
            "reasons": list(self.reasons),
            "figures": asdict(self.figures),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetrainRequest:
        return cls(
            requested_by_session=str(d["requested_by_session"]),
            reasons=tuple(str(r) for r in d.get("reasons", ())),
            figures=MonitorFigures.from_dict(d.get("figures", {})),
        )


# --------------------------------------------------------------------------------- pure core
def champion_version(forecasts: pd.DataFrame, session: date) -> str | None:
    """The model version of the latest forecasts made at or before ``session``.

    That is the version the desk traded last (it follows a rollback, unlike the highest version
    number). If the latest session somehow holds several versions, the highest one wins.
    """
    if forecasts.empty:
        return None
    day = pd.Timestamp(calendar.to_date(session))
    sessions = pd.to_datetime(forecasts["session"])
    known = forecasts[(sessions <= day) & forecasts["model_version"].notna()]
    if known.empty:
        return None
    last = pd.to_datetime(known["session"]).max()
    versions = {str(v) for v in known.loc[pd.to_datetime(known["session"]) == last,
                                          "model_version"]}
    return max(versions, key=_version_key)


def _version_key(v: str) -> tuple[int, int, str]:
    return (1, int(v), v) if v.isdigit() else (0, 0, v)


def _outcomes(returns: pd.DataFrame, day: pd.Timestamp, horizon: int) -> pd.DataFrame:
    """Per (symbol, session): realised vol over the next ``horizon`` rows and the next return,
    both from returns known at ``day`` only (NaN where not yet known)."""
    r = returns.loc[:, list(_RETURN_COLUMNS)].copy()
    r["session"] = pd.to_datetime(r["session"]).astype("datetime64[ns]")
    r = r[r["session"] <= day]
    r = r.sort_values(["symbol", "session"], kind="stable")
    r = r.drop_duplicates(["symbol", "session"], keep="last")
    parts = []
    for symbol, g in r.groupby("symbol", sort=True):
        series = g.set_index("session")["ret_1"].astype(float)
        parts.append(pd.DataFrame({
            "symbol": symbol,
            "session": series.index,
            "target": forward_realised_vol(series, horizon).to_numpy(),
            "next_ret": series.shift(-1).to_numpy(),
            "next_session": pd.Series(series.index).shift(-1).to_numpy(),
        }))
    if not parts:
        return pd.DataFrame({
            "symbol": pd.Series(dtype=object), "session": pd.Series(dtype="datetime64[ns]"),
            "target": pd.Series(dtype=float), "next_ret": pd.Series(dtype=float),
            "next_session": pd.Series(dtype="datetime64[ns]"),
        })
    return pd.concat(parts, ignore_index=True)


def _last_sessions(frame: pd.DataFrame, column: str, count: int) -> pd.DataFrame:
    """Rows of ``frame`` whose ``column`` is among its last ``count`` distinct values."""
    keep = np.sort(frame[column].unique())[-count:]
    return frame[frame[column].isin(keep)]


def _direction_accuracy(window: pd.DataFrame) -> float | None:
    w = window.sort_values(["symbol", "session"], kind="stable")
    df = w.groupby("symbol", sort=False)["forecast"].diff().to_numpy(dtype=float)
    dy = w.groupby("symbol", sort=False)["target"].diff().to_numpy(dtype=float)
    ok = np.isfinite(df) & np.isfinite(dy) & (df != 0.0) & (dy != 0.0)
    if not ok.any():
        return None
    return float(np.mean(np.sign(df[ok]) == np.sign(dy[ok])))


def _strategy(rows: pd.DataFrame, th: MonitorThresholds) -> tuple[float | None, float | None]:
    """(Sharpe, max drawdown) of the stand-in strategy over the last ``sharpe_window`` sessions."""
    if rows.empty:
        return None, None
    contrib = th.target_vol / rows["forecast"].to_numpy(float) * rows["next_ret"].to_numpy(float)
    pnl = pd.Series(contrib).groupby(rows["next_session"].to_numpy()).mean().sort_index()
    if len(pnl) < th.sharpe_window:
        return None, None
    w = pnl.to_numpy(float)[-th.sharpe_window :]
    sd = float(np.std(w, ddof=1))
    sharpe = float(np.mean(w) / sd * math.sqrt(_PERIODS_PER_YEAR)) if sd > 0.0 else None
    equity = np.concatenate([[0.0], np.cumsum(w)])
    drawdown = float(np.max(np.maximum.accumulate(equity) - equity))
    return sharpe, drawdown


def assess(
    forecasts: pd.DataFrame,
    returns: pd.DataFrame,
    session: date,
    baseline_mae: float | None,
    horizon: int,
    thresholds: MonitorThresholds,
) -> MonitorReport:
    """Judge the champion's live record at the close of ``session``.

    Parameters
    ----------
    forecasts : pd.DataFrame
        Lake table ``forecasts``: symbol, session (the close the forecast was made at), forecast
        (annualised vol over the next ``horizon`` sessions), model_version. Rows after
        ``session`` are ignored; only the champion's rows (:func:`champion_version`) are scored.
    returns : pd.DataFrame
        symbol, session, ret_1 (daily log returns). Rows after ``session`` are ignored, so no
        figure depends on anything unknown at its close.
    session : date
        The session judged.
    baseline_mae : float or None
        The champion's holdout MAE from validation; None leaves the MAE unjudged.
    horizon : int
        Forecast horizon in sessions.
    thresholds : MonitorThresholds
        Breach thresholds.

    Returns
    -------
    MonitorReport

    Notes
    -----
    A forecast made at ``t`` is scored against :func:`models.baselines.forward_realised_vol`,
    the realised vol of the symbol's next ``horizon`` returns; it enters the MAE only once all of
    them are known at ``session``. Its "next-session return" is the symbol's next return row.

    The strategy is a stand-in until the real strategy of a later issue: per symbol, position
    ``target_vol / forecast_t`` held over the next session; equal weight across symbols, so the
    daily P&L is the mean of ``position * next-session log return`` over the symbols forecast.
    The Sharpe ratio is annualised (``sqrt(252)``); the drawdown is the largest fall of the
    cumulative (additive) P&L from its running peak (starting at 0), over the same window.

    A VaR breach is a next-session log return below ``-z * forecast / sqrt(252)`` with ``z`` the
    standard normal ``var_level`` quantile; the rate covers the forecasts of the last
    ``sharpe_window`` sessions with a known next return and is judged with at least
    ``min_observations`` of them.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    th = thresholds
    d = calendar.to_date(session)
    day = pd.Timestamp(d)
    version = champion_version(forecasts, d)
    if version is None:
        return MonitorReport(d, None, 0, None, baseline_mae, None, None, None, None, None, (),
                             False)

    fc = forecasts.loc[:, ["symbol", "session", "forecast", "model_version"]].copy()
    fc["session"] = pd.to_datetime(fc["session"]).astype("datetime64[ns]")
    fc = fc[(fc["session"] <= day) & (fc["model_version"].astype(str) == version)]
    fc = fc.assign(forecast=fc["forecast"].astype(float))
    fc = fc[np.isfinite(fc["forecast"].to_numpy(float))]
    fc = fc.drop_duplicates(["symbol", "session"], keep="last")
    live = fc.merge(_outcomes(returns, day, horizon), on=["symbol", "session"], how="left")

    breaches: list[str] = []
    # -- forecast error
    scored = live[np.isfinite(live["target"].to_numpy(float))]
    window = _last_sessions(scored, "session", th.mae_window) if len(scored) else scored
    n_scored = len(window)
    errors = window["forecast"].to_numpy(float) - window["target"].to_numpy(float)
    live_mae = float(np.mean(np.abs(errors))) if n_scored else None
    ratio = (
        live_mae / baseline_mae
        if live_mae is not None and baseline_mae is not None and baseline_mae > 0.0 else None
    )
    if ratio is not None and n_scored >= th.min_observations and ratio > 1.0 + th.mae_increase:
        breaches.append(
            f"live MAE {live_mae:.3f} is {ratio - 1.0:.0%} above the validation MAE "
            f"{baseline_mae:.3f} (threshold {th.mae_increase:.0%})"
        )
    direction = _direction_accuracy(window) if n_scored else None

    # -- stand-in strategy and VaR, on forecasts whose next-session return is known
    traded = live[np.isfinite(live["next_ret"].to_numpy(float))
                  & (live["forecast"].to_numpy(float) > 0.0)]
    sharpe, drawdown = _strategy(traded, th)
    if sharpe is not None and sharpe < th.min_sharpe:
        breaches.append(
            f"rolling Sharpe {sharpe:.2f} over the last {th.sharpe_window} sessions is below "
            f"{th.min_sharpe:.2f}"
        )
    if drawdown is not None and drawdown > th.max_drawdown:
        breaches.append(
            f"max drawdown {drawdown:.1%} over the last {th.sharpe_window} sessions exceeds "
            f"{th.max_drawdown:.1%}"
        )
    var_rate: float | None = None
    if len(traded):
        recent = _last_sessions(traded, "session", th.sharpe_window)
        z = NormalDist().inv_cdf(th.var_level)
        limit = -z * recent["forecast"].to_numpy(float) / math.sqrt(_PERIODS_PER_YEAR)
        hits = recent["next_ret"].to_numpy(float) < limit
        var_rate = float(np.mean(hits))
        n_hits = int(hits.sum())
        if len(hits) >= max(th.min_observations, th.var_min_observations) and (
            var_rate > th.max_var_breach_rate
        ):
            from scipy.stats import binomtest

            p_value = float(binomtest(n_hits, len(hits), 1.0 - th.var_level,
                                      alternative="greater").pvalue)
            if p_value < th.var_significance:
                breaches.append(
                    f"{th.var_level:.0%} VaR breach rate {var_rate:.1%} ({n_hits} of "
                    f"{len(hits)} next-session returns) exceeds {th.max_var_breach_rate:.1%} "
                    f"(binomial p={p_value:.3f})"
                )

    return MonitorReport(
        session=d,
        model_version=version,
        n_scored=n_scored,
        live_mae=live_mae,
        baseline_mae=baseline_mae,
        mae_ratio=ratio,
        direction_accuracy=direction,
        rolling_sharpe=sharpe,
        max_drawdown=drawdown,
        var_breach_rate=var_rate,
        breaches=tuple(breaches),
        retrain=bool(breaches),
    )


# --------------------------------------------------------------------------------- adapter
def retrain_request_path(settings: Settings) -> Path:
    """``$AFTERBELL_HOME/state/retrain_request.json``."""
    return settings.home / "state" / REQUEST_NAME


def _history_dir(settings: Settings) -> Path:
    return settings.home / "state" / HISTORY_DIR


def _write_text_atomic(path: Path, text: str) -> Path:
    return lake.write_text_atomic(path, text)


def _dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def validation_mae(settings: Settings, version: str, session: date) -> float | None:
    """The champion's holdout MAE: ``metrics.challenger.mae`` of the newest
    ``runs/session=*/validation_report.json`` (at or before ``session``) whose ``challenger`` is
    ``version``; None when no such report exists."""
    d = calendar.to_date(session)
    found: list[tuple[date, Path]] = []
    if settings.runs_dir.is_dir():
        for entry in settings.runs_dir.glob("session=*"):
            try:
                day = date.fromisoformat(entry.name[len("session="):])
            except ValueError:
                continue
            path = entry / VALIDATION_REPORT_NAME
            if day <= d and path.is_file():
                found.append((day, path))
    for _, path in sorted(found, reverse=True):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping unreadable validation report %s: %s", path, exc)
            continue
        if str(report.get("challenger")) != version:
            continue
        try:
            return _opt_float(report["metrics"]["challenger"]["mae"])
        except (KeyError, TypeError, ValueError):
            log.warning("validation report %s has no metrics.challenger.mae", path)
            continue
    return None


def _already_consumed(settings: Settings, requested_by: str) -> bool:
    """Whether an archived request was made by ``requested_by`` (then a re-run asks no more)."""
    history = _history_dir(settings)
    if not history.is_dir():
        return False
    for path in sorted(history.glob("*.json")):
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if str(old.get("requested_by_session")) == requested_by:
            return True
    return False


def _request_retrain(settings: Settings, report: MonitorReport) -> Path | None:
    """Leave a retrain request for ``report`` unless one is already pending or was consumed."""
    me = report.session.isoformat()
    pending = pending_retrain(settings)
    if pending is not None and pending.requested_by_session != me:
        log.info("retrain already requested by session %s; keeping that request",
                 pending.requested_by_session)
        return None
    if pending is None and _already_consumed(settings, me):
        log.info("the retrain requested by session %s was already consumed", me)
        return None
    request = RetrainRequest(me, report.breaches, report.figures)
    return _write_text_atomic(retrain_request_path(settings), _dumps(request.to_dict()))


def monitor_session(
    settings: Settings, session: date, thresholds: MonitorThresholds | None = None
) -> MonitorReport:
    """Monitor the champion after ``session``'s close; request a retrain on a breach.

    Parameters
    ----------
    settings : Settings
        Installation settings (lake, runs and state folders, ``horizon``).
    session : date
        An NYSE session; only lake partitions and validation reports up to it are read.
    thresholds : MonitorThresholds, optional
        Defaults to ``MonitorThresholds()``.

    Returns
    -------
    MonitorReport
        Also written to ``runs/session=D/monitoring.json`` (with the thresholds) and to the lake
        table ``monitoring`` (partition ``session=D``). Both are overwritten by a re-run.

    Notes
    -----
    On a breach the request goes to ``state/retrain_request.json`` (atomically). A request that
    is already pending from another session is kept as it is (the retrain is requested either
    way; this session's figures are in its own ``monitoring.json``); a re-run of the session that
    made the pending request rewrites it, and a re-run after its request was consumed asks for
    nothing more. This function never deletes a request.
    """
    th = thresholds or MonitorThresholds()
    d = calendar.require_session(session)
    forecasts = lake.read_table(settings.lake_dir, FORECASTS_TABLE, end=d,
                                columns=list(_FORECAST_COLUMNS))
    # Only forecasts made by earlier sessions' pre-market: this run's own pre-market comes after
    # its monitoring, so a re-run of the session sees exactly what the first run saw.
    forecasts = forecasts[pd.to_datetime(forecasts["session"]) < pd.Timestamp(d)]
    version = champion_version(forecasts, d)
    if version is None:
        returns = pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                                (("symbol", object), ("session", "datetime64[ns]"),
                                 ("ret_1", float))})
        baseline = None
    else:
        start = pd.Timestamp(pd.to_datetime(forecasts["session"]).min()).date()
        symbols = sorted({str(s) for s in forecasts["symbol"]})
        feats = lake.read_table(settings.lake_dir, "features", start=start, end=d,
                                symbols=symbols, columns=list(_RETURN_COLUMNS))
        returns = feats.loc[:, list(_RETURN_COLUMNS)]
        baseline = validation_mae(settings, version, d)
    report = assess(forecasts, returns, d, baseline, settings.horizon, th)

    payload = {**report.to_dict(), "thresholds": asdict(th), "horizon": settings.horizon}
    _write_text_atomic(settings.runs_dir / f"session={d.isoformat()}" / REPORT_NAME,
                       _dumps(payload))
    lake.write_partition(settings.lake_dir, MONITORING_TABLE, d, report.to_frame())
    if report.retrain:
        _request_retrain(settings, report)
        log.warning("monitoring %s: retrain requested (%s)", d, "; ".join(report.breaches))
    else:
        log.info("monitoring %s: champion %s within thresholds", d, version)
    return report


def pending_retrain(settings: Settings) -> RetrainRequest | None:
    """The pending retrain request, or None."""
    path = retrain_request_path(settings)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return RetrainRequest.from_dict(json.loads(text))


def consumed_retrain(settings: Settings, session: str) -> RetrainRequest | None:
    """The request the heavy stage of ``session`` consumed, if any (so that a re-run of that
    session plans exactly what its first run planned)."""
    path = _history_dir(settings) / f"{calendar.to_date(session).isoformat()}.json"
    try:
        return RetrainRequest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def clear_retrain(settings: Settings, consumed_by_session: str) -> None:
    """Archive the pending request as consumed by ``consumed_by_session`` (no-op without one).

    The request file is moved (atomically) to ``state/retrain_history/<session>.json``; an
    archive of the same name is never overwritten (``<session>.1.json``, ``<session>.2.json``...).
    """
    consumer = calendar.to_date(consumed_by_session).isoformat()
    src = retrain_request_path(settings)
    if not src.is_file():
        return
    history = _history_dir(settings)
    history.mkdir(parents=True, exist_ok=True)
    dest = history / f"{consumer}.json"
    counter = 0
    while dest.exists():
        counter += 1
        dest = history / f"{consumer}.{counter}.json"
    os.replace(src, dest)
    log.info("retrain request consumed by %s, archived as %s", consumer, dest)
