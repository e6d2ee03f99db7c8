"""MLflow packaging of the forecasters as ``pyfunc`` models.

Two wrappers share one layout:

- :class:`GarchLSTMPyfunc` (:func:`log_lstm_model`): the GARCH-LSTM volatility forecaster
  (:class:`~models.lstm.FittedLSTM`); output: ``forecast``, the annualised volatility forecast
  over the model's primary horizon, then ``vol_h`` for every horizon ``h`` of its heads
  (:func:`lstm_forecast_frame`).
- :class:`TransformerPyfunc` (:func:`log_transformer_model`): the PatchTST multi-horizon
  forecaster (:class:`~models.transformer.FittedTransformer`); output: the
  :func:`~models.transformer.prediction_columns` (``prob_up_h, ret_h, vol_h, q10_h, q50_h,
  q90_h`` per horizon ``h``), exactly the frame of :meth:`FittedTransformer.predict`.

Input of both: one row per window, the float columns :func:`~models.lstm.seq_columns` (a
flattened, row-major ``lookback x n_features`` window, oldest session first).

The light stage's GARCH-family fits go the same way (:class:`GarchFamilyPyfunc`,
:func:`log_garch_family`): input ``symbol, session, ret_1``, output every model's latest vol and
forecast per symbol.

A logged model is self-contained: the fitted model's folder (its ``save``) travels as the artifact
``model_dir``; the ``models`` package and the ``pipelines`` package it imports its settings from
travel as ``code_paths`` (so loading needs no checkout and no installed ``afterbell``); the
requirements are pinned to the versions installed at logging time (CPU torch, local tags cut).
The model carries a signature and an input example, and the ``tags`` given to the logging
function (session, training data range, FeatureService name, ...) go on the logged model and on
the registered version.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext

if TYPE_CHECKING:
    from models.garch import GarchFamily
    from models.lstm import FittedLSTM
    from models.transformer import FittedTransformer

__all__ = [
    "CODE_PACKAGES",
    "FORECAST_COLUMN",
    "TORCH_CPU_INDEX",
    "GarchFamilyPyfunc",
    "GarchLSTMPyfunc",
    "TransformerPyfunc",
    "log_garch_family",
    "log_lstm_model",
    "log_transformer_model",
    "lstm_forecast_frame",
    "pinned_requirements",
]

#: Output column of the GARCH-LSTM pyfunc model.
FORECAST_COLUMN = "forecast"
#: Packages of the repository shipped with every model as ``code_paths``.
CODE_PACKAGES: tuple[str, ...] = ("models", "pipelines")
#: Package index of the CPU builds of torch (first line of :func:`pinned_requirements`).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_ARTIFACT_KEY = "model_dir"
_REQUIREMENTS = (
    "torch", "lightning", "mlflow", "pandas", "numpy", "cloudpickle", "arch", "scipy",
)  # fmt: skip


def _input_windows(model_input: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, pd.Index]:
    """The ``cols`` of ``model_input`` as a float32 matrix, and the input's index.

    Raises
    ------
    ValueError
        If some column is missing or a value is not finite.
    """
    frame = pd.DataFrame(model_input)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:10]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 10 else ""
        )
        raise ValueError(f"model input lacks columns: {shown}")
    X = frame[cols].to_numpy(dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError("model input holds non-finite values")
    return X, frame.index


class _Spec(Protocol):
    @property
    def lookback(self) -> int: ...

    @property
    def n_features(self) -> int: ...


class _HasSpec(Protocol):
    @property
    def spec(self) -> _Spec: ...


_Fitted = TypeVar("_Fitted", bound=_HasSpec)


class _WindowPyfunc(PythonModel, Generic[_Fitted]):
    """A pyfunc over flattened input windows (:func:`~models.lstm.seq_columns`) of a fitted
    network saved in ``artifacts["model_dir"]``; subclasses say how to load and predict."""

    def __init__(self) -> None:
        self._fitted: _Fitted | None = None

    def _load(self, path: str) -> _Fitted:
        raise NotImplementedError

    def _forecast(self, X: np.ndarray, index: pd.Index) -> pd.DataFrame:
        raise NotImplementedError

    def load_context(self, context: PythonModelContext) -> None:
        self._fitted = self._load(context.artifacts[_ARTIFACT_KEY])

    @property
    def fitted(self) -> _Fitted:
        if self._fitted is None:
            raise RuntimeError("model not loaded: load_context has not run")
        return self._fitted

    @property
    def columns(self) -> list[str]:
        """Input columns, in order."""
        spec = self.fitted.spec
        from models.lstm import seq_columns

        return seq_columns(spec.lookback, spec.n_features)

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Forecasts of the windows in ``model_input`` (index preserved).

        Raises
        ------
        ValueError
            If some input column is missing or a value is not finite.
        """
        X, index = _input_windows(model_input, self.columns)
        return self._forecast(X, index)


def lstm_forecast_frame(fitted: FittedLSTM, X: np.ndarray, index: pd.Index) -> pd.DataFrame:
    """The GARCH-LSTM's output frame: ``forecast`` (primary horizon), then ``vol_h`` per head."""
    pred = fitted.predict_horizons(X)
    cols = {FORECAST_COLUMN: pred[:, 0]}
    cols.update({f"vol_{h}": pred[:, i] for i, h in enumerate(fitted.spec.horizons)})
    return pd.DataFrame(cols, index=index)


class GarchLSTMPyfunc(_WindowPyfunc["FittedLSTM"]):
    """``pyfunc`` wrapper of the :class:`~models.lstm.FittedLSTM` in ``artifacts["model_dir"]``:
    the columns of :func:`lstm_forecast_frame`."""

    def _load(self, path: str) -> FittedLSTM:
        from models.lstm import FittedLSTM

        return FittedLSTM.load(path)

    def _forecast(self, X: np.ndarray, index: pd.Index) -> pd.DataFrame:
        return lstm_forecast_frame(self.fitted, X, index)


class TransformerPyfunc(_WindowPyfunc["FittedTransformer"]):
    """``pyfunc`` wrapper of the :class:`~models.transformer.FittedTransformer` in
    ``artifacts["model_dir"]``: the columns of :meth:`FittedTransformer.predict`."""

    def _load(self, path: str) -> FittedTransformer:
        from models.transformer import FittedTransformer

        return FittedTransformer.load(path)

    def _forecast(self, X: np.ndarray, index: pd.Index) -> pd.DataFrame:
        return self.fitted.predict(X, index=index)


class GarchFamilyPyfunc(PythonModel):
    """``pyfunc`` wrapper of the light stage's :class:`~models.garch.GarchFamily` in
    ``artifacts["model_dir"]``: input ``symbol, session, ret_1`` (each symbol's return history),
    output one row per symbol with every model's latest vol and forecast and the EWMA forecast
    (:meth:`~models.garch.GarchFamily.output_columns`)."""

    def __init__(self) -> None:
        self._family: GarchFamily | None = None

    def load_context(self, context: PythonModelContext) -> None:
        from models.garch import GarchFamily

        self._family = GarchFamily.load(context.artifacts[_ARTIFACT_KEY])

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if self._family is None:
            raise RuntimeError("model not loaded: load_context was not called")
        return self._family.predict(pd.DataFrame(model_input))


def log_garch_family(
    family: GarchFamily,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example: pd.DataFrame,
    tags: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Log the GARCH-family fits as a pyfunc model in the active MLflow run (optionally
    registered); ``input_example`` is a ``symbol, session, ret_1`` frame (the signature is
    inferred from it and from the family's predictions on it)."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_garch_family must be called inside an active MLflow run")
    example = pd.DataFrame(input_example)[["symbol", "session", "ret_1"]].reset_index(drop=True)
    example["symbol"] = example["symbol"].astype(str)
    example["ret_1"] = example["ret_1"].astype("float64")
    return _log_pyfunc(
        GarchFamilyPyfunc(),
        family.save,
        example=example,
        predictions=family.predict(example),
        name=name,
        registered_model_name=registered_model_name,
        tags=tags,
    )


def pinned_requirements() -> list[str]:
    """pip requirements of a logged model: CPU torch and exact versions of what loading needs.

    The first line, ``--extra-index-url`` :data:`TORCH_CPU_INDEX`, makes pip take the CPU build
    of torch: ``torch==X`` (local tag ``+cpu`` cut, so that the pin also matches the installed
    ``X+cpu`` under PEP 440) is satisfied by ``X+cpu`` from that index, which pip prefers to the
    CUDA-dependent wheel of the same version on PyPI. The other lines are ``name==version`` of the
    packages installed at logging time, local tags cut.
    """
    pins = [
        f"{name}=={importlib.metadata.version(name).split('+', 1)[0]}" for name in _REQUIREMENTS
    ]
    return [f"--extra-index-url {TORCH_CPU_INDEX}", *pins]


def _example(input_example: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    missing = [c for c in cols if c not in input_example.columns]
    if missing:
        raise ValueError(f"input_example lacks columns: {missing[:10]}")
    return input_example[cols].astype("float64")


def _stage_code(folder: Path) -> list[str]:
    """Copies of :data:`CODE_PACKAGES` (without bytecode) under ``folder``, for ``code_paths``."""
    root = Path(__file__).resolve().parent.parent
    paths = []
    for package in CODE_PACKAGES:
        target = folder / package
        shutil.copytree(
            root / package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        paths.append(str(target))
    return paths


def _log_pyfunc(
    python_model: PythonModel,
    save: Any,
    *,
    example: pd.DataFrame,
    predictions: pd.DataFrame,
    name: str,
    registered_model_name: str | None,
    tags: Mapping[str, Any] | None,
) -> ModelInfo:
    """Log ``python_model`` with the folder written by ``save(path)`` as its artifact."""
    signature = infer_signature(example, predictions)
    str_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    with tempfile.TemporaryDirectory(prefix="afterbell_pyfunc_") as tmp:
        model_dir = save(Path(tmp) / _ARTIFACT_KEY)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts={_ARTIFACT_KEY: str(model_dir)},
            code_paths=_stage_code(Path(tmp) / "code"),
            signature=signature,
            input_example=example,
            pip_requirements=pinned_requirements(),
            registered_model_name=registered_model_name,
            tags=str_tags or None,
        )
    if registered_model_name is not None and str_tags:
        client = mlflow.MlflowClient()
        version = str(info.registered_model_version)
        for key, value in str_tags.items():
            client.set_model_version_tag(registered_model_name, version, key, value)
    return info


def log_lstm_model(
    fitted: FittedLSTM,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example: pd.DataFrame,
    tags: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Log ``fitted`` as a pyfunc model in the active MLflow run (and optionally register it).

    Parameters
    ----------
    fitted : FittedLSTM
        Model to log.
    name : str
        Name of the logged model within the run.
    registered_model_name : str, optional
        Also create a new version of this registered model.
    input_example : pandas.DataFrame
        A few rows with the :func:`~models.lstm.seq_columns` columns; the signature is inferred
        from it (as doubles) and from the model's predictions on it.
    tags : mapping, optional
        Tags (values turned into strings) of the logged model and of the registered version:
        e.g. ``session``, the training data range, the FeatureService name.

    Returns
    -------
    mlflow.models.model.ModelInfo
        What ``mlflow.pyfunc.log_model`` returns (``model_uri``, ``registered_model_version``, ...).
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_lstm_model must be called inside an active MLflow run")
    spec = fitted.spec
    from models.lstm import seq_columns

    example = _example(input_example, seq_columns(spec.lookback, spec.n_features))
    predictions = lstm_forecast_frame(fitted, example.to_numpy(), example.index)
    return _log_pyfunc(
        GarchLSTMPyfunc(),
        fitted.save,
        example=example,
        predictions=predictions,
        name=name,
        registered_model_name=registered_model_name,
        tags=tags,
    )


def log_transformer_model(
    fitted: FittedTransformer,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example: pd.DataFrame,
    tags: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Log the PatchTST forecaster ``fitted`` as a pyfunc model in the active MLflow run.

    Parameters
    ----------
    fitted : FittedTransformer
        Model to log.
    name : str
        Name of the logged model within the run.
    registered_model_name : str, optional
        Also create a new version of this registered model.
    input_example : pandas.DataFrame
        A few rows with the :func:`~models.lstm.seq_columns` columns of the spec's ``lookback``
        and ``n_features``; the signature is inferred from it (as doubles) and from the model's
        predictions on it (the :func:`~models.transformer.prediction_columns`).
    tags : mapping, optional
        Tags (values turned into strings) of the logged model and of the registered version:
        e.g. ``session``, the training data range, the FeatureService name.

    Returns
    -------
    mlflow.models.model.ModelInfo
        What ``mlflow.pyfunc.log_model`` returns (``model_uri``, ``registered_model_version``, ...).
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_transformer_model must be called inside an active MLflow run")
    spec = fitted.spec
    from models.lstm import seq_columns

    example = _example(input_example, seq_columns(spec.lookback, spec.n_features))
    predictions = fitted.predict(example.to_numpy(), index=example.index)
    return _log_pyfunc(
        TransformerPyfunc(),
        fitted.save,
        example=example,
        predictions=predictions,
        name=name,
        registered_model_name=registered_model_name,
        tags=tags,
    )
