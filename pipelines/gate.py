"""The promotion gate of the validation stage: pure functions from holdout forecasts to a verdict.

The validation stage (:func:`pipelines.stages.validate_and_promote`) gathers, for the same
out-of-sample rows (symbol x session of the holdout segment), the forecasts of the challenger,
of the champion (when it can read tonight's windows) and of the baselines (GARCH(1,1)-t, EWMA,
22-session historical vol), the realised target, the next session's return and the trailing
dollar volume, as a :class:`Holdout`. :func:`evaluate` then computes, with no look-ahead:

accuracy          MAE, RMSE and QLIKE of every model on the same rows;
statistical tests per-session mean absolute errors (one loss per session, the panel's rows of a
                  session averaged) compared pairwise: Diebold-Mariano (HAC, HLN-corrected,
                  ``horizon - 1`` lags for the overlapping targets) and Hansen's SPA test with
                  the competitor as benchmark (``arch.bootstrap.SPA``, stationary bootstrap),
                  plus the Model Confidence Set of all models (``arch.bootstrap.MCS``);
VaR backtest      one-session VaR at ``var_level`` of the equal-weight portfolio of the scored
                  symbols from each model's vol forecasts (daily vol = annualised forecast /
                  sqrt(252)) and the trailing Ledoit-Wolf correlation, Student-t quantile with
                  ``var_dof`` degrees of freedom scaled to unit variance; exception = the
                  portfolio's next-session return below -VaR; Kupiec's POF, Christoffersen's
                  conditional coverage and the Basel traffic-light zone (binomial thresholds for
                  the number of sessions: 250 in the nightly cycle); each symbol's own backtest
                  is reported beside it;
signal backtest   a volatility-targeting long portfolio per model (each symbol sized to
                  ``target_vol / n`` of risk with the model's forecast, capped at
                  ``max_position``), next-session returns, costs = commission + half-spread +
                  square-root impact on the trailing dollar volume; Sharpe, Sortino, Calmar,
                  drawdown, turnover, hit rate, profit factor; the Deflated Sharpe Ratio of the
                  challenger given the configurations tried to find it.

:func:`decide` applies :class:`GateConfig`: promote only when the challenger is significantly
better (SPA p-value below ``alpha``) than the champion and every baseline, its VaR backtest is in
the allowed zone and the session's data passed its quality suites. Every check leaves a reason.
The signal backtest and the DSR are reported, not gated on: the model forecasts volatility, and
the stand-in strategy measures what its forecasts are worth to a sizing rule, not a signal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from models.config import from_table

__all__ = [
    "ZONES",
    "GateConfig",
    "Holdout",
    "daily_var",
    "decide",
    "evaluate",
    "session_losses",
]

#: Basel traffic-light zones, from best to worst.
ZONES: tuple[str, ...] = ("green", "yellow", "red")
_TRADING_DAYS = 252
#: Validation sessions needed before the portfolio VaR's quantile is calibrated on them.
_MIN_CALIBRATION = 100


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the promotion gate (the ``[validation]`` table of ``afterbell.toml``).

    Attributes
    ----------
    alpha : float
        Significance level: the challenger must beat each competitor with an SPA p-value below it.
    require_significance : bool
        False judges on the MAE order only (for tiny test configurations; never in production).
    bootstrap_reps : int
        Bootstrap replications of the SPA test and the MCS.
    seed : int
        Seed of the bootstraps (the verdict of a session is reproducible).
    mcs_size : float
        Size of the Model Confidence Set (0.10: a 90% set).
    var_level : float
        Confidence level of the backtested one-session VaR.
    var_dof : float
        Degrees of freedom of the Student-t VaR quantile; 0 uses the normal quantile.
    var_corr_window : int
        Sessions of returns (up to each holdout session) behind the Ledoit-Wolf correlation that
        turns the model's per-symbol vol forecasts into the portfolio's VaR.
    max_var_zone : {"green", "yellow", "red"}
        Worst Basel zone of the challenger's VaR backtest that still allows promotion.
    max_champion_age : int
        Sessions after its training session beyond which a champion is stale: flagged by the
        validation report, refused by the pre-market stage and by serving.
    target_vol, max_position : float
        Volatility target and per-symbol weight cap of the backtested sizing rule.
    commission_bps, half_spread_bps, impact_coef, capital : float
        Costs of the signal backtest (see :class:`models.backtest.CostModel`).
    default_adv : float
        Average daily dollar volume assumed for the square-root impact where the data has no
        volume (the packaged stock data ships closes only; the report gives the share imputed).
    """

    alpha: float = 0.05
    require_significance: bool = True
    bootstrap_reps: int = 1000
    seed: int = 7
    mcs_size: float = 0.10
    var_level: float = 0.99
    var_dof: float = 5.0
    var_corr_window: int = 250
    max_var_zone: str = "green"
    max_champion_age: int = 63
    target_vol: float = 0.10
    max_position: float = 0.15
    commission_bps: float = 1.0
    half_spread_bps: float = 2.0
    impact_coef: float = 0.1
    capital: float = 1e7
    default_adv: float = 1e9

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.alpha < 1.0:
            problems.append(f"alpha must be in (0, 1), got {self.alpha}")
        if self.bootstrap_reps < 10:
            problems.append(f"bootstrap_reps must be >= 10, got {self.bootstrap_reps}")
        if not 0.0 < self.mcs_size < 1.0:
            problems.append(f"mcs_size must be in (0, 1), got {self.mcs_size}")
        if not 0.5 < self.var_level < 1.0:
            problems.append(f"var_level must be in (0.5, 1), got {self.var_level}")
        if self.var_dof != 0.0 and not self.var_dof > 2.0:
            problems.append(f"var_dof must be 0 (normal) or > 2, got {self.var_dof}")
        if self.max_var_zone not in ZONES:
            problems.append(f"max_var_zone must be one of {', '.join(ZONES)}, "
                            f"got {self.max_var_zone!r}")
        if self.var_corr_window < 20:
            problems.append(f"var_corr_window must be >= 20, got {self.var_corr_window}")
        if self.max_champion_age < 1:
            problems.append(f"max_champion_age must be >= 1, got {self.max_champion_age}")
        for name in ("target_vol", "max_position", "capital", "default_adv"):
            if not getattr(self, name) > 0.0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("commission_bps", "half_spread_bps", "impact_coef"):
            if not getattr(self, name) >= 0.0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid [validation] settings: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> GateConfig:
        """The config from a mapping such as the ``[validation]`` table of a TOML file.

        Raises
        ------
        ValueError
            Naming unknown keys, values of the wrong type and values out of range.
        """
        return from_table(cls, m, label="[validation]", plural="[validation] setting(s)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Calibration:
    """Forecasts of the models on rows before the holdout (the validation segment), with the
    next-session log returns: the sample the portfolio VaR's quantile is calibrated on."""

    keys: pd.DataFrame
    forecasts: Mapping[str, np.ndarray]
    next_return: np.ndarray


@dataclass(frozen=True)
class Holdout:
    """The scored rows of one validation, aligned row by row.

    Attributes
    ----------
    keys : pandas.DataFrame
        ``symbol`` and ``session`` of each row (the forecast is made at that session's close).
    target : numpy.ndarray
        Realised annualised volatility over the next ``horizon`` sessions.
    forecasts : Mapping[str, numpy.ndarray]
        Annualised volatility forecast per model; must contain ``"challenger"``.
    next_return : numpy.ndarray
        Log return of the symbol over the next session (known after the holdout row).
    dollar_volume : numpy.ndarray
        Trailing 20-session mean of close x volume at the row's session (causal).
    horizon : int
        Forecast horizon in sessions (lags of the DM test's HAC variance).
    history : pandas.DataFrame, optional
        Simple daily returns, sessions by symbols, realised at each session's close and reaching
        back at least ``var_corr_window`` sessions before the holdout (the portfolio VaR's
        correlations); by default the holdout's own realised returns (the first sessions of the
        holdout, with fewer than 20 sessions behind them, are then left out of that backtest).
    calibration : Calibration, optional
        The same models' forecasts on the validation segment (before the holdout; needs
        ``history``): the portfolio VaR's quantile is calibrated on them.
    """

    keys: pd.DataFrame
    target: np.ndarray
    forecasts: Mapping[str, np.ndarray]
    next_return: np.ndarray
    dollar_volume: np.ndarray
    horizon: int
    history: pd.DataFrame | None = None
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        n = len(self.keys)
        if "challenger" not in self.forecasts:
            raise ValueError("Holdout.forecasts must contain 'challenger'")
        for name, arr in {"target": self.target, "next_return": self.next_return,
                          "dollar_volume": self.dollar_volume, **dict(self.forecasts)}.items():
            if len(arr) != n:
                raise ValueError(f"Holdout: {name} has {len(arr)} rows, keys have {n}")


# ---------------------------------------------------------------------------- accuracy tests
def session_losses(keys: pd.DataFrame, target: np.ndarray,
                   forecasts: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Mean absolute error per session (rows) and model (columns), on rows every model scores."""
    frame = pd.DataFrame({"session": keys["session"].to_numpy()})
    for name, f in forecasts.items():
        frame[name] = np.abs(np.asarray(f, float) - np.asarray(target, float))
    return frame.dropna().groupby("session", sort=True).mean()


def _accuracy(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from models.baselines import mae, qlike, rmse

    return {"mae": mae(y, p), "rmse": rmse(y, p), "qlike": qlike(y, p)}


def _comparisons(losses: pd.DataFrame, horizon: int, cfg: GateConfig) -> dict[str, Any]:
    """DM and SPA of the challenger against every other model, and the MCS of all."""
    from models.backtest import model_confidence_set, spa_test
    from models.evaluation import diebold_mariano

    ch = losses["challenger"].to_numpy(float)
    out: dict[str, Any] = {}
    for name in losses.columns:
        if name == "challenger":
            continue
        other = losses[name].to_numpy(float)
        try:
            dm = diebold_mariano(ch, other, horizon, alternative="less")
            dm_p: float | None = dm.pvalue
            dm_stat: float | None = dm.statistic
        except ValueError:  # identical or constant differential: nothing to test
            dm_p, dm_stat = None, None
        try:
            spa_p = float(spa_test(other, pd.DataFrame({"challenger": ch}),
                                   reps=cfg.bootstrap_reps, seed=cfg.seed).pvalue_consistent)
        except ValueError:  # a constant loss differential: the sign decides, with certainty
            spa_p = 0.0 if float(np.mean(ch - other)) < 0.0 else 1.0
        out[name] = {
            "challenger_mae": float(ch.mean()), "other_mae": float(other.mean()),
            "dm_statistic": dm_stat, "dm_pvalue": dm_p, "spa_pvalue": spa_p,
            "significant": bool(spa_p < cfg.alpha),
        }
    mcs = model_confidence_set(losses, size=cfg.mcs_size, reps=cfg.bootstrap_reps,
                               seed=cfg.seed)
    return {"pairs": out, "mcs": {
        "size": cfg.mcs_size, "included": list(mcs.included),
        "pvalues": {str(k): float(v) for k, v in mcs.pvalues.items()},
    }}


# ------------------------------------------------------------------------------- VaR backtest
def daily_var(annual_vol: np.ndarray, level: float, dof: float) -> np.ndarray:
    """One-session VaR (positive loss fraction) from an annualised volatility forecast.

    Student-t with ``dof`` degrees of freedom scaled to unit variance (normal when ``dof`` is 0).
    """
    from scipy import stats

    sigma = np.asarray(annual_vol, float) / math.sqrt(_TRADING_DAYS)
    if dof:
        q = float(stats.t.ppf(level, dof)) * math.sqrt((dof - 2.0) / dof)
    else:
        q = float(stats.norm.ppf(level))
    return q * sigma


def _long_to_wide(keys: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"symbol": keys["symbol"].to_numpy(),
                          "session": keys["session"].to_numpy(), "v": values})
    return frame.pivot_table(index="session", columns="symbol", values="v", aggfunc="first")


def _correlations(keys: pd.DataFrame, history: pd.DataFrame,
                  cfg: GateConfig) -> dict[pd.Timestamp, pd.DataFrame]:
    """Ledoit-Wolf correlation of the last ``var_corr_window`` sessions of ``history`` up to
    each session of ``keys`` (returns known at its close: no look-ahead)."""
    from models.risk import shrunk_covariance

    out: dict[pd.Timestamp, pd.DataFrame] = {}
    symbols = sorted(set(keys["symbol"]))
    for t in sorted(set(pd.to_datetime(keys["session"]))):
        window = history.loc[:t].reindex(columns=symbols).tail(cfg.var_corr_window)
        window = window.dropna(axis=1, thresh=20).dropna()
        if len(window) < 20 or window.shape[1] == 0:
            continue
        if window.shape[1] == 1:
            out[t] = pd.DataFrame(1.0, index=window.columns, columns=window.columns)
            continue
        cov, _ = shrunk_covariance(window, annualise=1)
        sd = np.sqrt(np.diag(cov.to_numpy()))
        out[t] = pd.DataFrame(cov.to_numpy() / np.outer(sd, sd), index=cov.index,
                              columns=cov.columns)
    return out


def _portfolio(keys: pd.DataFrame, forecast: np.ndarray, next_return: np.ndarray,
               corr: Mapping[pd.Timestamp, pd.DataFrame]) -> pd.DataFrame:
    """Per session: the equal-weight portfolio's daily vol forecast ``sigma`` (the model's vols,
    the session's correlation) and its next-session simple return ``ret``."""
    vol = _long_to_wide(keys, np.asarray(forecast, float)) / math.sqrt(_TRADING_DAYS)
    nxt = _long_to_wide(keys, np.expm1(np.asarray(next_return, float)))
    rows = []
    for t in vol.index:
        if t not in corr:
            continue
        row, ret = vol.loc[t], nxt.loc[t]
        ok = [c for c in corr[t].columns
              if np.isfinite(row.get(c, np.nan)) and np.isfinite(ret.get(c, np.nan))]
        if not ok:
            continue
        dw = row[ok].to_numpy(float) / len(ok)
        sigma = math.sqrt(float(dw @ corr[t].loc[ok, ok].to_numpy() @ dw))
        rows.append((t, sigma, float(ret[ok].to_numpy(float).mean())))
    return pd.DataFrame(rows, columns=["session", "sigma", "ret"])


def _quantile(calibration: pd.DataFrame | None, cfg: GateConfig) -> tuple[float, str]:
    """The portfolio VaR's multiple of its vol: the larger of the unit-variance Student-t
    quantile and the empirical quantile of the model's standardised portfolio returns over the
    calibration (validation) segment, which precedes the holdout (filtered historical
    simulation: it corrects a forecast biased low, e.g. one trained on absolute errors)."""
    q_t = float(daily_var(np.array([math.sqrt(_TRADING_DAYS)]), cfg.var_level, cfg.var_dof)[0])
    if calibration is None or len(calibration) < _MIN_CALIBRATION:
        return q_t, f"Student-t({cfg.var_dof:g})" if cfg.var_dof else "normal"
    z = (calibration["ret"] / calibration["sigma"]).to_numpy(float)
    q_fhs = float(-np.quantile(z[np.isfinite(z)], 1.0 - cfg.var_level))
    if q_fhs > q_t:
        return q_fhs, f"filtered historical simulation over {len(z)} validation sessions"
    return q_t, (f"Student-t({cfg.var_dof:g}) (above the filtered historical quantile "
                 f"{q_fhs:.2f} of {len(z)} validation sessions)")


def _var_backtest(h: Holdout, forecast: np.ndarray, cfg: GateConfig,
                  corr: Mapping[pd.Timestamp, pd.DataFrame],
                  calibration: pd.DataFrame | None) -> dict[str, Any]:
    """VaR backtest of the equal-weight portfolio of the holdout's symbols (the gated zone),
    plus each symbol's own backtest and the pooled count (reported).

    The portfolio's one-session VaR at ``t`` is ``q * sqrt(w' D C D w)``: equal weights ``w``
    over the symbols scored at ``t``, ``D`` the model's daily vol forecasts, ``C`` the
    correlation of :func:`_correlations`, ``q`` from :func:`_quantile`; an exception is the
    portfolio's next-session return below ``-VaR``. One exception a session, as the Basel
    traffic light expects (pooling the symbols would count one market-wide move once per
    symbol). The per-symbol figures use the Student-t quantile.
    """
    from models.risk import basel_zone, christoffersen_cc, kupiec_pof

    q, method = _quantile(calibration, cfg)
    port = _portfolio(h.keys, forecast, h.next_return, corr)
    var = q * port["sigma"].to_numpy(float)
    ret = port["ret"].to_numpy(float)
    hits = ret < -var
    n, k = int(hits.size), int(hits.sum())

    var_rows = daily_var(forecast, cfg.var_level, cfg.var_dof)
    row_ret = np.expm1(np.asarray(h.next_return, float))
    fine = np.isfinite(var_rows) & np.isfinite(row_ret)
    frame = pd.DataFrame({"symbol": h.keys["symbol"].to_numpy()[fine],
                          "session": h.keys["session"].to_numpy()[fine],
                          "exception": row_ret[fine] < -var_rows[fine]})
    per_symbol = {}
    for symbol, g in frame.sort_values(["symbol", "session"]).groupby("symbol", sort=True):
        sym_hits = g["exception"].to_numpy(bool)
        per_symbol[str(symbol)] = {
            "n": int(sym_hits.size), "exceptions": int(sym_hits.sum()),
            "zone": basel_zone(int(sym_hits.sum()), n=int(sym_hits.size), level=cfg.var_level),
            "kupiec_pvalue": float(kupiec_pof(sym_hits, cfg.var_level).pvalue),
        }
    return {
        "portfolio": "equal weight", "level": cfg.var_level, "quantile": q,
        "quantile_method": method, "n": n, "exceptions": k, "expected": n * (1.0 - cfg.var_level),
        "rate": k / n if n else None,
        "kupiec_pvalue": float(kupiec_pof(hits, cfg.var_level).pvalue) if n else None,
        "christoffersen_cc_pvalue": float(christoffersen_cc(hits, cfg.var_level).pvalue)
        if n > 1 else None,
        "zone": basel_zone(k, n=n, level=cfg.var_level) if n else "red",
        "pooled_symbol_rows": {"n": int(frame.shape[0]),
                               "exceptions": int(frame["exception"].sum())},
        "per_symbol": per_symbol,
        "series": {"sessions": [pd.Timestamp(t).date().isoformat() for t in port["session"]],
                   "var": [round(float(v), 8) for v in var],
                   "ret": [round(float(r), 8) for r in ret]},
    }


# ---------------------------------------------------------------------------- signal backtest
def _wide(h: Holdout, values: np.ndarray) -> pd.DataFrame:
    return _long_to_wide(h.keys, values)


def _strategy(h: Holdout, forecast: np.ndarray, cfg: GateConfig) -> tuple[Any, Any]:
    """Backtest of the volatility-targeting long portfolio sized with ``forecast``."""
    from models.backtest import CostModel, backtest, performance

    vol = _wide(h, np.asarray(forecast, float))
    n_active = vol.notna().sum(axis=1).clip(lower=1)
    weights = (cfg.target_vol / vol).div(n_active, axis=0).clip(upper=cfg.max_position)
    weights = weights.where(np.isfinite(weights), 0.0).fillna(0.0)
    # Row t of ``weights`` earns row t+1 of ``returns``: row t+1 holds the next-session return
    # of row t (the holdout's sessions are consecutive), the first row earns nothing and one row
    # is appended for the next-session return of the last holdout session.
    nxt = _wide(h, np.expm1(np.asarray(h.next_return, float))).reindex(columns=vol.columns)
    index = [*nxt.index, pd.Timestamp(nxt.index[-1]) + pd.Timedelta(days=1)]
    returns = pd.DataFrame(np.vstack([np.zeros((1, nxt.shape[1])), nxt.to_numpy()]),
                           index=index, columns=nxt.columns).fillna(0.0)
    weights = weights.reindex(returns.index).fillna(0.0)
    adv = _wide(h, np.asarray(h.dollar_volume, float)).reindex(index=returns.index,
                                                               columns=vol.columns).ffill()
    adv = adv.where(adv > 0).fillna(cfg.default_adv)
    sigma = (vol / math.sqrt(_TRADING_DAYS)).reindex(returns.index).ffill()
    costs = CostModel(commission_bps=cfg.commission_bps, half_spread_bps=cfg.half_spread_bps,
                      impact_coef=cfg.impact_coef, capital=cfg.capital)
    result = backtest(weights, returns, adv, sigma, costs)
    return result, performance(result.net, result.turnover)


def _perf_dict(perf: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in asdict(perf).items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------ evaluate
def evaluate(h: Holdout, cfg: GateConfig, *, configurations_tried: int = 1) -> dict[str, Any]:
    """Every figure of the validation report for the holdout ``h`` (see the module docstring).

    Returns
    -------
    dict
        ``metrics`` (model -> mae/rmse/qlike), ``tests`` (pairs, mcs), ``var_backtest`` (model ->
        backtest), ``backtest`` (model -> performance), ``dsr`` (challenger), ``series`` (the
        per-session curves the HTML report plots).
    """
    from models.backtest import deflated_sharpe_ratio

    y = np.asarray(h.target, float)
    ok = np.isfinite(y) & np.all([np.isfinite(np.asarray(p, float))
                                  for p in h.forecasts.values()], axis=0)
    metrics = {name: _accuracy(y[ok], np.asarray(p, float)[ok])
               for name, p in h.forecasts.items()}
    scored = Holdout(
        keys=h.keys[ok].reset_index(drop=True), target=y[ok],
        forecasts={k: np.asarray(v, float)[ok] for k, v in h.forecasts.items()},
        next_return=np.asarray(h.next_return, float)[ok],
        dollar_volume=np.asarray(h.dollar_volume, float)[ok], horizon=h.horizon,
        history=h.history, calibration=h.calibration,
    )
    losses = session_losses(scored.keys, scored.target, scored.forecasts)
    tests = _comparisons(losses, h.horizon, cfg)
    history = h.history
    if history is None:  # the holdout's own realised returns: row t+1 holds row t's next return
        history = _wide(scored, np.expm1(scored.next_return)).shift(1).iloc[1:]
    corr = _correlations(scored.keys, history, cfg)
    calibrated: dict[str, pd.DataFrame] = {}
    cal = h.calibration
    if cal is not None and h.history is not None:
        cal_corr = _correlations(cal.keys, h.history, cfg)
        calibrated = {name: _portfolio(cal.keys, f, cal.next_return, cal_corr)
                      for name, f in cal.forecasts.items()}
    var_bt = {name: _var_backtest(scored, f, cfg, corr, calibrated.get(name))
              for name, f in scored.forecasts.items()}
    var_series = var_bt["challenger"].pop("series")
    for other in var_bt.values():
        other.pop("series", None)
    backtests: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, f in scored.forecasts.items():
        result, perf = _strategy(scored, f, cfg)
        backtests[name] = _perf_dict(perf)
        curves[name] = result
    sharpe = [b["sharpe"] for b in backtests.values() if b.get("sharpe") is not None]
    ch = curves["challenger"].net.to_numpy(float)
    dsr = None
    if len(ch) > 3 and np.std(ch) > 0:
        sr = float(np.mean(ch) / np.std(ch, ddof=1))
        sr_var = float(np.var(np.asarray(sharpe) / math.sqrt(_TRADING_DAYS), ddof=1)) \
            if len(sharpe) > 1 else 0.0
        from scipy import stats

        res = deflated_sharpe_ratio(sr, n_trials=max(1, configurations_tried),
                                    sr_variance=sr_var, n_obs=len(ch),
                                    skew=float(stats.skew(ch)),
                                    kurtosis=float(stats.kurtosis(ch, fisher=False)))
        dsr = {"dsr": float(res.dsr), "sharpe_per_session": sr,
               "configurations_tried": int(configurations_tried),
               "expected_max_sharpe": float(res.expected_max_sr),
               "sharpe_variance_across_models": sr_var}
    ch_var = daily_var(scored.forecasts["challenger"], cfg.var_level, cfg.var_dof)
    series = {**_series(scored, curves, ch_var), "portfolio_var": var_series}
    dv = scored.dollar_volume
    imputed = float(np.mean(~(np.isfinite(dv) & (dv > 0)))) if len(dv) else 0.0
    for b in backtests.values():
        b["adv_imputed_share"] = imputed
    return {"rows": int(ok.sum()), "sessions": len(losses), "metrics": metrics, "tests": tests,
            "var_backtest": var_bt, "backtest": backtests, "dsr": dsr, "series": series}


def _series(h: Holdout, curves: Mapping[str, Any], ch_var: np.ndarray) -> dict[str, Any]:
    """Per-session curves for the report's plots (JSON-able lists)."""
    frame = pd.DataFrame({"session": h.keys["session"].to_numpy(), "target": h.target,
                          "var": ch_var, "ret": np.expm1(h.next_return),
                          **{f"f_{k}": v for k, v in h.forecasts.items()}})
    by = frame.groupby("session", sort=True).mean(numeric_only=True)
    inside = (frame["ret"].abs() <= frame["var"]).groupby(frame["session"], sort=True).mean()

    def days(index: Any) -> list[str]:
        return [pd.Timestamp(t).date().isoformat() for t in index]

    return {
        "sessions": days(by.index),
        "target": by["target"].round(6).tolist(),
        "forecasts": {k: by[f"f_{k}"].round(6).tolist() for k in h.forecasts},
        "inside_rate": inside.round(6).tolist(),
        "equity": {k: {"sessions": days(c.equity.index),
                       "equity": c.equity.round(6).tolist(),
                       "drawdown": c.drawdown.round(6).tolist()} for k, c in curves.items()},
    }


# -------------------------------------------------------------------------------------- decide
def decide(figures: Mapping[str, Any], cfg: GateConfig, *, champion: str | None,
           champion_scored: bool, already_champion: bool, data_passed: bool,
           data_note: str) -> tuple[Literal["promote", "keep"], list[str]]:
    """The verdict and every reason for it (each check, passed or not, leaves one line)."""
    reasons: list[str] = []
    ok = True
    pairs: Mapping[str, Any] = figures["tests"]["pairs"]
    metrics = figures["metrics"]
    for name, t in pairs.items():
        label = f"champion v{champion}" if name == "champion" else f"{name} baseline"
        mae_ch, mae_o = metrics["challenger"]["mae"], metrics[name]["mae"]
        dm = "n/a" if t["dm_pvalue"] is None else f"{t['dm_pvalue']:.3g}"
        better = mae_ch < mae_o
        if cfg.require_significance:
            passed = better and t["significant"]
            verdict = ("significantly better than" if passed
                       else "not significantly better than")
            reasons.append(f"challenger {verdict} {label}: MAE {mae_ch:.5f} vs {mae_o:.5f}, "
                           f"SPA p={t['spa_pvalue']:.3g} (alpha {cfg.alpha}), DM p={dm}")
        else:
            passed = better
            reasons.append(f"challenger MAE {mae_ch:.5f} {'<' if better else '>='} {label} "
                           f"{mae_o:.5f} (significance not required: SPA p="
                           f"{t['spa_pvalue']:.3g}, DM p={dm})")
        ok = ok and passed
    if already_champion:
        reasons.append("the challenger already is the champion")
        ok = False
    elif champion is None:
        reasons.append("no champion yet: judged against the baselines")
    elif not champion_scored:
        reasons.append(f"champion v{champion} cannot be scored on tonight's windows: judged "
                       f"against the baselines only")
    mcs = figures["tests"]["mcs"]
    reasons.append(f"{1 - cfg.mcs_size:.0%} model confidence set: "
                   f"{', '.join(mcs['included'])}")
    vb = figures["var_backtest"]["challenger"]
    zone_ok = ZONES.index(vb["zone"]) <= ZONES.index(cfg.max_var_zone)
    kp = "n/a" if vb["kupiec_pvalue"] is None else f"{vb['kupiec_pvalue']:.3g}"
    reasons.append(f"VaR {cfg.var_level:.0%} backtest of the equal-weight portfolio "
                   f"{vb['zone']} zone ({vb['exceptions']} exceptions in {vb['n']} sessions, "
                   f"expected {vb['expected']:.1f}, Kupiec p={kp}): "
                   f"{'within' if zone_ok else 'beyond'} the allowed {cfg.max_var_zone}")
    ok = ok and zone_ok
    reasons.append(data_note)
    ok = ok and data_passed
    return ("promote" if ok else "keep"), reasons
