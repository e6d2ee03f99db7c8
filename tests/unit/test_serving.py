"""Serving app against a tiny materialised feature store, run by uvicorn on a free loopback port.

Models are fakes injected through ``create_app(predictor=...)`` or a fake registry
(``resolve``/``load``), so promotions, refused versions and an unreachable registry are simulated
without MLflow; one test uses a real MLflow registry (SQLite, in a temporary folder).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI

from pipelines import feature_store as fs
from pipelines import live, serving
from pipelines.registry import ModelRef
from pipelines.schema import FEATURE_COLUMNS, GARCH_COLUMNS, OPTION_COLUMNS
from pipelines.settings import WINDOW_COLUMNS, Settings

SYMBOLS = ("AAPL", "MSFT", "SPX")
WITH_DATA = ("AAPL", "MSFT")
LOOKBACK = 3
WIDTH = LOOKBACK * len(WINDOW_COLUMNS)
N_SESSIONS = 5
#: The fixture's features end on Friday 2018-12-21 (close 21:00 UTC): they are fresh for the
#: next session, Monday 2018-12-24, and stale for 2018-12-31.
SERVED = date(2018, 12, 24)
STALE_SESSION = date(2018, 12, 31)
TOKEN = "s3cr3t-t0ken-value"
GOOD_TAGS = {
    "session": "2018-12-21",
    "window_columns": ",".join(WINDOW_COLUMNS),
    "feature_service": "garch_lstm_v2",
}


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
class WidePredictor(FakePredictor):
    """A version trained on longer windows than the online store holds."""

    input_width: int = WIDTH + len(WINDOW_COLUMNS)


class FakeRegistry:
    """``resolve``/``load`` of a registry whose champion alias the test moves."""

    def __init__(self, version: str | None = "3", tags: dict[str, str] | None = None) -> None:
        self.ref: ModelRef | None = None
        self.error: Exception | None = None
        self.load_delay = 0.0
        self.loaded: list[str] = []
        self.predictors: dict[str, type[FakePredictor]] = {}
        if version is not None:
            self.promote(version, tags)

    def promote(self, version: str, tags: dict[str, str] | None = None) -> None:
        self.ref = ModelRef("garch_lstm_vol", version, None, dict(GOOD_TAGS if tags is None
                                                                   else tags))

    def resolve(self) -> ModelRef | None:
        if self.error is not None:
            raise self.error
        return self.ref

    def load(self, ref: ModelRef) -> serving.Predictor:
        time.sleep(self.load_delay)
        self.loaded.append(ref.version)
        return self.predictors.get(ref.version, FakePredictor)(version=ref.version)


@dataclass
class Ctx:
    settings: Settings
    window: pd.DataFrame


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    saved = os.environ.get("AFTERBELL_HOME")
    settings = Settings(home=tmp_path_factory.mktemp("home"), universe=SYMBOLS, horizon=5,
                        default_session=SERVED, serve_poll_seconds=0.1)
    rng = np.random.default_rng(5)
    sessions = pd.bdate_range("2018-12-17", periods=N_SESSIONS)
    base = pd.MultiIndex.from_product([WITH_DATA, sessions], names=["symbol", "session"])
    base = base.to_frame(index=False)
    base["event_timestamp"] = (base["session"] + pd.Timedelta(hours=21)).dt.tz_localize("UTC")
    n = len(base)
    window = base.copy()
    window["seq"] = list(rng.normal(size=(n, WIDTH)))
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


@contextmanager
def _serve(app: FastAPI, settings: Settings, **headers: str) -> Iterator[httpx.Client]:
    """Run ``app`` with uvicorn on a free loopback port; a keep-alive client to it."""
    with (
        live.running_server(settings, "127.0.0.1", live.free_port(), app=app) as base,
        httpx.Client(base_url=base, timeout=10, headers=headers) as client,
    ):
        yield client


@contextmanager
def _client(
    settings: Settings, predictor: serving.Predictor | None = None, **kwargs: Any
) -> Iterator[httpx.Client]:
    with _serve(serving.create_app(settings, predictor, **kwargs), settings) as client:
        yield client


def _last_row(ctx: Ctx, symbol: str) -> pd.Series:
    return ctx.window[ctx.window["symbol"] == symbol].iloc[-1]


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ------------------------------------------------------------------------------ predictions
def test_health_ok(ctx: Ctx) -> None:
    with _client(ctx.settings, FakePredictor()) as client:
        resp = client.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["reason"] is None
    model = body["model"]
    assert {k: model[k] for k in ("name", "version", "alias")} == {
        "name": "garch_lstm_vol", "version": "3", "alias": "champion"}
    assert model["feature_service"] == "garch_lstm_v2"
    assert datetime.fromisoformat(model["loaded_at"]).tzinfo is not None
    assert body["symbols"] == 3
    assert body["served_session"] == SERVED.isoformat()
    assert body["registry"] == {"polling": False, "reachable": None}
    assert body["auth"] == "none"
    latest = ctx.window["event_timestamp"].max()
    features = body["features"]
    assert datetime.fromisoformat(features["latest_asof"]) == latest.to_pydatetime()
    assert datetime.fromisoformat(features["expected_asof"]) == latest.to_pydatetime()
    assert features["available"] == 2
    assert features["missing"] == ["SPX"]
    assert features["stale"] == []
    assert features["age_seconds"] > 0


def test_predict_ok(ctx: Ctx) -> None:
    predictor = FakePredictor()
    with _client(ctx.settings, predictor) as client:
        resp = client.get("/predict/aapl")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    last = _last_row(ctx, "AAPL")
    seq = np.asarray(last["seq"])
    assert body["symbol"] == "AAPL"
    assert body["forecast"] == pytest.approx(np.abs(seq).mean())
    assert body["horizon"] == 5
    assert body["model"] == {"name": "garch_lstm_vol", "version": "3", "alias": "champion"}
    expected_ts = datetime.fromtimestamp(int(last["asof"]), tz=UTC)
    assert datetime.fromisoformat(body["feature_timestamp"]) == expected_ts
    (frame,) = predictor.frames
    assert list(frame.columns) == [f"x{i:03d}" for i in range(WIDTH)]
    np.testing.assert_allclose(frame.iloc[0].to_numpy(), seq)


def test_batch_is_one_store_read_and_one_predict(
    ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = FakePredictor()
    reads: list[list[str]] = []
    app = serving.create_app(ctx.settings, predictor)
    with _serve(app, ctx.settings) as client:
        reader = app.state.runtime.reader
        real = reader._lookup

        def counted(view: Any, symbols: list[str], names: list[str]) -> Any:
            reads.append(list(symbols))
            return real(view, symbols, names)

        monkeypatch.setattr(reader, "_lookup", counted)
        resp = client.post("/predict", json={"symbols": ["msft", " AAPL "]})
        single = client.get("/predict/AAPL").json()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert reads == [["MSFT", "AAPL"], ["AAPL"]]  # one read per request
    assert len(predictor.frames[0]) == 2
    assert [p["symbol"] for p in body["predictions"]] == ["MSFT", "AAPL"]
    assert body["model"] == {"name": "garch_lstm_vol", "version": "3", "alias": "champion"}
    aapl = body["predictions"][1]
    assert set(aapl) == {"symbol", "forecast", "horizon", "feature_timestamp"}
    assert aapl["forecast"] == pytest.approx(single["forecast"])
    assert aapl["feature_timestamp"] == single["feature_timestamp"]
    msft = np.asarray(_last_row(ctx, "MSFT")["seq"])
    assert body["predictions"][0]["forecast"] == pytest.approx(np.abs(msft).mean())


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"symbols": []}, "symbols is empty"),
        ({"symbols": ["AAPL", "aapl"]}, "duplicate symbols: AAPL"),
        ({"symbols": ["ZZZ", "QQQ"]}, "unknown symbols ZZZ, QQQ"),
        ({"symbols": ["AAPL", "MSFT", "SPX"]}, "too many symbols: 3 > 2"),
        ({"symbols": "AAPL"}, "list"),
        ({"symbol": ["AAPL"]}, "symbols"),
        ({"symbols": ["AAPL"], "extra": 1}, "extra"),
        ({"symbols": [1]}, "string"),
        ("not json", "JSON"),
    ],
)
def test_bad_batches_are_422_with_a_reason(ctx: Ctx, body: Any, needle: str) -> None:
    settings = ctx.settings.with_(serve_max_batch=2)
    with _client(settings, FakePredictor()) as client:
        if isinstance(body, str):
            resp = client.post("/predict", content=body,
                               headers={"content-type": "application/json"})
        else:
            resp = client.post("/predict", json=body)
    assert resp.status_code == 422, resp.text
    assert needle.lower() in str(resp.json()["detail"]).lower()


def test_unknown_symbol_is_404(ctx: Ctx) -> None:
    with _client(ctx.settings, FakePredictor()) as client:
        resp = client.get("/predict/zzz")
    assert resp.status_code == 404
    assert resp.json()["detail"].startswith("unknown symbol ZZZ: not in the universe (AAPL")


def test_symbol_without_features_is_503_naming_it(ctx: Ctx) -> None:
    with _client(ctx.settings, FakePredictor()) as client:
        resp = client.get("/predict/SPX")
        batch = client.post("/predict", json={"symbols": ["AAPL", "SPX"]})
    assert resp.status_code == 503
    assert resp.json()["detail"] == "no online features for SPX (lstm_window:seq missing)"
    assert batch.status_code == 503
    assert batch.json()["detail"] == "no online features for SPX (lstm_window:seq missing)"


def test_stale_features_are_503_naming_symbol_feature_and_times(ctx: Ctx) -> None:
    settings = ctx.settings.with_(default_session=STALE_SESSION)
    predictor = FakePredictor()
    with _client(settings, predictor) as client:
        resp = client.get("/predict/AAPL")
        batch = client.post("/predict", json={"symbols": ["AAPL", "MSFT"]})
        health = client.get("/health").json()
    assert resp.status_code == 503
    detail = resp.json()["detail"]
    assert detail == (
        "stale online features for AAPL: lstm_window:seq as of 2018-12-21T21:00:00+00:00, "
        "expected 2018-12-28T21:00:00+00:00 or later (close of the session before 2018-12-31)"
    )
    assert batch.status_code == 503
    assert "for AAPL" in batch.json()["detail"] and "for MSFT" in batch.json()["detail"]
    assert predictor.frames == []
    assert health["status"] == "degraded"
    assert health["features"]["stale"] == ["AAPL", "MSFT"]
    assert "stale online features for AAPL, MSFT" in health["reason"]


def test_expected_asof_is_the_previous_close_early_closes_included() -> None:
    # 2018-12-26 follows the 13:00 early close of Christmas Eve (18:00 UTC)
    assert serving.expected_asof(date(2018, 12, 26)) == pd.Timestamp("2018-12-24 18:00", tz="UTC")
    # a Monday after a Friday holiday (Good Friday 2019-04-19)
    assert serving.expected_asof(date(2019, 4, 22)) == pd.Timestamp("2019-04-18 20:00", tz="UTC")


# ------------------------------------------------------------------------------ failures
def test_no_champion_is_503_and_degraded(ctx: Ctx) -> None:
    registry = FakeRegistry(version=None)
    with _client(ctx.settings, resolve=registry.resolve, load=registry.load) as client:
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


def test_unexpected_errors_are_503_never_500(
    ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = serving.create_app(ctx.settings, FakePredictor())

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(app.state.runtime, "windows", explode)
    with _serve(app, ctx.settings) as client:
        single = client.get("/predict/AAPL")
        batch = client.post("/predict", json={"symbols": ["AAPL"]})
        metrics = client.get("/metrics").text
    for resp in (single, batch):
        assert resp.status_code == 503
        assert resp.json()["detail"] == "internal error: KeyError: 'surprise'"
    assert 'route="/predict/{symbol}",status="503"} 1.0' in metrics
    assert 'status="500"' not in metrics


def test_store_without_registry_is_503(ctx: Ctx, tmp_path_factory: pytest.TempPathFactory) -> None:
    empty = ctx.settings.with_(home=tmp_path_factory.mktemp("empty"))
    with _client(empty, FakePredictor()) as client:
        health = client.get("/health")
        pred = client.get("/predict/AAPL")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert pred.status_code == 503
    assert pred.json()["detail"].startswith("feature store unavailable")


def test_online_store_failure_while_serving_is_503_naming_it(
    ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    app = serving.create_app(ctx.settings, FakePredictor())
    with _serve(app, ctx.settings) as client:
        assert client.get("/predict/AAPL").status_code == 200

        def locked(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(app.state.runtime.reader, "_lookup", locked)
        single = client.get("/predict/AAPL")
        batch = client.post("/predict", json={"symbols": ["AAPL", "MSFT"]})
        monkeypatch.undo()
        again = client.get("/predict/AAPL")
    for resp in (single, batch):
        assert resp.status_code == 503
        assert resp.json()["detail"] == ("feature store unavailable: OperationalError: "
                                         "database is locked")
    assert again.status_code == 200


def test_window_frame_columns() -> None:
    frame = serving.window_frame([[1.0, 2.0, 3.0]])
    assert list(frame.columns) == ["x000", "x001", "x002"]
    assert frame.dtypes.unique().tolist() == [np.float64]


# ------------------------------------------------------------------------------ champion
@pytest.mark.parametrize(
    ("tags", "predictor", "why"),
    [
        ({**GOOD_TAGS, "window_columns": "ret_1,rv_5"}, FakePredictor,
         "was trained on windows of (ret_1,rv_5)"),
        ({**GOOD_TAGS, "feature_service": "garch_lstm_v9"}, FakePredictor,
         "reads feature service 'garch_lstm_v9', which the feature store does not have"),
        ({**GOOD_TAGS, "feature_service": "garch_lstm_v1"}, WidePredictor,
         f"reads windows of {WIDTH + len(WINDOW_COLUMNS)} values; the online lstm_window:seq "
         f"holds {WIDTH} (feature schema mismatch)"),
        ({**GOOD_TAGS, "session": "2017-06-30"}, FakePredictor, "max_champion_age"),
    ],
    ids=["window-columns", "unknown-feature-service", "input-width", "too-old"],
)
def test_a_refused_champion_keeps_the_last_good_model(
    ctx: Ctx, tags: dict[str, str], predictor: type[FakePredictor], why: str,
) -> None:
    registry = FakeRegistry("3")
    registry.predictors["4"] = predictor
    with _client(ctx.settings, resolve=registry.resolve, load=registry.load) as client:
        assert client.get("/predict/AAPL").json()["model"]["version"] == "3"
        registry.promote("4", tags)

        def refused() -> bool:
            return bool(client.get("/health").json()["last_refused"])

        _wait_for(refused)
        time.sleep(0.3)  # a few more polls: refused once, not once per poll
        health = client.get("/health").json()
        pred = client.get("/predict/AAPL")
        metrics = client.get("/metrics").text
    assert pred.status_code == 200 and pred.json()["model"]["version"] == "3"
    assert health["status"] == "degraded"
    assert health["model"]["version"] == "3"
    assert health["champion"] == "4"
    assert health["last_refused"]["version"] == "4"
    assert health["last_refused"]["result"] == "refused"
    assert why in health["last_refused"]["reason"]
    assert "champion version 4 refused" in health["reason"]
    assert "still serving version 3" in health["reason"]
    assert health["reloads"] == {"ok": 1, "refused": 1, "failed": 0, "swaps": 0}
    # checked before loading when the tags tell; loaded once (not once per poll) otherwise
    assert registry.loaded.count("4") == (1 if predictor is WidePredictor else 0)
    assert 'afterbell_model_reloads_total{result="refused"} 1.0' in metrics, metrics
    assert 'afterbell_model_version_info{name="garch_lstm_vol",version="3"} 1.0' in metrics


def test_a_version_that_fails_to_load_is_retried_and_the_old_one_serves(ctx: Ctx) -> None:
    registry = FakeRegistry("3")

    def load(ref: ModelRef) -> serving.Predictor:
        if ref.version == "4":
            raise OSError("artifact store read timed out")
        return registry.load(ref)

    with _client(ctx.settings, resolve=registry.resolve, load=load) as client:
        registry.promote("4")
        _wait_for(lambda: client.get("/health").json()["reloads"]["failed"] >= 2)
        health = client.get("/health").json()
        pred = client.get("/predict/MSFT")
    assert pred.status_code == 200 and pred.json()["model"]["version"] == "3"
    assert health["last_refused"]["result"] == "failed"
    assert "OSError: artifact store read timed out" in health["last_refused"]["reason"]
    assert "champion version 4 failed" in health["reason"]


def test_promotion_is_picked_up_without_a_failed_request(ctx: Ctx) -> None:
    registry = FakeRegistry("3")
    registry.load_delay = 0.3  # a slow load: it must not hold up requests
    settings = ctx.settings.with_(serve_poll_seconds=0.2)
    statuses: dict[int, int] = {}
    versions: list[tuple[float, str]] = []
    #: each client's versions in the order of its (sequential) requests
    seen: list[list[str]] = [[], []]
    stop = threading.Event()
    with _client(settings, resolve=registry.resolve, load=registry.load) as client:
        base = str(client.base_url)

        def hammer(mine: list[str]) -> None:
            with httpx.Client(base_url=base, timeout=10) as c:
                while not stop.is_set():
                    r = c.get("/predict/AAPL")
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        version = r.json()["model"]["version"]
                        mine.append(version)
                        versions.append((time.monotonic(), version))

        threads = [threading.Thread(target=hammer, args=(mine,)) for mine in seen]
        for t in threads:
            t.start()
        time.sleep(0.3)
        promoted = time.monotonic()
        registry.promote("4")
        _wait_for(lambda: bool(versions) and versions[-1][1] == "4", timeout=10)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        health = client.get("/health").json()
        metrics = client.get("/metrics").text
    assert set(statuses) == {200}, statuses
    first_new = min(t for t, v in versions if v == "4")
    # within one poll period plus the load time (and some scheduling slack)
    assert first_new - promoted < 0.2 + 0.3 + 5.0
    # no flapping back: once a client got version 4, every later answer it gets is version 4
    # (the clients' timestamps across threads are not ordered like the server's answers)
    for mine in seen:
        assert "4" in mine and set(mine[mine.index("4"):]) == {"4"}, mine
    assert health["model"]["version"] == "4"
    assert health["reloads"] == {"ok": 2, "refused": 0, "failed": 0, "swaps": 1}
    assert health["status"] == "ok"
    assert 'afterbell_model_version_info{name="garch_lstm_vol",version="4"} 1.0' in metrics
    assert 'version="3"' not in metrics
    assert 'afterbell_model_reloads_total{result="ok"} 2.0' in metrics


def test_unreachable_registry_keeps_serving_the_last_good_model(
    ctx: Ctx, caplog: pytest.LogCaptureFixture
) -> None:
    registry = FakeRegistry("3")
    with _client(ctx.settings, resolve=registry.resolve, load=registry.load) as client:
        registry.error = ConnectionError("connection refused: 127.0.0.1:5000")
        _wait_for(lambda: client.get("/health").json()["registry"]["reachable"] is False)
        preds = [client.get(f"/predict/{s}") for s in ("AAPL", "MSFT", "AAPL")]
        health = client.get("/health").json()
        up = client.get("/metrics").text
        registry.error = None
        _wait_for(lambda: client.get("/health").json()["registry"]["reachable"] is True)
        after = client.get("/health").json()
    assert [p.status_code for p in preds] == [200, 200, 200]
    assert {p.json()["model"]["version"] for p in preds} == {"3"}
    assert health["status"] == "degraded"
    reg = health["registry"]
    assert reg["last_error"] == "ConnectionError: connection refused: 127.0.0.1:5000"
    assert datetime.fromisoformat(reg["last_error_at"]) >= datetime.fromisoformat(
        reg["down_since"])
    assert "model registry unreachable since" in health["reason"]
    assert "still serving version 3" in health["reason"]
    assert "afterbell_registry_up 0.0" in up
    assert after["status"] == "ok" and after["registry"]["last_error"] is None
    # the failure is logged, but not once per poll
    unreachable = [r for r in caplog.records if "model registry unreachable" in r.getMessage()]
    assert 1 <= len(unreachable) <= 2


def test_registry_unreachable_at_startup_is_503_until_it_answers(ctx: Ctx) -> None:
    registry = FakeRegistry("3")
    registry.error = TimeoutError("registry timed out")
    with _client(ctx.settings, resolve=registry.resolve, load=registry.load) as client:
        pred = client.get("/predict/AAPL")
        registry.error = None
        _wait_for(lambda: client.get("/predict/AAPL").status_code == 200)
    assert pred.status_code == 503
    assert "model registry unreachable: TimeoutError: registry timed out" in pred.json()["detail"]


# ------------------------------------------------------------------------------ auth, metrics
def test_bearer_auth_and_the_token_never_logged(
    ctx: Ctx, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = ctx.settings.with_(serve_token=TOKEN)
    assert TOKEN not in repr(settings)
    registry = FakeRegistry("3")
    app = serving.create_app(settings, resolve=registry.resolve, load=registry.load)
    with _serve(app, settings) as client:
        missing = client.get("/predict/AAPL")
        wrong = client.get("/predict/AAPL", headers={"Authorization": "Bearer nope"})
        basic = client.post("/predict", json={"symbols": ["AAPL"]},
                            headers={"Authorization": f"Basic {TOKEN}"})
        good = client.get("/predict/AAPL", headers={"Authorization": f"Bearer {TOKEN}"})
        batch = client.post("/predict", json={"symbols": ["AAPL"]},
                            headers={"Authorization": f"bearer {TOKEN}"})
        health = client.get("/health")
        metrics = client.get("/metrics").text
    for resp in (missing, wrong, basic):
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["detail"] == "missing or invalid bearer token"
    assert good.status_code == 200 and batch.status_code == 200
    assert health.status_code == 200 and health.json()["auth"] == "bearer"
    assert TOKEN not in health.text and TOKEN not in metrics
    assert 'route="/predict/{symbol}",status="401"} 2.0' in metrics
    assert 'route="/predict",status="401"} 1.0' in metrics
    assert TOKEN not in caplog.text
    assert all(TOKEN not in str(r.args) for r in caplog.records)


def test_metrics_count_requests_by_route_template(ctx: Ctx) -> None:
    app = serving.create_app(ctx.settings, FakePredictor())
    # a method outside the known ones is counted as OTHER (uvicorn's parser refuses most)
    app.state.runtime.metrics.observe("<unmatched>", "BREW", 405, 0.001)
    with _serve(app, ctx.settings) as client:
        for sym in ("AAPL", "MSFT", "aapl"):
            assert client.get(f"/predict/{sym}").status_code == 200
        client.get("/predict/ZZZ")
        client.post("/predict", json={"symbols": ["AAPL", "MSFT"]})
        client.get("/no/such/route")
        client.get("/health")
        resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert ('afterbell_requests_total{method="GET",route="/predict/{symbol}",status="200"} 3.0'
            in text)
    assert ('afterbell_requests_total{method="GET",route="/predict/{symbol}",status="404"} 1.0'
            in text)
    assert 'afterbell_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'route="<unmatched>",status="404"} 1.0' in text
    assert "/predict/AAPL" not in text  # label = template, not the path
    assert 'method="OTHER"' in text and "BREW" not in text
    assert 'afterbell_request_seconds_bucket{le="0.0005",route="/predict/{symbol}"}' in text
    assert 'afterbell_request_seconds_count{route="/predict/{symbol}"} 4.0' in text
    assert 'afterbell_model_version_info{name="garch_lstm_vol",version="3"} 1.0' in text
    age = next(ln for ln in text.splitlines() if ln.startswith("afterbell_feature_age_seconds "))
    assert float(age.split()[1]) > 0


# ------------------------------------------------------------------------------ live window
def test_serve_window_serves_a_past_session_for_serve_seconds(
    ctx: Ctx, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="afterbell.live")
    registry = FakeRegistry("3")
    real = serving.create_app

    def create_app(settings: Settings, predictor: Any = None, **kwargs: Any) -> FastAPI:
        return real(settings, resolve=registry.resolve, load=registry.load)

    monkeypatch.setattr(serving, "create_app", create_app)
    port = live.free_port()
    settings = ctx.settings.with_(serve_seconds=1.5, serve_port=port)
    codes: list[int] = []

    def client() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                codes.append(httpx.get(f"http://127.0.0.1:{port}/predict/AAPL").status_code)
                if len(codes) >= 5:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)

    poker = threading.Thread(target=client)
    poker.start()
    started = time.monotonic()
    # session 2018-12-24 (an early close) is long over: without serve_seconds it is a smoke check
    summary = live.serve_window(settings, pd.Timestamp("2018-12-24 14:30", tz="UTC"),
                                pd.Timestamp("2018-12-24 18:00", tz="UTC"))
    elapsed = time.monotonic() - started
    poker.join()
    assert summary["mode"] == "live"
    assert 1.5 <= summary["served_seconds"] < 5 and elapsed < 10
    assert summary["versions"][0]["version"] == "3"
    assert summary["requests"]["by_status"] == {"200": 5}
    assert summary["reloads"]["ok"] == 1
    assert codes == [200] * 5
    with pytest.raises(httpx.ConnectError):  # stopped: the port is closed
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "afterbell.live"]
    assert any("live serving stopped after" in ln and "v3 since" in ln and "200: 5" in ln
               for ln in lines), lines


def _serve_from(registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every app ``live`` creates follow ``registry`` instead of MLflow."""
    real = serving.create_app
    monkeypatch.setattr(serving, "create_app", lambda settings, *a, **k: real(
        settings, resolve=registry.resolve, load=registry.load))


def test_serve_window_serves_a_live_session_until_its_close(
    ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve_from(FakeRegistry("3"), monkeypatch)
    now = pd.Timestamp.now(tz="UTC")
    # a session whose close is 1.5 s away
    settings = ctx.settings.with_(serve_port=live.free_port())
    summary = live.serve_window(settings, now - pd.Timedelta(hours=1),
                                now + pd.Timedelta(seconds=1.5))
    assert summary["mode"] == "live"
    assert 0.5 <= summary["served_seconds"] < 5
    assert summary["requests"]["by_status"] == {}
    # the served session is the window's (today's): a champion trained in 2018 is refused
    assert summary["versions"] == [] and summary["model"] is None
    assert "max_champion_age" in summary["last_refused"]["reason"]


def test_serve_window_smoke_checks_a_past_session(
    ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve_from(FakeRegistry("3"), monkeypatch)
    summary = live.serve_window(ctx.settings, pd.Timestamp("2018-12-24 14:30", tz="UTC"),
                                pd.Timestamp("2018-12-24 18:00", tz="UTC"))
    assert summary == {"mode": "smoke", "session_close": "2018-12-24T18:00:00+00:00",
                       "served": 2, "model": summary["model"]}
    assert summary["model"]["version"] == "3"


# ------------------------------------------------------------------------------ real registry
_MODEL_CODE = '''
import mlflow
import numpy as np
import pandas as pd


class MeanAbs(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        frame = pd.DataFrame(model_input)
        return pd.DataFrame({"forecast": frame.abs().mean(axis=1) * SCALE})


mlflow.models.set_model(MeanAbs())
'''


def test_a_real_mlflow_registry_promotion_is_followed(ctx: Ctx, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from mlflow.tracking import _tracking_service

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = ctx.settings.with_(mlflow_uri=uri, serve_poll_seconds=0.2)
    previous = _tracking_service.utils._tracking_uri
    example = serving.window_frame(np.ones((1, WIDTH)))
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = MlflowClient(uri, uri)
        exp = client.create_experiment("serving-test",
                                       artifact_location=(tmp_path / "artifacts").as_uri())

        def register(scale: float) -> str:
            code = tmp_path / f"model_{scale:g}.py"
            code.write_text(_MODEL_CODE.replace("SCALE", repr(scale)))
            with mlflow.start_run(experiment_id=exp):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(code), registered_model_name="garch_lstm_vol",
                    signature=infer_signature(example, pd.DataFrame({"forecast": [1.0]})),
                    pip_requirements=["mlflow"],
                )
            version = str(info.registered_model_version)
            for k, v in GOOD_TAGS.items():
                client.set_model_version_tag("garch_lstm_vol", version, k, v)
            return version

        v1 = register(1.0)
        client.set_registered_model_alias("garch_lstm_vol", "champion", v1)
        seq = np.asarray(_last_row(ctx, "AAPL")["seq"])
        app = serving.create_app(settings)
        with _serve(app, settings) as http:
            first = http.get("/predict/AAPL").json()
            first_served = app.state.runtime.served
            v2 = register(2.0)
            client.set_registered_model_alias("garch_lstm_vol", "champion", v2)
            _wait_for(lambda: http.get("/predict/AAPL").json()["model"]["version"] == v2,
                      timeout=15)
            second = http.get("/predict/AAPL").json()
            health = http.get("/health").json()
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
    assert first["model"] == {"name": "garch_lstm_vol", "version": v1, "alias": "champion"}
    # a python model without a fitted network: called past the pyfunc's per-call schema check
    assert first_served.predictor.call_path == "python"
    assert first_served.width == WIDTH
    assert first["forecast"] == pytest.approx(np.abs(seq).mean())
    assert second["forecast"] == pytest.approx(2 * np.abs(seq).mean())
    assert health["status"] == "ok", health
    assert health["reloads"]["swaps"] == 1
    assert health["registry"]["reachable"] is True


class _Fitted:
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.abs(x).mean(axis=1) * self.scale


class _PythonModel:
    def __init__(self, fitted_scale: float, width: int = WIDTH) -> None:
        self.fitted = _Fitted(fitted_scale)
        self.columns = list(serving.window_frame(np.zeros((1, width))).columns)

    def predict(self, context: Any, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"forecast": frame.abs().mean(axis=1), "vol_1": 0.0})


class _Schema:
    def input_names(self) -> list[str]:
        return [f"x{i:03d}" for i in range(WIDTH)]


class _PyfuncModel:
    """Quacks like ``mlflow.pyfunc.PyFuncModel`` of a window python model."""

    def __init__(self, python_model: Any) -> None:
        self.python_model = python_model
        self.metadata = type("Meta", (), {"get_input_schema": lambda _: _Schema()})()

    def unwrap_python_model(self) -> Any:
        if self.python_model is None:
            raise ValueError("not a python model")
        return self.python_model

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"forecast": frame.abs().mean(axis=1)})


@pytest.mark.parametrize(
    ("python_model", "path"),
    [
        (_PythonModel(1.0), "network"),
        (_PythonModel(2.0), "python"),  # the network disagrees with the pyfunc: not used
        (_PythonModel(1.0, width=WIDTH - 1), "python"),  # other columns: not used
        (None, "pyfunc"),
    ],
)
def test_mlflow_predictor_takes_the_fastest_path_that_agrees(python_model: Any,
                                                             path: str) -> None:
    predictor = serving.MlflowPredictor("m", "1", "champion", _PyfuncModel(python_model))
    assert predictor.input_width == WIDTH
    assert predictor.call_path == path
    frame = serving.window_frame(np.random.default_rng(0).normal(size=(4, WIDTH)))
    expected = frame.abs().mean(axis=1).to_numpy()
    np.testing.assert_allclose(predictor.predict(frame), expected,
                               rtol=1e-6)  # the network path reads float32 windows
    # the request path hands the windows as an array: same forecasts on every path
    np.testing.assert_allclose(predictor.predict_array(frame.to_numpy()), expected, rtol=1e-6)


def test_direct_online_lookups_equal_the_feast_sdk_read(ctx: Ctx) -> None:
    """The request path's ``OnlineStore.online_read`` lookups return what Feast's
    ``get_online_features`` returns: the same windows and asofs, None for a symbol without
    rows, in the order asked."""
    store = fs.get_store(ctx.settings)
    reader = serving._WindowReader(store)
    features = ("lstm_window:seq", "lstm_window:asof")
    symbols = ["MSFT", "SPX", "AAPL", "MSFT"]
    seqs, asofs = reader.read(features, symbols)
    response = store.get_online_features(features=list(features),
                                         entity_rows=[{"symbol": s} for s in symbols])
    sdk_seqs, sdk_asofs = serving._window_columns(response.proto, ("seq", "asof"))
    assert asofs == sdk_asofs
    assert asofs[1] is None and seqs[1] is None and sdk_seqs[1] is None
    for ours, theirs, sym in zip(seqs, sdk_seqs, symbols, strict=True):
        if sym == "SPX":
            continue
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
        np.testing.assert_array_equal(np.asarray(ours), _last_row(ctx, sym)["seq"])
    assert asofs[0] == int(_last_row(ctx, "MSFT")["asof"])
    reader.forget_views()
    assert reader.read(features, ["AAPL"])[1] == [int(_last_row(ctx, "AAPL")["asof"])]
    # the SQLite fast path reads what Feast's own online_read reads
    assert reader._sqlite is not None
    generic = serving._WindowReader(store)
    generic._sqlite = None
    again = generic.read(features, symbols)
    assert again[1] == asofs
    assert [None if v is None else list(v) for v in again[0]] == [
        None if v is None else list(v) for v in seqs]


class _LstmPython:
    """A python model around a real (untrained) GARCH-LSTM, as models.pyfunc wraps one."""

    def __init__(self) -> None:
        from models.lstm import FittedLSTM, GarchLSTMNet, LSTMSpec

        spec = LSTMSpec(lookback=LOOKBACK, hidden=8, base_feature=4, extra_horizons=(1, 22))
        self.fitted = FittedLSTM(spec, GarchLSTMNet(spec, y_mean=[0.2, 0.25, 0.3]).state_dict())
        self.columns = list(serving.window_frame(np.zeros((1, WIDTH))).columns)

    def predict(self, context: Any, frame: pd.DataFrame) -> pd.DataFrame:
        out = self.fitted.predict_horizons(frame.to_numpy(np.float32))
        return pd.DataFrame({"forecast": out[:, 0], "vol_1": out[:, 1]})


class _LstmPyfunc(_PyfuncModel):
    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.python_model.predict(None, frame)


def test_a_real_lstm_is_served_through_its_torchscript_trace() -> None:
    python_model = _LstmPython()
    predictor = serving.MlflowPredictor("m", "1", "champion", _LstmPyfunc(python_model))
    assert predictor.call_path == "network (TorchScript)"
    for n in (1, 4, 25):
        windows = np.random.default_rng(n).uniform(0.05, 0.6, size=(n, WIDTH))
        expected = python_model.fitted.predict(windows.astype(np.float32))
        np.testing.assert_allclose(predictor.predict_array(windows), expected, rtol=1e-6)
        np.testing.assert_allclose(predictor.predict(serving.window_frame(windows)), expected,
                                   rtol=1e-6)


# ------------------------------------------------------------------------------ settings
def test_serving_settings_from_the_environment() -> None:
    s = Settings.from_env({"AFTERBELL_SERVE_TOKEN": f" {TOKEN} ",
                           "AFTERBELL_SERVE_POLL_SECONDS": "2.5",
                           "AFTERBELL_SERVE_MAX_BATCH": "25", "AFTERBELL_SERVE_SECONDS": "5"})
    assert (s.serve_token, s.serve_poll_seconds, s.serve_max_batch, s.serve_seconds) == (
        TOKEN, 2.5, 25, 5.0)
    assert TOKEN not in repr(s) and TOKEN not in str(s)
    d = Settings.from_env({})
    assert (d.serve_token, d.serve_poll_seconds, d.serve_max_batch, d.serve_seconds) == (
        None, 10.0, 100, None)
    assert Settings.from_env({"AFTERBELL_SERVE_TOKEN": ""}).serve_token is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AFTERBELL_SERVE_POLL_SECONDS": "0"}, "AFTERBELL_SERVE_POLL_SECONDS) must be > 0"),
        ({"AFTERBELL_SERVE_POLL_SECONDS": "30"}, "<= 20"),
        ({"AFTERBELL_SERVE_POLL_SECONDS": "soon"}, "must be a number, got 'soon'"),
        ({"AFTERBELL_SERVE_MAX_BATCH": "0"}, "AFTERBELL_SERVE_MAX_BATCH) must be between 1"),
        ({"AFTERBELL_SERVE_MAX_BATCH": "2.5"}, "must be an integer"),
        ({"AFTERBELL_SERVE_SECONDS": "-5"}, "AFTERBELL_SERVE_SECONDS) must be > 0"),
        ({"AFTERBELL_SERVE_SECONDS": "inf"}, "must be a finite number"),
        ({"AFTERBELL_SERVE_TOKEN": "two words"}, "without whitespace"),
    ],
)
def test_bad_serving_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        Settings.from_env(env)
    assert message in str(err.value)
    assert "two words" not in str(err.value)


def test_serving_bounds_mlflow_http_retries_unless_the_operator_set_them() -> None:
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    from pipelines.serving import SERVING_MLFLOW_HTTP, serving_http_defaults

    env: dict[str, str] = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    shown = serving_http_defaults(env)
    assert shown["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"  # the operator's own
    assert shown["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == SERVING_MLFLOW_HTTP[
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert env == shown
    # the names are MLflow's own (a renamed variable would be silently ignored)
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.name in SERVING_MLFLOW_HTTP
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.name in SERVING_MLFLOW_HTTP
    from mlflow import environment_variables as ev

    assert all(hasattr(ev, name) for name in SERVING_MLFLOW_HTTP)


@pytest.mark.parametrize(("utc", "served"), [
    ("2018-12-28 11:59", "2018-12-27"),  # Friday 06:59 New York: Thursday's session still
    ("2018-12-28 12:00", "2018-12-28"),  # Friday's pre-market window: Friday's session
    ("2018-12-29 18:00", "2018-12-28"),  # Saturday
    ("2018-12-31 11:00", "2018-12-28"),  # Monday 06:00
    ("2019-01-01 17:00", "2018-12-31"),  # New Year's Day: no session
    ("2018-03-12 10:59", "2018-03-09"),  # the Monday after the spring DST change, 06:59 EDT
    ("2018-03-12 11:00", "2018-03-12"),  # 07:00 EDT (12:00 UTC in winter)
])
def test_session_served_at_follows_the_nyse_clock(utc: str, served: str) -> None:
    now = pd.Timestamp(utc, tz="UTC").to_pydatetime()
    assert serving.session_served_at(now) == date.fromisoformat(served)


def test_a_following_service_rolls_to_the_new_session_and_its_staleness(tmp_path: Path) -> None:
    follow = Settings(home=tmp_path, serve_follow=True)
    runtime = serving._Runtime(follow, None, None, None)  # rolled to the clock's session
    assert runtime.settings.default_session == serving.session_served_at(datetime.now(UTC))
    monday = pd.Timestamp("2018-12-31 12:30", tz="UTC").to_pydatetime()  # 07:30 New York
    assert runtime.roll_session(monday)
    assert runtime.settings.default_session == date(2018, 12, 31)
    assert runtime.expected_iso == "2018-12-28T21:00:00+00:00"  # Friday's close
    assert not runtime.roll_session(monday)  # same session: nothing to do
    wednesday = pd.Timestamp("2019-01-02 12:30", tz="UTC").to_pydatetime()
    assert runtime.roll_session(wednesday)
    assert runtime.expected_iso == "2018-12-31T21:00:00+00:00"
    # without serve_follow the configured session stays, whatever the clock says
    fixed = serving._Runtime(Settings(home=tmp_path), None, None, None)
    assert not fixed.roll_session(wednesday)
    assert fixed.settings.default_session == Settings(home=tmp_path).default_session


def test_serve_follow_setting() -> None:
    assert Settings.from_env({"AFTERBELL_SERVE_FOLLOW": "1"}).serve_follow
    assert not Settings.from_env({}).serve_follow
    with pytest.raises(ValueError, match="AFTERBELL_SERVE_FOLLOW"):
        Settings.from_env({"AFTERBELL_SERVE_FOLLOW": "maybe"})
