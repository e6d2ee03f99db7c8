"""Crash safety: a stage killed with SIGKILL mid-write leaves no partial output, and its retry
converges to the state of a run that was never killed.

Each writer runs in its own process (as under Airflow) and is killed at chosen points of its write
phase: once a given number of lake partitions exist (several temporary files are then in flight on
the writer threads), at seeded random partition counts, and while an offline table's temporary file
is being written. After every kill, everything a reader can pick up must read in full and be
byte-identical to the never-killed run; temporary files must be invisible to the lake readers. The
retry must then leave the lake and the offline store byte-identical to the never-killed run, with
no temporary file left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, f"stage process failed ({rc}):\n{log.read_text()[-4000:]}"


def _run_and_kill(home: Path, log: Path, stage: str, when: Callable[[], bool]) -> None:
    """Run ``stage`` in a child process and SIGKILL it as soon as ``when()`` holds."""
    proc = _start(home, log, stage)
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
def test_sigkill_mid_write_leaves_no_partial_output_and_retry_converges(tmp_path: Path) -> None:
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
    hid_temps = False
    try:
        # ingest (first run: 757 bar partitions, written by 8 threads): kill it midway.
        _run_and_kill(home, log, "ingest", lambda: _has(bars_dir, 300))
        seen.append(_assert_lake_readable(home / "lake"))
        hid_temps |= bool(_temps(home / "lake"))
        assert 300 <= _count(bars_dir) < 757
        _finish(_start(home, log, "ingest"), log)

        # build_features: killed at two seeded random points of its write phase.
        rng = random.Random(20171229)
        for _ in range(2):
            start = _count(features_dir)
            target = start + rng.randint(1, max(1, (757 - start) // 2))
            _run_and_kill(home, log, "build_features", partial(_has, features_dir, target))
            seen.append(_assert_lake_readable(home / "lake"))
            hid_temps |= bool(_temps(home / "lake"))
        _finish(_start(home, log, "build_features"), log)
    except BaseException:
        ref.kill()
        ref.wait()
        raise
    _finish(ref, ref_log)

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
        _run_and_kill(home, log, "build_feature_tables", partial(_writing, offline, view))
        visible = _assert_offline_readable(offline)
        assert {k: v for k, v in visible.items() if ref_offline.get(k) != v} == {}
        hid_temps |= bool(_temps(offline))
    _finish(_start(home, log, "build_feature_tables"), log)
    assert _visible(offline) == ref_offline
    assert _temps(offline) == []
    # The kills did land mid-write: some temporary file was caught in flight, and hidden.
    assert hid_temps
    print(f"crash-safety test: {time.monotonic() - t0:.1f}s")
