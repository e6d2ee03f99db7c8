"""NYSESessionTimetable against exchange_calendars: every XNYS session 1990-2035, one run each.

The expected values come from an independent ``exchange_calendars`` XNYS instance; the timetable
reads its own through :mod:`pipelines.calendar`. Known dates (early closes, DST switches, one-off
closures) are also pinned by hand. The last test drives the real Airflow CLI (``dags reserialize``,
``backfill create --dry-run``, ``backfill create``) in a subprocess with its own AIRFLOW_HOME.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pendulum
import pytest
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction

from pipelines import timetable as tt_mod
from pipelines.airflow_env import airflow_env, ensure_airflow_db
from pipelines.settings import REPO_ROOT, Settings
from pipelines.timetable import NYSESessionTimetable, session_bounds, session_for_logical_date

NY = ZoneInfo("America/New_York")
UTC = UTC
START_1990 = pendulum.datetime(1990, 1, 1, tz="America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)


@pytest.fixture(scope="module")
def xnys():  # type: ignore[no-untyped-def]
    import exchange_calendars as xcals

    return xcals.get_calendar("XNYS", start="1990-01-01", end="2035-12-31")


@pytest.fixture(scope="module")
def expected(xnys) -> list[tuple[date, datetime, datetime]]:  # type: ignore[no-untyped-def]
    """(session, open UTC, close UTC) for every XNYS session of the window."""
    sched = xnys.schedule
    opens = sched["open"].dt.tz_convert("UTC").dt.to_pydatetime()
    closes = sched["close"].dt.tz_convert("UTC").dt.to_pydatetime()
    return [(ts.date(), o, c) for ts, o, c in zip(sched.index, opens, closes, strict=True)]


def iterate(
    tt: NYSESessionTimetable, restriction: TimeRestriction, limit: int = 20_000
) -> list[DagRunInfo]:
    """Drive next_dagrun_info the way the scheduler and backfills do."""
    infos: list[DagRunInfo] = []
    info = tt.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    while info is not None and len(infos) < limit:
        infos.append(info)
        info = tt.next_dagrun_info(
            last_automated_data_interval=info.data_interval, restriction=restriction
        )
    return infos


@pytest.fixture(scope="module")
def all_runs() -> dict[str, list[DagRunInfo]]:
    restriction = TimeRestriction(earliest=START_1990, latest=None, catchup=True)
    return {
        due: iterate(NYSESessionTimetable(due=due), restriction)  # type: ignore[arg-type]
        for due in ("close", "open")
    }


@pytest.fixture(scope="module")
def runs(all_runs: dict[str, list[DagRunInfo]]) -> dict[str, dict[date, DagRunInfo]]:
    """due -> {session date: its DagRunInfo}."""
    out: dict[str, dict[date, DagRunInfo]] = {}
    for due, infos in all_runs.items():
        out[due] = {i.data_interval.start.date(): i for i in infos}  # type: ignore[union-attr]
        assert len(out[due]) == len(infos)  # one run per session
    return out


# --------------------------------------------------------------------------------- every session
@pytest.mark.parametrize("due", ["close", "open"])
def test_every_session_1990_2035_matches_exchange_calendars(
    due: str, all_runs: dict[str, list[DagRunInfo]], expected
) -> None:  # type: ignore[no-untyped-def]
    infos = all_runs[due]
    assert len(infos) == len(expected) > 11_500
    got = []
    for info in infos:
        assert info.data_interval is not None
        start, end = info.data_interval
        assert start.utcoffset() == timedelta(0) and end.utcoffset() == timedelta(0)
        assert info.logical_date == start
        got.append((start.date(), start, end))
        assert info.run_after == (end if due == "close" else start)
    assert got == expected  # dates, opens and closes of every session, in order
    assert expected[0][0] == date(1990, 1, 2) and expected[-1][0] == date(2035, 12, 31)


def test_local_times_dst_and_early_closes_come_from_the_calendar(
    all_runs: dict[str, list[DagRunInfo]], xnys
) -> None:  # type: ignore[no-untyped-def]
    """In New York every run opens at 09:30 and is due at 16:00, or 13:00 on the early closes.

    Except for the four early closes of 1990-1992, which were at 14:00 (as in the calendar).
    """
    early = {ts.date() for ts in xnys.early_closes}
    assert len(early) == 98
    at_two = {date(1990, 12, 24), date(1991, 12, 24), date(1992, 11, 27), date(1992, 12, 24)}
    offsets = set()
    for info in all_runs["close"]:
        assert info.data_interval is not None
        start, end = info.data_interval
        local_open, local_close = start.astimezone(NY), end.astimezone(NY)
        session = local_open.date()
        # The logical date falls on the session date in New York and in UTC (ds = session).
        assert session == start.date() == local_close.date()
        assert session.weekday() < 5
        assert local_open.time().isoformat() == "09:30:00"
        want = "16:00:00"
        if session in early:
            want = "14:00:00" if session in at_two else "13:00:00"
        assert local_close.time().isoformat() == want, session
        offsets.add(local_close.utcoffset())
    assert offsets == {timedelta(hours=-5), timedelta(hours=-4)}  # EST and EDT both seen


PINNED = [
    (date(2018, 11, 23), utc(2018, 11, 23, 14, 30), utc(2018, 11, 23, 18)),  # Black Friday
    (date(2018, 12, 24), utc(2018, 12, 24, 14, 30), utc(2018, 12, 24, 18)),
    (date(2019, 7, 3), utc(2019, 7, 3, 13, 30), utc(2019, 7, 3, 17)),  # early close, EDT
    (date(2019, 3, 8), utc(2019, 3, 8, 14, 30), utc(2019, 3, 8, 21)),  # last EST Friday
    (date(2019, 3, 11), utc(2019, 3, 11, 13, 30), utc(2019, 3, 11, 20)),  # after spring-fwd
    (date(2019, 11, 1), utc(2019, 11, 1, 13, 30), utc(2019, 11, 1, 20)),  # last EDT Friday
    (date(2019, 11, 4), utc(2019, 11, 4, 14, 30), utc(2019, 11, 4, 21)),  # after fall-back
    (date(2006, 4, 3), utc(2006, 4, 3, 13, 30), utc(2006, 4, 3, 20)),  # old DST rule (Apr)
    (date(2007, 3, 12), utc(2007, 3, 12, 13, 30), utc(2007, 3, 12, 20)),  # new rule (Mar)
    (date(1990, 1, 2), utc(1990, 1, 2, 14, 30), utc(1990, 1, 2, 21)),
    (date(1990, 12, 24), utc(1990, 12, 24, 14, 30), utc(1990, 12, 24, 19)),  # 14:00 NY
    (date(2035, 12, 31), utc(2035, 12, 31, 14, 30), utc(2035, 12, 31, 21)),
]


@pytest.mark.parametrize(
    ("session", "open_utc", "close_utc"), PINNED, ids=[str(p[0]) for p in PINNED]
)
def test_pinned_sessions(
    session: date, open_utc: datetime, close_utc: datetime, runs: dict[str, dict[date, DagRunInfo]]
) -> None:
    nightly, live = runs["close"][session], runs["open"][session]
    assert nightly.data_interval == live.data_interval == DataInterval(open_utc, close_utc)
    assert nightly.run_after == close_utc
    assert live.run_after == open_utc
    assert nightly.logical_date == open_utc
    assert session_bounds(session) == (open_utc, close_utc)


def test_black_friday_2018_is_due_at_1300_new_york(runs) -> None:  # type: ignore[no-untyped-def]
    info = runs["close"][date(2018, 11, 23)]
    assert info.run_after == utc(2018, 11, 23, 18)
    assert info.run_after.astimezone(NY) == ny(2018, 11, 23, 13)


@pytest.mark.parametrize(
    "day",
    [
        date(2012, 10, 29),  # Hurricane Sandy
        date(2012, 10, 30),
        date(2018, 12, 5),  # G. H. W. Bush's funeral
        date(2001, 9, 11),  # September 11
        date(2001, 9, 14),
        date(2004, 6, 11),  # Reagan
        date(2007, 1, 2),  # Ford
        date(1994, 4, 27),  # Nixon
        date(2025, 1, 9),  # Carter
        date(2018, 11, 22),  # Thanksgiving
        date(2018, 12, 25),
        date(2019, 4, 19),  # Good Friday
        date(2022, 6, 20),  # Juneteenth (observed)
        date(2018, 11, 24),  # Saturday
        date(2018, 11, 25),  # Sunday
    ],
    ids=str,
)
def test_no_run_on_holidays_closures_and_weekends(day: date, runs) -> None:  # type: ignore[no-untyped-def]
    assert day not in runs["close"]
    assert day not in runs["open"]


def test_no_weekend_runs_and_sessions_per_year(runs, xnys) -> None:  # type: ignore[no-untyped-def]
    sessions = list(runs["close"])
    assert all(d.weekday() < 5 for d in sessions)
    per_year: dict[int, int] = {}
    for d in sessions:
        per_year[d.year] = per_year.get(d.year, 0) + 1
    assert per_year[2012] == 250  # two Sandy days closed
    assert per_year[2018] == 251  # Bush funeral closed
    assert per_year[2019] == 252
    assert len(sessions) == len(xnys.sessions)


# --------------------------------------------------------------------------------- restrictions
def test_restriction_bounds_are_inclusive_by_day() -> None:
    """--from-date 2018-11-19 --to-date 2018-11-30 (UTC midnights) -> the two weeks' sessions."""
    restriction = TimeRestriction(utc(2018, 11, 19), utc(2018, 11, 30), catchup=True)
    infos = iterate(NYSESessionTimetable(), restriction)
    got = [i.logical_date.date() for i in infos]  # type: ignore[union-attr]
    assert got == [date(2018, 11, d) for d in (19, 20, 21, 23, 26, 27, 28, 29, 30)]
    # A New York midnight names the same day; a holiday bound stops at the session before it.
    restriction = TimeRestriction(ny(2018, 11, 20), ny(2018, 11, 22), catchup=True)
    got = [i.logical_date.date() for i in iterate(NYSESessionTimetable("open"), restriction)]  # type: ignore[union-attr]
    assert got == [date(2018, 11, 20), date(2018, 11, 21)]


def test_latest_stops_the_schedule_and_window_end() -> None:
    tt = NYSESessionTimetable()
    restriction = TimeRestriction(utc(2018, 11, 19), utc(2018, 11, 30), catchup=True)
    last = DataInterval(utc(2018, 11, 30, 14, 30), utc(2018, 11, 30, 21))
    assert tt.next_dagrun_info(last_automated_data_interval=last, restriction=restriction) is None
    # Past the calendar window (2035-12-31) there is nothing to schedule.
    open_ended = TimeRestriction(utc(2035, 12, 31), None, catchup=True)
    last = DataInterval(utc(2035, 12, 31, 14, 30), utc(2035, 12, 31, 21))
    assert tt.next_dagrun_info(last_automated_data_interval=last, restriction=open_ended) is None
    # catchup with neither a start date nor a previous run: nothing to anchor on.
    none = TimeRestriction(None, None, catchup=True)
    assert tt.next_dagrun_info(last_automated_data_interval=None, restriction=none) is None


def test_next_after_a_run_of_another_schedule() -> None:
    """A last run from the old cron schedule (16:00 New York, zero-width) -> the next session."""
    tt = NYSESessionTimetable()
    at = utc(2018, 11, 21, 21)
    restriction = TimeRestriction(START_1990, None, catchup=True)
    last = DataInterval(at, at)
    info = tt.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
    assert info is not None and info.logical_date == utc(2018, 11, 23, 14, 30)


@pytest.mark.parametrize(
    ("now", "due", "session"),
    [
        (utc(2018, 11, 23, 17, 59), "close", date(2018, 11, 21)),  # half day, before 13:00 NY
        (utc(2018, 11, 23, 18, 0), "close", date(2018, 11, 23)),  # at the early close
        (utc(2018, 11, 23, 14, 29), "open", date(2018, 11, 21)),  # before the open
        (utc(2018, 11, 23, 14, 30), "open", date(2018, 11, 23)),  # at the open
        (utc(2018, 11, 25, 12, 0), "close", date(2018, 11, 23)),  # Sunday
        (utc(2018, 11, 27, 3, 0), "close", date(2018, 11, 26)),  # Monday night NY (UTC Tue)
        (utc(2019, 3, 11, 20, 0), "close", date(2019, 3, 11)),  # EDT close at 20:00 UTC
        (utc(2019, 3, 8, 20, 30), "close", date(2019, 3, 7)),  # EST close at 21:00 UTC
    ],
)
def test_catchup_false_starts_at_the_latest_due_session(
    now: datetime, due: str, session: date, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tt_mod, "_now", lambda: pendulum.instance(now))
    tt = NYSESessionTimetable(due=due)  # type: ignore[arg-type]
    restriction = TimeRestriction(START_1990, None, catchup=False)
    info = tt.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert info is not None and info.logical_date.date() == session  # type: ignore[union-attr]
    # A run long ago does not cause a catch-up: still the latest due session.
    old = DataInterval(utc(2001, 1, 2, 14, 30), utc(2001, 1, 2, 21))
    info = tt.next_dagrun_info(last_automated_data_interval=old, restriction=restriction)
    assert info is not None and info.logical_date.date() == session  # type: ignore[union-attr]
    # Without a start date the latest due session is still the anchor.
    no_start = TimeRestriction(None, None, catchup=False)
    info = tt.next_dagrun_info(last_automated_data_interval=None, restriction=no_start)
    assert info is not None and info.logical_date.date() == session  # type: ignore[union-attr]


def test_catchup_false_respects_later_start_and_last_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tt_mod, "_now", lambda: pendulum.datetime(2018, 11, 23, 19))
    tt = NYSESessionTimetable()
    # The session after the last run, when that is later than the latest due one.
    last = DataInterval(utc(2018, 11, 23, 14, 30), utc(2018, 11, 23, 18))
    restriction = TimeRestriction(START_1990, None, catchup=False)
    info = tt.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
    assert info == DagRunInfo(
        run_after=utc(2018, 11, 26, 21),
        data_interval=DataInterval(utc(2018, 11, 26, 14, 30), utc(2018, 11, 26, 21)),
    )
    # A start date in the future: its first session.
    later = TimeRestriction(ny(2018, 12, 1), None, catchup=False)
    info = tt.next_dagrun_info(last_automated_data_interval=None, restriction=later)
    assert info is not None and info.logical_date == utc(2018, 12, 3, 14, 30)
    # ... unless past the end date.
    ended = TimeRestriction(START_1990, ny(2018, 11, 22), catchup=False)
    assert tt.next_dagrun_info(last_automated_data_interval=None, restriction=ended) is None


# --------------------------------------------------------------------------------- manual runs
@pytest.mark.parametrize(
    ("run_after", "session"),
    [
        (utc(2018, 11, 23), date(2018, 11, 23)),  # `airflow dags test DAG 2018-11-23`
        (ny(2018, 11, 23), date(2018, 11, 23)),  # a New York midnight
        (utc(2018, 11, 23, 16), date(2018, 11, 23)),  # during the session
        (utc(2018, 11, 23, 23, 59), date(2018, 11, 23)),  # after the close
        (utc(2018, 11, 22, 12), date(2018, 11, 21)),  # Thanksgiving -> Wednesday
        (utc(2018, 11, 24), date(2018, 11, 23)),  # Saturday -> Friday
        (utc(2018, 11, 25, 20), date(2018, 11, 23)),  # Sunday -> Friday
        (utc(2012, 10, 30, 15), date(2012, 10, 26)),  # Sandy -> the Friday before
        (utc(2018, 12, 31), date(2018, 12, 31)),
        (utc(2019, 1, 1), date(2018, 12, 31)),  # New Year's Day
        (datetime(2018, 11, 23, 10), date(2018, 11, 23)),  # naive: read as UTC
    ],
)
def test_infer_manual_data_interval(run_after: datetime, session: date) -> None:
    open_, close = session_bounds(session)
    for due in ("close", "open"):
        tt = NYSESessionTimetable(due=due)  # type: ignore[arg-type]
        interval = tt.infer_manual_data_interval(run_after=pendulum.instance(run_after))
        assert interval == DataInterval(open_, close)
    assert session_for_logical_date(run_after) == session
    assert session_for_logical_date(run_after.date()) == session


def test_infer_manual_data_interval_outside_the_window() -> None:
    with pytest.raises(ValueError, match="no NYSE session on or before 1990-01-01"):
        NYSESessionTimetable().infer_manual_data_interval(run_after=pendulum.datetime(1990, 1, 1))
    with pytest.raises(ValueError, match="past the NYSE calendar window"):
        session_for_logical_date(date(2036, 1, 2))
    with pytest.raises(ValueError, match="not an NYSE session"):
        session_bounds(date(2018, 11, 22))


# --------------------------------------------------------------------------------- serialization
def test_serialize_round_trip_and_summary() -> None:
    for due in ("close", "open"):
        tt = NYSESessionTimetable(due=due)  # type: ignore[arg-type]
        data = tt.serialize()
        assert data == {"due": due}
        back = NYSESessionTimetable.deserialize(data)
        assert isinstance(back, NYSESessionTimetable) and back == tt and back.due == due
        assert due in tt.summary and "NYSE" in tt.description
        assert tt.periodic and tt.can_be_scheduled
        assert tt.run_ordering == ("data_interval_end", "logical_date")
        tt.validate()
    assert NYSESessionTimetable.deserialize({}) == NYSESessionTimetable()  # default: close
    assert NYSESessionTimetable() != NYSESessionTimetable("open")
    assert "13:00" in NYSESessionTimetable().description
    with pytest.raises(ValueError, match="due must be one of"):
        NYSESessionTimetable(due="noon")  # type: ignore[arg-type]


def test_dag_serialization_round_trip_with_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DAG on the timetable survives Airflow's own serialisation (plugin registration)."""
    from airflow import plugins_manager
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    from pipelines.airflow_plugin import AfterbellPlugin

    assert AfterbellPlugin.name == "afterbell"
    assert AfterbellPlugin.timetables == [NYSESessionTimetable]
    registered = {"pipelines.timetable.NYSESessionTimetable": NYSESessionTimetable}
    monkeypatch.setattr(plugins_manager, "get_timetables_plugins", lambda: registered)

    dag = DAG("probe", schedule=NYSESessionTimetable("open"), start_date=START_1990)
    data = DagSerialization.serialize_dag(dag)
    assert data["timetable"] == {
        "__type": "pipelines.timetable.NYSESessionTimetable",
        "__var": {"due": "open"},
    }
    assert DagSerialization.deserialize_dag(data).timetable == NYSESessionTimetable("open")


def test_import_is_light() -> None:
    """Importing the timetable (and the plugin) loads neither pandas nor exchange_calendars."""
    code = (
        "import sys, time; import airflow.sdk; t = time.perf_counter(); "
        "import pipelines.timetable, pipelines.airflow_plugin; "
        "dt = time.perf_counter() - t; "
        "heavy = [m for m in ('pandas', 'exchange_calendars') if m in sys.modules]; "
        "print(f'{dt:.3f}', heavy)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split(maxsplit=1)
    assert out[1].strip() == "[]"
    assert float(out[0]) < 0.5


# --------------------------------------------------------------------------------- Airflow CLI
_PROBE_DAG = """
import pendulum
from airflow.sdk import dag, task

from pipelines.timetable import NYSESessionTimetable


@dag(
    dag_id="nyse_probe",
    schedule=NYSESessionTimetable(due="close"),
    start_date=pendulum.datetime(1990, 1, 1, tz="America/New_York"),
    catchup=False,
)
def nyse_probe():
    @task
    def noop():
        return None

    noop()


nyse_probe()
"""

_DRY_RUN_ROW = re.compile(r"^\|\s*(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00)\s*\|", re.M)


def _plugin_entry_point_installed() -> bool:
    eps = importlib.metadata.entry_points(group="airflow.plugins")
    return any(ep.value == "pipelines.airflow_plugin:AfterbellPlugin" for ep in eps)


def test_backfill_dry_run_lists_the_sessions(tmp_path: Path) -> None:
    """`airflow backfill create --dry-run` on a scratch DAG: the two weeks' sessions, no holiday."""
    settings = Settings(home=tmp_path / "home")
    dags, plugins = tmp_path / "dags", tmp_path / "plugins"
    dags.mkdir()
    plugins.mkdir()
    (dags / "nyse_probe.py").write_text(_PROBE_DAG)
    if not _plugin_entry_point_installed():  # else the entry point registers it (no duplicate)
        (plugins / "afterbell.py").write_text(
            "from pipelines.airflow_plugin import AfterbellPlugin  # noqa: F401\n"
        )
    env = {
        **os.environ,
        **airflow_env(settings),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
    }

    def airflow(*args: str) -> str:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["airflow", *args], env=env, capture_output=True, text=True, check=False
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"airflow {' '.join(args)} failed:\n{out[-4000:]}"
        print(f"airflow {args[0]} {args[1]}: {time.perf_counter() - t0:.1f}s")
        return proc.stdout

    ensure_airflow_db(settings)  # `airflow db migrate`
    # A backfill reads the *serialized* DAG from the metadata DB: serialise it first (what the
    # dag-processor does), else the dry run fails with DagNotFound.
    airflow("dags", "reserialize")
    window = ("--dag-id", "nyse_probe", "--from-date", "2018-11-19", "--to-date", "2018-11-30")
    out = airflow("backfill", "create", *window, "--dry-run")
    assert "Runs to be attempted:" in out
    listed = _DRY_RUN_ROW.findall(out)
    sessions = [date(2018, 11, d) for d in (19, 20, 21, 23, 26, 27, 28, 29, 30)]
    assert listed == [f"{d} 14:30:00+00:00" for d in sessions]  # logical date = the open
    assert "2018-11-22" not in out  # Thanksgiving

    # The dry run prints logical dates only: create the runs (the DAG stays paused, nothing
    # executes) and read their due times back from the metadata DB.
    airflow("backfill", "create", *window)
    con = sqlite3.connect(settings.airflow_home / "airflow.db")
    try:
        rows = con.execute(
            "SELECT logical_date, data_interval_start, data_interval_end, run_after, run_type "
            "FROM dag_run WHERE dag_id = 'nyse_probe' ORDER BY logical_date"
        ).fetchall()
    finally:
        con.close()

    def parse(value: str) -> datetime:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    runs = {parse(r[0]).date(): tuple(parse(v) for v in r[1:4]) for r in rows}
    assert sorted(runs) == sessions
    assert {r[4] for r in rows} == {"backfill"}
    for day, (start, end, run_after) in runs.items():
        assert (start, end) == session_bounds(day)
        assert run_after == end
    assert runs[date(2018, 11, 23)][2].astimezone(NY) == ny(2018, 11, 23, 13)
    assert runs[date(2018, 11, 26)][2].astimezone(NY) == ny(2018, 11, 26, 16)
