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


# --------------------------------------------------------------------------------- raw input
def _inputs(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, body in files.items():
        (folder / name).write_bytes(body)
        out.append(folder / name)
    return out


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "raw").iterdir() if p.name.startswith("."))


def test_keep_raw_holds_exactly_the_given_files(tmp_path: Path) -> None:
    d = date(2018, 12, 31)
    assert lake.raw_dir(tmp_path, d) == tmp_path / "raw" / "session=2018-12-31"
    assert lake.raw_files(tmp_path, d) == []
    first = _inputs(tmp_path / "in1", {"b.csv": b"symbol,close\n", "a.parquet": b"PAR1 x"})
    kept = lake.keep_raw(first, tmp_path, d)
    folder = lake.raw_dir(tmp_path, d)
    assert kept == [folder / "b.csv", folder / "a.parquet"]
    assert lake.raw_files(tmp_path, d) == [folder / "a.parquet", folder / "b.csv"]
    assert [p.read_bytes() for p in kept] == [p.read_bytes() for p in first]

    second = _inputs(tmp_path / "in2", {"b.csv": b"symbol,close\nSPX,1\n"})
    lake.keep_raw(second, tmp_path, d)
    assert lake.raw_files(tmp_path, d) == [folder / "b.csv"]  # a.parquet is gone
    assert (folder / "b.csv").read_bytes() == b"symbol,close\nSPX,1\n"
    assert all(p.exists() for p in first + second)  # inputs are copied, not moved
    assert _leftovers(tmp_path) == []


def test_keep_raw_failure_keeps_the_previous_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = date(2018, 12, 31)
    good = _inputs(tmp_path / "good", {"bars.csv": b"good"})
    lake.keep_raw(good, tmp_path, d)
    new = _inputs(tmp_path / "new", {"a.csv": b"new a", "b.csv": b"new b"})
    real = lake.shutil.copyfileobj
    calls = []

    def flaky(fin: object, fout: object, *args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real(fin, fout, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(lake.shutil, "copyfileobj", flaky)
    with pytest.raises(OSError, match="disk full"):
        lake.keep_raw(new, tmp_path, d)
    assert [p.name for p in lake.raw_files(tmp_path, d)] == ["bars.csv"]
    assert lake.raw_files(tmp_path, d)[0].read_bytes() == b"good"
    assert _leftovers(tmp_path) == []

    with pytest.raises(ValueError, match="never empty"):
        lake.keep_raw([], tmp_path, d)
    twin = _inputs(tmp_path / "twin", {"bars.csv": b"other"})
    with pytest.raises(ValueError, match=r"bars\.csv"):
        lake.keep_raw([good[0], twin[0]], tmp_path, d)
    with pytest.raises(FileNotFoundError, match=r"absent\.csv"):
        lake.keep_raw([tmp_path / "absent.csv"], tmp_path, d)
    assert lake.raw_files(tmp_path, d)[0].read_bytes() == b"good"


def test_keep_raw_repairs_what_a_killed_swap_left(tmp_path: Path) -> None:
    d = date(2018, 12, 31)
    folder = lake.raw_dir(tmp_path, d)
    folder.parent.mkdir(parents=True)
    dead = _dead_pid()
    # killed between "old folder aside" and "new folder in": no raw folder, the complete old
    # one aside, a half-built new one; plus a live writer's temp folder (left alone)
    old = folder.parent / f".{folder.name}.{dead}.aa.old"
    _inputs(old, {"bars.csv": b"previous"})
    half = folder.parent / f".{folder.name}.{dead}.bb.tmp"
    _inputs(half, {"bars.csv": b"hal"})
    live = folder.parent / f".{folder.name}.{os.getppid()}.cc.tmp"
    live.mkdir()

    new = _inputs(tmp_path / "in", {"bars.csv": b"next"})
    lake.keep_raw(new, tmp_path, d)
    assert [p.read_bytes() for p in lake.raw_files(tmp_path, d)] == [b"next"]
    assert _leftovers(tmp_path) == [live.name]


def test_keep_raw_restores_the_previous_folder_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = date(2018, 12, 31)
    folder = lake.raw_dir(tmp_path, d)
    folder.parent.mkdir(parents=True)
    old = folder.parent / f".{folder.name}.{_dead_pid()}.aa.old"
    _inputs(old, {"bars.csv": b"previous"})
    # the next writer of another session's raw folder leaves this one alone...
    lake.keep_raw(_inputs(tmp_path / "x", {"x.csv": b"x"}), tmp_path, date(2018, 12, 28))
    assert old.exists() and not folder.exists()

    # ...the next writer of this session puts the previous input back first, so even when its
    # own copy then fails the session keeps its previous raw input
    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(lake.shutil, "copyfileobj", boom)
    with pytest.raises(OSError, match="disk full"):
        lake.keep_raw(_inputs(tmp_path / "in", {"new.csv": b"next"}), tmp_path, d)
    assert [p.read_bytes() for p in lake.raw_files(tmp_path, d)] == [b"previous"]
    assert _leftovers(tmp_path) == []


def test_staging_dir_is_private_and_removed(tmp_path: Path) -> None:
    d = date(2018, 12, 31)
    with lake.staging_dir(tmp_path, d) as first:
        (first / "bars.csv").write_text("x")
        assert first.parent == tmp_path / "raw" and first.name.startswith(".")
    assert not first.exists()
    stale = tmp_path / "raw" / f".incoming.session=2018-12-31.{_dead_pid()}.dd.tmp"
    stale.mkdir()
    (stale / "bars.csv").write_text("left by a killed ingest")
    with pytest.raises(RuntimeError), lake.staging_dir(tmp_path, d) as second:
        assert second != first and not stale.exists()
        raise RuntimeError("ingest failed")
    assert not second.exists()
    assert lake.raw_files(tmp_path, d) == []


def test_write_parquet_is_deterministic(tmp_path: Path, bars: pd.DataFrame) -> None:
    day = _day(bars, date(2018, 12, 31))
    a = lake.write_parquet(tmp_path / "a" / "replay.parquet", day)
    b = lake.write_parquet(tmp_path / "b" / "replay.parquet", day.set_index(pd.Index([9, 8, 7])))
    assert a.read_bytes() == b.read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(a), day)


def test_quarantine_records_the_origin(tmp_path: Path) -> None:
    src = tmp_path / "staging" / "bars.csv"
    src.parent.mkdir()
    src.write_text("bad\n")
    copy = lake.quarantine(
        src, tmp_path / "q", date(2018, 12, 31), "why", origin="s3://b/daily/bars.csv"
    )
    note = Path(f"{copy}.reason.txt").read_text()
    assert "source: s3://b/daily/bars.csv" in note and "reason: why" in note
