"""The promotion gate on synthetic holdouts: planted bad and better challengers, every veto."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.gate import GateConfig, Holdout, daily_var, decide, evaluate, session_losses
from pipelines.report import render_report_html

CFG = GateConfig(bootstrap_reps=200)


def _holdout(challenger: str, *, n_sessions: int = 150, seed: int = 0,
             fat: float = 1.0) -> Holdout:
    """Three symbols with a persistent (AR(1) log) volatility; returns drawn from it.

    ``challenger``: "oracle" (the realised target with 3% noise), "constant" (0.20 always) or
    "garch" (the same forecast as the GARCH baseline) or "latent" (the volatility the returns
    were drawn with before ``fat`` scaled them).
    """
    rng = np.random.default_rng(seed)
    sessions = pd.bdate_range("2017-01-02", periods=n_sessions + 6)
    rows = []
    for symbol in ("AAA", "BBB", "CCC"):
        logv = np.empty(len(sessions))
        logv[0] = np.log(0.2)
        for t in range(1, len(sessions)):
            logv[t] = np.log(0.2) + 0.97 * (logv[t - 1] - np.log(0.2)) + 0.12 * rng.normal()
        vol = np.exp(logv)
        ret = vol / np.sqrt(252) * rng.standard_normal(len(sessions)) * fat
        for t in range(n_sessions):
            future = ret[t + 1:t + 6]
            rows.append({"symbol": symbol, "session": sessions[t],
                         "target": float(np.sqrt(252 * np.mean(future ** 2))),
                         "vol": vol[t], "next": ret[t + 1]})
    frame = pd.DataFrame(rows)
    y = frame["target"].to_numpy()
    garch = frame["vol"].to_numpy() * np.exp(0.25 * rng.standard_normal(len(frame)))
    forecasts = {
        "oracle": y * np.exp(0.03 * rng.standard_normal(len(frame))),
        "constant": np.full(len(frame), 0.20),
        "garch": garch,
        "latent": frame["vol"].to_numpy(),
    }
    return Holdout(
        keys=frame[["symbol", "session"]], target=y,
        forecasts={"challenger": forecasts[challenger], "garch": garch,
                   "ewma": garch * 1.05, "hist22": np.full(len(frame), float(np.mean(y)))},
        next_return=np.log1p(frame["next"].to_numpy()),
        dollar_volume=np.full(len(frame), 5e8), horizon=5,
    )


def _decide(h: Holdout, cfg: GateConfig = CFG, data_passed: bool = True) -> tuple[str, list[str]]:
    figures = evaluate(h, cfg)
    return decide(figures, cfg, champion=None, champion_scored=False, already_champion=False,
                  data_passed=data_passed, data_note="session data: test")


def test_a_planted_constant_challenger_is_never_promoted_and_the_reasons_say_why() -> None:
    decision, reasons = _decide(_holdout("constant"))
    assert decision == "keep"
    assert any("not significantly better than garch baseline" in r for r in reasons), reasons


def test_a_challenger_equal_to_the_baseline_is_not_significantly_better() -> None:
    decision, reasons = _decide(_holdout("garch"))
    assert decision == "keep"
    assert any("not significantly better than garch" in r for r in reasons), reasons


def test_a_planted_better_challenger_is_promoted() -> None:
    decision, reasons = _decide(_holdout("oracle"))
    assert decision == "promote", reasons
    assert sum("challenger significantly better than" in r for r in reasons) == 3, reasons
    assert any("green zone" in r for r in reasons), reasons


def test_failed_data_quality_vetoes_a_better_challenger() -> None:
    decision, reasons = _decide(_holdout("oracle"), data_passed=False)
    assert decision == "keep"
    assert reasons[-1] == "session data: test"


def test_a_var_backtest_beyond_the_allowed_zone_vetoes_promotion() -> None:
    # returns three times as wide as the volatility the forecasts describe: VaR exceptions pile up
    h = _holdout("latent", fat=3.0)
    figures = evaluate(h, CFG)
    vb = figures["var_backtest"]["challenger"]
    assert vb["zone"] == "red" and vb["exceptions"] > 5 * vb["expected"], vb
    decision, reasons = decide(figures, CFG, champion=None, champion_scored=False,
                               already_champion=False, data_passed=True, data_note="ok")
    assert decision == "keep"
    assert any("red zone" in r and "beyond the allowed green" in r for r in reasons), reasons


def test_session_losses_average_the_symbols_of_a_session() -> None:
    keys = pd.DataFrame({"symbol": ["A", "B", "A"],
                         "session": pd.to_datetime(["2018-01-02", "2018-01-02", "2018-01-03"])})
    out = session_losses(keys, np.array([1.0, 2.0, 3.0]), {"m": np.array([1.5, 1.0, 3.0])})
    assert out["m"].tolist() == [0.75, 0.0]


def test_daily_var_scales_the_unit_variance_t_quantile() -> None:
    from scipy import stats

    var = daily_var(np.array([np.sqrt(252) * 0.01]), 0.99, 5.0)
    assert var[0] == pytest.approx(0.01 * stats.t.ppf(0.99, 5) * np.sqrt(3 / 5))
    assert daily_var(np.array([np.sqrt(252)]), 0.99, 0.0)[0] == pytest.approx(2.3263, abs=1e-4)


def test_gate_config_names_bad_settings() -> None:
    with pytest.raises(ValueError, match=r"unknown .*alpah"):
        GateConfig.from_mapping({"alpah": 0.05})
    with pytest.raises(ValueError, match="alpha must be in"):
        GateConfig.from_mapping({"alpha": 1.5})
    with pytest.raises(ValueError, match="max_var_zone"):
        GateConfig.from_mapping({"max_var_zone": "amber"})
    with pytest.raises(ValueError, match="require_significance must be true or false"):
        GateConfig.from_mapping({"require_significance": "yes"})


def test_the_report_page_has_the_tables_and_five_plots() -> None:
    h = _holdout("oracle", n_sessions=60)
    figures = evaluate(h, CFG)
    decision, reasons = decide(figures, CFG, champion=None, champion_scored=False,
                               already_champion=False, data_passed=True, data_note="ok")
    report = {"session": "2017-04-03", "model": "m", "challenger": "2", "champion": None,
              "holdout": {"start": "a", "end": "b", "rows": figures["rows"], "horizon": 5},
              "gate": CFG.as_dict(), "decision": decision, "reasons": reasons,
              **{k: figures[k] for k in ("metrics", "tests", "var_backtest", "backtest", "dsr")}}
    page = render_report_html(report, figures["series"])
    assert page.count("data:image/png;base64,") == 5
    for heading in ("Statistical comparison", "VaR backtest (equal-weight portfolio)",
                    "Signal backtest with costs"):
        assert heading in page
