"""``afterbell evaluate`` on a quick configuration of the real replay data (SPX + AAPL, 2 folds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.evaluation import LeakageError
from pipelines.evaluation_run import (
    BASELINES,
    MODELS,
    REFERENCE,
    EvaluationConfig,
    EvaluationResult,
    assemble_result,
    base_forecasts,
    fold_splits,
    load_features,
    render_markdown,
    score_forecasts,
    walk_forward_forecasts,
)

QUICK = EvaluationConfig.quick(horizon=5)


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    return load_features(QUICK)


@pytest.fixture(scope="module")
def base(features: pd.DataFrame) -> pd.DataFrame:
    return base_forecasts(features, QUICK)


@pytest.fixture(scope="module")
def walk(base: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return walk_forward_forecasts(base, QUICK)


@pytest.fixture(scope="module")
def result(base: pd.DataFrame, walk: tuple[pd.DataFrame, pd.DataFrame]) -> EvaluationResult:
    return assemble_result(QUICK, base, *walk)


def test_every_model_on_the_same_rows(result: EvaluationResult) -> None:
    assert set(result.metrics["group"]) == {"indices", "stocks", "all"}
    for group, table in result.metrics.groupby("group"):
        assert list(table["model"]) == list(MODELS), group
        assert table["n"].nunique() == 1, group
        assert np.isfinite(table[["mae", "rmse", "qlike"]].to_numpy()).all()
    n = result.metrics.set_index(["group", "model"])["n"]
    assert n["all", REFERENCE] == n["indices", REFERENCE] + n["stocks", REFERENCE]
    assert n["all", REFERENCE] == len(result.forecasts.dropna())
    assert set(result.forecasts["fold"]) == {0, 1}


def test_metrics_match_the_forecasts(result: EvaluationResult) -> None:
    rows = result.forecasts.dropna()
    table = result.metrics.set_index(["group", "model"])
    expected = float(np.mean(np.abs(rows["har"] - rows["target"])))
    assert table.loc[("all", "har"), "mae"] == pytest.approx(expected)


def test_dm_pvalues_and_coverage_are_probabilities(result: EvaluationResult) -> None:
    assert set(result.dm["model"]) == set(BASELINES)
    assert result.dm["pvalue"].between(0.0, 1.0).all()
    assert (result.dm["n_sessions"] > 2 * QUICK.horizon).all()
    assert result.summary["coverage"].between(0.0, 1.0).all()
    assert (result.summary["mean_width"] > 0).all()
    best = result.metrics.loc[result.metrics["model"].isin(BASELINES)].groupby("group")["mae"].min()
    for row in result.summary.to_dict("records"):
        group = row["group"]
        ref = result.metrics.set_index(["group", "model"]).loc[(group, REFERENCE), "mae"]
        assert row["best_baseline_mae"] == pytest.approx(best[group])
        assert row["improvement_pct"] == pytest.approx(100 * (best[group] - ref) / best[group])


def test_folds_are_purged_and_embargoed(walk: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    forecasts, folds = walk
    sessions = pd.Index(np.sort(forecasts["session"].unique()))
    for fold in folds.to_dict("records"):
        # No training label reaches into the test block, nor the fit labels into validation.
        assert fold["label_end"] < fold["test_first"]
        assert fold["fit_last"] < fold["valid_first"] <= fold["train_last"] < fold["test_first"]
        test = forecasts.loc[forecasts["fold"] == fold["fold"], "session"]
        assert test.min().date() == fold["test_first"]
        assert test.max().date() == fold["test_last"]
    assert sessions[0].date() == QUICK.start_oos


def test_forecasts_do_not_see_the_future(base: pd.DataFrame,
                                         walk: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """Scrambling every return after the first fold's test block leaves its forecasts unchanged."""
    forecasts, folds = walk
    cutoff = pd.Timestamp(folds.iloc[0]["test_last"])
    feats = load_features(QUICK)
    late = feats["session"] > cutoff
    rng = np.random.default_rng(0)
    feats.loc[late, "ret_1"] = rng.permutation(feats.loc[late, "ret_1"].to_numpy()) * 3.0
    one_fold = EvaluationConfig.quick(horizon=5, max_folds=1)
    changed, _ = walk_forward_forecasts(base_forecasts(feats, one_fold), one_fold)
    original = forecasts.loc[forecasts["fold"] == 0].reset_index(drop=True)
    cols = [*MODELS, "lo", "hi"]
    pd.testing.assert_frame_equal(changed[cols], original[cols])
    assert not np.allclose(changed["target"].iloc[-1:], original["target"].iloc[-1:])


def test_planted_look_ahead_trips_the_alarm(result: EvaluationResult) -> None:
    planted = result.forecasts.assign(oracle=result.forecasts["target"])
    with pytest.raises(LeakageError, match="oracle"):
        score_forecasts(planted, QUICK)
    # A forecast that is only half look-ahead (an honest one blended with the target) trips it.
    blended = result.forecasts.copy()
    blended["garch_lstm"] = 0.5 * blended["garch_lstm"] + 0.5 * blended["target"]
    with pytest.raises(LeakageError, match="garch_lstm"):
        score_forecasts(blended, QUICK)


def test_honest_forecasts_pass_the_alarm(result: EvaluationResult) -> None:
    assert (result.leakage["accuracy"] <= QUICK.leakage_threshold).all()
    assert set(result.leakage["model"]) == set(MODELS)


def test_deterministic(base: pd.DataFrame, walk: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    one_fold = EvaluationConfig.quick(horizon=5, max_folds=1)
    again, folds = walk_forward_forecasts(base, one_fold)
    first = walk[0].loc[walk[0]["fold"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, first)
    assert folds.iloc[0]["conformal_halfwidth"] == walk[1].iloc[0]["conformal_halfwidth"]
    a, b = assemble_result(QUICK, base, *walk), assemble_result(QUICK, base, *walk)
    pd.testing.assert_frame_equal(a.metrics, b.metrics)
    pd.testing.assert_frame_equal(a.dm, b.dm)


def test_fold_splits_start_at_start_oos(base: pd.DataFrame) -> None:
    sessions = pd.Index(np.sort(base["session"].unique()))
    splits = fold_splits(sessions, QUICK)
    assert len(splits) == QUICK.max_folds
    for split in splits:
        # The last training label ends before the first test session (purge + embargo).
        assert list(sessions).index(split.label_end) < split.test_rows.start
    assert sessions[splits[0].test_rows.start].date() == QUICK.start_oos


def test_markdown_report(result: EvaluationResult) -> None:
    text = render_markdown(result, "afterbell evaluate --quick")
    assert "afterbell evaluate --quick" in text
    for label in ("GARCH-LSTM", "GARCH(1,1)-t", "EGARCH(1,1)-t", "HAR-RV (log)", "EWMA"):
        assert label in text
    assert "37.2%" in text and "Diebold-Mariano" in text and "coverage" in text


def test_cli_writes_the_report_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result: EvaluationResult
) -> None:
    from pipelines import cli, evaluation_run

    monkeypatch.setenv("AFTERBELL_HOME", str(tmp_path / "home"))
    seen: list[EvaluationConfig] = []

    def precomputed(
        cfg: EvaluationConfig, features: pd.DataFrame | None = None
    ) -> EvaluationResult:
        seen.append(cfg)
        return result

    monkeypatch.setattr(evaluation_run, "run_evaluation", precomputed)
    out = tmp_path / "docs" / "eval.md"
    rc = cli.main(["evaluate", "--quick", "--horizon", "5", "--symbols", "SPX,AAPL",
                   "--out", str(out), "--no-mlflow"])
    assert rc == 0
    text = out.read_text()
    assert f"afterbell evaluate --symbols SPX AAPL --horizon 5 --quick --out {out}" in text
    assert seen == [QUICK]
    assert not (tmp_path / "home").exists()  # --no-mlflow: nothing written to the state dir


def test_rows_with_a_missing_forecast_are_dropped_for_every_model_and_reported(
    result: EvaluationResult,
) -> None:
    broken = result.forecasts.copy()
    aapl = broken["symbol"] == "AAPL"
    broken.loc[aapl & (broken["fold"] == 0), "egarch"] = np.inf
    scores = score_forecasts(broken, QUICK)
    missing = scores["missing"].set_index("symbol")
    assert list(missing.index) == ["AAPL"]
    assert missing.loc["AAPL", "egarch"] == int((aapl & (broken["fold"] == 0)).sum())
    assert missing.loc["AAPL", REFERENCE] == 0
    n = scores["metrics"].set_index(["group", "model"])["n"]
    assert (n.loc["stocks"] == int((aapl & (broken["fold"] == 1)).sum())).all()
    assert result.missing.empty
