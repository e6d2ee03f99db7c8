"""Live-serving benchmark (issue 7): ``afterbell serve`` beside ``feast serve`` and the bare read.

One run builds a throwaway ``AFTERBELL_HOME`` with a materialised online store (SQLite, the
embedded default) of ``--symbols`` symbols (default 25) and a small GARCH-LSTM registered as
``garch_lstm_vol@champion`` in a SQLite MLflow registry, then starts, as separate processes on
loopback ports:

- ``afterbell serve``: the real app (:func:`pipelines.serving.serve`), which resolves the champion
  alias, loads the model from the registry and reads the windows through its feature service;
- ``feast serve --no-access-log --max-requests 0`` on the same repo, asked for the same features
  the app reads of its feature service ``garch_lstm_v2``: the window view's 140-value ``seq``
  and its ``asof``;
- an empty FastAPI endpoint under the same uvicorn (the cost of HTTP + the framework alone).

The client (this process, one keep-alive ``http.client`` connection per server) interleaves the
targets in blocks, so that a burst of other load on the shared cores lands on all of them. The
in-process floors read the online store's SQLite table directly (one ``SELECT`` by serialised
entity key, values parsed from their protobufs), without and with the LSTM forward.

Phases: single-symbol latency (``GET /predict/{symbol}``), 25-symbol batches (``POST
/predict``), throughput of 4 concurrent client processes for 20 s (afterbell, then feast), and the
serving process's resident memory until it has answered 100,000 requests. Nothing is asserted:
the figures, the ratios and the issue's targets are printed (and written with ``--json``).

Usage::

    .venv/bin/python bench/bench_serving.py                  # about 5 minutes on 2 cores
    .venv/bin/python bench/bench_serving.py --quick          # smoke run, under a minute
    .venv/bin/python bench/bench_serving.py --json serving.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SERVICE = "garch_lstm_v2"
WINDOW_VIEW = "lstm_window"
#: Features end on Friday 2018-12-21: fresh for the served session, Monday 2018-12-24.
LAST_SESSION = "2018-12-21"
SERVED_SESSION = date(2018, 12, 24)
N_SESSIONS = 30


# ------------------------------------------------------------------------------ the state
@dataclass(frozen=True)
class Config:
    """What one benchmark run measures (the defaults are the issue's)."""

    symbols: int = 25
    get_requests: int = 6000
    post_requests: int = 2000
    batch: int = 25
    block: int = 200
    warmup: int = 300
    clients: int = 4
    seconds: float = 20.0
    memory_requests: int = 100_000
    seed: int = 7


def symbols_of(n: int) -> tuple[str, ...]:
    """``n`` synthetic tickers ``S000``, ``S001``, ..."""
    return tuple(f"S{i:03d}" for i in range(n))


def settings_for(home: Path, symbols: Sequence[str]) -> Any:
    """Settings of the benchmark's home: its universe, served session and SQLite registry."""
    from pipelines.settings import Settings

    return Settings(home=home, universe=tuple(symbols), default_session=SERVED_SESSION)


def build_home(home: Path, cfg: Config) -> dict[str, Any]:
    """Offline tables, ``feast apply``, materialisation and a registered champion in ``home``.

    The feature values are random but plausible (positive vols; only the latest row of each
    symbol reaches the online store). The LSTM is the pipeline's architecture at its default size
    (lookback 20, 7 features, 32 hidden units, three heads), trained for one epoch on random
    windows: its accuracy is irrelevant here, its cost per forward pass is the real one.
    """
    import mlflow
    import pandas as pd

    from models.lstm import LSTMSpec, fit_lstm
    from models.pyfunc import log_lstm_model
    from pipelines import feature_store as fs
    from pipelines import registry
    from pipelines.calendar import closes_for, sessions_between
    from pipelines.datasets import window_frame
    from pipelines.schema import FEATURE_COLUMNS, GARCH_COLUMNS, OPTION_COLUMNS
    from pipelines.settings import WINDOW_COLUMNS

    symbols = symbols_of(cfg.symbols)
    settings = settings_for(home, symbols)
    rng = np.random.default_rng(cfg.seed)
    spec = LSTMSpec.from_train_config(settings.train, settings.horizon, settings.extra_horizons)
    spec = LSTMSpec.from_dict({**spec.to_dict(), "max_epochs": 1})
    width = spec.n_inputs

    sessions = pd.to_datetime(sessions_between("2018-11-01", LAST_SESSION))[-N_SESSIONS:]
    keys = pd.MultiIndex.from_product([symbols, sessions], names=["symbol", "session"])
    base = keys.to_frame(index=False)
    base["event_timestamp"] = closes_for(base["session"]).to_numpy()
    n = len(base)
    window = base.copy()
    window["seq"] = list(rng.uniform(0.05, 0.6, size=(n, width)))
    window["asof"] = base["event_timestamp"].astype("int64") // 10**9
    tables = {
        "market_features": base.assign(**{c: rng.normal(size=n) for c in FEATURE_COLUMNS}),
        "garch_features": base.assign(**{c: rng.uniform(0.1, 0.5, n) for c in GARCH_COLUMNS}),
        "option_features": base.assign(**{c: rng.uniform(0.01, 0.1, n) for c in OPTION_COLUMNS}),
        "lstm_window": window,
    }
    for view, table in tables.items():
        fs.write_offline_table(settings, view, table)  # type: ignore[arg-type]
    fs.apply_repo(settings)
    fs.materialize(settings, base["event_timestamp"].min().to_pydatetime(),
                   base["event_timestamp"].max().to_pydatetime())

    x = rng.uniform(0.05, 0.6, size=(1024, width))
    y = rng.uniform(0.1, 0.4, size=(1024, spec.n_outputs))
    fitted = fit_lstm(spec, x[:768], y[:768], x[768:], y[768:], accelerator="cpu")
    registry.ensure_experiment(settings, "bench_serving")  # artifacts under the home
    tags = {"session": LAST_SESSION, "window_columns": ",".join(WINDOW_COLUMNS),
            "feature_service": SERVICE}
    with mlflow.start_run():
        info = log_lstm_model(fitted, registered_model_name=settings.model_name,
                              input_example=window_frame(x[:3]), tags=tags)
    version = str(info.registered_model_version)
    registry.set_alias(settings, "champion", version)
    latest = window.groupby("symbol").tail(1).set_index("symbol")
    return {"settings": settings, "fitted": fitted, "version": version, "width": width,
            "latest": {s: np.asarray(v, dtype=np.float64) for s, v in latest["seq"].items()}}


# ------------------------------------------------------------------------------ the servers
def _child_serve(kind: str, home: str, symbols: str, port: int) -> None:
    """Body of a server child process (``bench_serving.py _serve KIND HOME SYMBOLS PORT``)."""
    import uvicorn

    if kind == "afterbell":
        from pipelines.serving import serve

        serve(settings_for(Path(home), symbols.split(",")), "127.0.0.1", port)
        return
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/empty/{symbol}")
    def empty(symbol: str) -> dict[str, str]:
        return {"symbol": symbol}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass
class Server:
    """A server child process and its port."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def _free_port() -> int:
    from pipelines.live import free_port

    return free_port()


def start_servers(state: dict[str, Any], logs: Path) -> dict[str, Server]:
    """``afterbell serve``, ``feast serve`` (tuned) and the empty endpoint, ready to answer."""
    from pipelines import feature_store as fs

    settings = state["settings"]
    env = {**os.environ, **fs.feast_env(settings), "AFTERBELL_HOME": str(settings.home),
           "PYTHONUNBUFFERED": "1"}
    symbols = ",".join(settings.universe)
    feast = Path(sys.executable).with_name("feast")
    commands = {
        "afterbell": [sys.executable, __file__, "_serve", "afterbell", str(settings.home),
                      symbols],
        "feast": [str(feast), *fs.feast_cli_args(settings), "serve", "--host", "127.0.0.1",
                  "--no-access-log", "--max-requests", "0", "--port"],
        "empty": [sys.executable, __file__, "_serve", "empty", str(settings.home), symbols],
    }
    servers: dict[str, Server] = {}
    for name, cmd in commands.items():
        port = _free_port()
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*cmd, str(port)], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        servers[name] = Server(name, port, proc, log)
    probes = {"afterbell": ("GET", "/health", None), "feast": ("GET", "/health", None),
              "empty": ("GET", "/empty/X", None)}
    deadline = time.monotonic() + 180
    for name, server in servers.items():
        method, path, body = probes[name]
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{name} server exited: see {server.log}\n"
                                   f"{server.log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                conn.request(method, path, body)
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} server not ready after 180 s: see {server.log}")
            time.sleep(0.2)
    return servers


def stop_servers(servers: dict[str, Server]) -> None:
    for server in servers.values():
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGTERM)
    for server in servers.values():
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children (MiB)."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 2**20


# ------------------------------------------------------------------------------ requests
class Client:
    """One keep-alive HTTP/1.1 connection; :meth:`call` returns (status, body)."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body, self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()


Request = Callable[[int], tuple[int, bytes]]


#: What the app reads of its feature service per request: the window view's projection (the
#: other views of the service are for training and monitoring). Feast is asked for the same.
FEATURES = [f"{WINDOW_VIEW}:seq", f"{WINDOW_VIEW}:asof"]


def feast_body(symbols: Sequence[str]) -> bytes:
    """``feast serve`` request of the features the app reads, for ``symbols``."""
    return json.dumps({"features": FEATURES, "entities": {"symbol": list(symbols)}}).encode()


def http_targets(servers: dict[str, Server], symbols: Sequence[str],
                 batch: int) -> dict[str, tuple[Request, Request]]:
    """(single, batch) request functions of each HTTP target; ``i`` picks the symbol(s)."""
    out: dict[str, tuple[Request, Request]] = {}
    n = len(symbols)
    batch_syms = list(symbols[:batch])
    ours = Client(servers["afterbell"].port)
    post_body = json.dumps({"symbols": batch_syms}).encode()
    out["afterbell serve"] = (
        lambda i: ours.call("GET", f"/predict/{symbols[i % n]}"),
        lambda i: ours.call("POST", "/predict", post_body),
    )
    feast = Client(servers["feast"].port)
    feast_single = [feast_body([s]) for s in symbols]
    feast_batch = feast_body(batch_syms)
    out["feast serve (tuned)"] = (
        lambda i: feast.call("POST", "/get-online-features", feast_single[i % n]),
        lambda i: feast.call("POST", "/get-online-features", feast_batch),
    )
    empty = Client(servers["empty"].port)
    out["empty FastAPI endpoint"] = (
        lambda i: empty.call("GET", f"/empty/{symbols[i % n]}"),
        lambda i: empty.call("GET", f"/empty/{symbols[i % n]}"),
    )
    return out


class DirectRead:
    """The online store's SQLite table of the window view, read by serialised entity key.

    This is the floor of any server: one indexed ``SELECT`` and the protobuf values parsed to a
    numpy window, in process, no HTTP and no Feast SDK.
    """

    def __init__(self, settings: Any, symbols: Sequence[str]) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        from pipelines import feature_store as fs

        store = fs.get_store(settings)
        path = Path(store.config.online_store.path)
        if not path.is_absolute():
            path = Path(store.repo_path) / path
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        tables = [r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")]
        self.table = next(t for t in tables if t.endswith(f"_{WINDOW_VIEW}"))
        version = store.config.entity_key_serialization_version
        self.keys = {
            s: serialize_entity_key(
                EntityKey(join_keys=["symbol"], entity_values=[Value(string_val=s)]),
                entity_key_serialization_version=version)
            for s in symbols
        }
        self.owner = {k: s for s, k in self.keys.items()}
        self.value = Value

    def read(self, symbols: Sequence[str]) -> dict[str, np.ndarray]:
        keys = [self.keys[s] for s in symbols]
        marks = ",".join("?" * len(keys))
        rows = self.db.execute(
            f"SELECT entity_key, feature_name, value FROM {self.table} "
            f"WHERE entity_key IN ({marks}) AND feature_name IN ('seq', 'asof')", keys)
        out: dict[str, np.ndarray] = {}
        for key, name, raw in rows:
            if name == "seq":
                val = self.value.FromString(raw)
                out[self.owner[key]] = np.asarray(val.double_list_val.val, dtype=np.float64)
        return out


def direct_targets(direct: DirectRead, fitted: Any, settings: Any, symbols: Sequence[str],
                   batch: int) -> dict[str, tuple[Request, Request]]:
    """In-process references: the Feast SDK's online read of the feature service, the bare
    SQLite read, and the bare read followed by the LSTM forward pass."""
    from pipelines import feature_store as fs

    n = len(symbols)
    batch_syms = list(symbols[:batch])
    store = fs.get_store(settings)

    def sdk(syms: Sequence[str]) -> tuple[int, bytes]:
        resp = store.get_online_features(features=FEATURES,
                                         entity_rows=[{"symbol": s} for s in syms])
        return (200 if len(resp.proto.results) == 3 else 500), b""

    def read(syms: Sequence[str]) -> tuple[int, bytes]:
        windows = direct.read(syms)
        return (200 if len(windows) == len(syms) else 503), b""

    def read_predict(syms: Sequence[str]) -> tuple[int, bytes]:
        windows = direct.read(syms)
        x = np.stack([windows[s] for s in syms]).astype(np.float32)
        fitted.predict(x)
        return 200, b""

    return {
        "Feast SDK online read (in-process)": (
            lambda i: sdk([symbols[i % n]]), lambda i: sdk(batch_syms)),
        "direct SQLite read (in-process)": (
            lambda i: read([symbols[i % n]]), lambda i: read(batch_syms)),
        "direct SQLite read + LSTM (in-process)": (
            lambda i: read_predict([symbols[i % n]]), lambda i: read_predict(batch_syms)),
    }


@dataclass
class Latency:
    """Latencies of one target (ms)."""

    n: int
    errors: int
    p50: float
    p90: float
    p99: float
    max: float
    over_50ms: int

    @classmethod
    def of(cls, samples: Sequence[float], errors: int) -> Latency:
        a = np.asarray(samples, dtype=np.float64)
        return cls(n=len(a), errors=errors, p50=float(np.percentile(a, 50)),
                   p90=float(np.percentile(a, 90)), p99=float(np.percentile(a, 99)),
                   max=float(a.max()), over_50ms=int((a > 50.0).sum()))


def measure(targets: dict[str, Request], total: int, block: int, warmup: int
            ) -> dict[str, Latency]:
    """``total`` requests per target, interleaved in blocks of ``block`` (after ``warmup``)."""
    for call in targets.values():
        for i in range(warmup):
            call(i)
    samples: dict[str, list[float]] = {name: [] for name in targets}
    errors = dict.fromkeys(targets, 0)
    clock = time.perf_counter_ns
    done = 0
    while done < total:
        step = min(block, total - done)
        for name, call in targets.items():
            out = samples[name]
            for i in range(done, done + step):
                t0 = clock()
                status, _ = call(i)
                out.append((clock() - t0) / 1e6)
                if status != 200:
                    errors[name] += 1
        done += step
    return {name: Latency.of(samples[name], errors[name]) for name in targets}


#: One request of a load client: (method, path, body).
Call = tuple[str, str, bytes | None]


def _client_worker(port: int, calls: list[Call], seconds: float, count: int,
                   go: Any, queue: Any) -> None:
    """A load client process: makes ``calls`` round robin for ``seconds`` (0: no limit) or
    ``count`` requests (0: no limit), from the moment ``go`` is set (every client is then
    started and connected)."""
    client = Client(port)
    client.call(*calls[0])
    statuses: dict[int, int] = {}
    samples: list[float] = []
    queue.put({"ready": True})
    go.wait()
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    clock = time.perf_counter_ns
    while (count <= 0 or i < count) and (seconds <= 0 or time.perf_counter() < deadline):
        t0 = clock()
        try:
            status, _ = client.call(*calls[i % len(calls)])
        except OSError:
            status = -1
            client = Client(port)
        samples.append((clock() - t0) / 1e6)
        statuses[status] = statuses.get(status, 0) + 1
        i += 1
    queue.put({"statuses": statuses, "samples": samples, "start": start,
               "end": time.perf_counter()})


@dataclass
class Throughput:
    """Requests of ``clients`` concurrent client processes over ``seconds``."""

    clients: int
    seconds: float
    requests: int
    errors: int
    per_second: float
    p50: float
    p99: float
    max: float


def run_clients(target: Callable[..., None], args_of: Callable[[int], tuple[Any, ...]],
                clients: int, poll: Callable[[], None] | None = None) -> tuple[
                    dict[int, int], list[float], float]:
    """Start ``clients`` worker processes, release them together once all are connected and wait
    for them; (statuses, latency samples, seconds from the first start to the last end)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=target, args=(*args_of(k), go, queue)) for k in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        queue.get(timeout=120)  # {"ready": True} once connected
    go.set()
    results: list[dict[str, Any]] = []
    while len(results) < clients:
        try:
            results.append(queue.get(timeout=2.0))
        except Exception:
            if poll is not None:
                poll()
            if not any(p.is_alive() for p in procs) and queue.empty():
                raise RuntimeError("a load client died without reporting") from None
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    for p in procs:
        p.join()
    statuses: dict[int, int] = {}
    samples: list[float] = []
    for r in results:
        samples.extend(r["samples"])
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return statuses, samples, wall


def throughput(statuses: dict[int, int], samples: list[float], seconds: float,
               clients: int) -> Throughput:
    a = np.asarray(samples)
    n = int(sum(statuses.values()))
    return Throughput(clients=clients, seconds=round(seconds, 2), requests=n,
                      errors=n - statuses.get(200, 0), per_second=n / seconds,
                      p50=float(np.percentile(a, 50)), p99=float(np.percentile(a, 99)),
                      max=float(a.max()))


# ------------------------------------------------------------------------------ the run
@dataclass
class Report:
    config: dict[str, Any]
    machine: dict[str, Any]
    model: dict[str, Any]
    single: dict[str, Latency] = field(default_factory=dict)
    batch: dict[str, Latency] = field(default_factory=dict)
    throughput: dict[str, Throughput] = field(default_factory=dict)
    memory: list[tuple[int, float]] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)


def check_answers(servers: dict[str, Server], state: dict[str, Any]) -> dict[str, Any]:
    """The servers answer what is measured: afterbell's forecasts equal the LSTM's on the stored
    windows, feast returns the same windows present."""
    symbols = list(state["settings"].universe)
    fitted = state["fitted"]
    x = np.stack([state["latest"][s] for s in symbols]).astype(np.float32)
    expected = np.asarray(fitted.predict(x), dtype=np.float64)
    ours = Client(servers["afterbell"].port)
    status, body = ours.call("POST", "/predict", json.dumps({"symbols": symbols}).encode())
    if status != 200:
        raise RuntimeError(f"afterbell POST /predict answered {status}: {body[:500]!r}")
    answer = json.loads(body)
    preds = {p["symbol"]: p["forecast"] for p in answer["predictions"]}
    got = np.array([preds[s] for s in symbols], dtype=np.float64)
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-7):
        raise RuntimeError(f"afterbell forecasts differ from the LSTM's: {got} vs {expected}")
    status, body = ours.call("GET", f"/predict/{symbols[0]}")
    if status != 200:
        raise RuntimeError(f"afterbell GET answered {status}: {body[:500]!r}")
    feast = Client(servers["feast"].port)
    status, body = feast.call("POST", "/get-online-features", feast_body(symbols))
    if status != 200:
        raise RuntimeError(f"feast serve answered {status}: {body[:500]!r}")
    fanswer = json.loads(body)
    names = fanswer["metadata"]["feature_names"]
    seq = fanswer["results"][names.index("seq")]
    if any(st != "PRESENT" for st in seq["statuses"]) or not np.allclose(
            np.asarray(seq["values"][0]), state["latest"][symbols[0]]):
        raise RuntimeError("feast serve did not return the stored windows")
    health = json.loads(ours.call("GET", "/health")[1])
    return {"afterbell_version": health["model"]["version"], "feast_features": names,
            "symbols": len(symbols), "window_values": int(x.shape[1])}


def run(cfg: Config, keep: Path | None) -> Report:
    import torch

    torch.set_num_threads(1)  # the in-process floor's forward pass, as the server does
    tmp = Path(tempfile.mkdtemp(prefix="afterbell_bench_serving_"))
    home = keep or tmp / "home"
    saved_home = os.environ.get("AFTERBELL_HOME")
    os.environ["AFTERBELL_HOME"] = str(home)
    servers: dict[str, Server] = {}
    try:
        t0 = time.perf_counter()
        state = build_home(home, cfg)
        print(f"[bench] home built in {time.perf_counter() - t0:.1f} s "
              f"({cfg.symbols} symbols, champion v{state['version']}, "
              f"window of {state['width']} values)", flush=True)
        servers = start_servers(state, tmp)
        checks = check_answers(servers, state)
        symbols = list(state["settings"].universe)
        report = Report(
            config=asdict(cfg),
            machine={"python": platform.python_version(), "cpus": os.cpu_count(),
                     "platform": platform.platform(), "torch_threads": torch.get_num_threads()},
            model={"name": state["settings"].model_name, "version": state["version"],
                   "window_values": state["width"], "feature_service": SERVICE},
            checks=checks,
        )
        pid = servers["afterbell"].pid
        served = 0
        report.memory.append((served, rss_mib(pid)))

        http = http_targets(servers, symbols, cfg.batch)
        direct = direct_targets(DirectRead(state["settings"], symbols), state["fitted"],
                                state["settings"], symbols, cfg.batch)
        every = {**http, **direct}
        print(f"[bench] GET one symbol: {cfg.get_requests} requests per target", flush=True)
        report.single = measure({k: v[0] for k, v in every.items()}, cfg.get_requests,
                                cfg.block, cfg.warmup)
        served += cfg.get_requests + cfg.warmup
        batch_targets = {k: v[1] for k, v in every.items() if k != "empty FastAPI endpoint"}
        print(f"[bench] POST {cfg.batch} symbols: {cfg.post_requests} requests per target",
              flush=True)
        report.batch = measure(batch_targets, cfg.post_requests, max(cfg.block // 4, 1),
                               cfg.warmup // 4)
        served += cfg.post_requests + cfg.warmup // 4
        report.memory.append((served, rss_mib(pid)))

        paths: list[Call] = [("GET", f"/predict/{s}", None) for s in symbols]
        print(f"[bench] throughput: {cfg.clients} clients x {cfg.seconds:g} s", flush=True)
        statuses, samples, wall = run_clients(
            _client_worker,
            lambda k: (servers["afterbell"].port, paths[k:] + paths[:k], cfg.seconds, 0),
            cfg.clients)
        report.throughput["afterbell serve"] = throughput(statuses, samples, wall, cfg.clients)
        served += report.throughput["afterbell serve"].requests
        report.memory.append((served, rss_mib(pid)))
        bodies: list[Call] = [("POST", "/get-online-features", feast_body([s]))
                              for s in symbols]
        statuses, samples, wall = run_clients(
            _client_worker,
            lambda k: (servers["feast"].port, bodies[k:] + bodies[:k], cfg.seconds, 0),
            cfg.clients)
        report.throughput["feast serve (tuned)"] = throughput(statuses, samples, wall,
                                                              cfg.clients)

        left = max(cfg.memory_requests - served, 0)
        print(f"[bench] memory: {left} more requests to reach {cfg.memory_requests}", flush=True)
        if left:
            per = -(-left // cfg.clients)
            start = served
            t_mem = time.perf_counter()

            def sample() -> None:
                # requests answered so far are not known until the clients report: sample RSS
                # against the elapsed fraction of the run, refined below.
                report.memory.append((-int(time.perf_counter() - t_mem), rss_mib(pid)))

            statuses, _, _ = run_clients(
                _client_worker, lambda k: (servers["afterbell"].port,
                                           paths[k:] + paths[:k], 0.0, per),
                cfg.clients, poll=sample)
            served = start + int(sum(statuses.values()))
            errors = served - start - statuses.get(200, 0)
            report.checks["memory_phase_errors"] = errors
        report.memory.append((served, rss_mib(pid)))
        report.checks["afterbell_metrics_requests"] = _metrics_total(servers["afterbell"].port)
        return report
    finally:
        stop_servers(servers)
        if saved_home is None:
            os.environ.pop("AFTERBELL_HOME", None)
        else:
            os.environ["AFTERBELL_HOME"] = saved_home
        shutil.rmtree(tmp, ignore_errors=True)


def _metrics_total(port: int) -> int:
    """Requests the afterbell app counted itself (its ``/metrics``), all routes."""
    _, body = Client(port).call("GET", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("afterbell_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


# ------------------------------------------------------------------------------ output
def _row(name: str, lat: Latency) -> str:
    return (f"  {name:<40} {lat.p50:7.3f} {lat.p90:7.3f} {lat.p99:7.3f} {lat.max:8.2f} "
            f"{lat.over_50ms:6d} {lat.errors:6d}")


def _table(title: str, rows: dict[str, Latency]) -> list[str]:
    head = (f"  {'target':<40} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8} {'>50ms':>6} "
            f"{'errors':>6}")
    return [title, head, *(_row(k, v) for k, v in rows.items())]


def _target(met: bool) -> str:
    return "met" if met else "NOT MET"


def render(report: Report) -> str:
    cfg = report.config
    ours, feast = "afterbell serve", "feast serve (tuned)"
    floor = "direct SQLite read (in-process)"
    lines = [
        f"afterbell serving benchmark: {report.checks['symbols']} symbols, "
        f"{report.model['name']} v{report.model['version']} (window of "
        f"{report.model['window_values']} values, feature service "
        f"{report.model['feature_service']}), "
        f"{report.machine['cpus']} CPUs, Python {report.machine['python']}",
        "latencies in ms, measured by a keep-alive client in this process (it shares the cores)",
        "",
        *_table(f"GET /predict/{{symbol}}: one symbol, {cfg['get_requests']} requests per "
                "target (feast: POST /get-online-features of the same 2 features)", report.single),
        "",
        *_table(f"POST /predict: {cfg['batch']} symbols, {cfg['post_requests']} requests per "
                "target", report.batch),
        "",
    ]
    s, b = report.single, report.batch
    lines += [
        "ratios",
        f"  GET  p50 afterbell / feast {s[ours].p50 / s[feast].p50:5.2f}   "
        f"p99 {s[ours].p99 / s[feast].p99:5.2f}   "
        f"p99 afterbell / SQLite floor {s[ours].p99 / s[floor].p99:5.2f}",
        f"  POST p50 afterbell / feast {b[ours].p50 / b[feast].p50:5.2f}   "
        f"p99 {b[ours].p99 / b[feast].p99:5.2f}   "
        f"p99 afterbell / SQLite floor {b[ours].p99 / b[floor].p99:5.2f}",
        "",
        "throughput (GET one symbol, client processes on the same 2 cores)",
    ]
    for name, t in report.throughput.items():
        lines.append(f"  {name:<24} {t.clients} clients x {t.seconds:5.1f} s: {t.requests:7d} "
                     f"requests, {t.per_second:7.0f}/s, errors {t.errors}, "
                     f"p50 {t.p50:.2f} ms, p99 {t.p99:.2f} ms, max {t.max:.1f} ms")
    mem = [(n, r) for n, r in report.memory if n >= 0]
    lines += ["", "afterbell serve resident memory (MiB, process and children) by requests "
              "answered"]
    lines.append("  " + ", ".join(f"{n:,}: {r:.0f}" for n, r in mem))
    during = [r for n, r in report.memory]
    lines.append(f"  max during the run {max(during):.0f} MiB; the app counted "
                 f"{report.checks.get('afterbell_metrics_requests', 0):,} requests in /metrics")
    t_ours = report.throughput.get(ours)
    last_n, last_rss = mem[-1]
    lines += [
        "",
        "issue 7 targets",
        f"  GET p99 <= 1.5 ms and below feast's: {s[ours].p99:.3f} vs {s[feast].p99:.3f} ms: "
        f"{_target(s[ours].p99 <= 1.5 and s[ours].p99 < s[feast].p99)}",
        f"  no GET over 50 ms in {s[ours].n}: max {s[ours].max:.1f} ms: "
        f"{_target(s[ours].over_50ms == 0)}",
        f"  POST {cfg['batch']} symbols p99 <= 3 ms: {b[ours].p99:.3f} ms: "
        f"{_target(b[ours].p99 <= 3.0)}",
        f"  >= 1,000 req/s with {cfg['clients']} clients, zero errors: "
        + (f"{t_ours.per_second:.0f}/s, {t_ours.errors} errors: "
           f"{_target(t_ours.per_second >= 1000 and t_ours.errors == 0)}" if t_ours else "n/a"),
        f"  < 1 GiB resident after {last_n:,} requests: {last_rss:.0f} MiB: "
        f"{_target(last_rss < 1024 and last_n >= cfg['memory_requests'])}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_serve"]:
        _child_serve(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: few requests, 2 s of load, 3,000 requests for memory")
    parser.add_argument("--symbols", type=int, default=25)
    parser.add_argument("--requests", type=int, help="GET requests per target (default 6000)")
    parser.add_argument("--seconds", type=float, help="throughput phase per server (default 20)")
    parser.add_argument("--memory-requests", type=int,
                        help="requests the app answers before the last RSS reading (100000)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep", type=Path, help="build the home here and keep it")
    args = parser.parse_args(argv)
    cfg = Config(symbols=args.symbols)
    if args.quick:
        cfg = Config(symbols=args.symbols, get_requests=400, post_requests=100, warmup=50,
                     block=100, seconds=2.0, memory_requests=3000)
    overrides = {k: v for k, v in {"get_requests": args.requests, "seconds": args.seconds,
                                   "memory_requests": args.memory_requests}.items()
                 if v is not None}
    if overrides:
        cfg = Config(**{**asdict(cfg), **overrides})
    if cfg.symbols < cfg.batch:
        parser.error(f"--symbols must be at least the batch size {cfg.batch}")
    report = run(cfg, args.keep)
    print()
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
        print(f"\n[bench] figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
