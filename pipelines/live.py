"""Running the serving app for a window of time: the ``live_serving`` task and smoke checks."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("afterbell.live")

#: Seconds between two progress lines of a live window.
LOG_EVERY_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    settings: Settings, host: str, port: int, app: FastAPI | None = None
) -> Iterator[str]:
    """Run ``afterbell serve``'s app (or ``app``) with uvicorn in a background thread; yield its
    base URL once it has started (lifespan done: model loaded, poller running). On exit the
    server is asked to stop (``should_exit``: in-flight requests finish, the lifespan shuts the
    poller down) and its thread joined."""
    import uvicorn

    from pipelines.serving import serving_http_defaults

    serving_http_defaults()
    if app is None:
        from pipelines.serving import create_app

        app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="afterbell-serve", daemon=True)
    thread.start()
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the serving app did not come up on {base} (port in use?)")
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
            log.warning("the serving app on %s did not stop cleanly", base)


def query_all(base: str, symbols: list[str], token: str | None = None) -> dict[str, Any]:
    """GET /health and /predict/{symbol} for every symbol; the answers keyed by symbol."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base, timeout=10, headers=headers) as c:
        health = c.get("/health").json()
        preds = {}
        for sym in symbols:
            r = c.get(f"/predict/{sym}")
            preds[sym] = r.json() if r.status_code == 200 else {"status": r.status_code,
                                                                  **r.json()}
    return {"health": health, "predictions": preds}


def serve_window(settings: Settings, open_: pd.Timestamp, close: pd.Timestamp) -> dict[str, Any]:
    """Serve from now until ``close`` (UTC), or for at most ``settings.serve_seconds``.

    A window already over (a backfill, or ``airflow dags test`` of a past session) gets a smoke
    check: start, answer every symbol once, stop; unless ``serve_seconds`` is set, which serves
    live for that long whatever the date (the shortened session of ``airflow dags test``). Live
    serving is the one place where the wall clock decides what happens. A live window logs the
    versions served, the requests by status and the model reloads every minute and at the end,
    and returns them.
    """
    host = settings.serve_host
    # the served session: the champion's age (max_champion_age) and the features' freshness
    # are counted up to it
    settings = settings.with_(default_session=close.tz_convert("America/New_York").date())
    if _serve_for(settings, close) <= 0:
        return _smoke(settings, host, close)
    return _serve_live(settings, host, close)


def _serve_for(settings: Settings, close: pd.Timestamp) -> float:
    """Seconds to serve from now: until the close, at most ``serve_seconds`` (which also
    applies when the close is past)."""
    remaining = (close.to_pydatetime() - datetime.now(UTC)).total_seconds()
    cap = settings.serve_seconds
    if cap is None:
        return remaining
    return cap if remaining <= 0 else min(remaining, cap)


def _smoke(settings: Settings, host: str, close: pd.Timestamp) -> dict[str, Any]:
    with running_server(settings, host, free_port(host)) as base:
        answers = query_all(base, list(settings.universe), settings.serve_token)
    served = {k: v for k, v in answers["predictions"].items() if "forecast" in v}
    log.info("smoke-served %d/%d symbols, model %s", len(served), len(settings.universe),
             answers["health"].get("model"))
    return {"mode": "smoke", "session_close": close.isoformat(), "served": len(served),
            "model": answers["health"].get("model")}


def _serve_live(settings: Settings, host: str, close: pd.Timestamp) -> dict[str, Any]:
    from pipelines.serving import create_app

    app = create_app(settings)
    runtime = app.state.runtime
    with running_server(settings, host, settings.serve_port, app=app) as base:
        # counted from when the service is up (model loaded), so that a shortened session
        # serves its full serve_seconds
        started = time.monotonic()
        end = started + _serve_for(settings, close)
        log.info("serving %s for %.0f s (session close %s, served session %s)", base,
                 end - started, close.isoformat(), settings.default_session)
        _log_progress(runtime.summary(), "started")
        next_log = started + LOG_EVERY_S
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
            if time.monotonic() >= next_log:
                _log_progress(runtime.summary(), "serving")
                next_log += LOG_EVERY_S
    served_s = round(time.monotonic() - started, 1)
    summary = runtime.summary()
    _log_progress(summary, f"stopped after {served_s:.0f} s")
    return {"mode": "live", "session_close": close.isoformat(), "served_seconds": served_s,
            **summary}


def _log_progress(summary: dict[str, Any], what: str) -> None:
    versions = ", ".join(f"v{v['version']} since {v['since']}" for v in summary["versions"])
    statuses = ", ".join(f"{k}: {n}" for k, n in summary["requests"]["by_status"].items())
    reloads = summary["reloads"]
    log.info("live serving %s: versions served [%s]; requests by status {%s}; reloads ok %d, "
             "refused %d, failed %d, swaps %d%s", what, versions or "none", statuses or "none",
             reloads["ok"], reloads["refused"], reloads["failed"], reloads["swaps"],
             f"; last refused v{summary['last_refused']['version']}: "
             f"{summary['last_refused']['reason']}" if summary["last_refused"] else "")
