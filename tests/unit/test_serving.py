"""Serving app against a tiny materialised feature store, with fake predictors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipelines import feature_store as fs
from pipelines import serving
from pipelines.schema import FEATURE_COLUMNS, GARCH_COLUMNS, OPTION_COLUMNS
from pipelines.settings import WINDOW_COLUMNS, Settings

SYMBOLS = ("AAPL", "MSFT", "SPX")
WITH_DATA = ("AAPL", "MSFT")
LOOKBACK = 3
N_SESSIONS = 5


@dataclass
class FakePredictor:
    """Forecast = mean absolute window value; remembers the frames it saw."""

    name: str = "garch_lstm_vol"
    version: str = "3"
    alias: str = "champion"
    frames: list[pd.DataFrame] = field(default_factory=list)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        self.frames.append(frame)
        return frame.abs().mean(axis=1).to_numpy()


class BrokenPredictor(FakePredictor):
    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        raise RuntimeError("boom")


class NanPredictor(FakePredictor):
    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.array([np.nan])


@dataclass
class Ctx:
    settings: Settings
    window: pd.DataFrame


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    saved = os.environ.get("AFTERBELL_HOME")
    settings = Settings(home=tmp_path_factory.mktemp("home"), universe=SYMBOLS, horizon=5)
    rng = np.random.default_rng(5)
    sessions = pd.bdate_range("2018-12-17", periods=N_SESSIONS)
    base = pd.MultiIndex.from_product([WITH_DATA, sessions], names=["symbol", "session"])
    base = base.to_frame(index=False)
    base["event_timestamp"] = (base["session"] + pd.Timedelta(hours=21)).dt.tz_localize("UTC")
    n = len(base)
    window = base.copy()
    window["seq"] = list(rng.normal(size=(n, LOOKBACK * len(WINDOW_COLUMNS))))
    window["asof"] = base["event_timestamp"].astype("int64") // 10**9
    fs.write_offline_table(settings, "lstm_window", window)
    fs.write_offline_table(
        settings, "garch_features", base.assign(**{c: 0.2 for c in GARCH_COLUMNS})
    )
    fs.write_offline_table(
        settings, "option_features", base.assign(**{c: 0.03 for c in OPTION_COLUMNS})
    )
    fs.write_offline_table(
        settings, "market_features", base.assign(**{c: 0.1 for c in FEATURE_COLUMNS})
    )
    fs.apply_repo(settings)
    fs.materialize(
        settings,
        base["event_timestamp"].min().to_pydatetime(),
        base["event_timestamp"].max().to_pydatetime(),
    )
    yield Ctx(settings, window)
    if saved is None:
        os.environ.pop("AFTERBELL_HOME", None)
    else:
        os.environ["AFTERBELL_HOME"] = saved


def _client(settings: Settings, predictor: serving.Predictor | None) -> TestClient:
    return TestClient(serving.create_app(settings, predictor), raise_server_exceptions=False)


def test_health_ok(ctx: Ctx) -> None:
    with _client(ctx.settings, FakePredictor()) as client:
        resp = client.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["reason"] is None
    assert body["model"] == {"name": "garch_lstm_vol", "version": "3", "alias": "champion"}
    assert body["symbols"] == 3
    latest = ctx.window["event_timestamp"].max()
    assert datetime.fromisoformat(body["features"]["latest_asof"]) == latest.to_pydatetime()
    assert body["features"]["available"] == 2
    assert body["features"]["missing"] == ["SPX"]
    assert body["features"]["age_seconds"] > 0


def test_predict_ok(ctx: Ctx) -> None:
    predictor = FakePredictor()
    with _client(ctx.settings, predictor) as client:
        resp = client.get("/predict/aapl")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    last = ctx.window[ctx.window["symbol"] == "AAPL"].iloc[-1]
    seq = np.asarray(last["seq"])
    assert body["symbol"] == "AAPL"
    assert body["forecast"] == pytest.approx(np.abs(seq).mean())
    assert body["horizon"] == 5
    assert body["model"] == {"name": "garch_lstm_vol", "version": "3", "alias": "champion"}
    expected_ts = datetime.fromtimestamp(int(last["asof"]), tz=UTC)
    assert datetime.fromisoformat(body["feature_timestamp"]) == expected_ts
    (frame,) = predictor.frames
    assert list(frame.columns) == [f"x{i:03d}" for i in range(LOOKBACK * len(WINDOW_COLUMNS))]
    np.testing.assert_allclose(frame.iloc[0].to_numpy(), seq)


def test_unknown_symbol_is_404(ctx: Ctx) -> None:
    with _client(ctx.settings, FakePredictor()) as client:
        resp = client.get("/predict/zzz")
    assert resp.status_code == 404
    assert resp.json()["detail"].startswith("unknown symbol ZZZ: not in the universe (AAPL")


def test_symbol_without_features_is_404(ctx: Ctx) -> None:
    with _client(ctx.settings, FakePredictor()) as client:
        resp = client.get("/predict/SPX")
    assert resp.status_code == 404
    assert resp.json()["detail"] == "no online features for SPX"


def test_no_champion_is_503_and_degraded(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(settings: Settings, alias: str = "champion") -> serving.MlflowPredictor:
        raise LookupError(f"Registered Model with name={settings.model_name} not found")

    monkeypatch.setattr(serving.MlflowPredictor, "from_registry", missing)
    with _client(ctx.settings, None) as client:
        health = client.get("/health")
        pred = client.get("/predict/AAPL")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["model"] is None
    assert "no champion model for garch_lstm_vol" in health.json()["reason"]
    assert pred.status_code == 503
    assert pred.json()["detail"].startswith("no champion model for garch_lstm_vol")


@pytest.mark.parametrize("predictor", [BrokenPredictor(), NanPredictor()])
def test_model_failures_are_503_not_500(ctx: Ctx, predictor: FakePredictor) -> None:
    with _client(ctx.settings, predictor) as client:
        resp = client.get("/predict/MSFT")
    assert resp.status_code == 503
    assert "MSFT" in resp.json()["detail"] or "boom" in resp.json()["detail"]


def test_store_without_registry_is_503(ctx: Ctx, tmp_path_factory: pytest.TempPathFactory) -> None:
    empty = ctx.settings.with_(home=tmp_path_factory.mktemp("empty"))
    with _client(empty, FakePredictor()) as client:
        health = client.get("/health")
        pred = client.get("/predict/AAPL")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert pred.status_code == 503
    assert pred.json()["detail"].startswith("feature store unavailable")


def test_window_frame_columns() -> None:
    frame = serving.window_frame([[1.0, 2.0, 3.0]])
    assert list(frame.columns) == ["x000", "x001", "x002"]
    assert frame.dtypes.unique().tolist() == [np.float64]
