"""The nightly cycle's stage functions: one function per Airflow task.

Each function takes the run's session (``YYYY-MM-DD``), reads :class:`Settings` from the
environment unless given, does one stage's work, and returns a small JSON-able summary (the task's
XCom). Every write is keyed by the session and is an overwrite, so re-running a session converges to
the same state. The DAG files and ``afterbell stage NAME`` call exactly these functions.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pipelines import calendar
from pipelines.schema import BAR_COLUMNS, FEATURE_COLUMNS, GARCH_COLUMNS, OPTION_COLUMNS
from pipelines.settings import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    WINDOW_COLUMNS,
    Settings,
)

log = logging.getLogger("afterbell.stages")

Summary = dict[str, Any]

#: The feature service the GARCH-LSTM reads, online and offline.
FEATURE_SERVICE = "garch_lstm_v2"


# --------------------------------------------------------------------------------- helpers
def _setup(session: str, settings: Settings | None) -> tuple[date, Settings]:
    s = settings or Settings.from_env()
    return calendar.require_session(session), s


def _history_sessions(d: date, s: Settings) -> list[date]:
    return calendar.previous_sessions(d, s.history_years * 252 + 1)


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Atomic JSON write (write aside, then rename)."""
    from pipelines.lake import write_text_atomic

    return write_text_atomic(
        path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    )


def _run_record(s: Settings, d: date, stage: str, payload: Summary) -> Summary:
    """Write the stage's summary for the session (overwrite; deterministic content only, so a
    re-run of the session leaves the file byte-identical) and return it."""
    _write_json(s.runs_dir / f"session={d.isoformat()}" / f"{stage}.json", payload)
    return payload


def _stored_record(s: Settings, d: date, stage: str) -> Summary | None:
    path = s.runs_dir / f"session={d.isoformat()}" / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _processed_sessions(s: Settings) -> list[date]:
    """Sessions that have stage records, oldest first."""
    out = []
    for entry in s.runs_dir.glob("session=*") if s.runs_dir.is_dir() else []:
        try:
            out.append(date.fromisoformat(entry.name.removeprefix("session=")))
        except ValueError:
            continue
    return sorted(out)


def _is_latest(s: Settings, d: date) -> bool:
    """True unless a later session was already processed (``d`` is being reprocessed).

    The registry aliases are "now" state: only the latest session reads and moves them. A
    reprocessed older session uses the state as of itself, from the stage records and the
    versions' ``session`` tags, so that it never sees (or serves) a model from its future.
    """
    done = _processed_sessions(s)
    return not done or d >= done[-1]


def _champion_as_of(s: Settings, d: date, *, inclusive: bool) -> Any:
    """The champion after the validation of ``d`` (``inclusive``) or of the sessions before it.

    The latest session reads the registry alias (which also honours a promotion or rollback
    made by hand in the MLflow UI); a reprocessed session reads ``champion_after`` of the newest
    validation record at or before it.
    """
    from pipelines import registry

    if _is_latest(s, d):
        return registry.alias_version(s, ALIAS_CHAMPION)
    for day in reversed(_processed_sessions(s)):
        if day > d or (day == d and not inclusive):
            continue
        record = _stored_record(s, day, "validation")
        if record is not None:
            version = record.get("champion_after")
            return registry.get_version(s, str(version)) if version else None
    return None


def _challenger_as_of(s: Settings, d: date) -> Any:
    """The ``challenger`` alias for the latest session; for a reprocessed one, the version
    registered by the newest heavy stage at or before it."""
    from pipelines import registry

    if _is_latest(s, d):
        return registry.alias_version(s, ALIAS_CHALLENGER)
    return registry.latest_version_up_to(s, d.isoformat())


def _lake_range(s: Settings, table: str, end: date, columns: tuple[str, ...]) -> pd.DataFrame:
    from pipelines import lake

    return lake.read_table(s.lake_dir, table, end=end, columns=list(columns))


def _to_write(s: Settings, table: str, d: date, history: list[date]) -> set[date]:
    """Sessions of ``history`` whose partition of ``table`` is missing, plus ``d`` itself."""
    from pipelines import lake

    present = set(lake.partition_sessions(s.lake_dir, table))
    return {x for x in history if x not in present} | {d}


# --------------------------------------------------------------------------- close analysis
def ingest(
    session: str,
    source: str | Path | None = None,
    settings: Settings | None = None,
) -> Summary:
    """Ingest and validate the session's bars, keep its raw input, then write them to the lake.

    ``source`` is None (the replay source, or the synthetic universe of ``AFTERBELL_SYNTHETIC``:
    :func:`pipelines.sources.history_source`), a local CSV / Parquet file, a local drop folder, or
    an ``s3://`` URI (see :func:`pipelines.sources.fetch_raw`; endpoint and credentials from the
    environment, :meth:`pipelines.sources.S3Config.from_env`). The input is
    fetched as received into a staging folder, parsed (a row of another session is an error),
    and validated together with any history being backfilled: the first run also backfills
    ``history_years`` of sessions from that source. Only once the whole batch passes the
    Great Expectations suite are the fetched files kept as the session's raw input
    (``<home>/raw/session=YYYY-MM-DD/``; the replayed rows as ``replay.parquet`` or
    ``synthetic.parquet``) and the
    partitions written. A bad input is copied to the quarantine with the reason and nothing in
    the lake or the raw folders changes; the error names the expectation, symbol and session
    (or the file and row) and where the input was kept.
    """
    import os

    from pipelines import lake
    from pipelines.quality import DataQualityError, validate_bars
    from pipelines.sources import SourceError, fetch_raw, history_source, read_bar_files

    d, s = _setup(session, settings)
    history = _history_sessions(d, s)
    wanted = sorted(_to_write(s, "bars", d, history))
    older = [x for x in wanted if x != d]
    replay = history_source(s)
    expected = replay.listings()
    reference = _reference_bars(s, wanted[0])
    spec = ("replay" if s.synthetic is None else "synthetic") if source is None else str(source)
    t0 = time.perf_counter()
    with lake.staging_dir(s.home, d) as staging:
        if source is None:
            bars = replay.bars(wanted)
            today = bars[bars["session"] == pd.Timestamp(d)]
            raw = [lake.write_parquet(staging / f"{spec}.parquet", today)]
        else:
            raw = fetch_raw(source, d, staging)  # nothing received on failure: re-raised
        try:
            if source is not None:
                today = read_bar_files(raw, session=d)
                bars = pd.concat([replay.bars(older), today], ignore_index=True) if older else today
            if today.empty:  # a given source is named by the error wrapper below
                where = f" from the {spec} source" if source is None else ""
                raise ValueError(f"no bars for session {d}{where}")
            log.info("ingest %s: %d bars over %d sessions from %s (%.1fs)", d, len(bars),
                     len(wanted), spec, time.perf_counter() - t0)
            summary = validate_bars(bars, s.reports_dir, label=f"bars {d.isoformat()}",
                                    expected=expected, reference=reference)
        except (SourceError, DataQualityError, ValueError) as exc:
            if isinstance(exc, DataQualityError) and exc.summary is not None:
                _report_quality(s, d, "bars", exc.summary, spec)
            if source is None:
                raise
            origin = spec if spec.startswith("s3://") else str(Path(spec).resolve())
            reason = str(exc).replace(f"{staging}{os.sep}", "")  # name files, not the staging
            kept = [
                lake.quarantine(f, s.quarantine_dir, d, reason, origin=origin) for f in raw
            ]
            note = f"(input kept in {', '.join(str(q) for q in kept)})"
            if isinstance(exc, DataQualityError):
                raise DataQualityError(
                    exc.expectation, exc.symbol, exc.session, f"{exc.detail} {note}",
                    check=exc.check, summary=exc.summary,
                ) from exc
            err = SourceError if isinstance(exc, SourceError) else ValueError
            raise err(f"{spec}: {reason} {note}") from exc
        kept_raw = lake.keep_raw(raw, s.home, d)
    _report_quality(s, d, "bars", summary, spec)
    if len(wanted) == 1:
        lake.write_partition(s.lake_dir, "bars", d, bars)
    else:
        lake.write_partitions(s.lake_dir, "bars", bars)
    log.info("ingest %s: %d session partition(s) written to %s, raw input kept in %s", d,
             len(wanted), s.lake_dir, lake.raw_dir(s.home, d))
    today_bars = bars[bars["session"] == pd.Timestamp(d)]
    return _run_record(s, d, "ingest", {
        "session": d.isoformat(),
        "history_start": history[0].isoformat(),
        "rows": len(today_bars),
        "symbols": int(today_bars["symbol"].nunique()),
        "data_quality": "passed" if summary.success else "failed",
        "expectations": summary.evaluated,
        "data_docs": str(summary.docs_index) if summary.docs_index else None,
        "warnings": [w.message for w in summary.warnings[:20]],
        "n_warnings": len(summary.warnings),
        "source": spec,
        "raw_files": [f.name for f in kept_raw],
    })


def _reference_bars(s: Settings, first: date, sessions: int = 260) -> pd.DataFrame:
    """The lake's bars of the ``sessions`` sessions before ``first``: context for the checks
    that compare a bar with the symbol's earlier ones (stale bars, splits, robust z-scores)."""
    from pipelines import lake

    window = calendar.previous_sessions(first, sessions + 1)[:-1]
    if not window:
        return pd.DataFrame(columns=list(BAR_COLUMNS))
    return lake.read_table(s.lake_dir, "bars", start=window[0], end=window[-1],
                           symbols=list(s.universe), columns=list(BAR_COLUMNS))


def _report_quality(s: Settings, d: date, suite: str, summary: Any, source: str) -> None:
    """Link the run's Data Docs in the task log and log them to the session's MLflow run."""
    from pipelines import registry

    page = summary.docs_page or summary.docs_index
    if page is not None:
        log.info("data docs (%s suite, session %s): %s", suite, d, Path(page).as_uri())
    for issue in summary.warnings[:20]:
        log.warning("%s", issue.message)
    outcome = {
        "success": bool(summary.success),
        "expectations": int(summary.evaluated),
        "rows": int(summary.n_rows),
        "errors": [e.message for e in summary.errors[:20]],
        "n_warnings": len(summary.warnings),
        "warnings": [w.message for w in summary.warnings[:100]],
        "source": source,
    }
    pages = [p for p in (summary.docs_page, summary.docs_index) if p is not None]
    run_id = registry.log_data_quality(s, d.isoformat(), suite, outcome, pages)
    log.info("data quality of %s logged to MLflow run %s (experiment %s)", d, run_id,
             registry.DATA_QUALITY_EXPERIMENT)


def build_features(session: str, settings: Settings | None = None) -> Summary:
    """TA-Lib, range, volume and market features from the lake's bars up to the session.

    Partitions written by an older feature set (missing columns) are rewritten, so a lake
    built by an earlier release converges to the current schema.
    """
    from pipelines import lake
    from pipelines.features import compute_features, load_vix

    d, s = _setup(session, settings)
    bars = _lake_range(s, "bars", d, BAR_COLUMNS)
    if bars.empty:
        raise ValueError(f"no bars in the lake up to {d}: run close_analysis.ingest first")
    feats = compute_features(bars, vix=load_vix())
    history = sorted(set(feats["session"].dt.date))
    if _schema_outdated(s, "features", FEATURE_COLUMNS):
        log.info("features %s: stored partitions lack new columns; rewriting the history", d)
        wanted = set(history)
    else:
        wanted = _to_write(s, "features", d, history)
    summary = _validate_features(s, d, feats, wanted)
    out = feats[feats["session"].dt.date.isin(wanted)]
    lake.write_partitions(s.lake_dir, "features", out)
    log.info("features %s: %d session partition(s) written", d, len(wanted))
    today = feats[feats["session"] == pd.Timestamp(d)]
    return _run_record(s, d, "features", {
        "session": d.isoformat(),
        "rows": len(today),
        "symbols_with_features": int(today.dropna(subset=["rv_22"])["symbol"].nunique()),
        "data_quality": "passed" if summary.success else "failed",
        "expectations": summary.evaluated,
        "n_warnings": len(summary.warnings),
    })


#: Warm-ups of the features suite: VIX may be null on any session (arch's series only covers
#: 2014-2019 and has gaps inside it), so its null check never starts; its range is still checked.
_SUITE_WARMUP_OVERRIDES: dict[str, int] = {"vix": 10**9}


def _validate_features(s: Settings, d: date, feats: pd.DataFrame, sessions: set[date]) -> Any:
    """Run the ``features`` suite on the sessions about to be written (warm-up counted on the
    whole history); an error stops the stage before anything is written."""
    from pipelines.quality import DataQualityError, validate_features
    from pipelines.schema import FEATURE_RANGES, FEATURE_WARMUP

    warmup = {**FEATURE_WARMUP, **_SUITE_WARMUP_OVERRIDES}
    try:
        summary = validate_features(
            feats, s.reports_dir, label=f"features {d.isoformat()}", columns=FEATURE_COLUMNS,
            warmup=warmup, ranges=FEATURE_RANGES, sessions=sorted(sessions),
        )
    except DataQualityError as exc:
        if exc.summary is not None:
            _report_quality(s, d, "features", exc.summary, "lake")
        raise
    _report_quality(s, d, "features", summary, "lake")
    return summary


def _schema_outdated(s: Settings, table: str, columns: tuple[str, ...]) -> bool:
    """True when the newest stored partition of ``table`` lacks one of ``columns``."""
    import pyarrow.parquet as pq

    from pipelines import lake

    sessions = lake.partition_sessions(s.lake_dir, table)
    if not sessions:
        return False
    names = set(pq.read_schema(lake.partition_path(s.lake_dir, table, sessions[-1])).names)
    return not set(columns) <= names


def monitor(session: str, settings: Settings | None = None) -> Summary:
    """Score the champion's live forecasts against what was realised; request a retrain on a
    breach of the thresholds in ``afterbell.toml`` ``[monitoring]``."""
    from pipelines.monitoring import MonitorThresholds, monitor_session
    from pipelines.schedule import load_config

    d, s = _setup(session, settings)
    thresholds = MonitorThresholds.from_mapping(load_config().monitoring)
    report = monitor_session(s, d, thresholds)
    for line in report.breaches:
        log.warning("monitoring %s: %s", d, line)
    return {"session": d.isoformat(), "retrain": report.retrain,
            "breaches": list(report.breaches), "n_scored": report.n_scored,
            "live_mae": report.live_mae, "baseline_mae": report.baseline_mae}


# --------------------------------------------------------------------------- light training
#: The light stage's conditional-volatility models: name -> (vol, dist) of the
#: :class:`~models.garch.GarchSpec`. The name prefixes the model's forecast column
#: (``garch_forecast``, ``egarch_forecast``); GARCH also gives ``garch_vol`` and
#: ``garch_std_resid``.
LIGHT_MODELS: dict[str, tuple[str, str]] = {"garch": ("GARCH", "t"), "egarch": ("EGARCH", "t")}


def _spec_key(spec: Any) -> str:
    """The stored identity of a GARCH spec (everything but the horizon)."""
    return json.dumps({k: v for k, v in asdict(spec).items() if k != "horizon"}, sort_keys=True)


def _previous_params(s: Settings, d: date) -> dict[tuple[str, str], Any]:
    """``(spec key, symbol) -> params`` of the newest ``garch_params`` partition before ``d``."""
    from pipelines import lake

    earlier = [t for t in lake.partition_sessions(s.lake_dir, "garch_params") if t < d]
    if not earlier:
        return {}
    prev = lake.read_table(s.lake_dir, "garch_params", start=earlier[-1], end=earlier[-1])
    if "spec" not in prev.columns:
        return {}
    return {(str(row.spec), str(row.symbol)): json.loads(str(row.params))
            for row in prev.itertuples(index=False)}


def light_specs(horizon: int) -> dict[str, Any]:
    """The :data:`LIGHT_MODELS` as :class:`~models.garch.GarchSpec` of the given horizon."""
    from models.garch import GarchSpec

    return {name: GarchSpec(vol=vol, dist=dist, horizon=horizon)  # type: ignore[arg-type]
            for name, (vol, dist) in LIGHT_MODELS.items()}


def garch_rows(
    returns: pd.Series,
    specs: Mapping[str, Any],
    *,
    history: Sequence[pd.Timestamp],
    refit_every: int,
    min_obs: int,
    starts: Mapping[str, np.ndarray | None] | None = None,
    name: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The ``GARCH_COLUMNS`` rows of one symbol (a pure function of its returns).

    Parameters
    ----------
    returns : pandas.Series
        Daily log returns by session, no NaN, ending at the session being processed.
    specs : mapping of str to GarchSpec
        :func:`light_specs`: ``"garch"`` gives ``garch_vol``, ``garch_forecast`` and
        ``garch_std_resid``; every other name ``<name>_forecast``.
    history : sequence of pandas.Timestamp
        Earlier sessions to fill from expanding-window refits every ``refit_every`` sessions
        on returns strictly before each block (no look-ahead).
    refit_every, min_obs : int
        Refit cadence and returns before the first fit.
    starts : mapping of str to numpy.ndarray, optional
        Warm starts per model name for the fits of the last session.
    name : str, optional
        Series name (the symbol) in the warnings of a capped or degenerate fit.

    Returns
    -------
    rows : pandas.DataFrame
        Indexed by session (the ``history`` sessions, then the last one), ``GARCH_COLUMNS``.
    fits : dict of str to GarchFit
        The last session's fit of each model (on every return up to it).
    """
    from models.baselines import ewma_vol
    from models.garch import filter_garch, fit_garch, rolling_garch_features

    horizon = next(iter(specs.values())).horizon
    ewma = ewma_vol(returns, horizon)
    blocks = []
    if len(history):
        hist = {model: rolling_garch_features(returns.iloc[:-1], spec, refit_every=refit_every,
                                              min_obs=min_obs, name=name)
                for model, spec in specs.items()}
        block = hist["garch"].loc[list(history)].copy()
        for model in specs:
            if model != "garch":
                block[f"{model}_forecast"] = hist[model].loc[list(history), "garch_forecast"]
        blocks.append(block)
    fits: dict[str, Any] = {}
    forecasts: dict[str, float] = {}
    today = None
    for model, spec in specs.items():
        start = (starts or {}).get(model)
        fit = fit_garch(returns, spec, start)
        if fit.warm_start and not fit.converged:
            cold = fit_garch(returns, spec)
            fit = cold if cold.converged or cold.loglik > fit.loglik else fit
        fits[model] = fit
        last = filter_garch(returns, fit, name=name, last_only=True).iloc[[-1]]
        if model == "garch":
            today = last.copy()
        else:
            forecasts[model] = float(last["garch_forecast"].iloc[0])
    assert today is not None
    for model, value in forecasts.items():
        today[f"{model}_forecast"] = value
    blocks.append(today)
    rows = pd.concat(blocks)
    rows["ewma_forecast"] = ewma.reindex(rows.index).to_numpy()
    return rows[list(GARCH_COLUMNS)], fits


class _GarchJob(NamedTuple):
    """One symbol's GARCH work: the arguments of :func:`garch_rows` (a pool's unit of work)."""

    symbol: str
    returns: pd.Series
    history: list[pd.Timestamp]
    starts: dict[str, np.ndarray | None]
    specs: Mapping[str, Any]
    refit_every: int
    min_obs: int


#: History rows to fill (all symbols together) from which the GARCH backfill runs in a process
#: pool (:mod:`pipelines.parallel`): below it the pool's start-up costs more than it saves.
PARALLEL_MIN_HISTORY_ROWS = 20_000


def _garch_job(job: _GarchJob) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`garch_rows` of one symbol."""
    return garch_rows(job.returns, job.specs, history=job.history, refit_every=job.refit_every,
                      min_obs=job.min_obs, starts=job.starts, name=job.symbol)


def refit_garch(session: str, settings: Settings | None = None) -> Summary:
    """Refit GARCH(1,1)-t and EGARCH(1,1)-t per symbol on returns up to the session, and the
    RiskMetrics EWMA forecast: the econometric inputs of the GARCH-LSTM (Kim & Won).

    History partitions are filled by expanding-window refits every ``garch_refit_every``
    sessions (parameters estimated strictly before each block: no look-ahead); the session's
    own row comes from fits on every return up to and including it, each warm-started from the
    symbol's parameters of the same spec in the newest ``garch_params`` partition strictly
    before the session (cold when there is none, when it was fitted with another spec, or when
    its parameters are infeasible on today's data). The same lake therefore gives the same
    starting values, and a re-run of the session the same partitions. ``garch_params`` holds one
    row per symbol and model; ``warm_start`` records how each fit started. Partitions written
    before a column was added to ``GARCH_COLUMNS`` are rewritten.
    """
    from pipelines import lake

    d, s = _setup(session, settings)
    feats = _lake_range(s, "features", d, ("symbol", "session", "event_timestamp", "ret_1"))
    if feats.empty:
        raise ValueError(f"no features in the lake up to {d}: run close_analysis first")
    specs = light_specs(s.horizon)
    keys = {name: _spec_key(spec) for name, spec in specs.items()}
    if _schema_outdated(s, "garch", GARCH_COLUMNS):
        log.info("garch %s: stored partitions lack new columns; rewriting the history", d)
        present: set[date] = set()
    else:
        present = set(lake.partition_sessions(s.lake_dir, "garch"))
    previous = _previous_params(s, d)
    rows, params = [], []
    family: dict[str, dict[str, Any]] = {name: {} for name in specs}
    jobs: list[_GarchJob] = []
    for symbol, g in feats.groupby("symbol", sort=True):
        r = g.set_index("session")["ret_1"].dropna()
        if len(r) < s.garch_min_obs or r.index[-1] != pd.Timestamp(d):
            continue
        starts: dict[str, np.ndarray | None] = {}
        for name, spec in specs.items():
            names = spec.parameter_names()
            stored = previous.get((keys[name], str(symbol)))
            starts[name] = (np.array([stored[n] for n in names], dtype=float)
                            if isinstance(stored, dict) and set(stored) == set(names) else None)
        jobs.append(_GarchJob(str(symbol), r,
                              [t for t in r.index[:-1] if t.date() not in present], starts,
                              specs, s.garch_refit_every, s.garch_min_obs))
    from pipelines.parallel import map_symbols

    backfill = sum(len(job.history) for job in jobs)
    results = map_symbols(_garch_job, jobs, workers=s.workers,
                          parallel=backfill >= PARALLEL_MIN_HISTORY_ROWS)
    for job, (out_rows, fits) in zip(jobs, results, strict=True):
        symbol = job.symbol
        rows.append(out_rows.assign(symbol=symbol))
        for name, fit in fits.items():
            family[name][str(symbol)] = fit
            params.append({"symbol": symbol, "session": pd.Timestamp(d), "model": name,
                           "loglik": fit.loglik, "nobs": fit.nobs, "converged": fit.converged,
                           "params": json.dumps(fit.params, sort_keys=True),
                           "warm_start": fit.warm_start, "spec": keys[name]})
    if not rows:
        raise ValueError(f"no symbol has {s.garch_min_obs} returns up to {d} for a GARCH fit")
    out = pd.concat(rows).rename_axis("session").reset_index()
    out["event_timestamp"] = calendar.closes_for(out["session"])
    out = out[["symbol", "session", "event_timestamp", *GARCH_COLUMNS]]
    lake.write_partitions(s.lake_dir, "garch", out)
    lake.write_partition(s.lake_dir, "garch_params", d, pd.DataFrame(params))
    fitted = sorted({str(p["symbol"]) for p in params})
    log.info("garch %s: %d symbols fitted (%s), %d rows written", d, len(fitted),
             ", ".join(specs), len(out))
    version = _register_garch_family(s, d, family, feats)
    return _run_record(s, d, "garch", {
        "session": d.isoformat(),
        "symbols_fitted": len(fitted),
        "converged": {name: sum(bool(p["converged"]) for p in params if p["model"] == name)
                      for name in specs},
        "spec": asdict(specs["garch"]),
        "models": {name: asdict(spec) for name, spec in specs.items()},
        "registered": {"model": GARCH_FAMILY_MODEL_NAME, "version": version},
    })


#: Registered model of the light stage's per-symbol GARCH-family fits (one version a session).
GARCH_FAMILY_MODEL_NAME = "garch_family_vol"


#: Sessions of returns behind the VaR/ES estimates and the covariance of the light stage.
RISK_WINDOW = 1000
COVARIANCE_WINDOW = 252


def recalibrate_risk(session: str, settings: Settings | None = None) -> Summary:
    """VaR/CVaR at 95% and 99% per symbol and for the paper book, shrunk covariance, stress.

    Per symbol and for the book held over the session (the paper broker's latest targets, or an
    equal-weight book before the first pre-market): historical, parametric normal and Student-t,
    GARCH(1,1)-t and GARCH-filtered historical simulation VaR and ES over the last
    ``RISK_WINDOW`` sessions (:func:`models.risk.var_table`); the Ledoit-Wolf covariance of the
    last ``COVARIANCE_WINDOW`` sessions; the book under the scenarios of
    :data:`models.risk.STRESS_SCENARIOS` (October 2008 and March 2020 replayed from the packaged
    data, market shocks of -10% and -20% times each symbol's beta to the S&P 500). Written to
    ``lake/risk`` and ``lake/covariance`` (session partitions) and ``runs/session=D/risk.json``.
    """
    from models.risk import STRESS_SCENARIOS, run_scenario, shrunk_covariance, var_table
    from pipelines import lake
    from pipelines.orders import positions
    from pipelines.sources import load_replay_panel

    d, s = _setup(session, settings)
    rets = _lake_range(s, "features", d, ("symbol", "session", "ret_1"))
    wide = rets.pivot_table(index="session", columns="symbol", values="ret_1").apply(np.expm1)
    wide = wide.loc[:, [c for c in wide.columns if c in s.universe]].tail(RISK_WINDOW)
    wide = wide.dropna(axis=1, how="all")  # delisted before the window
    book = positions(s.home / "broker", d)
    book = book[book != 0.0]
    label = "paper book"
    if book.empty:
        trading = wide.columns[wide.iloc[-1].notna()] if len(wide) else wide.columns
        trading = trading if len(trading) else wide.columns
        book = pd.Series(1.0 / len(trading), index=trading)
        label = "equal-weight (no paper book yet)"
    rows = []
    for symbol in wide.columns:
        r = wide[symbol].dropna().to_numpy(float)
        if len(r) < 250:
            continue
        rows.append(var_table(r).assign(symbol=symbol))
    port = (wide.reindex(columns=book.index).fillna(0.0) * book).sum(axis=1)
    rows.append(var_table(port.to_numpy(float)).assign(symbol="_book"))
    table = pd.concat(rows, ignore_index=True).assign(session=pd.Timestamp(d))
    lake.write_partition(s.lake_dir, "risk", d, table[["symbol", "session", "method", "level",
                                                      "var", "cvar"]])
    cov, shrinkage = shrunk_covariance(wide.tail(COVARIANCE_WINDOW).dropna(axis=1, how="any"))
    cov_long = pd.DataFrame(
        [(str(a), str(b), float(cov.loc[a, b])) for a in cov.index for b in cov.columns],
        columns=["symbol", "other", "cov"],
    )
    lake.write_partition(s.lake_dir, "covariance", d, cov_long.assign(session=pd.Timestamp(d)))
    recent = wide.tail(COVARIANCE_WINDOW)
    market = recent["SPX"] if "SPX" in recent else recent.mean(axis=1)
    # a symbol listed too recently for a beta is reported missing by the scenarios
    betas = recent.apply(lambda c: c.cov(market) / market.var()).dropna()
    panel = load_replay_panel()
    history = panel.pivot_table(index="session", columns="symbol",
                                values="close").pct_change(fill_method=None)
    stress = {}
    for name, scenario in STRESS_SCENARIOS.items():
        res = run_scenario(book, scenario, returns=history, betas=betas)
        stress[name] = {"pnl": res.pnl, "worst_day": res.worst_day,
                        "worst_date": None if res.worst_date is None
                        else res.worst_date.date().isoformat(),
                        "sessions": res.sessions, "missing": list(res.missing)}
    book_var = table[table["symbol"] == "_book"]
    summary = {f"{m}_{round(float(lv) * 100)}": {"var": v, "cvar": c}
               for m, lv, v, c in book_var[["method", "level", "var", "cvar"]].itertuples(
                   index=False)}
    log.info("risk %s: book (%s) GARCH-t VaR99 %.4f, ES99 %.4f; Ledoit-Wolf shrinkage %.3f",
             d, label, summary["garch_t_99"]["var"], summary["garch_t_99"]["cvar"], shrinkage)
    return _run_record(s, d, "risk", {
        "session": d.isoformat(), "book": label,
        "weights": {str(k): float(v) for k, v in book.sort_index().items()},
        "window": len(wide), "book_var": summary,
        "symbols": int(table["symbol"].nunique() - 1),
        "covariance": {"window": COVARIANCE_WINDOW, "shrinkage": shrinkage,
                       "symbols": list(map(str, cov.columns))},
        "stress": stress,
    })


#: Calendar days to expiry of the light stage's at-the-money straddle.
OPTION_DAYS = 30


def option_rows(garch: pd.DataFrame, rates: pd.DataFrame) -> pd.DataFrame:
    """The ``OPTION_COLUMNS`` of each (symbol, session): a 30-day ATM straddle priced from the
    GARCH variance forecast (a pure function of its inputs).

    The GARCH(1,1)-t forecast of the variance over the option's life is the ``garch_vol_30d`` of
    the row (annualised over 252 sessions, forecast over the next
    :data:`~models.garch.TERM_SESSIONS` sessions); as an option volatility on the calendar clock
    of the straddle (``OPTION_DAYS / 365`` years) it is
    ``garch_iv_30d = garch_vol_30d * sqrt(21 / 252 * 365 / 30)``: the same total variance.
    :func:`models.options.garch_straddle` prices the straddle (Black-Scholes-Merton through
    QuantLib's ``BlackCalculator``, spot 1, no dividend yield: the packaged data has none) at the
    session's 30-day rate.

    Parameters
    ----------
    garch : pandas.DataFrame
        ``symbol``, ``session``, ``event_timestamp``, ``garch_vol_30d``.
    rates : pandas.DataFrame
        Indexed by session: ``rate`` (continuously compounded 30-day rate, NaN where none was
        fresh enough), ``source``, ``curve_date``, ``age_days`` (:func:`pipelines.rates.rates_for`).

    Returns
    -------
    pandas.DataFrame
        ``symbol, session, event_timestamp``, the ``OPTION_COLUMNS`` and ``rate_source``,
        ``rate_curve_date``; the straddle is NaN where the forecast or the rate is missing.
    """
    from models.garch import TERM_SESSIONS
    from models.options import garch_straddle

    out = garch[["symbol", "session", "event_timestamp"]].copy()
    scale = math.sqrt(TERM_SESSIONS / 252 * 365 / OPTION_DAYS)
    iv = garch["garch_vol_30d"].to_numpy(np.float64) * scale
    on = rates.reindex(pd.DatetimeIndex(garch["session"]))
    rate = on["rate"].to_numpy(np.float64)
    straddle = np.full(len(out), np.nan)
    for i in np.flatnonzero(np.isfinite(iv) & (iv > 0) & np.isfinite(rate)):
        straddle[i] = garch_straddle(1.0, float(iv[i]), float(rate[i]), 0.0,
                                     OPTION_DAYS).price_over_spot
    out["garch_iv_30d"] = iv
    out["straddle_30d"] = straddle
    out["rate_30d"] = rate
    out["rate_source"] = on["source"].fillna("").astype(str).to_numpy()
    out["rate_curve_date"] = pd.to_datetime(on["curve_date"]).to_numpy()
    return out[["symbol", "session", "event_timestamp", *OPTION_COLUMNS, "rate_source",
                "rate_curve_date"]]


def price_options(session: str, settings: Settings | None = None) -> Summary:
    """Light stage: the 30-day ATM straddle per symbol from the GARCH variance forecast and the
    Treasury rate (lake table ``options``, Feast view ``option_features``), and the Heston
    calibration and implied-vol surface of every option chain ingested for the session
    (``afterbell options ingest-chain``; lake tables ``heston`` and ``iv_surface``).

    The rate of a session is the 30-day point of the newest curve dated strictly before it
    (:func:`pipelines.rates.rates_for`: an ingested Treasury curve, else the 1-month T-bill rate
    the installed ``arch`` ships). Missing history partitions are filled from the stored GARCH
    rows (a history session without a fresh rate gets NaN prices, logged); the session itself
    must have a rate, else the task fails naming the fix. Safe to repeat: partitions are
    overwritten.
    """
    from pipelines import lake, rates
    from pipelines.chains import calibrate_session

    d, s = _setup(session, settings)
    garch = _lake_range(s, "garch", d, ("symbol", "session", "event_timestamp", "garch_vol_30d"))
    if garch.empty or not (garch["session"] == pd.Timestamp(d)).any():
        raise ValueError(f"no GARCH rows for {d}: run refit_garch first")
    wanted = _to_write(s, "options", d, sorted({t.date() for t in garch["session"]}))
    garch = garch[garch["session"].dt.date.isin(wanted)]
    sessions = sorted({t.date() for t in garch["session"]})
    quote = rates.rate_at(s.lake_dir, d, days=OPTION_DAYS)  # the session's, or a clear error
    out = option_rows(garch, rates.rates_for(s.lake_dir, sessions, days=OPTION_DAYS))
    lake.write_partitions(s.lake_dir, "options", out)
    unpriced = out.loc[out["straddle_30d"].isna() & out["garch_iv_30d"].notna(), "session"]
    if len(unpriced):
        log.warning("options %s: %d history row(s) without a fresh 30-day rate left unpriced "
                    "(first %s)", d, len(unpriced), unpriced.min().date())
    today = out[out["session"] == pd.Timestamp(d)].set_index("symbol").sort_index()
    chains = calibrate_session(s.lake_dir, d)
    log.info("options %s: %d straddles at rate %.4f (%s, curve %s); %d rows written", d,
             int(today["straddle_30d"].notna().sum()), quote.rate, quote.source,
             quote.curve_date, len(out))
    return _run_record(s, d, "options", {
        "session": d.isoformat(),
        "days": OPTION_DAYS,
        "rate": {"rate": quote.rate, "source": quote.source,
                 "curve_date": quote.curve_date.isoformat(), "age_days": quote.age_days},
        "straddles": {str(sym): {"garch_iv_30d": float(row["garch_iv_30d"]),
                                 "straddle_30d": float(row["straddle_30d"])}
                      for sym, row in today.iterrows()},
        "chains": chains,
    })


def _register_garch_family(
    s: Settings, d: date, fits: dict[str, dict[str, Any]], feats: pd.DataFrame
) -> str:
    """Log tonight's fits as a pyfunc (:class:`models.pyfunc.GarchFamilyPyfunc`) in the
    session's ``light_training`` run and register it as :data:`GARCH_FAMILY_MODEL_NAME`
    (tags: session, models, returns range). A re-run of the session keeps its version."""
    import mlflow

    from models.garch import GarchFamily
    from models.pyfunc import log_garch_family
    from pipelines import registry

    sg = s.with_(model_name=GARCH_FAMILY_MODEL_NAME)
    existing = registry.version_for_session(sg, d.isoformat())
    if existing is not None:
        return existing.version
    family = GarchFamily(fits)
    rets = feats.dropna(subset=["ret_1"])
    example = (rets[rets["symbol"].isin(family.symbols[:2])]
               .groupby("symbol", group_keys=False).tail(100)[["symbol", "session", "ret_1"]])
    tags = {
        "session": d.isoformat(), "models": ",".join(fits),
        "returns_range": f"{rets['session'].min().date()}..{d}",
        "feature_service": "market_features:ret_1", "symbols": len(family.symbols),
    }
    run_id = registry.session_run(s, "light_training", d.isoformat())
    with mlflow.start_run(run_id=run_id):
        info = log_garch_family(family, registered_model_name=GARCH_FAMILY_MODEL_NAME,
                                input_example=example, tags=tags)
    return str(info.registered_model_version)


# -------------------------------------------------------------------------- data processing
def build_feature_tables(session: str, settings: Settings | None = None) -> Summary:
    """Write the offline store's tables (market, GARCH, options, LSTM windows) as of the
    session."""
    from pipelines import feature_store
    from pipelines.features import build_windows

    d, s = _setup(session, settings)
    feats = _lake_range(s, "features", d, ("symbol", "session", "event_timestamp",
                                           *FEATURE_COLUMNS))
    garch = _lake_range(s, "garch", d, ("symbol", "session", "event_timestamp", *GARCH_COLUMNS))
    if garch.empty:
        raise ValueError(f"no GARCH features up to {d}: run light_training first")
    options = _lake_range(s, "options", d, ("symbol", "session", "event_timestamp",
                                            *OPTION_COLUMNS))
    if options.empty:
        raise ValueError(f"no option features up to {d}: run light_training's price_options")
    windows = build_windows(feats, garch, s.train.lookback, WINDOW_COLUMNS)
    feature_store.write_offline_table(s, "market_features", feats)
    feature_store.write_offline_table(s, "garch_features", garch)
    feature_store.write_offline_table(s, "option_features", options)
    feature_store.write_offline_table(s, "lstm_window", windows)
    return _run_record(s, d, "feature_tables", {
        "session": d.isoformat(),
        "market_features": len(feats),
        "garch_features": len(garch),
        "option_features": len(options),
        "lstm_window": len(windows),
        "window_symbols_today": int((windows["session"] == pd.Timestamp(d)).sum()),
    })


def _materialize_session(s: Settings, d: date) -> tuple[pd.Timestamp, pd.Timestamp, Any]:
    """Materialise the interval that ends at the session's close (a week back, so a symbol whose
    last bar is a few sessions old still has its latest value online)."""
    from pipelines import feature_store

    start_session = calendar.previous_sessions(d, 6)[0]
    start = calendar.session_open(start_session)
    end = calendar.session_close(d)
    feature_store.apply_repo(s)
    report = feature_store.materialize(s, start.to_pydatetime(), end.to_pydatetime())
    log.info("materialise %s: %d rows into the %s online store in %.2fs (%.0f rows/s)", d,
             report.total_rows, s.profile, report.seconds, report.rows_per_second)
    return start, end, report


def materialize(session: str, settings: Settings | None = None) -> Summary:
    """Register the Feast definitions and materialise the session's interval online."""
    d, s = _setup(session, settings)
    start, end, report = _materialize_session(s, d)
    return _run_record(s, d, "materialize", {
        "session": d.isoformat(), "start": start.isoformat(), "end": end.isoformat(),
        "rows": dict(sorted(report.rows.items())),
    })


# ---------------------------------------------------------------------------- heavy training
def _target_columns(s: Settings) -> list[str]:
    """Label columns of the GARCH-LSTM, in head order: ``target`` (``horizon``), then
    ``target_h`` per extra horizon."""
    return ["target", *(f"target_{h}" for h in s.extra_horizons)]


def _dataset(s: Settings, d: date) -> tuple[pd.DataFrame, Any]:
    """Point-in-time dataset from Feast: windows joined to forward targets, with segments.

    ``target`` is the realised vol over the next ``horizon`` sessions (the scored label),
    ``target_h`` that over the next ``h`` sessions for each extra head; segments are embargoed
    by the longest of them.
    """
    from pipelines import feature_store
    from pipelines.datasets import forward_targets, make_segments

    keys = pd.read_parquet(
        s.offline_dir / "lstm_window.parquet", columns=["symbol", "session", "event_timestamp"]
    )
    keys = keys[keys["session"] <= pd.Timestamp(d)]
    rets = _lake_range(s, "features", d, ("symbol", "session", "ret_1"))
    targets = forward_targets(rets, s.horizon)
    for h in s.extra_horizons:
        extra = forward_targets(rets, h).rename(columns={"target": f"target_{h}"})
        targets = targets.merge(extra, on=["symbol", "session"], how="left")
    sessions = sorted(set(rets["session"].dt.date))
    segments = make_segments(sessions, horizon=s.horizon, holdout=s.holdout_sessions,
                             embargo=s.label_horizon)
    frame = keys.merge(targets, on=["symbol", "session"], how="inner").dropna(subset=["target"])
    frame = frame[frame["session"] <= pd.Timestamp(segments.test[1])]
    hist = feature_store.historical_features(
        s, frame[["symbol", "event_timestamp", "session", *_target_columns(s)]],
        ["lstm_window:seq"], engine="asof",
    )
    hist = hist.dropna(subset=["seq"]).sort_values(["session", "symbol"]).reset_index(drop=True)
    return hist, segments


def plan_training(session: str, settings: Settings | None = None) -> Summary:
    """Tonight's heavy-training decision: cadence (``afterbell.toml``), registry, monitoring."""
    from pipelines import registry
    from pipelines.monitoring import consumed_retrain, pending_retrain
    from pipelines.schedule import load_config, training_plan

    d, s = _setup(session, settings)
    # Decided from the state before this session's own heavy run, so a re-run plans the same.
    has_model = registry.registered_before(s, d.isoformat())
    pending = pending_retrain(s)
    if pending is not None and pending.requested_by_session > d.isoformat():
        pending = None  # requested by a later session: not part of this session's state
    request = consumed_retrain(s, d.isoformat()) or pending
    plan = training_plan(d, load_config().cadence, has_model=has_model,
                         retrain_reasons=tuple(request.reasons) if request else ())
    return _run_record(s, d, "plan_training", {
        "session": d.isoformat(), "run": plan.run, "kind": plan.kind, "reason": plan.reason,
    })


def train_challenger(session: str, settings: Settings | None = None) -> Summary:
    """Train the GARCH-LSTM on the point-in-time training set, register it, alias ``challenger``.

    When tonight's plan (the session's ``plan_training`` record, planned here if missing) is a
    full retrain (monthly, or the bootstrap run), an Optuna study within the ``[tuning]`` budget
    of ``afterbell.toml`` picks the architecture first (:func:`pipelines.tuning.tune_lstm`), and
    the model is refitted with the best trial's parameters; the weekly LSTM retrain fits the
    configured one. The best parameters and the study's counts are logged to the MLflow run and
    the version is tagged ``tuning_study``.

    A re-run of the same session reuses the version it registered (same data, same seed), so
    the registry never holds duplicates for a session; a re-run that never got that far reuses
    the session's finished study instead of running new trials.
    """
    import mlflow

    from models.lstm import LSTMSpec, MlflowEpochLogger, fit_lstm
    from models.pyfunc import log_lstm_model
    from pipelines import registry
    from pipelines.datasets import stack_windows
    from pipelines.schedule import load_config

    d, s = _setup(session, settings)
    existing = registry.version_for_session(s, d.isoformat())
    if existing is not None:
        if _is_latest(s, d):
            registry.set_alias(s, ALIAS_CHALLENGER, existing.version)
        log.info("heavy %s: reusing v%s registered by this session", d, existing.version)
        stored = _stored_record(s, d, "heavy_training")
        if stored is None or stored.get("version") != existing.version:
            stored = _run_record(s, d, "heavy_training", {
                "session": d.isoformat(), "model": s.model_name, "version": existing.version,
                "alias": ALIAS_CHALLENGER,
            })
        return {**stored, "reused": True}
    data, seg = _dataset(s, d)
    nf = len(WINDOW_COLUMNS)
    spec = LSTMSpec.from_train_config(s.train, horizon=s.horizon,
                                      extra_horizons=s.extra_horizons)
    target_cols = _target_columns(s)
    labelled = data.dropna(subset=target_cols)
    tr = labelled[seg.of(labelled["session"], "train")]
    if s.train.max_train_rows and len(tr) > s.train.max_train_rows:
        tr = tr.iloc[-s.train.max_train_rows :]
    va = labelled[seg.of(labelled["session"], "valid")]
    if tr.empty or va.empty:
        raise ValueError(
            f"heavy training {d}: {len(tr)} training and {len(va)} validation windows in the "
            f"offline store (train {seg.train[0]}..{seg.train[1]}, valid {seg.valid[0]}.."
            f"{seg.valid[1]}, holdout {s.holdout_sessions} sessions): the history is too short "
            "for the holdout; raise AFTERBELL_HISTORY_YEARS or lower AFTERBELL_HOLDOUT")
    x_tr = stack_windows(tr["seq"], spec.lookback, nf)
    x_va = stack_windows(va["seq"], spec.lookback, nf)
    y_tr = tr[target_cols].to_numpy(np.float32)
    y_va = va[target_cols].to_numpy(np.float32)
    plan = _stored_record(s, d, "plan_training") or plan_training(session, s)
    tuning_cfg = load_config().tuning
    tuned = None
    if plan.get("kind") == "full" and tuning_cfg.enabled:
        from pipelines import tuning

        tuned = tuning.tune_lstm(
            spec, x_tr, y_tr, x_va, y_va, tuning_cfg,
            storage=tuning.study_storage(s),
            study_name=tuning.study_name(s.model_name, d.isoformat(), spec, tuning_cfg,
                                         len(x_tr), len(x_va)),
        )
        if not tuned.best_params:
            log.warning("heavy %s: no trial of %s completed; fitting the configured spec", d,
                        tuned.study_name)
        spec = tuning.best_spec(spec, tuned)
    log.info("heavy %s: training on %d windows, early stopping on %d", d, len(tr), len(va))
    example = _window_example(x_va, spec.lookback)
    registry.ensure_experiment(s, "heavy_training")
    with mlflow.start_run(run_name=f"heavy_training {d}") as run:
        mlflow.set_tags({"session": d.isoformat(), "stage": "heavy_training",
                         "feature_service": FEATURE_SERVICE})
        mlflow.log_params({**{f"spec.{k}": v for k, v in asdict(spec).items()},
                           **seg.as_dict(), "train_rows": len(tr), "valid_rows": len(va)})
        fitted = fit_lstm(spec, x_tr, y_tr, x_va, y_va, callbacks=[MlflowEpochLogger()])
        if tuned is not None:
            mlflow.set_tag("tuning_study", tuned.study_name)
            mlflow.log_params({
                **{f"tuning.{k}": v for k, v in tuned.best_params.items()},
                "tuning.study": tuned.study_name, "tuning.budget_trials": tuning_cfg.n_trials,
                "tuning.budget_minutes": tuning_cfg.timeout_minutes,
            })
            mlflow.log_metrics({k: v for k, v in {
                "tuning.n_trials": tuned.n_trials, "tuning.n_pruned": tuned.n_pruned,
                "tuning.best_value": tuned.best_value, "tuning.elapsed_s": tuned.elapsed_s,
            }.items() if math.isfinite(v)})
        info = log_lstm_model(fitted, name="model", registered_model_name=s.model_name,
                              input_example=example)
        version = str(info.registered_model_version)
    registry.tag_version(s, version, {
        "session": d.isoformat(), "feature_service": FEATURE_SERVICE,
        "train_range": f"{seg.train[0]}..{seg.train[1]}",
        "valid_range": f"{seg.valid[0]}..{seg.valid[1]}",
        "holdout_range": f"{seg.test[0]}..{seg.test[1]}",
        "horizon": s.horizon, "horizons": ",".join(map(str, spec.horizons)),
        "window_columns": ",".join(WINDOW_COLUMNS), "run_id": run.info.run_id,
        **({"tuning_study": tuned.study_name} if tuned is not None else {}),
        # the Deflated Sharpe Ratio of the validation corrects for the search that found it
        "configurations_tried": max(1, tuned.n_trials) if tuned is not None else 1,
    })
    from pipelines.monitoring import clear_retrain, pending_retrain

    if _is_latest(s, d):
        registry.set_alias(s, ALIAS_CHALLENGER, version)
    request = pending_retrain(s)
    if request is not None and request.requested_by_session <= d.isoformat():
        clear_retrain(s, consumed_by_session=d.isoformat())
    record = _run_record(s, d, "heavy_training", {
        "session": d.isoformat(), "model": s.model_name, "version": version,
        "alias": ALIAS_CHALLENGER, "train_rows": len(tr),
        "valid_rows": len(va), "best_valid_loss": float(min(fitted.valid_loss)),
        **({"tuning": tuned.to_record()} if tuned is not None else {}),
    })
    return {**record, "reused": False}


def _window_example(x: np.ndarray, lookback: int) -> pd.DataFrame:
    """The first five windows of ``x`` in the pyfunc input layout (the logged input example)."""
    from models.lstm import seq_columns

    n = min(5, len(x))
    return pd.DataFrame(x[:n].reshape(n, -1).astype(np.float64),
                        columns=seq_columns(lookback, len(WINDOW_COLUMNS)))


def _transformer_holdout(
    pred: pd.DataFrame, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
    horizons: Sequence[int],
) -> dict[str, float]:
    """Holdout scores of the Transformer's predictions ``pred`` of the ``test`` windows beside
    their baselines: direction accuracy (binomial p-value against a coin), MAE of the expected
    return against the zero forecast, and the Gaussian vol head's MAE on ``|r|`` against the
    train segment's mean ``|r|``."""
    from models.evaluation import direction_accuracy

    y_te = arrays["test"][1]
    y_tr = arrays["train"][1]
    out: dict[str, float] = {}
    for j, h in enumerate(horizons):
        y = y_te[:, j].astype(np.float64)
        dr = direction_accuracy(y, pred[f"prob_up_{h}"].to_numpy() - 0.5)
        out[f"direction_accuracy_{h}"] = dr.accuracy
        out[f"direction_pvalue_{h}"] = dr.pvalue
        out[f"ret_mae_{h}"] = float(np.mean(np.abs(y - pred[f"ret_{h}"].to_numpy())))
        out[f"zero_ret_mae_{h}"] = float(np.mean(np.abs(y)))
        absret = np.abs(y)
        out[f"vol_mae_{h}"] = float(np.mean(np.abs(absret - pred[f"vol_{h}"].to_numpy()
                                                  * math.sqrt(2.0 / math.pi))))
        out[f"mean_absret_mae_{h}"] = float(np.mean(np.abs(
            absret - np.mean(np.abs(y_tr[:, j].astype(np.float64))))))
    out["test_rows"] = float(len(y_te))
    return out


def train_transformer(session: str, settings: Settings | None = None) -> Summary:
    """Train the PatchTST multi-task forecaster on the full retrain, score it on the holdout,
    register it (``settings.transformer.model_name``), alias ``challenger``.

    It reads the GARCH-LSTM's point-in-time windows (Feast) and forecasts the log return over
    each horizon: direction probability, expected return, Gaussian vol and P10/P50/P90. Runs
    only when tonight's plan is a full retrain (monthly, or the bootstrap run); otherwise it
    records why not. The holdout (the validation stage's ``test`` segment) gives direction
    accuracy with its binomial p-value (a daily accuracy above 60% on at least
    ``leakage_min_rows`` scored rows fails the stage: leakage alarm), MAEs beside naive
    baselines and the empirical coverage of the intervals, all logged to the MLflow run.
    The gate of the validation stage judges the GARCH-LSTM only; this model is a registered,
    monitored candidate. A re-run of the session reuses its version.
    """
    import mlflow

    from models.evaluation import check_leakage, direction_accuracy
    from models.lstm import MlflowEpochLogger
    from models.pyfunc import log_transformer_model
    from models.transformer import (
        TransformerDataModule,
        TransformerSpec,
        fit_transformer,
        forward_returns,
        holdout_coverage,
    )
    from pipelines import registry
    from pipelines.datasets import stack_windows

    d, s = _setup(session, settings)
    cfg = s.transformer
    st = s.with_(model_name=cfg.model_name)
    plan = _stored_record(s, d, "plan_training") or plan_training(session, s)
    if not plan.get("run") or plan.get("kind") != "full":
        reason = (f"the Transformer trains on full retrains only; tonight: "
                  f"{plan.get('kind') if plan.get('run') else 'no training'}")
        log.info("transformer %s: %s", d, reason)
        return _run_record(s, d, "transformer", {"session": d.isoformat(), "trained": False,
                                                  "reason": reason})
    existing = registry.version_for_session(st, d.isoformat())
    if existing is not None:
        if _is_latest(s, d):
            registry.set_alias(st, ALIAS_CHALLENGER, existing.version)
        stored = _stored_record(s, d, "transformer")
        if stored is None or stored.get("version") != existing.version:
            stored = _run_record(s, d, "transformer", {
                "session": d.isoformat(), "trained": True, "model": cfg.model_name,
                "version": existing.version, "alias": ALIAS_CHALLENGER,
            })
        return {**stored, "reused": True}
    horizons = tuple(cfg.horizons)
    data, seg = _dataset(s, d)
    rets = _lake_range(s, "features", d, ("symbol", "session", "ret_1"))
    ycols = [f"fwd_ret_{h}" for h in horizons]
    data = data.merge(forward_returns(rets, horizons), on=["symbol", "session"], how="left")
    labelled = data.dropna(subset=ycols)
    nf = len(WINDOW_COLUMNS)
    parts = {name: labelled[seg.of(labelled["session"], name)] for name in ("train", "valid",
                                                                            "test")}
    if cfg.max_train_rows and len(parts["train"]) > cfg.max_train_rows:
        parts["train"] = parts["train"].iloc[-cfg.max_train_rows :]
    arrays = {name: (stack_windows(p["seq"], s.train.lookback, nf), p[ycols].to_numpy(np.float32))
              for name, p in parts.items()}
    spec = TransformerSpec(
        lookback=s.train.lookback, patch_len=min(cfg.patch_len, s.train.lookback),
        stride=min(cfg.stride, cfg.patch_len, s.train.lookback), d_model=cfg.d_model,
        n_heads=cfg.n_heads, n_layers=cfg.n_layers, d_ff=cfg.d_ff, dropout=cfg.dropout,
        n_features=nf, horizons=horizons, lr=cfg.lr, batch_size=cfg.batch_size,
        max_epochs=cfg.max_epochs, patience=cfg.patience, seed=cfg.seed,
    )
    dm = TransformerDataModule(arrays, batch_size=spec.batch_size, seed=spec.seed)
    example = _window_example(arrays["valid"][0], spec.lookback)
    tags = {
        "session": d.isoformat(), "feature_service": FEATURE_SERVICE,
        "train_range": f"{seg.train[0]}..{seg.train[1]}",
        "valid_range": f"{seg.valid[0]}..{seg.valid[1]}",
        "holdout_range": f"{seg.test[0]}..{seg.test[1]}",
        "horizons": ",".join(map(str, horizons)), "window_columns": ",".join(WINDOW_COLUMNS),
    }
    log.info("transformer %s: training on %d windows, early stopping on %d, holdout %d", d,
             len(parts["train"]), len(parts["valid"]), len(parts["test"]))
    registry.ensure_experiment(s, "heavy_training")
    with mlflow.start_run(run_name=f"transformer {d}") as run:
        mlflow.set_tags({**tags, "stage": "heavy_training", "model": cfg.model_name})
        mlflow.log_params({**{f"spec.{k}": v for k, v in asdict(spec).items()},
                           **seg.as_dict(), **{f"{k}_rows": len(p) for k, p in parts.items()}})
        fitted = fit_transformer(spec, dm, feature_columns=WINDOW_COLUMNS,
                                 callbacks=[MlflowEpochLogger()])
        x_te, y_te = arrays["test"]
        pred = fitted.predict(x_te)  # once: the leakage alarm and the scores read it
        daily = horizons.index(1) if 1 in horizons else None
        leakage = "no daily horizon"
        if daily is not None:
            result = direction_accuracy(y_te[:, daily].astype(np.float64),
                                        pred["prob_up_1"].to_numpy() - 0.5)
            if result.n >= cfg.leakage_min_rows:
                check_leakage(result)  # LeakageError: the run fails, nothing is registered
                leakage = f"passed ({result.accuracy:.1%} of {result.n} rows <= 60%)"
            else:
                leakage = (f"not applied: {result.n} scored rows < {cfg.leakage_min_rows} "
                           f"(daily direction {result.accuracy:.1%})")
                log.warning("transformer %s: leakage alarm %s", d, leakage)
        mlflow.set_tag("leakage_check", leakage)
        scores = _transformer_holdout(pred, arrays, horizons)
        coverage = holdout_coverage(fitted, dm, alpha=cfg.alpha)
        mlflow.log_metrics({f"holdout.{k}": v for k, v in scores.items() if math.isfinite(v)})
        mlflow.log_table(coverage, "holdout/coverage.json")
        info = log_transformer_model(fitted, name="model", registered_model_name=cfg.model_name,
                                     input_example=example)
        version = str(info.registered_model_version)
    registry.tag_version(st, version, {**tags, "run_id": run.info.run_id})
    if _is_latest(s, d):
        registry.set_alias(st, ALIAS_CHALLENGER, version)
    record = _run_record(s, d, "transformer", {
        "session": d.isoformat(), "trained": True, "model": cfg.model_name, "version": version,
        "alias": ALIAS_CHALLENGER, "train_rows": len(parts["train"]),
        "valid_rows": len(parts["valid"]), "best_valid_loss": float(min(fitted.valid_loss)),
        "holdout": scores, "leakage_check": leakage,
        "coverage": coverage.to_dict(orient="records"),
    })
    return {**record, "reused": False}


# -------------------------------------------------------------------------------- validation
def _baseline_forecasts(s: Settings, d: date, keys: pd.DataFrame) -> dict[str, np.ndarray]:
    """GARCH(1,1)-t, EWMA and historical-vol forecasts for the holdout rows (all causal)."""
    from models.baselines import ewma_vol, historical_vol

    garch = _lake_range(s, "garch", d, ("symbol", "session", "garch_forecast"))
    rets = _lake_range(s, "features", d, ("symbol", "session", "ret_1"))
    parts = []
    for symbol, g in rets.groupby("symbol", sort=True):
        r = g.set_index("session")["ret_1"].fillna(0.0)
        parts.append(pd.DataFrame({
            "symbol": symbol, "session": r.index,
            "ewma": ewma_vol(r, s.horizon).to_numpy(),
            "hist22": historical_vol(r, s.horizon).to_numpy(),
        }))
    base = pd.concat(parts, ignore_index=True).merge(garch, on=["symbol", "session"], how="left")
    joined = keys[["symbol", "session"]].merge(base, on=["symbol", "session"], how="left")
    return {
        "garch": joined["garch_forecast"].to_numpy(np.float64),
        "ewma": joined["ewma"].to_numpy(np.float64),
        "hist22": joined["hist22"].to_numpy(np.float64),
    }


def validate_and_promote(session: str, settings: Settings | None = None) -> Summary:
    """Judge the ``challenger`` against the champion and the baselines; promote on a clear win.

    Whatever ``challenger`` points to (set by the heavy stage, or by hand in the MLflow UI) is
    scored with the champion and the baselines on the same holdout rows; the figures and the
    gate are :mod:`pipelines.gate`'s (thresholds: ``[validation]`` of ``afterbell.toml``). On a
    promotion ``champion`` moves to the challenger and the replaced champion becomes
    ``previous``. The decision and every reason are tagged on the model version, and the report
    (``validation/report.json`` and ``validation/report.html`` with plots) is logged to the
    validation's MLflow run; ``runs/session=D/validation_report.json`` keeps the JSON.
    """
    import mlflow

    from pipelines import registry
    from pipelines.datasets import window_frame
    from pipelines.gate import Calibration, GateConfig, Holdout, decide, evaluate
    from pipelines.report import render_report_html
    from pipelines.schedule import load_config

    d, s = _setup(session, settings)
    cfg = GateConfig.from_mapping(load_config().validation)
    latest = _is_latest(s, d)
    challenger = _challenger_as_of(s, d)
    if challenger is None:
        raise ValueError(f"no '{ALIAS_CHALLENGER}' version of {s.model_name} to validate")
    stored = _stored_record(s, d, "validation")
    if (stored is not None and stored.get("challenger") == challenger.version
            and f"validation.{d.isoformat()}.decision" in challenger.tags):
        # This session already judged this challenger: a re-run reports the same verdict
        # instead of judging again against the champion it may itself have promoted.
        log.info("validation %s: v%s already judged (%s)", d, challenger.version,
                 stored["decision"])
        return {**stored, "reused": True}
    champion = _champion_as_of(s, d, inclusive=False)
    earlier = sorted(
        k.split(".")[1] for k in challenger.tags
        if k.startswith("validation.") and k.endswith(".decision") and k.split(".")[1] < str(d)
    )
    if earlier:
        # Scoring the same challenger again on a later holdout until it wins would be a
        # multiple-testing loophole: a version gets one verdict.
        reason = (f"challenger v{challenger.version} was already validated on {earlier[-1]} "
                  f"({challenger.tags[f'validation.{earlier[-1]}.decision']}); no new challenger")
        log.info("validation %s skipped: %s", d, reason)
        final = champion
        return _run_record(s, d, "validation", {
            "session": d.isoformat(), "decision": "skipped", "reasons": [reason],
            "challenger": challenger.version, "champion_after": final.version if final else None,
        })
    data, seg = _dataset(s, d)
    mismatch = window_mismatch(challenger)
    if mismatch is not None:
        raise ValueError(f"challenger {mismatch}: retrain it (afterbell stage heavy_training)")
    models = {"challenger": registry.load_pyfunc(s, challenger)}
    stale = None if champion is None else window_mismatch(champion)
    already = champion is not None and champion.version == challenger.version
    if champion is not None and not already and stale is None:
        models["champion"] = registry.load_pyfunc(s, champion)
    rets = _lake_range(s, "features", d, ("symbol", "session", "ret_1"))
    valid = data[seg.of(data["session"], "valid")].reset_index(drop=True)
    test = data[seg.of(data["session"], "test")].reset_index(drop=True)
    both = pd.concat([valid, test], ignore_index=True)  # one pass over the lake for both
    frame = window_frame(list(both["seq"]))
    preds_both = {m: _predict(model, frame) for m, model in models.items()}
    preds_both.update(_baseline_forecasts(s, d, both))
    next_both = _next_returns(rets, both)
    cut = len(valid)
    holdout = Holdout(
        keys=test[["symbol", "session"]], target=test["target"].to_numpy(np.float64),
        forecasts={m: p[cut:] for m, p in preds_both.items()}, next_return=next_both[cut:],
        dollar_volume=_dollar_volume(s, d, test), horizon=s.horizon,
        history=rets.pivot(index="session", columns="symbol", values="ret_1").apply(np.expm1),
        calibration=Calibration(keys=valid[["symbol", "session"]],
                                forecasts={m: p[:cut] for m, p in preds_both.items()},
                                next_return=next_both[:cut]),
    )
    figures = evaluate(holdout, cfg, configurations_tried=int(
        challenger.tags.get("configurations_tried", "1")))
    data_passed, data_note = _data_quality_passed(s, d)
    decision, reasons = decide(
        figures, cfg, champion=champion.version if champion else None,
        champion_scored="champion" in preds_both, already_champion=already,
        data_passed=data_passed, data_note=data_note,
    )
    age = None if champion is None else champion_age(champion, d)
    if age is not None and age > cfg.max_champion_age:
        reasons.append(f"champion v{champion.version} is stale: trained {age} sessions ago "
                       f"(max_champion_age {cfg.max_champion_age}); serving refuses it")
    promote = decision == "promote"
    report = {
        "session": d.isoformat(),
        "model": s.model_name,
        "challenger": challenger.version,
        "champion": champion.version if champion else None,
        "champion_age_sessions": age,
        "baselines": sorted(k for k in preds_both if k not in ("challenger", "champion")),
        "holdout": {"start": seg.test[0].isoformat(), "end": seg.test[1].isoformat(),
                    "rows": figures["rows"], "sessions": figures["sessions"],
                    "horizon": s.horizon},
        "metrics": figures["metrics"],
        "tests": figures["tests"],
        "var_backtest": figures["var_backtest"],
        "backtest": figures["backtest"],
        "dsr": figures["dsr"],
        "data_quality": {"passed": data_passed, "note": data_note},
        "gate": cfg.as_dict(),
        "decision": decision,
        "reasons": reasons,
    }
    registry.ensure_experiment(s, "validation")
    with mlflow.start_run(run_name=f"validation {d}"):
        mlflow.set_tags({"session": d.isoformat(), "stage": "validation", "decision": decision,
                         "challenger_version": challenger.version,
                         "champion_version": champion.version if champion else "none"})
        mlflow.log_metrics({f"{m}_{k}": v for m, vals in figures["metrics"].items()
                            for k, v in vals.items() if math.isfinite(v)})
        mlflow.log_dict(report, "validation/report.json")
        mlflow.log_text(render_report_html(report, figures["series"]),
                        "validation/report.html")
    out_dir = s.runs_dir / f"session={d.isoformat()}"
    _write_json(out_dir / "validation_report.json", report)
    registry.tag_version(s, challenger.version, {
        f"validation.{d.isoformat()}.decision": decision,
        f"validation.{d.isoformat()}.reasons": "; ".join(reasons)[:4900],
    })
    if promote and latest:
        registry.promote(s, challenger.version)
    final = challenger if promote else champion
    return _run_record(s, d, "validation", {
        "session": d.isoformat(), "decision": decision, "reasons": reasons,
        "challenger": challenger.version, "champion": champion.version if champion else None,
        "holdout": report["holdout"], "metrics": figures["metrics"],
        "var_zone": figures["var_backtest"]["challenger"]["zone"],
        "champion_after": final.version if final else None,
    })


def champion_age(version: Any, d: date) -> int | None:
    """Sessions from the version's training session (tag ``session``) to ``d``; None untagged."""
    trained = version.tags.get("session")
    if not trained:
        return None
    return max(0, len(calendar.sessions_between(trained, d)) - 1)


def stale_champion(version: Any, d: date, max_age: int | None = None) -> str | None:
    """Why the champion ``version`` is too old to trade on ``d``, or None when it is not.

    ``max_age`` defaults to ``max_champion_age`` of ``[validation]`` in ``afterbell.toml``.
    """
    if max_age is None:
        from pipelines.gate import GateConfig
        from pipelines.schedule import load_config

        max_age = GateConfig.from_mapping(load_config().validation).max_champion_age
    age = champion_age(version, d)
    if age is None or age <= max_age:
        return None
    return (f"v{version.version} was trained on {version.tags['session']}, {age} sessions before "
            f"{d} (max_champion_age {max_age}): promote a fresh model or roll back")


def _next_returns(rets: pd.DataFrame, keys: pd.DataFrame) -> np.ndarray:
    """Log return of each row's symbol over the session after the row's session, from the lake
    ``features`` rows ``rets`` (symbol, session, ret_1) up to the validated session (the
    holdout ends ``label_horizon`` sessions before it, so the return is known)."""
    rets = rets.sort_values(["symbol", "session"])
    rets["next_return"] = rets.groupby("symbol")["ret_1"].shift(-1)
    joined = keys[["symbol", "session"]].merge(
        rets[["symbol", "session", "next_return"]], on=["symbol", "session"], how="left")
    return joined["next_return"].to_numpy(np.float64)


def _dollar_volume(s: Settings, d: date, keys: pd.DataFrame) -> np.ndarray:
    """Trailing 20-session mean dollar volume (close x volume) at each row's session."""
    from models.backtest import average_dollar_volume

    bars = _lake_range(s, "bars", d, ("symbol", "session", "close", "volume"))
    close = bars.pivot(index="session", columns="symbol", values="close")
    # the packaged stocks have no volume (all NaN): their ADV is NaN and the gate's backtest
    # uses [validation] default_adv for them
    volume = bars.pivot(index="session", columns="symbol", values="volume").reindex_like(close)
    adv = average_dollar_volume(close, volume, window=20)
    long = adv.rename_axis(index="session", columns="symbol").reset_index().melt(
        id_vars="session", var_name="symbol", value_name="adv")
    joined = keys[["symbol", "session"]].merge(long, on=["symbol", "session"], how="left")
    return joined["adv"].to_numpy(np.float64)


def _data_quality_passed(s: Settings, d: date) -> tuple[bool, str]:
    """Whether the session's bars and features passed their Great Expectations suites."""
    notes, ok = [], True
    for stage in ("ingest", "features"):
        record = _stored_record(s, d, stage)
        if record is None:
            ok = False
            notes.append(f"no {stage} record for {d}")
        elif record.get("data_quality") != "passed":
            ok = False
            notes.append(f"{stage} data quality {record.get('data_quality')}")
        else:
            notes.append(f"{stage} passed")
    return ok, f"session data: {', '.join(notes)}"


#: Window columns of versions registered before the ``window_columns`` tag existed.
_LEGACY_WINDOW_COLUMNS = "ret_1,rv_5,rv_22,garch_vol,garch_forecast"


def window_mismatch(version: Any) -> str | None:
    """Why ``version`` cannot read tonight's windows, or None when it can.

    A model version is tagged with the ``WINDOW_COLUMNS`` it was trained on; feeding it windows
    of other columns would not fail (the wide input has at least as many columns) but would be
    silently wrong, so callers refuse it instead.
    """
    trained = str(version.tags.get("window_columns", _LEGACY_WINDOW_COLUMNS))
    current = ",".join(WINDOW_COLUMNS)
    if trained == current:
        return None
    return (f"v{version.version} was trained on windows of ({trained}); the feature tables now "
            f"hold ({current})")


def _predict(model: Any, frame: pd.DataFrame) -> np.ndarray:
    out = model.predict(frame)
    col = out["forecast"] if isinstance(out, pd.DataFrame) else out
    return np.asarray(col, dtype=np.float64).reshape(-1)


# -------------------------------------------------------------------------------- pre-market
def pre_market(session: str, settings: Settings | None = None) -> Summary:
    """Latest features online, then the champion's forecasts for the next session."""
    from pipelines import lake, registry
    from pipelines.datasets import window_frame
    from pipelines.feature_store import online_features

    d, s = _setup(session, settings)
    _materialize_session(s, d)
    champion = _champion_as_of(s, d, inclusive=True)
    if champion is None:
        return _run_record(s, d, "pre_market", {
            "session": d.isoformat(), "forecasts": 0, "reason": "no champion yet",
        })
    mismatch = window_mismatch(champion)
    if mismatch is not None:
        raise ValueError(f"champion {mismatch}: no forecast written; promote a model trained on "
                         f"the current windows (the champion alias is left where it is)")
    stale = stale_champion(champion, d)
    if stale is not None:
        raise ValueError(f"champion {stale}; no forecast written (the alias is left where it is)")
    online = online_features(s, list(s.universe), FEATURE_SERVICE)
    rows = {sym: v for sym, v in online.items() if v.get("seq") is not None}
    model = registry.load_pyfunc(s, champion)
    frame = window_frame([rows[sym]["seq"] for sym in rows])
    fc = _predict(model, frame) if rows else np.array([])
    out = pd.DataFrame({
        "symbol": list(rows), "session": pd.Timestamp(d),
        "for_session": pd.Timestamp(calendar.next_session(d)),
        "forecast": fc, "model_version": champion.version,
        "asof": [int(rows[sym]["asof"]) for sym in rows],
    })
    lake.write_partition(s.lake_dir, "forecasts", d, out)
    return _run_record(s, d, "pre_market", {
        "session": d.isoformat(), "for_session": calendar.next_session(d).isoformat(),
        "forecasts": len(out), "model_version": champion.version,
    })


def paper_equity(s: Settings, d: date, root: Path, capital: float) -> pd.Series:
    """Equity of the paper book at each close up to ``d``: the book decided at the pre-market
    of session ``t`` (folder ``session=t``) earns the next session's return."""
    from pipelines import lake

    books = sorted(p for p in root.glob("session=*") if (p / "targets.csv").is_file()
                   and p.name[len("session="):] < d.isoformat())
    if not books:
        return pd.Series([capital], index=[pd.Timestamp(d)], dtype=float)
    first = date.fromisoformat(books[0].name[len("session="):])
    rets = lake.read_table(s.lake_dir, "features", start=first, end=d,
                           columns=["symbol", "session", "ret_1"])
    simple = rets.pivot_table(index="session", columns="symbol", values="ret_1").apply(np.expm1)
    weights = {pd.Timestamp(p.name[len("session="):]): pd.read_csv(p / "targets.csv")
               .set_index("symbol")["weight"] for p in books}
    equity, held = [capital], None
    sessions = [t for t in simple.index if t > pd.Timestamp(first)]
    for t in sessions:
        prev = calendar.previous_sessions(t.date(), 2)[0]
        held = weights.get(pd.Timestamp(prev), held)
        r = simple.loc[t].reindex(held.index).fillna(0.0) if held is not None else 0.0
        pnl = float((held * r).sum()) if held is not None else 0.0
        equity.append(equity[-1] * (1.0 + pnl))
    return pd.Series(equity, index=[pd.Timestamp(first), *sessions], dtype=float)


def size_positions(session: str, settings: Settings | None = None) -> Summary:
    """Pre-market: the champion's forecasts to target weights, limits, orders on the paper broker.

    Sizing (``[sizing]``, :func:`models.sizing.size`) turns the forecasts of the pre-market task
    into weights; :func:`pipelines.orders.decide_targets` applies the limits of ``[limits]`` and
    the circuit breakers (judged on the paper book's equity, plus the kill switch
    ``$AFTERBELL_HOME/KILL_SWITCH``); the orders to reach them are written with every input to
    the paper broker under ``$AFTERBELL_HOME/broker`` (one folder per session, overwritten on a
    re-run; an append-only ``audit.jsonl``).
    """
    from models.sizing import SizingSpec, size
    from pipelines import lake
    from pipelines.gate import GateConfig
    from pipelines.orders import (
        Limits,
        PaperBroker,
        check_breakers,
        decide_targets,
        decision_record,
        kill_switch_on,
        orders_to_reach,
        positions,
        weights_after,
    )
    from pipelines.schedule import load_config

    d, s = _setup(session, settings)
    config = load_config()
    limits = Limits.from_mapping(config.limits)
    spec = SizingSpec.from_mapping(config.sizing)
    capital = GateConfig.from_mapping(config.validation).capital
    root = s.home / "broker"
    fc = lake.read_table(s.lake_dir, "forecasts", start=d, end=d,
                         columns=["symbol", "forecast", "model_version"])
    if fc.empty:
        return _run_record(s, d, "size_positions", {
            "session": d.isoformat(), "orders": 0,
            "reason": "no forecasts for this session (no champion): no orders",
        })
    vol = fc.set_index("symbol")["forecast"].astype(float)
    version = str(fc["model_version"].iloc[0])
    # The champion forecasts volatility, not direction: a long signal in every symbol, sized by
    # its forecast risk (the stand-in strategy of the validation's signal backtest).
    signal = pd.Series(1.0, index=vol.index)
    returns = None
    if spec.method in ("risk_parity", "hrp", "kelly"):
        rets = _lake_range(s, "features", d, ("symbol", "session", "ret_1"))
        returns = rets.pivot_table(index="session", columns="symbol", values="ret_1").tail(252)
    targets = size(spec, signal, vol, returns)
    book = positions(root, d)
    equity = paper_equity(s, d, root, capital)
    state = check_breakers(equity, limits, kill_switch_on(s.home))
    daily_vol = vol / math.sqrt(252)
    known = s.sectors
    sectors = {sym: known.get(str(sym), str(sym)) for sym in set(vol.index) | set(book.index)}
    result = decide_targets(targets, book, sectors, daily_vol, limits, state)
    bars = lake.read_table(s.lake_dir, "bars", start=d, end=d, columns=["symbol", "close"])
    prices = bars.set_index("symbol")["close"].astype(float)
    orders = orders_to_reach(book, result.weights, prices, float(equity.iloc[-1]),
                             sectors=sectors, limits=limits)
    after = weights_after(book, orders)
    decision = decision_record(
        version, signal, vol, limits, state, result, sizing=asdict(spec),
        equity=float(equity.iloc[-1]), prices=prices, for_session=calendar.next_session(d),
    )
    PaperBroker(root).write(d, orders, after, decision)
    log.info("size_positions %s: %d orders (%s), gross %.3f%s", d, len(orders), spec.method,
             float(after.abs().sum()), ", HALTED" if state.halted else "")
    return _run_record(s, d, "size_positions", {
        "session": d.isoformat(), "for_session": calendar.next_session(d).isoformat(),
        "model_version": version, "orders": len(orders), "halted": state.halted,
        "halt_reasons": list(state.reasons), "limit_notes": list(result.breaches),
        "gross": round(float(after.abs().sum()), 10), "equity": float(equity.iloc[-1]),
    })


# ------------------------------------------------------------------------------ live serving
def serve_session(session: str, settings: Settings | None = None) -> Summary:
    """Serve the champion for the session: until its close when live, a smoke check otherwise."""
    from pipelines.live import serve_window

    d, s = _setup(session, settings)
    return serve_window(s, calendar.session_open(d), calendar.session_close(d))


#: ``afterbell stage NAME`` names, in cycle order, with the functions of the DAG's task group.
#: A function returning ``{"run": False, "reason": ...}`` (the heavy stage's plan) ends the stage.
STAGES: dict[str, tuple[Callable[..., Summary], ...]] = {
    "close_analysis": (ingest, build_features, monitor),
    "light_training": (refit_garch, recalibrate_risk, price_options),
    "data_processing": (build_feature_tables, materialize),
    "heavy_training": (plan_training, train_challenger, train_transformer),
    "validation": (validate_and_promote,),
    "pre_market": (pre_market, size_positions),
}
