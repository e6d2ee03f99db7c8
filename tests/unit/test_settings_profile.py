"""The production profile's settings (no service needed): the URIs each profile resolves from the
environment, the MLflow server command, and secrets kept out of ``repr``, logs and MLflow."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from pipelines import registry, tuning
from pipelines.schedule import TuningConfig
from pipelines.settings import (
    DEFAULT_FEAST_REGISTRY_URL,
    DEFAULT_PRODUCTION_MLFLOW_URI,
    DEFAULT_PRODUCTION_OPTUNA_STORAGE,
    DEFAULT_REDIS_URL,
    MASK,
    Settings,
    redact_url,
)

SECRET = f"planted-{uuid.uuid4().hex}"


def _production_env(home: Path, **extra: str) -> dict[str, str]:
    return {"AFTERBELL_HOME": str(home), "AFTERBELL_PROFILE": "production", **extra}


def _secret_env(home: Path) -> dict[str, str]:
    """A production environment with a planted secret in every place one can be written."""
    return _production_env(
        home,
        AFTERBELL_MLFLOW_URI=f"https://afterbell:{SECRET}@mlflow.example:443",
        AFTERBELL_MLFLOW_ARTIFACTS="s3://afterbell-artifacts/mlflow",
        AFTERBELL_OPTUNA_STORAGE=f"postgresql+psycopg://optuna:{SECRET}@db:5432/optuna",
        AFTERBELL_FEAST_REGISTRY_URL=f"postgresql+psycopg://feast:{SECRET}@db:5432/feast"
                                     f"?sslmode=require",
        AFTERBELL_REDIS_URL=f"redis.example:6379,db=2,password={SECRET},ssl=true",
        AFTERBELL_SERVE_TOKEN=SECRET,
    )


# --------------------------------------------------------------------------------- resolution
def test_embedded_default_is_sqlite_and_local_artifacts(tmp_path: Path) -> None:
    s = Settings.from_env({"AFTERBELL_HOME": str(tmp_path)})
    assert s.profile == "embedded"
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert not s.tracking_is_server
    assert s.artifact_location("heavy_training") == (tmp_path / "mlflow" / "artifacts").as_uri()
    assert s.optuna_storage_url == f"sqlite:///{tmp_path / 'optuna' / 'optuna.db'}"
    assert tuning.study_storage(s, environ={}) == s.optuna_storage_url
    assert s.feast_yaml.name == "feature_store.yaml"


def test_production_defaults_are_the_local_services(tmp_path: Path) -> None:
    s = Settings.from_env(_production_env(tmp_path))
    assert s.tracking_uri == DEFAULT_PRODUCTION_MLFLOW_URI == "http://127.0.0.1:5000"
    assert s.tracking_is_server
    assert s.artifact_location("heavy_training") is None  # the server's (S3 behind it)
    assert s.optuna_storage_url == DEFAULT_PRODUCTION_OPTUNA_STORAGE
    assert s.optuna_storage_url.startswith("postgresql+psycopg://")
    assert tuning.study_storage(s, environ={}) == DEFAULT_PRODUCTION_OPTUNA_STORAGE
    assert not (tmp_path / "optuna").exists()  # no SQLite folder for a PostgreSQL storage
    assert (s.feast_registry_url, s.redis_url) == (DEFAULT_FEAST_REGISTRY_URL, DEFAULT_REDIS_URL)
    assert s.feast_yaml.name == "feature_store.production.yaml"
    # Settings built in code resolve the same way as from the environment.
    assert Settings(home=tmp_path, profile="production").tracking_uri == s.tracking_uri


def test_production_reads_every_uri_from_the_environment(tmp_path: Path) -> None:
    pg = "postgresql+psycopg://mlflow@db.internal:5432/afterbell_mlflow"
    optuna = "postgresql+psycopg://optuna@db.internal:5432/afterbell_optuna"
    s = Settings.from_env(_production_env(
        tmp_path,
        AFTERBELL_MLFLOW_URI=pg,
        AFTERBELL_MLFLOW_ARTIFACTS="s3://afterbell/mlflow/",
        AFTERBELL_OPTUNA_STORAGE=optuna,
        AFTERBELL_FEAST_REGISTRY_URL="postgresql+psycopg://feast@db.internal/feast",
        AFTERBELL_REDIS_URL="redis.internal:6379,db=1",
    ))
    assert s.tracking_uri == pg and not s.tracking_is_server
    assert s.artifact_location("heavy_training") == "s3://afterbell/mlflow/heavy_training"
    assert s.optuna_storage_url == optuna
    assert tuning.study_storage(s, environ={}) == optuna
    assert s.feast_registry_url == "postgresql+psycopg://feast@db.internal/feast"
    assert s.redis_url == "redis.internal:6379,db=1"
    # The Optuna variable also works when the settings do not carry it (older callers).
    bare = Settings(home=tmp_path, profile="production")
    assert tuning.study_storage(bare, environ={tuning.STORAGE_ENV: optuna}) == optuna


def test_production_refuses_artifacts_on_the_local_disk(tmp_path: Path) -> None:
    db_only = Settings.from_env(_production_env(
        tmp_path, AFTERBELL_MLFLOW_URI=f"postgresql+psycopg://mlflow:{SECRET}@db/mlflow"))
    with pytest.raises(ValueError, match="AFTERBELL_MLFLOW_ARTIFACTS") as err:
        db_only.artifact_location("heavy_training")
    assert SECRET not in str(err.value)
    for local in ("/var/lib/mlflow", "file:///var/lib/mlflow"):
        with pytest.raises(ValueError, match="object store"):
            Settings.from_env(_production_env(tmp_path, AFTERBELL_MLFLOW_ARTIFACTS=local))
    with pytest.raises(ValueError, match="AFTERBELL_PROFILE must be one of"):
        Settings.from_env({"AFTERBELL_HOME": str(tmp_path), "AFTERBELL_PROFILE": "staging"})
    with pytest.raises(ValueError, match="unknown profile 'staging'"):
        Settings(home=tmp_path, profile="staging")


def test_tracking_server_command_binds_loopback_and_takes_no_password() -> None:
    cmd = registry.tracking_server_command()
    conf = registry.server_settings()
    assert cmd[:2] == ["mlflow", "server"]

    def arg(command: list[str], flag: str) -> str:
        return command[command.index(flag) + 1]

    assert arg(cmd, "--host") == "127.0.0.1" == conf["MLFLOW_HOST"]
    assert arg(cmd, "--backend-store-uri").startswith("postgresql+psycopg://")
    assert arg(cmd, "--artifacts-destination").startswith("s3://")
    assert "--serve-artifacts" in cmd
    custom = registry.tracking_server_command(
        backend_store_uri="postgresql+psycopg://mlflow@db/mlflow",
        artifacts_destination="s3://b/p", port=5099, workers=2)
    assert arg(custom, "--port") == "5099" and arg(custom, "--workers") == "2"
    assert arg(custom, "--artifacts-destination") == "s3://b/p"
    with pytest.raises(ValueError, match="PGPASSWORD") as err:
        registry.tracking_server_command(
            backend_store_uri=f"postgresql+psycopg://mlflow:{SECRET}@db/mlflow")
    assert SECRET not in str(err.value)
    assert not any(SECRET in line for line in registry.SERVER_ENV_FILE.read_text().splitlines())


# ------------------------------------------------------------------------------------ secrets
@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://u:pw@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("https://user:p%40ss@mlflow:443/x", "https://user:***@mlflow:443/x"),
    ("h:6379,db=2,password=pw,ssl=true", "h:6379,db=2,password=***,ssl=true"),
    ("postgresql://h/db?sslmode=require&password=pw", "postgresql://h/db?sslmode=require&password=***"),
    ("s3://bucket/path?token=abc", "s3://bucket/path?token=***"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/x", "postgresql+psycopg://postgres@127.0.0.1:5432/x"),
    ("sqlite:////tmp/a:b/mlflow.db", "sqlite:////tmp/a:b/mlflow.db"),
    ("", ""),
])  # fmt: skip
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_no_secret_in_repr_or_describe(tmp_path: Path) -> None:
    s = Settings.from_env(_secret_env(tmp_path))
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr(s.describe()),
                 repr(s.with_(serve_port=8001))):
        assert SECRET not in text
    shown = s.describe()
    for key in ("mlflow_tracking_uri", "optuna_storage", "feast_registry_url", "redis_url"):
        assert MASK in shown[key], key
    assert shown["profile"] == "production" and "db:5432/optuna" in shown["optuna_storage"]
    assert "serve_token" not in repr(s)
    # the values themselves still reach the code that connects
    assert SECRET in s.optuna_storage_url and SECRET in s.tracking_uri


class _FakeFit:
    """Stands in for ``fit_lstm``: a loss from the spec, instantly."""

    def __call__(self, spec: Any, *args: Any, callbacks: Any = ()) -> SimpleNamespace:
        loss = abs(np.log(spec.lr / 5e-3)) + spec.hidden / 100 + spec.dropout
        return SimpleNamespace(valid_loss=[loss])


def test_no_secret_in_logs_or_mlflow_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A production environment with planted secrets: what the tuning logs, and what an MLflow
    run records of the settings (params and tags, read back from the store and from the
    database file itself), never holds them."""
    import mlflow
    from mlflow.tracking import _tracking_service

    import models.lstm
    from models.lstm import LSTMSpec
    from pipelines.settings import WINDOW_COLUMNS

    s = Settings.from_env(_secret_env(tmp_path))
    # The run goes to a local SQLite store; every other URL keeps its planted secret.
    local = s.with_(mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                    mlflow_artifact_root=(tmp_path / "artifacts").as_uri(), profile="embedded")
    previous = _tracking_service.utils._tracking_uri
    try:
        registry.ensure_experiment(local, "heavy_training")
        with mlflow.start_run() as run:
            mlflow.log_params({f"settings.{k}": v for k, v in s.describe().items()})
            mlflow.set_tags({f"afterbell.{k}": v for k, v in s.describe().items()})
        data = registry.client(local).get_run(run.info.run_id).data
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
    assert data.params["settings.optuna_storage"] == redact_url(s.optuna_storage_url)
    recorded = repr({**data.params, **data.tags})
    assert SECRET not in recorded and MASK in recorded
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            assert SECRET not in repr(db.execute(f'SELECT * FROM "{table}"').fetchall()), table

    # The tuning logs its storage through tuning.redact (a SQLite storage here; the services
    # test of a shared study plants a password in a PostgreSQL URL and reads the workers' logs).
    monkeypatch.setattr(models.lstm, "fit_lstm", _FakeFit())
    spec = LSTMSpec(lookback=3, hidden=4, max_epochs=2, seed=3,
                    base_feature=WINDOW_COLUMNS.index("garch_forecast"))
    rng = np.random.default_rng(0)
    X = rng.uniform(0.1, 0.3, size=(30, 3, len(WINDOW_COLUMNS))).astype(np.float32)
    y = X[:, -1, 0].astype(np.float32)
    config = TuningConfig(n_trials=2, trial_max_epochs=1, trial_train_rows=0, hidden=(2, 8),
                          layers=(1, 2), dropout=(0.0, 0.3), lr=(1e-3, 3e-2), seed=1)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with caplog.at_level(logging.INFO, logger="afterbell.tuning"):
        result = tuning.tune_lstm(spec, X[:20], y[:20], X[20:], y[20:], config,
                                  storage=storage, study_name="secrets")
    assert result.n_trials == 2
    assert f"in {storage}:" in caplog.text and SECRET not in caplog.text
    assert tuning.redact(s.optuna_storage_url) == "postgresql+psycopg://optuna:***@db:5432/optuna"


# ------------------------------------------------------------------------ shared Optuna study
def test_a_crashed_workers_running_trial_is_failed_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial left running without a live lease (a crashed worker) does not hold the budget:
    the next worker marks it failed and runs the whole budget; a live lease is waited for."""
    import optuna
    from optuna.trial import TrialState

    import models.lstm
    from models.lstm import LSTMSpec
    from pipelines.settings import WINDOW_COLUMNS

    monkeypatch.setattr(models.lstm, "fit_lstm", _FakeFit())
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="crash", direction="minimize")
    crashed = study.ask()  # never told: its worker died
    crashed.suggest_int("hidden", 2, 8, log=True)
    lapsed = study.ask()
    lapsed.set_user_attr(tuning.LEASE_ATTR, 0.0)  # lease long over
    spec = LSTMSpec(lookback=3, hidden=4, max_epochs=2, seed=3,
                    base_feature=WINDOW_COLUMNS.index("garch_forecast"))
    rng = np.random.default_rng(0)
    X = rng.uniform(0.1, 0.3, size=(30, 3, len(WINDOW_COLUMNS))).astype(np.float32)
    y = X[:, -1, 0].astype(np.float32)
    config = TuningConfig(n_trials=3, trial_max_epochs=1, trial_train_rows=0, hidden=(2, 8),
                          layers=(1, 2), dropout=(0.0, 0.3), lr=(1e-3, 3e-2), seed=1)
    result = tuning.tune_lstm(spec, X[:20], y[:20], X[20:], y[20:], config, storage=storage,
                              study_name="crash")
    states = {t.number: t.state for t in study.get_trials()}
    assert states[crashed.number] == states[lapsed.number] == TrialState.FAIL
    assert (result.n_trials, result.n_new) == (3, 3)
    assert sum(st == TrialState.COMPLETE for st in states.values()) == 3
    # A larger budget while another worker holds a live lease on a running trial: this worker
    # runs the rest and then waits for that trial (here: until the timeout, as it never ends).
    held = study.ask()
    held.set_user_attr(tuning.LEASE_ATTR, 1e12)
    waited = tuning.tune_lstm(spec, X[:20], y[:20], X[20:], y[20:],
                              replace(config, n_trials=5, timeout_minutes=2 / 60),
                              storage=storage, study_name="crash")
    assert waited.n_new == 1 and waited.n_trials == 4  # 3 + 1 of its own; 1 still running
    assert study.user_attrs[tuning.WORKERS_ATTR] == 2


def test_a_running_trials_lease_is_renewed_while_it_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker renews its lease while a trial trains longer than the lease itself."""
    import time

    import models.lstm
    from models.lstm import LSTMSpec
    from pipelines.settings import WINDOW_COLUMNS

    class SlowFit(_FakeFit):
        def __call__(self, spec: Any, *args: Any, callbacks: Any = ()) -> SimpleNamespace:
            time.sleep(0.8)
            return super().__call__(spec, *args, callbacks=callbacks)

    monkeypatch.setattr(tuning, "LEASE_SECONDS", 0.4)  # renewed every 0.1 s
    monkeypatch.setattr(models.lstm, "fit_lstm", SlowFit())
    spec = LSTMSpec(lookback=3, hidden=4, max_epochs=2, seed=3,
                    base_feature=WINDOW_COLUMNS.index("garch_forecast"))
    X = np.full((30, 3, len(WINDOW_COLUMNS)), 0.2, dtype=np.float32)
    y = X[:, -1, 0]
    config = TuningConfig(n_trials=1, trial_max_epochs=1, trial_train_rows=0, hidden=(2, 8),
                          layers=(1, 2), dropout=(0.0, 0.3), lr=(1e-3, 3e-2), seed=1)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuning.tune_lstm(spec, X[:20], y[:20], X[20:], y[20:], config, storage=storage,
                     study_name="lease")
    import optuna

    (trial,) = optuna.load_study(study_name="lease", storage=storage).get_trials()
    assert trial.datetime_start is not None
    started = trial.datetime_start.timestamp()
    # claimed with start + 0.4 s; renewed during the 0.8 s fit: ends well after that
    assert trial.user_attrs[tuning.LEASE_ATTR] > started + 0.9
