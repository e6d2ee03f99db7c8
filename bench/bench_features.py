"""Throughput benchmark of the feature stage and of materialisation (issue 4).

Run from the checkout::

    .venv/bin/python bench/bench_features.py            # default sizes, about a minute or two
    .venv/bin/python bench/bench_features.py --full     # bigger panel and 100k entities
    .venv/bin/python bench/bench_features.py --help

Everything is written under a temporary ``AFTERBELL_HOME`` (removed at the end unless
``--keep``); Redis keys go to db 7 (``--redis``) under the Feast project ``afterbell_bench`` and
are deleted afterwards. Nothing asserts on speed: the figures are printed (and written as JSON
with ``--json PATH``). See ``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import io
import json
import logging
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipelines import calendar, lake, stages  # noqa: E402
from pipelines import feature_store as fs  # noqa: E402
from pipelines import features as feat  # noqa: E402
from pipelines.schema import BAR_COLUMNS  # noqa: E402
from pipelines.settings import Settings  # noqa: E402
from pipelines.sources import load_replay_panel  # noqa: E402

SESSION = date(2018, 12, 31)  # last session every replay symbol covers
REDIS_PROJECT = "afterbell_bench"
log = logging.getLogger("bench")


# ------------------------------------------------------------------------------ utilities
@dataclass
class Timing:
    """Seconds of every repeat of one measurement."""

    runs: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Timing, Any]:
    """Run ``fn`` ``repeat`` times; the seconds of each run and the last result."""
    t = Timing()
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t.runs.append(time.perf_counter() - t0)
    return t, out


@contextlib.contextmanager
def accumulate(owner: Any, name: str, into: list[float]) -> Iterator[None]:
    """Wrap ``owner.name`` (a function) so that the seconds of every call are appended to
    ``into``; restored on exit."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t0)

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def rate(rows: float, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("nan")


# ------------------------------------------------------------------------------ data
def build_panel(n_symbols: int, start: date, end: date, seed: int) -> pd.DataFrame:
    """Canonical bars of the real replay symbols in ``[start, end]``, plus synthetic ones.

    Synthetic symbol ``k`` (``Z00000``, ``Z00001``, ...) copies the session calendar of real
    symbol ``k % 22`` and bootstraps its days (seeded): each session gets the log return of the
    close of a random real day, and that day's open/high/low as ratios to its close and its volume
    (NaN where the real symbol has none: skfolio's stocks only have adjusted closes).
    """
    real = load_replay_panel()
    real = real[(real["session"] >= pd.Timestamp(start)) & (real["session"] <= pd.Timestamp(end))]
    real = real.loc[:, list(BAR_COLUMNS)].reset_index(drop=True)
    bases = sorted(real["symbol"].unique())
    if n_symbols <= len(bases):
        keep = bases[:n_symbols]
        return real[real["symbol"].isin(keep)].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    by_symbol = {s: g.sort_values("session") for s, g in real.groupby("symbol")}
    frames = [real]
    for k in range(n_symbols - len(bases)):
        g = by_symbol[bases[k % len(bases)]]
        close = g["close"].to_numpy(dtype="float64")
        n = len(close)
        if n < 3:
            continue
        pick = rng.integers(1, n, size=n)
        ret = np.log(close[pick] / close[pick - 1])
        ret[0] = 0.0
        price = close[0] * np.exp(np.cumsum(ret))
        bar = {
            "symbol": f"Z{k:05d}",
            "session": g["session"].to_numpy(),
            "close": price,
            "adj_close": np.where(g["adj_close"].notna().to_numpy(), price, np.nan),
        }
        for col in ("open", "high", "low"):
            bar[col] = price * (g[col].to_numpy(dtype="float64")[pick] / close[pick])
        bar["volume"] = g["volume"].to_numpy(dtype="float64")[pick]
        frames.append(pd.DataFrame(bar).loc[:, list(BAR_COLUMNS)])
    panel = pd.concat(frames, ignore_index=True)
    return panel.sort_values(["session", "symbol"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------ TA-Lib calls
@dataclass
class TalibCall:
    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _TalibRecorder(types.SimpleNamespace):
    """Stands in for the ``talib`` module: records every indicator call, then makes it."""

    def __init__(self, real: types.ModuleType, calls: list[TalibCall]) -> None:
        super().__init__()
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_calls", calls)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if name.isupper() and callable(attr) and not isinstance(attr, type):
            return _recording(name, attr, self._calls)
        return attr


def _recording(name: str, fn: Callable[..., Any], calls: list[TalibCall]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(TalibCall(name, fn, args, kwargs))
        return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def record_talib() -> Iterator[list[TalibCall]]:
    """Record the TA-Lib calls that any ``pipelines`` module makes in the block.

    Both ``import talib`` (the module attribute is swapped for a recorder) and
    ``from talib import RSI`` (the function attribute is swapped for a recording wrapper) are
    caught, so the benchmark keeps up with whatever indicators ``compute_features`` computes.
    """
    import talib

    calls: list[TalibCall] = []
    functions = {id(getattr(talib, n)): n for n in dir(talib) if n.isupper()}
    patched: list[tuple[types.ModuleType, str, Any]] = []
    for mod_name, mod in list(sys.modules.items()):
        if not (mod_name == "pipelines" or mod_name.startswith("pipelines.")) or mod is None:
            continue
        for attr, value in list(vars(mod).items()):
            if value is talib:
                patched.append((mod, attr, value))
                setattr(mod, attr, _TalibRecorder(talib, calls))
            elif id(value) in functions and callable(value):
                patched.append((mod, attr, value))
                setattr(mod, attr, _recording(functions[id(value)], value, calls))
    try:
        yield calls
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)


def replay_talib(calls: list[TalibCall]) -> None:
    """Make the recorded TA-Lib calls again, alone (same functions, arrays and parameters)."""
    for c in calls:
        c.fn(*c.args, **c.kwargs)


# ------------------------------------------------------------------------------ feature stage
def feature_stage(s: Settings, session: date, repeat: int) -> dict[str, Any]:
    """Time the feature stage end to end and its parts on the lake of ``s``."""
    d = session.isoformat()
    features_dir = s.lake_dir / "features"

    def fresh_stage() -> tuple[float, float, int]:
        shutil.rmtree(features_dir, ignore_errors=True)
        t0 = time.perf_counter()
        stages.build_features(d, s)
        t1 = time.perf_counter()
        table = lake.read_table(s.lake_dir, "features", end=session)
        fs.write_offline_table(s, "market_features", table)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, len(table)

    e2e, stage_only, offline = Timing(), Timing(), Timing()
    rows = 0
    for _ in range(repeat):
        a, b, rows = fresh_stage()
        stage_only.runs.append(a)
        offline.runs.append(b)
        e2e.runs.append(a + b)
    nightly, _ = timed(lambda: stages.build_features(d, s), repeat)

    # The parts, with the same functions the stage calls.
    read_bars, bars = timed(lambda: lake.read_table(s.lake_dir, "bars", end=session), repeat)
    # Same inputs as the stage gives it (the market features take VIX where it supports it).
    extra: dict[str, Any] = {}
    if "vix" in inspect.signature(feat.compute_features).parameters and hasattr(feat, "load_vix"):
        extra["vix"] = feat.load_vix()
    compute, frame = timed(lambda: feat.compute_features(bars, **extra), repeat)
    with record_talib() as calls:
        feat.compute_features(bars, **extra)
    talib_t, _ = timed(lambda: replay_talib(calls), max(repeat, 5))

    def write_parts() -> None:
        shutil.rmtree(s.lake_dir / "features_bench", ignore_errors=True)
        lake.write_partitions(s.lake_dir, "features_bench", frame)

    write_t, _ = timed(write_parts, repeat)
    shutil.rmtree(s.lake_dir / "features_bench", ignore_errors=True)
    read_feats, table = timed(lambda: lake.read_table(s.lake_dir, "features", end=session), repeat)
    write_off, _ = timed(lambda: fs.write_offline_table(s, "market_features", table), repeat)

    per_symbol: dict[str, int] = {}
    for c in calls:
        per_symbol[c.name] = per_symbol.get(c.name, 0) + 1
    return {
        "rows": rows,
        "symbols": int(bars["symbol"].nunique()),
        "sessions": int(bars["session"].nunique()),
        "partitions": len(lake.partition_sessions(s.lake_dir, "features")),
        "feature_columns": [c for c in frame.columns if c not in ("symbol", "session")],
        "talib_calls": per_symbol,
        "talib_calls_total": len(calls),
        "timings": {
            "end_to_end": e2e,
            "stage_build_features": stage_only,
            "stage_offline_table": offline,
            "nightly_build_features": nightly,
            "read_bars": read_bars,
            "compute_features": compute,
            "raw_talib": talib_t,
            "write_partitions": write_t,
            "read_features": read_feats,
            "write_offline_table": write_off,
        },
    }


def profile_stage(s: Settings, session: date, top: int) -> str:
    """cProfile of one fresh feature stage (build_features + the offline table)."""
    shutil.rmtree(s.lake_dir / "features", ignore_errors=True)
    prof = cProfile.Profile()
    prof.enable()
    stages.build_features(session.isoformat(), s)
    table = lake.read_table(s.lake_dir, "features", end=session)
    fs.write_offline_table(s, "market_features", table)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ------------------------------------------------------------------------------ materialisation
def _entity_frame(n: int, session: date, columns: tuple[str, ...], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp(session)
    frame = pd.DataFrame(
        {
            "symbol": [f"E{i:07d}" for i in range(n)],
            "session": np.full(n, ts, dtype="datetime64[ns]"),
            "event_timestamp": calendar.session_close(session),
        }
    )
    for col in columns:
        frame[col] = rng.standard_normal(n)
    return frame


def _repo_copy(s: Settings, name: str, online_store: str) -> Path:
    """A copy of ``feature_repo/`` whose ``feature_store.yaml`` uses ``online_store``
    (a YAML mapping written inline) and a registry of its own under the bench home."""
    repo = s.home / f"repo_{name}"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(REPO_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    project = REDIS_PROJECT if name == "redis" else "afterbell"
    (repo / "feature_store.yaml").write_text(
        f"project: {project}\n"
        "provider: local\n"
        f"registry: {s.feast_dir / f'registry_{name}.db'}\n"
        f"online_store: {online_store}\n"
        "offline_store:\n    type: file\n"
        "entity_key_serialization_version: 3\n"
        "auth:\n    type: no_auth\n"
    )
    return repo


def _materialize_with(
    store: Any, start: Any, end: Any, repeat: int
) -> tuple[Timing, Timing, Timing]:
    """Time ``store.materialize`` of ``market_features`` and, inside it, Feast's arrow-to-proto
    conversion and the online store's ``online_write_batch``."""
    from feast.infra.compute_engines.local import nodes

    total, convert, write = Timing(), Timing(), Timing()
    online = store._get_provider().online_store
    for _ in range(repeat):
        conv: list[float] = []
        wr: list[float] = []
        with (
            accumulate(nodes, "_convert_arrow_to_proto", conv),
            accumulate(online, "online_write_batch", wr),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            t0 = time.perf_counter()
            store.materialize(start_date=start, end_date=end, feature_views=["market_features"])
            total.runs.append(time.perf_counter() - t0)
        convert.runs.append(sum(conv))
        write.runs.append(sum(wr))
    return total, convert, write


def _write_only(s: Settings, stock: Any, fast: Any, repeat: int) -> dict[str, Timing]:
    """``online_write_batch`` alone, stock and proposed store alternately, on the same rows
    converted once by Feast (upserts over the rows already there)."""
    import pyarrow.parquet as pq
    from feast.utils import _convert_arrow_to_proto

    view = stock.get_feature_view("market_features")
    keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
    table = pq.read_table(fs.offline_path(s, "market_features")).combine_chunks()
    convert, data = timed(lambda: _convert_arrow_to_proto(table, view, keys), 1)
    out = {"convert": convert, "stock": Timing(), "fast": Timing()}
    for _ in range(repeat):
        for name, st in (("stock", stock), ("fast", fast)):
            online = st._get_provider().online_store
            t0 = time.perf_counter()
            online.online_write_batch(st.config, view, data, None)
            out[name].runs.append(time.perf_counter() - t0)
    return out


def _sqlite_rows(path: Path, table: str) -> tuple[int, int, list[tuple[Any, ...]]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        n_rows = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        n_keys = conn.execute(f'SELECT count(DISTINCT entity_key) FROM "{table}"').fetchone()[0]
        sample = conn.execute(
            "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts"
            f' FROM "{table}" ORDER BY entity_key, feature_name'
        ).fetchall()
    return n_rows, n_keys, sample


def materialisation(
    s: Settings, n_entities: int, repeat: int, seed: int, redis_url: str | None
) -> dict[str, Any]:
    """Materialise one session of ``n_entities`` symbols of ``market_features`` online."""
    from feast import FeatureStore

    columns = fs.VIEW_COLUMNS["market_features"]
    frame = _entity_frame(n_entities, SESSION, columns, seed)
    fs.write_offline_table(s, "market_features", frame)
    start = calendar.session_open(SESSION).to_pydatetime() - timedelta(days=1)
    end = calendar.session_close(SESSION).to_pydatetime()
    results: dict[str, Any] = {"entities": n_entities}

    # 1. The embedded profile exactly as the pipeline runs it.
    t_apply0 = time.perf_counter()
    fs.apply_repo(s)
    results["apply_seconds"] = time.perf_counter() - t_apply0
    store = fs.get_store(s)
    n_features = len(store.get_feature_view("market_features").features)
    results["features_per_entity"] = n_features

    def pipeline_materialize() -> None:
        fs.materialize(s, start, end, views=["market_features"])

    pipe_t, _ = timed(pipeline_materialize, repeat)
    db = s.feast_dir / "online.db"
    table = "afterbell_market_features"
    n_rows, n_keys, stock_rows = _sqlite_rows(db, table)
    results["sqlite_pipeline"] = {"total": pipe_t, "online_rows": n_rows, "entities_online": n_keys}
    # The same store, with the inner split (conversion vs write).
    total, conv, write = _materialize_with(store, start, end, repeat)
    results["sqlite"] = {"total": total, "convert": conv, "write": write}

    # 2. The proposed batched SQLite store (bench/fast_sqlite.py), same data.
    sys.path.insert(0, str(BENCH_DIR))
    try:
        fast_db = s.feast_dir / "online_fast.db"
        repo = _repo_copy(
            s, "fast", f"{{type: fast_sqlite.FastSqliteOnlineStore, path: {fast_db}}}"
        )
        with contextlib.redirect_stdout(io.StringIO()):
            fast = FeatureStore(repo_path=str(repo))
            fast.apply(fs.load_definitions(s))
        total, conv, write = _materialize_with(fast, start, end, repeat)
        f_rows, f_keys, fast_rows = _sqlite_rows(fast_db, table)
        results["sqlite_fast"] = {
            "total": total,
            "convert": conv,
            "write": write,
            "online_rows": f_rows,
            "entities_online": f_keys,
            "identical_to_stock": fast_rows == stock_rows,
        }
        results["write_only"] = _write_only(s, store, fast, max(repeat, 3))
    finally:
        sys.path.remove(str(BENCH_DIR))

    # 3. Redis (a temporary repo of our own; db and project of our own).
    if redis_url:
        results["redis"] = _redis_materialisation(s, redis_url, start, end, repeat)
    return results


def _redis_materialisation(
    s: Settings, url: str, start: Any, end: Any, repeat: int
) -> dict[str, Any]:
    import redis
    from feast import FeatureStore

    host_port, _, params = url.partition(",")
    host, _, port = host_port.partition(":")
    db = int(dict(p.split("=", 1) for p in params.split(",") if "=" in p).get("db", 0))
    client = redis.Redis(host=host, port=int(port or 6379), db=db)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        return {"error": f"redis at {url} unreachable: {exc}"}
    suffix = REDIS_PROJECT.encode()

    def our_keys() -> list[bytes]:
        return [k for k in client.scan_iter(count=10_000) if k.endswith(suffix)]

    repo = _repo_copy(s, "redis", f'{{type: redis, connection_string: "{url}"}}')
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            store = FeatureStore(repo_path=str(repo))
            store.apply(fs.load_definitions(s))
        total, conv, write = _materialize_with(store, start, end, repeat)
        keys = our_keys()
        return {"total": total, "convert": conv, "write": write, "entities_online": len(keys)}
    finally:
        for k in our_keys():
            client.delete(k)
        client.close()


# ------------------------------------------------------------------------------ report
def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def report(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    add = lines.append
    add(
        f"afterbell bench - {platform.node()} ({os.cpu_count()} cpu), "
        f"python {platform.python_version()}"
    )
    add(f"timings: best of {args.repeat} (median in brackets); noisy on a shared machine")
    if "features" in res:
        f = res["features"]
        t = f["timings"]
        rows = f["rows"]
        add("")
        add(
            f"FEATURE STAGE  {f['symbols']} symbols x {f['sessions']} sessions = {rows:,} rows, "
            f"{f['partitions']:,} session partitions"
        )
        calls = ", ".join(f"{k} x{v}" for k, v in sorted(f["talib_calls"].items()))
        add(f"  TA-Lib calls recorded in compute_features: {calls}")
        add(f"  {'measure':<44}{'seconds':>18}{'rows/s':>16}")

        def row(label: str, key: str) -> None:
            tm = t[key]
            add(
                f"  {label:<44}{tm.best:>9.3f} ({tm.median:>6.3f})"
                f"{_fmt_rate(rate(rows, tm.best)):>16}"
            )

        row("end to end (stage + offline table)", "end_to_end")
        row("  build_features (fresh lake)", "stage_build_features")
        row("  offline table (read features + write)", "stage_offline_table")
        row("nightly build_features (lake already full)", "nightly_build_features")
        add("  breakdown (same functions, called one by one):")
        row("  read bars (lake.read_table)", "read_bars")
        row("  compute_features", "compute_features")
        row("    of which raw TA-Lib calls alone", "raw_talib")
        row("  write feature partitions", "write_partitions")
        row("  read features (lake.read_table)", "read_features")
        row("  write_offline_table(market_features)", "write_offline_table")
        other = t["stage_build_features"].best - sum(
            t[k].best for k in ("read_bars", "compute_features", "write_partitions")
        )
        add(f"  {'  rest of build_features (checks, records)':<44}{other:>9.3f}")
        raw = rate(rows, t["raw_talib"].best)
        e2e = rate(rows, t["end_to_end"].best)
        comp = rate(rows, t["compute_features"].best)
        add(f"  RATIO end-to-end / raw TA-Lib       = {e2e / raw:.4f}   (target >= 0.5)")
        add(f"  RATIO compute_features / raw TA-Lib = {comp / raw:.4f}")
    if "materialize" in res:
        m = res["materialize"]
        n, k = m["entities"], m["features_per_entity"]
        add("")
        add(
            f"MATERIALISATION  market_features, {n:,} entities x 1 session, {k} features/entity; "
            f"entity rows = entities, online-table rows = entities x features"
        )
        add(
            f"  {'store':<46}{'seconds':>18}{'entity rows/s':>15}{'table rows/s':>15}"
            f"{'convert s':>11}{'write s':>9}"
        )

        def mrow(label: str, r: dict[str, Any]) -> None:
            tm = r["total"]
            conv = f"{r['convert'].best:>11.3f}" if "convert" in r else f"{'':>11}"
            wr = f"{r['write'].best:>9.3f}" if "write" in r else f"{'':>9}"
            add(
                f"  {label:<46}{tm.best:>9.3f} ({tm.median:>6.3f})"
                f"{_fmt_rate(rate(n, tm.best)):>15}{_fmt_rate(rate(n * k, tm.best)):>15}{conv}{wr}"
            )

        mrow("sqlite, pipelines.feature_store.materialize", m["sqlite_pipeline"])
        mrow("sqlite, store.materialize", m["sqlite"])
        if "sqlite_fast" in m:
            mrow("sqlite, proposed FastSqliteOnlineStore", m["sqlite_fast"])
        if "redis" in m:
            if "error" in m["redis"]:
                add(f"  redis: {m['redis']['error']}")
            else:
                mrow("redis (db of --redis)", m["redis"])
        if "write_only" in m:
            w = m["write_only"]
            add("  parts alone, on the same rows converted once:")
            mrow("  Feast arrow-to-proto conversion", {"total": w["convert"]})
            mrow("  online_write_batch, stock SqliteOnlineStore", {"total": w["stock"]})
            mrow("  online_write_batch, FastSqliteOnlineStore", {"total": w["fast"]})
        sp = m["sqlite_pipeline"]
        add(
            f"  check: stock sqlite table holds {sp['online_rows']:,} rows for "
            f"{sp['entities_online']:,} entities"
            + (
                f"; fast store identical: {m['sqlite_fast']['identical_to_stock']}"
                if "sqlite_fast" in m
                else ""
            )
            + (
                f"; redis entities: {m['redis']['entities_online']:,}"
                if "redis" in m and "entities_online" in m["redis"]
                else ""
            )
        )
        ent = rate(n, sp["total"].best)
        add(
            f"  TARGET >= 50,000 rows/s into SQLite: entity rows {_fmt_rate(ent)}/s "
            f"({'meets' if ent >= 50_000 else 'misses'}), online-table rows "
            f"{_fmt_rate(ent * k)}/s ({'meets' if ent * k >= 50_000 else 'misses'})"
        )
    return lines


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Timing):
        return {"best": obj.best, "median": obj.median, "runs": obj.runs}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ------------------------------------------------------------------------------ main
_T0 = time.perf_counter()


def _progress(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, help="symbols in the panel (22 real + synthetic)")
    p.add_argument("--years", type=int, help="years of sessions ending 2018-12-31")
    p.add_argument("--entities", type=int, help="entities materialised (one session)")
    p.add_argument("--repeat", type=int, default=2, help="repeats per measure (best is shown)")
    p.add_argument("--full", action="store_true", help="bigger sizes (several minutes)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--redis", default="127.0.0.1:6379,db=7", help="Feast connection string")
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--skip-materialize", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile top N")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.add_argument("--home", type=Path, help="bench home (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the bench home")
    args = p.parse_args(argv)
    args.symbols = args.symbols or (200 if args.full else 50)
    args.years = args.years or (29 if args.full else 10)
    args.entities = args.entities or (100_000 if args.full else 10_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    home = args.home or Path(tempfile.mkdtemp(prefix="afterbell-bench-"))
    home = home.resolve()
    previous_home = os.environ.get("AFTERBELL_HOME")
    res: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"node": platform.node(), "cpus": os.cpu_count()},
    }
    try:
        if not args.skip_features:
            start = date(SESSION.year - args.years + 1, 1, 1)
            bars = build_panel(args.symbols, start, SESSION, args.seed)
            s = Settings(home=home / "features", universe=tuple(sorted(bars["symbol"].unique())))
            t0 = time.perf_counter()
            lake.write_partitions(s.lake_dir, "bars", bars)
            res["lake_write_seconds"] = time.perf_counter() - t0
            _progress(f"lake: {len(bars):,} bars written in {res['lake_write_seconds']:.1f}s")
            _progress("feature stage ...")
            res["features"] = feature_stage(s, SESSION, args.repeat)
            if args.profile:
                res["profile"] = profile_stage(s, SESSION, args.profile)
        if not args.skip_materialize:
            s = Settings(home=home / "materialize")
            redis_url = None if args.no_redis else args.redis
            _progress(f"materialisation of {args.entities:,} entities ...")
            res["materialize"] = materialisation(
                s, args.entities, args.repeat, args.seed, redis_url
            )
    finally:
        if previous_home is None:
            os.environ.pop("AFTERBELL_HOME", None)
        else:
            os.environ["AFTERBELL_HOME"] = previous_home
        if not args.keep and args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    _progress("done")
    print("\n".join(report(res, args)))
    if "profile" in res:
        print("\nPROFILE (one fresh feature stage)\n" + res["profile"])
    if args.json:
        args.json.write_text(json.dumps(_jsonable(res), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
