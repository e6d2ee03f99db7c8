"""MLflow packaging: log, register with an alias, and reload each forecaster in a fresh process.

The fresh-process checks load ``models:/<name>@<alias>`` in a second interpreter that can see
neither the checkout (removed from ``sys.path``) nor the editable install of ``afterbell`` (its
import finder removed), so the ``models`` and ``pipelines`` code must come with the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models.model import ModelInfo
from mlflow.tracking import _tracking_service

from models.garch import GarchFamily, GarchSpec, fit_garch
from models.lstm import FittedLSTM, LSTMSpec, fit_lstm, seq_columns
from models.pyfunc import (
    TORCH_CPU_INDEX,
    GarchLSTMPyfunc,
    TransformerPyfunc,
    log_garch_family,
    log_lstm_model,
    log_transformer_model,
    pinned_requirements,
)
from models.transformer import (
    FittedTransformer,
    TransformerDataModule,
    TransformerSpec,
    fit_transformer,
    prediction_columns,
)
from pipelines.settings import REPO_ROOT

LOOKBACK, F = 6, 5
T_LOOKBACK = 8
LSTM_NAME = "garch_lstm_vol_test"
TRANSFORMER_NAME = "patchtst_test"
GARCH_NAME = "garch_family_test"
ALIAS = "champion"
TAGS = {
    "session": "2024-03-28",
    "train_range": "2019-01-02..2023-12-29",
    "feature_service": "window_features_v1",
}


@pytest.fixture(scope="module")
def fitted() -> FittedLSTM:
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(0.2, 0.05, size=(600, LOOKBACK, F))).astype(np.float32)
    base = X[:, -1, 3] * np.exp(rng.normal(0, 0.1, 600))
    y = np.column_stack([base, 0.8 * base, 1.1 * base])  # heads: 5 (primary), 1 and 22 sessions
    spec = LSTMSpec(lookback=LOOKBACK, hidden=8, batch_size=128, max_epochs=2, seed=3,
                    n_features=F, horizon=5, extra_horizons=(1, 22))
    return fit_lstm(spec, X[:500], y[:500], X[500:], y[500:])


@pytest.fixture(scope="module")
def fitted_transformer() -> FittedTransformer:
    rng = np.random.default_rng(5)
    X = rng.normal(0.0, 1.0, size=(320, T_LOOKBACK, F)).astype(np.float32)
    y = (0.01 * X[:, -1, :3] + rng.normal(0, 0.01, size=(320, 3))).astype(np.float32)
    spec = TransformerSpec(
        lookback=T_LOOKBACK, patch_len=4, stride=2, d_model=8, n_heads=2, n_layers=1, d_ff=16,
        n_features=F, batch_size=64, max_epochs=2, patience=2, seed=11,
    )
    data = TransformerDataModule(
        {"train": (X[:256], y[:256]), "valid": (X[256:], y[256:])},
        batch_size=spec.batch_size,
        seed=spec.seed,
    )
    return fit_transformer(spec, data, accelerator="cpu")


def _garch_returns() -> pd.DataFrame:
    """About 400 real daily log returns of SPX and AAPL (replay source), long format."""
    from pipelines import calendar
    from pipelines.sources import ReplaySource

    sessions = calendar.previous_sessions(pd.Timestamp("2018-12-31").date(), 401)
    bars = ReplaySource(("SPX", "AAPL")).bars(sessions).sort_values(["symbol", "session"])
    bars["ret_1"] = np.log(bars["adj_close"]).groupby(bars["symbol"]).diff()
    return bars.dropna(subset=["ret_1"])[["symbol", "session", "ret_1"]].reset_index(drop=True)


@pytest.fixture(scope="module")
def garch_family() -> GarchFamily:
    rets = _garch_returns()
    specs = {"garch": GarchSpec(horizon=5), "egarch": GarchSpec(vol="EGARCH", horizon=5)}
    return GarchFamily({
        model: {str(sym): fit_garch(g.set_index("session")["ret_1"], spec)
                for sym, g in rets.groupby("symbol")}
        for model, spec in specs.items()
    })


def _lstm_frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    values = np.abs(rng.normal(0.2, 0.05, size=(32, LOOKBACK * F)))
    return pd.DataFrame(values, columns=seq_columns(LOOKBACK, F))


def _transformer_frame() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    values = rng.normal(0.0, 1.0, size=(40, T_LOOKBACK * F))
    index = pd.RangeIndex(100, 140, name="window")
    return pd.DataFrame(values, columns=seq_columns(T_LOOKBACK, F), index=index)


@pytest.fixture()
def frame() -> pd.DataFrame:
    return _lstm_frame()


@pytest.fixture()
def t_frame() -> pd.DataFrame:
    return _transformer_frame()


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


@dataclass
class Logged:
    """Both forecasters logged, registered and aliased in one private store, and what a fresh
    interpreter predicted with ``models:/<name>@<alias>`` (one interpreter for both: the imports
    of mlflow, torch and lightning dominate the cost)."""

    tracking: str
    root: Path
    infos: dict[str, ModelInfo]
    inputs: dict[str, pd.DataFrame]
    expected: dict[str, pd.DataFrame]
    loaded: dict[str, pd.DataFrame]
    origins: dict[str, list[str]]


@pytest.fixture(scope="module")
def logged(
    tmp_path_factory: pytest.TempPathFactory,
    fitted: FittedLSTM,
    fitted_transformer: FittedTransformer,
    garch_family: GarchFamily,
) -> Iterator[Logged]:
    root = tmp_path_factory.mktemp("pyfunc_registry")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = _tracking_service.utils._tracking_uri
    frames = {LSTM_NAME: _lstm_frame(), TRANSFORMER_NAME: _transformer_frame(),
              GARCH_NAME: _garch_returns()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            client = mlflow.MlflowClient(uri)
            exp_id = client.create_experiment(
                "pyfunc-test", artifact_location=(root / "artifacts").as_uri()
            )
            infos = {}
            with mlflow.start_run(experiment_id=exp_id):
                infos[LSTM_NAME] = log_lstm_model(
                    fitted, registered_model_name=LSTM_NAME,
                    input_example=frames[LSTM_NAME].head(3), tags=TAGS,
                )
            with mlflow.start_run(experiment_id=exp_id):
                infos[TRANSFORMER_NAME] = log_transformer_model(
                    fitted_transformer, registered_model_name=TRANSFORMER_NAME,
                    input_example=frames[TRANSFORMER_NAME].head(3), tags=TAGS,
                )
            with mlflow.start_run(experiment_id=exp_id):
                infos[GARCH_NAME] = log_garch_family(
                    garch_family, registered_model_name=GARCH_NAME,
                    input_example=frames[GARCH_NAME].tail(150), tags=TAGS,
                )
            for name, info in infos.items():
                client.set_registered_model_alias(name, ALIAS, str(info.registered_model_version))
            # What the training process predicts.
            lstm_in = frames[LSTM_NAME]
            expected = {
                LSTM_NAME: pd.DataFrame(
                    {"forecast": fitted.predict(lstm_in.to_numpy()),
                     **{f"vol_{h}": col for h, col in zip(
                         fitted.spec.horizons, fitted.predict_horizons(lstm_in.to_numpy()).T,
                         strict=True)}},
                    index=lstm_in.index,
                ),
                TRANSFORMER_NAME: fitted_transformer.predict(
                    frames[TRANSFORMER_NAME].to_numpy(), index=frames[TRANSFORMER_NAME].index
                ),
                GARCH_NAME: garch_family.predict(frames[GARCH_NAME]),
            }
            loaded, origins = _load_in_fresh_process(uri, frames, root)
            yield Logged(uri, root, infos, frames, expected, loaded, origins)
        finally:
            mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]


def _load_in_fresh_process(
    tracking: str, frames: dict[str, pd.DataFrame], folder: Path
) -> tuple[dict[str, pd.DataFrame], dict[str, list[str]]]:
    """Predictions of ``models:/<name>@<alias>`` on ``frames[name]`` by a second interpreter.

    Returns the predictions and, per model, the files of ``models.pyfunc`` and
    ``pipelines.settings`` that the interpreter imported for it.
    """
    jobs = []
    for i, (name, frame) in enumerate(frames.items()):
        frame.to_parquet(folder / f"input_{i}.parquet")
        jobs.append((name, f"models:/{name}@{ALIAS}", str(folder / f"input_{i}.parquet"),
                     str(folder / f"output_{i}.parquet")))
    script = textwrap.dedent(
        f"""
        import json, sys
        # No checkout and no editable install: the code must come with the model.
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        sys.meta_path = [f for f in sys.meta_path
                         if "__editable__" not in getattr(f, "__module__", "")]
        import mlflow, pandas as pd
        origins = {{}}
        for name, uri, src, dst in {jobs!r}:
            # Each model imports the code it came with, not the previous model's.
            for mod in [m for m in sys.modules if m.split(".")[0] in ("models", "pipelines")]:
                del sys.modules[mod]
            model = mlflow.pyfunc.load_model(uri)
            model.predict(pd.read_parquet(src)).to_parquet(dst)
            # pipelines.settings: where the model's code imports it (not the GARCH family's)
            origins[name] = [sys.modules[m].__file__
                             for m in ("models.pyfunc", "pipelines.settings")
                             if m in sys.modules]
        print(json.dumps(origins))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = tracking
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    origins = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = {name: pd.read_parquet(dst) for name, _, _, dst in jobs}
    return loaded, origins


def _requirements(model_uri: str) -> list[str]:
    path = mlflow.pyfunc.get_model_dependencies(model_uri)
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def test_requirements_are_pinned_with_cpu_torch() -> None:
    reqs = pinned_requirements()
    assert reqs[0] == f"--extra-index-url {TORCH_CPU_INDEX}"
    pins = reqs[1:]
    names = [r.split("==")[0] for r in pins]
    assert {"torch", "mlflow", "lightning", "pandas", "numpy"} <= set(names)
    assert all("==" in r and "+" not in r and "#" not in r for r in pins)
    # The pin without the local tag still matches the installed CPU build (PEP 440).
    from packaging.requirements import Requirement

    torch_pin = Requirement(next(r for r in pins if r.startswith("torch==")))
    assert torch_pin.specifier.contains(torch.__version__)


def test_log_requires_active_run(
    fitted: FittedLSTM,
    fitted_transformer: FittedTransformer,
    frame: pd.DataFrame,
    t_frame: pd.DataFrame,
    tracking: str,
) -> None:
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_lstm_model(fitted, input_example=frame.head(2))
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_transformer_model(fitted_transformer, input_example=t_frame.head(2))


@pytest.mark.slow  # the module fixture starts a second interpreter (mlflow, torch, lightning)
@pytest.mark.parametrize("name", [LSTM_NAME, TRANSFORMER_NAME, GARCH_NAME])
def test_alias_loaded_in_fresh_process_reproduces_training_predictions(
    logged: Logged, name: str
) -> None:
    expected, loaded = logged.expected[name], logged.loaded[name]
    assert list(loaded.columns) == list(expected.columns)
    assert loaded.index.equals(expected.index)
    if name == GARCH_NAME:  # keys, then numbers
        keys = ["symbol", "session"]
        pd.testing.assert_frame_equal(loaded[keys], expected[keys], check_dtype=False)
        loaded, expected = loaded.drop(columns=keys), expected.drop(columns=keys)
    np.testing.assert_allclose(loaded.to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-7)
    # The code came with this model (code_paths), not from the checkout or the install.
    for file in logged.origins[name]:
        path = Path(file).resolve()
        assert not path.is_relative_to(REPO_ROOT), logged.origins
        assert "code" in path.parts, logged.origins
    others = [files for other, files in logged.origins.items() if other != name]
    assert others and all(files[0] != logged.origins[name][0] for files in others)


@pytest.mark.slow
@pytest.mark.parametrize("name", [LSTM_NAME, TRANSFORMER_NAME])
def test_registered_version_has_signature_example_tags_and_cpu_torch(
    logged: Logged, name: str
) -> None:
    info = logged.infos[name]
    assert info.registered_model_version == 1
    lookback = LOOKBACK if name == LSTM_NAME else T_LOOKBACK
    assert info.signature is not None
    assert info.signature.inputs.input_names() == seq_columns(lookback, F)
    assert info.signature.outputs.input_names() == list(logged.expected[name].columns)
    client = mlflow.MlflowClient(logged.tracking)
    assert TAGS.items() <= client.get_model_version(name, "1").tags.items()
    assert TAGS.items() <= client.get_logged_model(info.model_id).tags.items()

    uri = f"models:/{name}@{ALIAS}"
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(logged.root / f"dl_{name}"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    pd.testing.assert_frame_equal(
        pd.DataFrame(example).reset_index(drop=True),
        logged.inputs[name].head(3).reset_index(drop=True),
        check_exact=True,
    )
    reqs = _requirements(uri)
    assert reqs[0] == f"--extra-index-url {TORCH_CPU_INDEX}", reqs
    assert f"torch=={torch.__version__.split('+', 1)[0]}" in reqs, reqs
    assert f"mlflow=={mlflow.__version__}" in reqs, reqs


def test_lstm_predict_names_missing_columns(
    tmp_path: Path, fitted: FittedLSTM, frame: pd.DataFrame
) -> None:
    model = GarchLSTMPyfunc()
    context = mlflow.pyfunc.PythonModelContext(
        artifacts={"model_dir": str(fitted.save(tmp_path / "m"))}, model_config={}
    )
    model.load_context(context)
    out = model.predict(context, frame)
    assert list(out.columns) == ["forecast", "vol_5", "vol_1", "vol_22"]
    np.testing.assert_allclose(out["forecast"], fitted.predict(frame.to_numpy()), atol=1e-6)
    np.testing.assert_allclose(out[["vol_5", "vol_1", "vol_22"]],
                               fitted.predict_horizons(frame.to_numpy()), atol=1e-6)
    with pytest.raises(ValueError, match="x003"):
        model.predict(context, frame.drop(columns=["x003"]))


def test_transformer_pyfunc_matches_fitted_and_checks_input(
    tmp_path: Path, fitted_transformer: FittedTransformer, t_frame: pd.DataFrame
) -> None:
    model = TransformerPyfunc()
    with pytest.raises(RuntimeError, match="not loaded"):
        _ = model.columns
    context = mlflow.pyfunc.PythonModelContext(
        artifacts={"model_dir": str(fitted_transformer.save(tmp_path / "m"))}, model_config={}
    )
    model.load_context(context)
    # Columns in another order are picked by name; the index is kept.
    shuffled = t_frame[t_frame.columns[::-1]]
    out = model.predict(context, shuffled)
    expected = fitted_transformer.predict(t_frame.to_numpy(), index=t_frame.index)
    pd.testing.assert_frame_equal(out, expected)
    assert list(out.columns) == prediction_columns(fitted_transformer.spec)
    assert list(out.columns[:6]) == ["prob_up_1", "ret_1", "vol_1", "q10_1", "q50_1", "q90_1"]
    with pytest.raises(ValueError, match="x007"):
        model.predict(context, t_frame.drop(columns=["x007"]))
    bad = t_frame.copy()
    bad.iloc[3, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        model.predict(context, bad)


def test_garch_family_output_and_errors(garch_family: GarchFamily, tmp_path: Path) -> None:
    rets = _garch_returns()
    out = garch_family.predict(rets)
    assert list(out.columns) == ["symbol", "session", "garch_vol", "garch_forecast",
                                 "egarch_vol", "egarch_forecast", "ewma_forecast"]
    assert list(out["symbol"]) == ["AAPL", "SPX"]
    assert (out["session"] == pd.Timestamp("2018-12-31")).all()
    values = out.drop(columns=["symbol", "session"]).to_numpy()
    assert np.isfinite(values).all() and (values > 0.02).all() and (values < 2.0).all()
    loaded = GarchFamily.load(garch_family.save(tmp_path / "fam"))
    pd.testing.assert_frame_equal(loaded.predict(rets), out)
    with pytest.raises(ValueError, match="MSFT"):
        garch_family.predict(rets.assign(symbol="MSFT"))
    with pytest.raises(ValueError, match="ret_1"):
        garch_family.predict(rets.drop(columns=["ret_1"]))
