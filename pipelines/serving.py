"""Live serving: a FastAPI app that forecasts volatility from the online feature store.

``GET /predict/{symbol}`` reads the symbol's ``garch_lstm_v2`` online features (Feast, SQLite),
flattens the LSTM window into the wide frame the registered pyfunc expects (``x000``, ``x001``, ...)
and returns the champion model's forecast. ``GET /health`` reports the model and how fresh the
online features are.

The champion is resolved and loaded once, at startup (lifespan). If the registry has no champion
the app still starts: ``/health`` answers ``degraded`` and ``/predict`` 503. Every request error is
answered with a 4xx/503 and a ``detail`` reason, never a 500.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException

from pipelines import feature_store
from pipelines.datasets import window_frame
from pipelines.settings import ALIAS_CHAMPION, Settings

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


@runtime_checkable
class Predictor(Protocol):
    """What the app needs from a model: identity and a batch ``predict``.

    Attributes
    ----------
    name : str
        Registered model name.
    version : str
        Registered model version.
    alias : str
        Alias the version was resolved from (``champion``).
    """

    name: str
    version: str
    alias: str

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Forecasts for the rows of ``frame`` (wide float columns ``x000``, ``x001``, ...).

        Parameters
        ----------
        frame : pandas.DataFrame
            One row per window.

        Returns
        -------
        numpy.ndarray
            One annualised volatility forecast per row.
        """
        ...


class MlflowPredictor:
    """Predictor backed by an MLflow pyfunc model of the registry.

    Parameters
    ----------
    name : str
        Registered model name.
    version : str
        Registered model version.
    alias : str
        Alias ``version`` was resolved from.
    model : Any
        The loaded ``mlflow.pyfunc.PyFuncModel``.
    """

    def __init__(self, name: str, version: str, alias: str, model: Any) -> None:
        self.name = name
        self.version = version
        self.alias = alias
        self._model = model

    @classmethod
    def from_registry(cls, settings: Settings, alias: str = ALIAS_CHAMPION) -> MlflowPredictor:
        """Resolve ``alias`` of ``settings.model_name`` and load that version.

        The alias is resolved once (``MlflowClient.get_model_version_by_alias``) and the model is
        loaded as ``models:/{name}/{version}`` (the version ``models:/{name}@{alias}`` pointed to),
        so the reported version is the one served even if the alias moves meanwhile.

        Parameters
        ----------
        settings : Settings
            ``tracking_uri`` and ``model_name``.
        alias : str, default "champion"
            Registry alias.

        Returns
        -------
        MlflowPredictor

        Raises
        ------
        mlflow.exceptions.MlflowException
            If the model or the alias does not exist.
        ValueError
            If the version was trained on other window columns than the feature tables hold, or
            more than ``max_champion_age`` sessions (``[validation]``) before
            ``settings.default_session``, the session being served.
        """
        import mlflow
        from mlflow import MlflowClient

        from pipelines.stages import stale_champion, window_mismatch

        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.tracking_uri)  # models:/ URIs resolve in the registry
        client = MlflowClient(tracking_uri=settings.tracking_uri,
                              registry_uri=settings.tracking_uri)
        mv = client.get_model_version_by_alias(settings.model_name, alias)
        mismatch = window_mismatch(mv)
        if mismatch is not None:
            raise ValueError(f"{alias} {mismatch}")
        stale = stale_champion(mv, settings.default_session)
        if stale is not None:
            raise ValueError(f"{alias} {stale}")
        model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{mv.version}")
        return cls(settings.model_name, str(mv.version), alias, model)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Run the pyfunc and return its ``forecast`` column as floats.

        Parameters
        ----------
        frame : pandas.DataFrame
            Wide float columns ``x000``, ``x001``, ...

        Returns
        -------
        numpy.ndarray
            ``float64`` forecasts, one per row.
        """
        out = self._model.predict(frame)
        if isinstance(out, pd.DataFrame):
            out = out["forecast"] if "forecast" in out.columns else out.iloc[:, 0]
        return np.asarray(out, dtype=np.float64).reshape(-1)


class _Runtime:
    """Per-app state: the predictor (or why there is none) and the open feature store."""

    def __init__(self, settings: Settings, predictor: Predictor | None) -> None:
        self.settings = settings
        self.predictor = predictor
        self.model_error: str | None = None
        self.store: FeatureStore | None = None
        self.store_error: str | None = None
        self._load_model = predictor is None
        self._loaded = False
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the champion (unless injected) and open the feature store, once."""
        with self._lock:
            if self._loaded:
                return
            if self._load_model:
                try:
                    self.predictor = MlflowPredictor.from_registry(self.settings)
                    log.info(
                        "serving %s version %s (@%s)",
                        self.predictor.name,
                        self.predictor.version,
                        self.predictor.alias,
                    )
                except Exception as exc:
                    self.model_error = (
                        f"no {ALIAS_CHAMPION} model for {self.settings.model_name}: "
                        f"{type(exc).__name__}: {_first_line(exc)}"
                    )
                    log.warning("%s", self.model_error)
            try:
                self.store = feature_store.get_store(self.settings)
            except Exception as exc:
                self.store_error = f"feature store unavailable: {type(exc).__name__}: {exc}"
                log.warning("%s", self.store_error)
            self._loaded = True

    def online(
        self, symbols: list[str], features: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Online rows of ``symbols``; raises :class:`HTTPException` 503 if the store fails."""
        self.load()
        if self.store is None:
            raise HTTPException(503, detail=self.store_error or "feature store unavailable")
        try:
            with self._lock:
                return feature_store.online_features(
                    self.settings, symbols, features=features, store=self.store
                )
        except Exception as exc:
            detail = f"feature store unavailable: {type(exc).__name__}: {_first_line(exc)}"
            raise HTTPException(503, detail=detail) from exc


def create_app(settings: Settings, predictor: Predictor | None = None) -> FastAPI:
    """Build the serving app.

    Parameters
    ----------
    settings : Settings
        Universe, horizon, feature store home and MLflow tracking URI.
    predictor : Predictor, optional
        Model to serve; by default the ``champion`` of ``settings.model_name`` is loaded from the
        MLflow registry at startup.

    Returns
    -------
    fastapi.FastAPI
        App with ``GET /health`` and ``GET /predict/{symbol}``.
    """
    runtime = _Runtime(settings, predictor)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.load()
        yield

    app = FastAPI(
        title="afterbell volatility forecaster",
        summary="Forecasts of annualised volatility from the afterbell feature store.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Model identity and freshness of the online features."""
        runtime.load()
        reasons: list[str] = []
        if runtime.predictor is None:
            reasons.append(runtime.model_error or f"no {ALIAS_CHAMPION} model")
        features: dict[str, Any] = {
            "latest_asof": None,
            "age_seconds": None,
            "available": 0,
            "missing": list(settings.universe),
        }
        try:
            rows = runtime.online(list(settings.universe), ["lstm_window:asof"])
        except HTTPException as exc:
            reasons.append(str(exc.detail))
        else:
            asofs = {s: r["asof"] for s, r in rows.items() if r.get("asof") is not None}
            features["available"] = len(asofs)
            features["missing"] = [s for s in settings.universe if s not in asofs]
            if asofs:
                latest = datetime.fromtimestamp(max(asofs.values()), tz=UTC)
                features["latest_asof"] = latest.isoformat()
                # Reported only: nothing in the app decides on wall-clock time.
                features["age_seconds"] = round((datetime.now(UTC) - latest).total_seconds(), 1)
            else:
                reasons.append("no online features (materialise the feature store)")
        return {
            "status": "degraded" if reasons else "ok",
            "reason": "; ".join(reasons) or None,
            "model": _model_info(runtime.predictor),
            "features": features,
            "symbols": len(settings.universe),
        }

    @app.get("/predict/{symbol}")
    def predict(symbol: str) -> dict[str, Any]:
        """Volatility forecast of ``symbol`` from its latest online features."""
        sym = symbol.strip().upper()
        if sym not in settings.universe:
            raise HTTPException(
                404,
                detail=(
                    f"unknown symbol {sym}: not in the universe ({', '.join(settings.universe)})"
                ),
            )
        runtime.load()
        model = runtime.predictor
        if model is None:
            raise HTTPException(503, detail=runtime.model_error or f"no {ALIAS_CHAMPION} model")
        row = runtime.online([sym]).get(sym, {})
        seq, asof = row.get("seq"), row.get("asof")
        if seq is None or asof is None:
            raise HTTPException(404, detail=f"no online features for {sym}")
        values = np.asarray(seq, dtype=np.float64)
        if values.size == 0 or not np.isfinite(values).all():
            raise HTTPException(
                404, detail=f"no usable online features for {sym}: the window has missing values"
            )
        frame = window_frame(np.asarray(values, dtype=np.float64).reshape(1, -1))
        try:
            out = np.asarray(model.predict(frame), dtype=np.float64).reshape(-1)
        except Exception as exc:
            log.exception("prediction failed for %s", sym)
            raise HTTPException(
                503, detail=f"prediction failed: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        if out.size != 1 or not math.isfinite(out[0]):
            raise HTTPException(503, detail=f"model returned no finite forecast for {sym}")
        return {
            "symbol": sym,
            "forecast": float(out[0]),
            "horizon": settings.horizon,
            "model": _model_info(model),
            "feature_timestamp": datetime.fromtimestamp(int(asof), tz=UTC).isoformat(),
        }

    return app


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the app with uvicorn until interrupted.

    Parameters
    ----------
    settings : Settings
        Installation settings.
    host, port : str, int, optional
        Bind address (default ``settings.serve_host`` / ``settings.serve_port``).
    """
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=host or settings.serve_host,
        port=port or settings.serve_port,
        log_level="warning",
        access_log=False,
    )


def _model_info(predictor: Predictor | None) -> dict[str, str] | None:
    if predictor is None:
        return None
    return {"name": predictor.name, "version": str(predictor.version), "alias": predictor.alias}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
