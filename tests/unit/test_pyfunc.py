"""MLflow packaging: log, register, and reload the GARCH-LSTM in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import _tracking_service

from models.lstm import FittedLSTM, LSTMSpec, fit_lstm, seq_columns
from models.pyfunc import GarchLSTMPyfunc, log_lstm_model, pinned_requirements
from pipelines.settings import REPO_ROOT

LOOKBACK, F = 6, 5
MODEL_NAME = "garch_lstm_vol_test"


@pytest.fixture(scope="module")
def fitted() -> FittedLSTM:
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(0.2, 0.05, size=(600, LOOKBACK, F))).astype(np.float32)
    y = X[:, -1, 3] * np.exp(rng.normal(0, 0.1, 600))
    spec = LSTMSpec(lookback=LOOKBACK, hidden=8, batch_size=128, max_epochs=2, seed=3)
    return fit_lstm(spec, X[:500], y[:500], X[500:], y[500:])


@pytest.fixture()
def frame(fitted: FittedLSTM) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    values = np.abs(rng.normal(0.2, 0.05, size=(32, LOOKBACK * F)))
    return pd.DataFrame(values, columns=seq_columns(LOOKBACK, F))


@pytest.fixture()
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private SQLite tracking store; the process-wide MLflow URI is restored afterwards."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = _tracking_service.utils._tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]


def test_requirements_are_pinned_without_local_tags() -> None:
    reqs = pinned_requirements()
    names = [r.split("==")[0] for r in reqs]
    assert {"torch", "mlflow", "lightning", "pandas", "numpy"} <= set(names)
    assert all("==" in r and "+" not in r and "#" not in r for r in reqs)


def test_log_requires_active_run(fitted: FittedLSTM, frame: pd.DataFrame, tracking: str) -> None:
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_lstm_model(fitted, input_example=frame.head(2))


@pytest.mark.slow  # ~25 s: a second interpreter imports mlflow, torch and lightning
def test_log_register_and_load_in_fresh_process(
    tmp_path: Path, fitted: FittedLSTM, frame: pd.DataFrame, tracking: str
) -> None:
    client = mlflow.MlflowClient(tracking)
    exp_id = client.create_experiment("pyfunc-test", artifact_location=tmp_path.as_uri())
    with mlflow.start_run(experiment_id=exp_id):
        info = log_lstm_model(fitted, registered_model_name=MODEL_NAME, input_example=frame.head(3))
    assert info.registered_model_version == 1
    assert info.signature is not None
    assert info.signature.outputs.input_names() == ["forecast"]
    assert info.signature.inputs.input_names() == seq_columns(LOOKBACK, F)

    expected = fitted.predict(frame.to_numpy())
    in_process = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1").predict(frame)
    assert list(in_process.columns) == ["forecast"]
    np.testing.assert_allclose(in_process["forecast"].to_numpy(), expected, atol=1e-6)

    frame.to_parquet(tmp_path / "input.parquet")
    script = textwrap.dedent(
        f"""
        import json, sys
        import mlflow, pandas as pd
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        model = mlflow.pyfunc.load_model("models:/{MODEL_NAME}/1")
        out = model.predict(pd.read_parquet({str(tmp_path / "input.parquet")!r}))
        import models.lstm
        print(json.dumps({{"forecast": out["forecast"].tolist(),
                          "models_from": models.lstm.__file__}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = tracking
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["forecast"], in_process["forecast"].to_numpy(), atol=1e-6)
    # The code came with the model (code_paths), not from the checkout.
    assert not Path(result["models_from"]).resolve().is_relative_to(REPO_ROOT), result


def test_predict_names_missing_columns(
    tmp_path: Path, fitted: FittedLSTM, frame: pd.DataFrame
) -> None:
    model = GarchLSTMPyfunc()
    context = mlflow.pyfunc.PythonModelContext(
        artifacts={"model_dir": str(fitted.save(tmp_path / "m"))}, model_config={}
    )
    model.load_context(context)
    out = model.predict(context, frame)
    np.testing.assert_allclose(out["forecast"], fitted.predict(frame.to_numpy()), atol=1e-6)
    with pytest.raises(ValueError, match="x003"):
        model.predict(context, frame.drop(columns=["x003"]))
