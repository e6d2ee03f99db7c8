"""An Airflow timetable on the NYSE clock: one DAG run per XNYS session (exchange_calendars).

``NYSESessionTimetable(due="close")`` (``nightly_cycle``) and ``NYSESessionTimetable(due="open")``
(``live_serving``) schedule exactly one run per NYSE session, and none on weekends, exchange
holidays or one-off closures (2012-10-29/30 Sandy, 2018-12-05 Bush's funeral, ...):

* the **data interval** is the session itself, ``(open, close)`` in UTC, so the logical date
  (Airflow always takes ``data_interval.start``) is the open and falls on the session date in New
  York as in UTC: ``ds`` is the session date;
* the run is **due** (``run_after``) at the close (16:00 New York, 13:00 on early closes; the four
  early closes of 1990-1992 were at 14:00) or, with ``due="open"``, at the open (09:30 New York).

Opens, closes, early closes and the DST switches all come from the calendar
(:mod:`pipelines.calendar`, window 1990-01-01 .. 2035-12-31); nothing here holds a UTC offset. No
run is scheduled past the end of the window.

**Day of an instant.** Wherever an instant (a restriction bound, a manual ``run_after``, a logical
date) has to be turned into a day, the day is its **UTC date**. Every NYSE session lies inside one
UTC day that carries the session's own date (09:30-16:00 New York is 13:30-21:00 UTC), Airflow
reads bare dates (``airflow dags test DAG 2018-12-31``, ``backfill --from-date/--to-date``) as UTC
midnights, and Airflow's ``ds`` is the UTC date of the logical date, so this is the one reading that
keeps the data interval and ``ds`` on the same day. (A New York midnight has the same UTC date.)

* ``restriction.earliest`` / ``restriction.latest`` (the DAG's start/end dates, a backfill's
  ``--from-date``/``--to-date``) are inclusive **at day granularity**: the sessions whose dates
  lie in ``[day(earliest), day(latest)]``. So ``backfill --from-date 2018-11-19 --to-date
  2018-11-30`` includes the 2018-11-30 session although its open is after 2018-11-30T00:00Z.
* With ``catchup=False`` the first run is the latest of: the latest session whose due time has
  passed, the session after the last automated run, the first session on or after ``earliest``
  (as Airflow's cron timetables do).
* **Manual runs** (:meth:`NYSESessionTimetable.infer_manual_data_interval`, used by
  ``airflow dags test DAG DATE``, by triggers with a logical date and the REST API): a
  ``run_after`` whose day is a session maps to that session (at any time of that day, before the
  open included); on a non-session day, to the latest session before it (Saturday 2018-12-29 ->
  Friday 2018-12-28; Christmas 2018-12-25 -> 2018-12-24). Airflow keeps the logical date it was
  given for such runs (not the interval start), so ``ds`` stays the requested date.
  Caveat of the UTC reading: a run triggered "now" in the New York evening after 00:00 UTC
  (20:00 EDT / 19:00 EST) has the next UTC day, hence the next day's session (and, in Airflow,
  the next day's ``ds``); pass an explicit logical date to pick a session.

Import cost: this module imports only the standard library, pendulum and
``airflow.timetables.base``; pandas and exchange_calendars are loaded on first use of the calendar
(the first ``next_dagrun_info`` / ``infer_manual_data_interval`` call in a process, about 1 s),
never while a DAG file is parsed.
"""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, cast

import pendulum
from airflow.timetables.base import DagRunInfo, DataInterval, Timetable

if TYPE_CHECKING:
    from airflow.timetables.base import TimeRestriction
    from pendulum import DateTime

__all__ = [
    "Due",
    "NYSESessionTimetable",
    "session_bounds",
    "session_for_logical_date",
]

Due = Literal["close", "open"]
_DUES: tuple[str, ...] = ("close", "open")


# --------------------------------------------------------------------------------- session table
@dataclass(frozen=True)
class _Sessions:
    """Every XNYS session of the calendar window, as plain ints (fast bisection, no pandas)."""

    ordinals: list[int]  # date.toordinal() of each session, ascending
    opens: list[int]  # UTC epoch seconds
    closes: list[int]

    def index_on_or_after(self, ordinal: int) -> int:
        return bisect.bisect_left(self.ordinals, ordinal)

    def index_on_or_before(self, ordinal: int) -> int:
        """Index of the last session on or before ``ordinal``; -1 if there is none."""
        return bisect.bisect_right(self.ordinals, ordinal) - 1

    def is_session(self, ordinal: int) -> bool:
        i = self.index_on_or_after(ordinal)
        return i < len(self.ordinals) and self.ordinals[i] == ordinal


@lru_cache(maxsize=1)
def _sessions() -> _Sessions:
    """Load the calendar once per process (pandas + exchange_calendars: about 1 s)."""
    import numpy as np

    from pipelines import calendar

    schedule = calendar._xnys().schedule

    def epoch_seconds(col: str) -> list[int]:
        values = schedule[col].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        return values.astype("datetime64[s]").astype(np.int64).tolist()

    ordinals = [ts.date().toordinal() for ts in schedule.index]
    return _Sessions(ordinals=ordinals, opens=epoch_seconds("open"), closes=epoch_seconds("close"))


def _now() -> DateTime:
    """Current time (a seam for tests)."""
    return pendulum.now("UTC")


def _utc(ts: int) -> DateTime:
    return pendulum.from_timestamp(ts, tz="UTC")


def _day(instant: dt.datetime) -> dt.date:
    """The day of an instant: its UTC date (a naive datetime is taken as UTC)."""
    if instant.tzinfo is not None:
        instant = instant.astimezone(dt.UTC)
    return instant.date()


def _session_index_for(instant: dt.datetime | dt.date) -> int:
    """Index of the session of ``instant``'s day, or of the latest session before it."""
    day = instant if not isinstance(instant, dt.datetime) else _day(instant)
    table = _sessions()
    if day.toordinal() > table.ordinals[-1]:
        last = dt.date.fromordinal(table.ordinals[-1])
        raise ValueError(f"{day} is past the NYSE calendar window (last session {last})")
    i = table.index_on_or_before(day.toordinal())
    if i < 0:
        first = dt.date.fromordinal(table.ordinals[0])
        raise ValueError(f"no NYSE session on or before {day} (first session {first})")
    return i


def session_for_logical_date(instant: dt.datetime | dt.date) -> dt.date:
    """The NYSE session a logical date (or a manual ``run_after``) stands for.

    The session on the instant's UTC date when that date is a session, else the latest session
    before it. ``2018-11-23T14:30Z`` (the open) and ``2018-11-23T00:00Z`` (``dags test DAG
    2018-11-23``) -> 2018-11-23; ``2018-11-22`` (Thanksgiving) -> 2018-11-21. Raises
    ``ValueError`` before the first or after the last session of the calendar window.
    """
    return dt.date.fromordinal(_sessions().ordinals[_session_index_for(instant)])


def session_bounds(session: dt.date) -> tuple[DateTime, DateTime]:
    """``(open, close)`` of ``session`` as UTC pendulum datetimes; ValueError on a non-session."""
    table = _sessions()
    i = table.index_on_or_after(session.toordinal())
    if i >= len(table.ordinals) or table.ordinals[i] != session.toordinal():
        raise ValueError(f"{session} is not an NYSE session")
    return _utc(table.opens[i]), _utc(table.closes[i])


# --------------------------------------------------------------------------------- timetable
class NYSESessionTimetable(Timetable):
    """One DAG run per NYSE (XNYS) session: data interval open -> close, due at close or open.

    :param due: ``"close"`` (default): the run becomes due at the session's close (16:00 New York,
        13:00 on early closes, as the calendar says); ``"open"``: at its open (09:30 New York).

    See the module docstring for how restriction bounds and manual runs map to sessions.
    """

    periodic = True
    can_be_scheduled = True
    run_ordering = ("data_interval_end", "logical_date")

    def __init__(self, due: Due = "close") -> None:
        if due not in _DUES:
            raise ValueError(f"due must be one of {_DUES}, not {due!r}")
        self.due: Due = due
        when = (
            "the close (16:00 New York, 13:00 on early closes)"
            if due == "close"
            else "the open (09:30 New York)"
        )
        self.description = (
            "One run per NYSE session (exchange_calendars XNYS: no weekends, holidays or "
            f"closures); data interval = the session, open to close; due at {when}"
        )

    # ------------------------------------------------------------------ identity / serialization
    def __repr__(self) -> str:
        return f"{type(self).__name__}(due={self.due!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NYSESessionTimetable):
            return NotImplemented
        return self.due == other.due

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.due))

    def serialize(self) -> dict[str, Any]:
        return {"due": self.due}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> Timetable:
        return cls(due=cast(Due, data.get("due", "close")))

    def validate(self) -> None:
        if self.due not in _DUES:
            from airflow.exceptions import AirflowTimetableInvalid

            raise AirflowTimetableInvalid(f"due must be one of {_DUES}, not {self.due!r}")

    @property
    def summary(self) -> str:
        return f"NYSE sessions, at the {self.due}"

    # ------------------------------------------------------------------ scheduling
    def _info(self, i: int) -> DagRunInfo:
        table = _sessions()
        open_, close = _utc(table.opens[i]), _utc(table.closes[i])
        run_after = close if self.due == "close" else open_
        return DagRunInfo(run_after=run_after, data_interval=DataInterval(open_, close))

    def _due_ts(self, i: int) -> int:
        table = _sessions()
        return table.closes[i] if self.due == "close" else table.opens[i]

    def _latest_due_index(self, now: dt.datetime) -> int:
        """Index of the latest session whose due time is at or before ``now`` (-1 if none)."""
        table = _sessions()
        cutoff = now.timestamp()
        i = min(table.index_on_or_before(_day(now).toordinal()), len(table.ordinals) - 1)
        while i >= 0 and self._due_ts(i) > cutoff:
            i -= 1
        return i

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        table = _sessions()
        candidates: list[int] = []
        if last_automated_data_interval is not None:
            # The session after the last run's day (works for runs made by another timetable).
            last_day = _day(last_automated_data_interval.start)
            candidates.append(bisect.bisect_right(table.ordinals, last_day.toordinal()))
        if restriction.earliest is not None:
            candidates.append(table.index_on_or_after(_day(restriction.earliest).toordinal()))
        if not restriction.catchup:
            candidates.append(self._latest_due_index(_now()))
        if not candidates:
            return None  # no start date and no previous run: nothing to anchor on
        i = max(max(candidates), 0)
        if i >= len(table.ordinals):
            return None  # past the calendar window
        if (
            restriction.latest is not None
            and table.ordinals[i] > _day(restriction.latest).toordinal()
        ):
            return None
        return self._info(i)

    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        """The session of ``run_after``'s (UTC) day, or the latest session before that day."""
        info = self._info(_session_index_for(run_after))
        assert info.data_interval is not None
        return info.data_interval
