"""Parquet lake: atomic deterministic partitions, range reads, quarantine."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines import calendar, lake
from pipelines.schema import BAR_COLUMNS
from pipelines.sources import ReplaySource

SESSIONS = calendar.sessions_between("2017-10-02", "2018-12-31")


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return ReplaySource(["AAPL", "MSFT", "SPX"]).bars(SESSIONS)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _day(bars: pd.DataFrame, d: date) -> pd.DataFrame:
    return bars[bars["session"] == pd.Timestamp(d)].reset_index(drop=True)


def test_write_partition_layout_and_roundtrip(tmp_path: Path, bars: pd.DataFrame) -> None:
    d = date(2018, 12, 31)
    path = lake.write_partition(tmp_path, "bars", d, _day(bars, d))
    assert path == tmp_path / "bars" / "session=2018-12-31" / "part-0.parquet"
    assert lake.has_partition(tmp_path, "bars", d)
    assert not lake.has_partition(tmp_path, "bars", date(2018, 12, 28))
    assert lake.partition_sessions(tmp_path, "bars") == [d]
    back = lake.read_table(tmp_path, "bars")
    pd.testing.assert_frame_equal(back, _day(bars, d))
    assert pq.read_schema(path).names == list(BAR_COLUMNS)  # session kept inside the file


def test_overwrite_is_atomic_and_leaves_no_temp_files(
    tmp_path: Path, bars: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = date(2018, 12, 31)
    day = _day(bars, d)
    path = lake.write_partition(tmp_path, "bars", d, day)
    smaller = day[day["symbol"] == "SPX"]
    lake.write_partition(tmp_path, "bars", d, smaller)
    assert lake.read_table(tmp_path, "bars")["symbol"].tolist() == ["SPX"]
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(lake.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        lake.write_partition(tmp_path, "bars", d, day)
    assert path.read_bytes() == before  # the old partition survives a failed write
    assert [p.name for p in path.parent.iterdir()] == ["part-0.parquet"]


def test_rewrite_is_byte_identical(tmp_path: Path, bars: pd.DataFrame) -> None:
    d = date(2018, 12, 31)
    day = _day(bars, d)
    path = lake.write_partition(tmp_path, "bars", d, day)
    first = _digest(path)
    shuffled = day.sample(frac=1.0, random_state=3).set_index(pd.Index([7, 3, 5]))
    lake.write_partition(tmp_path, "bars", d, shuffled)
    assert _digest(path) == first
    # the multi-session writer produces the same bytes for the same rows
    lake.write_partitions(tmp_path / "other", "bars", bars)
    assert _digest(lake.partition_path(tmp_path / "other", "bars", d)) == first


def test_write_partitions_and_read_ranges(tmp_path: Path, bars: pd.DataFrame) -> None:
    paths = lake.write_partitions(tmp_path, "bars", bars.sample(frac=1.0, random_state=1))
    assert len(paths) == len(SESSIONS)
    assert lake.partition_sessions(tmp_path, "bars") == SESSIONS
    pd.testing.assert_frame_equal(lake.read_table(tmp_path, "bars"), bars)

    lo, hi = date(2018, 3, 1), date(2018, 3, 31)
    part = lake.read_table(tmp_path, "bars", start=lo, end=hi, symbols=["SPX", "AAPL"])
    assert set(part["symbol"]) == {"SPX", "AAPL"}
    assert part["session"].min().date() >= lo and part["session"].max().date() <= hi
    expected = bars[bars["session"].between(pd.Timestamp(lo), pd.Timestamp(hi))]
    expected = expected[expected["symbol"].isin(["SPX", "AAPL"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected)

    tail = lake.read_table(tmp_path, "bars", start=date(2018, 12, 28))
    assert sorted(set(tail["session"].dt.date)) == [date(2018, 12, 28), date(2018, 12, 31)]
    head = lake.read_table(tmp_path, "bars", end=SESSIONS[0])
    assert len(head) == 3


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_temp_files_are_hidden_and_cleaned(tmp_path: Path, bars: pd.DataFrame) -> None:
    d, other = date(2018, 12, 31), date(2018, 12, 28)
    path = lake.write_partition(tmp_path, "bars", d, _day(bars, d))
    good = path.read_bytes()
    # What SIGKILL leaves mid-write: a truncated temp file next to a complete partition, and a
    # partition folder holding only a temp file.
    dead = lake.temp_path(path).with_name(f".{lake.PART_NAME}.{_dead_pid()}.0a1b.tmp")
    dead.write_bytes(good[: len(good) // 2])
    lonely = lake.partition_path(tmp_path, "bars", other)
    lonely.parent.mkdir()
    lonely_tmp = lonely.parent / dead.name
    lonely_tmp.write_bytes(b"PAR1")
    live = path.parent / f".{lake.PART_NAME}.{os.getppid()}.0a1b.tmp"  # a writer still running
    live.write_bytes(b"PAR1")

    assert lake.partition_sessions(tmp_path, "bars") == [d]
    assert not lake.has_partition(tmp_path, "bars", other)
    pd.testing.assert_frame_equal(lake.read_table(tmp_path, "bars"), _day(bars, d))
    assert pads.dataset(tmp_path / "bars", format="parquet").files == [str(path)]

    lake.write_partition(tmp_path, "bars", d, _day(bars, d))  # the retry of the killed writer
    assert path.read_bytes() == good
    assert not dead.exists() and live.exists()  # a live writer's temp file is left alone
    lake.write_partitions(tmp_path, "bars", _day(bars, other))
    assert sorted(p.name for p in lonely.parent.iterdir()) == [lake.PART_NAME]
    assert lake.partition_sessions(tmp_path, "bars") == [other, d]
    assert lake.remove_stale_temps(tmp_path / "absent" / lake.PART_NAME) == []


def test_empty_reads_keep_columns(tmp_path: Path, bars: pd.DataFrame) -> None:
    none = lake.read_table(tmp_path, "bars", columns=list(BAR_COLUMNS))
    assert none.empty and tuple(none.columns) == BAR_COLUMNS
    assert none["session"].dtype == "datetime64[ns]"
    assert lake.partition_sessions(tmp_path, "bars") == []

    lake.write_partition(tmp_path, "bars", date(2018, 12, 31), _day(bars, date(2018, 12, 31)))
    out_of_range = lake.read_table(tmp_path, "bars", end=date(2018, 1, 2))
    assert out_of_range.empty and tuple(out_of_range.columns) == BAR_COLUMNS
    assert (out_of_range.dtypes == bars.dtypes).all()


def test_partition_rejects_rows_of_another_session(tmp_path: Path, bars: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="2018-12-28"):
        lake.write_partition(tmp_path, "bars", date(2018, 12, 31), bars.tail(6))
    # a frame without a session column gets one
    frame = pd.DataFrame({"symbol": ["B", "A"], "x": [1.0, 2.0]})
    lake.write_partition(tmp_path, "t", date(2018, 12, 31), frame)
    back = lake.read_table(tmp_path, "t")
    assert back["symbol"].tolist() == ["A", "B"]
    assert (back["session"] == pd.Timestamp("2018-12-31")).all()


def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    src = tmp_path / "drop" / "bars.csv"
    src.parent.mkdir()
    qroot = tmp_path / "quarantine"
    d = date(2018, 12, 31)
    copies = []
    for i in range(3):
        src.write_text(f"version {i}\n")
        copies.append(lake.quarantine(src, qroot, d, f"reason {i}"))
    folder = qroot / "session=2018-12-31"
    assert copies == [folder / "bars.csv", folder / "bars.1.csv", folder / "bars.2.csv"]
    for i, copy in enumerate(copies):
        assert copy.read_text() == f"version {i}\n"
        note = Path(f"{copy}.reason.txt").read_text()
        assert f"reason {i}" in note and "2018-12-31" in note
    assert src.exists()  # the input is copied, not moved
    with pytest.raises(FileNotFoundError):
        lake.quarantine(tmp_path / "absent.csv", qroot, d, "x")
