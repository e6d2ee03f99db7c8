"""Walk-forward evaluation of the GARCH-LSTM against econometric baselines on the replay data.

``afterbell evaluate`` runs this module: the pure functions below take frames and a frozen
:class:`EvaluationConfig` and return frames and tables; :func:`evaluate` is the thin adapter that
writes the markdown report and logs it to the MLflow experiment ``evaluation``.

The protocol (every forecast is made at the close of session ``t`` for the annualised realised
volatility of sessions ``t+1 .. t+horizon``; :func:`models.baselines.forward_realised_vol`):

- Data: the packaged replay panel (arch's S&P 500 and NASDAQ indices, skfolio's 20 stocks), log
  returns of the adjusted close from :func:`pipelines.features.compute_features`, on the common
  sample ``start .. end`` (1999-2018 by default: the indices' range).
- Folds: :func:`models.evaluation.walk_forward_splits` on the session calendar, expanding window,
  the first test session at ``start_oos``, ``refit_every`` test sessions per fold, purge and
  embargo of ``horizon`` sessions (no training label overlaps a test session).
- Models: GARCH(1,1)-t and EGARCH(1,1)-t (:func:`models.garch.rolling_garch_features`,
  expanding refits every ``garch_refit_every`` sessions on returns strictly before each block),
  RiskMetrics EWMA, 22-session historical vol, log HAR-RV refitted per symbol and fold on the
  rows whose label is known at the fold's ``label_end``, and the GARCH-LSTM
  (:func:`models.lstm.fit_lstm`) refitted per fold, pooled over the symbols, on windows of
  ``WINDOW_COLUMNS`` (returns, realised vols, GARCH, EGARCH and EWMA forecasts: Kim & Won's
  inputs) with heads for ``horizon`` and ``extra_horizons`` (1 session), on windows whose
  longest label ends before the fold's validation segment; the validation
  segment (the last ``valid_sessions`` training sessions) drives early stopping and calibrates
  the split-conformal interval.
- Scores on the rows where every forecast exists: MAE, RMSE, QLIKE; Diebold-Mariano tests of the
  GARCH-LSTM against each baseline on the cross-sectional mean MAE loss per session (HAC with
  ``horizon - 1`` lags, HLN correction); coverage of the conformal interval; a direction-accuracy
  leakage alarm (:func:`models.evaluation.check_leakage`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.baselines import HARSpec, ewma_vol, fit_har, forward_realised_vol, historical_vol
from models.evaluation import (
    DirectionResult,
    LeakageError,
    Split,
    diebold_mariano,
    direction_accuracy,
    volatility_metrics,
    walk_forward_splits,
)
from models.garch import GarchSpec, rolling_garch_features
from models.uncertainty import empirical_coverage, split_conformal
from pipelines.settings import DEFAULT_UNIVERSE, INDICES, WINDOW_COLUMNS, Settings

__all__ = [
    "BASELINES",
    "MODELS",
    "REFERENCE",
    "EvaluationConfig",
    "EvaluationResult",
    "assemble_result",
    "base_forecasts",
    "evaluate",
    "fold_splits",
    "leakage_table",
    "load_features",
    "render_markdown",
    "run_evaluation",
    "score_forecasts",
    "walk_forward_forecasts",
]

log = logging.getLogger("afterbell.evaluation")

#: The model under test and the baselines, in table order.
REFERENCE = "garch_lstm"
BASELINES: tuple[str, ...] = ("garch", "egarch", "ewma", "hist22", "har")
MODELS: tuple[str, ...] = (REFERENCE, *BASELINES)
MODEL_LABELS: Mapping[str, str] = {
    "garch_lstm": "GARCH-LSTM",
    "garch": "GARCH(1,1)-t",
    "egarch": "EGARCH(1,1)-t",
    "ewma": "EWMA (RiskMetrics, 0.94)",
    "hist22": "historical vol (22)",
    "har": "HAR-RV (log)",
}
#: Kim & Won (2018): MAE reduction of their hybrid against their best prior model, KOSPI 200.
KIM_WON_IMPROVEMENT_PCT = 37.2


@dataclass(frozen=True)
class EvaluationConfig:
    """What ``afterbell evaluate`` evaluates and with which budget.

    Parameters
    ----------
    symbols : tuple of str
        Replay symbols (indices and stocks).
    start, end : datetime.date
        Common sample (first and last session used); returns before ``start`` are not read.
    start_oos : datetime.date
        First out-of-sample session (the first test session of the first fold).
    horizon : int
        Sessions of the realised-volatility target; also the purge and embargo.
    extra_horizons : tuple of int
        Further GARCH-LSTM heads (Kim & Won's daily target beside the monthly one); each must
        be at most ``horizon``. Only the ``horizon`` head is scored.
    refit_every : int
        Test sessions per fold: the HAR and the GARCH-LSTM are refitted this often.
    garch_refit_every : int
        Sessions between the expanding-window GARCH/EGARCH refits.
    garch_min_obs : int
        Returns before the first GARCH fit.
    max_folds : int
        Keep only the first ``max_folds`` folds (0: all of them).
    valid_sessions : int
        Last training sessions of each fold held out for early stopping and calibration.
    epochs, patience, hidden, lookback, batch_size, lr, seed, max_train_rows
        GARCH-LSTM budget (``max_train_rows``: most recent training windows kept, 0: all).
    alpha : float
        Miscoverage of the split-conformal interval (0.2: an 80% interval).
    leakage_threshold : float
        Highest direction accuracy accepted by the leakage alarm.
    """

    symbols: tuple[str, ...] = DEFAULT_UNIVERSE
    start: date = date(1999, 1, 4)
    end: date = date(2018, 12, 31)
    start_oos: date = date(2010, 1, 4)
    horizon: int = 22
    extra_horizons: tuple[int, ...] = (1,)
    refit_every: int = 252
    garch_refit_every: int = 63
    garch_min_obs: int = 250
    max_folds: int = 0
    valid_sessions: int = 252
    epochs: int = 10
    patience: int = 3
    hidden: int = 32
    lookback: int = 20
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 7
    max_train_rows: int = 0
    alpha: float = 0.2
    leakage_threshold: float = 0.60

    def __post_init__(self) -> None:
        symbols = tuple(dict.fromkeys(str(s).strip().upper() for s in self.symbols))
        unknown = sorted(set(symbols) - set(DEFAULT_UNIVERSE))
        if not symbols or unknown:
            raise ValueError(
                f"symbols must be replay symbols ({', '.join(DEFAULT_UNIVERSE)}); got {unknown}"
            )
        object.__setattr__(self, "symbols", symbols)
        if not self.start < self.start_oos <= self.end:
            raise ValueError(f"need start < start_oos <= end, got {self.start}, "
                             f"{self.start_oos}, {self.end}")
        if min(self.horizon, self.refit_every, self.garch_refit_every, self.epochs,
               self.valid_sessions, self.lookback) < 1:
            raise ValueError("horizon, refit_every, garch_refit_every, epochs, valid_sessions "
                             "and lookback must be >= 1")
        if any(h < 1 or h >= self.horizon for h in self.extra_horizons):
            raise ValueError(f"extra_horizons must lie in [1, horizon), got {self.extra_horizons}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")

    @classmethod
    def quick(cls, **changes: Any) -> EvaluationConfig:
        """A small configuration for tests: SPX and AAPL, 2 folds of 126 sessions, 2 epochs."""
        base: dict[str, Any] = {
            "symbols": ("SPX", "AAPL"), "start": date(2005, 1, 3), "refit_every": 126,
            "garch_refit_every": 252, "max_folds": 2, "valid_sessions": 126, "epochs": 2,
            "patience": 1, "hidden": 8, "lookback": 10,
        }
        base.update(changes)
        return cls(**base)

    def to_params(self) -> dict[str, str]:
        """Flat string parameters (for MLflow)."""
        return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
                for k, v in asdict(self).items()}


@dataclass(frozen=True)
class EvaluationResult:
    """Everything the report shows.

    Parameters
    ----------
    config : EvaluationConfig
        The configuration evaluated.
    forecasts : pandas.DataFrame
        One row per scored out-of-sample (symbol, session): ``fold``, ``target``, one column per
        model in :data:`MODELS`, ``lo`` and ``hi`` (the GARCH-LSTM's conformal interval).
    folds : pandas.DataFrame
        One row per fold: ranges, training sizes, best epoch, conformal half-width.
    metrics : pandas.DataFrame
        ``group, model, mae, rmse, qlike, n`` (all models on the same rows within a group).
    dm : pandas.DataFrame
        ``group, model, statistic, pvalue, mean_diff, n_sessions`` of the GARCH-LSTM against each
        baseline (negative ``mean_diff``: the GARCH-LSTM has the lower MAE).
    summary : pandas.DataFrame
        Per group: best baseline, its MAE, the GARCH-LSTM's, the improvement in % and the
        interval's coverage and mean width.
    leakage : pandas.DataFrame
        Direction accuracy of each model's daily forecast change against the realised change.
    per_symbol : pandas.DataFrame
        MAE per symbol and model.
    data : pandas.DataFrame
        Per symbol: group, sample range, first and last scored session, rows scored.
    missing : pandas.DataFrame
        Per symbol with any: out-of-sample rows with a known target left out because a model's
        forecast (or the interval) is not finite, by model.
    """

    config: EvaluationConfig
    forecasts: pd.DataFrame
    folds: pd.DataFrame
    metrics: pd.DataFrame
    dm: pd.DataFrame
    summary: pd.DataFrame
    leakage: pd.DataFrame
    per_symbol: pd.DataFrame
    data: pd.DataFrame
    missing: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict, compare=False)


# ------------------------------------------------------------------------------------ data
def load_features(cfg: EvaluationConfig) -> pd.DataFrame:
    """Causal features of the configured symbols on ``cfg.start .. cfg.end`` (replay data)."""
    from pipelines.features import compute_features
    from pipelines.sources import load_replay_panel

    panel = load_replay_panel()
    mask = (
        panel["symbol"].isin(cfg.symbols)
        & (panel["session"] >= pd.Timestamp(cfg.start))
        & (panel["session"] <= pd.Timestamp(cfg.end))
    )
    feats = compute_features(panel.loc[mask].reset_index(drop=True))
    return feats.sort_values(["symbol", "session"], kind="stable").reset_index(drop=True)


def base_forecasts(features: pd.DataFrame, cfg: EvaluationConfig) -> pd.DataFrame:
    """Target and the causal, fit-free or self-refitting forecasts of every (symbol, session).

    Returns
    -------
    pandas.DataFrame
        ``symbol, session, ret_1, target`` (forward realised vol; ``target_h`` for each extra
        horizon), the GARCH(1,1)-t columns ``garch_vol, garch_forecast, garch_std_resid``,
        ``egarch_forecast`` and ``ewma_forecast`` (inputs of the LSTM windows), and the
        forecasts ``garch`` (= ``garch_forecast``), ``egarch``, ``ewma`` and ``hist22``.
    """
    parts = []
    garch_spec = GarchSpec(vol="GARCH", dist="t", horizon=cfg.horizon)
    egarch_spec = GarchSpec(vol="EGARCH", dist="t", horizon=cfg.horizon)
    for symbol, g in features.groupby("symbol", sort=True):
        r = g.set_index("session")["ret_1"].astype(float)
        body = r.iloc[int(np.argmax(r.notna().to_numpy())):]  # drop the leading NaN return
        garch = rolling_garch_features(body, garch_spec, refit_every=cfg.garch_refit_every,
                                       min_obs=cfg.garch_min_obs, name=str(symbol))
        egarch = rolling_garch_features(body, egarch_spec, refit_every=cfg.garch_refit_every,
                                        min_obs=cfg.garch_min_obs, name=str(symbol))
        filled = r.fillna(0.0)
        frame = pd.DataFrame({
            "symbol": symbol,
            "session": r.index,
            "ret_1": r.to_numpy(),
            "rv_5": g["rv_5"].to_numpy(),
            "rv_22": g["rv_22"].to_numpy(),
            "target": forward_realised_vol(r, cfg.horizon).to_numpy(),
            **{f"target_{h}": forward_realised_vol(r, h).to_numpy() for h in cfg.extra_horizons},
            "ewma": ewma_vol(filled, cfg.horizon).to_numpy(),
            "hist22": historical_vol(filled, cfg.horizon, window=22).to_numpy(),
        })
        frame = frame.merge(garch.rename_axis("session").reset_index(), on="session", how="left")
        frame["garch"] = frame["garch_forecast"]
        frame["egarch"] = frame["session"].map(egarch["garch_forecast"]).astype(float)
        frame["egarch_forecast"] = frame["egarch"]  # the window column names of the nightly run
        frame["ewma_forecast"] = frame["ewma"]
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def fold_splits(sessions: pd.Index, cfg: EvaluationConfig) -> list[Split]:
    """Walk-forward splits whose first test session is the first session on/after ``start_oos``."""
    first = int(sessions.searchsorted(pd.Timestamp(cfg.start_oos)))
    embargo = cfg.horizon
    if first - embargo < 1:
        raise ValueError(f"start_oos {cfg.start_oos} leaves no training sessions")
    splits = walk_forward_splits(sessions, initial=first - embargo, step=cfg.refit_every,
                                 horizon=cfg.horizon, embargo=embargo)
    return splits[: cfg.max_folds] if cfg.max_folds else splits


# ------------------------------------------------------------------------------ forecasting
def _windows(base: pd.DataFrame, cfg: EvaluationConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """LSTM windows of ``WINDOW_COLUMNS`` per (symbol, session) and the keys they belong to."""
    from pipelines.datasets import stack_windows
    from pipelines.features import build_windows

    feats = base.loc[:, ["symbol", "session", *WINDOW_COLUMNS]]
    win = build_windows(feats, base.loc[:, ["symbol", "session"]], cfg.lookback, WINDOW_COLUMNS)
    keys = win.loc[:, ["symbol", "session"]].merge(
        base.loc[:, ["symbol", "session", *_targets(cfg)]], on=["symbol", "session"], how="left"
    )
    x = stack_windows(win["seq"], cfg.lookback, len(WINDOW_COLUMNS))
    return keys, x


def _targets(cfg: EvaluationConfig) -> list[str]:
    """Label columns of the GARCH-LSTM heads: ``target`` (``horizon``), then ``target_h``."""
    return ["target", *(f"target_{h}" for h in cfg.extra_horizons)]


def _lstm_spec(cfg: EvaluationConfig) -> Any:
    from models.lstm import LSTMSpec

    return LSTMSpec(
        lookback=cfg.lookback, hidden=cfg.hidden, lr=cfg.lr, batch_size=cfg.batch_size,
        max_epochs=cfg.epochs, patience=cfg.patience, seed=cfg.seed,
        n_features=len(WINDOW_COLUMNS), horizon=cfg.horizon,
        base_feature=WINDOW_COLUMNS.index("garch_forecast"), extra_horizons=cfg.extra_horizons,
    )


def walk_forward_forecasts(
    base: pd.DataFrame, cfg: EvaluationConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Refit the HAR and the GARCH-LSTM per fold and collect every model's OOS forecasts.

    Returns
    -------
    forecasts : pandas.DataFrame
        The out-of-sample rows: ``symbol, session, fold, target``, one column per model, ``lo``,
        ``hi``.
    folds : pandas.DataFrame
        One row per fold.
    """
    from models.lstm import fit_lstm

    sessions = pd.Index(np.sort(base["session"].unique()))
    splits = fold_splits(sessions, cfg)
    keys, x_all = _windows(base, cfg)
    spec = _lstm_spec(cfg)
    returns = {s: g.set_index("session")["ret_1"] for s, g in base.groupby("symbol", sort=True)}
    har_spec = HARSpec(horizon=cfg.horizon, log=True)
    win_pos = keys["session"].map(pd.Series(np.arange(len(sessions)), index=sessions)).to_numpy()
    has_target = np.isfinite(keys[_targets(cfg)].to_numpy()).all(axis=1)
    out, records = [], []
    for k, split in enumerate(splits):
        t0 = time.perf_counter()
        train_end = split.train_rows.stop - 1
        valid_start = max(train_end - cfg.valid_sessions + 1, 0)
        fit_end = valid_start - cfg.horizon - 1  # purge: fit labels end before validation
        if fit_end < 0:
            raise ValueError(f"fold {k}: too few training sessions for validation + purge")
        tr = np.flatnonzero(has_target & (win_pos <= fit_end))
        if cfg.max_train_rows and len(tr) > cfg.max_train_rows:
            tr = tr[np.argsort(win_pos[tr], kind="stable")][-cfg.max_train_rows:]
        va = np.flatnonzero(has_target & (win_pos >= valid_start) & (win_pos <= train_end))
        te = np.flatnonzero((win_pos >= split.test_rows.start) & (win_pos < split.test_rows.stop))
        labels = keys[_targets(cfg)].to_numpy(np.float64)
        y = labels[:, 0]
        fitted = fit_lstm(spec, x_all[tr], labels[tr], x_all[va], labels[va])
        width = split_conformal((y[va], fitted.predict(x_all[va])), cfg.alpha)
        lstm = keys.iloc[te].loc[:, ["symbol", "session"]].assign(
            garch_lstm=fitted.predict(x_all[te]))
        lstm["lo"] = lstm["garch_lstm"] - width
        lstm["hi"] = lstm["garch_lstm"] + width

        test_sessions = sessions[split.test_rows.start : split.test_rows.stop]
        rows = base.loc[base["session"].isin(test_sessions),
                        ["symbol", "session", "target", "garch", "egarch", "ewma", "hist22"]]
        har_parts = []
        for symbol, r in returns.items():
            fit = fit_har(r, har_spec, train_end=split.label_end)
            pred = fit.predict(r).reindex(test_sessions)
            har_parts.append(pd.DataFrame({"symbol": symbol, "session": test_sessions,
                                           "har": pred.to_numpy()}))
        har = pd.concat(har_parts, ignore_index=True)
        fold = (rows.merge(har, on=["symbol", "session"], how="left")
                .merge(lstm, on=["symbol", "session"], how="left").assign(fold=k))
        out.append(fold)
        records.append({
            "fold": k,
            "train_first": sessions[0].date(),
            "fit_last": sessions[fit_end].date(),
            "valid_first": sessions[valid_start].date(),
            "train_last": sessions[train_end].date(),
            "label_end": sessions[train_end + cfg.horizon].date(),  # = split.label_end
            "test_first": test_sessions[0].date(),
            "test_last": test_sessions[-1].date(),
            "train_windows": len(tr),
            "valid_windows": len(va),
            "best_epoch": fitted.best_epoch + 1,
            "epochs_run": len(fitted.valid_loss),
            "valid_mae": float(min(fitted.valid_loss)),
            "conformal_halfwidth": width,
            "seconds": time.perf_counter() - t0,
        })
        log.info("fold %d (%s..%s): %d train windows, best epoch %d, %.0fs", k,
                 records[-1]["test_first"], records[-1]["test_last"], len(tr),
                 fitted.best_epoch + 1, records[-1]["seconds"])
    forecasts = pd.concat(out, ignore_index=True)
    cols = ["symbol", "session", "fold", "target", *MODELS, "lo", "hi"]
    forecasts = forecasts.loc[:, cols].sort_values(["symbol", "session"], kind="stable")
    return forecasts.reset_index(drop=True), pd.DataFrame(records)


# ---------------------------------------------------------------------------------- scoring
def _groups(symbols: Sequence[str]) -> dict[str, list[str]]:
    present = list(dict.fromkeys(symbols))
    groups = {
        "indices": [s for s in present if s in INDICES],
        "stocks": [s for s in present if s not in INDICES],
        "all": present,
    }
    return {name: members for name, members in groups.items() if members}


def leakage_table(forecasts: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Direction accuracy of each model's daily forecast change against the realised change.

    For every symbol and consecutive scored sessions, the sign of ``f_t - f_{t-1}`` is compared
    with the sign of ``y_t - y_{t-1}`` (``y``: the forward realised vol). The realised change is
    ``(r_{t+H}^2 - r_t^2) / H`` in variance: its only predictable part, ``-r_t^2``, moves
    against any causal forecast update (a large ``r_t`` raises the forecast), so honest forecasts
    score at or below a coin; a forecast that sees the target scores near 100%.
    """
    rows = {}
    ordered = forecasts.sort_values(["symbol", "session"], kind="stable")
    dy = ordered.groupby("symbol", sort=False)["target"].diff().to_numpy()
    for model in models:
        df = ordered.groupby("symbol", sort=False)[model].diff().to_numpy()
        res: DirectionResult = direction_accuracy(dy, df)
        rows[model] = {"accuracy": res.accuracy, "n": res.n, "hits": res.hits,
                       "pvalue": res.pvalue}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table.reset_index()


def _panel_dm(frame: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """DM tests of the reference against each baseline on per-session mean absolute errors."""
    losses = frame.loc[:, list(MODELS)].sub(frame["target"], axis=0).abs()
    per_session = losses.groupby(frame["session"].to_numpy()).mean().sort_index()
    rows = []
    for model in BASELINES:
        res = diebold_mariano(per_session[REFERENCE].to_numpy(), per_session[model].to_numpy(),
                              horizon)
        rows.append({"model": model, "statistic": res.statistic, "pvalue": res.pvalue,
                     "mean_diff": res.mean_diff, "n_sessions": res.n})
    return pd.DataFrame(rows)


def score_forecasts(
    forecasts: pd.DataFrame, cfg: EvaluationConfig
) -> dict[str, pd.DataFrame]:
    """Metrics, DM tests, improvement and coverage per group, leakage table, per-symbol MAE.

    Only rows where the target, every model's forecast and the interval are finite are scored,
    so every model is scored on the same rows. Raises :class:`~models.evaluation.LeakageError`
    when a model's direction accuracy exceeds ``cfg.leakage_threshold``.
    """
    models = [c for c in forecasts.columns if c in MODELS or c not in
              ("symbol", "session", "fold", "target", "lo", "hi")]
    finite = np.isfinite(forecasts.loc[:, ["target", *models, "lo", "hi"]].to_numpy()).all(axis=1)
    scored = forecasts.loc[finite].reset_index(drop=True)
    labelled = forecasts.loc[np.isfinite(forecasts["target"].to_numpy())]
    bad = pd.DataFrame(~np.isfinite(labelled.loc[:, models].to_numpy(dtype=float)),
                       columns=models)
    bad["interval"] = ~np.isfinite(labelled.loc[:, ["lo", "hi"]].to_numpy(dtype=float)).all(1)
    missing = bad.groupby(labelled["symbol"].to_numpy()).sum()
    missing = missing.loc[missing.sum(axis=1) > 0]
    missing.index.name = "symbol"
    if scored.empty:
        raise ValueError("no out-of-sample row where every forecast is finite")
    leakage = leakage_table(scored, models)
    metrics, dms, summary = [], [], []
    for group, members in _groups(cfg.symbols).items():
        g = scored.loc[scored["symbol"].isin(members)]
        if g.empty:
            continue
        table = volatility_metrics(g["target"].to_numpy(),
                                   {m: g[m].to_numpy() for m in models}).reset_index()
        metrics.append(table.assign(group=group))
        dms.append(_panel_dm(g, cfg.horizon).assign(group=group))
        base = table.loc[table["model"].isin(BASELINES)].sort_values("mae", kind="stable")
        best, best_mae = str(base.iloc[0]["model"]), float(base.iloc[0]["mae"])
        ref_mae = float(table.loc[table["model"] == REFERENCE, "mae"].iloc[0])
        summary.append({
            "group": group, "symbols": int(g["symbol"].nunique()), "n": len(g),
            "garch_lstm_mae": ref_mae, "best_baseline": best, "best_baseline_mae": best_mae,
            "improvement_pct": 100.0 * (best_mae - ref_mae) / best_mae,
            "coverage": empirical_coverage(g["target"], g["lo"], g["hi"]),
            "nominal": 1.0 - cfg.alpha,
            "mean_width": float((g["hi"] - g["lo"]).mean()),
        })
    per_symbol = (scored.loc[:, list(models)].sub(scored["target"], axis=0).abs()
                  .groupby(scored["symbol"].to_numpy()).mean())
    per_symbol.insert(0, "n", scored.groupby("symbol").size())
    per_symbol.index.name = "symbol"
    alarms = leakage.loc[leakage["accuracy"] > cfg.leakage_threshold]
    if not alarms.empty:
        raise LeakageError(
            "leakage alarm: daily direction accuracy above "
            f"{cfg.leakage_threshold:.0%} for "
            + ", ".join(f"{r['model']} ({r['accuracy']:.1%} of {r['n']}, "
                        f"binomial p={r['pvalue']:.2g})" for r in alarms.to_dict("records"))
            + "; a forecast sees the realised target: check features and training rows"
        )
    metric_cols = ["group", "model", "mae", "rmse", "qlike", "n"]
    return {
        "scored": scored,
        "metrics": pd.concat(metrics, ignore_index=True).loc[:, metric_cols],
        "dm": pd.concat(dms, ignore_index=True).loc[
            :, ["group", "model", "statistic", "pvalue", "mean_diff", "n_sessions"]],
        "summary": pd.DataFrame(summary),
        "leakage": leakage,
        "per_symbol": per_symbol.reset_index(),
        "missing": missing.reset_index(),
    }


def _data_table(base: pd.DataFrame, scored: pd.DataFrame) -> pd.DataFrame:
    groups = _groups(sorted(base["symbol"].unique()))
    rows = []
    for symbol, g in base.groupby("symbol", sort=True):
        s = scored.loc[scored["symbol"] == symbol, "session"]
        rows.append({
            "symbol": symbol,
            "group": "indices" if symbol in groups.get("indices", []) else "stocks",
            "first_session": g["session"].min().date(),
            "last_session": g["session"].max().date(),
            "first_scored": s.min().date() if len(s) else None,
            "last_scored": s.max().date() if len(s) else None,
            "scored": len(s),
        })
    return pd.DataFrame(rows)


def run_evaluation(
    cfg: EvaluationConfig, features: pd.DataFrame | None = None
) -> EvaluationResult:
    """Run the whole evaluation (no file, no MLflow).

    Parameters
    ----------
    cfg : EvaluationConfig
        What to evaluate.
    features : pandas.DataFrame, optional
        Output of :func:`load_features`; read from the replay data when omitted.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    feats = load_features(cfg) if features is None else features
    base = base_forecasts(feats, cfg)
    timings["garch_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    forecasts, folds = walk_forward_forecasts(base, cfg)
    timings["folds_seconds"] = time.perf_counter() - t1
    result = assemble_result(cfg, base, forecasts, folds)
    timings["total_seconds"] = time.perf_counter() - t0
    return replace(result, timings=timings)


def assemble_result(
    cfg: EvaluationConfig, base: pd.DataFrame, forecasts: pd.DataFrame, folds: pd.DataFrame
) -> EvaluationResult:
    """Score walk-forward forecasts (:func:`score_forecasts`) into an :class:`EvaluationResult`."""
    scores = score_forecasts(forecasts, cfg)
    return EvaluationResult(
        config=cfg,
        forecasts=forecasts,
        folds=folds,
        metrics=scores["metrics"],
        dm=scores["dm"],
        summary=scores["summary"],
        leakage=scores["leakage"],
        per_symbol=scores["per_symbol"],
        data=_data_table(base, scores["scored"]),
        missing=scores["missing"],
    )


# ---------------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(value)


def _md_table(frame: pd.DataFrame, digits: Mapping[str, int] | None = None) -> str:
    digits = digits or {}
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, digits.get(c, 4)) for c, v in
                                        zip(cols, row, strict=True)) + " |")
    return "\n".join(lines)


def _pvalue(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def render_markdown(result: EvaluationResult, command: str) -> str:
    """The report: command, data, fold scheme, tables and caveats."""
    cfg = result.config
    labels = dict(MODEL_LABELS)
    parts = [
        "# Out-of-sample evaluation: GARCH-LSTM against econometric baselines",
        "",
        "Generated by one command from the data shipped in the installed packages (no network):",
        "",
        "```",
        command,
        "```",
        "",
        f"Target: annualised realised volatility of the next **{cfg.horizon}** sessions, "
        "`sqrt(252 * mean(r_{t+1}^2 .. r_{t+H}^2))` of daily log returns of the adjusted close, "
        "forecast at the close of `t`. Out of sample from "
        f"**{result.forecasts['session'].min().date()}** to "
        f"**{result.forecasts['session'].max().date()}** (the last scored session).",
        "",
        "## Summary",
        "",
    ]
    summ = result.summary.copy()
    summ["best_baseline"] = summ["best_baseline"].map(labels)
    summ["improvement_pct"] = summ["improvement_pct"].map(lambda v: f"{v:+.1f}%")
    summ = summ.rename(columns={"improvement_pct": "MAE improvement vs best baseline",
                                "coverage": f"{1 - cfg.alpha:.0%} interval coverage"})
    parts += [_md_table(summ, {"nominal": 2, "mean_width": 3}), ""]
    for row in result.summary.to_dict("records"):
        gain = float(row["improvement_pct"])
        parts.append(
            f"- **{row['group']}**: the GARCH-LSTM's MAE is {abs(gain):.1f}% "
            f"{'lower' if gain > 0 else 'higher'} than the best baseline "
            f"({labels[row['best_baseline']]}, {row['best_baseline_mae']:.4f})."
        )
    parts += [
        "",
        f"Kim & Won (2018) reported a {KIM_WON_IMPROVEMENT_PCT}% lower MAE for their hybrid "
        "GARCH-LSTM than for their best prior model on KOSPI 200. The comparison is loose: "
        "our inputs follow theirs (returns, realised vol, GARCH, EGARCH and EWMA forecasts) "
        "but their market (one index), period, network, training protocol and baselines "
        "differ (our best baseline, HAR-RV, is stronger than the GARCH-type models they "
        "beat); the figures above are ours, on the same rows and folds for every model, "
        "whatever they show.",
        "",
        "## Accuracy by group",
        "",
        "Every model is scored on the same rows (those where the target and every forecast "
        "exist). QLIKE is on variances.",
        "",
    ]
    for group in result.summary["group"]:
        m = result.metrics.loc[result.metrics["group"] == group].drop(columns="group").copy()
        m["model"] = m["model"].map(labels)
        parts += [f"### {group}", "", _md_table(m), ""]
    dm = result.dm.copy()
    dm["model"] = dm["model"].map(labels)
    dm["pvalue"] = dm["pvalue"].map(_pvalue)
    parts += [
        "## Diebold-Mariano tests (GARCH-LSTM against each baseline, MAE loss)",
        "",
        "Loss differential: the GARCH-LSTM's absolute error minus the baseline's, averaged over "
        "the group's symbols per session; Newey-West variance with "
        f"{cfg.horizon - 1} lags (horizon - 1) and the Harvey-Leybourne-Newbold correction, "
        "two-sided p-value (Student t, n - 1). Negative `mean_diff` and statistic: the "
        "GARCH-LSTM has the lower MAE.",
        "",
        _md_table(dm.loc[:, ["group", "model", "statistic", "pvalue", "mean_diff",
                             "n_sessions"]], {"statistic": 2, "mean_diff": 5}),
        "",
        f"## Intervals ({1 - cfg.alpha:.0%} split-conformal around the GARCH-LSTM)",
        "",
        "Half-width: the conformal quantile of the absolute residuals of the fold's model on the "
        "fold's validation segment (pooled over symbols, disjoint from the windows it was "
        "fitted on; it also chose the early-stopping epoch, so the calibration is not fully "
        "independent of model selection). Coverage is measured on the out-of-sample rows above "
        "(see the summary); one absolute half-width for all symbols of a fold, so low-vol "
        "series are over-covered and high-vol ones under-covered, and regime changes between "
        "the validation year and the test year break exchangeability.",
        "",
    ]
    leak = result.leakage.copy()
    leak["model"] = leak["model"].map(lambda m: labels.get(m, m))
    leak["pvalue"] = leak["pvalue"].map(_pvalue)
    parts += [
        "## Leakage alarm",
        "",
        "No model here forecasts returns, so a daily *return*-sign accuracy cannot be measured "
        "and none is invented. The alarm uses the daily-change proxy: for each symbol, the sign "
        "of the forecast's change from one session to the next against the sign of the "
        "realised target's change. That change is `(r_{t+H}^2 - r_t^2) / H` in variance: its "
        "only predictable part, `-r_t^2`, moves against any causal update of a forecast, so "
        "honest forecasts score near or below 50%, while a forecast that sees the target "
        "scores near 100%. Above "
        f"{cfg.leakage_threshold:.0%} the evaluation stops with a `LeakageError` "
        "(`models.evaluation.check_leakage`'s threshold) and writes no report.",
        "",
        _md_table(leak, {"accuracy": 3}),
        "",
        "## Fold scheme",
        "",
        f"Expanding window on the session calendar; a fold every {cfg.refit_every} sessions "
        f"from {cfg.start_oos}; purge and embargo of {cfg.horizon} sessions "
        "(`models.evaluation.walk_forward_splits`): no training label (`label_end`) reaches "
        "into the test block. Within a fold the GARCH-LSTM is fitted on windows whose labels "
        f"end before its validation segment (the last {cfg.valid_sessions} training sessions, "
        "another purge of one horizon), early-stopped on it, and calibrated on it. "
        "HAR-RV (log, lags 1/5/22) is refitted per symbol and fold on rows whose label ends by "
        "`label_end`. GARCH(1,1)-t and EGARCH(1,1)-t (constant mean, Student t) are refitted on "
        f"an expanding window every {cfg.garch_refit_every} sessions on returns strictly before "
        f"each block (`models.garch.rolling_garch_features`, forecast horizon {cfg.horizon}; "
        "EGARCH's multi-step forecast is simulated with a fixed seed); EWMA and historical vol "
        "need no fit. The GARCH-LSTM reads "
        f"{cfg.lookback}-session windows of {', '.join(WINDOW_COLUMNS)} (Kim & Won's inputs: "
        "returns, realised vols and the GARCH, EGARCH and EWMA forecasts above) and predicts "
        "a multiplicative correction of the GARCH forecast for the realised vol over the next "
        f"{', '.join(str(h) for h in (*cfg.extra_horizons, cfg.horizon))} sessions (one head "
        f"each, mean L1 loss; only the {cfg.horizon}-session head is scored here), pooled over "
        f"all symbols; hidden {cfg.hidden}, at most {cfg.epochs} epochs "
        f"(patience {cfg.patience}), seed {cfg.seed}.",
        "",
    ]
    folds = result.folds.drop(columns=["seconds"])
    parts += [_md_table(folds, {"valid_mae": 4, "conformal_halfwidth": 4}), ""]
    data = result.data.copy()
    parts += [
        "## Data",
        "",
        f"Replay panel (`pipelines.sources.load_replay_panel`): arch's S&P 500 (`SPX`) and "
        "NASDAQ composite (`NDX`) OHLCV and skfolio's 20 S&P 500 stocks (adjusted close), "
        f"restricted to the common sample {cfg.start}..{cfg.end} (the indices' range) and NYSE "
        "sessions.",
        "",
        _md_table(data),
        "",
    ]
    if not result.missing.empty:
        miss = result.missing.rename(columns=lambda c: labels.get(c, c))
        parts += [
            "**Rows left out.** Every model is scored on the same rows, so an out-of-sample "
            "row is dropped wherever any forecast is not finite. The counts of such rows by "
            "symbol and model (a symbol with all its rows here is missing from every table "
            "above):",
            "",
            _md_table(miss),
            "",
        ]
        if "egarch" in result.missing.columns and result.missing["egarch"].sum() > 0:
            parts += [
                "The non-finite EGARCH forecasts come from `models.garch`: an estimated "
                "EGARCH(1,1)-t whose simulated multi-step log-variance overflows (inf). They "
                "are reported, not patched.",
                "",
            ]
    parts += [
        "## MAE per symbol",
        "",
    ]
    ps = result.per_symbol.rename(columns=lambda c: labels.get(c, c))
    parts += [_md_table(ps), ""]
    t = result.timings
    parts += [
        "## Notes and caveats",
        "",
        "- Honest numbers: no figure in this file is typed in by hand; every one comes from "
        "the run above. The GARCH-LSTM is trained with an L1 loss, so MAE is its own "
        "criterion; RMSE and QLIKE are reported beside it and may rank the models differently.",
        "- Overlapping targets: consecutive rows share most of their "
        f"{cfg.horizon}-session label, so the effective sample is far smaller than `n`; the "
        "DM test accounts for it (HAC), the point metrics do not need to.",
        "- Cross-sectional dependence: the DM test runs on the per-session average loss of the "
        "group, so correlated symbols are not counted as independent evidence.",
        "- The stocks have adjusted closes only (no OHLC): no range-based estimator is used for "
        "any symbol, and the realised volatility is the close-to-close one.",
        f"- Runtime of this run: GARCH/EGARCH and fit-free baselines "
        f"{t.get('garch_seconds', math.nan):.0f} s, folds (HAR + GARCH-LSTM) "
        f"{t.get('folds_seconds', math.nan):.0f} s, total "
        f"{t.get('total_seconds', math.nan):.0f} s.",
        "",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------- adapter
def evaluate(
    cfg: EvaluationConfig,
    out: Path,
    *,
    command: str,
    settings: Settings | None = None,
) -> EvaluationResult:
    """Run the evaluation, write the markdown to ``out`` and log it to MLflow.

    Parameters
    ----------
    cfg : EvaluationConfig
        What to evaluate.
    out : pathlib.Path
        Markdown file written (folders created).
    command : str
        The command line recorded in the report.
    settings : Settings, optional
        Where MLflow lives; ``None`` skips MLflow.
    """
    result = run_evaluation(cfg)
    text = render_markdown(result, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    if settings is not None:
        _log_mlflow(settings, result, text, command)
    return result


def _log_mlflow(settings: Settings, result: EvaluationResult, text: str, command: str) -> None:
    import mlflow

    from pipelines import registry

    registry.ensure_experiment(settings, "evaluation")
    with mlflow.start_run(run_name=f"evaluation h={result.config.horizon}"):
        mlflow.set_tags({"stage": "evaluation", "command": command})
        mlflow.log_params(result.config.to_params())
        metrics: dict[str, float] = {}
        for row in result.metrics.to_dict("records"):
            for name in ("mae", "rmse", "qlike"):
                metrics[f"{row['group']}.{row['model']}.{name}"] = float(row[name])
        for row in result.dm.to_dict("records"):
            metrics[f"{row['group']}.dm_pvalue.{row['model']}"] = float(row["pvalue"])
        for row in result.summary.to_dict("records"):
            metrics[f"{row['group']}.improvement_pct"] = float(row["improvement_pct"])
            metrics[f"{row['group']}.coverage"] = float(row["coverage"])
        for row in result.leakage.to_dict("records"):
            metrics[f"direction_accuracy.{row['model']}"] = float(row["accuracy"])
        metrics.update({k: float(v) for k, v in result.timings.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_text(text, "evaluation/evaluation.md")
        for name in ("metrics", "dm", "summary", "leakage", "folds", "per_symbol", "data",
                     "missing"):
            frame: pd.DataFrame = getattr(result, name)
            mlflow.log_text(frame.to_csv(index=False), f"evaluation/{name}.csv")
