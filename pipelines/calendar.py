"""NYSE sessions from exchange_calendars (holidays, early closes and DST come from the calendar)."""

from __future__ import annotations

from datetime import date
from functools import lru_cache

import pandas as pd

#: Calendar window loaded once per process; covers the replay data and the next decade.
_START, _END = "1990-01-01", "2035-12-31"


@lru_cache(maxsize=1)
def _xnys():  # type: ignore[no-untyped-def]
    import exchange_calendars as xcals

    return xcals.get_calendar("XNYS", start=_START, end=_END)


def to_date(value: str | date | pd.Timestamp) -> date:
    """Parse ``YYYY-MM-DD`` (or a date/timestamp) into a :class:`datetime.date`."""
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ValueError(f"not a date (expected YYYY-MM-DD): {value!r}") from None


def is_session(day: str | date) -> bool:
    return bool(_xnys().is_session(pd.Timestamp(to_date(day))))


def require_session(day: str | date) -> date:
    """Return ``day`` as a date, or raise naming the nearest sessions when it is not one."""
    d = to_date(day)
    if not is_session(d):
        cal = _xnys()
        ts = pd.Timestamp(d)
        prev = cal.date_to_session(ts, direction="previous").date()
        nxt = cal.date_to_session(ts, direction="next").date()
        raise ValueError(
            f"{d.isoformat()} is not an NYSE session (previous: {prev}, next: {nxt})"
        )
    return d


def sessions_between(start: str | date, end: str | date) -> list[date]:
    """NYSE sessions in ``[start, end]``, inclusive."""
    idx = _xnys().sessions_in_range(pd.Timestamp(to_date(start)), pd.Timestamp(to_date(end)))
    return [ts.date() for ts in idx]


def previous_sessions(day: str | date, count: int) -> list[date]:
    """The ``count`` sessions ending at (and including) session ``day``, oldest first."""
    cal = _xnys()
    end = pd.Timestamp(require_session(day))
    pos = cal.sessions.get_loc(end)
    return [ts.date() for ts in cal.sessions[max(0, pos - count + 1) : pos + 1]]


def next_session(day: str | date) -> date:
    return _xnys().next_session(pd.Timestamp(require_session(day))).date()


def session_close(day: str | date) -> pd.Timestamp:
    """UTC close of session ``day`` (16:00 New York, 13:00 on early closes)."""
    return _xnys().session_close(pd.Timestamp(require_session(day)))


def session_open(day: str | date) -> pd.Timestamp:
    return _xnys().session_open(pd.Timestamp(require_session(day)))


def closes_for(sessions: pd.Series) -> pd.Series:
    """Vectorised UTC close for a Series of session timestamps (tz-naive midnight)."""
    closes = _xnys().schedule["close"]
    out = closes.reindex(pd.DatetimeIndex(sessions.to_numpy()))
    if out.isna().any():
        bad = sessions[out.isna().to_numpy()].iloc[0]
        raise ValueError(f"{pd.Timestamp(bad).date()} is not an NYSE session")
    # exchange_calendars' schedule is tz-aware UTC
    # keep the tz-aware array (to_numpy() would box every value into a Python object)
    return pd.Series(out.array, index=sessions.index, name="event_timestamp").dt.tz_convert("UTC")
