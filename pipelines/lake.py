"""Parquet lake: one folder per table, one file per session.

Layout::

    <root>/<table>/session=YYYY-MM-DD/part-0.parquet

Every partition file also carries its ``session`` column (``datetime64[ns]``), so a read returns
the same dtypes that were written. Writes are atomic (temporary file in the partition folder,
fsync, :func:`os.replace`) and deterministic: the same frame always gives byte-identical files
(rows sorted by ``symbol``, index dropped, no timestamps in the Parquet metadata).

A writer killed mid-write (SIGKILL, OOM) can leave its temporary file behind. Temporary files are
named ``.<name>.<pid>.<hex>.tmp``: hidden from every reader (only ``part-0.parquet`` is listed, and
pyarrow's dataset discovery skips dot-files), and removed by the next successful write of the same
file once their writer process is gone (:func:`remove_stale_temps`).

Raw inputs are kept apart from the tables, as received, one folder per session::

    <root>/raw/session=YYYY-MM-DD/<file as received>...

:func:`keep_raw` replaces a session's raw folder only once the new copy is complete, and
:func:`staging_dir` gives a private folder next to it where an input is fetched before it is
validated. The ingest stage uses the state home as ``root`` (not the lake folder: the raw inputs
are not a table).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.calendar import to_date

PART_NAME = "part-0.parquet"
_PREFIX = "session="
#: Folder (below the root given to :func:`keep_raw`) holding the raw inputs.
RAW_FOLDER = "raw"


# --------------------------------------------------------------------------------- paths
def partition_dir(root: Path, table: str, session: date) -> Path:
    """Folder of one partition: ``root/table/session=YYYY-MM-DD``."""
    return Path(root) / table / f"{_PREFIX}{to_date(session).isoformat()}"


def partition_path(root: Path, table: str, session: date) -> Path:
    """File of one partition: ``root/table/session=YYYY-MM-DD/part-0.parquet``."""
    return partition_dir(root, table, session) / PART_NAME


def _listing(root: Path, table: str) -> list[tuple[date, Path]]:
    """(session, file) of every complete partition of ``table``, oldest first."""
    base = Path(root) / table
    if not base.is_dir():
        return []
    found: list[tuple[date, Path]] = []
    with os.scandir(base) as entries:
        for entry in entries:
            if not (entry.is_dir() and entry.name.startswith(_PREFIX)):
                continue
            try:
                day = date.fromisoformat(entry.name[len(_PREFIX) :])
            except ValueError:
                continue
            part = Path(entry.path) / PART_NAME
            if part.is_file():
                found.append((day, part))
    found.sort()
    return found


def partition_sessions(root: Path, table: str) -> list[date]:
    """Sessions that have a partition in ``table``, oldest first."""
    return [day for day, _ in _listing(root, table)]


def has_partition(root: Path, table: str, session: date) -> bool:
    """Whether ``table`` has a (complete) partition for ``session``."""
    return partition_path(root, table, session).is_file()


# --------------------------------------------------------------------------------- writes
def _to_arrow(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def temp_path(dest: Path) -> Path:
    """A fresh temporary name next to ``dest``, ``.<name>.<pid>.<hex>.tmp`` (readers skip it)."""
    return dest.parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return True  # never judge our own writers, nor where signal 0 is not a probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove the temporary files of ``dest`` left by writers that died mid-write.

    Only files named like :func:`temp_path` names them, whose writer process no longer exists
    (on this host), are removed: a concurrent writer's file is left alone.

    Parameters
    ----------
    dest : Path
        The file whose leftover temporary files are removed.

    Returns
    -------
    list[Path]
        The files removed.
    """
    prefix = f".{dest.name}."
    removed: list[Path] = []
    try:
        with os.scandir(dest.parent) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
    except FileNotFoundError:
        return removed
    for name in names:
        pid, _, rest = name[len(prefix) :].partition(".")
        if not (pid.isdigit() and rest.endswith(".tmp")) or _pid_alive(int(pid)):
            continue
        stale = dest.parent / name
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return removed


def write_atomic(dest: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``dest`` atomically: ``write`` fills a temp file in the same folder, which is
    fsynced and renamed over ``dest``; then temp files of ``dest`` that killed writers left behind
    are removed. A reader sees the old file or the new one, never a partial one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    remove_stale_temps(dest)
    return dest


def write_text_atomic(dest: Path, text: str) -> Path:
    """:func:`write_atomic` for UTF-8 text (JSON records, requests)."""
    return write_atomic(dest, lambda fh: fh.write(text.encode("utf-8")))


def _write_atomic(table: pa.Table, dest: Path) -> Path:
    """Write a parquet table atomically (deterministic bytes for the same table)."""
    return write_atomic(
        dest, lambda fh: pq.write_table(table, fh, compression="snappy", store_schema=True)
    )


def write_parquet(dest: Path, df: pd.DataFrame) -> Path:
    """Write ``df`` (index dropped, row order kept) to ``dest`` atomically, with the lake's
    Parquet settings: the same frame always gives the same bytes.

    Parameters
    ----------
    dest : Path
        File to write (its folder is created).
    df : pd.DataFrame
        Rows to store.

    Returns
    -------
    Path
        ``dest``.
    """
    return _write_atomic(_to_arrow(df.reset_index(drop=True)), Path(dest))


def _session_column(df: pd.DataFrame, session: date) -> pd.DataFrame:
    """``df`` with a ``session`` column equal to ``session`` (added if absent, checked if not)."""
    ts = pd.Timestamp(to_date(session))
    if "session" not in df.columns:
        out = df.copy()
        out.insert(min(1, len(out.columns)), "session", ts)
        out["session"] = out["session"].astype("datetime64[ns]")
        return out
    values = pd.to_datetime(df["session"])
    if len(values) and not (values == ts).all():
        other = values[values != ts].iloc[0]
        raise ValueError(f"partition {ts.date()} got a row of session {pd.Timestamp(other).date()}")
    return df


def _sorted(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    present = [k for k in keys if k in df.columns]
    if present:
        df = df.sort_values(present, kind="stable")
    return df.reset_index(drop=True)


def write_partition(root: Path, table: str, session: date, df: pd.DataFrame) -> Path:
    """Write (or overwrite) one session's partition of ``table``.

    Parameters
    ----------
    root : Path
        Lake root.
    table : str
        Table name (a folder below ``root``).
    session : date
        Partition session; rows of ``df`` must all belong to it (a missing ``session`` column is
        added).
    df : pd.DataFrame
        Rows to store; the index is dropped and rows are sorted by ``symbol``.

    Returns
    -------
    Path
        The partition file.
    """
    frame = _sorted(_session_column(df, session), ("symbol",))
    return _write_atomic(_to_arrow(frame), partition_path(root, table, session))


def write_partitions(
    root: Path, table: str, df: pd.DataFrame, *, max_workers: int = 8
) -> list[Path]:
    """Split a multi-session frame by ``session`` and write every partition.

    Parameters
    ----------
    root : Path
        Lake root.
    table : str
        Table name.
    df : pd.DataFrame
        Rows of many sessions (a ``session`` column is required).
    max_workers : int, optional
        Threads writing files concurrently (Parquet encoding and fsync release the GIL).

    Returns
    -------
    list[Path]
        Partition files written, oldest session first.

    Notes
    -----
    Each partition is byte-identical to what :func:`write_partition` writes for the same rows.
    """
    if "session" not in df.columns:
        raise ValueError(f"write_partitions({table!r}) needs a 'session' column")
    if df.empty:
        return []
    frame = df.copy()
    frame["session"] = pd.to_datetime(frame["session"]).astype("datetime64[ns]")
    frame = _sorted(frame, ("session", "symbol"))
    sessions = frame["session"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sessions[1:] != sessions[:-1]])
    bounds = np.r_[starts, len(frame)]
    # one pandas -> Arrow conversion, then zero-copy slices (the files are byte-identical to
    # converting each session's rows on its own: no index is stored)
    whole = _to_arrow(frame.reset_index(drop=True))
    jobs: list[tuple[pa.Table, Path]] = []
    for i in range(len(starts)):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        day = pd.Timestamp(sessions[lo]).date()
        jobs.append((whole.slice(lo, hi - lo), partition_path(root, table, day)))
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return list(pool.map(lambda job: _write_atomic(*job), jobs))


# --------------------------------------------------------------------------------- reads
def _empty_frame(columns: Iterable[str]) -> pd.DataFrame:
    dtypes = {
        "symbol": "object",
        "session": "datetime64[ns]",
        "event_timestamp": "datetime64[ns, UTC]",
        "seq": "object",
        "asof": "int64",
    }
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})


def read_table(
    root: Path,
    table: str,
    start: date | None = None,
    end: date | None = None,
    symbols: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read the partitions of ``table`` with ``start <= session <= end``.

    Parameters
    ----------
    root : Path
        Lake root.
    table : str
        Table name.
    start, end : date, optional
        Inclusive session range; open-ended when omitted.
    symbols : Sequence[str], optional
        Keep only these symbols.
    columns : Sequence[str], optional
        Columns of the empty frame returned when the table has no partition at all (when it has
        some, the stored schema wins).

    Returns
    -------
    pd.DataFrame
        Rows sorted by ``session``, ``symbol``, index reset; empty (with columns) if none match.
    """
    listing = _listing(root, table)
    lo = to_date(start) if start is not None else None
    hi = to_date(end) if end is not None else None
    files = [
        str(path)
        for day, path in listing
        if (lo is None or day >= lo) and (hi is None or day <= hi)
    ]
    if not listing:
        return _empty_frame(columns or ())
    if not files:
        return pq.read_schema(listing[-1][1]).empty_table().to_pandas()

    dataset = pads.dataset(files, format="parquet")
    filt = None
    if symbols is not None and "symbol" in dataset.schema.names:
        filt = pads.field("symbol").isin(list(symbols))
    frame = dataset.to_table(filter=filt).to_pandas()
    return _sorted(frame, ("session", "symbol"))


# --------------------------------------------------------------------------------- quarantine
def _reserve(directory: Path, name: str) -> Path:
    """Exclusively create a new empty file ``name`` (or ``stem.N.suffix``) in ``directory``."""
    stem, dot, suffix = name.partition(".")
    counter = 0
    while True:
        candidate = name if counter == 0 else f"{stem}.{counter}{dot}{suffix}"
        path = directory / candidate
        reason = directory / f"{candidate}.reason.txt"
        if not reason.exists():
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                return path
        counter += 1


def quarantine(
    src: Path, quarantine_root: Path, session: date, reason: str, *, origin: str | None = None
) -> Path:
    """Copy a rejected input file aside, with the reason it was rejected.

    Parameters
    ----------
    src : Path
        The bad input file (left where it is).
    quarantine_root : Path
        Quarantine folder.
    session : date
        Session the file was meant for.
    reason : str
        Why it was rejected (e.g. the data-quality error message).
    origin : str, optional
        Where the file came from, recorded in the reason file (default: ``src`` resolved); give
        it when ``src`` is a fetched copy (e.g. the ``s3://`` URI).

    Returns
    -------
    Path
        The quarantined copy, ``quarantine_root/session=YYYY-MM-DD/<name>``; an earlier copy of
        the same name is never overwritten (``<stem>.1.<suffix>``, ``<stem>.2.<suffix>``, ...).
        ``<copy name>.reason.txt`` next to it holds the reason.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"cannot quarantine {src}: no such file")
    directory = Path(quarantine_root) / f"{_PREFIX}{to_date(session).isoformat()}"
    directory.mkdir(parents=True, exist_ok=True)
    dest = _reserve(directory, src.name)
    try:
        shutil.copyfile(src, dest)
        note = (
            f"source: {origin or src.resolve()}\n"
            f"session: {to_date(session).isoformat()}\nreason: {reason}\n"
        )
        Path(f"{dest}.reason.txt").write_text(note, encoding="utf-8")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise
    return dest


# --------------------------------------------------------------------------------- raw input
def raw_dir(root: Path, session: date) -> Path:
    """Folder of one session's raw input: ``root/raw/session=YYYY-MM-DD``."""
    return Path(root) / RAW_FOLDER / f"{_PREFIX}{to_date(session).isoformat()}"


def raw_files(root: Path, session: date) -> list[Path]:
    """The files kept as ``session``'s raw input, by name (empty when none was kept)."""
    folder = raw_dir(root, session)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_dir_name(final: Path, kind: str) -> Path:
    """``.<name>.<pid>.<hex>.<kind>`` next to ``final`` (kind: ``tmp`` or ``old``)."""
    return final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex}.{kind}"


def _dead_temp_dirs(final: Path) -> list[Path]:
    """Temporary siblings of ``final`` (``tmp`` and ``old``) whose process is gone, by name."""
    prefix = f".{final.name}."
    try:
        with os.scandir(final.parent) as entries:
            names = sorted(e.name for e in entries if e.name.startswith(prefix) and e.is_dir())
    except FileNotFoundError:
        return []
    dead = []
    for name in names:
        pid, _, rest = name[len(prefix) :].partition(".")
        if pid.isdigit() and rest.endswith((".tmp", ".old")) and not _pid_alive(int(pid)):
            dead.append(final.parent / name)
    return dead


def _recover(final: Path) -> None:
    """Undo what a killed :func:`keep_raw` left: if it died between moving the previous raw
    folder aside and moving the new one in, put the previous one back; remove the rest."""
    dead = _dead_temp_dirs(final)
    if not final.exists():
        olds = [d for d in dead if d.name.endswith(".old")]
        if olds:
            os.rename(olds[0], final)
            dead.remove(olds[0])
    for leftover in dead:
        shutil.rmtree(leftover, ignore_errors=True)


def keep_raw(files: Sequence[Path], root: Path, session: date) -> list[Path]:
    """Make ``session``'s raw folder hold exactly ``files``, copied byte for byte.

    The copy is built in a temporary sibling folder (files and folder fsynced), then swapped in
    with two renames (old folder aside, new one in) and the old folder removed. A process killed
    at any point leaves the previous complete raw folder, or the new complete one; the next
    call repairs the one window where neither is in place (the old folder is renamed back) and
    removes what killed calls left behind.

    Parameters
    ----------
    files : Sequence[Path]
        The session's input files, as received; names must be distinct.
    root : Path
        Root below which ``raw/session=YYYY-MM-DD/`` lives (see :func:`raw_dir`).
    session : date
        The session.

    Returns
    -------
    list[Path]
        The kept copies, in the order of ``files``.

    Raises
    ------
    ValueError
        If ``files`` is empty or two files share a name.
    FileNotFoundError
        If a file does not exist.
    """
    sources = [Path(f) for f in files]
    day = to_date(session).isoformat()
    if not sources:
        raise ValueError(f"keep_raw({day}): no input file given; a raw folder is never empty")
    names = [f.name for f in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"keep_raw({day}): several input files named {dupes}")
    for src in sources:
        if not src.is_file():
            raise FileNotFoundError(f"keep_raw({day}): no such input file {src}")

    final = raw_dir(root, session)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)
    tmp = _temp_dir_name(final, "tmp")
    tmp.mkdir()
    try:
        for src in sources:
            with open(src, "rb") as fin, open(tmp / src.name, "wb") as fout:
                shutil.copyfileobj(fin, fout)
                fout.flush()
                os.fsync(fout.fileno())
        _fsync_dir(tmp)
        if final.exists():
            old = _temp_dir_name(final, "old")
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
    return [final / n for n in names]


@contextlib.contextmanager
def staging_dir(root: Path, session: date) -> Iterator[Path]:
    """A fresh private folder where ``session``'s input is fetched before it is validated.

    It lives next to the raw folders (same file system, hidden name
    ``root/raw/.incoming.session=YYYY-MM-DD.<pid>.<hex>.tmp``) and is removed on exit; folders
    left by killed processes are removed on entry.

    Parameters
    ----------
    root : Path
        Same root as :func:`keep_raw`'s.
    session : date
        The session being ingested.

    Yields
    ------
    Path
        The empty staging folder.
    """
    anchor = Path(root) / RAW_FOLDER / f"incoming.{_PREFIX}{to_date(session).isoformat()}"
    anchor.parent.mkdir(parents=True, exist_ok=True)
    for leftover in _dead_temp_dirs(anchor):
        shutil.rmtree(leftover, ignore_errors=True)
    path = _temp_dir_name(anchor, "tmp")
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
