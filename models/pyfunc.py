"""MLflow packaging of the GARCH-LSTM as a ``pyfunc`` model.

The logged model is self-contained: the :class:`~models.lstm.FittedLSTM` folder travels as the
artifact ``model_dir``, the ``models`` package travels as ``code_paths`` (so loading needs no
checkout), and the requirements are pinned to the versions installed at logging time.

Input: one row per window, the float columns :func:`~models.lstm.seq_columns` (a flattened,
row-major ``lookback x len(WINDOW_COLUMNS)`` window, oldest session first). Output: a frame with the
single column ``forecast``, the annualised volatility forecast over the model's horizon.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext

from models.lstm import FittedLSTM, seq_columns

__all__ = ["FORECAST_COLUMN", "GarchLSTMPyfunc", "log_lstm_model", "pinned_requirements"]

#: Output column of the pyfunc model.
FORECAST_COLUMN = "forecast"
_ARTIFACT_KEY = "model_dir"
_REQUIREMENTS = ("torch", "lightning", "mlflow", "pandas", "numpy", "cloudpickle")


class GarchLSTMPyfunc(PythonModel):
    """``pyfunc`` wrapper of the :class:`~models.lstm.FittedLSTM` in ``artifacts["model_dir"]``."""

    def __init__(self) -> None:
        self._fitted: FittedLSTM | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self._fitted = FittedLSTM.load(context.artifacts[_ARTIFACT_KEY])

    @property
    def fitted(self) -> FittedLSTM:
        if self._fitted is None:
            raise RuntimeError("model not loaded: load_context has not run")
        return self._fitted

    @property
    def columns(self) -> list[str]:
        """Input columns, in order."""
        spec = self.fitted.spec
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
        frame = pd.DataFrame(model_input)
        cols = self.columns
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            shown = ", ".join(missing[:10]) + (
                f", ... ({len(missing)} in all)" if len(missing) > 10 else ""
            )
            raise ValueError(f"model input lacks columns: {shown}")
        X = frame[cols].to_numpy(dtype=np.float32)
        if not np.isfinite(X).all():
            raise ValueError("model input holds non-finite values")
        return pd.DataFrame({FORECAST_COLUMN: self.fitted.predict(X)}, index=frame.index)


def pinned_requirements() -> list[str]:
    """``name==version`` of the packages the model needs at load time, local tags (``+cpu``) cut."""
    return [
        f"{name}=={importlib.metadata.version(name).split('+', 1)[0]}" for name in _REQUIREMENTS
    ]


def log_lstm_model(
    fitted: FittedLSTM,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example: pd.DataFrame,
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

    Returns
    -------
    mlflow.models.model.ModelInfo
        What ``mlflow.pyfunc.log_model`` returns (``model_uri``, ``registered_model_version``, ...).
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_lstm_model must be called inside an active MLflow run")
    spec = fitted.spec
    cols = seq_columns(spec.lookback, spec.n_features)
    missing = [c for c in cols if c not in input_example.columns]
    if missing:
        raise ValueError(f"input_example lacks columns: {missing[:10]}")
    example = input_example[cols].astype("float64")
    predictions = pd.DataFrame(
        {FORECAST_COLUMN: fitted.predict(example.to_numpy())}, index=example.index
    )
    signature = infer_signature(example, predictions)
    package_dir = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="garch_lstm_pyfunc_") as tmp:
        model_dir = fitted.save(Path(tmp) / _ARTIFACT_KEY)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=GarchLSTMPyfunc(),
            artifacts={_ARTIFACT_KEY: str(model_dir)},
            code_paths=[str(package_dir)],
            signature=signature,
            input_example=example,
            pip_requirements=pinned_requirements(),
            registered_model_name=registered_model_name,
        )
