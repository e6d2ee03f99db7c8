"""Champion monitoring and retrain requests on small simulated records."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.baselines import mae
from pipelines import calendar, lake
from pipelines.datasets import forward_targets
from pipelines.monitoring import (
    MonitorReport,
    MonitorThresholds,
    assess,
    clear_retrain,
    monitor_session,
    pending_retrain,
    retrain_request_path,
)
from pipelines.settings import Settings

H = 5
SYMBOLS = ("AAA", "BBB", "CCC", "DDD", "EEE")
VOLS = (0.12, 0.18, 0.25, 0.32, 0.40)  # annualised true vol per symbol
VERSION = "3"


def simulate(
    sessions: list[pd.Timestamp],
    seed: int,
    symbols: tuple[str, ...] = SYMBOLS,
    sharpe: float = 4.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns with a constant true vol per symbol and a drift giving ``sharpe`` a year, and the
    well-calibrated forecaster: forecast = the true vol."""
    rng = np.random.default_rng(seed)
    idx = pd.DatetimeIndex(sessions)
    rets, fcs = [], []
    for sym, vol in zip(symbols, VOLS, strict=False):
        sd = vol / math.sqrt(252)
        r = rng.normal(sharpe * sd / math.sqrt(252), sd, len(idx))
        rets.append(pd.DataFrame({"symbol": sym, "session": idx, "ret_1": r}))
        fcs.append(pd.DataFrame({
            "symbol": sym, "session": idx, "for_session": idx.shift(1, freq="B"),
            "forecast": vol, "model_version": VERSION, "asof": 0,
        }))
    return pd.concat(rets, ignore_index=True), pd.concat(fcs, ignore_index=True)


def days(n: int, start: str = "2018-01-02") -> list[pd.Timestamp]:
    return list(pd.bdate_range(start, periods=n))


@pytest.fixture(scope="module")
def baseline_mae() -> float:
    """The calibrated forecaster's MAE on an independent 'holdout' of the same process."""
    rets, fcs = simulate(days(400, "2010-01-01"), seed=99)
    joined = fcs.merge(forward_targets(rets, H), on=["symbol", "session"])
    return mae(joined["target"].to_numpy(), joined["forecast"].to_numpy())


def test_calibrated_forecaster_raises_no_breach(baseline_mae: float) -> None:
    sessions = days(120)
    rets, fcs = simulate(sessions, seed=1)
    rep = assess(fcs, rets, sessions[-1].date(), baseline_mae, H, MonitorThresholds())
    assert rep.breaches == () and rep.retrain is False
    assert rep.model_version == VERSION
    assert rep.n_scored == 20 * len(SYMBOLS)  # mae_window sessions, all symbols
    assert rep.mae_ratio is not None and 0.75 < rep.mae_ratio < 1.25
    assert rep.rolling_sharpe is not None and rep.rolling_sharpe > 1.2
    assert rep.max_drawdown is not None and 0.0 <= rep.max_drawdown < 0.08
    assert rep.var_breach_rate is not None and rep.var_breach_rate <= 0.05
    assert rep.direction_accuracy is None  # a constant forecast has no direction


def test_planted_degradation_breaches_mae_with_figures(baseline_mae: float) -> None:
    sessions = days(120)
    rets, fcs = simulate(sessions, seed=1)
    last_scored = len(sessions) - 1 - H
    week = fcs["session"].isin(sessions[last_scored - 4 : last_scored + 1])
    fcs.loc[week, "forecast"] *= 2.0
    rep = assess(fcs, rets, sessions[-1].date(), baseline_mae, H, MonitorThresholds())
    assert rep.retrain is True
    assert rep.mae_ratio is not None and rep.mae_ratio > 1.25
    msg = next(b for b in rep.breaches if b.startswith("live MAE"))
    assert re.fullmatch(
        r"live MAE \d\.\d{3} is \d+% above the validation MAE \d\.\d{3} \(threshold 25%\)", msg
    )
    assert f"{rep.live_mae:.3f}" in msg and f"{baseline_mae:.3f}" in msg
    assert f"{rep.mae_ratio - 1:.0%}" in msg


def test_mae_not_judged_without_baseline_or_enough_observations(baseline_mae: float) -> None:
    sessions = days(120)
    rets, fcs = simulate(sessions, seed=1)
    fcs["forecast"] *= 3.0
    d = sessions[-1].date()
    assert not any("MAE" in b for b in assess(fcs, rets, d, None, H, MonitorThresholds()).breaches)
    few = MonitorThresholds(min_observations=10_000)
    assert not any("MAE" in b for b in assess(fcs, rets, d, baseline_mae, H, few).breaches)


def test_no_look_ahead(baseline_mae: float) -> None:
    sessions = days(120)
    rets, fcs = simulate(sessions, seed=2)
    i = 80
    d = sessions[i].date()
    th = MonitorThresholds(mae_window=10_000, sharpe_window=20)
    rep = assess(fcs, rets, d, baseline_mae, H, th)
    # forecasts of sessions 0..i-H have their whole horizon known at session i; later ones not
    assert rep.n_scored == (i - H + 1) * len(SYMBOLS)

    after = rets["session"] > pd.Timestamp(d)
    wild = rets.copy()
    wild.loc[after, "ret_1"] = -0.5  # a crash after the session
    wild_fc = fcs.copy()
    later = wild_fc["session"] > pd.Timestamp(d)
    wild_fc.loc[later, "forecast"] = 9.9
    wild_fc.loc[later, "model_version"] = "4"
    assert assess(wild_fc, wild, d, baseline_mae, H, th) == rep
    # only what is known at the close matters: truncating the inputs changes nothing either
    known_r, known_f = rets[~after], fcs[fcs["session"] <= pd.Timestamp(d)]
    assert assess(known_f, known_r, d, baseline_mae, H, th) == rep


def test_champion_is_the_latest_version_and_only_it_is_scored(baseline_mae: float) -> None:
    sessions = days(120)
    rets, fcs = simulate(sessions, seed=3)
    old = fcs["session"] < sessions[60]
    fcs.loc[old, "model_version"] = "12"  # the earlier champion, numerically higher
    fcs.loc[old, "forecast"] *= 5.0  # and terrible
    th = MonitorThresholds(mae_window=10_000)
    rep = assess(fcs, rets, sessions[-1].date(), baseline_mae, H, th)
    assert rep.model_version == VERSION
    assert rep.n_scored == (len(sessions) - 60 - H) * len(SYMBOLS)
    assert not any("MAE" in b for b in rep.breaches)


def test_perfect_foresight_direction_and_zero_error() -> None:
    sessions = days(60)
    rets, fcs = simulate(sessions, seed=4)
    tgt = forward_targets(rets, H)
    fcs = fcs.drop(columns="forecast").merge(tgt.rename(columns={"target": "forecast"}),
                                             on=["symbol", "session"])
    rep = assess(fcs, rets, sessions[-1].date(), 0.05, H, MonitorThresholds())
    assert rep.live_mae == 0.0 and rep.direction_accuracy == 1.0
    assert rep.rolling_sharpe is None and rep.max_drawdown is None  # < sharpe_window sessions


def test_var_breach_rate_counts_known_exceptions() -> None:
    sessions = days(40)
    vol = 0.16
    limit = -1.6448536269514722 * vol / math.sqrt(252)  # -0.016579...
    r = np.full(len(sessions), 0.001)
    r[[5, 10, 20, 30]] = -0.05  # clear exceptions
    r[12] = limit + 1e-4  # just inside the VaR: no exception
    r[25] = limit - 1e-4  # just outside: an exception
    r[39] = -0.5  # the return of the judged session itself: no forecast sees it next
    rets = pd.DataFrame({"symbol": "AAA", "session": sessions, "ret_1": r})
    fcs = pd.DataFrame({"symbol": "AAA", "session": sessions, "forecast": vol,
                        "model_version": VERSION})
    rep = assess(fcs, rets, sessions[-2].date(), None, H, MonitorThresholds())
    # forecasts of sessions 0..37 know their next-session return at session 38
    assert rep.var_breach_rate == pytest.approx(5 / 38)
    msg = next(b for b in rep.breaches if "VaR" in b)
    assert msg == (
        "95% VaR breach rate 13.2% (5 of 38 next-session returns) exceeds 5.0% (binomial p=0.040)"
    )
    assert rep.retrain is True
    quiet = assess(fcs, rets, sessions[4].date(), None, H, MonitorThresholds())
    assert quiet.var_breach_rate == 0.0 and quiet.breaches == ()


def test_losing_strategy_breaches_sharpe() -> None:
    sessions = days(90)
    rets, fcs = simulate(sessions, seed=5, sharpe=-4.0)
    rep = assess(fcs, rets, sessions[-1].date(), None, H, MonitorThresholds())
    assert rep.rolling_sharpe is not None and rep.rolling_sharpe < 1.2
    assert any(b.startswith("rolling Sharpe") and "last 60 sessions" in b for b in rep.breaches)


def test_no_forecasts_no_verdict() -> None:
    empty = pd.DataFrame(columns=["symbol", "session", "forecast", "model_version"])
    rets = pd.DataFrame(columns=["symbol", "session", "ret_1"])
    rep = assess(empty, rets, date(2018, 12, 31), 0.08, H, MonitorThresholds())
    assert rep.model_version is None and rep.n_scored == 0 and not rep.retrain


# --------------------------------------------------------------------------------- thresholds
def test_thresholds_from_mapping() -> None:
    th = MonitorThresholds.from_mapping({"mae_increase": 0.3, "sharpe_window": 40,
                                         "max_drawdown": 1})
    assert th == MonitorThresholds(mae_increase=0.3, sharpe_window=40, max_drawdown=1.0)
    assert MonitorThresholds.from_mapping({}) == MonitorThresholds()
    with pytest.raises(ValueError, match=r"unknown monitoring threshold\(s\): bogus, sharpe_windw"):
        MonitorThresholds.from_mapping({"mae_increase": 0.3, "sharpe_windw": 20, "bogus": 1})
    with pytest.raises(ValueError, match="sharpe_window must be an integer"):
        MonitorThresholds.from_mapping({"sharpe_window": 20.5})
    with pytest.raises(ValueError, match="min_sharpe must be a number"):
        MonitorThresholds.from_mapping({"min_sharpe": True})
    with pytest.raises(ValueError, match="var_level must be in"):
        MonitorThresholds.from_mapping({"var_level": 1.5})


# --------------------------------------------------------------------------------- adapter
LAKE_SESSIONS = calendar.sessions_between("2018-08-01", "2018-12-31")
REAL = ("AAPL", "MSFT", "SPX")


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "afterbell", universe=REAL)


def _fill_lake(s: Settings, degrade: bool = True) -> None:
    sessions = [pd.Timestamp(x) for x in LAKE_SESSIONS]
    rets, fcs = simulate(sessions, seed=6, symbols=REAL)
    fcs["for_session"] = fcs["session"].shift(-1)  # not used by the monitor
    if degrade:
        fcs.loc[fcs["session"] >= sessions[-20], "forecast"] *= 2.0
    lake.write_partitions(s.lake_dir, "features", rets)
    lake.write_partitions(s.lake_dir, "forecasts", fcs.dropna(subset=["for_session"]))
    for day, challenger, value in (
        ("2018-07-02", VERSION, 0.010),  # older report of the champion
        ("2018-07-31", VERSION, 0.045),  # newest one at or before the session: used
        ("2018-07-30", "2", 0.500),  # another version
        ("2019-01-02", VERSION, 0.900),  # after the session: never read
    ):
        path = s.runs_dir / f"session={day}" / "validation_report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"challenger": challenger,
                                    "metrics": {"challenger": {"mae": value}}}))


def _digests(s: Settings, d: date) -> dict[str, bytes]:
    return {
        "json": (s.runs_dir / f"session={d}" / "monitoring.json").read_bytes(),
        "lake": lake.partition_path(s.lake_dir, "monitoring", d).read_bytes(),
        "request": retrain_request_path(s).read_bytes(),
    }


def test_monitor_session_writes_report_partition_and_request(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    _fill_lake(s)
    d = LAKE_SESSIONS[-2]
    rep = monitor_session(s, d)
    assert rep.model_version == VERSION and rep.baseline_mae == 0.045
    assert rep.retrain and any(b.startswith("live MAE") for b in rep.breaches)

    saved = json.loads((s.runs_dir / f"session={d}" / "monitoring.json").read_text())
    assert MonitorReport.from_dict(saved) == rep
    assert saved["thresholds"] == asdict(MonitorThresholds())
    row = lake.read_table(s.lake_dir, "monitoring")
    assert len(row) == 1 and bool(row["retrain"].iloc[0])
    assert row["session"].iloc[0] == pd.Timestamp(d)
    assert json.loads(row["breaches"].iloc[0]) == list(rep.breaches)

    req = pending_retrain(s)
    assert req is not None and req.requested_by_session == d.isoformat()
    assert req.reasons == rep.breaches and req.figures == rep.figures

    before = _digests(s, d)
    again = monitor_session(s, d)
    assert again == rep
    assert _digests(s, d) == before  # byte-identical overwrite
    assert len(lake.read_table(s.lake_dir, "monitoring")) == 1
    assert lake.partition_sessions(s.lake_dir, "monitoring") == [d]


def test_healthy_session_requests_nothing(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    _fill_lake(s, degrade=False)
    rep = monitor_session(s, LAKE_SESSIONS[-2])
    assert rep.mae_ratio is not None and rep.mae_ratio < 1.25
    assert rep.breaches == () and not rep.retrain and pending_retrain(s) is None


def test_pending_and_clear_keep_history(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    _fill_lake(s)
    d1, d2, consumer = LAKE_SESSIONS[-3], LAKE_SESSIONS[-2], LAKE_SESSIONS[-1]
    assert pending_retrain(s) is None
    clear_retrain(s, consumer.isoformat())  # nothing pending: a no-op

    monitor_session(s, d1)
    first = retrain_request_path(s).read_bytes()
    monitor_session(s, d2)  # a later breach keeps the pending request of d1
    assert retrain_request_path(s).read_bytes() == first

    clear_retrain(s, consumer.isoformat())
    assert pending_retrain(s) is None
    history = s.home / "state" / "retrain_history"
    assert (history / f"{consumer}.json").read_bytes() == first

    monitor_session(s, d1)  # a re-run after its request was consumed asks for nothing more
    assert pending_retrain(s) is None
    monitor_session(s, d2)  # d2 had not asked yet: it does now
    req = pending_retrain(s)
    assert req is not None and req.requested_by_session == d2.isoformat()
    clear_retrain(s, consumer.isoformat())  # same consumer again: archived aside, not over
    assert (history / f"{consumer}.json").read_bytes() == first
    assert json.loads((history / f"{consumer}.1.json").read_text())["requested_by_session"] == (
        d2.isoformat()
    )


def test_monitor_session_without_forecasts(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    d = LAKE_SESSIONS[-1]
    rep = monitor_session(s, d)
    assert rep.model_version is None and not rep.retrain and pending_retrain(s) is None
    assert MonitorReport.from_dict(
        json.loads((s.runs_dir / f"session={d}" / "monitoring.json").read_text())
    ) == rep
    assert len(lake.read_table(s.lake_dir, "monitoring")) == 1


def test_var_exceptions_without_evidence_are_no_breach() -> None:
    """A breach rate above 5% on few outcomes is reported but not judged: below
    var_min_observations (1 exception in 7), or when the binomial test does not reject the
    nominal rate (3 in 21: 14%, p = 0.09)."""
    sessions = days(40)
    vol = 0.16
    r = np.full(len(sessions), 0.001)
    r[[5, 10, 20]] = -0.05
    rets = pd.DataFrame({"symbol": "AAA", "session": sessions, "ret_1": r})
    fcs = pd.DataFrame({"symbol": "AAA", "session": sessions, "forecast": vol,
                        "model_version": VERSION})
    few = assess(fcs, rets, sessions[7].date(), None, H, MonitorThresholds())
    assert few.var_breach_rate == pytest.approx(1 / 7)
    assert not any("VaR" in b for b in few.breaches)
    weak = assess(fcs, rets, sessions[21].date(), None, H, MonitorThresholds())
    assert weak.var_breach_rate == pytest.approx(3 / 21)
    assert not any("VaR" in b for b in weak.breaches)
