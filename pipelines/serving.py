"""Live serving: a FastAPI app that forecasts volatility from the online feature store.

Routes::

    GET  /predict/{symbol}   one symbol's forecast
    POST /predict            {"symbols": ["AAPL", "SPX"]}: a batch, one online-store read
    GET  /health             model served, champion polling, registry, feature freshness
    GET  /metrics            Prometheus text: requests, latency, model version, reloads

The model is the ``champion`` of ``settings.model_name``: resolved and loaded at startup
(lifespan), then followed. A background thread resolves the alias every
``settings.serve_poll_seconds``; when it moves, the new version is checked (window columns,
``max_champion_age`` up to ``settings.default_session``, its ``feature_service`` tag, the width of
its input against the online windows), loaded off the request path and swapped in with one
attribute assignment of an immutable :class:`Served`, which each request reads once. A refused
or failing version is recorded (``/health``) and the last good model keeps serving; so it does
while the registry is unreachable.

Features are read through the served version's feature service (its ``lstm_window`` projection:
the window ``seq`` and its ``asof``), one online-store call per request (a batch included). A row
is stale when its ``asof`` is before the close of the session before ``settings.default_session``
(the session served): nothing here decides on the wall clock, which is only reported.

Errors: bad input is a 4xx with a ``detail`` reason (unknown symbol 404; bad batch 422; missing
or bad bearer token 401); a missing or stale feature, no model, a store or model failure is a 503
that names it. An unexpected exception anywhere in a handler is answered 503, never 500.
"""

from __future__ import annotations

import bisect
import hmac
import json
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
)
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from starlette.requests import Request
from starlette.routing import Route

from pipelines import calendar, feature_store
from pipelines.datasets import window_frame
from pipelines.registry import ModelRef
from pipelines.settings import ALIAS_CHAMPION, Settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from prometheus_client import CollectorRegistry

__all__ = [
    "MlflowPredictor",
    "ModelRef",
    "Predictor",
    "Served",
    "create_app",
    "expected_asof",
    "mlflow_loader",
    "mlflow_resolver",
    "serve",
    "window_frame",
]

log = logging.getLogger(__name__)

#: Feature view holding the model input, and the features of it the app reads.
WINDOW_VIEW = "lstm_window"
SEQ_FEATURE = "seq"
ASOF_FEATURE = "asof"
#: HTTP methods counted by name in the metrics (any other is counted as ``OTHER``).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Routes answered without a bearer token (monitoring probes).
OPEN_PATHS = frozenset({"/health", "/metrics"})
#: Latency histogram buckets (seconds): fine below a millisecond, up to a second.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
#: Intra-op threads of torch in a process that serves a torch model.
TORCH_THREADS = 1
#: Seconds before a refused champion version (same tags) is checked again, and the longest
#: wait between two attempts to load a version that failed to load (the wait doubles from the
#: poll period): loading competes with serving for the CPU.
RECHECK_SECONDS = 300.0
#: MLflow error codes meaning "no such model or alias" (the registry answered).
_NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


@runtime_checkable
class Predictor(Protocol):
    """What the app needs from a model: identity and a batch ``predict``.

    A predictor may also have an ``input_width`` attribute (int): the number of window values
    it reads. When it does, a version whose width differs from the online windows is refused.
    One with a ``predict_array(windows) -> ndarray`` method is given the windows as an array
    ``(N, width)`` instead of a frame (it must return the same forecasts as ``predict``).

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


#: Resolves the served alias: the version it points to, or None when there is none (the
#: registry answered). Raises when the registry cannot be reached.
Resolve = Callable[[], ModelRef | None]
#: Loads one version (slow: off the request path).
Load = Callable[[ModelRef], Predictor]


class MlflowPredictor:
    """Predictor backed by an MLflow pyfunc model of the registry.

    The pyfunc's ``predict`` checks its input against the signature on every call (about 3 ms
    for a 140-column window, more than the whole latency budget). The app has already checked
    the windows (width of the signature, finite values; the columns are ``x000``, ``x001``, ...
    in order), so the predictor calls the fastest equivalent path, chosen at load time on a
    probe input whose forecasts must equal the pyfunc's: the fitted network's
    ``predict(ndarray)`` (a python model with ``columns`` and ``fitted``, like
    ``models.pyfunc.GarchLSTMPyfunc``), else the python model's ``predict``, else the pyfunc's.
    ``call_path`` says which.

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
        self.input_width = _signature_width(model)
        self._call, self.call_path = _fastest_call(model, self.input_width)
        #: The fitted network behind the ``network`` path (its ``predict`` takes the windows).
        self._fitted = model.unwrap_python_model().fitted if self.call_path == "network" \
            else None
        #: Its forward pass traced with TorchScript, when that agrees with the pyfunc.
        self._forward = None if self._fitted is None else _traced_forward(
            self._fitted, self._call, self.input_width)
        if self._forward is not None:
            self.call_path = "network (TorchScript)"

    @classmethod
    def from_registry(cls, settings: Settings, alias: str = ALIAS_CHAMPION) -> MlflowPredictor:
        """Resolve ``alias`` of ``settings.model_name`` once, check that version and load it.

        The model is loaded as ``models:/{name}/{version}`` (the version the alias pointed to),
        so the reported version is the one served even if the alias moves meanwhile.

        Raises
        ------
        LookupError
            If the model or the alias does not exist.
        ValueError
            If the version was trained on other window columns than the feature tables hold, or
            more than ``max_champion_age`` sessions before ``settings.default_session``.
        mlflow.exceptions.MlflowException
            If the registry cannot be read.
        """
        ref = mlflow_resolver(settings, alias)()
        if ref is None:
            raise LookupError(f"{settings.model_name} has no {alias} version")
        refusal = version_refusal(ref, settings)
        if refusal is not None:
            raise ValueError(f"{alias} {refusal}")
        predictor = mlflow_loader(settings, alias)(ref)
        assert isinstance(predictor, cls)
        return predictor

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
        return self._call(frame)

    def predict_array(self, windows: np.ndarray) -> np.ndarray:
        """:meth:`predict` of the windows as an array ``(N, width)``, without building the
        frame when the fitted network is called directly."""
        if self._forward is not None:
            return self._forward(windows)
        if self._fitted is not None:
            out = self._fitted.predict(np.asarray(windows, dtype=np.float32))
            return np.asarray(out, dtype=np.float64).reshape(-1)
        return self._call(pd.DataFrame(windows, columns=_columns(windows.shape[1]), copy=False))


def mlflow_resolver(settings: Settings, alias: str = ALIAS_CHAMPION) -> Resolve:
    """The default :data:`Resolve`: ``alias`` of ``settings.model_name`` in the MLflow registry.

    One client is made on first use and reused (the SQLite store checks its schema once).
    "No such model/alias" answers None; any other error (unreachable server, locked file)
    propagates.
    """
    client: Any = None

    def resolve() -> ModelRef | None:
        nonlocal client
        from mlflow.exceptions import MlflowException

        from pipelines import registry

        if client is None:
            client = registry.client(settings)
        try:
            mv = client.get_model_version_by_alias(settings.model_name, alias)
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND_CODES:
                return None
            raise
        return ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id,
                        tags=dict(mv.tags))

    return resolve


def mlflow_loader(settings: Settings, alias: str = ALIAS_CHAMPION) -> Load:
    """The default :data:`Load`: ``mlflow.pyfunc.load_model("models:/{name}/{version}")``."""

    def load(ref: ModelRef) -> Predictor:
        import mlflow

        from pipelines import registry

        registry.client(settings)  # sets the tracking and registry URIs models:/ resolves in
        model = mlflow.pyfunc.load_model(ref.uri)
        if _uses_torch(model):
            _limit_torch_threads()
        predictor = MlflowPredictor(ref.name, ref.version, alias, model)
        log.info("loaded %s version %s (predict via %s)", ref.name, ref.version,
                 predictor.call_path)
        return predictor

    return load


def version_refusal(ref: ModelRef, settings: Settings) -> str | None:
    """Why version ``ref`` must not be served for ``settings.default_session``, or None.

    Its window columns (tag ``window_columns``) must be today's, and its training session (tag
    ``session``) at most ``max_champion_age`` sessions before the session served.
    """
    from pipelines.stages import stale_champion, window_mismatch

    return window_mismatch(ref) or stale_champion(ref, settings.default_session)


def session_served_at(now: datetime) -> date:
    """The NYSE session a long-running service serves at ``now`` (``AFTERBELL_SERVE_FOLLOW``).

    Each session is served from its pre-market window on (``afterbell.toml`` ``[windows]``,
    07:00 New York: its features, as of the previous close, are online by then) until the next
    session's: on a Saturday, Friday's session; on Monday at 06:00, still Friday's.

    Raises
    ------
    ValueError
        If the calendar has no session in the three weeks before ``now``.
    """
    from pipelines.schedule import NEW_YORK, load_config

    pre_market = load_config().windows.pre_market
    local = now.astimezone(NEW_YORK)
    days = calendar.sessions_between(local.date() - timedelta(days=21), local.date())
    for day in reversed(days):
        if datetime.combine(day, pre_market, tzinfo=NEW_YORK) <= local:
            return day
    raise ValueError(f"no NYSE session before {local.isoformat()} in the calendar")


def expected_asof(served_session: date) -> pd.Timestamp | None:
    """Oldest ``asof`` a feature row may have to serve ``served_session``: the close (UTC) of
    the last session before it. None if the calendar does not cover the date."""
    before = calendar.sessions_between(served_session - timedelta(days=14),
                                       served_session - timedelta(days=1))
    return calendar.session_close(before[-1]) if before else None


@dataclass(frozen=True)
class Served:
    """One servable model version: what a request reads, in one attribute read.

    Attributes
    ----------
    predictor : Predictor
        The loaded model.
    info : Mapping
        ``{"name", "version", "alias"}`` of the responses.
    feature_service : str
        Feature service the version reads (its ``feature_service`` tag).
    features : tuple of str
        ``view:feature`` references read per request: the window, then its ``asof``.
    width : int or None
        Window values the model reads (None: unknown, not checked).
    loaded_at : datetime
        When it was swapped in (reported only).
    """

    predictor: Predictor
    info: Mapping[str, str]
    feature_service: str
    features: tuple[str, str]
    width: int | None
    loaded_at: datetime

    @property
    def version(self) -> str:
        return self.info["version"]

    @property
    def names(self) -> tuple[str, str]:
        """Feature names of :attr:`features` (the keys of an online row)."""
        return (self.features[0].partition(":")[2], self.features[1].partition(":")[2])


class _Refused(Exception):
    """A version that must not be served (as opposed to one that failed to load)."""


class _Throttle:
    """Logs a warning the first time a reason is seen, then at most once a minute per reason
    (with the count in between): an error on the request path must not flood the log."""

    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self._log = logger
        self._every = every
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warning(self, reason: str, exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            last, count = self._seen.get(reason, (-math.inf, 0))
            if now - last < self._every:
                self._seen[reason] = (last, count + 1)
                return
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[reason] = (now, 0)
        extra = f" (and {count} more since the last report)" if count else ""
        self._log.warning("%s%s", reason, extra, exc_info=exc_info)


class _Metrics:
    """Prometheus metrics of one app: plain counters exposed by a collector in the app's own
    ``CollectorRegistry``.

    Not ``prometheus_client``'s metric classes: importing ``feast.metrics`` sets
    ``PROMETHEUS_MULTIPROC_DIR``, after which every such metric of the process stores its value
    in a shared memory-mapped file keyed by name and labels (two apps of one process would count
    into each other) behind one global lock. Request metrics are written by the event loop
    thread only; the poller's counters by the poller thread only.
    """

    def __init__(self, runtime: _Runtime) -> None:
        from prometheus_client import CollectorRegistry

        self.runtime = runtime
        #: (route, method, status) -> count
        self.requests: dict[tuple[str, str, int], int] = {}
        #: route -> [per-bucket counts (last: +Inf), sum]
        self.latency: dict[str, list[Any]] = {}
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method if method in _METHODS else "OTHER", status)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0]
        hist[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        hist[1] += seconds

    def collect(self) -> Iterator[Any]:
        """The metric families (``prometheus_client`` collector protocol)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        rt = self.runtime
        requests = CounterMetricFamily(
            "afterbell_requests", "HTTP requests by route template, method and status.",
            labels=["route", "method", "status"])
        for (route, method, status), n in list(self.requests.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "afterbell_request_seconds", "Request latency by route template (seconds).",
            labels=["route"])
        for route, (counts, total) in list(self.latency.items()):
            cumulative, buckets = 0, []
            for le, n in zip((*LATENCY_BUCKETS, math.inf), list(counts), strict=True):
                cumulative += n
                buckets.append(("+Inf" if le == math.inf else repr(le), cumulative))
            latency.add_metric([route], buckets, sum_value=total)
        yield latency
        model = GaugeMetricFamily(
            "afterbell_model_version_info", "Model version served (1 for the served one).",
            labels=["name", "version"])
        served = rt.served
        if served is not None:
            model.add_metric([served.info["name"], served.version], 1)
        yield model
        reloads = CounterMetricFamily(
            "afterbell_model_reloads",
            "Champion versions the app tried to load, by result (ok, refused, failed).",
            labels=["result"])
        for result, n in list(rt.reload_counts.items()):
            reloads.add_metric([result], n)
        yield reloads
        yield CounterMetricFamily("afterbell_model_swaps",
                                  "Times a new version replaced the served one.", value=rt.swaps)
        up = rt.registry_up()
        if up is not None:
            yield GaugeMetricFamily("afterbell_registry_up",
                                    "1 if the last champion alias resolution succeeded.",
                                    value=float(up))
        yield GaugeMetricFamily(
            "afterbell_feature_age_seconds",
            "Age of the newest online feature row last read (wall clock, reported only).",
            value=rt.feature_age_seconds())

    def request_counts(self) -> dict[str, dict[str, int]]:
        """Requests so far, by status and by route."""
        by_status: dict[str, int] = {}
        by_route: dict[str, int] = {}
        for (route, _method, status), n in list(self.requests.items()):
            by_status[str(status)] = by_status.get(str(status), 0) + n
            by_route[route] = by_route.get(route, 0) + n
        return {"by_status": dict(sorted(by_status.items())),
                "by_route": dict(sorted(by_route.items()))}


class _Runtime:
    """Per-app state: the served model (one atomic slot), the champion poller, the store."""

    def __init__(
        self,
        settings: Settings,
        predictor: Predictor | None,
        resolve: Resolve | None,
        load: Load | None,
    ) -> None:
        self.settings = settings
        self.universe = frozenset(settings.universe)
        self._resolve = resolve
        self._load = load
        self._initial = predictor
        self.expected_asof: int | None = None
        self.expected_iso: str | None = None
        self._serve_session(settings.default_session)
        self.roll_session(_now())
        #: THE served model: replaced by one assignment, read once per request.
        self.served: Served | None = None
        self.model_error: str | None = None
        self.store: FeatureStore | None = None
        self.store_error: str | None = None
        #: Direct online-store lookups of the window view (None: through the Feast SDK).
        self.reader: _WindowReader | None = None
        self.latest_asof: int | None = None
        # poller state, written by the poller thread (reported by /health)
        self.champion: str | None = None
        self.champion_problem: dict[str, Any] | None = None
        self.last_refused: dict[str, Any] | None = None
        self.registry_ok_at: datetime | None = None
        self.registry_error: str | None = None
        self.registry_error_at: datetime | None = None
        self.registry_down_since: datetime | None = None
        self.reload_counts = {"ok": 0, "refused": 0, "failed": 0}
        self.swaps = 0
        self.history: list[dict[str, Any]] = []
        self.started = False
        self.metrics = _Metrics(self)
        self.throttle = _Throttle(log)
        self._store_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: set[tuple[str, str]] = set()
        #: (version, tags) of a version not served -> (monotonic time of the next attempt,
        #: failed loads so far)
        self._attempts: dict[tuple[str, frozenset[tuple[str, str]]], tuple[float, int]] = {}

    # --------------------------------------------------------------------------- session
    def _serve_session(self, day: date) -> None:
        """Serve ``day``: the settings' ``default_session`` and the oldest feature ``asof``."""
        if day != self.settings.default_session:
            self.settings = self.settings.with_(default_session=day)
        asof = expected_asof(day)
        self.expected_asof = None if asof is None else int(asof.timestamp())
        self.expected_iso = None if asof is None else asof.isoformat()

    def roll_session(self, now: datetime) -> bool:
        """With ``serve_follow``, move to the session :func:`session_served_at` ``now``; True if
        it changed. Feature rows older than the new session's previous close are stale from then
        on (503 naming them); the model served goes on (a new version is checked against the new
        session's ``max_champion_age``)."""
        if not self.settings.serve_follow:
            return False
        day = session_served_at(now)
        previous = self.settings.default_session
        if day == previous:
            return False
        self._serve_session(day)
        log.info("serving session %s (was %s): features as of %s or later", day, previous,
                 self.expected_iso)
        return True

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open the store, load the champion (or take the injected model), start polling."""
        if self.started:
            return
        try:
            self.store = feature_store.get_store(self.settings)
        except Exception as exc:
            self.store_error = f"feature store unavailable: {type(exc).__name__}: {_first(exc)}"
            log.warning("%s", self.store_error)
        else:
            try:
                self.reader = _WindowReader(self.store)
            except Exception as exc:  # the SDK path still works
                log.warning("online store lookups through the Feast SDK (%s: %s)",
                            type(exc).__name__, _first(exc))
        if self._initial is not None:
            self._swap(self._static(self._initial))
        if self._resolve is not None:
            self.poll_once()
            self._thread = threading.Thread(target=self._poll_forever, daemon=True,
                                            name="afterbell-champion-poller")
            self._thread.start()
        self.started = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the poller (it may be loading a model: not waited for beyond ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.settings.serve_poll_seconds):
            try:
                self.roll_session(_now())
                self.poll_once()
            except Exception:  # never let the poller die
                log.exception("champion poll failed")
            self._refresh_store_registry()

    def _refresh_store_registry(self) -> None:
        """Refresh Feast's registry cache here, so that requests never find it expired."""
        store = self.store
        if store is None:
            return
        try:
            store.refresh_registry()
            if self.reader is not None:
                self.reader.forget_views()
        except Exception as exc:
            self.throttle.warning(
                f"feature store registry refresh failed: {type(exc).__name__}: {_first(exc)}")

    # ---------------------------------------------------------------------------- polling
    def poll_once(self) -> None:
        """Resolve the champion; load, check and swap in a new version; record what happened."""
        assert self._resolve is not None
        with self._poll_lock:
            try:
                ref = self._resolve()
            except Exception as exc:
                self._registry_failed(exc)
                return
            now = _now()
            if self.registry_error is not None:
                log.info("model registry reachable again (down since %s)",
                         _iso(self.registry_down_since))
            self.registry_ok_at, self.registry_error, self.registry_down_since = now, None, None
            self.champion = None if ref is None else ref.version
            if ref is None:
                self._no_champion()
                return
            served = self.served
            if served is not None and served.info["name"] == ref.name \
                    and served.version == ref.version:
                self.champion_problem = None
                return
            key = (ref.version, frozenset(ref.tags.items()))
            attempt = self._attempts.get(key)
            if attempt is not None and time.monotonic() < attempt[0]:
                return  # refused or failed recently: champion_problem still says why
            self._try_version(ref, key, 0 if attempt is None else attempt[1])

    def _try_version(self, ref: ModelRef, key: tuple[str, frozenset[tuple[str, str]]],
                     failures: int) -> None:
        try:
            served = self._prepare(ref)
        except _Refused as exc:
            self._attempts[key] = (time.monotonic() + RECHECK_SECONDS, 0)
            self._record_problem(ref, "refused", str(exc))
            return
        except Exception as exc:
            wait = min(self.settings.serve_poll_seconds * 2**failures, RECHECK_SECONDS)
            self._attempts[key] = (time.monotonic() + wait, failures + 1)
            self._record_problem(
                ref, "failed", f"could not load: {type(exc).__name__}: {_first(exc)}", exc)
            return
        self._attempts.pop(key, None)
        before = self.served
        self._swap(served)
        self.champion_problem = None
        self.reload_counts["ok"] += 1
        if before is not None:
            self.swaps += 1
            log.info("serving %s version %s (@%s), was version %s", ref.name, ref.version,
                     served.info["alias"], before.version)
        else:
            log.info("serving %s version %s (@%s)", ref.name, ref.version, served.info["alias"])

    def _prepare(self, ref: ModelRef) -> Served:
        """Check and load ``ref``; :class:`_Refused` when it must not be served."""
        refusal = version_refusal(ref, self.settings)
        if refusal is not None:
            raise _Refused(refusal)
        service = str(ref.tags.get("feature_service") or feature_store.DEFAULT_SERVICE)
        features = self._service_features(ref, service)
        assert self._load is not None
        predictor = self._load(ref)
        width = _width_of(predictor)
        if width is not None:
            online = self._sample_width(features)
            if online is not None and online != width:
                raise _Refused(
                    f"v{ref.version} reads windows of {width} values; the online "
                    f"{features[0]} holds {online} (feature schema mismatch)")
        return Served(
            predictor=predictor,
            info=_info(ref.name, ref.version, getattr(predictor, "alias", ALIAS_CHAMPION)),
            feature_service=service,
            features=features,
            width=width,
            loaded_at=_now(),
        )

    def _service_features(self, ref: ModelRef, service: str) -> tuple[str, str]:
        """The window and asof references of ``service``; refused if it cannot feed the app."""
        from feast.errors import FeastObjectNotFoundException

        store = self.store
        if store is None:
            raise RuntimeError(self.store_error or "feature store unavailable")
        try:
            fs = store.get_feature_service(service, allow_cache=True)
        except FeastObjectNotFoundException:
            raise _Refused(
                f"v{ref.version} reads feature service {service!r}, which the feature store "
                "does not have") from None
        for proj in fs.feature_view_projections:
            if proj.name != WINDOW_VIEW:
                continue
            names = {f.name for f in proj.features}
            lacking = [f for f in (SEQ_FEATURE, ASOF_FEATURE) if f not in names]
            if lacking:
                raise _Refused(f"v{ref.version}: feature service {service!r} has no "
                               f"{', '.join(f'{WINDOW_VIEW}:{f}' for f in lacking)}")
            try:
                view = store.get_feature_view(WINDOW_VIEW, allow_registry_cache=True)
            except FeastObjectNotFoundException:
                raise _Refused(f"v{ref.version}: feature view {WINDOW_VIEW} of service "
                               f"{service!r} is not in the feature store") from None
            if not view.online:
                raise _Refused(f"v{ref.version}: feature view {WINDOW_VIEW} is not online")
            return (f"{WINDOW_VIEW}:{SEQ_FEATURE}", f"{WINDOW_VIEW}:{ASOF_FEATURE}")
        raise _Refused(f"v{ref.version}: feature service {service!r} has no {WINDOW_VIEW} "
                       "features (the model's input window)")

    def _sample_width(self, features: tuple[str, str]) -> int | None:
        """Length of an online window (None when none can be read)."""
        try:
            rows = self.read(list(self.settings.universe), features)
        except Exception:
            return None
        seq = features[0].partition(":")[2]
        for row in rows.values():
            values = row.get(seq)
            if values is not None:
                return len(values)
        return None

    def _record_problem(self, ref: ModelRef, result: str, reason: str,
                        exc: BaseException | None = None) -> None:
        """A champion version not served: refused (reported once per version and reason) or
        failed to load (retried every poll, each attempt counted, the log throttled)."""
        served = self.served
        keep = f"; still serving version {served.version}" if served else ""
        record = {"version": ref.version, "result": result, "reason": reason, "at": _iso(_now())}
        self.champion_problem = record
        self.last_refused = record
        if served is None:
            self.model_error = (f"no {ALIAS_CHAMPION} model for {self.settings.model_name}: "
                                f"version {ref.version} {result}: {reason}")
        if result == "failed":
            self.reload_counts[result] += 1
            self.throttle.warning(f"{ref.name} version {ref.version} {result}: {reason}{keep}",
                                  exc_info=exc)
            return
        if (ref.version, reason) in self._reported:
            return
        self._reported.add((ref.version, reason))
        self.reload_counts[result] += 1
        log.warning("%s version %s %s: %s%s", ref.name, ref.version, result, reason, keep)

    def _no_champion(self) -> None:
        served = self.served
        reason = f"the registry has no {ALIAS_CHAMPION} version of {self.settings.model_name}"
        if served is None:
            self.model_error = f"no {ALIAS_CHAMPION} model for {self.settings.model_name}: {reason}"
            self.champion_problem = None
        else:
            self.champion_problem = {"version": "", "result": "missing", "reason": reason,
                                     "at": _iso(_now())}
        self.throttle.warning(reason + (f"; still serving version {served.version}"
                                        if served else ""))

    def _registry_failed(self, exc: BaseException) -> None:
        now = _now()
        self.registry_error = f"{type(exc).__name__}: {_first(exc)}"
        self.registry_error_at = now
        if self.registry_down_since is None:
            self.registry_down_since = now
        served = self.served
        if served is None:
            self.model_error = (f"no {ALIAS_CHAMPION} model for {self.settings.model_name}: "
                                f"model registry unreachable: {self.registry_error}")
        self.throttle.warning(
            f"model registry unreachable: {self.registry_error}"
            + (f"; still serving version {served.version}" if served else ""))

    def _static(self, predictor: Predictor) -> Served:
        return Served(
            predictor=predictor,
            info=_info(predictor.name, str(predictor.version), predictor.alias),
            feature_service=feature_store.DEFAULT_SERVICE,
            features=(f"{WINDOW_VIEW}:{SEQ_FEATURE}", f"{WINDOW_VIEW}:{ASOF_FEATURE}"),
            width=_width_of(predictor),
            loaded_at=_now(),
        )

    def _swap(self, served: Served) -> None:
        self.served = served  # the atomic swap: requests read this attribute once
        self.model_error = None
        self.history.append({"version": served.version, "since": _iso(served.loaded_at)})

    # --------------------------------------------------------------------------- features
    def read(self, symbols: list[str], features: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """One online-store read of ``features`` for ``symbols``; 503 if the store fails."""
        store = self.store
        if store is None:
            raise HTTPException(503, detail=self.store_error or "feature store unavailable")
        try:
            with self._store_lock:
                return feature_store.online_features(
                    self.settings, symbols, features=features, store=store)
        except Exception as exc:
            detail = f"feature store unavailable: {type(exc).__name__}: {_first(exc)}"
            self.throttle.warning(detail)
            raise HTTPException(503, detail=detail) from exc

    def windows(self, served: Served, symbols: list[str]) -> tuple[np.ndarray, list[int]]:
        """One online-store read of the windows of ``symbols``: the windows (one row per
        symbol) and their ``asof``; 503 naming every symbol whose features are missing, stale,
        not finite or of the wrong width, or if the store fails.

        The rows are read with the online store's own ``online_read`` (SQLite or Redis, as the
        repo configures it): one lookup per symbol of the view and features the served version's
        feature service names (:meth:`_service_features`). Feast's ``get_online_features``
        around that same call costs three times the lookup for one symbol (entity validation,
        request bookkeeping, response protobufs); it remains the path when the online store
        cannot be opened directly, read from its protobuf straight into one array.
        """
        store = self.store
        if store is None:
            raise HTTPException(503, detail=self.store_error or "feature store unavailable")
        try:
            with self._store_lock:
                reader = self.reader
                if reader is not None:
                    seqs, asofs = reader.read(served.features, symbols)
                else:
                    response = store.get_online_features(
                        features=list(served.features),
                        entity_rows=[{feature_store.ENTITY_KEY: s} for s in symbols])
                    seqs, asofs = _window_columns(response.proto, served.names)
        except Exception as exc:
            detail = f"feature store unavailable: {type(exc).__name__}: {_first(exc)}"
            self.throttle.warning(detail)
            raise HTTPException(503, detail=detail) from exc
        expected = self.expected_asof
        stamps: list[int] = []
        for seq, asof in zip(seqs, asofs, strict=True):
            if seq is None or asof is None or (expected is not None and asof < expected):
                raise HTTPException(503, detail=self._window_problems(served, symbols, seqs,
                                                                      asofs))
            stamps.append(asof)
        try:
            arr = np.array(seqs, dtype=np.float64)
        except ValueError:  # ragged: windows of different lengths
            arr = np.empty((0, 0))
        width = served.width
        if arr.ndim != 2 or arr.shape[1] == 0 or (width is not None and arr.shape[1] != width) \
                or not np.isfinite(arr).all():
            raise HTTPException(503, detail=self._window_problems(served, symbols, seqs, asofs))
        latest = max(stamps)
        if self.latest_asof is None or latest > self.latest_asof:
            self.latest_asof = latest
        return arr, stamps

    def _window_problems(
        self, served: Served, symbols: list[str], seqs: list[Any], asofs: list[int | None]
    ) -> str:
        """What is wrong with the windows of ``symbols`` (the error path of :meth:`windows`)."""
        seq_ref = served.features[0]
        expected = self.expected_asof
        problems: list[str] = []
        sizes: set[int] = set()
        for sym, seq, asof in zip(symbols, seqs, asofs, strict=True):
            if seq is None or asof is None:
                problems.append(f"no online features for {sym} ({seq_ref} missing)")
                continue
            assert asof is not None
            if expected is not None and asof < expected:
                problems.append(
                    f"stale online features for {sym}: {seq_ref} as of {_ts(asof)}, "
                    f"expected {self.expected_iso} or later (close of the session before "
                    f"{self.settings.default_session})")
                continue
            values = np.asarray(seq, dtype=np.float64).reshape(-1)
            sizes.add(values.size)
            if values.size == 0 or not np.isfinite(values).all():
                problems.append(f"no usable online features for {sym}: {seq_ref} has missing "
                                "values")
            elif served.width is not None and values.size != served.width:
                problems.append(
                    f"feature schema mismatch for {sym}: {seq_ref} holds {values.size} values, "
                    f"version {served.version} reads {served.width}")
        if not problems and len(sizes) > 1:
            problems.append(f"feature schema mismatch: the {seq_ref} windows of the batch "
                            "differ in length")
        return "; ".join(problems) or f"unusable online features for {', '.join(symbols)}"

    def forecast(self, served: Served, windows: np.ndarray, symbols: list[str]) -> np.ndarray:
        """The model's forecasts of ``windows``; 503 when it fails or is not finite.

        A predictor with ``predict_array`` gets the array itself (no frame is built)."""
        predictor = served.predictor
        try:
            predict_array = getattr(predictor, "predict_array", None)
            if predict_array is not None:
                raw = predict_array(windows)
            else:
                raw = predictor.predict(
                    pd.DataFrame(windows, columns=_columns(windows.shape[1]), copy=False))
            out = np.asarray(raw, dtype=np.float64).reshape(-1)
        except Exception as exc:
            detail = (f"prediction failed (version {served.version}): {type(exc).__name__}: "
                      f"{_first(exc)}")
            self.throttle.warning(detail, exc_info=exc)
            raise HTTPException(503, detail=detail) from exc
        if out.size != len(symbols):
            raise HTTPException(503, detail=f"model returned {out.size} forecasts for "
                                            f"{len(symbols)} symbols")
        if not np.isfinite(out).all():
            bad = [s for s, v in zip(symbols, out, strict=True) if not math.isfinite(v)]
            raise HTTPException(503, detail=f"model returned no finite forecast for "
                                            f"{', '.join(bad)}")
        return out

    def feature_age_seconds(self) -> float:
        """Wall-clock age of the newest feature row read (reported only; NaN before any)."""
        latest = self.latest_asof
        return math.nan if latest is None else time.time() - latest

    # ----------------------------------------------------------------------------- health
    def registry_up(self) -> bool | None:
        """Whether the last alias resolution succeeded (None: not polling or not yet)."""
        if self._resolve is None or (self.registry_ok_at is None and self.registry_error is None):
            return None
        return self.registry_error is None

    def registry_state(self) -> dict[str, Any]:
        if self._resolve is None:
            return {"polling": False, "reachable": None}
        return {
            "polling": True,
            "poll_seconds": self.settings.serve_poll_seconds,
            "reachable": None if self.registry_ok_at is None and self.registry_error is None
            else self.registry_error is None,
            "last_ok_at": _iso(self.registry_ok_at),
            "last_error": self.registry_error,
            "last_error_at": _iso(self.registry_error_at),
            "down_since": _iso(self.registry_down_since),
            "champion_version": self.champion,
        }

    def summary(self) -> dict[str, Any]:
        """Versions served, requests by status and route, reload results (the live log)."""
        served = self.served
        return {
            "model": None if served is None else dict(served.info),
            "versions": list(self.history),
            "requests": self.metrics.request_counts(),
            "reloads": {**self.reload_counts, "swaps": self.swaps},
            "last_refused": self.last_refused,
            "registry_error": self.registry_error,
        }


def create_app(
    settings: Settings,
    predictor: Predictor | None = None,
    *,
    resolve: Resolve | None = None,
    load: Load | None = None,
) -> FastAPI:
    """Build the serving app.

    Parameters
    ----------
    settings : Settings
        Universe, horizon, served session (``default_session``), feature store home, MLflow
        tracking URI and the ``serve_*`` settings (token, poll period, batch bound).
    predictor : Predictor, optional
        A model to serve as is (no registry checks). Without ``resolve`` it is never replaced.
    resolve, load : callable, optional
        How the champion is resolved and loaded (default: the MLflow registry, see
        :func:`mlflow_resolver` and :func:`mlflow_loader`). Given a ``resolve`` (or no
        ``predictor``), the app polls it every ``settings.serve_poll_seconds`` and swaps in new
        versions.

    Returns
    -------
    fastapi.FastAPI
        The app; ``app.state.runtime`` holds its state (``summary()`` for the live log).
    """
    if predictor is None or resolve is not None:
        resolve = resolve or mlflow_resolver(settings)
        load = load or mlflow_loader(settings)
    runtime = _Runtime(settings, predictor, resolve, load)
    max_batch = settings.serve_max_batch
    horizon = settings.horizon
    universe_text = ", ".join(settings.universe)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(
        title="afterbell volatility forecaster",
        summary="Forecasts of annualised volatility from the afterbell feature store.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.add_middleware(_Observe, runtime=runtime, token=settings.serve_token)

    def no_model() -> HTTPException:
        return HTTPException(503, detail=runtime.model_error or f"no {ALIAS_CHAMPION} model "
                             "loaded")

    @app.get("/health")
    async def health() -> Response:
        """Model served, champion polling and registry, freshness of the online features."""
        reasons: list[str] = []
        served = runtime.served
        if served is None:
            reasons.append(runtime.model_error or f"no {ALIAS_CHAMPION} model")
        problem = runtime.champion_problem
        if problem is not None and served is not None:
            if problem["result"] == "missing":
                reasons.append(f"{problem['reason']}; still serving version {served.version}")
            else:
                reasons.append(f"champion version {problem['version']} {problem['result']}: "
                               f"{problem['reason']}; still serving version {served.version}")
        if runtime.registry_error is not None and served is not None:
            reasons.append(f"model registry unreachable since "
                           f"{_iso(runtime.registry_down_since)}: {runtime.registry_error}; "
                           f"still serving version {served.version}")
        features: dict[str, Any] = {
            "feature_service": None if served is None else served.feature_service,
            "expected_asof": runtime.expected_iso,
            "latest_asof": None,
            "age_seconds": None,
            "available": 0,
            "missing": list(settings.universe),
            "stale": [],
        }
        asof_ref = served.features[1] if served is not None else f"{WINDOW_VIEW}:{ASOF_FEATURE}"
        try:
            rows = runtime.read(list(settings.universe), (asof_ref,))
        except HTTPException as exc:
            reasons.append(str(exc.detail))
        else:
            name = asof_ref.partition(":")[2]
            asofs = {s: int(r[name]) for s, r in rows.items() if r.get(name) is not None}
            features["available"] = len(asofs)
            features["missing"] = [s for s in settings.universe if s not in asofs]
            expected = runtime.expected_asof
            stale = [s for s, a in asofs.items() if expected is not None and a < expected]
            features["stale"] = stale
            if asofs:
                latest = max(asofs.values())
                if runtime.latest_asof is None or latest > runtime.latest_asof:
                    runtime.latest_asof = latest
                features["latest_asof"] = _ts(latest)
                # Reported only: nothing in the app decides on wall-clock time.
                features["age_seconds"] = round(time.time() - latest, 1)
            else:
                reasons.append("no online features (materialise the feature store)")
            if stale:
                reasons.append(f"stale online features for {', '.join(stale)} (before "
                               f"{runtime.expected_iso})")
        model: dict[str, Any] | None = None
        if served is not None:
            model = {**served.info, "loaded_at": _iso(served.loaded_at),
                     "feature_service": served.feature_service}
        return _json({
            "status": "degraded" if reasons else "ok",
            "reason": "; ".join(reasons) or None,
            "model": model,
            "served_session": runtime.settings.default_session.isoformat(),
            "follows_clock": runtime.settings.serve_follow,
            "champion": runtime.champion,
            "last_refused": runtime.last_refused,
            "registry": runtime.registry_state(),
            "reloads": {**runtime.reload_counts, "swaps": runtime.swaps},
            "features": features,
            "symbols": len(settings.universe),
            "auth": "bearer" if settings.serve_token else "none",
        })

    # The two predict routes are plain Starlette routes: FastAPI's parameter and body
    # machinery costs about 50 us a request, a tenth of the latency budget. Their input is
    # validated here, their answer serialised by hand.
    async def predict(request: Request) -> Response:
        """``GET /predict/{symbol}``: forecast of one symbol from its latest online features."""
        sym = request.path_params["symbol"].strip().upper()
        if sym not in runtime.universe:
            raise HTTPException(
                404, detail=f"unknown symbol {sym}: not in the universe ({universe_text})")
        served = runtime.served
        if served is None:
            raise no_model()
        windows, asofs = runtime.windows(served, [sym])
        out = runtime.forecast(served, windows, [sym])
        return _json({
            "symbol": sym,
            "forecast": float(out[0]),
            "horizon": horizon,
            "model": served.info,
            "feature_timestamp": _ts(asofs[0]),
        })

    async def predict_batch(request: Request) -> Response:
        """``POST /predict`` ``{"symbols": [...]}``: forecasts of a batch from one online-store
        read. All or nothing: a symbol whose features are missing or stale fails the whole
        batch (503 naming it)."""
        symbols = _batch_symbols(await request.body(), max_batch)
        unknown = [s for s in symbols if s not in runtime.universe]
        if unknown:
            raise HTTPException(422, detail=f"unknown symbols {', '.join(unknown)}: not in "
                                            f"the universe ({universe_text})")
        served = runtime.served
        if served is None:
            raise no_model()
        windows, asofs = runtime.windows(served, symbols)
        out = runtime.forecast(served, windows, symbols)
        return _json({
            "predictions": [
                {"symbol": s, "forecast": f, "horizon": horizon, "feature_timestamp": _ts(a)}
                for s, f, a in zip(symbols, out.tolist(), asofs, strict=True)
            ],
            "model": served.info,
        })

    # first in the routing table: routes are matched in order
    app.router.routes[:0] = [Route("/predict/{symbol}", predict, methods=["GET"]),
                             Route("/predict", predict_batch, methods=["POST"])]

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text exposition of this app's metrics."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Observe:
    """Pure ASGI middleware: bearer auth, request metrics, and the last line against a 500.

    The route label is the matched route's template (``/predict/{symbol}``), never the raw
    path. An exception escaping a handler is answered 503 with its type and first line.
    Neither the token nor the ``Authorization`` header is ever logged.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 runtime: _Runtime, token: str | None) -> None:
        self.app = app
        self.runtime = runtime
        self.metrics = runtime.metrics
        self._expected = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        if self._expected is not None and scope["path"] not in OPEN_PATHS \
                and not self._authorized(scope):
            await _send_json(send, 401, {"detail": "missing or invalid bearer token"},
                             ((b"www-authenticate", b"Bearer"),))
            self.metrics.observe(self._template(scope), scope["method"], 401,
                                 time.perf_counter() - start)
            return
        status = 500
        started = False

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            detail = f"internal error: {type(exc).__name__}: {_first(exc)}"
            self.runtime.throttle.warning(f"{scope['method']} {scope['path']}: {detail}",
                                          exc_info=exc)
            if not started:
                status = 503
                await _send_json(send, 503, {"detail": detail})
        finally:
            route = scope.get("route")
            self.metrics.observe(route.path if route is not None else "<unmatched>",
                                 scope["method"], status, time.perf_counter() - start)

    def _authorized(self, scope: Scope) -> bool:
        assert self._expected is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return hmac.compare_digest(b"Bearer " + token.strip(), self._expected) \
                    and scheme.lower() == b"bearer"
        return False

    def _template(self, scope: Scope) -> str:
        from starlette.routing import Match

        app = scope.get("app")
        for route in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(route.path)
        return "<unmatched>"


async def _send_json(send: Send, status: int, body: Any,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": payload})


#: MLflow HTTP client settings of a serving process, unless set in its environment: MLflow's
#: defaults (7 retries with exponential backoff, 120 s a request) would keep a champion poll
#: against an unreachable tracking server going for minutes before ``/health`` shows it
#: (predictions go on from the loaded model either way).
SERVING_MLFLOW_HTTP: Mapping[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def serving_http_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`SERVING_MLFLOW_HTTP` into ``environ`` (default ``os.environ``) where unset.

    Returns
    -------
    dict of str to str
        The values in force afterwards (an operator's own setting wins).
    """
    env = os.environ if environ is None else environ
    for key, value in SERVING_MLFLOW_HTTP.items():
        env.setdefault(key, value)
    return {key: env[key] for key in SERVING_MLFLOW_HTTP}


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the app with uvicorn until interrupted (MLflow's HTTP client bounded first:
    :func:`serving_http_defaults`).

    Parameters
    ----------
    settings : Settings
        Installation settings.
    host, port : str, int, optional
        Bind address (default ``settings.serve_host`` / ``settings.serve_port``).
    """
    import uvicorn

    serving_http_defaults()
    uvicorn.run(
        create_app(settings),
        host=host or settings.serve_host,
        port=port or settings.serve_port,
        log_level="warning",
        access_log=False,
    )


# ------------------------------------------------------------------------------------ helpers
#: Largest ``POST /predict`` body read (bytes).
MAX_BODY_BYTES = 64 * 1024


def _batch_symbols(raw: bytes, max_batch: int) -> list[str]:
    """The upper-cased symbols of a ``{"symbols": [...]}`` body; 413/422 with a reason."""
    usage = 'expected {"symbols": ["AAPL", ...]}'
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(413, detail=f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except ValueError:
        raise HTTPException(422, detail=f"body is not valid JSON: {usage}") from None
    if not isinstance(body, dict) or set(body) != {"symbols"}:
        got = f"keys {', '.join(sorted(map(str, body)))}" if isinstance(body, dict) \
            else type(body).__name__
        raise HTTPException(422, detail=f"bad body ({got}): {usage}")
    raw_symbols = body["symbols"]
    if not isinstance(raw_symbols, list) or not all(isinstance(s, str) for s in raw_symbols):
        raise HTTPException(422, detail=f"symbols must be a list of strings: {usage}")
    if not raw_symbols:
        raise HTTPException(422, detail=f"symbols is empty: ask for 1 to {max_batch}")
    if len(raw_symbols) > max_batch:
        raise HTTPException(422, detail=f"too many symbols: {len(raw_symbols)} > {max_batch} "
                                        "(AFTERBELL_SERVE_MAX_BATCH)")
    symbols = [s.strip().upper() for s in raw_symbols]
    if len(set(symbols)) != len(symbols):
        dupes = sorted({s for s in symbols if symbols.count(s) > 1})
        raise HTTPException(422, detail=f"duplicate symbols: {', '.join(dupes)}")
    return symbols


def _window_columns(proto: Any, names: tuple[str, str]) -> tuple[list[Any], list[int | None]]:
    """The window values (a sequence per row, None where missing) and ``asof`` (int or None)
    of a Feast ``GetOnlineFeaturesResponse`` (column-major: one vector per feature)."""
    columns = list(proto.metadata.feature_names.val)
    seq_values = proto.results[columns.index(names[0])].values
    asof_values = proto.results[columns.index(names[1])].values
    return [_list_value(v) for v in seq_values], [_int_value(v) for v in asof_values]


def _list_value(value: Any) -> Any:
    """The values of a Feast list ``ValueProto`` (None when missing or null)."""
    kind = None if value is None else value.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(value, kind).val


def _int_value(value: Any) -> int | None:
    """A Feast scalar ``ValueProto`` as int (None when missing or null)."""
    kind = None if value is None else value.WhichOneof("val")
    return None if kind is None or kind == "null_val" else int(getattr(value, kind))


class _WindowReader:
    """Lookups of one feature view's online rows by symbol, through the repo's online store.

    The store (SQLite by default, Redis in production) is the one ``feature_store.yaml``
    configures, opened by Feast's own factory; each read is one ``OnlineStore.online_read`` call
    for all the symbols asked (one ``SELECT ... IN`` on SQLite, one pipelined ``HMGET`` per key
    on Redis). On SQLite the same query runs on Feast's own connection and table with the
    entity keys serialised once per symbol (Feast serialises every key on every read: a third
    of a 25-symbol lookup). Feature views are taken from the registry cache once and forgotten
    when the registry is refreshed.
    """

    def __init__(self, store: FeatureStore) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import get_online_store_from_config
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._store = store
        self._config = store.config
        self._online = get_online_store_from_config(store.config.online_store)
        self._entity_key = EntityKey
        self._value = Value
        self._serialize = serialize_entity_key
        self._keys: dict[str, Any] = {}
        self._serialized: dict[str, bytes] = {}
        self._views: dict[str, Any] = {}
        self._sqlite: Any = None
        if type(self._online).__name__ == "SqliteOnlineStore":
            from feast.infra.online_stores.sqlite import _quote_id, _table_id

            config = self._config
            versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning",
                                      False))
            online: Any = self._online
            self._sqlite = (online._get_conn(config),
                            lambda view: _quote_id(_table_id(config.project, view, versioning)))

    def forget_views(self) -> None:
        """Drop the cached feature views (the registry was refreshed)."""
        self._views = {}

    def _key(self, sym: str) -> Any:
        key = self._keys.get(sym)
        if key is None:
            key = self._entity_key(join_keys=[feature_store.ENTITY_KEY],
                                   entity_values=[self._value(string_val=sym)])
            self._keys[sym] = key
        return key

    def _lookup(self, view: Any, symbols: list[str], names: list[str]
                ) -> list[dict[str, Any] | None]:
        """The online row (feature name -> ``ValueProto``) of each symbol, None where absent."""
        if self._sqlite is None:
            rows = self._online.online_read(self._config, view,
                                            [self._key(s) for s in symbols], names)
            return [values for _, values in rows]
        conn, table_of = self._sqlite
        keys = []
        for sym in symbols:
            key = self._serialized.get(sym)
            if key is None:
                key = self._serialize(self._key(sym), entity_key_serialization_version=(
                    self._config.entity_key_serialization_version))
                self._serialized[sym] = key
            keys.append(key)
        found: dict[bytes, dict[str, Any]] = {}
        for key, name, raw in conn.execute(
            f"SELECT entity_key, feature_name, value FROM {table_of(view)} "
            f"WHERE entity_key IN ({','.join('?' * len(keys))}) "
            f"AND feature_name IN ({','.join('?' * len(names))})", [*keys, *names]):
            found.setdefault(key, {})[name] = self._value.FromString(raw)
        return [found.get(key) for key in keys]

    def read(self, features: tuple[str, str], symbols: list[str]
             ) -> tuple[list[Any], list[int | None]]:
        """The window values and ``asof`` of ``symbols`` (None where a row or value is
        missing); ``features`` are the ``view:seq`` and ``view:asof`` references."""
        view_name, _, seq = features[0].partition(":")
        asof = features[1].partition(":")[2]
        view = self._views.get(view_name)
        if view is None:
            view = self._store.get_feature_view(view_name, allow_registry_cache=True)
            self._views[view_name] = view
        seqs: list[Any] = []
        asofs: list[int | None] = []
        for values in self._lookup(view, symbols, [seq, asof]):
            values = values or {}
            seqs.append(_list_value(values.get(seq)))
            asofs.append(_int_value(values.get(asof)))
        return seqs, asofs


def _json(body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":")).encode(),
                    media_type="application/json")


def _info(name: str, version: str, alias: str) -> Mapping[str, str]:
    return {"name": name, "version": str(version), "alias": alias}


_COLUMNS: dict[int, pd.Index] = {}


def _columns(width: int) -> pd.Index:
    """Column names of a window frame of ``width`` values (those of :func:`window_frame`)."""
    cols = _COLUMNS.get(width)
    if cols is None:
        cols = window_frame(np.zeros((1, width))).columns
        _COLUMNS[width] = cols
    return cols


def _width_of(predictor: Predictor) -> int | None:
    width = getattr(predictor, "input_width", None)
    return int(width) if isinstance(width, int | np.integer) and width > 0 else None


def _forecast_column(out: Any) -> np.ndarray:
    """The ``forecast`` column (else the first) of a model's output, as ``float64``."""
    if isinstance(out, pd.DataFrame):
        out = out["forecast"] if "forecast" in out.columns else out.iloc[:, 0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def _probe_windows(n: int, width: int) -> np.ndarray:
    """``n`` deterministic windows of ``width`` plausible values (0.05-0.35, vol-like) on which
    a faster call path must reproduce the pyfunc's forecasts."""
    grid = np.arange(n * width, dtype=np.float64).reshape(n, width)
    return 0.05 + 0.3 * np.abs(np.sin(grid))


def _fastest_call(
    model: Any, width: int | None
) -> tuple[Callable[[pd.DataFrame], np.ndarray], str]:
    """The fastest way to get ``model``'s forecasts that agrees with its pyfunc ``predict`` on a
    probe input, and its name (see :class:`MlflowPredictor`)."""

    def pyfunc(frame: pd.DataFrame) -> np.ndarray:
        return _forecast_column(model.predict(frame))

    if width is None:
        return pyfunc, "pyfunc"
    try:
        python_model = model.unwrap_python_model()
    except Exception:
        return pyfunc, "pyfunc"

    def python(frame: pd.DataFrame) -> np.ndarray:
        return _forecast_column(python_model.predict(None, frame))

    candidates: list[tuple[Callable[[pd.DataFrame], np.ndarray], str]] = [(python, "python")]
    try:
        fitted = python_model.fitted
        columns = list(python_model.columns)
    except Exception:
        fitted = columns = None
    if columns == list(_columns(width)) and callable(getattr(fitted, "predict", None)):

        def network(frame: pd.DataFrame) -> np.ndarray:
            out = fitted.predict(frame.to_numpy(dtype=np.float32))
            return np.asarray(out, dtype=np.float64).reshape(-1)

        candidates.insert(0, (network, "network"))
    probe = pd.DataFrame(_probe_windows(3, width), columns=_columns(width))
    try:
        expected = pyfunc(probe)
    except Exception:
        return pyfunc, "pyfunc"
    for call, name in candidates:
        try:
            got = call(probe)
        except Exception:
            continue
        if got.shape == expected.shape and np.allclose(got, expected, rtol=1e-6, atol=1e-9):
            return call, name
    return pyfunc, "pyfunc"


def _traced_forward(
    fitted: Any, pyfunc: Callable[[pd.DataFrame], np.ndarray], width: int | None
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The primary-horizon forecasts of a fitted sequence network (``fitted.network()``, an
    ``nn.Module`` over windows ``(N, spec.lookback, spec.n_features)``) through its TorchScript
    trace, or None when it cannot be traced or disagrees with ``pyfunc`` on probe inputs.

    The trace runs the same operations without the module machinery's per-call Python work:
    one LSTM window's forecast in 60 us instead of 95 us (p99 150 us instead of 450 us) on the
    project machine.
    """
    try:
        import torch

        spec = fitted.spec
        lookback, n_features = int(spec.lookback), int(spec.n_features)
        if width is not None and width != lookback * n_features:
            return None
        net = fitted.network()
        with torch.inference_mode(), warnings.catch_warnings():
            # the LSTM's shape checks become constants of the trace: the probes below check it
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(net, torch.zeros(2, lookback, n_features),
                                     check_trace=False)

        def forward(windows: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
            with torch.inference_mode():
                out = traced(x.reshape(len(windows), lookback, n_features)).numpy()
            return np.asarray(out[:, 0] if out.ndim == 2 else out, dtype=np.float64)

        for n in (1, 3, 7):
            probe = _probe_windows(n, lookback * n_features)
            expected = pyfunc(pd.DataFrame(probe, columns=_columns(probe.shape[1])))
            if not np.allclose(forward(probe), expected, rtol=1e-6, atol=1e-9):
                return None
        return forward
    except Exception:
        return None


def _uses_torch(model: Any) -> bool:
    """Whether a pyfunc's python model (or its ``fitted`` model) comes from a module that
    imports torch."""
    try:
        python_model = model.unwrap_python_model()
    except Exception:
        return False
    objects = [python_model]
    with suppress(Exception):
        objects.append(python_model.fitted)
    torch = sys.modules.get("torch")
    return torch is not None and any(
        getattr(sys.modules.get(type(obj).__module__), "torch", None) is torch
        for obj in objects)


def _limit_torch_threads(threads: int = TORCH_THREADS) -> None:
    """One intra-op thread for torch once a model that uses it is served: on a 2-core machine
    torch's default (one per core) contends with the event loop and the client (p99 of a
    one-window LSTM forward: 190 ms with 2 threads, 0.5 ms with 1)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        log.info("torch intra-op threads %d -> %d for serving", torch.get_num_threads(), threads)
        torch.set_num_threads(threads)


def _signature_width(model: Any) -> int | None:
    """Input columns of a pyfunc's signature (None when it has none)."""
    try:
        schema = model.metadata.get_input_schema()
        names = schema.input_names() if schema is not None else None
    except Exception:
        return None
    return len(names) if names else None


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


@lru_cache(maxsize=4096)
def _ts(epoch: int) -> str:
    """ISO timestamp of ``epoch`` seconds (cached: a batch's rows share their close)."""
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
