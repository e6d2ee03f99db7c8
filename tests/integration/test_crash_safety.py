"""Crash safety: a stage killed with SIGKILL mid-write leaves no partial output, and its retry
converges to the state of a run that was never killed.

Each writer runs in its own process (as under Airflow: forked from a server that imported the
stages' libraries once, as a LocalExecutor worker forks task processes; the never-killed reference
run is a fresh interpreter) and is killed at chosen points of its write phase: once a given number
of lake partitions exist (several temporary files are then in flight on the writer threads), at
seeded random partition counts, and while an offline table's temporary file is being written.
After every kill, everything a reader can pick up must read in full and be byte-identical to the
never-killed run; temporary files must be invisible to the lake readers. The retry must then leave
the lake and the offline store byte-identical to the never-killed run, with
no temporary file left behind.

Run time on the 2-core machine: about 80 s with other jobs sharing the two cores (about 105 s
when each of the eight writer processes was a fresh interpreter paying its own imports).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines import lake
from pipelines.settings import REPO_ROOT
from tests.conftest import SESSION, small_env

pytestmark = pytest.mark.slow

TABLES = ("bars", "features")
OFFLINE = ("market_features", "garch_features", "option_features", "lstm_window")


# --------------------------------------------------------------------------------- helpers
def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERBELL_")}
    env.update(small_env(home))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _command(*stages: str) -> list[str]:
    code = "from pipelines import stages\n" + "".join(
        f"stages.{stage}({SESSION.isoformat()!r})\n" for stage in stages
    )
    return [sys.executable, "-c", code]


def _start(home: Path, log: Path, *stages: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            _command(*stages), env=_env(home), cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT
        )


#: Modules the stage processes of the killed home import (about 10 s together on the 2-core
#: machine; Great Expectations first, as elsewhere). See :class:`_Forker`.
_PRELOAD = ("great_expectations", "pandas", "pyarrow.parquet", "pyarrow.dataset", "talib",
            "exchange_calendars", "feast", "pipelines.stages", "pipelines.lake",
            "pipelines.quality", "pipelines.features", "pipelines.feature_store",
            "pipelines.sources")

#: The forking server (see :class:`_Forker`). Protocol on stdin/stdout, one JSON line each:
#: request {"home", "log", "stages", "session"} -> {"started": pid}; later {"pid", "rc"}.
_FORK_SERVER = f"""\
import importlib, json, os, sys, threading, traceback
for name in {_PRELOAD!r}:
    importlib.import_module(name)
lock = threading.Lock()
def say(msg):
    with lock:
        sys.stdout.write(json.dumps(msg) + "\\n")
        sys.stdout.flush()
def reap(pid):
    _, status = os.waitpid(pid, 0)
    say({{"pid": pid, "rc": os.waitstatus_to_exitcode(status)}})
say({{"ready": os.getpid()}})
for line in sys.stdin:
    req = json.loads(line)
    with lock:  # no reaper is writing (holding stdout's buffer lock) while we fork
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            os.environ["AFTERBELL_HOME"] = req["home"]
            from pipelines import stages
            for stage in req["stages"]:
                getattr(stages, stage)(req["session"])
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    threading.Thread(target=reap, args=(pid,), daemon=True).start()
    say({{"started": pid}})
"""


class _Forker:
    """Runs stages in processes forked from one server that imported their libraries once.

    Each stage process of the killed home is still a process of its own, killed with SIGKILL
    mid-write, exactly like a task process, which a LocalExecutor worker forks (os.fork, no
    exec) under Airflow; only the ~10 s of imports of a fresh interpreter are not paid again for
    each of the eight processes. The never-killed reference run stays a fresh interpreter.
    """

    def __init__(self, home: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER], env=_env(home), cwd=REPO_ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.exits: dict[int, int] = {}
        self.started: queue.Queue[int] = queue.Queue()
        self.done = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "started" in msg:
                self.started.put(msg["started"])
            elif "pid" in msg:
                with self.done:
                    self.exits[msg["pid"]] = msg["rc"]
                    self.done.notify_all()
        self.started.put(-1)  # the server died: wake a waiting start()

    def start(self, home: Path, log: Path, *stages: str) -> _Forked:
        assert self.proc.stdin is not None
        req = {"home": str(home), "log": str(log), "stages": list(stages),
               "session": SESSION.isoformat()}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        pid = self.started.get(timeout=180)
        assert pid > 0, f"fork server died (rc={self.proc.poll()})"
        return _Forked(self, pid)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Forked:
    """The part of :class:`subprocess.Popen` the helpers below use, for a forked stage."""

    def __init__(self, forker: _Forker, pid: int) -> None:
        self.forker, self.pid = forker, pid

    @property
    def returncode(self) -> int | None:
        return self.forker.exits.get(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self.forker.done:
            if not self.forker.done.wait_for(lambda: self.pid in self.forker.exits, timeout):
                raise subprocess.TimeoutExpired(f"forked stage {self.pid}", timeout or 0)
        return self.forker.exits[self.pid]

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _finish(proc: subprocess.Popen[bytes] | _Forked, log: Path, timeout: float = 180) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, f"stage process failed ({rc}):\n{log.read_text()[-4000:]}"


def _run_and_kill(forker: _Forker, home: Path, log: Path, stage: str,
                  when: Callable[[], bool]) -> None:
    """Run ``stage`` in a child process and SIGKILL it as soon as ``when()`` holds."""
    proc = forker.start(home, log, stage)
    deadline = time.monotonic() + 180
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if when():
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(timeout=30) == -signal.SIGKILL
                return
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail(
        f"{stage} ended (rc={proc.returncode}) before its kill point:\n{log.read_text()[-4000:]}"
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") or path.name.endswith(".tmp")


def _visible(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` a reader can pick up (temporary files excluded)."""
    if not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): _sha(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not _is_temp(p)
    }


def _temps(root: Path) -> list[Path]:
    return (
        sorted(p for p in root.rglob("*") if p.is_file() and _is_temp(p)) if root.is_dir() else []
    )


def _count(table_dir: Path) -> int:
    """Complete partitions of a lake table (what ``partition_sessions`` sees)."""
    return len(lake.partition_sessions(table_dir.parent, table_dir.name))


def _writing(offline_dir: Path, view: str) -> bool:
    """Whether the offline table of ``view`` is being written (its temporary file exists)."""
    return offline_dir.is_dir() and any(offline_dir.glob(f".{view}.parquet.*.tmp"))


def _has(table_dir: Path, n: int) -> bool:
    """Whether the table has ``n`` complete partitions (cheap folder count first: this polls)."""
    try:
        folders = len(os.listdir(table_dir))
    except FileNotFoundError:
        return False
    return folders >= n and _count(table_dir) >= n


def _assert_lake_readable(lake_dir: Path) -> dict[str, str]:
    """Everything a reader can see after a kill reads in full; temporary files stay hidden."""
    for part in lake_dir.rglob("*.parquet"):
        pq.read_table(part)  # a truncated file fails here (no footer / bad magic)
    for table in TABLES:
        listing = lake._listing(lake_dir, table)
        assert all(path.name == lake.PART_NAME for _, path in listing)
        assert [d for d, _ in listing] == lake.partition_sessions(lake_dir, table)
        if not listing:
            continue
        frame = lake.read_table(lake_dir, table)
        assert frame["session"].nunique() == len(listing)
        if (lake_dir / table).is_dir():  # a generic reader discovering the folder
            found = pads.dataset(lake_dir / table, format="parquet")
            assert len(found.files) == len(listing)
            assert found.to_table().num_rows == len(frame)
    return _visible(lake_dir)


def _assert_offline_readable(offline_dir: Path) -> dict[str, str]:
    visible = _visible(offline_dir)
    for name in visible:
        pq.read_table(offline_dir / name)
    assert set(visible) <= {f"{view}.parquet" for view in OFFLINE}
    return visible


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------- test
@pytest.fixture
def forker(tmp_path: Path) -> Iterator[_Forker]:
    """The fork server of the killed home's stage processes (each request names its home)."""
    server = _Forker(tmp_path / "killed" / "afterbell")
    try:
        yield server
    finally:
        server.close()


def test_sigkill_mid_write_leaves_no_partial_output_and_retry_converges(
    tmp_path: Path, forker: _Forker,
) -> None:
    t0 = time.monotonic()
    ref_home, home = tmp_path / "clean" / "afterbell", tmp_path / "killed" / "afterbell"
    ref_log, log = tmp_path / "clean.log", tmp_path / "killed.log"
    # The never-killed run, in parallel with the killed one (its own home).
    ref = _start(
        ref_home, ref_log, "ingest", "build_features", "refit_garch", "price_options",
        "build_feature_tables",
    )
    bars_dir, features_dir = home / "lake" / "bars", home / "lake" / "features"
    seen: list[dict[str, str]] = []  # what readers could see after each kill

    def lap(label: str) -> None:
        print(f"[crash-safety] {time.monotonic() - t0:6.1f} s {label}", flush=True)

    hid_temps = False
    try:
        # ingest (first run: 757 bar partitions, written by 8 threads): kill it midway.
        _run_and_kill(forker, home, log, "ingest", lambda: _has(bars_dir, 300))
        seen.append(_assert_lake_readable(home / "lake"))
        hid_temps |= bool(_temps(home / "lake"))
        assert 300 <= _count(bars_dir) < 757
        lap("ingest killed")
        _finish(forker.start(home, log, "ingest"), log)
        lap("ingest retried")

        # build_features: killed at two seeded random points of its write phase.
        rng = random.Random(20171229)
        for _ in range(2):
            start = _count(features_dir)
            target = start + rng.randint(1, max(1, (757 - start) // 2))
            _run_and_kill(forker, home, log, "build_features",
                          partial(_has, features_dir, target))
            seen.append(_assert_lake_readable(home / "lake"))
            hid_temps |= bool(_temps(home / "lake"))
        lap("build_features killed twice")
        _finish(forker.start(home, log, "build_features"), log)
        lap("build_features retried")
    except BaseException:
        ref.kill()
        ref.wait()
        raise
    _finish(ref, ref_log)
    lap("never-killed run done")

    reference = _visible(ref_home / "lake")
    for snapshot in seen:  # nothing partial, nothing stale: a subset of the clean run's files
        assert {k: v for k, v in snapshot.items() if reference.get(k) != v} == {}
    retried = _visible(home / "lake")
    ref_tables = {k: v for k, v in reference.items() if k.split("/")[0] in TABLES}
    assert len(ref_tables) == 2 * 757
    assert _digest(retried) == _digest(ref_tables), sorted(set(retried) ^ set(ref_tables))
    assert _temps(home / "lake") == []  # the retries cleaned up after the killed writers

    # build_feature_tables (offline store): same GARCH and option input as the clean run; kill it
    # while the first table's temporary file is being written and while the last one is.
    for table in ("garch", "options"):
        shutil.copytree(ref_home / "lake" / table, home / "lake" / table)
    offline = home / "offline"
    ref_offline = _visible(ref_home / "offline")
    assert sorted(ref_offline) == sorted(f"{v}.parquet" for v in OFFLINE)
    for view in ("market_features", "lstm_window"):
        _run_and_kill(forker, home, log, "build_feature_tables",
                      partial(_writing, offline, view))
        visible = _assert_offline_readable(offline)
        assert {k: v for k, v in visible.items() if ref_offline.get(k) != v} == {}
        hid_temps |= bool(_temps(offline))
    lap("build_feature_tables killed twice")
    _finish(forker.start(home, log, "build_feature_tables"), log)
    lap("build_feature_tables retried")
    assert _visible(offline) == ref_offline
    assert _temps(offline) == []
    # The kills did land mid-write: some temporary file was caught in flight, and hidden.
    assert hid_temps
    print(f"crash-safety test: {time.monotonic() - t0:.1f}s")
