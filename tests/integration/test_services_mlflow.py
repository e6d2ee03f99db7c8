"""MLflow of the production profile on real services: metadata in PostgreSQL, artifacts in S3.

A real ``mlflow server`` (the command of :func:`pipelines.registry.tracking_server_command`) runs
on a free loopback port with a fresh PostgreSQL database as its backend store and moto's S3
server as its artifact destination; only the server holds the S3 keys. The test process takes the
project's own path with ``AFTERBELL_PROFILE=production`` settings (``pipelines.registry`` and
``models.pyfunc``): it logs a small GARCH-LSTM pyfunc, registers it, moves ``champion`` to it, and
a fresh interpreter (no checkout on its path, no S3 keys, only the tracking URI) loads
``models:/<name>@champion`` and predicts. Then the test reads PostgreSQL and the bucket directly:
the alias and the version are rows of the database, the model files objects of the bucket, and
no planted secret is anywhere in the database or in the run's params and tags.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from pipelines import registry
from pipelines.settings import REPO_ROOT, Settings
from tests.services import (  # noqa: F401 (s3_server is a fixture)
    S3Endpoint,
    free_port,
    s3_server,
    temporary_pg_database,
)

if TYPE_CHECKING:
    from models.lstm import FittedLSTM

pytestmark = pytest.mark.services

LOOKBACK, F = 6, 5
#: Seconds the tracking server may take to answer ``/health`` (about 10 s on an idle machine;
#: several times that while other jobs share the two cores).
SERVER_START_S = 150.0
#: A database password planted in a URL of the settings: it must reach no table of MLflow.
PLANTED_PASSWORD = f"pg-secret-{uuid.uuid4().hex}"


@dataclass
class TrackingServer:
    """A started ``mlflow server`` and where it keeps things (:meth:`wait` until it answers)."""

    uri: str
    backend: str
    bucket_prefix: str
    log: Path
    proc: subprocess.Popen[bytes]
    launched: float
    #: Seconds from the launch to the first healthy answer (None before :meth:`wait`).
    started_s: float | None = None

    def wait(self, limit: float = SERVER_START_S) -> float:
        """Block until ``/health`` answers 200; returns the seconds since the launch."""
        while self.started_s is None:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited {self.proc.returncode}:\n"
                            f"{self.log.read_text()[-4000:]}")
            if time.monotonic() - self.launched > limit:
                pytest.fail(f"mlflow server not healthy within {limit:.0f} s:\n"
                            f"{self.log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        self.started_s = time.monotonic() - self.launched
                        break
            except OSError:
                pass
            time.sleep(0.25)
        return self.started_s

    def stop(self) -> None:
        """Stop the server and its workers (its own process group, started by this test)."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def tracking_server(
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: S3Endpoint,  # noqa: F811 (fixture)
) -> Iterator[TrackingServer]:
    """``mlflow server`` on a fresh PostgreSQL database (dropped after) and the S3 bucket,
    launched (the test waits for it once its own set-up is done)."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    with temporary_pg_database("afterbell_mlflow_test") as backend:
        port = free_port()
        prefix = "mlflow"
        cmd = registry.tracking_server_command(
            backend_store_uri=backend,
            artifacts_destination=f"s3://{s3_server.bucket}/{prefix}",
            host="127.0.0.1",
            port=port,
            workers=1,
            executable=str(Path(sys.executable).with_name("mlflow")),
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        env.update(s3_server.env)  # the server, and only the server, holds the S3 keys
        log = folder / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        server = TrackingServer(f"http://127.0.0.1:{port}", backend, prefix, log, proc,
                                time.monotonic())
        try:
            yield server
        finally:
            server.stop()


def _fit_small_lstm() -> FittedLSTM:
    from models.lstm import LSTMSpec, fit_lstm

    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(0.2, 0.05, size=(300, LOOKBACK, F))).astype(np.float32)
    base = X[:, -1, 3] * np.exp(rng.normal(0, 0.1, 300))
    y = np.column_stack([base, 0.8 * base, 1.1 * base]).astype(np.float32)
    spec = LSTMSpec(lookback=LOOKBACK, hidden=4, batch_size=128, max_epochs=1, seed=3,
                    n_features=F, horizon=5, extra_horizons=(1, 22))
    return fit_lstm(spec, X[:250], y[:250], X[250:], y[250:])


def _windows() -> pd.DataFrame:
    from models.lstm import seq_columns

    rng = np.random.default_rng(1)
    values = np.abs(rng.normal(0.2, 0.05, size=(16, LOOKBACK * F)))
    return pd.DataFrame(values, columns=seq_columns(LOOKBACK, F))


class FreshLoader:
    """A second interpreter that loads a registered model and predicts, knowing only the
    tracking URI: no checkout on its path, no editable install, no S3 keys, no database URL.

    It starts at once and imports mlflow, pandas, torch, lightning and MLflow's request-header
    plugins (Feast's among them), what loading the model imports anyway (none of the checkout's
    code), while the test sets the registry up;
    :meth:`predict` then hands it the model URI and the input.
    """

    SCRIPT = textwrap.dedent(
        """
        import json, sys, time
        from pathlib import Path
        sys.path = [p for p in sys.path if p not in ("", REPO_ROOT)]
        sys.meta_path = [f for f in sys.meta_path
                         if "__editable__" not in getattr(f, "__module__", "")]
        import lightning, mlflow, mlflow.pyfunc, pandas as pd, torch  # noqa: F401
        from mlflow.models import infer_signature  # noqa: F401
        # loads MLflow's request-header plugins: Feast registers one (importing feast, seconds)
        import mlflow.tracking.request_header.registry  # noqa: F401
        folder = Path(sys.argv[1])
        job = folder / "job.json"
        imported = time.monotonic()
        while not job.exists():
            time.sleep(0.05)
        t0 = time.monotonic()
        uri, name = json.loads(job.read_text())
        model = mlflow.pyfunc.load_model(uri)
        loaded = time.monotonic()
        model.predict(pd.read_parquet(folder / "input.parquet")).to_parquet(
            folder / "output.parquet")
        print(json.dumps({"waited_s": t0 - imported, "load_s": loaded - t0,
                          "predict_s": time.monotonic() - loaded,
                          "tracking": mlflow.get_tracking_uri(),
                          "source": mlflow.MlflowClient().get_model_version_by_alias(
                              name, "champion").source,
                          "pyfunc": sys.modules["models.pyfunc"].__file__}))
        """
    ).replace("REPO_ROOT", repr(str(REPO_ROOT)))

    def __init__(self, tracking: str, folder: Path) -> None:
        self.folder = folder
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"
               and not k.startswith(("AWS_", "MLFLOW_", "AFTERBELL_", "PG"))}
        env["MLFLOW_TRACKING_URI"] = tracking
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(folder)], cwd=folder, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def predict(self, name: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Predictions of ``models:/<name>@champion`` on ``frame``, and what the loader saw."""
        frame.to_parquet(self.folder / "input.parquet")
        (self.folder / "job.tmp").write_text(json.dumps([f"models:/{name}@champion", name]))
        (self.folder / "job.tmp").rename(self.folder / "job.json")
        out, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err[-4000:]
        return pd.read_parquet(self.folder / "output.parquet"), json.loads(
            out.strip().splitlines()[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _database_text(url: str) -> dict[str, str]:
    """Every row of every table of the database, as text, by table."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        return {t: "\n".join(r[0] for r in conn.execute(f'SELECT CAST(x AS text) FROM "{t}" x'))
                for t in tables}


@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Short HTTP retries (a dead server fails fast) and MLflow's global URIs restored after."""
    import mlflow
    from mlflow.tracking import _tracking_service

    previous = _tracking_service.utils._tracking_uri
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID",
                "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]


def test_register_alias_and_load_in_a_fresh_process_on_postgres_and_s3(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tracking_server: TrackingServer,
    s3_server: S3Endpoint,  # noqa: F811 (fixture)
    mlflow_env: None,
) -> None:
    import mlflow

    from models.pyfunc import FORECAST_COLUMN, log_lstm_model

    t0 = time.monotonic()
    loader_dir = tmp_path / "loader"
    loader_dir.mkdir()
    loader = FreshLoader(tracking_server.uri, loader_dir)
    request.addfinalizer(loader.close)
    fitted = _fit_small_lstm()  # while the server starts
    frame = _windows()
    import mlflow.tracking.request_header.registry  # its plugins import feast: now, meanwhile
    t_fit = time.monotonic() - t0
    tracking_server.wait()
    t_up = time.monotonic()
    name = f"garch_lstm_vol_services_{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env({
        "AFTERBELL_HOME": str(tmp_path / "home"),
        "AFTERBELL_PROFILE": "production",
        "AFTERBELL_MLFLOW_URI": tracking_server.uri,
        # a password written into a URL (not used here): masked wherever it is shown
        "AFTERBELL_OPTUNA_STORAGE": f"postgresql+psycopg://bot:{PLANTED_PASSWORD}@db/optuna",
    }).with_(model_name=name)
    assert settings.tracking_uri == tracking_server.uri and settings.tracking_is_server
    assert settings.artifact_location("heavy_training") is None  # the server's: S3
    exp_id = registry.ensure_experiment(settings, "heavy_training")
    experiment = registry.client(settings).get_experiment(exp_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    tags = {"session": "2018-12-31", "feature_service": "garch_lstm_v1"}
    with mlflow.start_run(run_name="services heavy_training") as run:
        mlflow.set_tags({"stage": "heavy_training",
                         **{f"afterbell.{k}": v for k, v in settings.describe().items()}})
        mlflow.log_params({f"spec.{k}": v for k, v in asdict(fitted.spec).items()})
        info = log_lstm_model(fitted, registered_model_name=name, input_example=frame.head(3),
                              tags=tags)
    version = str(info.registered_model_version)
    t_logged = time.monotonic()
    assert registry.promote(settings, version) is None  # first champion: nothing replaced
    champion = registry.alias_version(settings, "champion")
    assert champion is not None and champion.version == version
    assert champion.tags["feature_service"] == "garch_lstm_v1"

    # A fresh interpreter with nothing but the tracking URI.
    predicted, seen = loader.predict(name, frame)
    t_loaded = time.monotonic()
    expected = fitted.predict(frame.to_numpy(np.float32))
    np.testing.assert_allclose(predicted[FORECAST_COLUMN].to_numpy(), expected, rtol=1e-5)
    assert list(predicted.columns) == [FORECAST_COLUMN, "vol_5", "vol_1", "vol_22"]
    assert seen["tracking"] == tracking_server.uri
    assert str(REPO_ROOT) not in seen["pyfunc"]  # the code came with the model
    assert seen["source"].startswith("models:/")

    # The registry lives in PostgreSQL ...
    rows = _database_text(tracking_server.backend)
    assert name in rows["registered_models"] and "champion" in rows["registered_model_aliases"]
    assert run.info.run_id in rows["runs"]
    # ... and the artifacts in the bucket, nowhere on the local disk.
    keys = s3_server.keys(f"{tracking_server.bucket_prefix}/")
    assert any(k.endswith("/MLmodel") for k in keys), keys
    assert any("model_dir" in k for k in keys) and any("/code/pipelines/" in k for k in keys)
    assert not (settings.home / "mlflow" / "artifacts").exists()

    # No secret reached MLflow: not the planted password, not the server's S3 key.
    for secret in (PLANTED_PASSWORD, s3_server.secret_key):
        leaked = [t for t, text in rows.items() if secret in text]
        assert not leaked, f"secret found in tables {leaked}"
    logged = registry.client(settings).get_run(run.info.run_id).data
    assert "***" in logged.tags["afterbell.optuna_storage"]
    assert PLANTED_PASSWORD not in json.dumps({**logged.params, **logged.tags})
    print(f"\nfit {t_fit:.1f} s; mlflow server healthy {tracking_server.started_s:.1f} s after "
          f"launch; log + register {t_logged - t_up:.1f} s; promote + fresh-process load + predict "
          f"{t_loaded - t_logged:.1f} s (its imports done {seen['waited_s']:.1f} s before; "
          f"load {seen['load_s']:.1f} s, predict {seen['predict_s']:.1f} s); "
          f"checks {time.monotonic() - t_loaded:.1f} s; {len(keys)} objects in S3")
