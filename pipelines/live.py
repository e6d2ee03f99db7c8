"""Running the serving app for a window of time: the ``live_serving`` task and smoke checks."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from pipelines.settings import Settings

log = logging.getLogger("afterbell.live")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(settings: Settings, host: str, port: int) -> Iterator[str]:
    """Run ``afterbell serve``'s app in a background thread; yield its base URL."""
    import httpx
    import uvicorn

    from pipelines.serving import create_app

    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="afterbell-serve", daemon=True)
    thread.start()
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the serving app did not come up on {base}")
        time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def query_all(base: str, symbols: list[str]) -> dict[str, Any]:
    """GET /health and /predict/{symbol} for every symbol; the answers keyed by symbol."""
    import httpx

    with httpx.Client(base_url=base, timeout=10) as c:
        health = c.get("/health").json()
        preds = {}
        for sym in symbols:
            r = c.get(f"/predict/{sym}")
            preds[sym] = r.json() if r.status_code == 200 else {"status": r.status_code,
                                                                  **r.json()}
    return {"health": health, "predictions": preds}


def serve_window(settings: Settings, open_: pd.Timestamp, close: pd.Timestamp) -> dict[str, Any]:
    """Serve from ``open_`` to ``close`` (UTC). A window already over (a backfill, or
    ``airflow dags test`` of a past session) gets a smoke check: start, answer every symbol once,
    stop. Live serving is the one place where the wall clock decides what happens."""
    now = datetime.now(UTC)
    host = settings.serve_host
    # the served session: the champion's age (max_champion_age) is counted up to it
    settings = settings.with_(default_session=close.tz_convert("America/New_York").date())
    if now >= close.to_pydatetime():
        with running_server(settings, host, free_port(host)) as base:
            answers = query_all(base, list(settings.universe))
        served = {k: v for k, v in answers["predictions"].items() if "forecast" in v}
        log.info("smoke-served %d/%d symbols, model %s", len(served), len(settings.universe),
                 answers["health"].get("model"))
        return {"mode": "smoke", "session_close": close.isoformat(), "served": len(served),
                "model": answers["health"].get("model")}
    with running_server(settings, host, settings.serve_port) as base:
        log.info("serving %s until %s", base, close.isoformat())
        while datetime.now(UTC) < close.to_pydatetime():
            time.sleep(min(30.0, max(0.1, (close.to_pydatetime() - datetime.now(UTC))
                                     .total_seconds())))
    return {"mode": "live", "session_close": close.isoformat()}
